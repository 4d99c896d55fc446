"""The background send loop: one thread for every scan of a store (decision 0017), on a real server."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest
from list_queue import ListQueue
from redis.backoff import ConstantBackoff
from redis.retry import Retry

from scanstream import DataStore, RedisUnreachableError, Settings, create_session
from scanstream._transport.server import EmbeddedServer
from scanstream.publish import send_loop
from scanstream.publish.sender import Sender


def _wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.01)


def test_concurrent_scans_of_one_store_are_sent_by_one_thread(store: DataStore) -> None:
    scans = [create_session(f"loop{i}", store=store).create_scan("s") for i in range(4)]
    channels = [scan.create_container("timer").create_channel("x") for scan in scans]
    for scan in scans:
        scan.prepared()
    try:
        for i, channel in enumerate(channels):
            channel.emit(np.arange(10.0) + i)
        keys = [store.keys.scan_data(f"loop{i}", scans[i].number, 2) for i in range(4)]
        # No flush: the background loop sends every scan's points.
        _wait_until(
            lambda: all(store.redis.xlen(k) == 1 for k in keys), 10, "every scan's points sent"
        )
        (loop,) = {scan._sender._loop for scan in scans}  # one loop, one thread
        assert loop.thread is not None and loop.thread.is_alive()
        assert loop.thread.name == "scanstream-send"
        for i, key in enumerate(keys):  # each scan's own points, in its own stream
            ((_, fields),) = store.redis.xrange(key)
            assert np.array_equal(np.frombuffer(fields[b"d"], "<f8"), np.arange(10.0) + i)
    finally:
        for scan in scans:
            scan.end()


def test_a_scan_held_by_another_thread_does_not_hold_up_the_others(store: DataStore) -> None:
    held = create_session("held", store=store).create_scan("s")
    free = create_session("free", store=store).create_scan("s")
    held_channel = held.create_container("timer").create_channel("x")
    free_channel = free.create_container("timer").create_channel("x")
    held.prepared()
    free.prepared()
    free_key = store.keys.scan_data("free", free.number, 2)
    held_key = store.keys.scan_data("held", held.number, 2)
    try:
        # As a flush stuck in a long send would: the held scan's send lock is taken.
        with held._sender.send_lock:
            held_channel.emit(1.0)
            time.sleep(0.05)  # the loop meets the held scan with points to send
            free_channel.emit(2.0)
            _wait_until(lambda: store.redis.xlen(free_key) == 1, 10, "the free scan sent")
            assert store.redis.xlen(held_key) == 0
        _wait_until(lambda: store.redis.xlen(held_key) == 1, 10, "the held scan sent once free")
    finally:
        held.end()
        free.end()


def test_the_loop_is_woken_once_per_send_not_per_point(store: DataStore) -> None:
    sender = Sender(store, "lease-of-nothing", "woken")
    first, second = ListQueue("woken:a", sender), ListQueue("woken:b", sender)
    sender.add(first)
    sender.add(second)
    sender.wake.clear()
    first.put(b"1")
    assert sender.wake.is_set()
    sender.wake.clear()
    second.put(b"2")  # a second queue before the send: the loop knows already
    assert not sender.wake.is_set()
    assert sender.send(raise_errors=True)
    assert first.sent == second.sent == 1
    first.put(b"3")  # the first point after a send wakes it again
    assert sender.wake.is_set()


def test_the_thread_outlives_its_last_scan_briefly_and_comes_back(store: DataStore) -> None:
    scan = create_session("linger", store=store).create_scan("s")
    scan.create_container("timer").create_channel("x").emit(1.0)
    loop = scan._sender._loop
    scan.end()
    # One scan after another: the thread waits for the next scan a while...
    first = loop.thread
    assert first is not None and first.is_alive()
    # ... then ends, and the next scan starts a new one that sends its points.
    _wait_until(lambda: loop.thread is None, send_loop._LINGER + 5, "the idle thread ended")
    first.join(5)
    assert not first.is_alive()
    again = create_session("linger", store=store).create_scan("s")
    channel = again.create_container("timer").create_channel("x")
    again.prepared()
    channel.emit(2.0)
    key = store.keys.scan_data("linger", again.number, 2)
    _wait_until(lambda: store.redis.xlen(key) == 1, 10, "the new scan's point sent")
    again.end()


def test_a_stopped_sender_is_never_served_again(store: DataStore) -> None:
    sender = Sender(store, "lease-of-nothing", "stopped")
    queue = ListQueue("stopped:data", sender)
    sender.add(queue)
    sender.start()
    sender.stop()
    queue.put(b"late")  # (emits refuse after stop; the list queue does not)
    time.sleep(0.1)
    assert store.redis.xlen("stopped:data") == 0
    assert sender.serve() == float("inf")


def test_concurrent_scans_fail_together_when_the_server_is_gone(
    private_server: EmbeddedServer,
) -> None:
    # The loop sends for one scan at a time and each send rides out the outage budget: the
    # scans after the first must not each wait a budget more before they fail.
    budget = 2.0
    store = DataStore(
        settings=Settings(
            redis_url=private_server.url, max_unreachable_time=budget, lease_time=600.0
        )
    )
    try:
        scans = [create_session(f"gone{i}", store=store).create_scan("s") for i in range(4)]
        channels = [scan.create_container("timer").create_channel("x") for scan in scans]
        for scan in scans:
            scan.prepared()
        private_server.stop()
        started = time.monotonic()
        for channel in channels:
            channel.emit(1.0)
        senders = [scan._sender for scan in scans]
        _wait_until(lambda: all(s.fatal for s in senders), 6 * budget, "every scan failed")
        took = time.monotonic() - started
        # Each alone would take one budget (and its retries' pause); one after another, 4.
        assert took < 2.5 * budget, f"the 4 scans failed after {took:.1f} s"
        for sender in senders:
            assert isinstance(sender.error, RedisUnreachableError)
            assert "longer than max_unreachable_time" in str(sender.error)
            assert sender.queued == 0  # dropped, and said so in the error
    finally:
        store.close()


def test_a_scan_after_an_outage_is_not_failed_for_it(persistent_server: EmbeddedServer) -> None:
    # The outage that failed an earlier scan of the loop is over once the server answers:
    # a later scan of the same store publishes as usual.
    store = DataStore(settings=Settings(redis_url=persistent_server.url, max_unreachable_time=1.0))
    try:
        first = create_session("before", store=store).create_scan("s")
        channel = first.create_container("timer").create_channel("x")
        first.prepared()
        channel.emit(1.0)
        first.flush()
        persistent_server.stop()
        channel.emit(2.0)
        _wait_until(lambda: first._sender.fatal, 20, "the scan failed in the outage")
        persistent_server.start(timeout=10)
        later = create_session("after", store=store).create_scan("s")
        later_channel = later.create_container("timer").create_channel("x")
        later.prepared()
        later_channel.emit(np.arange(5.0))
        later.flush()
        later_channel.emit(np.arange(5.0, 10.0))  # sent by the loop
        key = store.keys.scan_data("after", later.number, 2)
        _wait_until(lambda: store.redis.xlen(key) == 2, 10, "the later scan's points sent")
        assert not later._sender.fatal and later._sender.error is None
        later.end()
    finally:
        store.close()


def test_a_lease_renewed_after_a_blip_ends_the_scans_outage(
    persistent_server: EmbeddedServer,
) -> None:
    # An idle scan rides out a short outage through its lease renewals (a retry policy of
    # its own, 3 tries): the renewal that works again must end that outage, or the next
    # blip, much later, would be timed from the first and fail the scan at once.
    store = DataStore(
        settings=Settings(
            redis_url=persistent_server.url,
            max_unreachable_time=3.0,
            lease_time=1.5,
            retry=Retry(ConstantBackoff(0.05), 3),
        )
    )
    try:
        idle = create_session("idle", store=store).create_scan("s")
        idle.create_container("timer").create_channel("x")
        idle.prepared()
        sender = idle._sender
        persistent_server.stop()
        _wait_until(lambda: sender._unreachable_since is not None, 10, "a renewal failed")
        persistent_server.start(timeout=10)
        _wait_until(lambda: sender._unreachable_since is None, 10, "the outage ended")
        assert not sender.fatal and sender._loop.outage is None
        idle.end()
    finally:
        store.close()


def test_a_wake_up_flag_left_set_by_a_race_is_reset_by_the_next_turn(store: DataStore) -> None:
    # A queue that told the sender while a send was taking its points leaves the flag set
    # with nothing queued; the loop's next turn resets it, so the next point wakes the loop.
    sender = Sender(store, "lease-of-nothing", "raced")
    queue = ListQueue("raced:data", sender)
    sender.add(queue)
    sender._notified = True  # the state such a race leaves
    sender.serve()
    sender.wake.clear()
    queue.put(b"1")
    assert sender.wake.is_set()


class _Failing:
    def serve(self) -> float:
        raise RuntimeError("a turn that fails")


class _Counting:
    def __init__(self) -> None:
        self.turns = 0

    def serve(self) -> float:
        self.turns += 1
        return time.monotonic() + 0.01


def test_a_turn_that_raises_does_not_stop_the_loop(caplog: pytest.LogCaptureFixture) -> None:
    loop = send_loop.SendLoop("scanstream-send-test")
    failing, counting = _Failing(), _Counting()
    loop.add(failing)
    loop.add(counting)
    try:
        _wait_until(lambda: counting.turns > 20, 10, "the other sender served on")
        assert loop.thread is not None and loop.thread.is_alive()
        assert "a turn of" in caplog.text and "a turn that fails" in caplog.text
    finally:
        loop.remove(failing)
        loop.remove(counting)
    _wait_until(lambda: loop.thread is None, send_loop._LINGER + 5, "the loop ended")
