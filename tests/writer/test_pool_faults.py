"""Pool mode under faults: a FAILED scan is tried once by each member; members must agree on
their settings (root, allowed directories, layout, names)."""

from __future__ import annotations

import logging
import resource
import signal
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest

from scanstream import DataStore, get_session_node
from scanstream._protocol.entries import parse_saving
from scanstream.admin.registry import pool_settings
from scanstream.cli import main
from scanstream.models import SavingState
from scanstream.writer import WriterService, pool_members, saved_scans, writer_status
from scanstream.writer.scan_claims import ScanClaims

from .conftest import assert_file_matches_redis, pool_writer, wait_for

#: The largest file a "crippled" writer process may write: its disk is as good as full.
_FILE_LIMIT = 256 * 1024


def _small_files() -> None:
    """In the child: files beyond _FILE_LIMIT fail with EFBIG (an OSError), as on a full disk.

    SIGXFSZ is ignored (the disposition survives exec), else the kernel would kill the process.
    """
    resource.setrlimit(resource.RLIMIT_FSIZE, (_FILE_LIMIT, _FILE_LIMIT))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def _verdict(store: DataStore, number: int):
    return parse_saving(store.redis.hgetall(store.keys.scan("test_session", number)))


def _pool_service(store: DataStore, root: Path, **options) -> WriterService:
    return WriterService(
        ["test_session"], root=root, store=store, flush_period=0.05, pool=True, **options
    )


def _holder(store: DataStore, number: int) -> str | None:
    return ScanClaims(store, "reader").holder("test_session", number)


def test_a_scan_failed_by_a_writers_host_is_completed_by_another_pool_writer(
    redis_url, store, session, tmp_path
):
    """A writer whose files cannot grow (full disk, quota) fails the scan it holds; another
    member of the pool, live at that moment, takes it and saves it exactly."""
    root = tmp_path / "data"
    scan = session.create_scan("big", {"npoints": 80_000})
    channel = scan.create_container("timer").create_channel("timer:c", "float64")
    scan.prepared()
    rng = np.random.default_rng(0)  # random values: the compression does not shrink them
    with ExitStack() as stack:
        # Worker processes (the default): the one whose file could not be flushed exits, which
        # releases the file's lock (an --in-process writer keeps it until it can flush).
        crippled = stack.enter_context(pool_writer(redis_url, root, preexec_fn=_small_files))
        wait_for(lambda: _holder(store, scan.number), 30, "the first writer to take the scan")
        crippled_owner = _holder(store, scan.number)
        assert crippled_owner is not None and f":{crippled.pid}:" in crippled_owner
        assert not ScanClaims(store, "reader").failed_by("test_session", scan.number)
        healthy = stack.enter_context(pool_writer(redis_url, root))
        wait_for(lambda: len(pool_members("test_session", store=store)) == 2, 30, "two members")
        # The second writer is live, and waits for the scan held by the first one.
        for _ in range(16):  # 640 kB: beyond what the first writer's files may hold
            channel.emit(rng.random(5000))
        scan.end()
        # What the publisher sees: the first writer's failure is not final, the save is.
        verdict = scan.wait_saved(40)
        assert verdict.state is SavingState.SAVED, verdict
        assert verdict == _verdict(store, scan.number)
        assert verdict.writer is not None and f":{healthy.pid}:" in verdict.writer
        assert ScanClaims(store, "reader").failed_by("test_session", scan.number) == {
            crippled_owner
        }
        # The failure is in the pool's status, named with the writer that met it.
        status = writer_status("test_session", store=store)
        assert status["pool"] and status["failed"] == 1
        (error,) = status["errors"]
        assert error["writer"] == crippled_owner and error["number"] == scan.number
        assert "File too large" in error["error"] or "too large" in error["error"].lower()
    assert "left to the other writers of the pool" in crippled.output
    node = get_session_node("test_session", store=store).get_scan(scan.number)
    with assert_file_matches_redis(node, root) as file:
        assert file[f"{scan.number}.1/measurement/c"].shape == (80_000,)


def test_a_scan_failed_for_its_content_is_tried_once_by_each_member_then_left(
    store, session, tmp_path, caplog
):
    """A scan no member can write (its filename leaves the allowed directories) fails once on
    each writer of the pool, and is not tried again (no loop)."""
    caplog.set_level(logging.CRITICAL, logger="scanstream")
    root = tmp_path / "data"
    services = [_pool_service(store, root, isolate=False) for _ in range(2)]
    with ExitStack() as stack:
        for service in services:
            stack.enter_context(service)
        wait_for(lambda: len(pool_members("test_session", store=store)) == 2, 5, "two members")
        with session.create_scan("escape", {"filename": str(tmp_path / "outside/x.h5")}) as bad:
            bad.create_container("timer").create_channel("timer:c").emit([1.0])
        with session.create_scan("good") as good:
            good.create_container("timer").create_channel("timer:c").emit([2.0])
        claims = ScanClaims(store, "reader")
        owners = {s.owner for s in services}
        wait_for(
            lambda: claims.failed_by("test_session", bad.number) == owners,
            15,
            "each member to try the bad scan",
        )
        wait_for(lambda: good.number in saved_scans("test_session", store=store), 15, "saved")
        # Nobody holds it any more; three renewal periods later, nobody has tried it again.
        wait_for(lambda: _holder(store, bad.number) is None, 5, "the claim to be freed")
        time.sleep(3.0)  # three renewal periods: a retry would show in the claim or the errors
        assert _holder(store, bad.number) is None
        status = writer_status("test_session", store=store)
        assert status["failed"] == 2  # once per member, never more
        assert {e["writer"] for e in status["errors"]} == owners
        assert all(e["number"] == bad.number for e in status["errors"])
        final = _verdict(store, bad.number)  # the last member's: nobody else tries it
        assert final.state is SavingState.FAILED and "outside" in final.reason, final
    assert bad.number not in saved_scans("test_session", store=store)
    assert not (tmp_path / "outside").exists()


def test_a_member_with_another_root_takes_no_scan_and_status_shows_it(
    redis_url, store, session, tmp_path, capsys, caplog
):
    first_root, other_root = (tmp_path / "data").resolve(), (tmp_path / "elsewhere").resolve()
    first = _pool_service(store, first_root, isolate=False)
    joining = _pool_service(store, other_root, isolate=False)
    with ExitStack() as stack:
        stack.enter_context(first)
        wait_for(lambda: pool_members("test_session", store=store), 5, "the first member")
        stack.enter_context(caplog.at_level(logging.ERROR, logger="scanstream.writer.pool"))
        stack.enter_context(joining)
        wait_for(lambda: "test_session" in joining.pool.refusing, 5, "the refusal")
        wait_for(
            lambda: writer_status("test_session", store=store)["mismatch"] == [joining.owner],
            5,
            "the refusal to be published",
        )
        (message,) = [r.getMessage() for r in caplog.records if "differ" in r.getMessage()]
        assert str(first_root) in message and str(other_root) in message
        assert f"restart it with --root {first_root}" in message
        scans = []
        for k in range(4):
            with session.create_scan(f"s{k}") as scan:
                scan.create_container("timer").create_channel("timer:c").emit([float(k)])
            scans.append(scan)
        numbers = {s.number for s in scans}
        wait_for(lambda: numbers <= saved_scans("test_session", store=store), 15, "saved")
        assert {_verdict(store, n).writer for n in numbers} == {first.owner}
        assert joining.pool.load == 0 and not other_root.exists()
        status = writer_status("test_session", store=store)
        assert status["pool"] and status["writing"] and status["root"] == str(first_root)
        member = next(m for m in status["members"] if m["owner"] == joining.owner)
        assert member["refusing"] == {
            "writer": first.owner,
            "differences": {"root": [str(other_root), str(first_root)]},
        }
        assert main(["--redis-url", redis_url, "writer", "--status", "test_session"]) == 1
        out = capsys.readouterr().out
        assert "TAKES NO SCAN" in out
        assert f"root '{other_root}' here, '{first_root}' in the pool" in out
        # The first writer leaves: the pool's settings outlive it by their TTL (a restart in
        # between finds them), then the joining writer's are the pool's, and it takes scans.
        first.stop()
        assert pool_settings("test_session", store=store)["settings"]["root"] == str(first_root)
        wait_for(lambda: "test_session" not in joining.pool.refusing, 10, "the refusal to end")
        assert pool_settings("test_session", store=store) == {
            "settings": joining.pool.host.pool_settings(),
            "writer": joining.owner,
        }
        with session.create_scan("later") as later:
            later.create_container("timer").create_channel("timer:c").emit([9.0])
        wait_for(lambda: later.number in saved_scans("test_session", store=store), 15, "saved")
        assert _verdict(store, later.number).writer == joining.owner
    assert pool_settings("test_session", store=store) is None  # the last member left
    node = get_session_node("test_session", store=store)
    for number in numbers:
        with assert_file_matches_redis(node.get_scan(number), first_root):
            pass


def test_garbage_over_a_scan_claim_or_failed_set_does_not_block_the_scan(
    redis_url, store, session, tmp_path
):
    """Found by soak.chaos: a pool scan's claim key (or its failed-by set) of another type made
    the claim script fail with WRONGTYPE at every try, 20 error lines a second, and the scan
    was never written. Garbage there holds no claim and records no failure."""
    keys = store.keys
    store.redis.rpush(keys.scan_claim("test_session", 1), "garbage")  # scan 1's, before it runs
    store.redis.set(keys.scan_failed_by("test_session", 2), b"\xff")
    with pool_writer(redis_url, tmp_path / "data") as proc:
        scans = []
        for i in range(2):
            with session.create_scan(f"s{i}") as scan:
                scan.create_container("timer").create_channel("timer:c").emit([1.0, float(i)])
            scans.append(scan)
        assert [s.number for s in scans] == [1, 2]
        wait_for(lambda: {1, 2} <= saved_scans("test_session", store=store), 30, "both scans saved")
        store.redis.set(keys.scan_claim("test_session", 3), "garbage")  # under the running pool
        with session.create_scan("s2") as later:
            later.create_container("timer").create_channel("timer:c").emit([3.0])
        wait_for(lambda: 3 in saved_scans("test_session", store=store), 30, "the later scan")
    output = proc.output  # type: ignore[attr-defined]
    assert "Traceback" not in output and "WRONGTYPE" not in output, output
    replaced = [line for line in output.splitlines() if "garbage over its pool keys" in line]
    assert len(replaced) == 3, replaced  # one line per garbage write, naming the key and type
    assert keys.scan_claim("test_session", 1) in replaced[0] and "a list" in replaced[0]
    for scan in [*scans, later]:
        assert _verdict(store, scan.number).state is SavingState.SAVED


@pytest.mark.parametrize("kind", ["junk bytes", "list"])
def test_garbage_over_the_pool_settings_is_replaced(kind, redis_url, store, session, tmp_path):
    """Found by soak.chaos: junk bytes over the pool's settings record made every pool writer
    exit at its start with a traceback (json.loads), and a list there with WRONGTYPE."""
    key = store.keys.writer_pool_settings("test_session")
    if kind == "list":
        store.redis.rpush(key, "garbage")
    else:
        store.redis.set(key, b"\xa9\x00 junk")
    with pool_writer(redis_url, tmp_path / "data") as proc:
        with session.create_scan("s") as scan:
            scan.create_container("timer").create_channel("timer:c").emit([1.0])
        wait_for(lambda: 1 in saved_scans("test_session", store=store), 30, "the scan saved")
        assert proc.poll() is None  # still running
        settings = pool_settings("test_session", store=store)
        assert settings is not None and settings["settings"]["root"]
    output = proc.output  # type: ignore[attr-defined]
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if "settings record" in line]
    assert len(lines) == 1 and key in lines[0] and "garbage" in lines[0], lines


@pytest.mark.parametrize("kind", ["string", "list"])
def test_garbage_over_the_pool_set_is_replaced(kind, redis_url, store, session, tmp_path):
    """Found by soak.chaos: the pool's member set of another type made every pool writer exit
    at its start with a traceback (SADD: WRONGTYPE), restarted writers too: no scan of the
    session was written any more."""
    key = store.keys.writer_pool("test_session")
    if kind == "list":
        store.redis.rpush(key, "garbage")
    else:
        store.redis.set(key, b"\xa9 junk")
    with pool_writer(redis_url, tmp_path / "data") as proc:
        with session.create_scan("s") as scan:
            scan.create_container("timer").create_channel("timer:c").emit([1.0])
        wait_for(lambda: 1 in saved_scans("test_session", store=store), 30, "the scan saved")
        assert proc.poll() is None  # still running
        assert store.redis.type(key) == b"set"
    output = proc.output  # type: ignore[attr-defined]
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if "is not a set" in line]
    assert len(lines) == 1 and key in lines[0], lines
