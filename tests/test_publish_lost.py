"""A scan that disappears from Redis under its publisher (flushed, restarted empty, deleted):
the publisher stops with ScanLostError naming the scan and the cause, and creates no key
without an expiry."""

from __future__ import annotations

import time

import numpy as np
import pytest

from scanstream import DataStore, PublishingSession, ScanLostError, ScanState, get_session_node


def keys_without_expiry(store: DataStore) -> list[bytes]:
    return [key for key in store.redis.keys("*") if store.redis.ttl(key) == -1]


def flush_and_wait_until_lost(store: DataStore, emit: object) -> ScanLostError:
    """Flush the server, then emit until the publisher notices (at its next send)."""
    store.redis.flushall()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            emit()  # type: ignore[operator]
        except ScanLostError as exc:
            return exc
        time.sleep(0.01)
    pytest.fail("the publisher did not notice that its scan was gone")


def test_a_flushed_scan_stops_its_publisher_and_leaves_no_key(
    session: PublishingSession, store: DataStore
) -> None:
    scan = session.create_scan("flushed", {})
    timer = scan.create_container("timer")
    sent = timer.create_channel("sent", "int64")  # has a data stream before the flush
    never = timer.create_channel("never", "int64")  # gets its first point after it
    scan.prepared()
    sent.emit(np.arange(10))
    scan.flush()

    def emit() -> None:
        sent.emit(1)
        never.emit(2)

    error = flush_and_wait_until_lost(store, emit)
    text = str(error)
    assert scan.db_name in text and "flushed, restarted without its data" in text
    assert store.url in text
    with pytest.raises(ScanLostError):
        never.emit(3)  # no counting on
    with pytest.raises(ScanLostError, match="could not be ended"):
        scan.end()
    assert scan.state is ScanState.FAILED
    assert store.redis.keys("*") == []  # nothing re-created, with or without expiry


def test_a_new_stream_is_not_left_behind_on_a_flushed_server(
    session: PublishingSession, store: DataStore
) -> None:
    scan = session.create_scan("first_point_after_flush", {})
    channel = scan.create_container("timer").create_channel("c", "float64")
    store.redis.flushall()
    channel.emit(1.0)
    with pytest.raises(ScanLostError, match="its data could not be stored"):
        scan.flush()
    assert keys_without_expiry(store) == []
    with pytest.raises(ScanLostError):
        scan.end()


def test_nodes_and_prepared_are_not_written_into_a_lost_scan(
    session: PublishingSession, store: DataStore
) -> None:
    # Nodes made before prepared() are written with PREPARED (decision 0015): the loss is
    # found there, and nothing is written.
    scan = session.create_scan("lost_tree", {})
    store.redis.flushall()
    scan.create_container("timer").create_channel("c")
    with pytest.raises(ScanLostError, match="it was not marked PREPARED"):
        scan.prepared()
    assert store.redis.keys("*") == []
    # A node made after prepared() is written before it is handed out.
    late = session.create_scan("lost_late_node", {})
    late.prepared()
    store.redis.flushall()
    with pytest.raises(ScanLostError, match="no node 'timer' was created"):
        late.create_container("timer")
    assert store.redis.keys("*") == []
    other = session.create_scan("lost_prepared", {})
    store.redis.delete(store.keys.scan(session.name, other.number))
    with pytest.raises(ScanLostError, match="it was not marked PREPARED"):
        other.prepared()
    assert not store.redis.exists(store.keys.scan(session.name, other.number))


def test_an_idle_scan_learns_it_is_lost_from_its_lease(
    session: PublishingSession, store: DataStore
) -> None:
    # The store's lease is 2 s: renewed every 0.67 s, and never re-created without its scan.
    scan = session.create_scan("idle", {})
    scan.create_container("timer").create_channel("c", "float64")
    scan.flush()  # its NEW_NODE entries written: nothing left to send
    store.redis.flushall()
    deadline = time.monotonic() + 10
    while True:
        try:
            scan.flush()  # nothing queued: it only reports what the sender learnt
        except ScanLostError as exc:
            assert "its lease could not be renewed" in str(exc)
            break
        assert time.monotonic() < deadline, "the lease renewal did not notice"
        time.sleep(0.05)
    assert store.redis.keys("*") == []  # the lease was not re-created either
    with pytest.raises(ScanLostError):
        scan.end()


def test_a_scan_whose_data_stream_was_deleted_stops(
    session: PublishingSession, store: DataStore
) -> None:
    scan = session.create_scan("stream_deleted", {})
    channel = scan.create_container("timer").create_channel("c", "float64")
    channel.emit(1.0)
    scan.flush()
    store.redis.delete(store.keys.scan_data(session.name, scan.number, 2))
    channel.emit(2.0)
    with pytest.raises(ScanLostError, match="is gone"):
        scan.flush()
    assert not store.redis.exists(store.keys.scan_data(session.name, scan.number, 2))
    with pytest.raises(ScanLostError):
        scan.end()
    node = get_session_node(session.name, store=store).get_scan(scan.number)
    assert node.state is ScanState.FAILED and "is gone" in (node.info.get("error") or "")
