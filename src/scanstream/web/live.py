"""Live curves: one feed per watched scan, read from Redis 10 times a second, shared by browsers.

A :class:`ScanFeed` follows the 0D channels of one scan (through :class:`ChannelNode` reads:
only the points published since its last read) into a :class:`~.decimate.Decimator`. The
:class:`Hub` keeps one feed per scan that at least one browser watches, polls it in a worker
thread every :data:`POLL_INTERVAL` seconds, and wakes the browsers' streams. Each stream then
sends what its browser has not seen yet: the whole decimated view after a merge (or at its
first message), else the buckets completed since and the bucket being filled. So N browsers
cost one Redis reader, and a browser holds at most ``4 * max_buckets`` rows plus a tail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncGenerator
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool

from .._transport.connection import DataStore
from ..exceptions import ScanstreamError
from ..models import ScanState
from ..subscribe.data_nodes import ChannelNode
from ..subscribe.tree import ScanNode, get_session_node
from .catalog import scalar_channels
from .decimate import Decimator

__all__ = ["MAX_BUCKETS", "POLL_INTERVAL", "Hub", "ScanFeed"]

logger = logging.getLogger(__name__)

#: Seconds between two reads of a running scan: the browser draws at most this often, and
#: at least 10 times a second needs some margin over 0.1 s.
POLL_INTERVAL = 0.05
#: Buckets of a decimated view (rows sent: at most four times as many, plus a tail).
MAX_BUCKETS = 1000
#: Points read from Redis per channel and poll: a long past scan arrives in a few polls.
READ_CHUNK = 200_000


def _column_list(values: np.ndarray) -> list[Any]:
    out: list[Any] = values.tolist()
    if not np.isfinite(values).all():
        out = [v if np.isfinite(v) else None for v in out]
    return out


class ScanFeed:
    """The decimated 0D columns of one scan, brought up to date by :meth:`poll` (blocking).

    Parameters
    ----------
    scan : ScanNode
        The scan to follow.
    max_buckets : int
        See :class:`~.decimate.Decimator`.
    """

    def __init__(self, scan: ScanNode, max_buckets: int = MAX_BUCKETS) -> None:
        self.scan = scan
        self.max_buckets = max_buckets
        #: The 0D channels by their names in the view (``catalog.scalar_channels``).
        self.channels: dict[str, ChannelNode] = {}
        self.decimator: Decimator | None = None
        self.state = ScanState.CREATED
        self.ended = False
        #: Increased by each poll that found something new.
        self.version = 0
        self.error: str | None = None
        self._lock = threading.Lock()

    @property
    def names(self) -> list[str]:
        """Column names (the channels' names in the view, ``catalog.data_nodes``), in order."""
        return list(self.channels)

    def poll(self) -> bool:
        """Read what is new; True if something changed. Blocking (Redis reads)."""
        with self._lock:
            try:
                return self._poll()
            except ScanstreamError as exc:  # expired or deleted while watched
                self.error = str(exc)
                self.ended = True
                self.version += 1
                return True

    def _poll(self) -> bool:
        if self.ended:
            return False
        state = self.scan.state
        changed = state is not self.state
        self.state = state
        if self.decimator is None:
            # The channels are announced before PREPARED; a scan ended without any has none.
            if state is ScanState.CREATED:
                return changed
            self.channels = scalar_channels(self.scan)
            self.decimator = Decimator(len(self.channels), self.max_buckets)
            changed = True
        lengths = [len(n) for n in self.channels.values()]
        have = self.decimator.count
        # Rows are aligned: only points every channel has (a channel that ended shorter is
        # not waited for once the scan is over).
        upto = min(lengths, default=0) if not state.is_final else max(lengths, default=0)
        upto = min(upto, have + READ_CHUNK)
        if upto > have:
            columns = []
            for node, length in zip(self.channels.values(), lengths):
                end = min(upto, length)
                column = np.full(upto - have, np.nan)
                if end > have:
                    column[: end - have] = np.asarray(node.get(have, end - 1), dtype=float)
                columns.append(column)
            self.decimator.append(np.column_stack(columns))
            changed = True
        if state.is_final and self.decimator.count >= max(lengths, default=0):
            self.ended = True
            changed = True
        if changed:
            self.version += 1
        return changed

    def message(
        self, seen: tuple[int, int] | None
    ) -> tuple[dict[str, Any], tuple[int, int] | None]:
        """What a browser that has seen ``seen`` (``(generation, buckets)``, None: nothing) needs.

        Returns
        -------
        message : dict
            ``{"reset": bool, "names": [...], "index": [...], "columns": [[...], ...],
            "tail_index": [...], "tail": [[...], ...], "count", "state", "ended",
            "bucket_size"}``; ``reset`` True means the rows replace the browser's rows,
            else they are appended; the tail always replaces the previous tail.
        seen : tuple of int or None
            What the browser has seen after this message (None: no column yet, so that the
            next message is a reset that brings them).
        """
        with self._lock:
            dec = self.decimator
            message: dict[str, Any] = {
                "names": self.names,
                "state": self.state.name,
                "ended": self.ended,
                "error": self.error,
                "reset": True,
                "index": [],
                "columns": [],
                "tail_index": [],
                "tail": [],
                "count": 0,
                "bucket_size": 1,
            }
            if dec is None:  # before PREPARED: no channel known yet
                return message, None
            reset = seen is None or seen[0] != dec.generation
            from_bucket = 0 if seen is None or reset else seen[1]
            index, values = dec.rows(from_bucket)
            tail_index, tail = dec.tail()
            message.update(
                reset=reset,
                index=index.tolist(),
                columns=[_column_list(values[:, k]) for k in range(dec.ncolumns)],
                tail_index=tail_index.tolist(),
                tail=[_column_list(tail[:, k]) for k in range(dec.ncolumns)],
                count=dec.count,
                bucket_size=dec.bucket_size,
            )
            return message, (dec.generation, dec.nbuckets)


class _Watched:
    """A feed, the browsers watching it, and the event that wakes them."""

    def __init__(self, feed: ScanFeed) -> None:
        self.feed = feed
        self.watchers = 0
        self.changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


class Hub:
    """One :class:`ScanFeed` per scan that browsers watch, polled while at least one does.

    Parameters
    ----------
    store : DataStore
        The (read-only) connection.
    max_buckets : int
        See :class:`~.decimate.Decimator`.
    """

    def __init__(self, store: DataStore, max_buckets: int = MAX_BUCKETS) -> None:
        self.store = store
        self.max_buckets = max_buckets
        self._watched: dict[tuple[str, int], _Watched] = {}

    @property
    def feeds(self) -> int:
        """Number of scans watched now."""
        return len(self._watched)

    async def _run(self, watched: _Watched) -> None:
        feed = watched.feed
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            try:
                changed = await run_in_threadpool(feed.poll)
            except Exception:  # Redis gone for longer than its retry budget: try again later
                logger.exception("web: reading scan %s failed", feed.scan.db_name)
                changed = False
            if changed:
                watched.changed.set()
                watched.changed = asyncio.Event()
            if feed.ended:
                return
            # A fixed rate, not a fixed pause: the time a poll takes does not lower the rate.
            next_at = max(next_at + POLL_INTERVAL, loop.time())
            await asyncio.sleep(next_at - loop.time())

    async def stream(self, session: str, number: int) -> AsyncGenerator[dict[str, Any], None]:
        """Messages for one browser watching scan ``number`` of ``session``, until it ends.

        Raises
        ------
        SessionNotFoundError, ScanNotFoundError
            No such scan.
        """
        key = (session, number)
        watched = self._watched.get(key)
        if watched is None:
            scan = await run_in_threadpool(
                lambda: get_session_node(session, store=self.store).get_scan(number)
            )
            feed = ScanFeed(scan, self.max_buckets)
            await run_in_threadpool(feed.poll)  # the first message has what is there already
            watched = self._watched.get(key)  # another browser may have come meanwhile
            if watched is None:
                watched = _Watched(feed)
                self._watched[key] = watched
                watched.task = asyncio.create_task(self._run(watched))
        watched.watchers += 1
        seen: tuple[int, int] | None = None
        sent_version = -1
        try:
            while True:
                feed = watched.feed
                if feed.version != sent_version:
                    sent_version = feed.version
                    message, seen = feed.message(seen)
                    yield message
                    if message["ended"]:
                        return
                waiter = watched.changed
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(waiter.wait(), timeout=15)
                if feed.version == sent_version:
                    yield {"keepalive": True}
        finally:
            watched.watchers -= 1
            if watched.watchers == 0 and self._watched.get(key) is watched:
                del self._watched[key]
                if watched.task is not None and not watched.task.done():
                    watched.task.cancel()

    async def close(self) -> None:
        """Stop every poll task."""
        for watched in list(self._watched.values()):
            if watched.task is not None:
                watched.task.cancel()
        self._watched.clear()
