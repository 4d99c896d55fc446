"""ReadAhead: events in order, errors passed on, stops of either side end the helper thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from scanstream import StopHandler
from scanstream.writer.read_ahead import ReadAhead


def _endless(stop: StopHandler, seen: list[int]) -> Iterator[int]:
    """A walk that produces an item every millisecond until its stop handler is stopped."""
    i = 0
    while not stop.stopped:
        seen.append(i)
        yield i
        i += 1
        time.sleep(0.001)


@pytest.mark.timeout(10)
def test_items_come_in_order_and_the_walk_error_after_them() -> None:
    def walk(stop: StopHandler) -> Iterator[int]:
        yield from range(100)
        raise ValueError("corrupt entry")

    got = []
    with ReadAhead(walk) as events, pytest.raises(ValueError, match="corrupt entry"):
        for item in events:
            got.append(item)
    assert got == list(range(100))


@pytest.mark.timeout(10)
def test_leaving_early_stops_the_walk_and_joins_the_thread() -> None:
    seen: list[int] = []
    reader = ReadAhead(lambda stop: _endless(stop, seen))
    with reader as events:
        for item in events:
            if item == 5:
                break
    assert not reader._thread.is_alive()
    # The helper read at most a few items ahead of the consumer before it stopped.
    assert 5 <= len(seen) <= 5 + 1 + 2 + 2


@pytest.mark.timeout(10)
def test_the_callers_stop_handler_ends_the_iteration() -> None:
    outer = StopHandler()
    started = threading.Event()

    def walk(stop: StopHandler) -> Iterator[int]:
        started.set()
        stop.wait(30)  # a walk blocked waiting for new events
        return
        yield  # a generator

    reader = ReadAhead(walk, outer)
    threading.Timer(0.2, outer.stop).start()
    t0 = time.monotonic()
    with reader as events:
        assert list(events) == []
    assert started.is_set()
    assert time.monotonic() - t0 < 2
    assert not reader._thread.is_alive()


@pytest.mark.timeout(20)
def test_close_is_prompt_while_the_helper_waits_to_hand_over() -> None:
    for _ in range(8):  # a helper polling every 0.1 s would be slow most of these times
        seen: list[int] = []
        reader = ReadAhead(lambda stop, seen=seen: _endless(stop, seen))
        deadline = time.monotonic() + 5
        while len(seen) < 3 and time.monotonic() < deadline:  # 2 queued, 1 waiting
            time.sleep(0.01)
        time.sleep(0.01)
        t0 = time.monotonic()
        reader.close()
        assert time.monotonic() - t0 < 0.04
        assert not reader._thread.is_alive()


@pytest.mark.timeout(10)
def test_ready_waits_for_the_next_event_and_keeps_it() -> None:
    gate = threading.Event()

    def walk(stop: StopHandler) -> Iterator[int]:
        yield 1
        gate.wait(5)  # the data pauses
        yield 2

    with ReadAhead(walk) as events:
        it = iter(events)
        assert next(it) == 1
        assert not events.ready(0.05)  # a pause: the batch may end
        threading.Timer(0.05, gate.set).start()
        assert events.ready(2.0)  # the next event came within the wait ...
        assert events.ready()  # ... is still there ...
        assert list(it) == [2]  # ... and is iterated over once, in order
