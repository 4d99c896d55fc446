"""What a writer records in Redis: its claim on each session, and the scans it has saved.

The write side of the registry; :mod:`scanstream.admin.registry` reads it back (and is where
the two keys are described). A claim is the session's health hash, taken and renewed by one
script so that taking it is atomic: it is set when absent or already ours, and left alone
when another writer holds it (the script then returns that writer's id). Its TTL makes a
claim lapse when its writer stops renewing it (killed, frozen, cut off from Redis).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from collections.abc import Mapping
from typing import Any

import redis

from .._protocol.entries import saving_fields
from .._transport.connection import DataStore
from .._transport.errors import is_wrong_type
from ..admin.registry import (
    OWNER_FIELD,
    STATUS_FIELD,
    is_dead_local_process,
    is_saved,
    report_saved_set,
)
from ..models import SavingVerdict

__all__ = ["EPOCH_FIELD", "WriterRegistry", "is_dead_local_process", "new_owner_id"]

logger = logging.getLogger(__name__)

#: Field of the health hash holding the fencing token of the current period of ownership.
EPOCH_FIELD = "epoch"

# Take or renew the claim unless another writer holds it. Returns {0, other writer's id}, or
# {1, fencing token, type}: the token given when the claim is new, the one recorded when
# renewed, and the type of a key of another type found there (garbage, deleted: it holds no
# claim, and left there it would keep every writer from the session forever), else ''.
# KEYS[1] health hash; ARGV: owner field, status field, owner id, status JSON, TTL (ms),
# epoch field, new token.
_CLAIM = """
local kind = redis.call('TYPE', KEYS[1])['ok']
local replaced = ''
if kind ~= 'hash' and kind ~= 'none' then
  redis.call('DEL', KEYS[1])
  replaced = kind
end
local owner = redis.call('HGET', KEYS[1], ARGV[1])
if owner and owner ~= ARGV[3] then return {0, owner} end
local token = redis.call('HGET', KEYS[1], ARGV[6])
if not owner or not token then
  token = ARGV[7]
  redis.call('HSET', KEYS[1], ARGV[6], token)
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3], ARGV[2], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return {1, token, replaced}
"""
# Record fields in a scan hash only if it still exists (never a key without expiry).
_RECORD = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""
# Raise the session's number floor to ARGV[1] (never lower it).
_FLOOR = """
local floor = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tonumber(ARGV[1]) > floor then redis.call('SET', KEYS[1], ARGV[1]) return ARGV[1] end
return floor
"""
# Delete the claim only if it still names that owner (never another writer's, taken since).
# KEYS[1] health hash; ARGV: owner field, owner id.
_RELEASE = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def new_owner_id() -> str:
    """A writer's id: ``host:pid:random`` (the host and pid let a dead local writer be recognized)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class WriterRegistry:
    """The Redis records of one writer, ``owner``.

    Parameters
    ----------
    store : DataStore
        The connection.
    owner : str
        This writer's id (:func:`new_owner_id`).
    """

    def __init__(self, store: DataStore, owner: str) -> None:
        self.store = store
        self.owner = owner
        self._claim = store.redis.register_script(_CLAIM)
        self._release = store.redis.register_script(_RELEASE)
        self._record = store.redis.register_script(_RECORD)
        self._floor = store.redis.register_script(_FLOOR)
        #: The fencing token of the last claim taken or renewed, per session.
        self.tokens: dict[str, str] = {}

    def claim(self, session: str, status: Mapping[str, Any], ttl: float) -> str | None:
        """Take or renew the claim on ``session`` for ``ttl`` seconds, publishing ``status``.

        A claim taken anew gets a new fencing token (``tokens[session]``); a renewal keeps it.

        Returns
        -------
        str or None
            None when this writer holds the session now; else the id of the writer that
            holds it (nothing was written then).

        Raises
        ------
        redis.RedisError
            Redis cannot be reached (after redis-py's retries).
        """
        held, value, *replaced = self._claim(
            keys=[self.store.keys.writer_health(session)],
            args=[
                OWNER_FIELD,
                STATUS_FIELD,
                self.owner,
                json.dumps(status),
                int(ttl * 1000),
                EPOCH_FIELD,
                uuid.uuid4().hex,
            ],
        )
        text = bytes(value).decode()
        if replaced and replaced[0]:
            logger.error(
                "%s, the writer claim of session %s, was a %s (garbage written over it), not "
                "a hash: replaced by the claim of this writer",
                self.store.keys.writer_health(session),
                session,
                bytes(replaced[0]).decode(),
            )
        if int(held):
            self.tokens[session] = text
            return None
        return text

    def holds(self, session: str, token: str | None) -> bool:
        """True when this writer's claim with fencing token ``token`` still holds ``session``.

        The fence checked before anything that tells the world about a scan (its verdict):
        a writer whose claim lapsed (frozen, cut off) and was taken by another finds out here.
        """
        if token is None:
            return False
        try:
            owner, epoch = self.store.redis.hmget(
                self.store.keys.writer_health(session), [OWNER_FIELD, EPOCH_FIELD]
            )
        except redis.exceptions.ResponseError as exc:
            if not is_wrong_type(exc):
                raise
            return False  # garbage over the claim: held by nobody until renewed (claim())

        return owner == self.owner.encode() and epoch == token.encode()

    def record_verdict(self, session: str, number: int, verdict: SavingVerdict) -> bool:
        """Write ``verdict`` into the scan hash, if it still exists; True when written."""
        fields = saving_fields(verdict)
        args: list[Any] = []
        for name, value in fields.items():
            args.extend((name, value))
        return bool(self._record(keys=[self.store.keys.scan(session, number)], args=args))

    def raise_number_floor(self, session: str, number: int) -> int:
        """Raise ``keys.session_number_floor(session)`` to ``number``; return the floor."""
        return int(
            self._floor(keys=[self.store.keys.session_number_floor(session)], args=[int(number)])
        )

    def release(self, session: str, owner: str | None = None) -> None:
        """Delete the claim on ``session`` if it names ``owner`` (default: this writer)."""
        self._release(
            keys=[self.store.keys.writer_health(session)], args=[OWNER_FIELD, owner or self.owner]
        )

    def is_saved(self, session: str, number: int) -> bool:
        """True when a writer recorded scan ``number`` of ``session`` as saved."""
        return is_saved(session, number, store=self.store)

    def mark_saved(self, session: str, number: int) -> None:
        """Record scan ``number`` of ``session`` as saved: a restarted writer skips it.

        A saved set of another type (garbage) is reported (logged), not raised: the scan's
        verdict, in its hash, says it is saved all the same.
        """
        key = self.store.keys.writer_saved(session)
        try:
            self.store.redis.sadd(key, str(number))
        except redis.exceptions.ResponseError as exc:
            if not is_wrong_type(exc):
                raise
            report_saved_set(key)
