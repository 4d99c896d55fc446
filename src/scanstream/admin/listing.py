"""Administration of stored scans: list sessions and scans with their memory, delete old scans.

Scans expire by themselves a retention time after they end (``Settings.retention_time``,
``SCANSTREAM_RETENTION_TIME``, default one day). The functions here are for the rest: seeing
what takes memory (:func:`list_sessions`) and freeing it early (:func:`delete_scans`).

Enumeration never uses KEYS or SCAN: sessions come from the ``sessions`` hash and the scans of a
session from its scan stream (one NEW_SCAN entry per scan); the data keys of a scan come from
the NEW_NODE entries of its event stream (see :mod:`scanstream._protocol.keys`).

Deletion is safe by default. A scan is never deleted while it runs (state not final and its
publisher's lease alive), and not before a writer has saved it (its number is in the set
``keys.writer_saved(session)``) unless ``force`` is given. The check and the deletion of one
scan are one WATCH/MULTI/EXEC transaction on the scan's keys, so a scan that changes in between
(a publisher renewing its lease, a new node) is checked again rather than deleted blindly.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import redis

from .._protocol import codecs
from .._protocol.keys import check_session_name
from .._transport.connection import DataStore, stream_entries
from ..exceptions import InvalidArgumentError, ScanstreamError
from ..models import ScanState

logger = logging.getLogger(__name__)

_FINAL = {state.name for state in ScanState if state.is_final}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)?\s*$", re.IGNORECASE)
_DURATION_UNITS = {None: 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0,
                   "d": 86400.0, "w": 604800.0}


def parse_duration(text: str) -> float:
    """Return a duration in seconds: ``"90"``, ``"90s"``, ``"15m"``, ``"2h"``, ``"7d"``, ``"1w"``.

    Raises
    ------
    InvalidArgumentError
        If the text is not a non-negative number followed by an optional unit.
    """
    match = _DURATION_RE.match(text) if isinstance(text, str) else None
    if match is None:
        raise InvalidArgumentError(
            f"invalid duration {text!r}: use a number of seconds or a number followed by "
            "s, m, h, d or w (for example 90s, 15m, 2h, 7d)")
    unit = match.group(2).lower() if match.group(2) else None
    return float(match.group(1)) * _DURATION_UNITS[unit]


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
        True if a writer recorded it as saved (its number is in ``keys.writer_saved``).
    start_time, end_time : float or None
        Epoch times; ``end_time`` is None until the scan ends.
    expires_in : float or None
        Seconds before Redis deletes it (retention time), None if it does not expire.
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

    @property
    def ended(self) -> bool:
        """True if the scan reached a final state."""
        return self.state in _FINAL

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


@dataclass(frozen=True)
class Decision:
    """What :func:`delete_scans` did with one scan, and why."""

    number: int
    deleted: bool
    reason: str
    scan: ScanSummary | None = None


@dataclass
class DeletionReport:
    """The outcome of :func:`delete_scans`: scans deleted and scans kept, with reasons.

    Attributes
    ----------
    session : str
        The session.
    dry_run : bool
        True if nothing was actually deleted (``deleted`` lists what would have been).
    deleted, kept : list of Decision
        By scan number.
    """

    session: str
    dry_run: bool = False
    deleted: list[Decision] = field(default_factory=list)
    kept: list[Decision] = field(default_factory=list)

    @property
    def freed(self) -> int:
        """Bytes freed (an estimate: the MEMORY USAGE of the deleted keys)."""
        return sum(d.scan.memory for d in self.deleted if d.scan is not None)


# ----------------------------------------------------------------------------- listing


def _scan_numbers(store: DataStore, session: str) -> list[int]:
    """Scan numbers announced in the session's scan stream, in order, without duplicates."""
    numbers: dict[int, None] = {}
    for _, fields in stream_entries(store.redis.xrange(store.keys.session_scans(session))):
        if fields.get(b"event", b"NEW_SCAN") == b"NEW_SCAN" and b"scan" in fields:
            try:
                numbers[int(fields[b"scan"])] = None
            except ValueError:
                logger.warning("session %s: bad scan number in %r", session, fields)
    return list(numbers)


def _data_node_indices(events: list[tuple[bytes, dict[bytes, bytes]]]) -> list[int]:
    """Indices of the nodes with a data stream, from a scan's event entries."""
    out = []
    for _, fields in events:
        if fields.get(b"event") == b"NEW_NODE" and fields.get(b"type") != b"container":
            try:
                out.append(int(fields[b"node"]))
            except (KeyError, ValueError):
                logger.warning("corrupt NEW_NODE entry: %r", fields)
    return out


def _stream_length(last: list[tuple[bytes, dict[bytes, bytes]]]) -> int:
    """Number of points of a data stream, from its last entry (as the end-of-scan script does)."""
    if not last:
        return 0
    entry_id, fields = last[0]
    if b"end" in fields:
        return int(fields[b"end"])
    return int(entry_id.split(b"-")[0]) + codecs.entry_count(fields)


def _float(value: bytes | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _memory_usage(pipe: Any, key: str) -> None:
    # MEMORY USAGE samples 5 elements of big structures by default: an estimate, but O(1).
    pipe.execute_command("MEMORY USAGE", key)


def _scan_keys(store: DataStore, session: str, number: int,
               data_indices: Iterable[int]) -> list[str]:
    """Every key of one scan (all share the scan's hash tag, hence one cluster slot)."""
    keys = store.keys
    return [keys.scan(session, number), keys.scan_events(session, number),
            keys.scan_lease(session, number),
            *(keys.scan_data(session, number, i) for i in data_indices)]


def _summaries(store: DataStore, session: str, numbers: Sequence[int],
               saved: set[int]) -> dict[int, ScanSummary]:
    """Summaries of the given scans that still exist, by number (three pipelined round trips)."""
    keys = store.keys
    pipe = store.redis.pipeline(transaction=False)
    for n in numbers:
        pipe.hgetall(keys.scan(session, n))
        pipe.xrange(keys.scan_events(session, n))
        pipe.exists(keys.scan_lease(session, n))
        pipe.pttl(keys.scan(session, n))
    replies = pipe.execute()
    found: list[tuple[int, dict[bytes, bytes], list[int], bool, int]] = []
    for i, n in enumerate(numbers):
        fields, events, lease, pttl = replies[4 * i: 4 * i + 4]
        if fields:
            found.append((n, fields, _data_node_indices(events), bool(lease), pttl))
    pipe = store.redis.pipeline(transaction=False)
    for n, _, indices, _, _ in found:
        for key in _scan_keys(store, session, n, indices):
            _memory_usage(pipe, key)
        for index in indices:
            pipe.xrevrange(keys.scan_data(session, n, index), count=1)
    replies = pipe.execute()
    out: dict[int, ScanSummary] = {}
    position = 0
    for n, fields, indices, lease, pttl in found:
        nkeys = 3 + len(indices)
        usages = replies[position: position + nkeys]
        lasts = replies[position + nkeys: position + nkeys + len(indices)]
        position += nkeys + len(indices)
        state = fields.get(b"state", b"?").decode()
        out[n] = ScanSummary(
            session=session, number=n, name=fields.get(b"name", b"").decode(errors="replace"),
            state=state, lease_alive=lease and state not in _FINAL,
            points=max((_stream_length(last) for last in lasts), default=0),
            memory=sum(int(u) for u in usages if u is not None),
            keys=sum(1 for u in usages if u is not None), saved=n in saved,
            start_time=_float(fields.get(b"start_time")), end_time=_float(fields.get(b"end_time")),
            expires_in=pttl / 1000 if pttl is not None and pttl >= 0 else None)
    return out


def _saved_numbers(store: DataStore, session: str) -> set[int]:
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
    summaries = _summaries(store, session, _scan_numbers(store, session),
                           _saved_numbers(store, session))
    keys = store.keys
    pipe = store.redis.pipeline(transaction=False)
    for key in (keys.session_scans(session), keys.session_counter(session),
                keys.writer_saved(session)):
        _memory_usage(pipe, key)
    session_memory = sum(int(u) for u in pipe.execute() if u is not None)
    return SessionSummary(session, [summaries[n] for n in sorted(summaries)], session_memory)


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

    Values are None when the server refuses INFO (a restricted ACL user).
    """
    try:
        info = store.redis.info("memory")
    except redis.exceptions.ResponseError:  # NoPermissionError is one
        return {"used_memory": None, "maxmemory": None, "maxmemory_policy": None}
    return {"used_memory": info.get("used_memory"), "maxmemory": info.get("maxmemory"),
            "maxmemory_policy": info.get("maxmemory_policy")}


# ----------------------------------------------------------------------------- deletion


class _Keep(Exception):
    """Internal: the transaction decided to keep the scan (carries the reason)."""


def _check_deletable(summary: ScanSummary, *, force: bool, cutoff: float | None) -> str | None:
    """Reason to keep a scan, or None if it may be deleted."""
    if summary.running:
        return f"running ({summary.state}, publisher alive)"
    if cutoff is not None:
        when = summary.end_time or summary.start_time
        if when is not None and when > cutoff:
            age = time.time() - when
            return f"too recent ({'ended' if summary.end_time else 'started'} {_age(age)} ago)"
    if not summary.saved and not force:
        return "not saved by a writer (use --force to delete it anyway)"
    return None


def _age(seconds: float) -> str:
    """A short human duration: 42s, 5m, 3.2h, 2.0d."""
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def delete_scans(
    store: DataStore,
    session: str,
    *,
    older_than: float | None = None,
    numbers: Sequence[int] | None = None,
    force: bool = False,
    dry_run: bool = False,
) -> DeletionReport:
    """Delete stored scans of a session, safely, and say what was deleted and what was kept.

    A scan is deleted only if all of these hold:

    - it is not running: it has ended, or its publisher's lease has expired (publisher gone);
    - with ``older_than``: it ended (or, publisher gone, started) more than that long ago;
    - a writer recorded it as saved (``keys.writer_saved(session)``), or ``force`` is True.

    Each scan is checked and deleted in one WATCH/MULTI/EXEC transaction on its keys: if it
    changes in between (lease renewed, node added, state changed) it is checked again.

    Parameters
    ----------
    store : DataStore
        The connection (it needs write access).
    session : str
        Session name.
    older_than : float, optional
        Minimum age in seconds (see :func:`parse_duration`). None: any age.
    numbers : sequence of int, optional
        Only these scans. None: every stored scan of the session.
    force : bool
        Delete scans no writer has saved (never running ones).
    dry_run : bool
        Decide but delete nothing.

    Returns
    -------
    DeletionReport
        The scans deleted and those kept, each with the reason.

    Raises
    ------
    SessionNotFoundError
        The session never published a scan.
    InvalidArgumentError
        ``older_than`` is negative or a scan number is not a positive int.
    redis.exceptions.ConnectionError
        Redis cannot be reached (not wrapped); scans already deleted stay deleted.
    """
    check_session_name(session)
    if older_than is not None and (not isinstance(older_than, (int, float)) or older_than < 0):
        raise InvalidArgumentError(f"older_than must be a number of seconds >= 0, got {older_than!r}")
    if numbers is not None:
        for n in numbers:
            if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
                raise InvalidArgumentError(f"scan numbers are positive ints, got {n!r}")
    store.require_session(session)
    report = DeletionReport(session, dry_run=dry_run)
    stored = _scan_numbers(store, session)
    wanted = sorted(set(numbers)) if numbers is not None else stored
    cutoff = None if older_than is None else time.time() - older_than
    for number in wanted:
        decision = _delete_one(store, session, number, force=force, cutoff=cutoff,
                               dry_run=dry_run)
        if numbers is None and decision.scan is None:
            continue  # announced in the session's stream but expired or deleted since
        (report.deleted if decision.deleted else report.kept).append(decision)
        if decision.deleted:
            logger.info("%s scan %s:%d (%s)", "would delete" if dry_run else "deleted",
                        session, number, decision.reason)
    return report


def _delete_one(store: DataStore, session: str, number: int, *, force: bool,
                cutoff: float | None, dry_run: bool) -> Decision:
    """Check and delete one scan in a WATCH/MULTI/EXEC transaction."""
    keys = store.keys
    base = [keys.scan(session, number), keys.scan_events(session, number),
            keys.scan_lease(session, number)]
    for _attempt in range(20):
        # The data keys come from the event stream, which is watched: a node added after
        # this read makes EXEC fail and the scan is looked at again.
        summary = _summaries(store, session, [number], _saved_numbers(store, session)).get(number)
        if summary is None:
            return Decision(number, False, "no such scan (never created, expired or deleted)")
        events = stream_entries(store.redis.xrange(keys.scan_events(session, number)))
        all_keys = _scan_keys(store, session, number, _data_node_indices(events))
        reason = _check_deletable(summary, force=force, cutoff=cutoff)
        if reason is not None:
            return Decision(number, False, reason, summary)
        why = "ended " + summary.state if summary.ended else "publisher gone"
        why += ", saved" if summary.saved else ", not saved (forced)"
        if dry_run:
            return Decision(number, True, why, summary)
        with store.redis.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(*base)
                # Checked again under WATCH: the state, the lease, the node list.
                # bytes, never str: the client is created without decode_responses.
                fields = cast("dict[bytes, bytes]", pipe.hgetall(base[0]))
                state = fields.get(b"state", b"").decode() if fields else None
                lease = bool(pipe.exists(base[2]))
                current = pipe.xlen(base[1])
                if state != summary.state or (lease and state not in _FINAL) != summary.lease_alive \
                        or current != len(events):
                    continue
                pipe.multi()
                pipe.delete(*all_keys)
                pipe.execute()
            except redis.exceptions.WatchError:
                continue
        return Decision(number, True, why, summary)
    raise ScanstreamError(f"scan {session}:{number} kept changing while being deleted; try again")


# ----------------------------------------------------------------------------- text output


def format_bytes(size: int | None) -> str:
    """Format a byte count as ``512B``, ``12.3KiB``, ``4.0MiB``, ``1.50GiB``; None as ``-``."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.2f}GiB"


def _when(timestamp: float | None) -> str:
    return "-" if timestamp is None else time.strftime("%Y-%m-%d %H:%M:%S",
                                                       time.localtime(timestamp))


def format_listing(sessions: Sequence[SessionSummary], memory: dict[str, Any] | None = None
                   ) -> str:
    """Text of ``scanstream ls``: one table per session, then the totals."""
    lines = []
    header = ("#", "name", "state", "points", "memory", "saved", "ended", "expires in")
    for summary in sessions:
        lines.append(f"session {summary.name}: {len(summary.scans)} scan(s), "
                     f"{format_bytes(summary.memory)}")
        rows = [header] + [
            (str(s.number), s.name, s.status, str(s.points), format_bytes(s.memory),
             "yes" if s.saved else "no", _when(s.end_time),
             "-" if s.expires_in is None else _age(s.expires_in))
            for s in summary.scans]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        for row in rows:
            lines.append("  " + "  ".join(
                cell.rjust(w) if i in (0, 3, 4) else cell.ljust(w)
                for i, (cell, w) in enumerate(zip(row, widths))).rstrip())
    nscans = sum(len(s.scans) for s in sessions)
    total = f"total: {len(sessions)} session(s), {nscans} scan(s), " \
            f"{format_bytes(sum(s.memory for s in sessions))}"
    if memory and memory.get("used_memory") is not None:
        limit = memory.get("maxmemory")
        total += (f"; server uses {format_bytes(memory['used_memory'])} of "
                  f"{format_bytes(limit) if limit else 'no limit'}"
                  f" (policy {memory.get('maxmemory_policy')})")
    lines.append(total)
    return "\n".join(lines)


def format_report(report: DeletionReport) -> str:
    """Text of ``scanstream delete``: each scan deleted or kept, with the reason, then a total."""
    verb = "would delete" if report.dry_run else "deleted"
    lines = []
    for d in report.deleted:
        name = d.scan.name if d.scan else "?"
        lines.append(f"{verb} {report.session}:{d.number}_{name}: {d.reason}")
    for d in report.kept:
        name = f"_{d.scan.name}" if d.scan else ""
        lines.append(f"kept {report.session}:{d.number}{name}: {d.reason}")
    lines.append(f"{len(report.deleted)} scan(s) {verb}, {len(report.kept)} kept, "
                 f"{format_bytes(report.freed)} {'to free' if report.dry_run else 'freed'}")
    return "\n".join(lines)
