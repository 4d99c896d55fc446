"""Pool mode: several writers share the scans of one session, each scan written by one of them."""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path

import h5py
import numpy as np
import pytest

from scanstream import DataStore, get_session_node
from scanstream.cli import main
from scanstream.writer import WriterService, pool_members, saved_scans, writer_status
from scanstream.writer.scan_claims import CLAIMED, DONE, HELD, ScanClaims

from .conftest import assert_file_matches_redis, pool_writer, wait_for


def _members(store: DataStore) -> dict[int, dict]:
    return {m["pid"]: m for m in pool_members("test_session", store=store)}


def _writers_of(store: DataStore, root: Path, numbers: list[int]) -> dict[int, str]:
    """Scan number -> the writer id its SAVED verdict names."""
    writers = {}
    for number in numbers:
        fields = store.redis.hgetall(store.keys.scan("test_session", number))
        verdict = {k.decode(): v.decode() for k, v in fields.items()}
        assert verdict.get("saving") == "SAVED", verdict
        writers[number] = verdict["saving_writer"]
    return writers


def test_a_scan_claim_is_taken_once_refused_when_saved_and_tried_once_per_writer(store):
    first, second = ScanClaims(store, "h:1:a"), ScanClaims(store, "h:2:b")
    outcome, token = first.claim("test_session", 3, 5.0)
    assert outcome == CLAIMED
    assert second.claim("test_session", 3, 5.0) == (HELD, "h:1:a")
    assert first.claim("test_session", 3, 5.0) == (CLAIMED, token)  # a renewal keeps the token
    assert first.holds("test_session", 3, token) and not second.holds("test_session", 3, token)
    assert not second.release("test_session", 3)  # never another writer's
    assert first.release("test_session", 3)
    outcome, token2 = second.claim("test_session", 3, 5.0)
    assert outcome == CLAIMED and token2 != token
    assert not first.holds("test_session", 3, token)  # the fence of the old period fails
    assert not first.mark_failed("test_session", 3, token)  # fenced: not its claim any more
    assert second.mark_failed("test_session", 3, token2)
    assert not second.holds("test_session", 3, token2)  # FAILED frees the claim...
    assert second.claim("test_session", 3, 5.0) == (DONE, "")  # ...never retried by its writer
    outcome, token3 = first.claim("test_session", 3, 5.0)  # but tried once by each other one
    assert outcome == CLAIMED
    assert first.mark_failed("test_session", 3, token3)
    assert first.claim("test_session", 3, 5.0) == (DONE, "")
    assert first.failed_by("test_session", 3) == {"h:1:a", "h:2:b"}
    assert store.redis.pttl(store.keys.scan_failed_by("test_session", 3)) > 0  # expires
    store.redis.sadd(store.keys.writer_saved("test_session"), "4")
    assert first.claim("test_session", 4, 5.0) == (DONE, "")  # saved: never taken again


def _emit_scans(session, count: int, points: int) -> tuple[list, list]:
    """``count`` concurrent scans, prepared: the scans and their two channels each."""
    scans, channels = [], []
    for k in range(count):
        scan = session.create_scan(f"s{k}", {"npoints": points})
        timer = scan.create_container("timer")
        channels.append(
            (
                timer.create_channel("timer:c", "float64"),
                timer.create_channel("m:s", "uint16", (8,)),
            )
        )
        scan.prepared()
        scans.append(scan)
    return scans, channels


def _emit(channels: list, blocks: range, step: int) -> None:
    """Blocks ``blocks`` of ``step`` points, interleaved over the scans."""
    for b in blocks:
        for k, (c, m) in enumerate(channels):
            c.emit(np.arange(b * step, (b + 1) * step, dtype=np.float64) + 1000 * k)
            m.emit(np.full((step, 8), b + k, dtype=np.uint16))


def _assert_exact(store: DataStore, root: Path, numbers: list[int], points: int) -> None:
    node = get_session_node("test_session", store=store)
    for number in numbers:
        with assert_file_matches_redis(node.get_scan(number), root) as file:
            assert file[f"{number}.1/measurement/c"].shape == (points,)
    # Every scan is linked from the session file, whichever writer wrote it.
    with h5py.File(root / "test_session/test_session.h5", "r") as file:
        for number in numbers:
            assert isinstance(file.get(f"{number}.1", getlink=True), h5py.ExternalLink)


def test_two_in_process_pool_writers_share_concurrent_scans(store, session, tmp_path):
    root = tmp_path / "data"
    services = [
        WriterService(
            ["test_session"], root=root, store=store, flush_period=0.05, pool=True, isolate=False
        )
        for _ in range(2)
    ]
    with ExitStack() as stack:
        for service in services:
            stack.enter_context(service)
        wait_for(lambda: len(pool_members("test_session", store=store)) == 2, 5, "two members")
        scans, channels = _emit_scans(session, 6, 400)
        _emit(channels, range(4), 50)
        for scan in scans:
            scan.end()
        numbers = [s.number for s in scans]
        wait_for(lambda: set(numbers) <= saved_scans("test_session", store=store), 30, "saved")
        writers = _writers_of(store, root, numbers)
    assert set(writers.values()) == {s.owner for s in services}  # both took scans
    _assert_exact(store, root, numbers, 200)
    # Leaving, they removed their member records and released every claim.
    assert pool_members("test_session", store=store) == []
    assert not any(store.redis.exists(store.keys.scan_claim("test_session", n)) for n in numbers)


@pytest.mark.parametrize(
    ("count", "extra"),
    [(3, ("--in-process",)), (2, ())],  # threads; worker processes (the default)
    ids=["3-writers-in-process", "2-writers-isolated"],
)
def test_pool_processes_write_each_scan_once_and_take_over_a_killed_writer(
    redis_url, store, session, tmp_path, capsys, count, extra
):
    """Writer processes sharing six scans; one SIGKILLed mid-scan: its running scans are
    completed exactly by the others."""
    root = tmp_path
    with ExitStack() as stack:
        procs = [stack.enter_context(pool_writer(redis_url, root, *extra)) for _ in range(count)]
        wait_for(lambda: len(_members(store)) == count, 30, f"{count} pool members")
        scans, channels = _emit_scans(session, 6, 400)
        _emit(channels, range(4), 50)
        for scan in scans:
            scan.flush()
        # Each scan is held by exactly one writer; pick a writer holding a running scan.
        wait_for(
            lambda: sum(len(m["held"]) for m in _members(store).values()) == 6, 15, "6 held scans"
        )
        members = _members(store)
        held = [name for m in members.values() for name in m["held"]]
        assert sorted(held) == sorted(f"{s.number}_{s.name}" for s in scans)  # held once each
        assert main(["--redis-url", redis_url, "writer", "--status", "test_session"]) == 0
        out = capsys.readouterr().out
        assert f"test_session: pool of {count} writers" in out
        assert all(f"pid {p.pid} on" in out for p in procs)
        # The library call reports the same pool: every member, its load and its scans.
        status = writer_status("test_session", store=store)
        assert status["pool"] and status["writing"] and status["mismatch"] == []
        assert {m["pid"] for m in status["members"]} == {p.pid for p in procs}
        assert sorted(status["running"]) == sorted(held)
        assert sum(m["load"] for m in status["members"]) == 6
        assert status["root"] == str(root.resolve())
        victim = next(p for p in procs if members[p.pid]["held"])
        victim_scans = {int(name.partition("_")[0]) for name in members[victim.pid]["held"]}
        victim_owner = members[victim.pid]["owner"]
        victim.kill()  # SIGKILL mid-scan: no clean-up at all
        victim.wait(timeout=10)
        # The scans go on without it, and end.
        _emit(channels, range(4, 8), 50)
        for scan in scans:
            scan.end()
        numbers = [s.number for s in scans]
        wait_for(lambda: set(numbers) <= saved_scans("test_session", store=store), 40, "saved")
        writers = _writers_of(store, root, numbers)
        survivors = {m["owner"] for m in _members(store).values()}
        assert victim_owner not in survivors and len(survivors) == count - 1
        # The killed writer's scans were completed by the others.
        taken_over = [n for n in numbers if n in victim_scans]
        assert taken_over and all(writers[n] in survivors for n in taken_over)
    # Each scan was taken once, those of the killed writer once more: never two at once.
    logs = [p.output for p in procs]
    for number, scan in zip(numbers, scans, strict=True):
        taken = [log.count(f"scan test_session:{number}_{scan.name}: taken") for log in logs]
        assert sum(taken) == (2 if number in victim_scans else 1), (number, taken)
    _assert_exact(store, root, numbers, 400)


def test_the_worker_process_fences_itself_on_the_scan_claim(store, session, tmp_path):
    """A scan claim taken from under a pool writer (it froze): its worker stops writing."""
    root = tmp_path / "data"
    service = WriterService(
        ["test_session"], root=root, store=store, flush_period=0.05, pool=True, isolate=True
    )
    with service:
        scan = session.create_scan("s", {"npoints": 100})
        channel = scan.create_container("timer").create_channel("timer:c", "float64")
        scan.prepared()
        channel.emit(np.arange(10, dtype=np.float64))
        scan.flush()
        key = store.keys.scan_claim("test_session", scan.number)
        other = ScanClaims(store, "elsewhere:1:x")  # a live member of the pool, elsewhere
        other.publish("test_session", {"owner": other.owner, "load": 99}, 60)
        wait_for(lambda: store.redis.exists(key), 15, "the scan to be claimed")
        wait_for(lambda: service.workers.running, 15, "the worker to write the scan")
        # Another writer's claim replaces this one's (as after a lapse): the fence fails.
        store.redis.hset(key, mapping={"owner": "elsewhere:1:x", "token": "other"})
        wait_for(lambda: not service.workers.running, 10, "the worker to stop")
        channel.emit(np.arange(10, 20, dtype=np.float64))
        scan.end()
        other.leave("test_session")  # "elsewhere" died: this writer takes the scan again
        wait_for(lambda: scan.number in saved_scans("test_session", store=store), 20, "saved")
    node = get_session_node("test_session", store=store).get_scan(scan.number)
    with assert_file_matches_redis(node, root) as file:
        assert file[f"{scan.number}.1/measurement/c"].shape == (20,)


def test_a_pool_and_a_single_writer_never_write_one_session_together(
    redis_url, store, session, tmp_path, capsys
):
    root = tmp_path / "data"
    single = WriterService(
        ["test_session"], root=root, store=store, flush_period=0.05, isolate=False
    )
    pooled = WriterService(
        ["test_session"], root=root, store=store, flush_period=0.05, pool=True, isolate=False
    )
    with single:
        wait_for(lambda: single.status("test_session")["writing"], 5, "the single writer")
        with pooled:
            wait_for(lambda: "test_session" in pooled.pool.blocked, 5, "the pool writer to wait")
            scan = session.create_scan("s", {})
            scan.create_container("timer").create_channel("timer:c", "float64").emit([1.0, 2.0])
            scan.end()
            wait_for(lambda: scan.number in saved_scans("test_session", store=store), 15, "saved")
            verdict = store.redis.hget(
                store.keys.scan("test_session", scan.number), "saving_writer"
            )
            assert verdict == single.owner.encode()
            assert pooled.pool.load == 0 and not pooled.pool.held("test_session")
            # The status is the single writer's, with the pool writer waiting behind it.
            wait_for(
                lambda: (
                    [
                        m.get("blocked")
                        for m in writer_status("test_session", store=store)["members"]
                    ]
                    == [None, single.owner]
                ),
                5,
                "the pool writer to publish that it waits",
            )
            status = writer_status("test_session", store=store)
            assert status["pool"] is False and status["owner"] == single.owner
            assert [m["owner"] for m in status["members"]] == [single.owner, pooled.owner]
            assert main(["--redis-url", redis_url, "writer", "--status", "test_session"]) == 0
            out = capsys.readouterr().out
            assert "test_session: writing (pid" in out
            assert f"pool writer {pooled.owner} waits: the session has a single writer" in out
    # The other way round: the pool holds the session, a single writer is a standby.
    pooled = WriterService(
        ["test_session"], root=root, store=store, flush_period=0.05, pool=True, isolate=False
    )
    single = WriterService(
        ["test_session"], root=root, store=store, flush_period=0.05, isolate=False
    )
    with pooled:
        wait_for(lambda: pool_members("test_session", store=store), 5, "the pool member")
        with single:
            wait_for(lambda: single._sessions["test_session"].other == "pool", 5, "standby")
            scan = session.create_scan("t", {})
            scan.create_container("timer").create_channel("timer:c", "float64").emit([3.0])
            scan.end()
            wait_for(lambda: scan.number in saved_scans("test_session", store=store), 15, "saved")
            verdict = store.redis.hget(
                store.keys.scan("test_session", scan.number), "saving_writer"
            )
            assert verdict == pooled.owner.encode()
            assert not single.status("test_session")["writing"]


@pytest.mark.timeout(90)
def test_a_writer_whose_workers_are_busy_leaves_new_scans_to_another(store, session, tmp_path):
    root = tmp_path / "data"

    def claimed() -> dict[int, str]:
        owners = {}
        for scan in scans:
            owner = store.redis.hget(store.keys.scan_claim("test_session", scan.number), "owner")
            if owner is not None:
                owners[scan.number] = owner.decode()
        return owners

    def writer() -> WriterService:
        return WriterService(
            ["test_session"], root=root, store=store, flush_period=0.05, pool=True, workers=1
        )

    with ExitStack() as stack:
        first = stack.enter_context(writer())
        wait_for(lambda: pool_members("test_session", store=store), 5, "the first member")
        scans, channels = _emit_scans(session, 3, 400)
        _emit(channels, range(2), 50)
        wait_for(lambda: first.workers.running, 20, "the first writer to write a scan")
        # Its one worker is busy: the other two scans stay unclaimed, not queued behind it.
        for _ in range(10):
            assert list(claimed().values()) == [first.owner], claimed()
            time.sleep(0.1)
        second = stack.enter_context(writer())
        wait_for(lambda: len(claimed()) == 2, 20, "the second writer to take a scan")
        assert sorted(claimed().values()) == sorted([first.owner, second.owner])
        _emit(channels, range(2, 4), 50)
        for scan in scans:
            scan.end()
        numbers = [s.number for s in scans]
        wait_for(lambda: set(numbers) <= saved_scans("test_session", store=store), 60, "saved")
        writers = _writers_of(store, root, numbers)
    assert set(writers.values()) == {first.owner, second.owner}
    _assert_exact(store, root, numbers, 200)
