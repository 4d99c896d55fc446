"""A running writer retries a scan that failed for its environment (disk full), and only that."""

from __future__ import annotations

import errno
import subprocess
import time

import numpy as np
import pytest

from scanstream import DataStore, Settings, create_session, get_session_node
from scanstream.exceptions import DecodingError, WriterError
from scanstream.models import SavingState
from scanstream.writer import saved_scans, writer_status
from scanstream.writer.retry import WriterEnvironmentError, is_environment_failure, retry_delay

from .conftest import assert_file_matches_redis, owning_writer, wait_for


def _fill(directory):
    """Fill the file system of ``directory`` with one file; return its path."""
    filler = directory / "filler"
    with open(filler, "wb") as file:
        with pytest.raises(OSError):
            while True:
                file.write(b"\0" * 65536)
                file.flush()
    return filler


def _verdict(store, number):
    return get_session_node("test_session", store=store).get_scan(number).saving


@pytest.mark.parametrize(
    ("isolate", "filled"),
    [(True, True), (False, True), (True, False), (False, False)],
    # Filled: no room for the session file. Not filled: the files are created, and the
    # writer's free-space check (16 MiB margin) fails the scan before its data.
    ids=["worker-filled", "in-process-filled", "worker-files-started", "in-process-files-started"],
)
def test_a_scan_failed_on_a_full_disk_is_saved_once_space_is_freed(
    store, session, tmp_path, tiny_disk, isolate, filled
):
    filler = _fill(tiny_disk) if filled else None
    with owning_writer(
        store,
        tmp_path / "data",
        flush_period=0.05,
        allow=[tmp_path],
        retry_delays=(0.5, 1.0),
        isolate=isolate,
    ):
        with session.create_scan("full", {"filename": str(tiny_disk / "full.h5")}) as scan:
            scan.create_container("timer").create_channel("timer:c").emit(np.arange(50.0))
        wait_for(
            lambda: _verdict(store, scan.number).state is SavingState.FAILED,
            15,
            "the scan to fail on the full disk",
        )
        reason = _verdict(store, scan.number).reason or ""
        assert "no space left" in reason and "the running writer tries again in" in reason, reason
        wait_for(  # --status is published at each heartbeat
            lambda: writer_status("test_session", store=store)["errors"],
            5,
            "the failure in the writer's status",
        )
        errors = writer_status("test_session", store=store)["errors"]
        assert [e["number"] for e in errors] == [scan.number]
        assert "tries again" in errors[0]["error"]
        assert not reason.startswith("WriterEnvironmentError"), reason
        # Still full: it keeps failing, with one error entry, never saved.
        time.sleep(1.2)
        assert scan.number not in saved_scans("test_session", store=store)
        assert len(writer_status("test_session", store=store)["errors"]) == 1
        # Space freed: the filler deleted and the disk grown past the writer's 16 MiB margin.
        if filler is not None:
            filler.unlink()
        grown = subprocess.run(
            ["mount", "-o", "remount,size=64m", str(tiny_disk)], capture_output=True, timeout=10
        )
        assert grown.returncode == 0, grown.stderr
        wait_for(
            lambda: scan.number in saved_scans("test_session", store=store),
            10,
            "the running writer to save the scan once space is freed",
        )
        verdict = _verdict(store, scan.number)
        assert verdict.state is SavingState.SAVED, verdict
        wait_for(
            lambda: writer_status("test_session", store=store)["errors"] == [],
            5,
            "the failure to leave the writer's status once saved",
        )
        node = get_session_node("test_session", store=store).get_scan(scan.number)
        with assert_file_matches_redis(node, tmp_path / "data") as file:
            assert file[f"{scan.number}.1/measurement/c"][()].tolist() == list(np.arange(50.0))


def test_a_scan_failed_on_a_read_only_file_system_is_saved_once_writable(
    store, session, tmp_path, tiny_disk
):
    """EROFS (which root cannot bypass, unlike permissions) on the lock file: FAILED, then
    SAVED by the running writer once the file system is writable again."""
    ro = subprocess.run(
        ["mount", "-o", "remount,ro", str(tiny_disk)], capture_output=True, timeout=10
    )
    assert ro.returncode == 0, ro.stderr
    try:
        with owning_writer(
            store, tmp_path / "data", flush_period=0.05, allow=[tmp_path], retry_delays=(0.5,)
        ):
            with session.create_scan("ro", {"filename": str(tiny_disk / "ro.h5")}) as scan:
                scan.create_container("timer").create_channel("timer:c").emit([1.0, 2.0])
            wait_for(
                lambda: _verdict(store, scan.number).retried,
                15,
                "the scan to fail on the read-only file system, to be retried",
            )
            reason = _verdict(store, scan.number).reason or ""
            assert "cannot create the lock file" in reason and "Read-only" in reason, reason
            rw = subprocess.run(
                ["mount", "-o", "remount,rw,size=64m", str(tiny_disk)],
                capture_output=True,
                timeout=10,
            )
            assert rw.returncode == 0, rw.stderr
            wait_for(
                lambda: scan.number in saved_scans("test_session", store=store),
                10,
                "the running writer to save the scan once the file system is writable",
            )
            node = get_session_node("test_session", store=store).get_scan(scan.number)
            with assert_file_matches_redis(node, tmp_path / "data") as file:
                assert file[f"{scan.number}.1/measurement/c"][()].tolist() == [1.0, 2.0]
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(tiny_disk)], timeout=10, check=False)


def test_a_scan_whose_data_expires_before_a_retry_stays_failed_saying_so(
    redis_url, tmp_path, tiny_disk
):
    """Retention 7 s, retries every 30 s: the retry is made early, before the expiry (5 s
    margin), and after it fails the scan is FAILED for good with a reason saying it is lost."""
    _fill(tiny_disk)
    short = DataStore(settings=Settings(redis_url=redis_url, lease_time=2.0, retention_time=7.0))
    publishing = create_session("test_session", store=short)
    try:
        with owning_writer(
            short, tmp_path / "data", flush_period=0.05, allow=[tmp_path], retry_delays=(30.0,)
        ):
            with publishing.create_scan("doomed", {"filename": str(tiny_disk / "d.h5")}) as scan:
                scan.create_container("timer").create_channel("timer:c").emit([1.0])
            wait_for(
                lambda: (
                    "its data expires from Redis" in (_verdict(short, scan.number).reason or "")
                ),
                15,
                "the scan to be given up before its data expires",
            )
            verdict = _verdict(short, scan.number)
            assert verdict.state is SavingState.FAILED
            assert "this scan is lost" in (verdict.reason or "")
            assert scan.number not in saved_scans("test_session", store=short)
    finally:
        publishing.close()
        short.close()


def test_only_failures_of_the_environment_are_retried():
    def chained(error: Exception) -> WriterError:
        try:
            raise error
        except Exception as exc:
            try:
                raise WriterError("cannot create the session file") from exc
            except WriterError as outer:
                return outer

    assert is_environment_failure(chained(OSError(errno.ENOSPC, "No space left on device")))
    assert is_environment_failure(chained(PermissionError(errno.EACCES, "Permission denied")))
    assert is_environment_failure(chained(OSError(errno.EROFS, "Read-only file system")))
    # HDF5's write error: no errno, the C library's text inside.
    assert is_environment_failure(OSError("Can't write data (... 'No space left on device')"))
    assert is_environment_failure(WriterEnvironmentError("no space left on device for f.h5"))
    assert not is_environment_failure(WriterError("entry '1.1' already holds another scan"))
    assert not is_environment_failure(DecodingError("garbage in the stream"))
    assert not is_environment_failure(OSError("Unable to open file (file signature not found)"))
    assert [retry_delay((10, 30, 60, 300), n) for n in (1, 2, 3, 4, 9)] == [10, 30, 60, 300, 300]
    assert retry_delay((), 1) is None
