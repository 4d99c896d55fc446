"""Listing of stored scans: sessions and scans with their state, points and memory.

Scans expire by themselves a retention time after they end (``Settings.retention_time``,
``SCANSTREAM_RETENTION_TIME``, default one day). :func:`list_sessions` shows what takes memory
until then; :func:`scanstream.admin.deletion.delete_scans` frees it early.

Enumeration never uses KEYS or SCAN: sessions come from the ``sessions`` hash
(:meth:`DataStore.sessions`), the scans of a session from its scan stream (one NEW_SCAN entry
per scan), and the data keys of a scan from the NEW_NODE entries of its event stream (see
:mod:`scanstream._protocol.keys` and :mod:`scanstream._protocol.entries`).
"""

from __future__ import annotations

import collections
import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import redis

from .._protocol import entries
from .._transport.connection import DataStore, stream_entries
from .._transport.errors import is_wrong_type
from ..exceptions import DecodingError, InvalidArgumentError
from ..models import SavingState, SavingVerdict
from .wording import counted

logger = logging.getLogger(__name__)

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)?\s*$", re.IGNORECASE)
_DURATION_UNITS = {
    None: 1.0,
    "s": 1.0,
    "sec": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
}


#: What :func:`parse_duration` accepts, in words (its error messages end with it).
DURATION_FORM = (
    "give a number of seconds >= 0, or a number followed by s, m, h, d or w "
    "(for example 90s, 15m, 2h, 7d)"
)


def parse_duration(text: str) -> float:
    """Return a duration in seconds: ``"90"``, ``"90s"``, ``"15m"``, ``"2h"``, ``"7d"``, ``"1w"``.

    Raises
    ------
    InvalidArgumentError
        If the text is not a non-negative number followed by an optional unit.
    """
    match = _DURATION_RE.match(text) if isinstance(text, str) else None
    value = math.inf
    if match is not None:
        unit = match.group(2).lower() if match.group(2) else None
        value = float(match.group(1)) * _DURATION_UNITS[unit]
    # Hundreds of digits match the pattern, and float() makes them inf: no duration either.
    if not math.isfinite(value):
        raise InvalidArgumentError(f"invalid duration {text!r}: {DURATION_FORM}")
    return value


def format_age(seconds: float) -> str:
    """A short human duration: ``42s``, ``5m``, ``3.2h``, ``2.0d``."""
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


@dataclass(frozen=True)
class ScanSummary:
    """What one stored scan is and what it takes.

    Attributes
    ----------
    session, number, name : str, int, str
        Identity of the scan (its db_name is ``session:number_name``).
    state : str
        State stored in Redis: CREATED, PREPARED, DONE, USER_ABORTED, KILLED or FAILED.
    lease_alive : bool
        True while the publisher renews its lease (always False for an ended scan).
    points : int
        Points of its longest channel (stored so far, or final length once sealed).
    memory : int
        Bytes the scan's keys take in Redis (``MEMORY USAGE``, an estimate for big streams).
    keys : int
        Number of Redis keys of the scan.
    saved : bool
        True if a writer recorded it as saved: its saving verdict is SAVED, or its number is
        in ``keys.writer_saved`` (the saved set, also written by writers without verdicts).
    start_time, end_time : float or None
        Epoch times; ``end_time`` is None until the scan ends.
    expires_in : float or None
        Seconds before Redis deletes it (retention time), None if it does not expire.
    saving : SavingVerdict
        The saving verdict recorded in the scan hash by the writer that owns the scan
        (:func:`scanstream._protocol.entries.parse_saving`); when none was recorded, WAITING,
        or NOT_SAVED for a scan whose scan_info turns saving off.
    saving_recorded : bool
        True if a writer recorded a verdict (False: ``saving`` is WAITING or NOT_SAVED).
    """

    session: str
    number: int
    name: str
    state: str
    lease_alive: bool
    points: int
    memory: int
    keys: int
    saved: bool
    start_time: float | None
    end_time: float | None
    expires_in: float | None
    saving: SavingVerdict = field(default_factory=lambda: SavingVerdict(SavingState.WAITING))
    saving_recorded: bool = False

    @property
    def saving_final(self) -> bool:
        """True when nothing more will happen to the scan's saving: SAVED, FAILED or NOT_SAVED.

        A scan in the saved set with no verdict recorded (a writer without verdicts) counts
        as SAVED.
        """
        return self.saving.state.is_final or (self.saved and not self.saving_recorded)

    @property
    def safe_to_drop(self) -> bool:
        """True when deleting the scan from Redis loses nothing: saved, or not saved by design."""
        # NOT_SAVED unrecorded: the scan_info turned saving off, no writer needed to say so.
        if self.saving_recorded or self.saving.state is SavingState.NOT_SAVED:
            return self.saving.state in (SavingState.SAVED, SavingState.NOT_SAVED)
        return self.saved

    @property
    def ended(self) -> bool:
        """True if the scan reached a final state."""
        return entries.is_final_state(self.state)

    @property
    def running(self) -> bool:
        """True if the scan has not ended and its publisher is alive."""
        return not self.ended and self.lease_alive

    @property
    def status(self) -> str:
        """``state``, with ``(publisher gone)`` for a scan not ended whose lease expired."""
        return self.state if self.ended or self.lease_alive else f"{self.state} (publisher gone)"


@dataclass(frozen=True)
class SessionSummary:
    """A session, its stored scans and the memory they take.

    Attributes
    ----------
    name : str
        Session name.
    scans : list of ScanSummary
        Scans still stored, by number (expired and deleted ones are not listed).
    session_memory : int
        Bytes of the session's own keys (scan stream, counter, saved set).
    """

    name: str
    scans: list[ScanSummary]
    session_memory: int

    @property
    def memory(self) -> int:
        """Bytes of the session's keys and of all its stored scans."""
        return self.session_memory + sum(scan.memory for scan in self.scans)

    @property
    def points(self) -> int:
        """Points of all stored scans (see :attr:`ScanSummary.points`)."""
        return sum(scan.points for scan in self.scans)


# ----------------------------------------------------------------------------- listing


def scan_numbers(store: DataStore, session: str) -> list[int]:
    """Scan numbers announced in the session's scan stream, in order, without duplicates.

    Scans announced but expired or deleted since are included: the stream keeps their entry.
    """
    numbers: dict[int, None] = {}
    key = store.keys.session_scans(session)
    try:
        stored = stream_entries(store.redis.xrange(key))
    except redis.exceptions.ResponseError as exc:
        if not is_wrong_type(exc):
            raise
        logger.error("session %s: its scan stream %s is not a stream; no scan listed", session, key)
        return []
    for _, fields in stored:
        try:
            number = entries.parse_new_scan(fields)
        except DecodingError as exc:
            logger.warning("session %s: %s", session, exc)
            continue
        if number is not None:
            numbers[number] = None
    return list(numbers)


def _float(value: bytes | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _execute(pipe: Any) -> list[Any]:
    """The pipeline's replies; a key of the wrong type (garbage written over it) gives its
    ResponseError in place, for the caller to report and skip: the other scans are listed."""
    replies = pipe.execute(raise_on_error=False)
    for reply in replies:
        if isinstance(reply, Exception) and not is_wrong_type(reply):
            raise reply
    return list(replies)


def _memory_usage(pipe: Any, key: str) -> None:
    # MEMORY USAGE samples 5 elements of big structures by default: an estimate, but O(1).
    pipe.execute_command("MEMORY USAGE", key)


def _scan_keys(
    store: DataStore, session: str, number: int, data_indices: Iterable[int]
) -> list[str]:
    """Every key of one scan (all share the scan's hash tag, hence one cluster slot)."""
    keys = store.keys
    return [
        keys.scan(session, number),
        keys.scan_events(session, number),
        keys.scan_lease(session, number),
        *(keys.scan_data(session, number, i) for i in data_indices),
    ]


def summaries(
    store: DataStore, session: str, numbers: Sequence[int], saved: set[int]
) -> dict[int, ScanSummary]:
    """Summaries of the given scans that still exist, by number (two pipelined round trips)."""
    keys = store.keys
    pipe = store.redis.pipeline(transaction=False)
    for n in numbers:
        pipe.hgetall(keys.scan(session, n))
        pipe.xrange(keys.scan_events(session, n))
        pipe.exists(keys.scan_lease(session, n))
        pipe.pttl(keys.scan(session, n))
    replies = _execute(pipe)
    found: list[tuple[int, dict[bytes, bytes], list[int], bool, int]] = []
    for i, n in enumerate(numbers):
        fields, events, lease, pttl = replies[4 * i : 4 * i + 4]
        if isinstance(fields, Exception):
            logger.error(
                "session %s: scan %d skipped: %s is not a hash", session, n, keys.scan(session, n)
            )
            continue
        if isinstance(events, Exception):
            logger.error("scan %s:%d: %s is not a stream", session, n, keys.scan_events(session, n))
            events = []
        if fields:
            found.append((n, fields, entries.data_node_indices(events), bool(lease), pttl))
    pipe = store.redis.pipeline(transaction=False)
    for n, _, indices, _, _ in found:
        for key in _scan_keys(store, session, n, indices):
            _memory_usage(pipe, key)
        for index in indices:
            pipe.xrevrange(keys.scan_data(session, n, index), count=1)
    replies = _execute(pipe)
    out: dict[int, ScanSummary] = {}
    position = 0
    for n, fields, indices, lease, pttl in found:
        nkeys = 3 + len(indices)
        usages = replies[position : position + nkeys]
        lasts = replies[position + nkeys : position + nkeys + len(indices)]
        position += nkeys + len(indices)
        state = fields.get(b"state", b"?").decode()
        saving = entries.parse_saving(fields)
        out[n] = ScanSummary(
            session=session,
            number=n,
            name=fields.get(b"name", b"").decode(errors="replace"),
            state=state,
            lease_alive=lease and not entries.is_final_state(state),
            points=max(
                (_points(session, n, index, last) for index, last in zip(indices, lasts)),
                default=0,
            ),
            memory=sum(int(u) for u in usages if u is not None),
            keys=sum(1 for u in usages if u is not None),
            saved=n in saved or saving.state is SavingState.SAVED,
            start_time=_float(fields.get(b"start_time")),
            end_time=_float(fields.get(b"end_time")),
            expires_in=pttl / 1000 if pttl is not None and pttl >= 0 else None,
            saving=saving,
            saving_recorded=bool(fields.get(b"saving")),
        )
    return out


def _points(session: str, number: int, index: int, last: Any) -> int:
    """Points of one data stream from its last entry; 0 (reported) for garbage."""
    try:
        if isinstance(last, Exception):
            raise DecodingError("its key is not a stream")
        return entries.stream_length(last)[0]
    except DecodingError as exc:
        logger.error(
            "scan %s:%d: data stream of node %d not counted: %s", session, number, index, exc
        )
        return 0


def saved_numbers(store: DataStore, session: str) -> set[int]:
    """Numbers of the scans a writer recorded as saved."""
    out = set()
    for member in store.redis.smembers(store.keys.writer_saved(session)):
        try:
            out.add(int(member))
        except ValueError:
            logger.warning("session %s: %r in the saved set is not a scan number", session, member)
    return out


def list_scans(store: DataStore, session: str) -> SessionSummary:
    """Describe one session and the scans it still has in Redis.

    Parameters
    ----------
    store : DataStore
        The connection.
    session : str
        Session name.

    Returns
    -------
    SessionSummary
        The stored scans by number, with state, points, memory and expiry.

    Raises
    ------
    SessionNotFoundError
        The session never published a scan.
    redis.exceptions.ConnectionError
        Redis cannot be reached (not wrapped).
    """
    store.require_session(session)
    found = summaries(store, session, scan_numbers(store, session), saved_numbers(store, session))
    keys = store.keys
    pipe = store.redis.pipeline(transaction=False)
    for key in (
        keys.session_scans(session),
        keys.session_counter(session),
        keys.writer_saved(session),
    ):
        _memory_usage(pipe, key)
    session_memory = sum(int(u) for u in pipe.execute() if u is not None)
    return SessionSummary(session, [found[n] for n in sorted(found)], session_memory)


def list_sessions(store: DataStore, session: str | None = None) -> list[SessionSummary]:
    """Describe every session (or only ``session``) and its stored scans.

    Raises
    ------
    SessionNotFoundError
        ``session`` is given and never published a scan.
    redis.exceptions.ConnectionError
        Redis cannot be reached (not wrapped).
    """
    names = [session] if session is not None else store.sessions()
    return [list_scans(store, name) for name in names]


def server_memory(store: DataStore) -> dict[str, Any]:
    """Return ``used_memory``, ``maxmemory`` (0: no limit) and ``maxmemory_policy`` of the server.

    On a cluster, those of the master nearest its limit (the one that refuses writes first:
    each master has its own ``maxmemory``), else of the master using the most memory.
    Values are None when the server refuses INFO (a restricted ACL user).
    """
    try:
        if store.is_cluster:
            # One reply per master: {node name: its INFO memory}.
            replies = cast(
                "dict[str, dict[str, Any]]",
                store.redis.info("memory", target_nodes="primaries"),
            )
            info = max(replies.values(), key=_fullness, default={})
        else:
            info = store.redis.info("memory")
    except redis.exceptions.ResponseError:  # NoPermissionError is one
        return {"used_memory": None, "maxmemory": None, "maxmemory_policy": None}
    return {
        "used_memory": info.get("used_memory"),
        "maxmemory": info.get("maxmemory"),
        "maxmemory_policy": info.get("maxmemory_policy"),
    }


def _fullness(info: dict[str, Any]) -> tuple[float, int]:
    """How near a master is to refusing writes: (used / maxmemory, or 0 without limit; used)."""
    used, limit = int(info.get("used_memory") or 0), int(info.get("maxmemory") or 0)
    return (used / limit if limit else 0.0, used)


# ----------------------------------------------------------------------------- dependents


@dataclass(frozen=True)
class ServerDependents:
    """What depends on a server: who would notice, and what would be lost, if it stopped.

    Attributes
    ----------
    clients : int
        Connections of other clients (publishers, writers, subscribers), this one excluded.
    client_names : list of str
        ``name@addr`` of each (``?`` for a client that set no name), for the message.
    unsaved : list of ScanSummary
        Stored scans whose saving is not final (:attr:`ScanSummary.saving_final`): running,
        waiting for a writer, or being written.
    """

    clients: int
    client_names: list[str]
    unsaved: list[ScanSummary]

    @property
    def any(self) -> bool:
        """True if a client is connected or a scan is unsaved."""
        return bool(self.clients or self.unsaved)

    def describe(self) -> str:
        """One sentence per cause: how many clients, which scans (with their saving verdict)."""
        parts = []
        if self.clients:
            # Grouped: six processes on the socket read as six copies of "?@unix socket".
            counts = collections.Counter(self.client_names)
            names = ", ".join(
                name if n == 1 else f"{n} x {name}" for name, n in sorted(counts.items())
            )
            parts.append(f"{counted(self.clients, 'client')} connected ({names})")
        if self.unsaved:
            scans = ", ".join(
                f"{s.session}:{s.number}_{s.name} ({s.status}, {s.saving.state.value})"
                for s in self.unsaved
            )
            parts.append(f"{counted(len(self.unsaved), 'scan')} not saved yet: {scans}")
        return "; ".join(parts) or "no client connected and every stored scan saved"


def _client_address(client: dict[str, Any]) -> str:
    """A client's address as a reader can use it: ``host:port``, or ``unix socket`` for the
    ``[/path/redis.sock:0]:0`` the server gives every client of its socket alike."""
    addr = str(client.get("addr") or client.get("laddr") or "?")
    return "unix socket" if addr.startswith(("[/", "/")) else addr


def server_dependents(store: DataStore) -> ServerDependents:
    """The clients connected to ``store``'s server and its scans whose saving is not final.

    Every prefix but the store's is ignored (the scans listed are those of
    :func:`list_sessions`). Replicas are not clients here; a client's own connections are
    excluded (it is this call).

    Raises
    ------
    redis.exceptions.ResponseError
        The server refuses CLIENT LIST (a restricted ACL user).
    """
    pipe = store.redis.pipeline(transaction=False)  # one connection: CLIENT ID is this one's
    pipe.client_id()
    pipe.client_list()
    own, clients = pipe.execute()
    others = [
        c
        for c in clients
        if str(c.get("id")) != str(own) and "S" not in str(c.get("flags", ""))  # not a replica
    ]
    names = [f"{c.get('name') or '?'}@{_client_address(c)}" for c in others]
    unsaved = [
        scan for summary in list_sessions(store) for scan in summary.scans if not scan.saving_final
    ]
    return ServerDependents(len(others), names, unsaved)
