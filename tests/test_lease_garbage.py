"""Garbage over a scan's lease key or in its data stream, written by another process."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import numpy as np
import pytest
import redis
from leased_publisher import start_leased_publisher

from scanstream import EventType, ScanState, get_session_node

# What an operator may leave over a lease key, none with an expiry (DEL first: another type).
GARBAGE = {
    "string": lambda r, key: r.set(key, b"garbage"),
    "lease value without expiry": lambda r, key: r.set(key, b"1"),
    "hash": lambda r, key: r.pipeline().delete(key).hset(key, "x", "y").execute(),
    "list": lambda r, key: r.pipeline().delete(key).rpush(key, "x").execute(),
}


def _lease_messages(caplog: pytest.LogCaptureFixture, key: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if key in r.getMessage()]


@pytest.mark.parametrize("kind", list(GARBAGE))
def test_garbage_over_a_dead_publishers_lease_ends_its_scan_killed(redis_url, store, caplog, kind):
    caplog.set_level(logging.ERROR, logger="scanstream")
    proc, number = start_leased_publisher(redis_url)
    try:
        scan_node = get_session_node("test_session", store=store).get_scan(number)
        walk = scan_node.walk_events(timeout=5)
        first = next(walk)
        assert first[0] == EventType.NEW_NODE
        # Stopped first, so that it cannot renew its lease over the garbage before it dies.
        os.kill(proc.pid, signal.SIGSTOP)
        GARBAGE[kind](store.redis, scan_node.lease_key)
        killed_at = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        events = [first, *walk]
        elapsed = time.monotonic() - killed_at
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()
    assert events[-1][0] == EventType.END_SCAN, events[-1]
    assert events[-1][2].description["state"] is ScanState.KILLED
    assert "lease" in events[-1][2].description["error"]
    # Grace (half the reader's 2 s lease time) + the reader's check period (0.5 s) + margin.
    assert elapsed < 1.0 + 0.5 + 1.0
    data = np.concatenate([e[2].data for e in events if e[0] == EventType.NEW_DATA])
    np.testing.assert_array_equal(data, np.arange(10.0))
    assert scan_node.state is ScanState.KILLED
    assert not store.redis.exists(scan_node.lease_key)  # the end dropped the garbage
    messages = _lease_messages(caplog, scan_node.lease_key)
    assert len(messages) == 1, messages  # logged once, naming the key
    assert "not a lease" in messages[0]


@pytest.mark.parametrize("kind", ["string", "hash"])
def test_a_live_publisher_replaces_garbage_over_its_lease(session, store, caplog, kind):
    caplog.set_level(logging.ERROR, logger="scanstream")
    scan = session.create_scan("s")
    channel = scan.create_container("t").create_channel("c")
    scan.prepared()
    channel.emit(0.0)
    scan.flush()
    scan_node = get_session_node(session.name, store=store).get_scan(scan.number)
    # Before the walk starts: its first check sees garbage, never a lease, and must still
    # wait for the publisher's renewal rather than end the scan at once.
    GARBAGE[kind](store.redis, scan_node.lease_key)
    events: list = []
    started = threading.Event()
    walker = threading.Thread(
        target=lambda: events.extend(scan_node.walk_events(timeout=10, started_event=started))
    )
    walker.start()
    try:
        assert started.wait(5)
        deadline = time.monotonic() + 2.0 * 1.5  # past a lease time and a reader's grace
        i = 1
        while time.monotonic() < deadline:
            channel.emit(float(i))
            i += 1
            time.sleep(0.05)
        assert store.redis.type(scan_node.lease_key) == b"string"
        assert store.redis.pttl(scan_node.lease_key) > 0
        scan.end()
    finally:
        walker.join(15)
    assert not walker.is_alive()
    assert events[-1][0] == EventType.END_SCAN
    assert events[-1][2].description["state"] is ScanState.DONE
    data = np.concatenate([e[2].data for e in events if e[0] == EventType.NEW_DATA])
    np.testing.assert_array_equal(data, np.arange(float(i)))
    replaced = [m for m in _lease_messages(caplog, scan_node.lease_key) if "was not a lease" in m]
    assert len(replaced) == 1, caplog.text  # the publisher said it, once


def test_an_entry_written_into_a_scans_stream_by_another_process_is_named(session, store):
    scan = session.create_scan("s")
    channel = scan.create_container("t").create_channel("c")
    scan.prepared()
    channel.emit(0.0)
    scan.flush()
    store.redis.xadd(channel.key, {"garbage": "1"}, id="99999999999-1")
    channel.emit(1.0)
    with pytest.raises(redis.exceptions.ResponseError) as raised:
        scan.flush()
    message = str(raised.value)
    assert "99999999999-1" in message
    assert "another process wrote into this scan's stream" in message
    assert "manual write" in message


@pytest.mark.parametrize("kind", [None, *GARBAGE])
def test_readers_and_the_end_script_judge_a_lease_key_alike(session, store, kind):
    scan = session.create_scan("s")
    scan_node = get_session_node(session.name, store=store).get_scan(scan.number)
    scan._sender.stop()  # no renewal from here on: it would replace the garbage
    if kind is not None:
        GARBAGE[kind](store.redis, scan_node.lease_key)
    assert scan_node.lease_alive() is (kind is None)
    # check_lease has no grace: the END script must agree with the reader's judgement.
    assert scan_node.check_lease() is (ScanState.CREATED if kind is None else ScanState.KILLED)
