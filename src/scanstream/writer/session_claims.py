"""One writer per session: the claim on each session, taken and renewed by a heartbeat thread.

The claim is the session's health hash (:mod:`scanstream.writer.registry`), renewed every
:data:`HEARTBEAT_PERIOD` s with a TTL of :data:`HEALTH_TTL` s; it holds the writer's status
and keeps one writer per session: a second writer waits until the first one is gone. Each
period of ownership is a :class:`SessionClaim`, the stop handler of that period's walks and
writes. A writer that finds its claim taken by another writer (it froze, or lost Redis, for
longer than the TTL) stops writing that session at once, and waits like any second writer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import redis

from ..admin.registry import writer_status
from ..exceptions import ServerResetError
from ..subscribe.events import StopHandler
from .registry import WriterRegistry, is_dead_local_process
from .scan_claims import ScanClaim
from .supervise import said_by_store

__all__ = [
    "HEALTH_TTL",
    "HEARTBEAT_PERIOD",
    "AnyClaim",
    "SessionClaim",
    "SessionOwnership",
    "SessionState",
]

logger = logging.getLogger(__name__)

HEARTBEAT_PERIOD = 1.0
HEALTH_TTL = 5.0
_MAX_ERRORS = 20
#: How often a session listener looks whether its session is owned (s).
_OWNED_POLL = 0.05
# Seconds between two log lines of a server reset seen by the heartbeat (each second).
_RESET_LOG_PERIOD = 60.0


class SessionClaim(StopHandler):
    """One period of ownership of a session; stopping it stops that period's walks and writes.

    It is stopped when the writer stops, when another writer turns out to hold the session,
    and by itself once the claim has gone unrenewed for ``HEALTH_TTL``: by then Redis has
    dropped it and another writer may have the session (this one froze, or lost Redis), so
    nothing more is written before the next successful claim.
    """

    def __init__(self, valid_until: float, token: str | None = None) -> None:
        super().__init__()
        self.valid_until = valid_until  # time.monotonic()
        self.token = token  # the fencing token of this period (registry.holds checks it)

    @property
    def stopped(self) -> bool:
        return super().stopped or time.monotonic() >= self.valid_until


#: A period of ownership: of the session (one writer), or of one scan (pool mode).
AnyClaim = SessionClaim | ScanClaim


class SessionState:
    """What the service keeps about one session."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.claim: SessionClaim | None = None  # the current period of ownership
        self.running: set[str] = set()  # names of the scans being written
        self.saved = 0
        self.errors: deque[dict[str, Any]] = deque(maxlen=_MAX_ERRORS)
        self.other: str | None = None  # the writer holding the session instead of this one

    @property
    def owned(self) -> bool:
        return self.claim is not None and not self.claim.stopped


class SessionOwnership:
    """Takes, renews and gives up this writer's claims on its sessions (single-writer mode).

    Parameters
    ----------
    registry : WriterRegistry
        This writer's records in Redis.
    sessions : mapping of str to SessionState
        The sessions followed (the service's, shared: their claims are set here).
    root : Path
        This writer's root (a standby warns when the writer it waits for has another one).
    lock : threading.Lock
        The service's lock over the sessions' state.
    stop : StopHandler
        Stopped when the service stops: no claim is taken after that.
    status : callable
        ``status(session)``: the status published with each renewal.
    """

    def __init__(
        self,
        registry: WriterRegistry,
        sessions: Mapping[str, SessionState],
        *,
        root: Path,
        lock: threading.Lock,
        stop: StopHandler,
        status: Callable[[SessionState], dict[str, Any]],
    ) -> None:
        self.registry = registry
        self.sessions = sessions
        self.root = root
        self.status = status
        self._lock = lock
        self._stop = stop
        self._resets: dict[str, tuple[float | None, int]] = {}  # session -> (logged, repeats)

    def next_claim(self, session: SessionState) -> SessionClaim | None:
        """The claim of the next period of ownership, once the writes of the last one ended."""
        while not self._stop.stopped:
            claim = session.claim  # taken by the heartbeat thread
            with self._lock:
                idle = not session.running
            if claim is not None and not claim.stopped and idle:
                return claim
            self._stop.wait(_OWNED_POLL)
        return None

    def run(self) -> None:
        """The heartbeat thread: renew every claim each period, until the service stops."""
        while True:
            for session in self.sessions.values():
                try:
                    self._renew(session)
                except ServerResetError as exc:  # for good: said once a minute, not a second
                    self._reset_seen(session.name, exc)
                except Exception:  # a dead heartbeat would let every claim lapse
                    logger.exception("session %s: claim not renewed", session.name)
            if self._stop.wait(HEARTBEAT_PERIOD):
                return

    def _reset_seen(self, name: str, exc: ServerResetError) -> None:
        """Log that the server of ``name`` was reset: once, then a count once a minute."""
        now = time.monotonic()
        last, repeats = self._resets.get(name, (None, 0))
        if last is not None and now - last < _RESET_LOG_PERIOD:
            self._resets[name] = (last, repeats + 1)
            return
        self._resets[name] = (now, 0)
        if last is None:
            logger.error(
                "session %s: claim not renewed: %s; restart this writer to follow the "
                "server's new database",
                name,
                exc,
            )
        else:
            logger.error(
                "session %s: claim not renewed, the server was reset (again %d times in "
                "%.0f s); restart this writer",
                name,
                repeats + 1,
                now - last,
            )

    def _renew(self, session: SessionState) -> None:
        """Take or renew the claim on ``session``, or learn that another writer holds it."""
        sent = time.monotonic()  # the claim lasts HEALTH_TTL from *before* Redis renewed it
        try:
            # The status published is the one that holds once the script has recorded the
            # claim (it writes nothing otherwise): "writing" is true from the first claim on.
            other = self.registry.claim(session.name, self.status(session), HEALTH_TTL)
            if other is not None and is_dead_local_process(other):
                # A writer of this machine killed without clean-up: no need to wait for its
                # claim to expire. Delete it only if it still names that writer; the next
                # renewal takes the session (and says so, once).
                logger.warning(
                    "session %s: writer %s is dead (its process is gone); releasing its claim",
                    session.name,
                    other,
                )
                self.registry.release(session.name, other)
                with self._lock:
                    session.other = other
                return
        except redis.RedisError as exc:
            # Not renewed: the claim stops by itself HEALTH_TTL after the last renewal.
            log = logger.debug if said_by_store(exc, self.registry.store) else logger.warning
            log("session %s: cannot renew the claim: %s", session.name, exc)
            return
        if other is None:
            self._hold(session, sent + HEALTH_TTL)
        else:
            self._give_up(session, other)

    def _hold(self, session: SessionState, valid_until: float) -> None:
        with self._lock:
            if self._stop.stopped:
                return
            if session.owned:
                assert session.claim is not None
                if session.claim.token == self.registry.tokens.get(session.name):
                    session.claim.valid_until = valid_until
                    return
                # A new token: the claim lapsed in Redis meanwhile; a new period starts.
                session.claim.stop()
            if session.claim is not None:
                logger.warning(
                    "session %s: claim taken again after it had lapsed; writing it again "
                    "from its stored history",
                    session.name,
                )
            elif session.other is not None:  # this writer was the standby: said once
                logger.warning(
                    "session %s: taking over from writer %s (it stopped, died, or its claim "
                    "lapsed)",
                    session.name,
                    session.other,
                )
            session.claim = SessionClaim(valid_until, self.registry.tokens.get(session.name))
            session.other = None

    def _give_up(self, session: SessionState, other: str) -> None:
        with self._lock:
            claim, session.claim = session.claim, None
            known, session.other = session.other, other
        if claim is not None:
            # Stop walking and writing the session before anything more is written: the other
            # writer writes it now (and the same files, when both have the same root).
            claim.stop()
            logger.error(
                "session %s: writer %s has taken it over (the claim of this writer "
                "lapsed: it was frozen or cut off from Redis for more than %.0f s); "
                "stopped writing it",
                session.name,
                other,
                HEALTH_TTL,
            )
        elif known != other:  # once per writer met, not at every renewal
            logger.warning(
                "session %s is written by another writer (%s); standby: taking over when it stops",
                session.name,
                other,
            )
            self._warn_if_other_root(session.name, other)

    def _warn_if_other_root(self, session: str, other: str) -> None:
        """Warn when the writer holding ``session`` writes under another root than this one.

        Relative filenames and scans without one would land elsewhere once this writer takes
        over: the session's files would be split between two directories.
        """
        try:
            status = writer_status(session, store=self.registry.store) or {}
        except (redis.RedisError, ValueError):
            return
        root = status.get("root")
        if status.get("owner") == other and root and Path(root) != self.root:
            logger.warning(
                "session %s: writer %s writes under %s, this writer under %s: after a "
                "takeover, relative filenames and scans without one go to %s; give both "
                "writers the same --root",
                session,
                other,
                root,
                self.root,
                self.root,
            )
