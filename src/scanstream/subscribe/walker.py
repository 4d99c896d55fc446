"""The walk engine: one XREAD loop over every stream a walk follows.

A session walk reads the session's scan stream; for each scan it follows, it reads that
scan's event stream; for each data node it yields events of, that node's data stream.
Nothing else is read: ``include_filter`` and ``exclude_children`` decide which streams are
subscribed, not only which events are yielded.

Ordering guarantees:

* a node's NEW_NODE comes before its data (its data stream is subscribed only then);
* END_SCAN comes after every point of the scan: END is written atomically with the
  seals of all data streams, so on END the walker reads each data stream to its seal
  before yielding END_SCAN.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard, cast

import redis

from .._protocol import entries
from .._transport.cluster import group_by_slot
from .._transport.connection import StreamEntries, stream_entries
from .._transport.errors import is_wrong_type
from ..exceptions import (
    DecodingError,
    IndexNoMoreThereError,
    InvalidArgumentError,
    ScanNotFoundError,
)
from ..models import NodeType, ScanEnd, ScanState
from .events import Event, EventData, EventType, StopHandler
from .follows import DataFollow, ScanFollow, read_data
from .leases import LeaseWatch
from .lost import record_corrupt, record_if_lost

if TYPE_CHECKING:
    # Type-only: the node modules import this one (nodes -> walker), never the reverse.
    from redis.typing import KeyT, StreamIdT

    from .data_nodes import StreamNode
    from .nodes import DataNode
    from .tree import ScanNode, SessionNode

logger = logging.getLogger(__name__)

#: How many recent scan numbers a session walk remembers to skip replayed NEW_SCAN entries.
_ANNOUNCED_KEPT = 1024

# Longest single blocking read: bounds the reaction time to a stop request.
_BLOCK_SLICE = 0.1
# On a cluster, longest blocking read of one slot while other slots are followed (see _read).
_CLUSTER_POLL = 0.05
# Entries per stream per XREAD: bounds the memory of one batch.
_READ_COUNT = 1000


#: What ``include_filter`` and ``exclude_children`` accept: a node type, several, or a test.
NodeFilter = str | Sequence[str] | Callable[["DataNode"], bool] | None


def _make_filter(spec: NodeFilter, default: bool) -> Callable[[DataNode], bool]:
    if spec is None:
        return lambda node: default
    if isinstance(spec, str):
        return lambda node: node.type == spec
    if callable(spec):
        return spec
    types = frozenset(spec)
    return lambda node: node.type in types


# The walker knows the node classes by their ``type`` only (it is below them in the layers).
def _is_session(node: DataNode) -> TypeGuard[SessionNode]:
    return node.type == NodeType.SESSION


def _has_stream(node: DataNode) -> TypeGuard[StreamNode]:
    return entries.has_data_stream(node.type)


class _Settable(Protocol):
    """What ``started_event`` must offer: ``threading.Event`` or ``gevent.event.Event``."""

    def set(self) -> None: ...


def _parse_id(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)


class Walker:
    """Iterator of events below a node. Created by ``DataNode.walk_events`` and friends.

    The start position is fixed when the walker is created, not at the first ``next()``:
    a scan started right after ``walk_on_new_events()`` returns is seen.

    ``since_ms`` is the ``first_index`` argument of the walks: an epoch time in
    milliseconds (0: from the beginning), not a point index.
    """

    def __init__(
        self,
        root: DataNode,
        *,
        include_filter: NodeFilter = None,
        exclude_children: NodeFilter = None,
        exclude_existing_children: NodeFilter = None,
        since_ms: int = 0,
        from_next: bool = False,
        wait: bool = True,
        timeout: float | None = None,
        stop_handler: StopHandler | None = None,
        nodes_only: bool = False,
        started_event: _Settable | None = None,
        start_id: bytes | None = None,
    ) -> None:
        if timeout is not None and timeout < 0:
            raise InvalidArgumentError(f"timeout must be >= 0 or None, got {timeout!r}")
        self.root = root
        self.store = root.store
        self.redis = root.store.redis
        self._include = _make_filter(include_filter, True)
        self._exclude = _make_filter(exclude_children, False)
        # BLISS: exclude_existing_children defaults to exclude_children.
        self._exclude_existing = (
            self._exclude
            if exclude_existing_children is None
            else _make_filter(exclude_existing_children, False)
        )
        self._session_existing: tuple[int, int] | None = None
        self._wait = wait
        self._timeout = timeout
        self._stop = stop_handler
        self._nodes_only = nodes_only
        self._session: SessionNode | None = root if _is_session(root) else None
        self._session_key: bytes | None = None
        self._session_last = b"0-0"  # the last session entry read (maybe still pending)
        # Session entries read but not handled yet (one new scan is handled per read).
        self._session_pending: deque[tuple[bytes, entries.Fields]] = deque()
        self._scans: dict[bytes, ScanFollow] = {}
        self._data: dict[bytes, DataFollow] = {}
        # Scan numbers of the latest NEW_SCAN entries, to skip one written twice by a client
        # retry (the copy follows the original closely): bounded, a session may run for years.
        self._announced: set[int] = set()
        self._announced_order: deque[int] = deque()
        #: Corrupt data met during the walk: node db_name -> the DecodingError. The walk
        #: stops following such a node and goes on with the others (see _on_data).
        self.errors: dict[str, DecodingError] = {}
        self._finished = False
        # Events of scans ended by a read that met a key of the wrong type (_drop_wrong_types).
        self._dropped_events: list[Event] = []
        self._leases = LeaseWatch(self.redis, self.store.settings.lease_time)
        if self._session is not None:
            if not wait:
                self.store.require_session(self._session.name)
            self._session_key = self._session.events_key.encode()
            self._session_last = (
                start_id
                if start_id is not None
                else self._start_id(self._session.events_key, since_ms, from_next)
            )
            if exclude_existing_children is not None:
                self._session_existing = self._last_id(self._session.events_key)
        else:
            scan = root.scan  # the scan itself for a scan node; None for the base class
            if scan is None:
                raise InvalidArgumentError(f"cannot walk a {type(root).__name__}")
            start = self._start_id(scan.events_key, since_ms, from_next)
            follow = self._follow_scan(scan, lifecycle_only=False, subtree_root=root.index)
            follow.last_id = start
            if exclude_existing_children is not None:
                follow.existing_until = self._last_id(scan.events_key)
        self._events = self._run()
        # Every start position is fixed above: the walk is listening from here on.
        if started_event is not None:
            started_event.set()

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        return next(self._events)

    def close(self) -> None:
        """Stop the walk (it can also be stopped by a StopHandler from another thread)."""
        self._events.close()

    def _last_id(self, events_key: str) -> tuple[int, int]:
        last = stream_entries(self.redis.xrevrange(events_key, count=1))
        return _parse_id(last[0][0]) if last else (0, 0)

    def _start_id(self, events_key: str, since_ms: int, from_next: bool) -> bytes:
        if from_next:
            last = stream_entries(self.redis.xrevrange(events_key, count=1))
            return last[0][0] if last else b"0-0"
        if since_ms:
            return entries.before_time_id(int(since_ms))
        return b"0-0"

    # -- subscriptions ----------------------------------------------------------------
    def _follow_scan(
        self, scan: ScanNode, *, lifecycle_only: bool, subtree_root: int
    ) -> ScanFollow:
        follow = ScanFollow(scan, lifecycle_only, subtree_root)
        self._scans[scan.events_key.encode()] = follow
        return follow

    def _unfollow_scan(self, follow: ScanFollow) -> None:
        follow.ended = True
        self._scans.pop(follow.scan.events_key.encode(), None)
        for key in follow.data:
            self._data.pop(key, None)

    def _streams(self) -> dict[KeyT, StreamIdT]:
        streams: dict[KeyT, StreamIdT] = {}
        if self._session_key is not None and not self._session_pending:
            streams[self._session_key] = self._session_last
        for key, follow in self._scans.items():
            streams[key] = follow.last_id
        for key, data in self._data.items():
            streams[key] = data.last_id
        return streams

    def _read(self, block: float | None) -> list[tuple[bytes, StreamEntries]]:
        """One XREAD of every followed stream: ``(key, entries)`` per stream that had some.

        On a cluster, one XREAD may only name keys of one slot: the streams of one scan share
        one (its hash tag), the session stream and every other scan have their own. Each
        slot is then read without blocking, and when none had anything the walk blocks on
        the slot with the most streams (a followed scan's data) for at most
        ``_CLUSTER_POLL``: another slot's entries wait at most that long.
        """
        streams = self._streams()
        if not streams:  # only pending session entries
            return []
        groups = group_by_slot(streams) if self.store.is_cluster else []
        if len(groups) <= 1:
            return self._xread(streams, block)
        reply: list[tuple[bytes, StreamEntries]] = []
        for group in groups:
            reply += self._xread({key: streams[key] for key in group}, None)
        if reply or block is None:
            return reply
        busiest = max(groups, key=len)
        return self._xread({key: streams[key] for key in busiest}, min(block, _CLUSTER_POLL))

    def _xread(
        self, streams: dict[KeyT, StreamIdT], block: float | None
    ) -> list[tuple[bytes, StreamEntries]]:
        try:
            reply = self.redis.xread(
                streams,
                count=_READ_COUNT,
                block=None if block is None else max(1, int(block * 1000)),
            )
        except redis.exceptions.ResponseError as exc:
            if not is_wrong_type(exc):
                raise
            self._drop_wrong_types(list(streams))
            return []  # the next read goes on with the other streams
        # RESP2 (the client's protocol): a list of [key, entries] pairs, [] when nothing came.
        return [(key, stream_entries(raw)) for key, raw in cast("list[list[Any]]", reply or [])]

    def _drop_wrong_types(self, keys: list[KeyT]) -> None:
        """Stop following the keys that are not streams (garbage written over them), each
        reported: one XREAD fails as a whole for one such key, the others must go on."""
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.type(key)
        for key, kind in zip(keys, pipe.execute(), strict=True):
            if kind in (b"stream", b"none"):
                continue
            name = key.decode() if isinstance(key, bytes) else str(key)
            error = DecodingError(f"{name} is not a stream but a {kind.decode()}")
            data = self._data.get(name.encode())
            scan = self._scans.get(name.encode())
            if data is not None:
                self._drop_data(data, error)
            elif scan is not None:
                # Its events cannot be read: end it FAILED for this walk, as for a corrupt END.
                self._record_scan_error(scan, error)
                end = ScanEnd(ScanState.FAILED, str(error), time.time(), {})
                self._on_end(scan, end, self._dropped_events)
            else:  # the session's own stream: nothing to walk
                raise error

    # -- main loop --------------------------------------------------------------------
    def _run(self) -> Generator[Event, None, None]:
        last_event = time.monotonic()
        while not self._finished:
            if self._stop is not None and self._stop.stopped:
                return
            if self._session_key is None and not self._scans and not self._data:
                return
            pending = bool(self._session_pending)
            block = None
            if self._wait and not pending:
                block = _BLOCK_SLICE
                if self._timeout is not None:
                    block = max(0.0, min(block, self._timeout - (time.monotonic() - last_event)))
            reply = self._read(block)
            events, self._dropped_events = self._dropped_events, []
            events += self._process(reply) if reply or pending else []
            events += self._check_leases(force=not reply)
            for event in events:
                if self._nodes_only and event.type is not EventType.NEW_NODE:
                    continue
                yield event
                last_event = time.monotonic()
            if events:
                continue
            if not reply and not pending and not self._wait:
                return
            if self._timeout is not None and time.monotonic() - last_event >= self._timeout:
                return

    def _process(self, reply: list[tuple[bytes, StreamEntries]]) -> list[Event]:
        # BLISS's priorities within one read, per scan: children (NEW_NODE) < PREPARED <
        # data < END. Scan events other than END are handled first, then the data entries of
        # the same reply, then END (which reads every data stream to its seal), then the
        # session: a slow consumer never sees a scan's data before its PREPARED_SCAN.
        data_streams: list[tuple[bytes, StreamEntries]] = []
        scan_streams: list[tuple[bytes, StreamEntries]] = []
        session_streams: list[StreamEntries] = []
        for key, stream in reply:
            if key in self._data:
                data_streams.append((key, stream))
            elif key in self._scans:
                scan_streams.append((key, stream))
            else:
                session_streams.append(stream)
        events: list[Event] = []
        ends: list[tuple[ScanFollow, entries.Fields]] = []
        for key, stream in scan_streams:
            follow_scan = self._scans.get(key)
            for entry_id, fields in stream:
                if follow_scan is None or follow_scan.ended:
                    break
                follow_scan.last_id = entry_id
                if fields.get(b"event") == entries.END:
                    ends.append((follow_scan, fields))
                    break  # nothing of this scan comes after its END
                self._on_scan_event(follow_scan, fields, events, entry_id)
        for key, stream in data_streams:
            follow = self._data.get(key)
            if follow is not None:
                self._on_data(follow, stream, events)
        for follow_scan, fields in ends:
            if not follow_scan.ended:
                self._on_scan_event(follow_scan, fields, events, follow_scan.last_id)
        # Scans in the publisher's order too: a scan announced after another ended comes
        # after that END_SCAN (a client that handles scans one at a time, like BLISS's
        # external saving example, finishes each before the next). So one new scan per read:
        # the next read gets its events before the following NEW_SCAN; and none while a scan
        # stream may hold more than this read returned. The session entries read wait in
        # _session_pending (the session stream is not read again meanwhile).
        for stream in session_streams:
            self._session_pending.extend(stream)
            if stream:
                self._session_last = stream[-1][0]
        if any(len(stream) >= _READ_COUNT for _, stream in scan_streams):
            return events
        while self._session_pending:
            entry_id, fields = self._session_pending.popleft()
            followed = len(self._scans)
            try:
                self._on_session_event(fields, events, entry_id)
            except DecodingError as exc:
                # One garbage entry must not end every later walk of the session at it.
                logger.error("session stream entry %s skipped: %s", entry_id.decode(), exc)
                if self._session is not None:  # its verdict says why, not "waiting"
                    record_corrupt(self.store, self._session.name, fields, exc)
            if len(self._scans) > followed:
                break
        return events

    def _on_session_event(
        self, fields: entries.Fields, events: list[Event], entry_id: bytes = b"0-0"
    ) -> None:
        session = self._session
        number = entries.parse_new_scan(fields)
        if session is None or number is None:
            return
        if number in self._announced:
            return  # a NEW_SCAN written twice by a client retry whose reply was lost
        self._announced.add(number)
        self._announced_order.append(number)
        if len(self._announced_order) > _ANNOUNCED_KEPT:
            self._announced.discard(self._announced_order.popleft())
        try:
            scan = session.get_scan(number)
        except ScanNotFoundError:
            # Expired, unless it could not have: then it is recorded FAILED and reported.
            if record_if_lost(self.store, session.name, number, entry_id, fields) is None:
                logger.info("session %s: scan %s expired, skipped", session.name, number)
                return
            try:
                scan = session.get_scan(number)
            except ScanNotFoundError:
                return
        if self._include(scan):
            events.append(Event(EventType.NEW_NODE, scan, EventData()))
        exclude = self._exclude_for(entry_id, self._session_existing)
        self._follow_scan(scan, lifecycle_only=exclude(scan), subtree_root=0)

    def _exclude_for(
        self, entry_id: bytes, existing_until: tuple[int, int] | None
    ) -> Callable[[DataNode], bool]:
        """``exclude_existing_children`` for what existed when the walk began, else ``exclude_children``."""
        if existing_until is not None and _parse_id(entry_id) <= existing_until:
            return self._exclude_existing
        return self._exclude

    def _on_scan_event(
        self,
        follow: ScanFollow,
        fields: entries.Fields,
        events: list[Event],
        entry_id: bytes = b"0-0",
    ) -> None:
        kind = fields.get(b"event")
        scan = follow.scan
        if kind == entries.NEW_NODE:
            if not follow.lifecycle_only:
                try:
                    self._on_new_node(follow, fields, events, entry_id)
                except DecodingError as exc:
                    # One garbage entry must not end a session walk at this scan: it is
                    # reported (log, Walker.errors, END_SCAN's decoding_errors) and skipped.
                    self._record_scan_error(follow, exc, entry_id)
        elif kind == entries.PREPARED:
            if follow.prepared:
                return  # replayed by a client retry
            follow.prepared = True
            if follow.subtree_root == 0 and self._include(scan):
                events.append(Event(EventType.PREPARED_SCAN, scan, EventData(data="PREPARED_SCAN")))
        elif kind == entries.END:
            try:
                end = entries.parse_end(fields, f"scan {scan.db_name}")
            except DecodingError as exc:
                # The scan has ended, but how is unreadable: end it FAILED for this walk
                # (nothing is recorded in Redis) rather than follow it for ever.
                self._record_scan_error(follow, exc, entry_id)
                end = ScanEnd(ScanState.FAILED, str(exc), time.time(), {})
            self._on_end(follow, end, events)

    def _record_scan_error(
        self, follow: ScanFollow, exc: DecodingError, skipped: bytes | None = None
    ) -> None:
        """Report a corrupt entry of a scan's event stream (log, ``Walker.errors``,
        END_SCAN's description); ``skipped``: the ID of the entry the walk then skips."""
        if skipped is None:
            logger.error("%s", exc)
        else:
            follow.scan.record_corrupt_entry(skipped, exc)  # logs it, once per entry
        self.errors[follow.scan.db_name] = exc
        follow.errors[follow.scan.db_name] = str(exc)

    def _on_new_node(
        self,
        follow: ScanFollow,
        fields: entries.Fields,
        events: list[Event],
        entry_id: bytes = b"0-0",
    ) -> None:
        node = follow.scan.node_from_entry(fields)
        index = node.index
        if index in follow.seen:
            return  # a NEW_NODE written twice by a client retry whose reply was lost
        follow.seen.add(index)
        parent = node.parent.index if node.parent is not None else 0
        if parent in follow.closed:
            follow.closed.add(index)  # descendants of an excluded node stay hidden
            return
        if follow.subtree_root and index != follow.subtree_root and parent not in follow.inside:
            return
        follow.inside.add(index)
        is_root = index == follow.subtree_root
        included = self._include(node)
        if included and not is_root:
            events.append(Event(EventType.NEW_NODE, node, EventData()))
        if self._exclude_for(entry_id, follow.existing_until)(node) and not is_root:
            follow.closed.add(index)
        if _has_stream(node) and included and not self._nodes_only:
            key = node.key.encode()
            data = DataFollow(node, follow)
            follow.data[key] = data
            self._data[key] = data

    def _on_data(self, follow: DataFollow, stream: StreamEntries, events: list[Event]) -> None:
        try:
            read_data(follow, stream, events)
            if follow.sealed:  # read to its seal: nothing more to read there
                self._data.pop(follow.node.key.encode(), None)
        except DecodingError as exc:
            # A corrupt entry: its node's data cannot be trusted past it (even the index of
            # the next point is unknown), but the other nodes are fine.
            self._drop_data(follow, exc)

    def _drop_data(self, follow: DataFollow, exc: DecodingError) -> None:
        """Report corrupt data of a node (log, ``Walker.errors``, END_SCAN's description) and
        stop reading that node only."""
        node = follow.node
        logger.error("%s: %s; this node is no longer followed by the walk", node.db_name, exc)
        self.errors[node.db_name] = exc
        follow.scan.errors[node.db_name] = str(exc)
        follow.sealed = True
        self._data.pop(node.key.encode(), None)

    def _nodes_at_end(self, follow: ScanFollow) -> list[DataNode]:
        """The scan's nodes for END_SCAN's lengths; the corrupt NEW_NODE entries load_nodes
        skipped are recorded in the scan's errors (they must not end a session walk there)."""
        nodes = follow.scan.load_nodes()
        for entry_id, exc in follow.scan.corrupt_entries.items():
            self._record_scan_error(follow, exc, entry_id.encode())
        return nodes

    def _on_end(self, follow: ScanFollow, end: ScanEnd, events: list[Event]) -> None:
        scan = follow.scan
        for key, data in list(follow.data.items()):
            if not data.sealed:
                try:
                    rest = stream_entries(self.redis.xrange(key, min=b"(" + data.last_id, max=b"+"))
                except redis.exceptions.ResponseError as exc:
                    if not is_wrong_type(exc):
                        raise
                    self._drop_data(data, DecodingError(f"{key.decode()} is not a stream"))
                    continue
                self._on_data(data, rest, events)
        scan.scan_end = end
        # END_SCAN belongs to the scan node: a walk on a master or channel does not yield it.
        if follow.subtree_root == 0 and self._include(scan):
            description: dict[str, Any] = {
                "state": end.state,
                "error": end.error,
                "end_time": end.end_time,
                "lengths": {
                    n.db_name: end.lengths.get(n.index, 0)
                    for n in self._nodes_at_end(follow)
                    if entries.has_data_stream(n.type)
                },
            }
            if follow.errors:
                # Nodes whose data was corrupt (DecodingError text): not read to their end.
                description["decoding_errors"] = dict(follow.errors)
            if end.lost:
                # Acknowledged points gone from Redis (a failover, a restart): a hole for sure.
                names = {n.index: n.db_name for n in self._nodes_at_end(follow)}
                description["lost"] = {
                    names.get(index, f"node {index}"): count for index, count in end.lost.items()
                }
            events.append(
                Event(EventType.END_SCAN, scan, EventData(data=end.state, description=description))
            )
        self._unfollow_scan(follow)
        if self._session_key is None:
            self._finished = True

    # -- crashed publishers -----------------------------------------------------------
    def _check_leases(self, force: bool) -> list[Event]:
        """End the followed scans whose publisher's lease expired (see :mod:`.leases`)."""
        if not self._scans or not self._leases.due(force):
            return []
        follows = {follow.scan.db_name: follow for follow in self._scans.values()}
        events: list[Event] = []
        for outcome in self._leases.check([(f.scan, f.lease) for f in follows.values()]):
            follow = follows[outcome.scan.db_name]
            if outcome.expired:
                if self._session_key is None:
                    raise IndexNoMoreThereError(
                        f"scan {follow.scan.db_name} expired during the walk"
                    ) from None
                # Never silence: the session walk ends the scan for its consumer, EXPIRED.
                logger.warning("scan %s expired during the walk", follow.scan.db_name)
            if outcome.error is not None:
                self._record_scan_error(follow, outcome.error)
            if outcome.end is not None:
                self._on_end(follow, outcome.end, events)
        return events
