"""What writers record in Redis, read back: the saved scans of a session and its writer's status.

This is the read side of the writer's registry; the write side (claiming a session, renewing
and releasing the claim, recording a scan as saved) is :mod:`scanstream.writer.registry`.
Kept here, below the writer, so that listing and deleting scans (``scanstream ls``,
``scanstream delete``) can read it without importing the writer and h5py.

Two keys per session (names from :class:`~scanstream._protocol.keys.Keys`)::

    writer_saved(S)     SET     numbers of the scans a writer has completely saved
    writer_health(S)    HASH    owner: the writer's id (host:pid:random), status: JSON (below)
                                with a TTL of a few seconds, renewed by the owning writer

The health hash doubles as the lock that keeps one writer per session (docs/decisions/0006).
In pool mode (``scanstream writer --pool``, docs/decisions/0014) the pool's members hold it
together under the owner id :data:`POOL_OWNER`, and each publishes its own status::

    writer_pool(S)          SET     ids of the pool writers following session S
    writer_member(S, id)    STRING  JSON: that writer's status, load, scans held, settings (TTL)
    writer_pool_settings(S) STRING  JSON: the settings all members share, who set them (TTL)
"""

from __future__ import annotations

import json
import logging
import socket
from typing import Any

import redis

from .._protocol.keys import check_session_name
from .._transport.connection import DataStore, default_store
from .._transport.errors import is_wrong_type
from .._transport.server import pid_alive

__all__ = [
    "OWNER_FIELD",
    "POOL_OWNER",
    "STATUS_FIELD",
    "is_dead_local_process",
    "is_saved",
    "pool_members",
    "pool_settings",
    "saved_scans",
    "writer_status",
]

logger = logging.getLogger(__name__)

#: Fields of the health hash. The claim script of :mod:`scanstream.writer.registry` writes them.
OWNER_FIELD = "owner"
STATUS_FIELD = "status"
#: The owner id under which the members of a pool hold the session's health hash.
POOL_OWNER = "pool"


def writer_status(
    session: str, *, store: DataStore | None = None, redis_url: str | None = None
) -> dict[str, Any] | None:
    """The status of the writers of ``session``: one writer, or a pool; None when none runs.

    Parameters
    ----------
    session : str
        Session name.
    store : DataStore, optional
        The connection to use (takes precedence over ``redis_url``).
    redis_url : str, optional
        Redis URL; default ``SCANSTREAM_REDIS_URL``, else the embedded server.

    Returns
    -------
    dict or None
        The same keys for one writer and for a pool (``scanstream writer --status`` prints
        them):

        - ``pool``: False for a single writer, True for a pool (``scanstream writer --pool``).
        - ``owner``: the writer's id (``host:pid:random``), or ``"pool"`` (:data:`POOL_OWNER`).
        - ``root``: where scans without a filename go (for a pool: the root in the pool's
          settings, which every member must share).
        - ``started`` and ``heartbeat`` (epoch s): of the writer; for a pool, the earliest
          start and the latest heartbeat of its members.
        - ``writing``: True while the session's scans are written (a single writer owns the
          session; for a pool, a member takes scans).
        - ``running``: the names of the scans being written (for a pool, those its members
          hold).
        - ``saved`` and ``failed``: counts since the writer started (summed over a pool).
        - ``errors``: the last ones (of each member, oldest first), each with ``scan``
          (name), ``number``, ``error``, ``time`` and ``writer`` (the id of the writer).
        - ``dead``: True when the single writer is a process of this host that no longer
          exists (its claim has not lapsed yet; a writer started now takes over when it
          does). Always False for a pool: dead members are left out.
        - ``mismatch``: the ids of the pool members whose settings differ from the pool's
          (another ``--root``, ...): they take no scan (empty for a single writer).
        - ``members``: every live writer following the session, each a dict with the keys
          above that apply to one writer (``owner``, ``pid``, ``host``, ``root``,
          ``started``, ``heartbeat``, ``writing``, ``running``, ``saved``, ``failed``,
          ``errors``) and, for a pool member, ``load`` (the scans it writes, over all its
          sessions), ``held`` (the names of the scans of ``session`` it holds),
          ``settings`` (``root``, ``allow``, ``layout``, ``strict_names``), ``refusing``
          (None, or ``{"writer": id, "differences": {setting: [its value, the pool's]}}``
          when its settings differ from the pool's, first set by writer ``id``) and
          ``blocked`` (the id of the single writer that holds the session, or None). For a
          single writer, its own status comes first, then any pool writer waiting behind it.
        - ``unreadable``: the records of the pool that are garbage (another type, not JSON,
          without the fields of a member), each ``{"key": key, "reason": what is wrong}``:
          left out of ``members`` (a live writer replaces its record within a period).
          With only such records, a pool's ``started`` and ``heartbeat`` are None.

        A single writer's status also has ``pid`` and ``host`` at the top; a pool's are in
        ``members``.

    Raises
    ------
    InvalidArgumentError
        ``session`` is not a valid session name.
    redis.RedisError
        Redis cannot be reached (after redis-py's retries).
    """
    store = store or default_store(redis_url)
    session = check_session_name(session)
    # bytes, never str: the client is created without decode_responses.
    key = store.keys.writer_health(session)
    try:
        owner_raw, raw = store.redis.hmget(key, [OWNER_FIELD, STATUS_FIELD])
    except redis.exceptions.ResponseError as exc:
        if not is_wrong_type(exc):
            raise
        # Garbage written over the claim: no writer can be named (one replaces it within 1 s).
        logger.warning("%s, the writer claim of session %s, is not a hash (garbage)", key, session)
        owner_raw = raw = None
    owner = _text(owner_raw) if owner_raw is not None else None
    try:
        members, unreadable = _read_members(session, store)
    except redis.exceptions.ResponseError as exc:
        if not is_wrong_type(exc):
            raise
        # Garbage over the pool's set: its members are unknown until a writer replaces it.
        pool_key = store.keys.writer_pool(session)
        kind = _text(store.redis.type(pool_key))
        members, unreadable = [], [{"key": pool_key, "reason": f"it is a {kind}, not a set"}]
    single = _single_status(key, raw) if raw and owner != POOL_OWNER else None
    if single is not None:
        single["errors"] = [{**e, "writer": single["owner"]} for e in single.get("errors", [])]
        status = dict(single)
        status.update(
            pool=False,
            dead=owner is not None and is_dead_local_process(owner),
            mismatch=[],
            members=[single, *members],
            unreadable=unreadable,
        )
        return status
    if not members and not unreadable:
        return None
    settings, problem = _read_settings(session, store)
    if problem is not None:
        unreadable.append({"key": store.keys.writer_pool_settings(session), "reason": problem})
    return _pool_status(members, settings, unreadable)


def _single_status(key: str, raw: bytes | str) -> dict[str, Any] | None:
    """The status JSON of a single writer's claim, or None (logged) when it is garbage."""
    try:
        single = json.loads(raw)
    except ValueError:
        single = None
    if not isinstance(single, dict) or "owner" not in single:
        logger.warning("%s: the writer status is not a JSON object (garbage): %.80r", key, raw)
        return None
    problem = _member_problem(single)  # the same fields as a pool member's
    if problem is not None:
        logger.warning("%s: the writer status is garbage: %s", key, problem)
        return None
    return single


def _pool_status(
    members: list[dict[str, Any]], settings: dict[str, Any] | None, unreadable: list[dict[str, str]]
) -> dict[str, Any]:
    """What :func:`writer_status` returns for a pool, from its members' records."""
    first_root = members[0]["root"] if members else None
    root = (settings or {}).get("settings", {}).get("root", first_root)
    errors = sorted(
        ({**e, "writer": m["owner"]} for m in members for e in m.get("errors", [])),
        key=lambda e: float(e.get("time", 0.0)),
    )
    return {
        "pool": True,
        "owner": POOL_OWNER,
        "root": root,
        "started": min((float(m["started"]) for m in members), default=None),
        "heartbeat": max((float(m["heartbeat"]) for m in members), default=None),
        "writing": any(
            m.get("writing") and not m.get("refusing") and not m.get("blocked") for m in members
        ),
        # The claims held, not each member's last "running" (published a period late).
        "running": sorted({name for m in members for name in m.get("held", [])}),
        "saved": sum(int(m.get("saved", 0)) for m in members),
        "failed": sum(int(m.get("failed", 0)) for m in members),
        "errors": errors,
        "dead": False,
        "mismatch": [m["owner"] for m in members if m.get("refusing")],
        "members": members,
        "unreadable": unreadable,
    }


def pool_members(session: str, *, store: DataStore) -> list[dict[str, Any]]:
    """The live writers of the pool of ``session`` (``scanstream writer --pool``), by id.

    Parameters
    ----------
    session : str
        Session name.
    store : DataStore
        The connection.

    Returns
    -------
    list of dict
        The record each writer published: the keys of a member in :func:`writer_status`
        (``members``). Empty when no pool writer follows the session. Members whose record
        expired, or that are processes of this host that no longer exist (dead writers), are
        removed on the way.

    Raises
    ------
    redis.RedisError
        Redis cannot be reached (after redis-py's retries).
    """
    return _read_members(session, store)[0]


def _read_members(
    session: str, store: DataStore
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """The readable member records of the pool of ``session`` (see :func:`pool_members`), and
    ``{"key", "reason"}`` of each one that is garbage (another type, not JSON, not a member's
    fields): left in place, its writer replaces it at its next publication (within a period).

    Raises
    ------
    redis.RedisError
        Redis cannot be reached, or the pool's set is not a set (garbage: the writers
        replace it; :func:`writer_status` reports it).
    """
    keys = store.keys
    members: list[dict[str, Any]] = []
    unreadable: list[dict[str, str]] = []
    for raw in sorted(store.redis.smembers(keys.writer_pool(session))):
        owner = _text(raw)
        key = keys.writer_member(session, owner)
        record, problem = _read_json(store, key)
        if (record is None and problem is None) or is_dead_local_process(owner):
            store.redis.delete(key)
            store.redis.srem(keys.writer_pool(session), owner)
            continue
        problem = problem or _member_problem(record)
        if problem is not None:
            unreadable.append({"key": key, "reason": problem})
            continue
        members.append(record)
    return members, unreadable


def _read_json(store: DataStore, key: str) -> tuple[Any, str | None]:
    """``(value, None)`` of the JSON string at ``key``; ``(None, None)`` when absent;
    ``(None, why)`` when it is garbage (another type, not JSON)."""
    try:
        raw = store.redis.get(key)
    except redis.exceptions.ResponseError as exc:
        if not is_wrong_type(exc):
            raise
        return None, f"it is a {_text(store.redis.type(key))}, not a string of JSON"
    if raw is None:
        return None, None
    try:
        return json.loads(raw), None
    except ValueError:  # UnicodeDecodeError included
        return None, f"not JSON: {raw[:40]!r}{'...' if len(raw) > 40 else ''}"


#: The fields of a member record that ``scanstream writer --status`` shows, and their types.
_MEMBER_FIELDS: dict[str, type | tuple[type, ...]] = {
    "owner": str,
    "pid": int,
    "host": str,
    "root": str,
    "started": (int, float),
    "heartbeat": (int, float),
    "saved": int,
    "failed": int,
    "errors": list,
}
#: The fields of each of its errors.
_ERROR_FIELDS: dict[str, type | tuple[type, ...]] = {
    "scan": str,
    "error": str,
    "time": (int, float),
}


def _member_problem(record: Any) -> str | None:
    """Why ``record`` (decoded JSON) is not a member record, or None when it is one."""
    if not isinstance(record, dict):
        return f"not a JSON object but a {type(record).__name__}"
    problem = _fields_problem(record, _MEMBER_FIELDS)
    if problem is not None:
        return problem
    for error in record["errors"]:
        if not isinstance(error, dict) or _fields_problem(error, _ERROR_FIELDS) is not None:
            return f"an entry of its field errors is not an error: {error!r:.60}"
    for name in ("held", "running"):
        value = record.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return f"its field {name} is not a list of scan names: {value!r:.60}"
    refusing = record.get("refusing")
    if refusing is not None and not (
        isinstance(refusing, dict)
        and isinstance(refusing.get("writer"), str)
        and isinstance(refusing.get("differences"), dict)
        and all(isinstance(v, list) and len(v) == 2 for v in refusing["differences"].values())
    ):
        return f"its field refusing is not a refusal: {refusing!r:.60}"
    if not isinstance(record.get("load", 0), int):
        return f"its field load is not a number: {record['load']!r:.60}"
    return None


def _fields_problem(record: dict[str, Any], fields: dict[str, Any]) -> str | None:
    missing = sorted(name for name in fields if name not in record)
    if missing:
        return f"no field {', '.join(missing)}"
    for name, kind in fields.items():
        if not isinstance(record[name], kind):
            return f"its field {name} is {record[name]!r:.60}, not a {_kind_name(kind)}"
    return None


def _kind_name(kind: type | tuple[type, ...]) -> str:
    if isinstance(kind, tuple):
        return "number"
    return {"str": "string", "int": "integer"}.get(kind.__name__, kind.__name__)


def pool_settings(session: str, *, store: DataStore) -> dict[str, Any] | None:
    """The settings of the pool of ``session``: ``{"settings": {...}, "writer": id}``, or None.

    Set by the first writer of the pool (``writer``), renewed by every member whose settings
    are these (:data:`scanstream.writer.pool.SHARED_SETTINGS`); it expires with the pool.
    None too when the record is garbage (its members replace it at their next publication).

    Raises
    ------
    redis.RedisError
        Redis cannot be reached (after redis-py's retries).
    """
    return _read_settings(session, store)[0]


def _read_settings(session: str, store: DataStore) -> tuple[dict[str, Any] | None, str | None]:
    """:func:`pool_settings`, and why the record is garbage when it is (it is then None)."""
    record, problem = _read_json(store, store.keys.writer_pool_settings(session))
    if record is None:
        return None, problem
    if not isinstance(record, dict) or not isinstance(record.get("settings"), dict):
        return None, f"not a JSON object with the field settings: {record!r:.60}"
    return record, None


def is_dead_local_process(owner: str) -> bool:
    """True when ``owner`` (a writer id, ``host:pid:random``) names a gone process of this host.

    A writer of another host, or an id of another form, is never called dead: only its claim's
    TTL tells.
    """
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    return not pid_alive(int(pid))


def saved_scans(
    session: str, *, store: DataStore | None = None, redis_url: str | None = None
) -> set[int]:
    """Numbers of the scans of ``session`` that a writer has completely saved.

    A member of the saved set that is not a scan number (written by something else than a
    writer) is logged and skipped.

    Raises
    ------
    InvalidArgumentError
        ``session`` is not a valid session name.
    """
    store = store or default_store(redis_url)
    numbers: set[int] = set()
    key = store.keys.writer_saved(check_session_name(session))
    try:
        members = store.redis.smembers(key)
    except redis.exceptions.ResponseError as exc:
        if not is_wrong_type(exc):
            raise
        report_saved_set(key)
        return numbers
    for member in members:
        try:
            numbers.add(int(member))
        except (TypeError, ValueError):
            logger.warning("session %s: %r in the saved set is not a scan number", session, member)
    return numbers


def is_saved(session: str, number: int, *, store: DataStore) -> bool:
    """True when a writer recorded scan ``number`` of ``session`` as completely saved.

    False, with an error logged, when the saved set is not a set (garbage written over it):
    the scan is then written again rather than taken as saved.
    """
    key = store.keys.writer_saved(session)
    try:
        return bool(store.redis.sismember(key, str(number)))
    except redis.exceptions.ResponseError as exc:
        if not is_wrong_type(exc):
            raise
        report_saved_set(key)
        return False


def report_saved_set(key: str) -> None:
    """Log that the saved set ``key`` holds garbage (another type), and what to do."""
    logger.error(
        "%s, the set of the scans writers saved, is not a set (garbage written over it): the "
        "scans are written and given their verdict, but not recorded in it; delete the key "
        "(a writer started then writes again the scans still in Redis)",
        key,
    )


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value
