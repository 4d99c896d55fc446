"""Publishers of data nodes (channels, lima, scan references): they validate and queue.

``emit`` validates its argument with the node's codec and puts the batch in the node's
queue; the scan's :class:`~scanstream.publish.sender.Sender` takes it from there. The queues
(one class per kind of node) hold the points not yet acknowledged by Redis and know how their
batches become entries (:class:`~scanstream.publish.send_transaction.DataQueue`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from .._protocol import codecs
from .._transport.vectored import Scattered
from ..exceptions import EncodingError, ScanEndedError

if TYPE_CHECKING:
    from .scan import ScanPublisher
    from .sender import Sender

__all__ = ["ChannelPublisher", "LimaPublisher", "ScanRefPublisher"]

# Entries above this size are split: keeps single replies small for readers using COUNT.
_MAX_ENTRY_BYTES = 4 << 20
# A channel with more points than this waiting to be sent makes emit() send them itself:
# memory stays bounded when Redis is slower than the acquisition.
_MAX_PENDING_POINTS = 1 << 20
# Batches smaller than this (on average) are joined into one buffer per entry rather than
# given to the socket one by one: below it a copy is cheaper. Connections without vectored
# writes (TLS) always join: one write per batch would cost more than the copy.
_MIN_SCATTER_BYTES = 4096
# Single points of a shaped channel are copied into an arena: consecutive rows of one array,
# sent from there (one copy between the caller's array and the socket). Its size follows the
# points queued per send, between these bounds (one point at least).
_MIN_ARENA_BYTES = 64 << 10
_MAX_ARENA_BYTES = 1 << 20
# Image references per entry (about 100 bytes of JSON each).
_REFS_PER_ENTRY = 10000

#: An entry's fields as the sender writes them: bytes, or a Scattered data field.
EntryFields = Mapping[bytes, "bytes | Scattered"]


# ----------------------------------------------------------------------------- queues


class _PointQueue:
    """Points accepted by emit and not yet acknowledged by Redis (a :class:`DataQueue`).

    ``refuse`` is called (and raises) when the sender refuses points: the scan is ending, or
    Redis is full or has been unreachable for too long.
    """

    def __init__(
        self, key: str, codec: Any, sender: Sender, refuse: Callable[[], NoReturn]
    ) -> None:
        self.key = key
        self.codec = codec
        self.sent = 0  # points acknowledged by Redis (advanced by the sender)
        self.emitted = 0  # points accepted by put()
        self._lock = threading.Lock()
        self._pending: list[Any] = []
        # True from the first point after a take until the next take: the sender has been
        # told (Sender.ready), once.
        self._ready = False
        self._sender = sender  # told once per send that this queue has points (ready())
        self._refuse = refuse

    def put(self, batch: Any, npoints: int) -> None:
        """Queue a validated batch of ``npoints`` points."""
        with self._lock:
            # Checked under the lock: the sender drops queues (under their locks) after it
            # starts refusing, so no point gets in after the last drop.
            if self._sender.refusing:
                self._refuse()
            self._move_extra()
            self._pending.append(batch)
            self.emitted += npoints
            if not self._ready:
                self._ready = True
                self._sender.ready(self)
        if self.emitted - self.sent > _MAX_PENDING_POINTS:
            self._sender.send_from_emit()

    def take(self) -> list[Any]:
        with self._lock:
            self._move_extra()
            pending, self._pending = self._pending, []
            self._ready = False
        return pending

    def give_back(self, batches: list[Any]) -> None:
        with self._lock:
            self._pending[:0] = batches
            if not self._ready:
                self._ready = True
                self._sender.ready(self)

    def drop(self) -> int:
        with self._lock:
            dropped = self.emitted - self.sent
            self._pending = []
            self._drop_extra()
            self.emitted = self.sent
        return dropped

    def _move_extra(self) -> None:
        """Hook for queues with a second container: move it to the end of ``_pending`` (lock held)."""

    def _drop_extra(self) -> None:
        """Hook for queues with a second container: empty it (lock held)."""

    def encode(self, batches: list[Any]) -> list[tuple[EntryFields, int]]:
        """Encode taken batches as ``(fields, npoints)`` entries."""
        raise NotImplementedError


class _NumericQueue(_PointQueue):
    """A channel's queue: batches, plus single points stacked into one array per send."""

    def __init__(
        self,
        key: str,
        codec: codecs.NumericCodec,
        sender: Sender,
        refuse: Callable[[], NoReturn],
        scatter: bool,
    ) -> None:
        super().__init__(key, codec, sender, refuse)
        self.codec: codecs.NumericCodec = codec
        self.scatter = scatter
        # Single points that needed no validation (step scans): one array per send.
        self._singles: list[Any] = []
        # Single arrays of the channel's dtype and shape, copied into rows of an arena; rows
        # [_moved, _filled) are queued but not yet in _pending.
        self._arena: np.ndarray | None = None
        self._rows: list[np.ndarray] = []
        self._moved = self._filled = 0

    def put_single(self, point: Any) -> None:
        """Queue one point already of the channel's dtype and shape: the step-scan path.

        The same as :meth:`put`, with its steps written out: one call per point saved.
        """
        with self._lock:
            if self._sender.refusing:
                self._refuse()
            self._singles.append(point)
            self.emitted += 1
            if not self._ready:
                self._ready = True
                self._sender.ready(self)
        if self.emitted - self.sent > _MAX_PENDING_POINTS:
            self._sender.send_from_emit()

    def put_array(self, point: np.ndarray) -> None:
        """Queue one array of the channel's exact dtype and shape: copied into the arena.

        The arena's rows are sent as they are (no stacking), so this copy is the only one.
        """
        with self._lock:
            if self._sender.refusing:
                self._refuse()
            if self._filled == len(self._rows):
                self._new_arena()
            self._rows[self._filled][...] = point
            self._filled += 1
            self.emitted += 1
            if not self._ready:
                self._ready = True
                self._sender.ready(self)
        if self.emitted - self.sent > _MAX_PENDING_POINTS:
            self._sender.send_from_emit()

    def _new_arena(self) -> None:
        """Queue the full arena and make the next one (lock held)."""
        point_bytes = self.codec.dtype.itemsize * self.codec.point_size
        size = len(self._rows)
        if not size:
            size = _MIN_ARENA_BYTES // point_bytes
        elif self._moved == 0:  # filled before any send took from it: grow
            size *= 2
        else:
            size //= 2
        size = max(1, min(size, _MAX_ARENA_BYTES // point_bytes), _MIN_ARENA_BYTES // point_bytes)
        self._move_extra()
        # Rows already queued keep the old arena alive until they are sent.
        self._arena = np.empty((size, *self.codec.shape), dtype=self.codec.dtype)
        self._rows = list(self._arena)
        self._moved = self._filled = 0

    def _move_extra(self) -> None:
        # Keeps point order: single points queued before a batch go before it.
        if self._singles:
            self._pending.append(np.array(self._singles, dtype=self.codec.dtype))
            self._singles = []
        if self._filled > self._moved:
            assert self._arena is not None
            self._pending.append(self._arena[self._moved : self._filled])
            self._moved = self._filled

    def _drop_extra(self) -> None:
        self._singles = []
        self._moved = self._filled

    def encode(self, batches: list[Any]) -> list[tuple[EntryFields, int]]:
        codec = self.codec
        out: list[tuple[EntryFields, int]] = []
        if codec.variable:
            chunk: list[np.ndarray] = []
            size = 0
            for p in (p for b in batches for p in b):
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
        group: list[np.ndarray] = []
        count = 0
        for batch in batches:
            for start in range(0, len(batch), step):
                piece = batch[start : start + step]
                if group and count + len(piece) > step:
                    out.append((self.entry(group), count))
                    group, count = [], 0
                group.append(piece)
                count += len(piece)
        if group:
            out.append((self.entry(group), count))
        return out

    def entry(self, group: list[np.ndarray]) -> EntryFields:
        """The fields of one entry holding the consecutive batches of ``group``."""
        if not self.scatter or sum(p.nbytes for p in group) < _MIN_SCATTER_BYTES * len(group):
            return self.codec.encode(group)
        encoded = self.codec.encode(group, scattered=True)
        if isinstance(encoded, codecs.ScatteredFields):
            return {**encoded.fields, b"d": Scattered(encoded.parts)}
        return encoded


class _ImageRefQueue(_PointQueue):
    """A lima node's queue: lists of references, or image counts (NOSAVING)."""

    def encode(self, batches: list[Any]) -> list[tuple[EntryFields, int]]:
        if not self.codec.saved:
            total = sum(batches)
            return [(self.codec.encode(total), total)]
        refs = [r for b in batches for r in b]
        return [
            (self.codec.encode(refs[i : i + _REFS_PER_ENTRY]), len(refs[i : i + _REFS_PER_ENTRY]))
            for i in range(0, len(refs), _REFS_PER_ENTRY)
        ]


class _ScanRefQueue(_PointQueue):
    """A scan reference channel's queue: lists of ``(session, number)`` pairs."""

    def encode(self, batches: list[Any]) -> list[tuple[EntryFields, int]]:
        refs = [r for b in batches for r in b]
        return [(self.codec.encode(refs), len(refs))]


# ----------------------------------------------------------------------------- publishers


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

    def update_info(self, info: Mapping[str, Any]) -> None:
        """Add keys to the node's info while the scan runs (BLISS devices add acquisition
        metadata when prepared and at the end).

        One Redis call, not queued: an update made before :meth:`ScanPublisher.end` is seen
        by a subscriber handling END_SCAN, through ``node.info`` and ``node.info.get_all()``.
        Keys given again replace their former value; the info the node was created with
        stays (its keys may be overridden).

        Parameters
        ----------
        info : Mapping
            JSON-safe keys to add (as scan_info: str keys, numbers, text, lists, dicts,
            numpy scalars and arrays).

        Raises
        ------
        EncodingError
            ``info`` is not a dict or holds a value that cannot be stored (the message
            names the key).
        InvalidArgumentError
            A data node's ``dtype``, ``shape``, ``unit`` or ``saving_mode`` would change.
        ScanEndedError
            The scan has ended or is ending (or another process ended it KILLED).
        ScanLostError
            The scan is gone from Redis.
        """
        self.scan.update_node_info(self, info)


class _DataPublisher(_NodePublisher):
    """A node with a data stream: validates what is emitted and queues it for the sender."""

    _queue: _PointQueue

    def __init__(
        self,
        scan: ScanPublisher,
        index: int,
        name: str,
        parent_db_name: str,
        codec: Any,
        sender: Sender,
    ) -> None:
        super().__init__(scan, index, name, parent_db_name)
        self.codec = codec
        self.key = scan.store.keys.scan_data(scan.session_name, scan.number, index)
        self._sender = sender
        self._queue = self._make_queue()
        sender.add(self._queue)

    def _make_queue(self) -> _PointQueue:
        raise NotImplementedError

    def __len__(self) -> int:
        """Number of points emitted so far (sent or queued)."""
        return self._queue.emitted

    @property
    def acknowledged(self) -> int:
        """Number of points Redis has acknowledged (checked against the stream at the end)."""
        return self._queue.sent

    def _refuse(self) -> NoReturn:
        """Raise why points are refused: the sender's error, or the end of the scan."""
        error = self._sender.error
        if error is not None:
            raise error
        raise ScanEndedError(
            f"scan {self.scan.db_name} has ended ({self.scan.state.name}): emit refused"
        )


class ChannelPublisher(_DataPublisher):
    """A numeric channel. Use :meth:`ContainerPublisher.create_channel`."""

    type = "channel"
    codec: codecs.NumericCodec
    _queue: _NumericQueue

    def __init__(
        self,
        scan: ScanPublisher,
        index: int,
        name: str,
        parent_db_name: str,
        codec: codecs.NumericCodec,
        sender: Sender,
    ) -> None:
        super().__init__(scan, index, name, parent_db_name, codec, sender)
        self.dtype = codec.dtype
        self.shape = codec.shape
        # Scalars (Python or numpy) that need no validation, or only a range check, skip
        # numpy per point: they are stacked into an array of the channel's dtype per send.
        rules = codec.scalar_rules()
        self._as_is = frozenset(kind for kind, rule in rules.items() if rule is None)
        self._bounded = {kind: rule for kind, rule in rules.items() if rule is not None}
        # Single arrays of exactly the point's dtype and shape need no validation either.
        self._fast_array = not codec.variable and codec.shape != ()

    def _make_queue(self) -> _PointQueue:
        return _NumericQueue(
            self.key, self.codec, self._sender, self._refuse, scatter=self.scan.store.scatter_writes
        )

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
        if kind in self._as_is:
            self._queue.put_single(data)
            return
        bounds = self._bounded.get(kind)
        if bounds is not None and bounds[0] <= data <= bounds[1]:
            self._queue.put_single(data)
            return
        if (
            self._fast_array
            and kind is np.ndarray
            and data.shape == self.shape
            and data.dtype == self.dtype
        ):
            self._queue.put_array(data)
            return
        batch = self.codec.batch(data)
        if isinstance(data, np.ndarray) and np.may_share_memory(batch, data):
            batch = batch.copy()  # already of the right dtype: not copied yet
        self._queue.put(batch, len(batch))


class LimaPublisher(_DataPublisher):
    """A 2D detector node publishing image references. Use ``create_lima``."""

    type = "lima"
    codec: codecs.ImageRefCodec

    def _make_queue(self) -> _PointQueue:
        return _ImageRefQueue(self.key, self.codec, self._sender, self._refuse)

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
        self._queue.put(batch, len(batch))

    def emit_unsaved(self, count: int) -> None:
        """Publish that ``count`` more images were acquired without being saved (NOSAVING)."""
        if self.codec.saved:
            raise EncodingError(
                f"lima node {self.name!r} saves its images: publish their references with emit()"
            )
        if not isinstance(count, int) or count <= 0:
            raise EncodingError(
                f"lima node {self.name!r}: count must be a positive int, got {count!r}"
            )
        self._queue.put(count, count)


class ScanRefPublisher(_DataPublisher):
    """A channel of references to other scans (the sub-scans of a scan group)."""

    type = "node_ref_channel"
    codec: codecs.ScanRefCodec

    def _make_queue(self) -> _PointQueue:
        return _ScanRefQueue(self.key, self.codec, self._sender, self._refuse)

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
        self._queue.put(batch, len(batch))


def _is_ref_pair(item: Any) -> bool:
    return (
        isinstance(item, (tuple, list))
        and len(item) == 2
        and isinstance(item[0], str)
        and isinstance(item[1], int)
    )
