"""What a writer records in Redis (its claim, its status, the saved scans) and its life cycle."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np

from scanstream import DataStore
from scanstream.admin import registry
from scanstream.writer import WriterService, saved_scans, writer_status

from .conftest import wait_for, wait_saved


def _points(path: Path, entry: str = "1.1") -> int:
    """Points of ``timer:c`` in ``entry`` of a file a writer may have open (0 if absent)."""
    try:
        with h5py.File(path, "r", locking=False) as file:
            return int(file[f"{entry}/measurement/c"].shape[0])
    except (OSError, KeyError):
        return 0


def _take_over(store: DataStore, newcomer: WriterService, session: str = "test_session") -> None:
    """What Redis holds once a writer's claim has expired and ``newcomer`` has claimed the
    session: done in one transaction, so that the old writer cannot renew in between."""
    key = store.keys.writer_health(session)
    status = {**newcomer.status(session), "writing": True}
    pipe = store.redis.pipeline(transaction=True)
    pipe.delete(key)
    pipe.hset(
        key,
        mapping={registry.OWNER_FIELD: newcomer.owner, registry.STATUS_FIELD: json.dumps(status)},
    )
    pipe.pexpire(key, 5000)
    pipe.execute()


def test_the_status_says_writing_from_the_first_claim(store, tmp_path):
    with WriterService(["test_session"], root=tmp_path, store=store) as service:
        wait_for(
            lambda: writer_status("test_session", store=store) is not None,
            2,
            "the writer to publish its status",
        )
        first = writer_status("test_session", store=store)
        assert first["owner"] == service.owner
        assert first["writing"] is True  # the first status published, not one heartbeat later
        # The shape of a pool's status, with this one writer as its only member.
        assert first["pool"] is False and first["mismatch"] == [] and not first["dead"]
        assert [m["owner"] for m in first["members"]] == [service.owner]
        assert first["members"][0]["pid"] == first["pid"] == os.getpid()
        # Locally, the claim is recorded just after the script that published it returned.
        wait_for(lambda: service.status("test_session")["writing"], 2, "the local claim")
    assert writer_status("test_session", store=store) is None  # released at stop


def test_a_writer_whose_claim_was_taken_gives_up_the_session(session, store, tmp_path):
    first = WriterService(["test_session"], root=tmp_path / "a", store=store, flush_period=0.05)
    second = WriterService(["test_session"], root=tmp_path / "b", store=store, flush_period=0.05)
    first_file = tmp_path / "a/test_session/test_session.h5"
    first.start()
    try:
        wait_for(
            lambda: first.status("test_session")["writing"],
            2,
            "the first writer to own the session",
        )
        with session.create_scan("loop") as scan:
            channel = scan.create_container("timer").create_channel("timer:c", "int64")
            channel.emit(np.arange(10))
            scan.flush()
            wait_for(lambda: _points(first_file) == 10, 10, "the first writer to write 10 points")
            # The first writer froze (or lost Redis) for longer than the claim's TTL, and the
            # second one took the session meanwhile.
            _take_over(store, second)
            second.start()
            wait_for(
                lambda: (
                    not first.status("test_session")["writing"]
                    and not first.status("test_session")["running"]
                ),
                5,
                "the first writer to give up the session and stop writing its scan",
            )
            channel.emit(np.arange(10, 25))
        wait_saved(store, "test_session", {scan.number})
        assert writer_status("test_session", store=store)["owner"] == second.owner
        assert "test_session" not in first._owned
    finally:
        first.stop()
        second.stop()
    with h5py.File(tmp_path / "b/test_session/test_session.h5", "r") as file:
        assert file["1.1/measurement/c"][()].tolist() == list(range(25))
        assert file["1.1/end_reason"].asstr()[()] == "DONE"
    with h5py.File(first_file, "r") as file:  # nothing written after the take-over
        assert file["1.1/measurement/c"][()].tolist() == list(range(10))
        assert "end_reason" not in file["1.1"]


def test_a_lapsed_claim_is_taken_again_and_the_scan_written_from_its_start(
    writer, session, store, tmp_path
):
    path = tmp_path / "data/test_session/test_session.h5"
    with session.create_scan("loop") as scan:
        channel = scan.create_container("timer").create_channel("timer:c", "int64")
        channel.emit(np.arange(10))
        scan.flush()
        wait_for(lambda: _points(path) == 10, 10, "the writer to write 10 points")
        lapsed = writer._sessions["test_session"].claim
        lapsed.valid_until = 0.0  # as after a freeze longer than the claim's TTL
        assert not writer.status("test_session")["writing"]
        channel.emit(np.arange(10, 20))
    wait_saved(store, "test_session", {scan.number})
    assert writer._sessions["test_session"].claim is not lapsed  # a new period of ownership
    with h5py.File(path, "r") as file:
        assert file["1.1/measurement/c"][()].tolist() == list(range(20))
        assert file["1.1/end_reason"].asstr()[()] == "DONE"


def test_saved_scans_skips_members_that_are_not_scan_numbers(store):
    store.redis.sadd(store.keys.writer_saved("test_session"), "3", "7", "not-a-number")
    assert saved_scans("test_session", store=store) == {3, 7}
    assert registry.is_saved("test_session", 7, store=store)
    assert not registry.is_saved("test_session", 4, store=store)


def test_run_stops_on_sigint_and_says_what_was_done(redis_url, store, session, tmp_path):
    program = textwrap.dedent(f"""
        import logging
        from scanstream.writer import WriterService
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        service = WriterService(["test_session"], root={str(tmp_path)!r}, redis_url={redis_url!r})
        raise SystemExit(service.run())
    """)
    with session.create_scan("s") as scan:
        scan.create_container("timer").create_channel("timer:c").emit([1.0, 2.0])
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", program],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        wait_saved(store, "test_session", {scan.number}, timeout=15)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 0, out
    assert "stopping on SIGINT: scans saved 1, failed 0, being written 0" in out
    assert writer_status("test_session", store=store) is None
