"""The ``scanstream writer`` process: SIGKILL and restart mid-scan, SIGTERM, --status."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import pytest

from scanstream import get_session_node
from scanstream.cli import main
from scanstream.writer import writer_status

from .conftest import assert_file_matches_redis, wait_for, wait_saved


@contextmanager
def writer_process(redis_url: str, root: Path) -> Iterator[subprocess.Popen[str]]:
    """``scanstream writer test_session`` in its own process; killed at the end if still alive."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "scanstream",
            "--redis-url",
            redis_url,
            "writer",
            "test_session",
            "--root",
            str(root),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def _owner_pid(store) -> int | None:
    status = writer_status("test_session", store=store)
    return status["pid"] if status and status["writing"] else None


def _points_in_file(path: Path) -> int:
    try:
        with h5py.File(path, "r", locking=False) as file:
            return file["1.1/measurement/c"].shape[0]
    except (OSError, KeyError):
        return 0


def test_sigkill_and_restart_mid_scan_gives_an_exact_entry(redis_url, store, session, tmp_path):
    path = tmp_path / "test_session/test_session.h5"
    with session.create_scan("loop", {"npoints": 3000}) as scan:
        timer = scan.create_container("timer")
        channel = timer.create_channel("timer:c", "float64")
        spectrum = timer.create_channel("mca:spectrum", "uint32", (16,))
        with writer_process(redis_url, tmp_path) as first:
            wait_for(lambda: _owner_pid(store) == first.pid, 15, "the first writer to start")
            for k in range(10):
                channel.emit(np.arange(k * 100, (k + 1) * 100, dtype=np.float64))
                spectrum.emit(np.full((100, 16), k, dtype=np.uint32))
            scan.flush()
            wait_for(
                lambda: _points_in_file(path) >= 1000, 15, "the first writer to write 1000 points"
            )
            first.kill()  # SIGKILL: no clean-up at all
            first.wait(timeout=10)
        # The scan goes on while no writer runs.
        for k in range(10, 30):
            channel.emit(np.arange(k * 100, (k + 1) * 100, dtype=np.float64))
            spectrum.emit(np.full((100, 16), k, dtype=np.uint32))
    with writer_process(redis_url, tmp_path) as second:
        wait_saved(store, "test_session", {scan.number}, timeout=30)
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=15) == 0
        assert writer_status("test_session", store=store) is None  # its health key is removed
    scan_node = get_session_node("test_session", store=store).get_scan(scan.number)
    with assert_file_matches_redis(scan_node, tmp_path) as file:
        data = file["1.1/measurement/c"][()]
        assert np.array_equal(data, np.arange(3000, dtype=np.float64))
        assert file["1.1/measurement/mca"].shape == (3000, 16)
        assert file["1.1/end_reason"].asstr()[()] == "DONE"


def test_status_command_reports_the_writer_and_its_absence(redis_url, store, tmp_path, capsys):
    assert main(["--redis-url", redis_url, "writer", "--status", "test_session"]) == 1
    assert "test_session: no writer" in capsys.readouterr().out
    with writer_process(redis_url, tmp_path) as proc:
        wait_for(lambda: _owner_pid(store) == proc.pid, 15, "the writer to start")
        assert main(["--redis-url", redis_url, "writer", "--status", "test_session"]) == 0
        out = capsys.readouterr().out
        assert f"test_session: writing (pid {proc.pid}" in out
        assert "scans saved 0, failed 0" in out
        proc.kill()  # its claim stays for HEALTH_TTL (5 s): --status must tell it is gone
        proc.wait(timeout=10)
        assert main(["--redis-url", redis_url, "writer", "--status", "test_session"]) == 1
        out = capsys.readouterr().out
        assert f"test_session: DEAD: the writer process {proc.pid} of this host" in out, out


def test_waiting_for_a_busy_file_is_logged_once_without_traceback(caplog, store):
    """A file another writer holds is retried every period; the log says so once, not each time."""
    import logging

    from redis.backoff import ConstantBackoff

    from scanstream.subscribe.events import StopHandler
    from scanstream.writer.files import FileBusyError
    from scanstream.writer.supervise import supervise

    caplog.set_level(logging.DEBUG, logger="scanstream.writer.supervise")
    calls = []

    def attempt() -> str:
        calls.append(1)
        if len(calls) < 4:
            raise FileBusyError("'/x/scan0001.h5' is being written by another writer")
        return "written"

    result = supervise(
        attempt,
        store=store,
        stop=StopHandler(),
        what="scan s:1",
        restart_on=(FileBusyError,),
        wait_on=(FileBusyError,),
        backoff=ConstantBackoff(0.01),
    )
    assert result == "written" and len(calls) == 4
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].exc_info is None, caplog.text
    assert "being written by another writer; trying again" in warnings[0].getMessage()


@pytest.mark.parametrize("own_retry", [False, True], ids=["outage notice", "own retry"])
def test_an_unreachable_server_is_a_warning_unless_the_store_says_the_outage(
    caplog, redis_url, own_retry
):
    """The store's outage notice says an outage once at its start and once at its end, so
    the attempts that fail meanwhile are debug lines; a store without a notice (a retry of
    the user's, a cluster) says nothing, and each attempt stays a warning."""
    import logging

    import redis
    from redis.backoff import ConstantBackoff, NoBackoff
    from redis.retry import Retry

    from scanstream import DataStore, Settings
    from scanstream.subscribe.events import StopHandler
    from scanstream.writer.supervise import supervise

    retry = Retry(NoBackoff(), 0) if own_retry else None
    with DataStore(settings=Settings(redis_url=redis_url, retry=retry)) as own:
        assert (own.outage_notice is None) is own_retry
        caplog.set_level(logging.DEBUG, logger="scanstream.writer.supervise")
        calls = []

        def attempt() -> str:
            calls.append(1)
            if len(calls) < 3:
                raise redis.ConnectionError("Connection refused")
            return "done"

        result = supervise(
            attempt,
            store=own,
            stop=StopHandler(),
            what="scan s:1",
            backoff=ConstantBackoff(0.01),
        )
    assert result == "done" and len(calls) == 3
    lines = [r for r in caplog.records if "Redis unreachable" in r.getMessage()]
    assert len(lines) == 2, caplog.text
    level = logging.WARNING if own_retry else logging.DEBUG
    assert all(r.levelno == level and r.exc_info is None for r in lines), caplog.text


def test_a_scan_file_is_on_disk_before_it_is_marked_saved(session, store, tmp_path, monkeypatch):
    """A power cut after the verdict SAVED must not lose the scan: its file (and directory
    entry) are fsynced first. Recorded in this process: the writer runs in-process here."""
    import time

    from scanstream.writer import WriterService
    from scanstream.writer import files as files_module

    synced: list[tuple[str, float]] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        real_fsync(fd)
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), time.time()))

    monkeypatch.setattr(files_module.os, "fsync", recording_fsync)
    with WriterService(
        ["test_session"], root=tmp_path, store=store, isolate=False, flush_period=0.05
    ):
        with session.create_scan("loop") as scan:
            scan.create_container("timer").create_channel("timer:c").emit(np.arange(5.0))
        wait_saved(store, "test_session", {scan.number})
    verdict = get_session_node("test_session", store=store).get_scan(scan.number).saving
    assert verdict.time is not None
    scan_files = [p for p, _ in synced if p.endswith(".h5") and "_scans" in p]
    assert len(scan_files) == 1, synced
    scan_file = Path(scan_files[0])
    assert (str(scan_file.parent), True) in [(p, t < verdict.time) for p, t in synced]
    assert [t for p, t in synced if p == str(scan_file)][0] < verdict.time


_CREATE_SESSION_FILES = """
import sys
from pathlib import Path
from scanstream.writer.session_file import SessionFiles
files = SessionFiles()
root = Path(sys.argv[1])
print("ready", flush=True)
for i in range(100000):
    with files.open(root / f"d{i:05d}" / "s.h5"):
        pass
"""


def test_a_session_file_is_created_whole_or_not_at_all(tmp_path):
    """SIGKILLed while creating session files: each one there opens, none is truncated."""
    import random
    import time

    rng = random.Random(5)
    for trial in range(6):
        root = tmp_path / f"t{trial}"
        proc = subprocess.Popen(
            [sys.executable, "-c", _CREATE_SESSION_FILES, str(root)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.4))
        proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()
        created = sorted(root.glob("d*/s.h5"))
        assert created, "no session file created before the kill"
        for path in created:
            with h5py.File(path, "r", locking=False) as file:
                assert file.attrs["creator"] == "scanstream"
                assert file.attrs["file_name"] == str(path.resolve())
    # What a kill left under the temporary name is removed by the next creation there.
    from scanstream.writer.session_file import SessionFiles

    stale = tmp_path / "u" / ".s.h5.new-99999"
    stale.parent.mkdir()
    stale.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(88))
    with SessionFiles().open(tmp_path / "u" / "s.h5") as file:
        assert file.attrs["creator"] == "scanstream"
    assert sorted(p.name for p in stale.parent.iterdir()) == [".s.h5.lock", "s.h5", "s_scans"]


def test_a_scan_saved_in_its_hash_is_not_written_again(redis_url, store, session, tmp_path):
    """A writer SIGKILLed between the verdict SAVED (the scan hash) and the saved set (the
    session's set, another hash slot) left a SAVED scan out of the set: the next writer must
    not delete and write again the file users were told is complete."""
    with session.create_scan("loop", {"npoints": 50}) as scan:
        scan.create_container("timer").create_channel("timer:c").emit(np.arange(50.0))
    with writer_process(redis_url, tmp_path) as first:
        wait_saved(store, "test_session", {scan.number}, timeout=30)
        first.kill()
        first.wait(timeout=10)
    scan_node = get_session_node("test_session", store=store).get_scan(scan.number)
    verdict = scan_node.saving
    scan_file = tmp_path / "test_session/test_session_scans/scan0001.h5"
    inode = scan_file.stat().st_ino
    # The state the kill leaves: SAVED in the hash, absent from the saved set.
    store.redis.srem(store.keys.writer_saved("test_session"), str(scan.number))
    with writer_process(redis_url, tmp_path) as second:
        wait_saved(store, "test_session", {scan.number}, timeout=30)
        second.send_signal(signal.SIGTERM)
        out, _ = second.communicate(timeout=15)
    assert "SAVED by an earlier writer" in out, out
    assert scan_file.stat().st_ino == inode  # not deleted and written again
    assert scan_node.saving == verdict  # nor marked WRITING, then SAVED by the second writer
    assert_file_matches_redis(scan_node, tmp_path).close()
