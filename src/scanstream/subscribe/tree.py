"""The top of the subscriber's tree: sessions, scans, and the node factory.

``get_session_node(name)`` -> :class:`SessionNode` -> :class:`ScanNode` -> the nodes of the
scan, built from its NEW_NODE entries by :meth:`ScanNode.node_from_entry` (one object per
node index). This module is the only one that builds session and scan nodes, including the
scans a scan-reference channel points to.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import threading
import time
from typing import Any, TypeGuard

import redis

from .._protocol import entries, metadata
from .._protocol.keys import check_session_name
from .._protocol.scripts import end_scan
from .._transport.connection import DataStore, default_store, stream_entries
from .._transport.errors import is_wrong_type
from ..exceptions import DecodingError, ScanNotFoundError
from ..models import FINAL_STATES, NodeType, SavingState, SavingVerdict, ScanEnd, ScanState
from .data_nodes import ChannelNode, LimaNode, ScanRefNode
from .info import NodeInfo
from .nodes import ContainerNode, DataNode, ScanMemberNode

logger = logging.getLogger(__name__)

#: The class of each node type of a NEW_NODE entry (unknown types are containers).
NODE_CLASSES: dict[str, type[ScanMemberNode]] = {
    cls.type: cls for cls in (ContainerNode, ChannelNode, LimaNode, ScanRefNode)
}


def get_session_node(
    name: str, *, redis_url: str | None = None, store: DataStore | None = None
) -> SessionNode:
    """Return the node of session ``name``, the root to walk its scans.

    The session need not exist yet: a walk waits for its first scan. Reads that need it
    (``children()``, ``walk(wait=False)``...) raise :class:`SessionNotFoundError`.

    Parameters
    ----------
    name : str
        Session name.
    redis_url : str, optional
        Redis URL; default ``SCANSTREAM_REDIS_URL``, else the embedded server.
    store : DataStore, optional
        An existing connection (takes precedence over ``redis_url``).

    Raises
    ------
    InvalidArgumentError
        Invalid session name.
    ProtocolVersionError
        The database holds another protocol version.
    """
    check_session_name(name)
    return SessionNode(store or default_store(redis_url), name)


def _scan_hashes(store: DataStore, keys: list[str]) -> list[entries.Fields | DecodingError]:
    """HGETALL of each scan hash, in one round trip ({} for a missing one).

    A key that is not a hash (garbage written over it) gives a DecodingError in its place:
    the other scans read all the same.
    """
    pipe = store.redis.pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(key)
    out: list[entries.Fields | DecodingError] = []
    for reply in pipe.execute(raise_on_error=False):
        if is_wrong_type(reply):
            out.append(DecodingError(f"not a scan hash ({reply})"))
        elif isinstance(reply, Exception):
            raise reply  # NOPERM, a failover...: not about this scan
        else:
            out.append(reply)
    return out


class SessionNode(DataNode):
    """A session: its children are its scans. Use :func:`get_session_node`.

    ``events_key`` is the session's scan stream (one NEW_SCAN entry per scan).
    """

    type = NodeType.SESSION.value

    def __init__(self, store: DataStore, name: str, *, bliss_mode: bool = False) -> None:
        super().__init__(store, name, name, None)
        self.session_name = name
        self.events_key = store.keys.session_scans(name)
        self._bliss_mode = bliss_mode

    @property
    def bliss_mode(self) -> bool:
        """See :attr:`DataNode.bliss_mode`; set by :mod:`scanstream.legacy`'s lookups."""
        return self._bliss_mode

    @bliss_mode.setter
    def bliss_mode(self, value: bool) -> None:
        self._bliss_mode = bool(value)

    @property
    def info(self) -> NodeInfo:
        return NodeInfo({"name": self.name})

    def _last_child_start(self) -> bytes | None:
        # The session stream's entry before its last NEW_SCAN: a walk from there yields the
        # latest scan first.
        last = stream_entries(self.store.redis.xrevrange(self.events_key, count=2))
        if not last:
            return None
        return last[1][0] if len(last) > 1 else b"0-0"

    def children(self) -> list[DataNode]:
        """The scans of the session still stored, by number, each once.

        A scan announced again (its NEW_SCAN entry lost by a failover and written anew, or
        written twice by a retried call) is one child, at its number's place.

        Raises
        ------
        SessionNotFoundError
            No scan was ever published in this session.
        """
        self.store.require_session(self.name)
        numbers: set[int] = set()
        for entry_id, fields in stream_entries(self.store.redis.xrange(self.events_key)):
            try:
                number = entries.parse_new_scan(fields)
            except DecodingError as exc:  # garbage: the scans of the other entries are fine
                logger.error("session %s: stream entry %s skipped: %s", self.name, entry_id, exc)
                continue
            if number is not None:
                numbers.add(number)
        scans: list[DataNode] = []
        for scan in self._load_scans(sorted(numbers)):
            if isinstance(scan, DecodingError):
                logger.error("session %s: scan skipped: %s", self.name, scan)
            elif scan is not None:
                scans.append(scan)
        return scans

    def get_scan(self, number: int) -> ScanNode:
        """The scan numbered ``number``.

        Raises
        ------
        ScanNotFoundError
            No such scan (never created, or expired).
        DecodingError
            Its scan hash is corrupt (garbage written into Redis).
        """
        scan = self._load_scans([number])[0]
        if scan is None:
            raise ScanNotFoundError(
                f"no scan number {number} in session {self.name!r}: never created or expired"
            )
        if isinstance(scan, DecodingError):
            raise scan
        return scan

    def _load_scans(self, numbers: list[int]) -> list[ScanNode | DecodingError | None]:
        """The scans numbered ``numbers``: None for a missing one, the error for a corrupt one."""
        keys = [self.store.keys.scan(self.name, n) for n in numbers]
        out: list[ScanNode | DecodingError | None] = []
        for key, fields in zip(keys, _scan_hashes(self.store, keys), strict=True):
            try:
                out.append(ScanNode(self, fields) if fields else None)
            except DecodingError as exc:
                out.append(DecodingError(f"{key}: {exc}"))
        return out


def with_bliss_keys(info: dict[str, Any], db_name: str) -> dict[str, Any]:
    """``info`` with the keys BLISS's scans always had and clients read, when absent.

    ``node_name`` (the scan's db_name: ScansWatcher clients match ``scan_info["node_name"]``
    to the ``scan_db_name`` of the callbacks) and ``start_time_str`` (BLISS's
    ``"%a %b %d %H:%M:%S %Y"`` of ``start_timestamp``, local time: scan headers print it).
    """
    info.setdefault("node_name", db_name)
    _add_time_str(info, "start")
    return info


def _add_time_str(info: dict[str, Any], name: str) -> None:
    """``<name>_time_str`` from ``<name>_timestamp`` (BLISS's text of it), when absent."""
    stamp = info.get(f"{name}_timestamp")
    if f"{name}_time_str" not in info and _is_number(stamp):
        with contextlib.suppress(OverflowError, OSError, ValueError):
            info[f"{name}_time_str"] = datetime.datetime.fromtimestamp(stamp).strftime(
                "%a %b %d %H:%M:%S %Y"
            )


def _is_number(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


#: The scan_info keys BLISS stored as ``datetime.datetime``, and the epoch key of each.
BLISS_DATETIME_KEYS = {"start_time": "start_timestamp", "end_time": "end_timestamp"}


def with_bliss_datetimes(info: dict[str, Any]) -> dict[str, Any]:
    """``info`` with ``start_time`` / ``end_time`` as BLISS had them: naive local datetimes.

    BLISS stored ``datetime.datetime.fromtimestamp(t)`` (local time, no ``tzinfo``); scanstream
    stores ISO 8601 text with its UTC offset (JSON has no datetime). The text is read back
    into that local time; text that is not ISO 8601 falls back to the epoch key, else stays.
    Absent keys stay absent (``end_time`` until the scan ends). ``end_time_str``, which
    BLISS's scans had beside ``end_time``, is added when absent.
    """
    if "end_time" in info:
        _add_time_str(info, "end")
    for key, stamp_key in BLISS_DATETIME_KEYS.items():
        value = info.get(key)
        if value is None or isinstance(value, datetime.datetime):
            continue
        when: datetime.datetime | None = None
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                when = datetime.datetime.fromisoformat(value)
                if when.tzinfo is not None:  # to local time, then naive, as BLISS's
                    when = when.astimezone().replace(tzinfo=None)
        stamp = info.get(stamp_key)
        if when is None and _is_number(stamp):
            with contextlib.suppress(OverflowError, OSError, ValueError):
                when = datetime.datetime.fromtimestamp(stamp)
        if when is not None:
            info[key] = when
    return info


def with_bliss_state(info: dict[str, Any], stored: bytes | None) -> dict[str, Any]:
    """``info`` with ``state`` as BLISS had it: a :class:`~scanstream.ScanState` (an
    ``IntEnum``), at every stage of the scan.

    BLISS's scans kept their state there from the start, as its own ``ScanState`` (an
    ``IntEnum`` whose DONE, USER_ABORTED and KILLED are 4, 5 and 6, as scanstream's), and
    clients compare it so (``info["state"] == ScanState.KILLED``); scanstream's scan_info
    has the state's name, at the end. ``stored`` is the scan's state field in Redis.
    """
    text = stored.decode(errors="replace") if stored else info.get("state")
    if isinstance(text, str) and text in ScanState.__members__:
        info["state"] = ScanState[text]
    return info


class ScanNode(DataNode):
    """A scan (``type`` is ``scan`` or ``scan_group``); ``info`` is its scan_info.

    Attributes
    ----------
    number : int
        Number of the scan in its session.
    scan_end : ScanEnd or None
        How the scan ended, filled in by a walk that yielded its END_SCAN (``end`` is the
        same, under its historical name). Corrupt data a walk met in this scan is told in
        its END_SCAN event: ``event_data.description["decoding_errors"]`` (node db_name ->
        error text).
    """

    def __init__(self, session: SessionNode, fields: entries.Fields | DecodingError) -> None:
        """Raises DecodingError for a corrupt scan hash (``fields`` may be that error)."""
        if isinstance(fields, DecodingError):
            raise fields
        try:
            self.number = int(fields[b"number"])
            self.scan_name = fields[b"name"].decode()
            self.type = fields[b"node_type"].decode()
            self._state_of(fields)
        except (KeyError, ValueError) as exc:
            shown = {k: v for k, v in sorted(entries.brief(fields).items()) if k != b"info"}
            raise DecodingError(
                f"corrupt scan hash ({type(exc).__name__}: {exc}): {shown}"
            ) from None
        name = f"{self.number}_{self.scan_name}"
        super().__init__(session.store, name, f"{session.name}:{name}", session)
        self.session_name = session.name
        keys = self.store.keys
        self.key = keys.scan(session.name, self.number)
        self.events_key = keys.scan_events(session.name, self.number)
        self.lease_key = keys.scan_lease(session.name, self.number)
        self._fields = fields
        self._nodes: dict[int, ScanMemberNode] = {}
        self._corrupt: dict[str, DecodingError] = {}  # event stream entry ID -> its error
        self._lock = threading.Lock()
        self.scan_end: ScanEnd | None = None

    @property
    def end(self) -> ScanEnd | None:
        """Alias of :attr:`scan_end` (how the scan ended, as seen by a walk), for compatibility."""
        return self.scan_end

    @property
    def scan(self) -> ScanNode:
        """The scan itself (what :attr:`DataNode.scan` is for the nodes below it)."""
        return self

    def _reload(self) -> entries.Fields:
        if self._state_of(self._fields) not in FINAL_STATES:
            return self._fresh_fields()
        return self._fields

    @staticmethod
    def _state_of(fields: entries.Fields) -> ScanState:
        raw = fields[b"state"]
        try:
            return ScanState[raw.decode()]
        except (KeyError, ValueError):
            raise ValueError(f"state {raw[:40]!r} is not a scan state") from None

    @property
    def info(self) -> NodeInfo:
        """The scan_info (re-read from Redis until the scan has ended; ``get_all()`` re-reads).

        Raises
        ------
        DecodingError
            The stored scan_info is not a JSON object (garbage in Redis).
        """
        return NodeInfo(self._info_of(self._reload()), self._fresh_info)

    def _info_of(self, fields: entries.Fields) -> dict[str, Any]:
        try:
            info = metadata.loads(fields.get(b"info", b"{}"))
        except DecodingError as exc:
            raise DecodingError(
                f"scan {self.db_name}: its scan_info is unreadable: {exc}"
            ) from None
        if not isinstance(info, dict):
            return {}
        info = with_bliss_keys(info, self.db_name)
        if not self.bliss_mode:
            return info
        return with_bliss_state(with_bliss_datetimes(info), fields.get(b"state"))

    def _fresh_fields(self) -> entries.Fields:
        fields = _scan_hashes(self.store, [self.key])[0]
        if isinstance(fields, DecodingError):
            raise DecodingError(f"scan {self.db_name}: {self.key}: {fields}")
        if not fields:
            raise ScanNotFoundError(f"scan {self.db_name} is gone from Redis (expired or deleted)")
        try:
            self._state_of(fields)
        except (KeyError, ValueError) as exc:
            raise DecodingError(f"scan {self.db_name}: its hash is corrupt ({exc})") from None
        self._fields = fields
        return fields

    def _fresh_info(self) -> dict[str, Any]:
        return self._info_of(self._fresh_fields())

    def node_info_updates(
        self, index: int, *, fresh: bool = False, cached: bool = False
    ) -> dict[str, Any]:
        """The info keys the publisher added to node ``index`` after its creation.

        Read from Redis while the scan runs (``fresh``: in any case; ``cached``: never, what
        was read last).

        Raises
        ------
        ScanNotFoundError
            The scan expired or was deleted (not with ``cached``).
        DecodingError
            The stored update is corrupt.
        """
        fields = self._fields if cached else self._fresh_fields() if fresh else self._reload()
        return entries.parse_node_info(fields, index, f"scan {self.db_name}")

    @property
    def saving(self) -> SavingVerdict:
        """The saving verdict the writer that owns the scan recorded (WAITING: none yet;
        NOT_SAVED from the start for a scan whose scan_info turns saving off).

        Read from Redis at each access (it changes after the scan has ended). A scan hash
        that became garbage reads as FAILED with the reason, as a malformed verdict does
        (:func:`~scanstream._protocol.entries.parse_saving`): never as saved.

        Raises
        ------
        ScanNotFoundError
            The scan expired or was deleted.
        """
        try:
            return entries.parse_saving(self._fresh_fields())
        except DecodingError as exc:
            return SavingVerdict(SavingState.FAILED, reason=str(exc))

    @property
    def lost(self) -> str | None:
        """Why the scan was recorded as lost (gone from Redis before it could expire); else None.

        See :mod:`scanstream.subscribe.lost`. Such a scan has ended FAILED, with no node.

        Raises
        ------
        ScanNotFoundError
            The scan expired or was deleted.
        """
        return entries.parse_lost(self._reload())

    @property
    def state(self) -> ScanState:
        """The state stored in Redis (a read only: see :meth:`check_lease` for dead publishers).

        Raises
        ------
        ScanNotFoundError
            The scan expired or was deleted.
        """
        return self._state_of(self._reload())

    def check_lease(self) -> ScanState:
        """The current state, after ending the scan KILLED if its publisher's lease expired.

        A running scan whose publisher stopped renewing its lease (process killed or frozen
        for longer than ``lease_time``) will never end by itself: this records its end, as
        walks do for the scans they follow. A lease key that is not a lease (garbage written
        over it: another type, another value, no expiry) counts as expired, with no grace:
        walks wait half a lease time first, as a live publisher replaces it at its next
        renewal.

        Raises
        ------
        redis.exceptions.NoPermissionError
            The lease expired and the user may not write (a read-only user).
        ScanNotFoundError
            The scan expired or was deleted.
        """
        state = self.state
        if not state.is_final and not self.lease_alive():
            self.declare_killed_if_lease_expired()
            state = self.state
        return state

    def lease_alive(self) -> bool:
        """True if the publisher's lease key holds a lease (a garbage value there: False)."""
        pipe: Any = self.store.redis.pipeline(transaction=False)  # execute_command is untyped
        entries.queue_lease_reads(pipe, self.lease_key)
        kind, pttl, (value,) = pipe.execute()
        return entries.lease_status(kind, pttl, value)[0]

    def declare_killed_if_lease_expired(self) -> bool:
        """End the scan as KILLED if its publisher's lease has expired. True if it did.

        Needs write access; a read-only user gets ``redis.exceptions.NoPermissionError``.
        """
        outcome, _, _ = end_scan(
            self.store.redis,
            self.store.keys,
            self.session_name,
            self.number,
            ScanState.KILLED.name,
            "the publisher stopped renewing its lease (process killed or frozen)",
            time.time(),
            retention_time=self.store.settings.retention_time,
            only_if_lease_expired=True,
        )
        return outcome == "ok"

    def children(self) -> list[DataNode]:
        """The top-master containers of the scan."""
        return [n for n in self.load_nodes() if n.parent is self]

    def load_nodes(self) -> list[DataNode]:
        """All nodes of the scan as stored now, parents before children.

        A corrupt NEW_NODE entry (garbage written into Redis) is skipped with the nodes below
        it, as walks skip it: it is logged once and kept in :attr:`corrupt_entries`, and the
        other nodes are returned. An event stream that is not a stream is recorded there too,
        under its key name.
        """
        try:
            stored = stream_entries(self.store.redis.xrange(self.events_key))
        except redis.exceptions.ResponseError as exc:
            if not is_wrong_type(exc):
                raise
            # Garbage over the whole event stream: recorded under the key's name.
            error = DecodingError(f"scan {self.db_name}: {self.events_key} is not a stream")
            self.record_corrupt_entry(self.events_key.encode(), error)
            stored = []
        for entry_id, fields in stored:
            if fields.get(b"event") == entries.NEW_NODE:
                try:
                    self.node_from_entry(fields)
                except DecodingError as exc:
                    self.record_corrupt_entry(entry_id, exc)
        with self._lock:
            return list(self._nodes.values())

    @property
    def corrupt_entries(self) -> dict[str, DecodingError]:
        """The entries of the scan's event stream skipped as corrupt so far: ID (or the key's
        name, when it is not a stream) -> the error.

        Filled by :meth:`load_nodes` and by walks of the scan.
        """
        with self._lock:
            return dict(self._corrupt)

    def record_corrupt_entry(self, entry_id: bytes, exc: DecodingError) -> None:
        """Record an entry of the scan's event stream that is skipped as corrupt (logged once)."""
        key = entry_id.decode()
        with self._lock:
            if key in self._corrupt:
                return
            self._corrupt[key] = exc
        logger.error("%s; event stream entry %s skipped", exc, key)

    def node_from_entry(self, fields: entries.Fields) -> ScanMemberNode:
        """Return the node described by a NEW_NODE entry (one object per node index).

        Raises
        ------
        DecodingError
            A corrupt entry, or one whose parent is unknown.
        """
        index = entries.parse_node_index(fields.get(b"node"))  # None: parse_new_node raises
        with self._lock:
            # Known already (a walk's END, load_nodes after a walk): its entry was parsed once;
            # a replayed entry of the same index changes nothing. Saves parsing its metadata
            # again: a fifth of a walk of an ended scan of 10 000 channels.
            known = self._nodes.get(index) if index is not None else None
        if known is not None:
            return known
        desc = entries.parse_new_node(fields, f"scan {self.db_name}")
        with self._lock:
            node = self._nodes.get(desc.index)
            if node is None:
                parent = self if desc.parent == 0 else self._nodes.get(desc.parent)
                if parent is None:
                    raise DecodingError(
                        f"scan {self.db_name}: node {desc.name!r} has an unknown parent"
                    )
                try:
                    node = NODE_CLASSES.get(desc.type, ContainerNode)(self, parent, desc)
                except (KeyError, ValueError, TypeError) as exc:
                    # Garbage info (no dtype, a shape that is not one): this node only.
                    raise DecodingError(
                        f"scan {self.db_name}: {desc.type} node {desc.name[:80]!r} has unusable "
                        f"info ({type(exc).__name__}: {str(exc)[:200]})"
                    ) from None
                self._nodes[desc.index] = node
        return node

    def resolve_scan_refs(self, refs: list[tuple[str, int]], where: str = "") -> list[ScanNode]:
        """Scan nodes for ``(session, number)`` references (expired ones are skipped, logged).

        ``where`` names the referring node in the log message (default: this scan).
        """
        sessions: dict[str, SessionNode] = {}
        out = []
        for session, number in refs:
            node = sessions.get(session)
            if node is None:
                node = sessions[session] = SessionNode(
                    self.store, session, bliss_mode=self.bliss_mode
                )
            try:
                out.append(node.get_scan(number))
            except ScanNotFoundError:
                logger.warning(
                    "%s: referenced scan %s:%d is gone", where or self.db_name, session, number
                )
            except DecodingError as exc:
                # Garbage over the sub-scan's hash: that scan fails (its walk says why); the
                # scan referencing it is not failed with it, as for a sub-scan gone.
                logger.error(
                    "%s: referenced scan %s:%d skipped: %s",
                    where or self.db_name,
                    session,
                    number,
                    exc,
                )
        return out
