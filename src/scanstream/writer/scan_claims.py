"""Pool mode: a claim per scan, with a TTL and a fencing token, and the writers' load records.

In a pool (``WriterService(pool=True)``, ``scanstream writer --pool``) several writers follow
the same sessions and each scan is written by the one writer that holds its claim: the hash
``keys.scan_claim(S, N)`` (owner, token) with a TTL renewed by its writer, as the session's
health hash is for a single writer (docs/decisions/0006, 0014). It lives in the slot of the
session's saved set, so that the claim script refuses a saved scan atomically: a scan saved by
one writer is never taken, and written again, by another that saw it a moment before.

A writer done with a scan that is not saved (it FAILED, or it expired from Redis) adds its id
to the scan's set ``keys.scan_failed_by(S, N)`` and frees the claim: every other member tries
the scan once (the failure may be its host's: an unwritable or full disk, a crashing worker),
none tries it twice (a failure of the scan's own content ends once every member has met it),
as a single writer tries a FAILED scan once per start. The set expires with the scans'
retention time.

Each writer also publishes, per session, a member record ``keys.writer_member(S, id)`` (its
status, with ``load``: the scans it writes, over all its sessions) with a TTL, listed in the
set ``keys.writer_pool(S)`` (read back by :func:`scanstream.admin.registry.pool_members`); a
member whose record has expired is dead, and the claims it holds are released by the first
writer that notices.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

import redis

from .._transport.connection import DataStore
from .._transport.errors import is_wrong_type
from ..exceptions import ServerResetError
from ..subscribe.events import StopHandler

logger = logging.getLogger(__name__)

__all__ = [
    "CLAIMED",
    "DONE",
    "FENCE_PERIOD",
    "HELD",
    "ScanClaim",
    "ScanClaims",
]

#: Outcomes of :meth:`ScanClaims.claim`.
CLAIMED, HELD, DONE = "claimed", "held", "done"
#: Seconds between two checks, in Redis, that a scan's claim still holds (before a batch).
FENCE_PERIOD = 0.25

# KEYS[1] claim hash, KEYS[2] saved set, KEYS[3] the set of the writers that failed the scan.
# ARGV: owner, TTL (ms), new token, scan number.
# Returns {'done', '', replaced} (saved, or failed by this writer), {'held', owner, replaced},
# or {'claimed', token, replaced}. Garbage (another type) over the claim or the failed-by set
# is no claim and no failure: deleted, and named in ``replaced`` (the writer logs it); a saved
# set of another type tells nothing (the writer reports it when it marks a scan saved). Before,
# WRONGTYPE refused every claim of the scan: it was never written, an error 20 times a second.
_CLAIM = """
local replaced = ''
for i = 1, 3, 2 do
  local kind = redis.call('TYPE', KEYS[i])['ok']
  if kind ~= 'none' and kind ~= (i == 1 and 'hash' or 'set') then
    redis.call('DEL', KEYS[i])
    replaced = replaced .. KEYS[i] .. ' (a ' .. kind .. ') '
  end
end
if redis.call('TYPE', KEYS[2])['ok'] == 'set' and redis.call('SISMEMBER', KEYS[2], ARGV[4]) == 1 then
  return {'done', '', replaced}
end
if redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 1 then return {'done', '', replaced} end
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner and owner ~= ARGV[1] then return {'held', owner, replaced} end
local token = redis.call('HGET', KEYS[1], 'token')
if not owner or not token then
  token = ARGV[3]
  redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'token', token)
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {'claimed', token, replaced}
"""
# Renew only the claim of that period (owner and token): ARGV owner, token, TTL (ms).
_RENEW = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[2] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
# Delete the claim if it names ARGV[1]: never another writer's.
_RELEASE = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""
# KEYS[1] claim hash, KEYS[2] failed-by set; ARGV owner, token, TTL of the set (ms). Record
# that this writer failed the scan and free the claim, in one step: no other member can take
# the scan in between and see it neither held nor failed here.
_FAILED = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[2] then return 0 end
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('DEL', KEYS[1])
return 1
"""

# Delete KEYS[1] if it still holds the garbage seen (ARGV[1]), or any value of another type
# than a string: never a record another member has set meanwhile.
_DROP_GARBAGE = """
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'none' or (kind == 'string' and redis.call('GET', KEYS[1]) ~= ARGV[1]) then
  return 0
end
return redis.call('DEL', KEYS[1])
"""


class ScanClaims:
    """The scan claims and member records of one writer, ``owner``, in Redis.

    Parameters
    ----------
    store : DataStore
        The connection.
    owner : str
        This writer's id (:func:`scanstream.writer.registry.new_owner_id`).
    """

    def __init__(self, store: DataStore, owner: str) -> None:
        self.store = store
        self.owner = owner
        self._claim = store.redis.register_script(_CLAIM)
        self._renew = store.redis.register_script(_RENEW)
        self._release = store.redis.register_script(_RELEASE)
        self._failed = store.redis.register_script(_FAILED)
        self._drop_garbage = store.redis.register_script(_DROP_GARBAGE)

    def claim(self, session: str, number: int, ttl: float) -> tuple[str, str]:
        """Take (or renew) the claim on scan ``number`` of ``session`` for ``ttl`` seconds.

        Returns
        -------
        (outcome, value)
            ``(CLAIMED, token)``: this writer holds it (a new token when taken anew);
            ``(HELD, owner)``: writer ``owner`` holds it; ``(DONE, "")``: the scan is saved,
            or this writer FAILED it already: it does not take it again.
        """
        keys = self.store.keys
        reply = self._claim(
            keys=[
                keys.scan_claim(session, number),
                keys.writer_saved(session),
                keys.scan_failed_by(session, number),
            ],
            args=[self.owner, int(ttl * 1000), uuid.uuid4().hex, int(number)],
        )
        outcome = _text(reply[0])
        if len(reply) > 2 and reply[2]:
            logger.error(
                "scan %s:%s: garbage over its pool keys deleted (no claim, no failure): %s",
                session,
                number,
                _text(reply[2]).strip(),
            )
        return outcome, _text(reply[1]) if len(reply) > 1 else ""

    def renew(self, session: str, number: int, token: str, ttl: float) -> bool:
        """Extend this writer's claim with ``token``; False when it no longer holds it."""
        return bool(
            self._renew(
                keys=[self.store.keys.scan_claim(session, number)],
                args=[self.owner, token, int(ttl * 1000)],
            )
        )

    def holds(self, session: str, number: int, token: str | None) -> bool:
        """True while this writer's claim with fencing token ``token`` holds the scan."""
        if not token:
            return False
        owner, held = self.store.redis.hmget(
            self.store.keys.scan_claim(session, number), ["owner", "token"]
        )
        return owner == self.owner.encode() and held == token.encode()

    def release(self, session: str, number: int, owner: str | None = None) -> bool:
        """Delete the claim if it names ``owner`` (default: this writer)."""
        return bool(
            self._release(
                keys=[self.store.keys.scan_claim(session, number)], args=[owner or self.owner]
            )
        )

    def mark_failed(self, session: str, number: int, token: str) -> bool:
        """Record that this writer failed scan ``number`` and free its claim (fenced by ``token``).

        The other members may take the scan then, each once; this writer never takes it again
        (:meth:`claim` answers DONE). False when the claim is no longer this writer's.
        """
        # As long as the scan stays in Redis; never a key without expiry (retention 0: a week).
        retention = self.store.settings.retention_time
        ttl = max(retention, 60.0) if retention > 0 else 7 * 86400.0
        keys = self.store.keys
        return bool(
            self._failed(
                keys=[keys.scan_claim(session, number), keys.scan_failed_by(session, number)],
                args=[self.owner, token, int(ttl * 1000)],
            )
        )

    def failed_by(self, session: str, number: int) -> set[str]:
        """The ids of the writers that FAILED scan ``number`` of ``session`` (pool mode)."""
        raw = self.store.redis.smembers(self.store.keys.scan_failed_by(session, number))
        return {_text(owner) for owner in raw}

    def holder(self, session: str, number: int) -> str | None:
        """The writer holding scan ``number`` of ``session`` now, or None."""
        owner = self.store.redis.hget(self.store.keys.scan_claim(session, number), "owner")
        return _text(owner) if owner is not None else None

    def publish(self, session: str, status: Mapping[str, Any], ttl: float) -> None:
        """Publish this writer's member record of ``session`` (expires after ``ttl`` s)."""
        keys = self.store.keys
        pool = keys.writer_pool(session)
        try:
            self.store.redis.sadd(pool, self.owner)
        except redis.ResponseError as exc:
            if not is_wrong_type(exc):
                raise
            # Garbage over the pool's set made every pool writer exit at its start (a crash
            # loop) and no scan was written: it lists no member; replaced by a set.
            logger.error("session %s: the pool's set %s is not a set: replaced", session, pool)
            # (Another member replacing it meanwhile loses its entry until its next
            # publication, a second later: members publish every second.)
            self.store.redis.delete(pool)
            self.store.redis.sadd(pool, self.owner)
        self.store.redis.set(
            keys.writer_member(session, self.owner), json.dumps(status), px=int(ttl * 1000)
        )

    def share_settings(self, session: str, settings: dict[str, Any], ttl: float) -> dict[str, Any]:
        """The pool's settings record of ``session``: ``{"settings": ..., "writer": id}``.

        Set to ``settings`` (with this writer's id) when the pool has none; its TTL (``ttl``
        seconds) renewed when they are ``settings``, so that it lasts while a member sharing
        them lives, and a member with other settings never keeps them alive.
        """
        key = self.store.keys.writer_pool_settings(session)
        ms = int(ttl * 1000)
        mine = {"settings": settings, "writer": self.owner}
        for _ in range(3):  # SET NX, then GET: a record expiring (or garbage) is set again
            if self.store.redis.set(key, json.dumps(mine), nx=True, px=ms):
                return mine
            raw = None
            try:
                raw = self.store.redis.get(key)
                record = json.loads(raw) if raw is not None else None
                if record is not None and not isinstance(record.get("settings"), dict):
                    raise ValueError("no settings")
            except (redis.ResponseError, ValueError, AttributeError) as exc:
                # Garbage over the record (junk bytes, another type) made every pool writer
                # fail at its start with a traceback: it holds no settings; replaced.
                logger.error(
                    "session %s: the pool's settings record %s is garbage (%s): replaced",
                    session,
                    key,
                    exc,
                )
                self._drop_garbage(keys=[key], args=[raw if isinstance(raw, bytes) else b""])
                continue
            if record is not None:
                if record.get("settings") == settings:
                    self.store.redis.pexpire(key, ms)
                return dict(record)
        return mine

    def forget_settings(self, session: str) -> None:
        """Delete the pool's settings record of ``session`` (its last member left)."""
        self.store.redis.delete(self.store.keys.writer_pool_settings(session))

    def leave(self, session: str) -> None:
        """Remove this writer from the pool of ``session``."""
        keys = self.store.keys
        self.store.redis.delete(keys.writer_member(session, self.owner))
        self.store.redis.srem(keys.writer_pool(session), self.owner)


class ScanClaim(StopHandler):
    """One period during which this writer holds one scan; stopping it stops that scan's writes.

    It stops by itself once unrenewed for the TTL (``valid_until``), and once a check in
    Redis, made at most every :data:`FENCE_PERIOD` s when :attr:`stopped` is read (before each
    write batch and flush of the scan writer), finds the claim gone or another writer's.
    """

    def __init__(
        self, claims: ScanClaims, session: str, number: int, token: str, valid_until: float
    ) -> None:
        super().__init__()
        self.claims = claims
        self.session = session
        self.number = number
        self.token: str | None = token
        self.valid_until = valid_until  # time.monotonic()
        self._checked = time.monotonic()
        self._held = True
        self._lock = threading.Lock()

    @property
    def stopped(self) -> bool:
        if super().stopped or not self._held or time.monotonic() >= self.valid_until:
            return True
        now = time.monotonic()
        if now - self._checked >= FENCE_PERIOD:
            with self._lock:
                if now - self._checked >= FENCE_PERIOD:
                    self._checked = now
                    self._held = self._check()
        return not self._held

    def holds(self) -> bool:
        """Check in Redis now that the claim holds (the fence before a verdict)."""
        if super().stopped or time.monotonic() >= self.valid_until:
            return False
        self._held = self._check()
        return self._held

    def _check(self) -> bool:
        try:
            return self.claims.holds(self.session, self.number, self.token)
        except (redis.RedisError, ServerResetError):
            return False  # not known to hold it: nothing more is written until it is


class ClaimFence:
    """The worker's view of a scan claim: what :class:`~scanstream.writer.worker._Fence` asks.

    It has the ``holds(session, token)`` of a :class:`~scanstream.writer.registry.WriterRegistry`,
    answered for one scan's claim instead of the session's.
    """

    def __init__(self, claims: ScanClaims, number: int) -> None:
        self._claims = claims
        self._number = number

    def holds(self, session: str, token: str | None) -> bool:
        """True while the claim of ``token`` holds this scan of ``session``."""
        return self._claims.holds(session, self._number, token)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
