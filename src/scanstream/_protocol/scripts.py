"""The server-side steps of the protocol: Lua scripts that change a scan in one atomic step.

- :func:`create_scan` writes a new scan's keys unless its number is taken
  (``create_scan.lua``);
- :func:`end_scan` seals the data streams, appends END, records the final state and applies
  the retention time (``end_scan.lua``);
- :func:`delete_scan` checks the deletion rules and deletes a scan's keys (``delete_scan.lua``);
- :func:`prepare_scan` marks a scan PREPARED if it still exists (``prepare_scan.lua``);
- :func:`set_node_info` records a node's info while the scan runs (``set_node_info.lua``).

The scripts are package data (``*.lua`` beside this module), so that editors highlight them and
``redis-cli --eval`` can run them. They follow the rules of :mod:`.entries` (which states are
final, which nodes own a data stream, how long a stream is); ``tests/test_protocol_scripts.py``
checks that the Lua and the Python agree. The writer's claim and release scripts live with the
writer.

The functions take a redis-py client and the :class:`~.keys.Keys` of the database, not a
``DataStore``: the protocol layer does not depend on the transport.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any, NamedTuple, cast

import redis

from ..exceptions import DecodingError
from .keys import Keys

logger = logging.getLogger(__name__)

#: Prepended to a script to let it run when Redis is full (maxmemory reached, noeviction).
#: Script flags need Redis >= 7.0: older servers refuse the line with an error.
ALLOW_OOM = "#!lua flags=allow-oom\n"


def script_text(name: str) -> str:
    """Text of the Lua script ``name`` (for example ``"end_scan.lua"``) shipped with the package."""
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


class LuaScript:
    """A Lua script run by its SHA1 (EVALSHA), loaded into the server's cache when missing.

    One instance serves every client: unlike redis-py's ``register_script``, it is not bound
    to a connection.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode("utf-8")).hexdigest()

    def __call__(
        self, client: redis.Redis, keys: list[str], args: Sequence[str | bytes]
    ) -> list[bytes]:
        """Run the script; returns its reply (a list of bytes for the scripts of this module)."""
        try:
            reply = client.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            # First use on this server, or its script cache was flushed (SCRIPT FLUSH, restart).
            reply = client.eval(self.text, len(keys), *keys, *args)
        # bytes, never str: scanstream's clients are created without decode_responses.
        return cast("list[bytes]", reply)


_END_SCAN = LuaScript(script_text("end_scan.lua"))
# The same script allowed to run when Redis is full: ending a scan as FAILED adds only a few
# small entries, and refusing it would leave the scan running until its lease expires, when
# ending it as KILLED would be refused too.
_END_SCAN_ALLOW_OOM = LuaScript(ALLOW_OOM + _END_SCAN.text)
_DELETE_SCAN = LuaScript(script_text("delete_scan.lua"))
_CREATE_SCAN = LuaScript(script_text("create_scan.lua"))
_PREPARE_SCAN = LuaScript(script_text("prepare_scan.lua"))
_SET_NODE_INFO = LuaScript(script_text("set_node_info.lua"))


def _scan_keys(keys: Keys, session: str, number: int) -> list[str]:
    """KEYS of every script of this module: the scan hash, its event stream, its lease."""
    return [
        keys.scan(session, number),
        keys.scan_events(session, number),
        keys.scan_lease(session, number),
    ]


def _pairs(fields: Mapping[Any, object]) -> list[bytes]:
    """The keys and values of ``fields`` as script arguments: bytes as they are, other values
    as their text (encoded here: the packer then takes them as they are)."""
    return [
        part if isinstance(part, bytes) else str(part).encode()
        for item in fields.items()
        for part in item
    ]


def create_scan(
    client: redis.Redis,
    keys: Keys,
    session: str,
    number: int,
    hash_fields: Mapping[Any, object],
    created_fields: Mapping[Any, object],
    lease_ms: int,
    new_scan_fields: Mapping[Any, object] | None = None,
) -> bool | bytes:
    """Write a new scan's hash, CREATED entry and lease in one step; False if ``number`` is taken.

    Taken: a scan of that number is still in Redis (its hash or its event stream), which only
    happens when the session's counter went back (a failover that lost its latest
    increments, a restore). Nothing is written then; the caller takes the next number. A
    replay of the same call (same name and start time) counts as created.

    ``new_scan_fields`` (a single server only: the session's stream is in another cluster
    slot): the scan's NEW_SCAN entry, appended to the session's stream in the same step, after
    the scan's keys. Its ID is returned then; True means created without it (not given, a
    replay, or refused by the stream: the caller writes it).
    """
    script_keys = _scan_keys(keys, session, number)
    pairs = _pairs(hash_fields)
    entry = _pairs(created_fields)
    args: list[str | bytes] = [str(int(lease_ms)), str(len(pairs)), *pairs, str(len(entry)), *entry]
    if new_scan_fields is not None:
        script_keys.append(keys.session_scans(session))
        args += _pairs(new_scan_fields)
    reply: Any = _CREATE_SCAN(client, script_keys, args)
    if isinstance(reply, bytes):
        return reply
    return bool(reply)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def prepare_scan(
    client: redis.Redis,
    keys: Keys,
    session: str,
    number: int,
    hash_fields: Mapping[Any, object],
    entry_fields: Mapping[Any, object],
    new_nodes: Sequence[Mapping[Any, object]] = (),
    new_scan_id: bytes | None = None,
) -> int:
    """Update a scan's hash and append its PREPARED entry in one step; 0 if it is gone.

    ``new_nodes``: the fields of NEW_NODE entries appended first, in order (the nodes created
    before ``prepared()`` whose entries were not written yet).

    Nothing is written when the scan hash does not exist (a server that lost the scan): keys
    written then would have no expiry.

    ``new_scan_id`` (a single server only: the session's stream is in another cluster slot):
    the ID of the scan's NEW_SCAN entry, whose presence the script checks too.

    Returns
    -------
    int
        0 (nothing written), 1 (written; the NEW_SCAN entry not checked, or not found), 2
        (written, and the NEW_SCAN entry ``new_scan_id`` is in the session's stream).
    """
    script_keys = _scan_keys(keys, session, number)
    pairs = _pairs(hash_fields)
    args: list[str | bytes] = [str(len(pairs)), *pairs, str(len(new_nodes))]
    for fields in new_nodes:
        node = _pairs(fields)
        args += [str(len(node)), *node]
    args += _pairs(entry_fields)
    if new_scan_id is not None:
        script_keys.append(keys.session_scans(session))
        args.append(_text(new_scan_id))
    reply: Any = _PREPARE_SCAN(client, script_keys, args)
    return int(reply)


def set_node_info(
    client: redis.Redis, keys: Keys, session: str, number: int, field: str, info_json: str
) -> str:
    """Set the hash field ``field`` of a running scan to ``info_json`` (a node's info).

    Returns
    -------
    str
        ``""`` when written, ``"missing"`` when the scan hash is gone (nothing written), else
        the final state the scan is in (nothing written).
    """
    reply: Any = _SET_NODE_INFO(client, _scan_keys(keys, session, number), [field, info_json])
    if reply == 1:
        return ""
    if reply == 0:
        return "missing"
    return _text(reply)


def end_scan(
    client: redis.Redis,
    keys: Keys,
    session: str,
    number: int,
    state: str,
    error: str,
    end_time: float,
    *,
    retention_time: float,
    only_if_lease_expired: bool = False,
    info_json: str = "",
    acknowledged: Mapping[int, int] | None = None,
    new_scan_id: bytes | None = None,
) -> tuple[str, str, str]:
    """End a scan in one atomic step. Returns ``(outcome, state, detail)``.

    Parameters
    ----------
    client : redis.Redis
        A client without ``decode_responses``.
    keys : Keys
        Key names of the database.
    session, number : str, int
        The scan.
    state : str
        Final state name (see :data:`.entries.FINAL_STATE_NAMES`).
    error : str
        Error text ("" for none).
    end_time : float
        Epoch time recorded in the END entry and the scan hash.
    retention_time : float
        Seconds the scan's keys stay after the end (0: no expiry).
    only_if_lease_expired : bool
        End it only if the publisher's lease is gone (outcome ``alive`` otherwise).
    info_json : str
        New scan_info JSON for the scan hash ("" keeps it).
    acknowledged : Mapping of int to int, optional
        Data node index -> points Redis acknowledged to the publisher. A stream holding fewer
        (acknowledged writes lost by a failover to a replica that lagged, or a restart) ends
        the scan FAILED instead, with outcome ``lost``. None: not checked.
    new_scan_id : bytes, optional
        A single server only (the session's stream is in another cluster slot): the ID of
        the scan's NEW_SCAN entry. When it is not in the session's stream (or the stream
        cannot be read) nothing is written and the outcome is ``unannounced``: the caller
        announces the scan again and calls without it.

    A NEW_NODE entry whose node index is garbage, or a data key that is not a stream, is
    skipped and logged (an error naming the scan and the entry); the other streams are sealed.

    Returns
    -------
    tuple of str
        ``outcome`` is ``ok`` (ended now), ``ended`` (already ended; ``state`` is the final
        state), ``alive`` (lease still held), ``missing`` (no such scan), ``unannounced``
        (see ``new_scan_id``) or ``lost`` (ended
        FAILED now, ``detail`` names the streams short of points; also in the END error).

    Raises
    ------
    redis.exceptions.OutOfMemoryError
        Redis is full and older than 7.0 (it cannot run the script past maxmemory).
    DecodingError
        The scan's hash or event stream holds another type (garbage written over it), or its
        event stream is gone (deleted outside scanstream): nothing changed.
    """
    script_keys = _scan_keys(keys, session, number)
    args = [
        state,
        error,
        repr(end_time),
        repr(retention_time),
        "1" if only_if_lease_expired else "0",
        info_json,
        "" if acknowledged is None else _acknowledged_json(acknowledged),
    ]
    if new_scan_id is not None:
        script_keys.append(keys.session_scans(session))
        args.append(_text(new_scan_id))
    try:
        reply = _END_SCAN(client, script_keys, args)
    except redis.exceptions.OutOfMemoryError as exc:
        try:
            reply = _END_SCAN_ALLOW_OOM(client, script_keys, args)
        except redis.exceptions.ResponseError:  # Redis < 7.0: no script flags
            raise exc from None
    outcome, final, detail = reply[:3]
    if outcome == b"corrupt":
        raise DecodingError(
            f"scan {session}:{number} cannot be ended: {detail.decode(errors='replace')}; "
            f"its keys were damaged outside scanstream; once its publisher is gone, delete it with "
            f"`scanstream delete {session} --scan {number} --force`"
        )
    skipped = cast("list[bytes]", reply[3]) if len(reply) > 3 else []
    for text in skipped:
        # Garbage in the scan's keys (written by hand, a foreign client): the other streams
        # were sealed; readers report the entry too (the walk's decoding errors).
        logger.error("scan %s:%d: %s", session, number, text.decode(errors="replace"))
    return outcome.decode(), final.decode() if final else "", detail.decode(errors="replace")


def _acknowledged_json(acknowledged: Mapping[int, int]) -> str:
    """``{"3": 600, ...}``: keys as the script's node fields (strings); nodes without points
    are left out (an empty Lua table has no JSON object form)."""
    counts = {str(int(node)): int(n) for node, n in acknowledged.items() if n > 0}
    return json.dumps(counts) if counts else ""


class DeleteOutcome(NamedTuple):
    """What ``delete_scan.lua`` decided (see the table at the top of that file).

    Attributes
    ----------
    outcome : str
        ``missing``, ``running``, ``recent``, ``unsaved``, ``deletable`` (dry run) or ``deleted``.
    state : str
        The stored state (for ``recent``: ``ended`` or ``started``).
    detail : str
        For ``recent``: the epoch time compared with the cutoff; for ``deletable`` and
        ``deleted``: ``ended`` or ``gone`` (publisher gone); else empty.
    """

    outcome: str
    state: str
    detail: str


def delete_scan(
    client: redis.Redis,
    keys: Keys,
    session: str,
    number: int,
    *,
    cutoff: float | None,
    saved: bool,
    force: bool,
    dry_run: bool,
) -> DeleteOutcome:
    """Delete one scan if the rules allow it, checked and deleted in one script.

    A scan is deleted unless it runs (not ended, lease alive), it ended (or, not ended, started)
    after ``cutoff``, or it is neither ``saved`` nor ``force``-d. The script only reads and
    deletes, so it runs on a full Redis (past maxmemory), 7.0 included.

    ``saved`` is read by the caller: the saved set is a session key, in another cluster slot
    than the scan's keys, and it only grows, so a stale False only keeps a scan.
    """
    args = [
        "" if cutoff is None else repr(cutoff),
        "1" if saved else "0",
        "1" if force else "0",
        "1" if dry_run else "0",
    ]
    reply = _DELETE_SCAN(client, _scan_keys(keys, session, number), args)
    outcome, state, detail = (part.decode(errors="replace") for part in reply)
    return DeleteOutcome(outcome, state, detail)
