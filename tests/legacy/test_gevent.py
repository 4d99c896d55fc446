"""The subscriber API under ``gevent.monkey.patch_all()``: many greenlets walking at once."""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("gevent")

SRC = str(Path(__file__).resolve().parents[2] / "src")

# Patched first, as every BLISS process is; the greenlets' first call is get_session_node()
# (a lock held while connecting deadlocked them). Each walks the session until its END_SCAN;
# one more runs a ScansWatcher. The process prints "ready" once every walk listens.
CHILD = textwrap.dedent(
    """
    import sys
    if sys.argv[3] == "imported-first":
        import scanstream  # as `scanstream legacy` runs a script that patches: locks made unpatched
    from gevent import monkey
    monkey.patch_all()
    import json
    import gevent, gevent.event
    from scanstream import EventType, ScansObserver, ScansWatcher, get_session_node

    N = int(sys.argv[1])
    session_name = sys.argv[2]
    started = [gevent.event.Event() for _ in range(N)]
    results = {}

    def walk(i):
        node = get_session_node(session_name)
        kinds = []
        points = 0
        for event_type, n, data in node.walk_on_new_events(started_event=started[i], timeout=20):
            kinds.append(event_type.name if n.type == "scan" else "data" if event_type == EventType.NEW_DATA else "node")
            if event_type == EventType.NEW_DATA:
                points += data.block_size
            if event_type == EventType.END_SCAN:
                break
        results[i] = {"kinds": [k for k in kinds if k not in ("node", "data")], "points": points}

    class Observer(ScansObserver):
        def __init__(self):
            self.calls = []
            self.points = 0
        def on_scan_created(self, db_name, info):
            self.calls.append("created")
        def on_scan_started(self, db_name, info):
            self.calls.append("started")
        def on_scalar_data_received(self, db_name, channel, index, data):
            self.points += len(data)
        def on_scan_finished(self, db_name, info):
            self.calls.append("finished")

    observer = Observer()
    watcher = ScansWatcher(session_name)
    watcher.set_observer(observer)
    greenlets = [gevent.spawn(walk, i) for i in range(N)]
    watching = gevent.spawn(watcher.run)
    for ev in started:
        if not ev.wait(20):
            print("not started", flush=True)
            sys.exit(3)
    if not watcher.wait_ready(20):
        sys.exit(4)
    print("ready", flush=True)
    gevent.joinall(greenlets, timeout=30)
    watcher.wait_no_more_running_scans(10)
    watcher.stop()
    watching.join(5)
    print(json.dumps({"walks": results, "watcher": observer.calls, "watcher_points": observer.points}), flush=True)
    """
)


def _readline(child: subprocess.Popen[str], timeout: float) -> str:
    """The child's next stdout line, or "" if none comes within ``timeout`` (then it is killed)."""

    assert child.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(child.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            child.kill()
            return ""
    return child.stdout.readline().strip()


@pytest.mark.parametrize("order", ["patched-first", "imported-first"])
def test_many_greenlets_walk_at_once_under_patch_all(redis_url, store, session, order):
    # A first scan so that the session exists; the greenlets only see the next one.
    with session.create_scan("before") as scan:
        scan.create_container("timer").create_channel("x").emit(1.0)
    n = 40
    env = dict(os.environ, PYTHONPATH=SRC, SCANSTREAM_REDIS_URL=redis_url)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(n), session.name, order],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert child.stdout is not None
        line = _readline(child, timeout=15)
        assert line == "ready", child.stderr.read() if child.stderr else line
        with session.create_scan("under_gevent") as scan:
            channel = scan.create_container("timer").create_channel("diode")
            scan.prepared()
            for i in range(100):
                channel.emit(float(i))
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(5)
    assert child.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert len(report["walks"]) == n
    for result in report["walks"].values():
        assert result == {"kinds": ["NEW_NODE", "PREPARED_SCAN", "END_SCAN"], "points": 100}
    assert report["watcher"] == ["created", "started", "finished"]
    assert report["watcher_points"] == 100
