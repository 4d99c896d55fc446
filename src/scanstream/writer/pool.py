"""Pool mode of the writer service: several writers share the scans of the same sessions.

With ``WriterService(pool=True)`` (``scanstream writer --pool``) no writer claims a whole
session. Every writer of the pool walks the sessions it follows and, for each scan not saved
yet, competes for that scan's claim (:mod:`scanstream.writer.scan_claims`): the least loaded
live writer (fewest scans being written, ties broken by id) tries at once, a busier one after
a delay that grows with how much busier it is (:data:`GRACE` seconds per scan more, per less
loaded writer, at most the TTL), so a new scan goes to the least busy writer unless it is
slow to take it. The claim script lets one writer win. That writer writes the scan exactly as
a single writer does (same code, same files, a fence checked before each write batch); the
others keep looking at the claim: once its writer is dead (its member record expired, or a
process of this host that is gone) they release it and compete again, and the winner writes
the scan again from its first event into a fresh file, as a restarted writer does. A scan a
writer FAILED is left to the others, each of which tries it once (the failure may be that
writer's host); no writer tries it twice. Members must share the settings that decide where
a scan goes and how its entries look (:data:`SHARED_SETTINGS`): those of the pool's first
writer, kept in Redis; a member with others takes no scan and says why. See
docs/decisions/0014-writer-pool.md.

The members of a pool also keep the session's health hash, all under the one owner id
:data:`POOL_OWNER`: publishers see that a writer follows the session, and a writer started
without ``--pool`` waits as a standby instead of writing beside the pool; the other way
round, a pool writer takes no scan of a session that a single writer holds.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import redis

from .._transport.connection import DataStore
from ..admin.registry import POOL_OWNER, pool_members
from ..exceptions import ServerResetError
from ..models import SCAN_NODE_TYPES
from ..subscribe.events import EventType, StopHandler
from ..subscribe.tree import ScanNode, get_session_node
from .registry import WriterRegistry, is_dead_local_process
from .scan_claims import CLAIMED, DONE, ScanClaim, ScanClaims
from .supervise import UNREACHABLE, supervise

__all__ = ["GRACE", "POOL_OWNER", "SHARED_SETTINGS", "PoolHost", "WriterPool"]

logger = logging.getLogger(__name__)

#: Seconds a writer waits, per scan it holds more than a less loaded writer, before it takes a
#: new scan (:meth:`WriterPool._delay`).
GRACE = 0.3
#: How often the pool looks at the scans it waits for (s).
_POLL = 0.05
#: The same while new scans wait for one of this writer's workers to be free (s).
_FULL_POLL = 0.01
_SCAN_TYPES = tuple(sorted(SCAN_NODE_TYPES))
#: The settings the members of a pool must share, and the option that sets each: a scan goes
#: to one file, named and laid out one way, whichever member takes it.
SHARED_SETTINGS = {
    "root": "--root",
    "allow": "--allow",
    "layout": "--legacy-names",
    "strict_names": "--strict-names",
}


class PoolHost(Protocol):
    """What the pool needs from its writer service."""

    store: DataStore
    owner: str
    catch_up: bool

    def pool_publish_floor(self, session: str) -> None:
        """Raise the session's numbering floor (as a single writer does when it starts)."""

    def pool_write(self, session: str, scan: ScanNode, claim: ScanClaim) -> None:
        """Start writing ``scan`` under ``claim`` (returns at once)."""

    def pool_running(self, session: str, name: str) -> bool:
        """True while scan ``name`` of ``session`` is being written by this writer."""

    def pool_status(self, session: str) -> dict[str, Any]:
        """This writer's status for ``session`` (as ``writer_status`` returns it)."""

    def pool_saved(self, session: str, number: int) -> bool:
        """True when scan ``number`` of ``session`` is recorded as saved."""

    def pool_settings(self) -> dict[str, Any]:
        """The settings every member must share (:data:`SHARED_SETTINGS`), JSON-ready."""


@dataclass
class _Pending:
    """A scan this writer knows and does not hold: when to try to take it next."""

    scan: ScanNode
    due: float = 0.0  # time.monotonic() of the next attempt
    ranked: bool = False  # its grace delay, from this writer's rank, has been waited


class WriterPool:
    """The scans of ``sessions`` shared with the other writers of the pool.

    Parameters
    ----------
    host : PoolHost
        The writer service writing the scans this writer takes.
    sessions : list of str
        The sessions followed.
    ttl : float
        Seconds a claim (and a member record) lasts unrenewed.
    period : float
        Seconds between renewals.
    grace : float
        Delay per less loaded writer before a new scan is taken (:data:`GRACE`).
    capacity : int, optional
        Scans this writer writes at once (its worker processes): with that many being
        written it takes no new scan, which stays for a writer with a free worker (or for
        this one, once it has one). None: no bound (scans written in threads).
    """

    def __init__(
        self,
        host: PoolHost,
        sessions: list[str],
        *,
        ttl: float,
        period: float,
        grace: float = GRACE,
        capacity: int | None = None,
    ) -> None:
        self.host = host
        self.sessions = sessions
        self.ttl = ttl
        self.period = period
        self.grace = grace
        self.capacity = capacity
        self.claims = ScanClaims(host.store, host.owner)
        self.registry = WriterRegistry(host.store, POOL_OWNER)
        #: Session -> the single writer (not a pool) that holds it: no scan is taken there.
        self.blocked: dict[str, str] = {}
        #: Session -> how this writer's settings differ from the pool's (it takes no scan).
        self.refusing: dict[str, dict[str, Any]] = {}
        self.stop_handler = StopHandler()
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, int], _Pending] = {}
        self._held: dict[tuple[str, int], ScanClaim] = {}
        #: Held scans whose writing has started (the others are about to start).
        self._started: set[tuple[str, int]] = set()
        self._scans: dict[tuple[str, int], ScanNode] = {}

    # -- life cycle ---------------------------------------------------------------------------
    def start(self, spawn: Callable[..., None]) -> None:
        """Start the pool's threads with ``spawn(target, name, *args)``."""
        for session in self.sessions:
            self._publish(session)
        spawn(self._manage, "pool")
        for session in self.sessions:
            spawn(self._follow, f"pool-{session}", session)

    def stop(self) -> None:
        """Take no more scans, and stop writing the scans held (their claims stay for now)."""
        self.stop_handler.stop()
        with self._lock:
            held = list(self._held.values())
        for claim in held:
            claim.stop()

    def release(self) -> None:
        """Release the claims held and leave the pools: call once the files are closed.

        The other writers take the scans over at once, writing them again from their start.
        """
        with self._lock:
            held, self._held = self._held, {}
            self._started.clear()
        for (session, number), _claim in held.items():
            try:
                self.claims.release(session, number)
            except (redis.RedisError, ServerResetError) as exc:  # it lapses with its TTL
                logger.warning("scan %s:%s: claim not released: %s", session, number, exc)
        for session in self.sessions:
            try:
                self.claims.leave(session)
                if not pool_members(session, store=self.host.store):  # the last one leaves
                    self.registry.release(session)
                    self.claims.forget_settings(session)
            except (redis.RedisError, ServerResetError):
                pass  # the records expire with their TTL (a reset server holds none)

    @property
    def load(self) -> int:
        """Scans this writer writes (or is about to), over all its sessions.

        A held scan whose writing has ended is not counted: its claim is released at the
        next renewal, up to a period later, and its worker is free already.
        """
        with self._lock:
            held = [(key, key in self._started) for key in self._held]
            names = {key: self._scans[key].name for key, _ in held}
        # The host's lock is taken without this one held (no lock order between them).
        return sum(1 for k, began in held if not began or self.host.pool_running(k[0], names[k]))

    def held(self, session: str) -> list[str]:
        """Names of the scans of ``session`` this writer holds."""
        with self._lock:
            return sorted(self._scans[k].name for k in self._held if k[0] == session)

    def others_may_try(self, session: str, number: int) -> bool:
        """True when a live member other than this writer may still take scan ``number``.

        That is, one that takes scans of ``session`` (its settings are the pool's, no single
        writer holds the session) and has not failed that scan already.
        """
        failed = self.claims.failed_by(session, number)
        return any(
            m.get("owner") != self.host.owner
            and m.get("owner") not in failed
            and not m.get("refusing")
            and not m.get("blocked")
            for m in pool_members(session, store=self.host.store)
        )

    # -- following the sessions ---------------------------------------------------------------
    def _follow(self, session: str) -> None:
        supervise(
            functools.partial(self._walk, session),
            store=self.host.store,
            stop=self.stop_handler,
            what=f"session {session}: pool listener",
            restart_on=(Exception,),
        )

    def _walk(self, session: str) -> None:
        self.host.pool_publish_floor(session)
        node = get_session_node(session, store=self.host.store)
        for event_type, scan, _ in node.walk_on_new_events(
            include_filter=_SCAN_TYPES,
            exclude_children=_SCAN_TYPES,
            from_next=not self.host.catch_up,
            stop_handler=self.stop_handler,
        ):
            if event_type == EventType.NEW_NODE and isinstance(scan, ScanNode):
                self.offer(session, scan)

    def offer(self, session: str, scan: ScanNode) -> None:
        """Compete for ``scan`` (unless already held or waited for)."""
        key = (session, scan.number)
        with self._lock:
            if key not in self._held and key not in self._pending:
                self._pending[key] = _Pending(scan)
                self._scans[key] = scan

    # -- the manager thread -------------------------------------------------------------------
    def _manage(self) -> None:
        renewed = 0.0
        while not self.stop_handler.stopped:
            now = time.monotonic()
            if now - renewed >= self.period:
                renewed = now
                self._guard("renewing claims", self._renew)
                for session in self.sessions:
                    self._guard("publishing the member record", self._publish, session)
            with self._lock:
                due = [
                    (k, p)
                    for k, p in self._pending.items()
                    if p.due <= now and k[0] not in self.blocked and k[0] not in self.refusing
                ]
            full = False
            for key, pending in due:
                if self.stop_handler.stopped:
                    return
                if self.capacity is not None and self.load >= self.capacity:
                    full = True  # every worker busy: the scans wait for one, here or elsewhere
                    break
                self._guard(f"scan {key[0]}:{key[1]}", self._attempt, key, pending)
            # Full: look again soon, a worker frees when its scan ends (no event says when).
            self.stop_handler.wait(_FULL_POLL if full else _POLL)

    def _guard(self, what: str, func: Callable[..., None], *args: Any) -> None:
        try:
            func(*args)
        except UNREACHABLE as exc:
            logger.warning("pool: %s: Redis unreachable (%s)", what, exc)
        except Exception:
            logger.exception("pool: %s failed", what)

    def _delay(self, session: str) -> float:
        """How long this writer leaves a new scan of ``session`` to less loaded writers.

        Zero when no live member has a lower (load, id); else :attr:`grace` for each such
        member and each scan this writer has more than it, at most the TTL: a writer much
        busier than another leaves it the time to see the scan even on a loaded host (a pool
        writer catching up right after its start is slow to), yet a live member that never
        takes scans (stuck) delays them by the TTL at most.
        """
        load = self.load
        me = (load, self.host.owner)
        delay = 0.0
        for member in pool_members(session, store=self.host.store):
            if member.get("refusing") or member.get("blocked"):
                continue  # it takes no scan: nothing to leave it
            owner = str(member.get("owner"))
            other = int(member.get("load", 0))
            if owner != self.host.owner and (other, owner) < me:
                delay += self.grace * (load - other + 1)
        return min(delay, self.ttl)

    def _attempt(self, key: tuple[str, int], pending: _Pending) -> None:
        session, number = key
        now = time.monotonic()
        if self.host.pool_running(session, pending.scan.name):
            pending.due = now + self.period  # the last period's writes are still ending
            return
        if not pending.ranked:
            if self.host.pool_saved(session, number):  # most scans met when catching up
                with self._lock:
                    self._pending.pop(key, None)
                return
            pending.ranked = True
            delay = self._delay(session)
            if delay:
                pending.due = now + delay
                return
        sent = time.monotonic()  # the claim lasts ttl from *before* Redis took it
        outcome, value = self.claims.claim(session, number, self.ttl)
        if outcome == DONE:
            with self._lock:
                self._pending.pop(key, None)
            return
        if outcome != CLAIMED:
            if is_dead_local_process(value) or not self._alive(session, value):
                logger.warning(
                    "scan %s: writer %s is dead; taking its scan over", pending.scan.db_name, value
                )
                self.claims.release(session, number, value)
                pending.ranked = False  # compete again now, by load
                pending.due = now
            else:
                pending.due = now + self.period
            return
        claim = ScanClaim(self.claims, session, number, value, sent + self.ttl)
        with self._lock:
            self._pending.pop(key, None)
            self._held[key] = claim
        self._guard("publishing the member record", self._publish, session)
        logger.info("scan %s: taken (pool load %d)", pending.scan.db_name, self.load)
        try:
            self.host.pool_write(session, pending.scan, claim)
            with self._lock:
                self._started.add(key)
        except Exception:
            # Not started (Redis unreachable while reading the scan): give it back, so that
            # it is not taken for failed here; it is competed for again.
            claim.stop()
            with self._lock:
                self._held.pop(key, None)
                self._pending[key] = _Pending(pending.scan, due=now + self.period)
            with contextlib.suppress(redis.RedisError):
                self.claims.release(session, number)
            raise

    def _alive(self, session: str, owner: str) -> bool:
        store = self.host.store
        return bool(store.redis.exists(store.keys.writer_member(session, owner)))

    def _renew(self) -> None:
        """Renew the claims held; end those whose scan is no longer written."""
        with self._lock:
            held = list(self._held.items())
        for key, claim in held:
            session, number = key
            if not self.host.pool_running(session, self._scans[key].name):
                self._finish(key, claim)
                continue
            sent = time.monotonic()
            if claim.token is not None and self.claims.renew(
                session, number, claim.token, self.ttl
            ):
                claim.valid_until = sent + self.ttl
                continue
            claim.stop()  # lapsed (this writer froze or lost Redis): not one more write
            logger.error(
                "scan %s:%s: claim lost (it lapsed: this writer was frozen or cut off from "
                "Redis); stopped writing it, another writer completes it",
                session,
                number,
            )

    def _finish(self, key: tuple[str, int], claim: ScanClaim) -> None:
        """The scan is no longer written here: release its claim, or record it failed here."""
        if self.stop_handler.stopped:
            return  # released by release(), once the files are closed
        session, number = key
        with self._lock:
            self._held.pop(key, None)
            self._started.discard(key)
        if self.host.pool_saved(session, number):
            self.claims.release(session, number)
        elif claim.stopped:
            # Stopped before its end (claim lost): compete again; the holder, if any, wins.
            with self._lock:
                if not self.stop_handler.stopped:
                    self._pending[key] = _Pending(self._scans[key])
        elif claim.token is not None:
            # FAILED (or expired): each other member tries it once, this one never again.
            if self.claims.mark_failed(session, number, claim.token):
                logger.warning(
                    "scan %s: not saved by this writer; left to the other writers of the pool "
                    "(each tries a failed scan once)",
                    self._scans[key].db_name,
                )
        self._publish(session)

    def _publish(self, session: str) -> None:
        status = dict(self.host.pool_status(session))
        status["pool"] = True
        status["load"] = self.load
        status["held"] = self.held(session)
        status["settings"] = self.host.pool_settings()
        status["blocked"] = self.blocked.get(session)
        self._check_settings(session)
        status["refusing"] = self.refusing.get(session)
        self.claims.publish(session, status, self.ttl)
        other = self.registry.claim(session, status, self.ttl)
        if other is not None and is_dead_local_process(other):
            self.registry.release(session, other)  # a dead single writer of this host
        elif other is not None and self.blocked.get(session) != other:
            logger.warning(
                "session %s is written by writer %s, which is not in a pool: this pool writer "
                "takes none of its scans until it stops (start every writer of a session "
                "with --pool, or none)",
                session,
                other,
            )
        if other is None:
            self.blocked.pop(session, None)
        else:
            self.blocked[session] = other

    def _check_settings(self, session: str) -> None:
        """Refuse the scans of ``session`` while this writer's settings differ from the pool's.

        The pool's settings are set by its first member and kept while a member sharing them
        lives (:meth:`ScanClaims.share_settings`, one record in Redis: no clock compared): a
        writer joining with another root would put the scans it takes elsewhere. Checked at
        every publication, the first one before any scan is taken, so the refusal ends once
        the settings agree (say, every member with the others left).
        """
        mine = self.host.pool_settings()
        record = self.claims.share_settings(session, mine, self.ttl)
        theirs = record.get("settings", {})
        differences = {
            name: [mine.get(name), theirs.get(name)]
            for name in SHARED_SETTINGS
            if mine.get(name) != theirs.get(name)
        }
        known = self.refusing.get(session)
        if not differences:
            if known is not None:
                self.refusing.pop(session, None)
                logger.warning(
                    "session %s: this writer's settings are the pool's now; taking its scans",
                    session,
                )
            return
        refusal = {"writer": record.get("writer"), "differences": differences}
        if refusal != known:
            logger.error(
                "session %s: the settings of this writer differ from those of the pool (set "
                "by its first writer, %s): %s. It takes none of the session's scans, which "
                "would go to other files; restart it with %s, or restart every writer of the "
                "pool with the same settings",
                session,
                record.get("writer"),
                "; ".join(
                    f"{SHARED_SETTINGS[name]}: {here!r} here, {there!r} in the pool"
                    for name, (here, there) in differences.items()
                ),
                ", ".join(_option(name, there) for name, (_, there) in differences.items()),
            )
        self.refusing[session] = refusal


def _option(name: str, value: Any) -> str:
    """The command-line option that gives setting ``name`` the value ``value``."""
    if name == "root":
        return f"--root {value}"
    if name == "allow":
        return " ".join(f"--allow {v}" for v in value) if value else "no --allow"
    if name == "layout":
        return "--legacy-names" if value == "legacy" else "no --legacy-names"
    return "--strict-names" if value else "no --strict-names"
