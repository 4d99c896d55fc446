"""A master killed mid-scan: its replica takes over, and the scan is exact or fails clearly.

Each test starts its own cluster (the shared one keeps its masters). The master serving the
scan's slot is killed (SIGKILL) while a publisher emits points, a writer saves the scan and a
subscriber walks it; with a node timeout of 0.5 s its replica is promoted in about a second,
well within the outage budget every client rides out.

Replication is asynchronous: a master may acknowledge writes its replica never gets. The
``lagging`` cases make that happen for sure (the replica is frozen while the master takes
points, then the master is killed): the lost points are in the middle of the scan (later
points follow them) or at its end. Whatever happens, what the publisher, the subscriber and
the writer report must be the whole scan, exactly, or an error naming the loss: never fewer
points without one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
import redis

from scanstream import (
    DataStore,
    EventType,
    IndexNoMoreThereError,
    RedisUnreachableError,
    ScanLostError,
    ScanState,
    Settings,
    create_session,
    get_session_node,
)
from scanstream.admin import list_scans
from scanstream.models import SavingState
from scanstream.subscribe.tree import ScanNode
from scanstream.writer import WriterService, nexus, scan_file_path, writer_status

from .cluster_nodes import LocalCluster, Node, local_cluster

POINTS = 1200
KILLED_AT = 300  # points acknowledged (and replicated) before the failure
LOST = 300  # points the master acknowledges while its replica is frozen (lagging cases)


@pytest.fixture
def own_cluster(server_binary: Path, tmp_path: Path) -> Iterator[LocalCluster]:
    with local_cluster(server_binary, tmp_path / "nodes") as started:
        yield started


@pytest.mark.parametrize("case", ["replicated", "lagging-middle", "lagging-tail"])
def test_a_master_killed_mid_scan_loses_nothing_silently(
    own_cluster: LocalCluster, tmp_path: Path, case: str
) -> None:
    settings = Settings(redis_url=own_cluster.url, lease_time=10, max_unreachable_time=20)
    store = DataStore(settings=settings)
    service = WriterService(["s"], root=tmp_path / "data", store=store, flush_period=0.05)
    service.start()
    walked: list[np.ndarray] = []
    arrivals: list[float] = []
    walk_error: list[BaseException] = []
    walk_end: list[str] = []
    end_error: ScanLostError | None = None
    total = KILLED_AT + LOST if case == "lagging-tail" else POINTS
    try:
        session = create_session("s", store=store)
        scan = session.create_scan("failover", {"save": True})
        channel = scan.create_container("timer").create_channel("x")
        scan.prepared()
        scan_node = get_session_node("s", store=store).get_scan(scan.number)

        def walk() -> None:
            try:
                for event_type, node, data in scan_node.walk_events(timeout=30):
                    if event_type is EventType.NEW_DATA and node.name == "x":
                        walked.append(np.asarray(data.data))
                        arrivals.append(time.monotonic())
                    if event_type is EventType.END_SCAN:
                        walk_end.append(f"END_SCAN {data.data.name}: {data.description}")
                        return
            except Exception as exc:  # reported below
                walk_error.append(exc)

        walker = threading.Thread(target=walk, daemon=True)
        walker.start()
        victim = own_cluster.master_of(store.keys.scan("s", scan.number))
        replica = own_cluster.replica_of(victim)
        for i in range(total):
            channel.emit(float(i))
            if i + 1 == KILLED_AT:
                scan.flush()
                with victim.client() as client:  # every point so far is on the replica too
                    assert client.execute_command("WAIT", 1, 5000) == 1
                if case.startswith("lagging"):
                    # Frozen and cut off: what the master takes now never reaches it (a
                    # live replica would still read it from its socket after a freeze).
                    replica.pause()
                    with victim.client() as client:
                        assert client.client_kill_filter(_type="replica") == 1
                else:
                    victim.kill()
            if case.startswith("lagging") and i + 1 == KILLED_AT + LOST:
                scan.flush()  # acknowledged by the master only
                victim.kill()
                replica.resume()
            time.sleep(0.0005)
        try:
            scan.end()
        except ScanLostError as exc:
            end_error = exc
        walker.join(30)
        assert not walker.is_alive()

        deadline = time.monotonic() + 30
        while True:
            (summary,) = list_scans(store, "s").scans
            if summary.saving.state in (SavingState.SAVED, SavingState.FAILED):
                break
            assert time.monotonic() < deadline, f"saving still {summary.saving}"
            time.sleep(0.1)
        expected = np.arange(total, dtype=np.float64)
        scan_error = (store.redis.hget(store.keys.scan("s", scan.number), "error") or b"").decode()
        # Each observer: (what it holds, exactly as emitted) or the error it reported.
        (x,) = [n for n in scan_node.load_nodes() if n.name == "x"]
        try:
            in_redis: object = np.array_equal(x[:], expected)
        except IndexNoMoreThereError as exc:
            in_redis = exc
        if in_redis is False and summary.state == ScanState.FAILED.name:  # the scan says why
            in_redis = f"scan FAILED: {scan_error}"
        walk = walk_error[0] if walk_error else np.array_equal(np.concatenate(walked), expected)
        got = np.concatenate(walked) if walked else np.zeros(0)
        if walk is False and case == "lagging-tail" and walk_end:
            # A walk that had not read the whole lost tail before the kill (timing): what it
            # got is exact, and its END_SCAN says FAILED and names the loss.
            told = "FAILED" in walk_end[0] and "'lost'" in walk_end[0]
            walk = walk_end[0] if told and np.array_equal(got, expected[: len(got)]) else False
        if summary.saving.state is SavingState.SAVED:
            in_file: object = _file_holds(scan_node, tmp_path / "data", expected)
        else:
            in_file = summary.saving.reason
    finally:
        replica.resume()
        service.stop()
        store.close()

    silence = max(np.diff(arrivals), default=0.0)
    observed = {"redis": in_redis, "walk": walk, "file": in_file, "end": end_error}
    print(
        f"\n{case}: scan {summary.state} {scan_error!r}, saving {summary.saving.state.name}; "
        f"longest wait for data {silence:.2f} s; {observed}; walk ended: {walk_end}"
    )
    # Never a silent hole: each one holds every point, or says what is missing.
    for what, seen in observed.items():
        assert seen is True or (what == "end" and seen is None) or _names_a_loss(seen), (
            what,
            seen,
        )
    if case == "replicated":
        assert summary.state == ScanState.DONE.name and end_error is None
        assert in_redis is True and walk is True and in_file is True
    elif case == "lagging-middle":
        # Points 300-599 are gone from Redis, later ones are there: reading them says so.
        assert isinstance(in_redis, IndexNoMoreThereError)
        assert "points 300 to 599 are gone" in str(in_redis)
    else:
        # The last 300 points are gone: END's check against what the publisher was told.
        assert summary.state == ScanState.FAILED.name
        assert f"{KILLED_AT} of {total} points" in str(end_error)
        assert f"{KILLED_AT} of {total} points" in scan_error
    with pytest.raises(redis.exceptions.ConnectionError):  # the victim stayed dead
        victim.client().ping()


def _names_a_loss(error: object) -> bool:
    text = str(error)
    return error is not None and error is not False and ("gone" in text or "sealed" in text)


def _file_holds(scan: ScanNode, root: Path, expected: np.ndarray) -> bool | str:
    """True if the saved file holds ``expected`` as channel x, else what it holds."""
    with h5py.File(scan_file_path(scan.info, scan.session_name, root), "r") as file:
        path = nexus.channel_path(file[nexus.entry_name(scan.number, 1)], "x")
        assert path is not None
        data = file[path][()]
    return True if np.array_equal(data, expected) else f"file holds {len(data)} points: {data}"


def test_a_slot_without_master_or_replica_is_an_outage_of_the_budget(
    own_cluster: LocalCluster,
) -> None:
    settings = Settings(redis_url=own_cluster.url, max_unreachable_time=1.5)
    with DataStore(settings=settings) as store:
        key = store.keys.scan("s", 1)
        store.redis.set(key, b"1")
        victim = own_cluster.master_of(key)
        own_cluster.replica_of(victim).kill()
        victim.kill()
        started = time.monotonic()
        with pytest.raises(RedisUnreachableError, match="Redis Cluster at redis\\+cluster://"):
            store.redis.get(key)
        elapsed = time.monotonic() - started
    # Ridden out for the budget (the cluster says CLUSTERDOWN, or the node is gone), not more.
    assert 1.5 <= elapsed < 5, elapsed


def _wait_promoted(replica: Node, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    with replica.client() as client:
        while client.execute_command("ROLE")[0] != b"master":
            assert time.monotonic() < deadline, "the replica was not promoted"
            time.sleep(0.05)


def _session_apart_from_its_first_scan(cluster: LocalCluster, store: DataStore) -> str:
    """A session name whose session slot and first scan's slot are on two masters."""
    for candidate in (f"s{i}" for i in range(100)):
        session_master = cluster.master_of(store.keys.session_scans(candidate))
        if session_master is not cluster.master_of(store.keys.scan(candidate, 1)):
            return candidate
    raise AssertionError("no session name with its first scan on another master")


def test_a_new_scan_entry_lost_in_a_failover_is_announced_again(
    own_cluster: LocalCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(redis_url=own_cluster.url, lease_time=10, max_unreachable_time=20)
    store = DataStore(settings=settings)
    name = _session_apart_from_its_first_scan(own_cluster, store)
    session_key = store.keys.session_scans(name)
    victim = own_cluster.master_of(session_key)
    replica = own_cluster.replica_of(victim)
    service = WriterService([name], root=tmp_path / "data", store=store, flush_period=0.05)
    service.start()
    new_nodes: list[int] = []
    walk_error: list[BaseException] = []
    try:
        session = create_session(name, store=store)
        deadline = time.monotonic() + 20
        while writer_status(name, store=store) is None:  # its claim must not be lost
            assert time.monotonic() < deadline, "the writer does not follow the session"
            time.sleep(0.05)
        with victim.client() as client:  # the session's keys so far are on the replica too
            assert client.execute_command("WAIT", 1, 5000) == 1
        node = get_session_node(name, store=store)

        def walk() -> None:  # started before the scan: it may read the first entry or not
            try:
                for event_type, scan_node, _ in node.walk_events(timeout=30):
                    if event_type is EventType.NEW_NODE and scan_node.type == "scan":
                        new_nodes.append(scan_node.number)
                    if event_type is EventType.END_SCAN and scan_node.type == "scan":
                        return
            except Exception as exc:  # reported below
                walk_error.append(exc)

        walker = threading.Thread(target=walk, daemon=True)
        walker.start()
        replica.pause()  # frozen and cut off: the NEW_SCAN entry never reaches it
        with victim.client() as client:
            assert client.client_kill_filter(_type="replica") == 1
        scan = session.create_scan("announced", {"save": True})
        assert scan.number == 1
        channel = scan.create_container("timer").create_channel("x")
        channel.emit(np.arange(KILLED_AT, dtype=np.float64))
        scan.flush()
        victim.kill()
        replica.resume()
        _wait_promoted(replica)
        own_cluster.wait_ok()
        # The hole this closes: the scan is in Redis, its announcement is not.
        assert store.redis.xrange(session_key) == []
        with caplog.at_level(logging.WARNING, "scanstream.publish.session"):
            scan.prepared()
        assert "announced it again" in caplog.text
        channel.emit(np.arange(KILLED_AT, POINTS, dtype=np.float64))
        scan.end()
        assert scan.state is ScanState.DONE
        walker.join(30)
        assert not walker.is_alive() and not walk_error
        assert scan.wait_saved(30).state is SavingState.SAVED
        walked = [
            scan_node.number
            for event_type, scan_node, _ in node.walk_events(wait=False)
            if event_type is EventType.NEW_NODE and scan_node.type == "scan"
        ]
        listed = [summary.number for summary in list_scans(store, name).scans]
        in_file = _file_holds(node.get_scan(1), tmp_path / "data", np.arange(POINTS))
    finally:
        replica.resume()
        service.stop()
        store.close()
    assert new_nodes == [1] and walked == [1] and listed == [1]  # seen, once
    assert in_file is True
