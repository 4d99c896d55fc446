"""One owner per file: a writer frozen past its claim time never writes a file again.

Two real ``scanstream writer`` processes follow one session; the active one is frozen
(SIGSTOP) while a scan runs, long enough for its claim to lapse and the standby to take the
session over, then resumed (SIGCONT). The files must stay intact, the scans exact, and every
verdict must come from one writer: the one that owned the session when the scan ended.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from scanstream import get_session_node
from scanstream._protocol.entries import parse_saving
from scanstream.models import SavingState
from scanstream.writer import writer_status
from scanstream.writer.files import FileBusyError, FileLock
from scanstream.writer.service import HEALTH_TTL

from .conftest import assert_file_matches_redis, wait_for, wait_saved
from .test_service_restart import writer_process


def _status(store):
    return writer_status("test_session", store=store) or {}


def _verdict(store, number: int):
    return parse_saving(store.redis.hgetall(store.keys.scan("test_session", number)))


def test_a_file_lock_excludes_a_second_holder(tmp_path: Path) -> None:
    path = tmp_path / "a.h5"
    first = FileLock(path)
    try:
        with pytest.raises(FileBusyError, match="another writer"):
            FileLock(path)
    finally:
        first.release()
    FileLock(path).release()  # free again once released


@pytest.mark.timeout(90)
def test_a_resumed_frozen_writer_never_writes_the_file_the_standby_took(
    redis_url, store, session, tmp_path
):
    root = tmp_path / "data"
    with writer_process(redis_url, root) as first, writer_process(redis_url, root) as second:
        wait_for(lambda: _status(store).get("writing"), 15, "a writer to own the session")
        active, standby = (first, second) if _status(store)["pid"] == first.pid else (second, first)
        active_owner = _status(store)["owner"]

        running = session.create_scan("across")
        channel = running.create_container("timer").create_channel("timer:c", "int64")
        channel.emit(np.arange(0, 100))
        path = root / "test_session/test_session.h5"
        wait_for(
            lambda: _verdict(store, running.number).state is SavingState.WRITING,
            10,
            "the active writer to start writing the scan",
        )
        os.kill(active.pid, signal.SIGSTOP)
        try:
            channel.emit(np.arange(100, 200))
            wait_for(
                lambda: _status(store).get("pid") == standby.pid,
                HEALTH_TTL + 10,
                "the standby to take the session over",
            )
            # A scan run entirely while the first writer is frozen: the standby writes it.
            with session.create_scan("meanwhile") as other:
                other.create_container("timer").create_channel("timer:c").emit([1.0, 2.0])
            wait_saved(store, "test_session", {other.number}, timeout=20)
            channel.emit(np.arange(200, 300))
            time.sleep(0.5)  # the standby tries the running scan's file: locked by the frozen one
        finally:
            os.kill(active.pid, signal.SIGCONT)
        channel.emit(np.arange(300, 400))
        running.end()
        wait_saved(store, "test_session", {running.number, other.number}, timeout=30)
        standby_owner = _status(store)["owner"]
        assert standby_owner != active_owner
        for number in (running.number, other.number):
            verdict = _verdict(store, number)
            assert verdict.state is SavingState.SAVED, verdict
            assert verdict.writer == standby_owner, verdict
        assert _verdict(store, running.number).points == {
            f"{channel_db_name(store, running.number)}": 400
        }
        # Intact: every entry opens through the session file, and holds exactly Redis's data.
        with h5py.File(path, "r") as file:
            assert sorted(file) == sorted([f"{running.number}.1", f"{other.number}.1"])
            for name in file:
                assert file[name].attrs["NX_class"] == "NXentry"
        for number in (running.number, other.number):
            scan = get_session_node("test_session", store=store).get_scan(number)
            assert_file_matches_redis(scan, root).close()
        with h5py.File(path, "r") as file:
            assert file[f"{running.number}.1/measurement/c"][()].tolist() == list(range(400))
        # The resumed writer found out and stopped: it says so, and is alive and waiting.
        assert active.poll() is None
        active.send_signal(signal.SIGTERM)
        out, _ = active.communicate(timeout=20)
        assert "has taken it over" in out, out
        assert active.returncode == 0, out


def channel_db_name(store, number: int) -> str:
    scan = get_session_node("test_session", store=store).get_scan(number)
    (node,) = [n for n in scan.load_nodes() if n.type == "channel"]
    return node.db_name
