"""What the entries of scanstream's streams hold: the one place that names their fields.

Three kinds of streams (key names in :mod:`.keys`):

- the session's scan stream: one ``NEW_SCAN`` entry per scan
  (``scan``, ``name``, ``node_type``);
- a scan's event stream: ``CREATED``, then ``NEW_NODE`` per node (``node``, ``parent``,
  ``type``, ``name``, ``info``), ``PREPARED``, and one ``END`` (``state``, ``error``, ``time``,
  ``lengths``);
- a data stream per data node: entries whose ID is ``<index of the first point>-1``, holding
  ``n`` points (codec fields in :mod:`.codecs`), and at the end one seal entry whose only field
  ``end`` is the final number of points.

Writers build entries with the ``*_fields`` functions and readers parse them with the
``parse_*`` functions, so that both sides cannot drift apart. The end-of-scan Lua script
(:mod:`.scripts`) follows the same rules; ``tests/test_protocol_scripts.py`` checks it against them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..exceptions import DecodingError
from ..models import (
    DATA_NODE_TYPES,
    FINAL_STATES,
    NodeDescription,
    SavingState,
    SavingVerdict,
    ScanEnd,
    ScanState,
)
from . import metadata

if TYPE_CHECKING:
    from redis.typing import EncodableT, FieldT

#: Entry fields as Redis returns them (bytes, the client never decodes).
Fields = dict[bytes, bytes]

#: The ``event`` field of each entry kind.
NEW_SCAN = b"NEW_SCAN"
CREATED = b"CREATED"
NEW_NODE = b"NEW_NODE"
PREPARED = b"PREPARED"
END = b"END"

#: Names of the final states, as stored in the scan hash and the END entry.
FINAL_STATE_NAMES = frozenset(state.name for state in FINAL_STATES)

#: Field of a data stream's seal entry (the final number of points).
SEAL_FIELD = b"end"


def brief(fields: Fields, limit: int = 40) -> Fields:
    """``fields`` with each value cut to ``limit`` bytes: for messages about garbage entries,
    which may hold megabytes."""
    return {
        k[:limit]: v[:limit] if len(v) <= limit else v[:limit] + b"..." for k, v in fields.items()
    }


def has_data_stream(node_type: str | bytes) -> bool:
    """True when nodes of this type own a data stream (channel, lima, scan reference)."""
    if isinstance(node_type, bytes):
        node_type = node_type.decode(errors="replace")
    return node_type in DATA_NODE_TYPES


def is_final_state(name: str | bytes | None) -> bool:
    """True when a stored state name is one of the final states."""
    if isinstance(name, bytes):
        name = name.decode(errors="replace")
    return name in FINAL_STATE_NAMES


# ----------------------------------------------------------------------------- data streams


def data_entry_id(first_index: int) -> str:
    """Stream ID of the data entry whose first point has index ``first_index``."""
    return f"{first_index}-1"


#: The value of a scan's lease key: a string always written with an expiry (PX).
LEASE_VALUE = b"1"


def lease_status(kind: bytes | str, pttl: int, value: bytes | None) -> tuple[bool, str | None]:
    """Judge a scan's lease key: ``(alive, problem)``; ``problem`` says why it is garbage.

    ``kind``, ``pttl`` and ``value`` are the key's TYPE, PTTL and MGET replies, read in this
    order (none of them fails on another type, so a pipeline of them needs no error handling
    that would bypass the connection's retries). Garbage there (an operator's ``SET``, a
    hash), which has no expiry, would keep a dead publisher's scan running for ever, so
    readers count it as an expired lease; ``end_scan.lua`` applies the same rule. Absent:
    ``(False, None)``.
    """
    kind = kind.decode(errors="replace") if isinstance(kind, bytes) else kind
    if kind == "none" or pttl == -2:
        return False, None
    if kind != "string":
        return False, f"it is a {kind}, not a string"
    if value is None:  # expired or deleted after the TYPE
        return False, None
    if value != LEASE_VALUE:
        return False, f"its value is {brief_value(value)}, not {LEASE_VALUE.decode()}"
    if pttl < 0:
        return False, "it has no expiry"
    return True, None


#: Replies per lease key of :func:`queue_lease_reads`, in the order :func:`lease_status` takes.
LEASE_READS = 3


def queue_lease_reads(pipe: Any, lease_key: str) -> None:
    """Queue on ``pipe`` (a redis-py pipeline) the reads :func:`lease_status` judges a lease
    key by: TYPE, PTTL, MGET (a list of one value; ``.mget`` is refused in a cluster pipeline)."""
    pipe.type(lease_key)
    pipe.pttl(lease_key)
    pipe.execute_command("MGET", lease_key)


def brief_value(value: object, limit: int = 40) -> str:
    """``value`` (bytes or None) shown for a log line, cut to ``limit`` bytes."""
    if not isinstance(value, bytes):
        return repr(value)
    return repr(value[:limit]) + ("..." if len(value) > limit else "")


def is_data_entry_id(entry_id: bytes) -> bool:
    """True when ``entry_id`` has the form of a data entry's ID (:func:`data_entry_id`):
    ``<index>-1``. An entry added with ``XADD key * ...`` (sequence 0, usually) has not."""
    first, _, seq = entry_id.partition(b"-")
    return seq == b"1" and first.isdigit()


def first_index_of(entry_id: bytes) -> int:
    """Index of the first point of the data entry with this ID (the inverse of :func:`data_entry_id`)."""
    return int(entry_id.split(b"-", 1)[0])


def after_index_id(index: int) -> bytes:
    """The largest ID before the entry of point ``index + 1``: XREAD from it starts there."""
    return b"%d-18446744073709551615" % index


@dataclass(frozen=True, slots=True)
class DataEntry:
    """One entry of a data stream, parsed: where it starts, how many points, whether it seals.

    Attributes
    ----------
    first_index : int
        Index of the entry's first point (for a seal: the final length).
    npoints : int
        Number of points it holds (0 for a seal).
    fields : dict
        The raw fields (for the codec).
    sealed_length : int or None
        The final number of points when this is the seal entry, else None.
    """

    first_index: int
    npoints: int
    fields: Fields
    sealed_length: int | None

    @classmethod
    def from_raw(cls, entry_id: bytes, fields: Fields) -> DataEntry:
        """Parse an ``(ID, fields)`` pair of XRANGE, XREVRANGE or XREAD.

        Raises
        ------
        DecodingError
            When the ID or the count is not a number.
        """
        first, npoints, sealed_length = parse_data_entry(entry_id, fields)
        return cls(first, npoints, fields, sealed_length)

    @property
    def end_index(self) -> int:
        """Index just after the entry's last point (for a seal: the final length)."""
        if self.sealed_length is not None:
            return self.sealed_length
        return self.first_index + self.npoints


def parse_data_entry(entry_id: bytes, fields: Fields) -> tuple[int, int, int | None]:
    """``(first_index, npoints, sealed_length)`` of a data entry (see :class:`DataEntry`).

    The walker's per-entry path: the same parse as :meth:`DataEntry.from_raw`, without
    building the object (a few microseconds per entry for a live reader of many channels).

    Raises
    ------
    DecodingError
        When the ID or the count is not a number.
    """
    try:
        first = int(entry_id.split(b"-", 1)[0])
        # Digits only, as end_scan.lua reads them (int() would also take ' 5', '+5', '5_0').
        sealed = fields.get(SEAL_FIELD)
        if sealed is not None:
            if not sealed.isdigit():
                raise ValueError(sealed)
            return first, 0, int(sealed)
        npoints = fields[b"n"]
        if not npoints.isdigit():
            raise ValueError(npoints)
        return first, int(npoints), None
    except (KeyError, ValueError):
        raise DecodingError(
            f"corrupt data entry {entry_id!r} (no valid ID or point count): {sorted(fields)}"
        ) from None


def stream_length(last: list[tuple[bytes, Fields]]) -> tuple[int, bool]:
    """Number of points of a data stream and whether it is sealed, from its last entry.

    ``last`` is the reply of ``XREVRANGE key + - COUNT 1``.
    """
    if not last:
        return 0, False
    entry = DataEntry.from_raw(*last[0])
    return entry.end_index, entry.sealed_length is not None


# ----------------------------------------------------------------------------- event streams


def new_scan_fields(
    number: int, name: str, node_type: str, retention: float | None = None
) -> dict[FieldT, EncodableT]:
    """Fields of the session stream's NEW_SCAN entry.

    ``retention`` is the publisher's retention time (s; 0: no expiry): the scan's keys expire
    that long after its end at the earliest, so a reader that finds them gone sooner knows the
    scan was lost, not expired (:func:`new_scan_retention`). Entries of older publishers have
    no such field.
    """
    fields: dict[FieldT, EncodableT] = {
        "event": NEW_SCAN.decode(),
        "scan": number,
        "name": name,
        "node_type": node_type,
    }
    if retention is not None:
        fields["retention"] = repr(float(retention))
    return fields


def new_scan_retention(fields: Fields) -> float | None:
    """The retention time a NEW_SCAN entry states (see :func:`new_scan_fields`); None if none."""
    try:
        retention = float(fields[b"retention"])
    except (KeyError, ValueError):
        return None
    return retention if retention >= 0 else None


def parse_new_scan(fields: Fields) -> int | None:
    """The scan number of a NEW_SCAN entry; None for another kind of entry.

    Raises
    ------
    DecodingError
        When the entry is a NEW_SCAN without a valid number.
    """
    if fields.get(b"event", NEW_SCAN) != NEW_SCAN:
        return None
    try:
        return int(fields[b"scan"])
    except (KeyError, ValueError):
        raise DecodingError(f"corrupt NEW_SCAN entry: {brief(fields)}") from None


# A node index as written by new_node_fields: '0' or up to 16 digits, no sign, no leading zero.
# Strict, so that every reader and the Lua scripts name the same data key for an entry
# (int() would take ' 7', '+7' or '0_7' as 7 where Lua builds the key ':data:+7').
_NODE_INDEX = re.compile(rb"0|[1-9][0-9]{0,15}")


def parse_node_index(raw: bytes | None) -> int | None:
    """The node index of a NEW_NODE entry's ``node`` field; None when missing or malformed.

    ``end_scan.lua`` and ``delete_scan.lua`` apply the same rule (their ``node_index``).
    """
    if raw is None or _NODE_INDEX.fullmatch(raw) is None:
        return None
    return int(raw)


def new_node_fields(desc: NodeDescription) -> dict[FieldT, EncodableT]:
    """Fields of a scan's NEW_NODE entry; ``desc.info`` as :func:`metadata.check_scan_info`
    returned it."""
    return {
        "event": NEW_NODE.decode(),
        "node": desc.index,
        "parent": desc.parent,
        "type": desc.type,
        "name": desc.name,
        "info": metadata.dumps_checked(desc.info, f"info of node {desc.name!r}"),
    }


def parse_new_node(fields: Fields, where: str) -> NodeDescription:
    """The node described by a NEW_NODE entry.

    Raises
    ------
    DecodingError
        When a field is missing or malformed; ``where`` names the scan in the message.
    """
    try:
        index = parse_node_index(fields.get(b"node"))
        if index is None:
            raise ValueError(f"node field {brief(fields).get(b'node')!r} is not a node index")
        info = metadata.loads(fields[b"info"]) or {}
        if not isinstance(info, dict):
            raise ValueError(f"info is a {type(info).__name__}, not a dict")
        return NodeDescription(
            index=index,
            parent=int(fields[b"parent"]),
            type=fields[b"type"].decode(),
            name=fields[b"name"].decode(),
            info=info,
        )
    except (KeyError, ValueError, DecodingError) as exc:
        raise DecodingError(f"{where}: corrupt NEW_NODE entry ({exc})") from None


def parse_end(fields: Fields, where: str) -> ScanEnd:
    """The final state carried by a scan's END entry.

    Raises
    ------
    DecodingError
        When a field is missing or malformed; ``where`` names the scan in the message.
    """
    try:
        error = fields.get(b"error", b"").decode() or None
        lengths = metadata.loads(fields.get(b"lengths", b"{}")) or {}
        lost = metadata.loads(fields.get(b"lost", b"{}")) or {}
        return ScanEnd(
            state=ScanState[fields[b"state"].decode()],
            error=error,
            end_time=float(fields.get(b"time", b"0")),
            lengths={int(k): int(v) for k, v in lengths.items()},
            lost={int(k): int(v) for k, v in lost.items()},
        )
    except (KeyError, ValueError, AttributeError, DecodingError) as exc:
        raise DecodingError(f"{where}: corrupt END entry ({exc})") from None


def data_node_indices(events: list[tuple[bytes, Fields]]) -> list[int]:
    """Indices of the nodes with a data stream, from a scan's event entries, without duplicates.

    Corrupt NEW_NODE entries are skipped (their node has no stream that could be found).
    """
    out: dict[int, None] = {}
    for _, fields in events:
        if fields.get(b"event") == NEW_NODE and has_data_stream(fields.get(b"type", b"")):
            index = parse_node_index(fields.get(b"node"))
            if index is not None:
                out[index] = None
    return list(out)


def before_time_id(ms: int) -> bytes:
    """The largest stream ID before millisecond ``ms``: XREAD from it returns the entries
    stamped ``ms`` or later (event streams have automatic IDs, ``<epoch ms>-<sequence>``)."""
    return after_index_id(ms - 1)


# ----------------------------------------------------------------------------- scan hash, state entries


def scan_hash_fields(
    session: str, number: int, name: str, node_type: str, info_json: str, start_time: float
) -> dict[FieldT, EncodableT]:
    """Fields of a new scan's hash (in state CREATED)."""
    return {
        "session": session,
        "number": number,
        "name": name,
        "node_type": node_type,
        "state": ScanState.CREATED.name,
        "info": info_json,
        "start_time": repr(start_time),
    }


def prepared_hash_fields(info_json: str) -> dict[FieldT, EncodableT]:
    """Fields of the scan hash that change when the scan is PREPARED."""
    return {"state": ScanState.PREPARED.name, "info": info_json}


def state_entry_fields(event: bytes, now: float) -> dict[FieldT, EncodableT]:
    """Fields of a scan's CREATED or PREPARED entry."""
    return {"event": event.decode(), "time": repr(now)}


# ----------------------------------------------------------------------------- node info updates

#: Prefix of the scan hash fields that hold a node's info updates: ``node_info:<index>``.
#: The value is a JSON object, every key the node's publisher added since its creation (it
#: replaces the previous value); the node's own info stays in its NEW_NODE entry. Kept in the
#: scan hash so that it expires and is deleted with the scan, and is written before END.
NODE_INFO_PREFIX = b"node_info:"


def node_info_field(index: int) -> str:
    """The scan hash field holding the info updates of node ``index``."""
    return f"{NODE_INFO_PREFIX.decode()}{index}"


def parse_node_info(fields: Fields, index: int, where: str) -> dict[str, Any]:
    """The info updates of node ``index`` held by a scan hash ({} when none).

    Raises
    ------
    DecodingError
        The field is not a JSON object.
    """
    field = node_info_field(index)
    raw = fields.get(field.encode())
    if raw is None:
        return {}
    try:
        value = metadata.loads(raw)
    except DecodingError as exc:
        raise DecodingError(f"{where}: the info update of node {index} ({field}): {exc}") from None
    if not isinstance(value, dict):
        raise DecodingError(f"{where}: the info update of node {index} ({field}) is not an object")
    return value


# ----------------------------------------------------------------------------- saving verdict

#: Fields of the scan hash that hold the saving verdict (written by the owning writer).
SAVING_FIELDS = (
    b"saving",
    b"saving_file",
    b"saving_entries",
    b"saving_points",
    b"saving_reason",
    b"saving_writer",
    b"saving_time",
)


#: Scan-hash field of a scan recorded as lost (:mod:`scanstream.subscribe.lost`): the error.
LOST_FIELD = "lost"


def parse_lost(fields: Fields) -> str | None:
    """Why the scan was recorded as lost (its keys gone before they could expire); else None."""
    raw = fields.get(LOST_FIELD.encode())
    return raw.decode(errors="replace") if raw else None


def saving_fields(verdict: SavingVerdict) -> dict[FieldT, EncodableT]:
    """Scan-hash fields that record ``verdict`` (every field, so an older verdict is replaced)."""
    return {
        "saving": verdict.state.value,
        "saving_file": verdict.file or "",
        "saving_entries": metadata.dumps(list(verdict.entries), "saving entries"),
        "saving_points": metadata.dumps(verdict.points, "saving points"),
        "saving_reason": verdict.reason or "",
        "saving_writer": verdict.writer or "",
        "saving_time": repr(verdict.time if verdict.time is not None else 0.0),
    }


#: Reason of the verdict of a scan whose scan_info turns saving off (``save=False``).
SAVING_OFF_REASON = "saving is off in scan_info (save=False)"


def _saving_off(fields: Fields) -> bool:
    """True when the hash's scan_info (field ``info``) turns saving off (``save=False``)."""
    info = fields.get(b"info")
    if not info or b'"save"' not in info:  # most scans: no JSON decoding
        return False
    try:
        decoded = metadata.loads(info)
    except DecodingError:
        return False
    return isinstance(decoded, dict) and decoded.get("save") is False


def parse_saving(fields: Fields) -> SavingVerdict:
    """The saving verdict held by a scan hash; WAITING when no writer has recorded one.

    A scan whose scan_info turns saving off (``save=False``) and that no writer has judged
    reads as NOT_SAVED (given the hash's ``info`` field), as the publisher reports it: no
    writer needs to run for ``ls``, ``delete`` or ``server stop`` to know it is final.
    A malformed verdict (a garbage value in Redis) reads as FAILED with a reason that says so,
    never as SAVED.
    """
    raw = fields.get(b"saving")
    if not raw:
        if _saving_off(fields):
            return SavingVerdict(SavingState.NOT_SAVED, reason=SAVING_OFF_REASON)
        return SavingVerdict(SavingState.WAITING)
    try:
        entries = metadata.loads(fields.get(b"saving_entries") or b"[]") or []
        points = metadata.loads(fields.get(b"saving_points") or b"{}") or {}
        return SavingVerdict(
            state=SavingState(raw.decode()),
            file=fields.get(b"saving_file", b"").decode() or None,
            entries=tuple(str(e) for e in entries),
            points={str(k): int(v) for k, v in points.items()},
            reason=fields.get(b"saving_reason", b"").decode() or None,
            writer=fields.get(b"saving_writer", b"").decode() or None,
            time=float(fields.get(b"saving_time") or 0.0) or None,
        )
    except (ValueError, TypeError, AttributeError, DecodingError) as exc:
        return SavingVerdict(SavingState.FAILED, reason=f"corrupt saving verdict in Redis ({exc})")


# ----------------------------------------------------------------------------- writer health

#: Fields of a session's writer health hash (``keys.writer_health``): the id of the writer
#: that owns the session, and its status as JSON. The owning writer renews the hash with a
#: TTL of a few seconds, so that it disappears by itself when that writer dies or freezes.
WRITER_OWNER_FIELD = "owner"
WRITER_STATUS_FIELD = "status"


def parse_writer_health(fields: Fields) -> dict[str, Any] | None:
    """The status of the writer that owns a session, from its health hash; None if none does.

    ``fields`` are the hash's fields as HGETALL returns them (empty for a missing key). A hash
    without an owner, or whose status is not a JSON object, names no live writer (None): a
    scan is never reported as followed by a writer that cannot be identified.
    """
    owner = fields.get(WRITER_OWNER_FIELD.encode())
    raw = fields.get(WRITER_STATUS_FIELD.encode())
    if not owner or not raw:
        return None
    try:
        status = metadata.loads(raw)
    except DecodingError:
        return None
    if not isinstance(status, dict):
        return None
    status.setdefault("owner", owner.decode(errors="replace"))
    return status
