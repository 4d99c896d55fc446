"""Publishers of data nodes (channels, lima, scan references) and the scan's background sender.

``emit`` only validates and queues. One sender thread per scan sends what has accumulated on
every channel as one entry per channel, all in one MULTI/EXEC, as soon as the previous send
is done but not more often than every ``_MIN_SEND_INTERVAL``: a slow step scan gets one round
trip of latency, a fast one gets bigger entries instead of more of them (readers pay per
entry, not per point). See docs/performance.md.

Faults (docs/performance.md, "Connection faults"): network errors are retried by redis-py's
``Retry`` of the connection pool; a send that still fails keeps its points queued and is tried
again, until Redis has been unreachable for ``Settings.max_unreachable_time``, when the scan
fails. A replayed transaction whose reply was lost is recognised by its entry IDs (the index
of the entry's first point): a duplicate ID holding the same entry counts as sent.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import redis

from .._protocol import codecs
from .._transport.connection import stream_entries
from ..exceptions import EncodingError, RedisFullError, RedisUnreachableError

if TYPE_CHECKING:
    from redis.typing import EncodableT, FieldT

    from .scan import ScanPublisher

logger = logging.getLogger(__name__)

# Entries above this size are split: keeps single replies small for readers using COUNT.
_MAX_ENTRY_BYTES = 4 << 20
# A channel with more points than this waiting to be sent makes emit() send them itself:
# memory stays bounded when Redis is slower than the acquisition.
_MAX_PENDING_POINTS = 1 << 20
# Shortest time between two background sends. Readers pay about 10 us of pure-Python reply
# parsing per entry: at 100 channels x 1 kHz, sending every millisecond would make 100 k
# entries/s, more than a subscriber can parse; every 4 ms makes 25 k. It bounds the added
# latency to 4 ms, and a scan slower than that is sent point by point with no added delay.
_MIN_SEND_INTERVAL = 0.004
# Batches smaller than this (on average) are joined into one buffer per entry rather than
# given to the socket one by one: below it a copy is cheaper. Connections without vectored
# writes (TLS) always join: one write per batch would cost more than the copy.
_MIN_SCATTER_BYTES = 4096
# Pause between attempts while Redis is unreachable (redis-py's Retry has already backed off).
_UNREACHABLE_PAUSE = 0.2

_TRANSIENT = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


class _NodePublisher:
    """Common part of publishers of nodes: name, index and place in the tree."""

    type = "container"

    def __init__(self, scan: ScanPublisher, index: int, name: str, parent_db_name: str) -> None:
        self.scan = scan
        self.index = index
        self.name = name
        self.db_name = f"{parent_db_name}:{name}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.db_name!r}>"


class _DataPublisher(_NodePublisher):
    """A node with a data stream: queues batches that the scan's sender thread sends."""

    def __init__(self, scan: ScanPublisher, index: int, name: str, parent_db_name: str, codec: Any) -> None:
        super().__init__(scan, index, name, parent_db_name)
        self.codec = codec
        self.key = scan.store.keys.scan_data(scan.session.name, scan.number, index)
        self._lock = threading.Lock()
        self._pending: list[Any] = []
        self._emitted = 0  # points accepted by emit()
        self._sent = 0  # points acknowledged by Redis

    def __len__(self) -> int:
        """Number of points emitted so far (sent or queued)."""
        return self._emitted

    def _queue(self, batch: Any, npoints: int) -> None:
        scan = self.scan
        if scan._closing or scan._send_error is not None:
            scan._raise_if_cannot_emit()
        with self._lock:
            self._pending.append(batch)
            self._emitted += npoints
        if not scan._wake.is_set():
            scan._wake.set()
        if self._emitted - self._sent > _MAX_PENDING_POINTS:
            scan._sender.send_from_emit()

    def _take(self) -> list[Any]:
        with self._lock:
            pending, self._pending = self._pending, []
        return pending

    def _give_back(self, batches: list[Any]) -> None:
        with self._lock:
            self._pending[:0] = batches

    def _drop(self) -> int:
        """Forget the queued points (the scan failed); return how many there were."""
        with self._lock:
            self._take_locked_extra()
            dropped = self._emitted - self._sent
            self._pending = []
            self._emitted = self._sent
        return dropped

    def _take_locked_extra(self) -> None:
        """Hook for subclasses with a second queue (caller holds the lock)."""

    def _encode(self, batches: list[Any]) -> list[tuple[codecs.Fields, int]]:
        """Encode queued batches as ``(fields, npoints)`` entries."""
        raise NotImplementedError


class ChannelPublisher(_DataPublisher):
    """A numeric channel. Use :meth:`ContainerPublisher.create_channel`."""

    type = "channel"

    def __init__(self, scan: ScanPublisher, index: int, name: str, parent_db_name: str, codec: Any) -> None:
        super().__init__(scan, index, name, parent_db_name, codec)
        self.dtype = codec.dtype
        self.shape = codec.shape
        # Python floats/ints into a float channel skip numpy per point: converted per batch.
        self._fast_types: tuple[type, ...] = (
            (float, int) if codec.dtype.kind == "f" and codec.shape == () else ()
        )
        # Single points that need no validation beyond an exact type/dtype/shape match are
        # collected here and stacked into one array per send (step scans).
        self._singles: list[Any] = []
        self._fast_array = not codec.variable and codec.shape != ()

    def emit(self, data: Any) -> None:
        """Publish one point or a batch of points.

        Does not wait on Redis. ``data`` of the point shape is one point; of shape
        ``(n,) + shape`` it is ``n`` points. The data is copied: the caller may reuse its
        buffer at once.

        Raises
        ------
        EncodingError
            Wrong dtype kind (e.g. floats into an integer channel), wrong shape, values out of
            range, empty batch. Nothing is queued then; earlier points are unaffected.
        ScanEndedError
            The scan has ended.
        RedisUnreachableError
            Redis has been unreachable for longer than ``Settings.max_unreachable_time``:
            the scan has failed and its queued points were dropped. Shorter outages are
            hidden: points stay queued and are sent once Redis is back.
        RedisFullError
            Redis is full (maxmemory reached, no eviction): nothing more is accepted until
            Redis accepts the queued points again (they are kept, none is dropped).
        """
        kind = type(data)
        if kind in self._fast_types or (
            self._fast_array
            and kind is np.ndarray
            and data.shape == self.shape
            and data.dtype == self.dtype
        ):
            scan = self.scan
            if scan._closing or scan._send_error is not None:
                scan._raise_if_cannot_emit()
            with self._lock:
                self._singles.append(data if kind is not np.ndarray else data.copy())
                self._emitted += 1
            if not scan._wake.is_set():
                scan._wake.set()
            if self._emitted - self._sent > _MAX_PENDING_POINTS:
                scan._sender.send_from_emit()
            return
        batch = self.codec.batch(data)
        if isinstance(data, np.ndarray) and np.may_share_memory(batch, data):
            batch = batch.copy()  # already of the right dtype: not copied yet
        self._queue_after_singles(batch, len(batch))

    def _queue_after_singles(self, batch: Any, npoints: int) -> None:
        # Keep point order: single points queued by the fast path go before this batch.
        if self._singles:
            with self._lock:
                self._take_locked_extra()
        self._queue(batch, npoints)

    def _take_locked_extra(self) -> None:
        if self._singles:
            self._pending.append(np.array(self._singles, dtype=self.dtype))
            self._singles = []

    def _take(self) -> list[Any]:
        with self._lock:
            self._take_locked_extra()
            pending, self._pending = self._pending, []
        return pending

    def _encode(self, batches: list[Any]) -> list[tuple[codecs.Fields, int]]:
        codec = self.codec
        if codec.variable:
            points = [p for b in batches for p in b]
            out, chunk, size = [], [], 0
            for p in points:
                chunk.append(p)
                size += p.nbytes
                if size >= _MAX_ENTRY_BYTES:
                    out.append((codec.encode(chunk), len(chunk)))
                    chunk, size = [], 0
            if chunk:
                out.append((codec.encode(chunk), len(chunk)))
            return out
        # Consecutive batches go into entries of at most _MAX_ENTRY_BYTES (a batch larger than
        # that is cut). An entry's batches are sent from their own memory (Scattered) unless
        # they are so small that one copy costs less than a socket write per batch.
        step = max(1, _MAX_ENTRY_BYTES // max(1, codec.dtype.itemsize * max(1, codec.point_size)))
        entries: list[tuple[codecs.Fields, int]] = []
        group: list[np.ndarray] = []
        count = 0
        for batch in batches:
            for start in range(0, len(batch), step):
                piece = batch[start : start + step]
                if group and count + len(piece) > step:
                    entries.append((self._entry(group), count))
                    group, count = [], 0
                group.append(piece)
                count += len(piece)
        if group:
            entries.append((self._entry(group), count))
        return entries

    def _entry(self, group: list[np.ndarray]) -> codecs.Fields:
        scattered = (self.scan.store.scatter_writes
                     and sum(p.nbytes for p in group) >= _MIN_SCATTER_BYTES * len(group))
        return self.codec.encode(group, scattered=scattered)


class LimaPublisher(_DataPublisher):
    """A 2D detector node publishing image references. Use ``create_lima``."""

    type = "lima"

    def emit(self, references: Any) -> None:
        """Publish references to newly saved images.

        Parameters
        ----------
        references : sequence
            :class:`~scanstream.ImageReference` items or ``(file_path, path_in_file,
            index_in_file, file_format)`` tuples, one per image, in acquisition order.

        Raises
        ------
        EncodingError
            Malformed reference, or the node is in NOSAVING mode (use :meth:`emit_unsaved`).
        """
        if not self.codec.saved:
            raise EncodingError(
                f"lima node {self.name!r} is in NOSAVING mode: publish image counts with "
                "emit_unsaved(count)"
            )
        batch = self.codec.batch(references)
        self._queue(batch, len(batch))

    def emit_unsaved(self, count: int) -> None:
        """Publish that ``count`` more images were acquired without being saved (NOSAVING)."""
        if self.codec.saved:
            raise EncodingError(
                f"lima node {self.name!r} saves its images: publish their references with emit()"
            )
        if not isinstance(count, int) or count <= 0:
            raise EncodingError(f"lima node {self.name!r}: count must be a positive int, got {count!r}")
        self._queue(count, count)

    def _encode(self, batches: list[Any]) -> list[tuple[codecs.Fields, int]]:
        if not self.codec.saved:
            total = sum(batches)
            return [(self.codec.encode(total), total)]
        refs = [r for b in batches for r in b]
        step = 10000
        return [(self.codec.encode(refs[i : i + step]), len(refs[i : i + step])) for i in range(0, len(refs), step)]


class ScanRefPublisher(_DataPublisher):
    """A channel of references to other scans (the sub-scans of a scan group)."""

    type = "node_ref_channel"

    def emit(self, scans: Any) -> None:
        """Publish references to scans: ScanPublisher, ScanNode or ``(session, number)``."""
        items = scans if isinstance(scans, (list, tuple)) and not _is_ref_pair(scans) else [scans]
        batch = []
        for item in items:
            if hasattr(item, "session_name") and hasattr(item, "number"):
                batch.append((str(item.session_name), int(item.number)))
            elif _is_ref_pair(item):
                batch.append((str(item[0]), int(item[1])))
            else:
                raise EncodingError(
                    f"scan reference channel {self.name!r}: {item!r} is not a scan or a "
                    "(session, number) pair"
                )
        if not batch:
            raise EncodingError(f"scan reference channel {self.name!r}: empty batch")
        self._queue(batch, len(batch))

    def _encode(self, batches: list[Any]) -> list[tuple[codecs.Fields, int]]:
        refs = [r for b in batches for r in b]
        return [(self.codec.encode(refs), len(refs))]


def _is_ref_pair(item: Any) -> bool:
    return isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], int)


def _is_duplicate_id(error: BaseException) -> bool:
    """True for XADD's refusal of an ID not above the stream's last one."""
    return isinstance(error, redis.exceptions.ResponseError) and "equal or smaller" in str(error)


class _Sender:
    """The background sender of one scan: sends queued points, renews the lease, handles faults."""

    def __init__(self, scan: ScanPublisher) -> None:
        self.scan = scan
        self.store = scan.store
        self.lock = threading.Lock()  # one send at a time (background thread, flush, end)
        self.thread: threading.Thread | None = None
        self.unreachable_since: float | None = None
        self.fatal = False  # unreachable for too long: the scan failed, nothing more is sent

    # -- thread -------------------------------------------------------------------------
    def start(self) -> None:
        self.thread = threading.Thread(
            target=self._run, name=f"scanstream-send-{self.scan.db_name}", daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        self.scan._wake.set()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join()

    def _run(self) -> None:
        """Send queued points as soon as there are some; renew the lease meanwhile."""
        scan = self.scan
        keys = self.store.keys
        lease_key = keys.scan_lease(scan.session.name, scan.number)
        lease_ms = int(self.store.settings.lease_time * 1000)
        period = self.store.settings.lease_time / 3
        next_renewal = time.monotonic() + period
        last_send = 0.0
        wake = scan._wake
        while not scan._closing and not self.fatal:
            wake.wait(max(0.0, next_renewal - time.monotonic()))
            # Coalesce: points emitted within _MIN_SEND_INTERVAL of the last send go together.
            delay = last_send + _MIN_SEND_INTERVAL - time.monotonic()
            if delay > 0 and not scan._closing:
                time.sleep(delay)
            wake.clear()
            if scan._closing:
                break
            last_send = time.monotonic()
            ok = self.send(raise_errors=False)
            if ok and time.monotonic() >= next_renewal:
                try:
                    self.store.redis.set(lease_key, b"1", px=lease_ms)
                    next_renewal = time.monotonic() + period
                except _TRANSIENT as exc:
                    self._unreachable(exc)
                    ok = False
                except Exception as exc:  # noqa: BLE001 - reported to the emitting thread
                    self._refused(exc)
                    ok = False
            if not ok:
                wake.set()  # points are still queued: try again after a pause
                time.sleep(_UNREACHABLE_PAUSE)

    # -- sending ------------------------------------------------------------------------
    def send_from_emit(self) -> None:
        """Too many points queued: send now from the emitting thread (back pressure)."""
        if not self.send(raise_errors=False):
            self.scan._raise_if_cannot_emit()

    def send(self, *, raise_errors: bool) -> bool:
        """Send all queued points. True if done; False (or raise) if Redis refused or failed.

        A network error (after redis-py's retries) keeps the points queued; once Redis has
        been unreachable for ``max_unreachable_time`` the scan fails. A refusal by Redis (it
        is full) keeps them queued too, and makes every emit raise until a send succeeds.
        """
        with self.lock:
            try:
                self._send_pending()
            except _TRANSIENT as exc:
                fatal = self._unreachable(exc)
                if raise_errors:
                    raise (fatal or exc) from None
                return False
            except Exception as exc:  # noqa: BLE001 - reported to the emitting thread
                error = self._refused(exc)
                if raise_errors:
                    raise error from None
                return False
        self.unreachable_since = None
        if not self.fatal:
            self.scan._send_error = None
        return True

    def _send_pending(self) -> None:
        """Send all queued batches in one transaction (caller holds the send lock)."""
        taken = [(node, node._take()) for node in self.scan._data_nodes]
        taken = [(node, batches) for node, batches in taken if batches]
        if not taken:
            return
        pipe = self.store.redis.pipeline(transaction=True)
        sent: list[tuple[_DataPublisher, int]] = []
        written: list[tuple[str, str, int]] = []
        try:
            for node, batches in taken:
                first = node._sent
                for fields, npoints in node._encode(batches):
                    # The entry ID is the index of the entry's first point: any range is
                    # addressable with XRANGE/XREVRANGE, and a duplicate or a write after the
                    # seal is refused by Redis (IDs must grow).
                    entry_id = f"{first}-1"
                    # dict is invariant: our bytes-to-bytes fields do not match redis-py's
                    # dict[FieldT, EncodableT], although bytes is one of those types.
                    pipe.xadd(node.key, cast("dict[FieldT, EncodableT]", fields), id=entry_id)
                    written.append((node.key, entry_id, npoints))
                    first += npoints
                sent.append((node, first))
            results = pipe.execute(raise_on_error=False)
            self._check_results(written, results)
        except BaseException:
            for node, batches in taken:
                node._give_back(batches)
            raise
        for node, total in sent:
            node._sent = total

    def _check_results(self, written: list[tuple[str, str, int]], results: list[Any]) -> None:
        """Accept replayed entries (duplicate IDs holding the same entry); raise other errors."""
        for (key, entry_id, npoints), result in zip(written, results):
            if not isinstance(result, Exception):
                continue
            if _is_duplicate_id(result):
                # redis-py retried a transaction whose reply was lost: it was applied.
                there = stream_entries(self.store.redis.xrange(key, min=entry_id, max=entry_id))
                if there and there[0][1].get(b"n") == b"%d" % npoints:
                    logger.info("scan %s: entry %s of %s was already stored (replay)",
                                self.scan.db_name, entry_id, key)
                    continue
                raise redis.exceptions.ResponseError(
                    f"scan {self.scan.db_name}: {key} already holds another entry at {entry_id}: "
                    "was the scan published by two processes?"
                )
            raise result

    # -- faults -------------------------------------------------------------------------
    def _unreachable(self, exc: BaseException) -> BaseException | None:
        """Record a network failure; fail the scan past max_unreachable_time (return the error)."""
        now = time.monotonic()
        if self.unreachable_since is None:
            self.unreachable_since = now
            logger.warning("scan %s: Redis unreachable (%s); points stay queued",
                           self.scan.db_name, exc)
        limit = self.store.settings.max_unreachable_time
        if now - self.unreachable_since <= limit:
            return None
        dropped = sum(node._drop() for node in self.scan._data_nodes)
        error = RedisUnreachableError(
            f"scan {self.scan.db_name} failed: Redis at {self.store.url} unreachable for "
            f"{now - self.unreachable_since:.1f} s, longer than max_unreachable_time = {limit} s "
            f"(SCANSTREAM_MAX_UNREACHABLE_TIME); {dropped} queued points were dropped. Last error: {exc}"
        )
        error.__cause__ = exc
        logger.error("%s", error)
        self.fatal = True
        self.scan._send_error = error
        return error

    def _refused(self, exc: BaseException) -> BaseException:
        """Redis refused the data: keep it queued, make emit raise a clear error until a send works."""
        scan = self.scan
        queued = sum(node._emitted - node._sent for node in scan._data_nodes)
        if isinstance(exc, redis.exceptions.OutOfMemoryError) or "OOM" in str(exc):
            error: BaseException = RedisFullError(
                f"scan {scan.db_name}: Redis is full (maxmemory reached, no eviction) and refuses "
                f"its data; {queued} points are queued, none was dropped. Earlier scans are intact. "
                f"Free memory (delete saved scans, shorten SCANSTREAM_RETENTION_TIME) or raise "
                f"maxmemory; ending the scan FAILED or USER_ABORTED drops the queued points. "
                f"Redis said: {exc}"
            )
        elif isinstance(exc, redis.exceptions.RedisError):
            error = type(exc)(f"scan {scan.db_name}: Redis refused its data ({queued} points "
                              f"queued): {exc}")
        else:
            error = exc
        if error is not exc:
            error.__cause__ = exc
        if scan._send_error is None:
            logger.error("%s", error)
        scan._send_error = error
        return error
