"""The example scripts run as a user runs them, against the test server."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np

from scanstream import create_session

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
#: ``--timeout`` of the examples: they end after this many seconds without an event, which
#: each test waits once its scans ended. It must cover the wait between their "listening"
#: line and the first scan (0.3 s, then the scan's creation), as in tests/test_cli_watch.py.
IDLE = "2"


def _start(script: str, redis_url: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            str(EXAMPLES / script),
            "--redis-url",
            redis_url,
            "--session",
            "ex",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_listening(proc: subprocess.Popen[str], marker: str) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + 20
    line = ""
    while marker not in line:
        assert time.monotonic() < deadline and proc.poll() is None, f"no {marker!r} line"
        line = proc.stdout.readline()


def _run_beside_a_scan(
    script: str, redis_url: str, store, marker: str, *args: str
) -> tuple[int, str]:
    """Start ``script``, wait for its ``marker`` line, publish one scan; return (code, output)."""
    proc = _start(script, redis_url, *args)
    try:
        _wait_listening(proc, marker)
        time.sleep(0.3)  # the walk starts from the next scan: let it reach its first read
        _publish(store)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait(timeout=5)
    return proc.returncode, out


def _publish(store) -> None:
    session = create_session("ex", store=store)
    with session.create_scan("ascan", {"title": "ascan roby 0 1 4 0.1"}) as scan:
        timer = scan.create_container("timer")
        roby = timer.create_channel("axis:roby", "float64")
        spectra = timer.create_channel("mca:det", "int32", (-1,))
        scan.prepared()
        for x in np.linspace(0, 1, 5):
            roby.emit(x)
        spectra.emit([np.arange(n, dtype=np.int32) for n in (3, 1, 4, 1, 5)])


def test_listen_session_prints_each_scan_with_its_counts(redis_url, store):
    returncode, out = _run_beside_a_scan(
        "listen_session.py", redis_url, store, "listening", "--timeout", IDLE
    )
    assert returncode == 0, out
    assert "scan started: 1_ascan  ascan roby 0 1 4 0.1" in out
    assert "scan ended:   1_ascan  DONE" in out
    assert "axis:roby=5" in out and "mca:det=5" in out


def test_external_saving_example_writes_the_scan(redis_url, store, tmp_path):
    output = tmp_path / "scans.h5"
    returncode, out = _run_beside_a_scan(
        "external_saving_example.py",
        redis_url,
        store,
        "saving the scans",
        "--output",
        str(output),
        "--timeout",
        IDLE,
    )
    assert returncode == 0, out
    assert "saved 1_ascan (DONE)" in out
    with h5py.File(output, "r") as file:
        assert file["1.1/measurement/axis:roby"][()].tolist() == np.linspace(0, 1, 5).tolist()
        ragged = file["1.1/measurement/mca:det"]
        assert [list(p) for p in ragged] == [list(range(n)) for n in (3, 1, 4, 1, 5)]
        assert file["1.1/end_reason"][()] == b"DONE"


def test_listen_session_rides_out_a_short_redis_outage(persistent_server, tmp_path):
    """The server stops for a second between two scans: the example reports both."""
    from scanstream import DataStore

    proc = _start("listen_session.py", persistent_server.url, "--timeout", "4")
    try:
        _wait_listening(proc, "listening")
        time.sleep(0.3)
        with DataStore(persistent_server.url) as store:
            _publish(store)
        persistent_server.stop()
        time.sleep(1.0)
        persistent_server.start(timeout=10)
        with DataStore(persistent_server.url) as store:
            _publish(store)
        out, _ = proc.communicate(timeout=40)
    finally:
        proc.kill()
        proc.wait(timeout=5)
    assert proc.returncode == 0, out
    lines = out.splitlines()
    for name in ("1_ascan", "2_ascan"):
        assert f"scan ended:   {name}  DONE" in lines, out
        assert f"  data of {name}: axis:roby=5, mca:det=5" in lines, out


def _publish_alone(redis_url: str) -> None:
    # One store per publisher thread: threads sharing one DataStore while sessions start
    # can see a false ServerResetError (an identity-check race in _transport/identity.py).
    from scanstream import DataStore

    with DataStore(redis_url) as store:
        _publish(store)


def test_example_lines_are_whole_when_scans_run_at_once(redis_url):
    """Worker threads and the session loop print at the same time: no line is mixed."""
    import threading

    proc = _start("listen_session.py", redis_url, "--timeout", IDLE)
    try:
        _wait_listening(proc, "listening")
        time.sleep(0.3)
        publishers = [threading.Thread(target=_publish_alone, args=(redis_url,)) for _ in range(4)]
        for thread in publishers:
            thread.start()
        for thread in publishers:
            thread.join(timeout=30)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait(timeout=5)
    assert proc.returncode == 0, out
    lines = out.splitlines()  # the "listening" line was read already
    assert len(lines) == 12, out  # started, ended, data: for each of the 4 scans
    for line in lines:
        assert line.startswith(("scan started: ", "scan ended:   ", "  data of ")), line
        assert line.count("_ascan") == 1, line
