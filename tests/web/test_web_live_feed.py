"""The live feeds behind the curves: one Redis reader per scan whatever the number of browsers,
the whole view first, then only what is new."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine, Iterator
from typing import Any

import numpy as np
import pytest

from scanstream import DataStore, PublishingSession, create_session
from scanstream.web.live import Hub

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def beamline(store: DataStore) -> Iterator[PublishingSession]:
    publishing = create_session("feed_session", store=store, warn_no_writer=False)
    try:
        yield publishing
    finally:
        publishing.close()


def _run(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run ``coroutine`` in a thread of its own: Playwright's sync API (the browser tests of
    the same session) keeps an event loop running in the main thread."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, coroutine).result(timeout=25)


async def _until(stream: Any, predicate: Any) -> dict[str, Any]:
    """The first message of ``stream`` that satisfies ``predicate`` (keepalives skipped)."""
    while True:
        message: dict[str, Any] = await asyncio.wait_for(stream.__anext__(), timeout=10)
        if not message.get("keepalive") and predicate(message):
            return message


def test_two_browsers_share_one_reader_and_get_the_rows_once(
    beamline: PublishingSession, store: DataStore
) -> None:
    scan = beamline.create_scan("loopscan", {"title": "feed", "type": "loopscan", "npoints": 30})
    timer = scan.create_container("timer")
    elapsed = timer.create_channel("elapsed_time", dtype="float64", unit="s")
    diode = timer.create_container("diode_controller").create_channel("diode", dtype="float64")
    scan.prepared()
    elapsed.emit(np.arange(10.0))
    diode.emit(np.arange(10.0) * 2)

    async def watch() -> None:
        hub = Hub(store)
        first, second = hub.stream("feed_session", 1), hub.stream("feed_session", 1)
        # The points are sent by the publisher's background thread: they may come in parts.
        seen: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
        await _until(first, lambda m: seen[1].append(m) or m["count"] == 10)
        await _until(second, lambda m: seen[2].append(m) or m["count"] == 10)
        assert hub.feeds == 1  # one reader for both
        for messages in seen.values():
            with_rows = [m for m in messages if m["names"]]
            assert with_rows[0]["reset"] and not any(m["reset"] for m in with_rows[1:])
            assert with_rows[-1]["names"] == ["elapsed_time", "diode"]
            assert [i for m in with_rows for i in m["index"]] == list(range(10))
        await asyncio.to_thread(lambda: (elapsed.emit(np.arange(10.0, 30.0)),
                                         diode.emit(np.arange(10.0, 30.0) * 2)))  # fmt: skip
        await asyncio.to_thread(scan.end)
        # Not decimated at 30 points: each later message has only the rows the browser lacks.
        later: list[dict[str, Any]] = []
        await _until(first, lambda m: later.append(m) or m["ended"])
        assert later[-1]["count"] == 30 and later[-1]["state"] == "DONE"
        assert not any(m["reset"] for m in later)
        assert [i for m in later for i in m["index"]] == list(range(10, 30))
        assert [v for m in later for v in m["columns"][1]][-1] == 58.0
        await first.aclose()
        assert hub.feeds == 1  # the second browser still watches
        await second.aclose()
        assert hub.feeds == 0
        await hub.close()

    _run(watch())


def test_a_missing_scan_fails_at_once(store: DataStore, beamline: PublishingSession) -> None:
    from scanstream import ScanNotFoundError

    async def watch() -> None:
        hub = Hub(store)
        with pytest.raises(ScanNotFoundError):
            await hub.stream("feed_session", 7).__anext__()
        assert hub.feeds == 0

    with beamline.create_scan("ct", {"title": "ct", "type": "ct", "npoints": 1}) as scan:
        scan.prepared()
    _run(watch())


def test_a_browser_that_came_before_prepared_gets_the_columns_in_a_reset(
    beamline: PublishingSession, store: DataStore
) -> None:
    scan = beamline.create_scan("ct", {"title": "early", "type": "ct", "npoints": 5})
    counter = scan.create_container("timer").create_channel("diode", dtype="float64")

    async def watch() -> None:
        hub = Hub(store)
        stream = hub.stream("feed_session", 1)
        first = await _until(stream, lambda m: True)
        assert first["state"] == "CREATED" and first["names"] == [] and first["reset"]
        await asyncio.to_thread(lambda: (scan.prepared(), counter.emit(np.arange(5.0))))
        # The first message with the channel is a reset (the points may come in it or later).
        later: list[dict[str, Any]] = []
        await _until(stream, lambda m: later.append(m) or m["count"] == 5)
        assert later[0]["reset"] and later[0]["names"] == ["diode"]
        assert not any(m["reset"] for m in later[1:])
        assert [v for m in later for v in m["columns"][0]] == [0.0, 1.0, 2.0, 3.0, 4.0]
        await asyncio.to_thread(scan.end)
        await _until(stream, lambda m: m["ended"])
        await stream.aclose()
        await hub.close()

    _run(watch())
