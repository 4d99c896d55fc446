"""libhdf5 crashes contained: each scan is written in a worker process; a crash loses one attempt.

The crash is a real SIGSEGV sent to the real worker process (what a libhdf5 segfault does).
"""

from __future__ import annotations

import logging
import os
import signal
import time

import numpy as np
import pytest

from scanstream._protocol.entries import parse_saving
from scanstream.exceptions import InvalidArgumentError
from scanstream.models import SavingState
from scanstream.writer import WriterService, saved_scans

from .conftest import assert_file_matches_redis, owning_writer, wait_for, wait_saved


def _verdict(store, number: int):
    return parse_saving(store.redis.hgetall(store.keys.scan("test_session", number)))


@pytest.fixture
def isolated(store, tmp_path):
    # No isolate argument: the library's default must be the isolated (crash-safe) one.
    with WriterService(["test_session"], root=tmp_path, store=store, flush_period=0.05) as service:
        assert service.isolate
        yield service


def _worker_of(service, db_name: str, other_than: int | None = None) -> int:
    def pid():
        proc = service.workers.running.get(db_name)
        return proc.pid if proc is not None and proc.pid != other_than else None

    wait_for(pid, 20, f"a worker writing {db_name}")
    return int(pid())


@pytest.mark.timeout(90)
def test_a_crash_is_retried_and_a_second_one_fails_only_that_scan(
    isolated, session, store, tmp_path, caplog
):
    caplog.set_level(logging.CRITICAL, logger="scanstream")
    doomed = session.create_scan("doomed")
    channel = doomed.create_container("timer").create_channel("timer:c")
    channel.emit(np.arange(5.0))
    first = _worker_of(isolated, doomed.db_name)
    os.kill(first, signal.SIGSEGV)
    second = _worker_of(isolated, doomed.db_name, other_than=first)  # written again
    os.kill(second, signal.SIGSEGV)
    wait_for(lambda: _verdict(store, doomed.number).state.is_final, 20, "the verdict")
    verdict = _verdict(store, doomed.number)
    assert verdict.state is SavingState.FAILED, verdict
    assert "SIGSEGV 2 times" in verdict.reason, verdict.reason
    doomed.end()
    # The service lives on: the next scan is saved, exact.
    with session.create_scan("fine") as fine:
        fine.create_container("timer").create_channel("timer:c").emit(np.arange(3.0))
    wait_saved_quietly(store, fine.number)
    assert doomed.number not in saved_scans("test_session", store=store)
    assert_file_matches_redis(_node(store, fine), tmp_path).close()


@pytest.mark.timeout(60)
def test_one_crash_is_invisible_in_the_file(isolated, session, store, tmp_path):
    scan = session.create_scan("once")
    channel = scan.create_container("timer").create_channel("timer:c", "int64")
    channel.emit(np.arange(50))
    os.kill(_worker_of(isolated, scan.db_name), signal.SIGSEGV)
    channel.emit(np.arange(50, 100))
    scan.end()
    wait_saved(store, "test_session", {scan.number}, timeout=30)
    assert _verdict(store, scan.number).state is SavingState.SAVED
    assert_file_matches_redis(_node(store, scan), tmp_path).close()


def _node(store, scan):
    from scanstream import get_session_node

    return get_session_node("test_session", store=store).get_scan(scan.number)


def wait_saved_quietly(store, number: int) -> None:
    wait_for(lambda: number in saved_scans("test_session", store=store), 30, f"scan {number}")


@pytest.mark.timeout(90)
def test_one_worker_writes_concurrent_scans_one_at_a_time(store, session, tmp_path):
    root = tmp_path / "data"
    with owning_writer(store, root, flush_period=0.05, workers=1) as service:
        assert service.workers.limit == 1
        scans = []
        for k in range(3):
            # A file each, to see which scans are being written.
            scan = session.create_scan(f"one{k}", {"filename": f"one{k}.h5"})
            channel = scan.create_container("timer").create_channel("timer:c", "int64")
            channel.emit(np.arange(10 * k, 10 * k + 10))
            scan.flush()
            scans.append((scan, channel))
        wait_for(lambda: service.workers.running, 20, "a worker writing a scan")
        # All three run: the one worker writes one of them, the other two wait (no file yet).
        for _ in range(10):
            assert len(service.workers.running) == 1, service.workers.running
            time.sleep(0.1)
        (written,) = service.workers.running
        files = {s.db_name: (root / f"one{k}.h5").exists() for k, (s, _) in enumerate(scans)}
        assert files == {s.db_name: s.db_name == written for s, _ in scans}, files
        for k, (scan, channel) in enumerate(scans):
            channel.emit(np.arange(10 * k + 10, 10 * k + 20))
            scan.end()
        wait_saved(store, "test_session", {s.number for s, _ in scans}, timeout=60)
    for scan, _ in scans:
        assert _verdict(store, scan.number).state is SavingState.SAVED
        with assert_file_matches_redis(_node(store, scan), root) as file:
            assert file[f"{scan.number}.1/measurement/c"].shape == (20,)


def test_a_number_of_workers_below_one_is_refused(store, tmp_path):
    for workers in (0, -1, 1.5, True):
        with pytest.raises(InvalidArgumentError, match=f"workers={workers!r}: .* at least 1"):
            WriterService(["test_session"], root=tmp_path, store=store, workers=workers)
