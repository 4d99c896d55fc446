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
"""

from __future__ import annotations

import json
import logging
import socket
from typing import Any, cast

from .._protocol.keys import check_session_name
from .._transport.connection import DataStore, default_store
from .._transport.server import pid_alive

__all__ = [
    "OWNER_FIELD",
    "STATUS_FIELD",
    "is_dead_local_process",
    "is_saved",
    "saved_scans",
    "writer_status",
]

logger = logging.getLogger(__name__)

#: Fields of the health hash. The claim script of :mod:`scanstream.writer.registry` writes them.
OWNER_FIELD = "owner"
STATUS_FIELD = "status"


def writer_status(
    session: str, *, store: DataStore | None = None, redis_url: str | None = None
) -> dict[str, Any] | None:
    """The status of the writer of ``session``, or None when no writer runs for it.

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
        Keys: ``owner``, ``pid``, ``host``, ``root``, ``started`` and ``heartbeat`` (epoch s),
        ``writing`` (True while that writer owns the session), ``running`` (scans being
        written), ``saved`` and ``failed`` (counts since it started), ``errors`` (the last
        ones, each with ``scan`` (name), ``number``, ``error``, ``time``), and ``dead``: True
        when the writer is a process of this host that no longer exists (its claim has not
        lapsed yet; a writer started now takes over when it does).

    Raises
    ------
    InvalidArgumentError
        ``session`` is not a valid session name.
    """
    store = store or default_store(redis_url)
    raw = store.redis.hget(store.keys.writer_health(check_session_name(session)), STATUS_FIELD)
    if not raw:
        return None
    status: dict[str, Any] = json.loads(raw)
    # bytes, never str: the client is created without decode_responses.
    owner = cast("bytes | None", store.redis.hget(store.keys.writer_health(session), OWNER_FIELD))
    status["dead"] = owner is not None and is_dead_local_process(owner.decode(errors="replace"))
    return status


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
    numbers = set()
    for member in store.redis.smembers(store.keys.writer_saved(check_session_name(session))):
        try:
            numbers.add(int(member))
        except (TypeError, ValueError):
            logger.warning("session %s: %r in the saved set is not a scan number", session, member)
    return numbers


def is_saved(session: str, number: int, *, store: DataStore) -> bool:
    """True when a writer recorded scan ``number`` of ``session`` as completely saved."""
    return bool(store.redis.sismember(store.keys.writer_saved(session), str(number)))
