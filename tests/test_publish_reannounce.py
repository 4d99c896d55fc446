"""A scan whose NEW_SCAN entry disappears from the session stream while it runs (a failover
to a replica that lagged, a restart without persistence of that slot; here an XDEL or a DEL on
one server) is announced again by its publisher: a session walk, a writer and the listing
find it, once."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from scanstream import DataStore, EventType, PublishingSession, get_session_node
from scanstream.admin import list_scans
from scanstream.models import SavingState, ScanState
from scanstream.publish import announcement
from scanstream.writer import WriterService, nexus, scan_file_path


def _entries(store: DataStore, session: str = "test_session") -> list[tuple[bytes, int]]:
    stream = store.keys.session_scans(session)
    return [(entry_id, int(fields[b"scan"])) for entry_id, fields in store.redis.xrange(stream)]


def test_an_entry_still_there_costs_one_read_and_writes_nothing(
    session: PublishingSession, store: DataStore, caplog: pytest.LogCaptureFixture
) -> None:
    scan = session.create_scan("kept", {})
    scan.create_container("timer").create_channel("x").emit(1.0)
    before = _entries(store)
    scan.prepared()
    scan.end()
    assert _entries(store) == before == [(before[0][0], scan.number)]
    assert "announced it again" not in caplog.text


def test_a_deleted_entry_is_announced_again_and_the_scan_is_seen_once(
    session: PublishingSession, store: DataStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    service = WriterService(["test_session"], root=tmp_path / "data", store=store)
    service.start()
    new_nodes: list[int] = []
    ended: list[int] = []
    errors: list[BaseException] = []
    node = get_session_node("test_session", store=store)

    def walk() -> None:  # a walk that sees the first entry and the re-announced one
        try:
            for event_type, scan_node, _ in node.walk_events(timeout=20):
                if scan_node.type != "scan":
                    continue
                if event_type is EventType.NEW_NODE:
                    new_nodes.append(scan_node.number)
                elif event_type is EventType.END_SCAN:
                    ended.append(scan_node.number)
                    if len(ended) == 2:
                        return
        except Exception as exc:  # reported below
            errors.append(exc)

    walker = threading.Thread(target=walk, daemon=True)
    walker.start()
    try:
        lost = session.create_scan("lost", {"save": True})
        channel = lost.create_container("timer").create_channel("x")
        ((lost_id, _),) = _entries(store)
        channel.emit(np.arange(100, dtype=np.float64))
        lost.flush()
        later = session.create_scan("later", {"save": True})
        later.create_container("timer").create_channel("x").emit(2.0)
        later.prepared()
        later.end()
        store.redis.xdel(store.keys.session_scans("test_session"), lost_id)
        assert [n for _, n in _entries(store)] == [later.number]
        with caplog.at_level(logging.WARNING, "scanstream.publish.session"):
            lost.prepared()  # notices and announces it again, after the later scan
        assert [n for _, n in _entries(store)] == [later.number, lost.number]
        assert f"the NEW_SCAN entry {lost_id.decode()} of scan {lost.db_name}" in caplog.text
        channel.emit(np.arange(100, 200, dtype=np.float64))
        lost.end()
        assert len(_entries(store)) == 2  # end() found the new entry: no third one
        walker.join(20)
        assert not walker.is_alive() and not errors
        assert lost.wait_saved(20).state is SavingState.SAVED
        assert later.wait_saved(20).state is SavingState.SAVED
    finally:
        service.stop()
    assert sorted(new_nodes) == [lost.number, later.number]  # once each
    assert sorted(ended) == [lost.number, later.number]
    listed = [s.number for s in list_scans(store, "test_session").scans]
    assert sorted(listed) == [lost.number, later.number]
    # A walk started now finds both scans, once each.
    walked = [
        scan_node.number
        for event_type, scan_node, _ in node.walk_events(wait=False)
        if event_type is EventType.NEW_NODE and scan_node.type == "scan"
    ]
    assert sorted(walked) == [lost.number, later.number]
    scan_node = node.get_scan(lost.number)
    with h5py.File(scan_file_path(scan_node.info, "test_session", tmp_path / "data"), "r") as f:
        path = nexus.channel_path(f[nexus.entry_name(lost.number, 1)], "x")
        assert path is not None
        assert np.array_equal(f[path][()], np.arange(200, dtype=np.float64))


def test_a_stream_lost_whole_gets_the_entry_back_under_its_id(
    session: PublishingSession, store: DataStore
) -> None:
    scan = session.create_scan("restarted", {})
    scan.create_container("timer").create_channel("x").emit(1.0)
    ((entry_id, _),) = _entries(store)
    store.redis.delete(store.keys.session_scans("test_session"))  # the slot restarted empty
    scan.end()
    assert _entries(store) == [(entry_id, scan.number)]  # the order of the scans is kept


def test_a_scan_gone_with_its_entry_is_not_announced_again(
    session: PublishingSession, store: DataStore
) -> None:
    scan = session.create_scan("gone", {})
    stream = store.keys.session_scans("test_session")
    store.redis.delete(stream, store.keys.scan("test_session", scan.number))
    with pytest.raises(Exception, match="gone|lost|PREPARED"):
        scan.prepared()
    assert store.redis.xlen(stream) == 0


def test_a_new_scan_entry_written_twice_is_one_new_scan(
    session: PublishingSession, store: DataStore
) -> None:
    scan = session.create_scan("twice", {})
    scan.create_container("timer").create_channel("x").emit(1.0)
    scan.end()
    stream = store.keys.session_scans("test_session")
    ((_, fields),) = store.redis.xrange(stream)
    store.redis.xadd(stream, fields)
    node = get_session_node("test_session", store=store)
    walked = [
        scan_node.number
        for event_type, scan_node, _ in node.walk_events(wait=False)
        if event_type is EventType.NEW_NODE and scan_node.type == "scan"
    ]
    assert walked == [scan.number]
    assert [s.number for s in list_scans(store, "test_session").scans] == [scan.number]


def test_a_new_scan_entry_written_twice_is_one_child(
    session: PublishingSession, store: DataStore
) -> None:
    scan = session.create_scan("twice", {})
    scan.end()
    stream = store.keys.session_scans("test_session")
    ((_, fields),) = store.redis.xrange(stream)
    store.redis.xadd(stream, fields)  # as a client retry whose reply was lost
    node = get_session_node("test_session", store=store)
    assert [child.number for child in node.children()] == [scan.number]


def test_a_session_stream_that_cannot_be_read_does_not_keep_the_scan_from_ending(
    session: PublishingSession, store: DataStore, caplog: pytest.LogCaptureFixture
) -> None:
    scan = session.create_scan("garbled", {})
    channel = scan.create_container("timer").create_channel("c")
    stream = store.keys.session_scans("test_session")
    store.redis.delete(stream)
    store.redis.set(stream, b"garbage")  # a key of the wrong type: every XRANGE/XADD refused
    with caplog.at_level(logging.WARNING, logger="scanstream.publish.scan"):
        scan.prepared()
        channel.emit(np.arange(5.0))
        scan.end()
    assert store.redis.hget(store.keys.scan("test_session", scan.number), "state") == b"DONE"
    assert "could not be checked or written again" in caplog.text


def test_an_entry_lost_while_the_scan_runs_is_announced_again_before_its_end(
    session: PublishingSession, store: DataStore
) -> None:
    scan = session.create_scan("running", {})
    channel = scan.create_container("timer").create_channel("x")
    scan.prepared()
    ((entry_id, _),) = _entries(store)
    store.redis.xdel(store.keys.session_scans("test_session"), entry_id)
    node = get_session_node("test_session", store=store)

    def walked() -> list[int]:  # a live walk started now: the scans it is told of
        return [
            scan_node.number
            for event_type, scan_node, _ in node.walk_events(wait=False)
            if event_type is EventType.NEW_NODE and scan_node.type == "scan"
        ]

    assert walked() == []
    # The periodic check (every CHECK_PERIOD s while points are stored) announces it again.
    deadline = time.monotonic() + 20
    points = 0
    while not walked() and time.monotonic() < deadline:
        channel.emit(float(points))
        points += 1
        time.sleep(0.05)
    assert walked() == [scan.number]
    assert scan.state is ScanState.PREPARED  # still running
    scan.end()
    assert [n for _, n in _entries(store)] == [scan.number]  # end() found it: no second one
    assert store.redis.xlen(store.keys.scan_data("test_session", scan.number, 2)) > 0


def test_an_idle_running_scan_is_not_checked(
    session: PublishingSession, store: DataStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(announcement, "CHECK_PERIOD", 0.05)
    checks: list[bytes] = []
    original = PublishingSession.ensure_announced

    def counted(self: PublishingSession, scan: object, entry_id: bytes) -> bytes:
        checks.append(entry_id)
        return original(self, scan, entry_id)  # type: ignore[arg-type]

    monkeypatch.setattr(PublishingSession, "ensure_announced", counted)
    scan = session.create_scan("idle", {})
    channel = scan.create_container("timer").create_channel("x")
    scan.prepared()
    # prepared() and end() check the entry in their scripts on a single server (one call of
    # ensure_announced each on a cluster).
    own = 0 if not store.is_cluster else 1
    assert len(checks) == own
    time.sleep(0.5)  # ten periods without a point stored
    assert len(checks) == own
    channel.emit(1.0)
    scan.flush()
    deadline = time.monotonic() + 20
    while len(checks) < own + 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # and no further check while nothing more is stored
    assert len(checks) == own + 1
    scan.end()
    assert len(checks) == 2 * own + 1


def test_a_scan_shorter_than_a_period_starts_no_check_thread(session: PublishingSession) -> None:
    scan = session.create_scan("short", {})
    channel = scan.create_container("timer").create_channel("x")
    scan.prepared()
    channel.emit(1.0)
    scan.flush()
    name = f"scanstream-announce-{scan.db_name}"
    assert name not in [t.name for t in threading.enumerate()]  # due after CHECK_PERIOD only
    scan.end()
