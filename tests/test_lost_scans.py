"""A scan whose keys are gone before they could have expired, unsaved, is recorded FAILED.

On one server the loss is made by deleting the scan's keys (what a cluster master restarted
empty does to the scans of its slots: tests/cluster/test_master_restarted_empty.py). A scan
that may have expired, that a writer saved, or that ``delete`` removed is not reported.
"""

from __future__ import annotations

import time

import numpy as np

from scanstream import (
    DataStore,
    EventType,
    PublishingSession,
    Settings,
    create_session,
    get_session_node,
)
from scanstream.admin import delete_scans, list_scans
from scanstream.models import SavingState, ScanState
from scanstream.publish.scan import ScanPublisher


def _ended_scan(session: PublishingSession, name: str = "s") -> ScanPublisher:
    scan = session.create_scan(name, {})
    scan.create_container("timer").create_channel("x").emit(np.arange(5.0))
    scan.end()
    return scan


def _drop_keys(store: DataStore, scan: ScanPublisher) -> None:
    keys, session = store.keys, scan.session_name
    store.redis.delete(
        keys.scan(session, scan.number),
        keys.scan_events(session, scan.number),
        keys.scan_lease(session, scan.number),
        keys.scan_data(session, scan.number, 2),
    )


def _walk_ends(store: DataStore, session: str = "test_session") -> dict[int, tuple[str, str]]:
    """scan number -> (final state, error) of the END_SCAN events of a walk started now."""
    ended: dict[int, tuple[str, str]] = {}
    for event_type, node, data in get_session_node(session, store=store).walk_events(wait=False):
        if event_type is EventType.END_SCAN and node.type == "scan":
            ended[node.number] = (data.data.name, (data.description or {}).get("error") or "")
    return ended


def test_a_scan_gone_before_its_retention_is_recorded_failed_once(
    session: PublishingSession, store: DataStore
) -> None:
    kept, lost = _ended_scan(session, "kept"), _ended_scan(session, "lost")
    _drop_keys(store, lost)
    ends = _walk_ends(store)
    assert ends[kept.number] == ("DONE", "")
    state, error = ends[lost.number]
    assert state == "FAILED"
    assert f"scan {lost.db_name} is gone from Redis although it was to be kept until" in error
    assert "lost its data" in error
    node = get_session_node("test_session", store=store).get_scan(lost.number)
    assert node.lost == error and node.state is ScanState.FAILED
    assert node.saving.state is SavingState.FAILED and node.saving.reason == error
    (summary,) = [s for s in list_scans(store, "test_session").scans if s.number == lost.number]
    assert summary.state == "FAILED" and summary.saving.state is SavingState.FAILED
    # It expires when the scan would have (its retention after its start), not never.
    ttl = store.redis.ttl(store.keys.scan("test_session", lost.number))
    assert 0 < ttl <= store.settings.retention_time
    # A second walk finds the record: nothing written again.
    before = store.redis.xlen(store.keys.scan_events("test_session", lost.number))
    assert _walk_ends(store)[lost.number] == (state, error)
    assert store.redis.xlen(store.keys.scan_events("test_session", lost.number)) == before


def test_a_scan_saved_expired_or_deleted_is_not_reported(
    session: PublishingSession, store: DataStore, redis_url: str
) -> None:
    saved = _ended_scan(session, "saved")
    store.redis.sadd(store.keys.writer_saved("test_session"), saved.number)
    _drop_keys(store, saved)  # in a file: nothing lost
    deleted = _ended_scan(session, "deleted")
    report = delete_scans(store, "test_session", numbers=[deleted.number], force=True)
    assert [d.number for d in report.deleted] == [deleted.number]
    # A scan of a publisher with a short retention, gone after it: it may have expired.
    with DataStore(settings=Settings(redis_url=redis_url, retention_time=0.5)) as short:
        expired = _ended_scan(create_session("test_session", store=short), "expired")
    # A NEW_SCAN entry of an older publisher (no retention stated) whose scan is gone.
    store.redis.xadd(
        store.keys.session_scans("test_session"),
        {"event": "NEW_SCAN", "scan": 99, "name": "old", "node_type": "scan"},
    )
    deadline = time.monotonic() + 20
    while store.redis.exists(store.keys.scan("test_session", expired.number)):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)  # its NEW_SCAN entry is now older than its retention
    assert _walk_ends(store) == {}
    assert store.redis.dbsize() > 0
    for number in (saved.number, deleted.number, expired.number, 99):
        assert not store.redis.exists(store.keys.scan("test_session", number)), number


def test_a_scan_gone_while_a_walk_follows_it_is_recorded_by_the_next_walk(
    session: PublishingSession, store: DataStore
) -> None:
    scan = session.create_scan("running", {})
    channel = scan.create_container("timer").create_channel("x")
    scan.prepared()
    channel.emit(np.arange(5.0))
    scan.flush()
    _drop_keys(store, scan)
    state, error = _walk_ends(store)[scan.number]
    assert state == "FAILED" and "lost its data" in error
    # Its publisher is told: the scan is gone (the record is not its scan).
    try:
        scan.end()
    except Exception as exc:  # ScanLostError, or ended by another process
        assert "gone" in str(exc) or "ended" in str(exc), exc
    else:
        raise AssertionError("end() of a lost scan did not raise")
