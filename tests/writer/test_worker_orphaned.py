"""Worker processes of a writer killed with SIGKILL: each stops cleanly, at once, in one line.

A real ``scanstream writer`` process writes a long scan in its worker; the writer (only it,
as an operator's ``kill -9 PID`` does) is SIGKILLed while the scan runs. Its workers must see
that nobody reads their reports any more, close their file (valid up to what was written) and
exit, long before the writer's claim would lapse, with no traceback.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from scanstream._protocol.entries import parse_saving
from scanstream.models import SavingState
from scanstream.writer import writer_status
from scanstream.writer.session_claims import HEALTH_TTL
from scanstream.writer.session_file import scan_file_of

from .conftest import wait_for

#: Seconds the orphaned workers get to exit: well inside the claim's life (HEALTH_TTL), so
#: that only noticing the writer's death, not the claim lapsing, can pass.
EXIT_BOUND = 3.0


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie nobody reaped has ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.timeout(90)
def test_workers_of_a_killed_writer_stop_cleanly(redis_url, store, session, tmp_path):
    assert EXIT_BOUND < HEALTH_TTL
    log = tmp_path / "writer.log"  # the writer's stderr, which its workers share
    with open(log, "w") as out:
        writer = subprocess.Popen(
            [sys.executable, "-m", "scanstream", "--redis-url", redis_url, "writer"]
            + ["test_session", "--root", str(tmp_path / "data")],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    stop = threading.Event()
    sent: list[int] = [0]
    workers: list[int] = []
    scan = None
    try:
        wait_for(
            lambda: (writer_status("test_session", store=store) or {}).get("writing"),
            30,
            "the writer to own the session",
        )
        scan = session.create_scan("long")
        channel = scan.create_container("timer").create_channel("timer:c", "float64")
        scan.prepared()

        def emit() -> None:
            while not stop.is_set():
                channel.emit(np.arange(sent[0], sent[0] + 10, dtype="float64"))
                sent[0] += 10
                time.sleep(0.01)

        thread = threading.Thread(target=emit, daemon=True)
        thread.start()
        key = store.keys.scan("test_session", scan.number)
        wait_for(
            lambda: parse_saving(store.redis.hgetall(key)).state is SavingState.WRITING,
            30,
            "the scan to be written",
        )
        verdict = parse_saving(store.redis.hgetall(key))
        scan_file = scan_file_of(Path(verdict.file or ""), scan.number)
        wait_for(lambda: sent[0] > 300 and scan_file.exists(), 30, "points in the file")
        time.sleep(0.5)  # a few flushes
        workers = [w for z in _children(writer.pid) for w in _children(z)]
        assert workers, "no worker process found under the writer's zygote"

        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=10)
        killed = time.monotonic()
        wait_for(lambda: not any(map(_alive, workers)), 30, "the orphaned workers to exit")
        took = time.monotonic() - killed
    finally:
        stop.set()
        if writer.poll() is None:
            writer.kill()
            writer.wait(timeout=10)
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if scan is not None:
            scan.end()
    text = log.read_text()
    print(text)
    print(f"the orphaned workers exited {took:.2f} s after the kill")
    assert took < EXIT_BOUND, f"the workers took {took:.1f} s to exit"
    assert "Traceback" not in text and "BrokenPipeError" not in text
    gone = [line for line in text.splitlines() if "the writer service that started" in line]
    assert len(gone) == 1, gone  # the busy worker says it; idle ones end at stdin's EOF
    assert f"scan test_session:{scan.number} stopped before its end" in gone[0]
    assert str(scan_file) in gone[0]
    # The file is valid, and holds the first points, exact, up to what was written.
    with h5py.File(scan_file, "r") as file:
        written = file[f"{scan.number}.1/measurement/c"][()]
    assert 0 < len(written) <= sent[0]
    assert np.array_equal(written, np.arange(len(written), dtype="float64"))
