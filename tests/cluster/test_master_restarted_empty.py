"""A master without a replica restarted empty: the scans whose keys it held are never a silent hole.

The server identity (one key, on one master) does not see a master of a cluster restarted
without its data when another master holds that key. The cluster here has no replicas and
``cluster-require-full-coverage no`` (the other masters go on serving while it is down); the
master killed and restarted empty holds neither the identity nor the session's keys, only those
of two scans: one that ended before (no writer saved it yet) and one running. The running
scan's publisher raises ScanLostError; a writer that follows the session (started after, or
running during the restart) records both scans as ended FAILED, with the reason, and walks and
``ls`` report them so.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from scanstream import (
    DataStore,
    EventType,
    NoWriterWarning,
    ScanLostError,
    ScanPublisher,
    ScanState,
    Settings,
    create_session,
    get_session_node,
)
from scanstream.admin import list_scans
from scanstream.models import SavingState
from scanstream.writer import WriterService, writer_status

from .cluster_nodes import LocalCluster, Node, local_cluster

NO_REPLICAS = ["--cluster-require-full-coverage", "no"]


@pytest.fixture
def bare_cluster(server_binary: Path, tmp_path: Path) -> Iterator[LocalCluster]:
    with local_cluster(server_binary, tmp_path / "nodes", replicas=False, extra=NO_REPLICAS) as c:
        yield c


def _victim(cluster: LocalCluster, store: DataStore) -> Node:
    """A master holding neither the database's keys (identity, protocol) nor the session's."""
    keys = store.keys
    shared = (keys.server_identity, keys.protocol, keys.sessions, keys.session_scans("s"))
    others = {cluster.master_of(key).port for key in shared}
    return next(m for m in cluster.masters if m.port not in others)


def _scan_on(
    cluster: LocalCluster, store: DataStore, victim: Node, name: str, *, end: bool
) -> ScanPublisher:
    """A scan of session "s" whose keys are on ``victim`` (scans elsewhere are ended)."""
    session = create_session("s", store=store)
    for _ in range(100):
        with pytest.warns(NoWriterWarning):  # no writer follows the session yet
            scan = session.create_scan(name, {"save": True})
        channel = scan.create_container("timer").create_channel("x")
        scan.prepared()
        channel.emit(np.arange(10.0))
        scan.flush()
        on_victim = cluster.master_of(store.keys.scan("s", scan.number)) is victim
        if end or not on_victim:
            scan.end()
        if on_victim:
            return scan
    raise AssertionError("no scan number fell on the victim master")


def _reported(store: DataStore) -> dict[int, tuple[str, str]]:
    """scan number -> (state, error) as a walk started now reports the scans' ends."""
    ended: dict[int, tuple[str, str]] = {}
    node = get_session_node("s", store=store)
    for event_type, scan_node, data in node.walk_events(wait=False):
        if event_type is EventType.END_SCAN and scan_node.type == "scan":
            description = data.description or {}
            ended[scan_node.number] = (data.data.name, description.get("error") or "")
    return ended


def test_scans_of_a_master_restarted_empty_are_reported_failed(
    bare_cluster: LocalCluster, tmp_path: Path
) -> None:
    settings = Settings(redis_url=bare_cluster.url, lease_time=5, max_unreachable_time=20)
    with DataStore(settings=settings) as store:
        victim = _victim(bare_cluster, store)
        finished = _scan_on(bare_cluster, store, victim, "finished", end=True)
        running = _scan_on(bare_cluster, store, victim, "running", end=False)
        victim.restart_empty()
        bare_cluster.wait_ok()
        # The publisher of the running scan: a clear error, no silent end.
        with pytest.raises(ScanLostError, match="gone from Redis"):
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                running.flush()  # the lease renewal or the next send finds the scan gone
                time.sleep(0.1)
        with pytest.raises(ScanLostError):
            running.end()
        with pytest.raises(ScanLostError):
            finished.saving  # noqa: B018
        # A writer following the session from its start records both as ended FAILED.
        service = WriterService(["s"], root=tmp_path / "data", store=store, flush_period=0.05)
        service.start()
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:  # every scan judged (SAVED or FAILED)
                scans = list_scans(store, "s").scans
                if len(scans) >= running.number and all(s.saving.state.is_final for s in scans):
                    break
                time.sleep(0.1)
        finally:
            service.stop()
        listed = {s.number: s for s in list_scans(store, "s").scans}
        for scan in (finished, running):
            summary = listed[scan.number]
            assert summary.state == ScanState.FAILED.name
            assert summary.saving.state is SavingState.FAILED
            assert "lost its data" in (summary.saving.reason or "")
        assert finished.saving.state is SavingState.FAILED
        # Every other scan is intact and saved.
        others = [s for n, s in listed.items() if n not in (finished.number, running.number)]
        assert all(s.saving.state is SavingState.SAVED for s in others)
        reported = _reported(store)
        for scan in (finished, running):
            state, error = reported[scan.number]
            assert state == "FAILED" and "lost its data" in error, (scan.number, error)


def test_a_scan_lost_while_a_writer_writes_it_is_recorded_failed(
    bare_cluster: LocalCluster, tmp_path: Path
) -> None:
    settings = Settings(redis_url=bare_cluster.url, lease_time=5, max_unreachable_time=20)
    with DataStore(settings=settings) as store:
        victim = _victim(bare_cluster, store)
        service = WriterService(["s"], root=tmp_path / "data", store=store, flush_period=0.05)
        service.start()
        try:
            deadline = time.monotonic() + 20
            while not (writer_status("s", store=store) or {}).get("writing"):  # owns "s"
                assert time.monotonic() < deadline
                time.sleep(0.02)
            session = create_session("s", store=store)
            for _ in range(100):  # a running scan whose keys are on the victim
                scan = session.create_scan("running", {"save": True})
                channel = scan.create_container("timer").create_channel("x")
                scan.prepared()
                channel.emit(np.arange(10.0))
                scan.flush()
                if bare_cluster.master_of(store.keys.scan("s", scan.number)) is victim:
                    break
                scan.end()
            else:
                raise AssertionError("no scan number fell on the victim master")
            deadline = time.monotonic() + 20
            while scan.saving.state is not SavingState.WRITING:  # the writer is at it
                assert time.monotonic() < deadline
                time.sleep(0.05)
            victim.restart_empty()
            bare_cluster.wait_ok()
            with pytest.raises(ScanLostError):
                while time.monotonic() < deadline + 20:
                    channel.emit(np.arange(10.0))
                    scan.flush()
                    time.sleep(0.1)
            with pytest.raises(ScanLostError):
                scan.end()
            deadline = time.monotonic() + 30
            while True:  # the writer gives up on it, and records why
                listed = {s.number: s for s in list_scans(store, "s").scans}
                summary = listed.get(scan.number)
                if summary is not None and summary.saving.state is SavingState.FAILED:
                    break
                assert time.monotonic() < deadline, summary
                time.sleep(0.1)
        finally:
            service.stop()
        assert summary.state == ScanState.FAILED.name
        assert "lost its data" in (summary.saving.reason or "")
        state, error = _reported(store)[scan.number]
        assert state == "FAILED" and "lost its data" in error
