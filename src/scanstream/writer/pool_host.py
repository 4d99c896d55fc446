"""What the writer service offers its pool (:class:`~scanstream.writer.pool.PoolHost`).

In pool mode (:mod:`scanstream.writer.pool`) the pool decides which scans this writer takes;
it asks the service, through this object, to write them (the same :class:`ScanJobs` as a
single writer), whether they are still being written, and for the status and settings it
publishes in its member record.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from .._transport.connection import DataStore
from ..subscribe.tree import ScanNode
from .scan_claims import ScanClaim
from .scan_jobs import ScanJobs
from .session_claims import SessionState

__all__ = ["ServicePoolHost"]


class ServicePoolHost:
    """The :class:`~scanstream.writer.pool.PoolHost` of a writer service.

    Parameters
    ----------
    jobs : ScanJobs
        The service's scan writing (its registry gives the connection and this writer's id).
    sessions : mapping of str to SessionState
        The service's sessions.
    catch_up : bool
        Whether stored scans not saved yet are written too.
    lock : threading.Lock
        The service's lock over the sessions' state.
    publish_floor : callable
        ``publish_floor(session)``: raise the session's numbering floor.
    status : callable
        ``status(session)``: this writer's status for that session.
    settings : dict
        The settings every member must share (:data:`~scanstream.writer.pool.SHARED_SETTINGS`).
    """

    def __init__(
        self,
        jobs: ScanJobs,
        sessions: Mapping[str, SessionState],
        *,
        catch_up: bool,
        lock: threading.Lock,
        publish_floor: Callable[[SessionState], None],
        status: Callable[[SessionState], dict[str, Any]],
        settings: dict[str, Any],
    ) -> None:
        self.store: DataStore = jobs.store
        self.owner = jobs.owner
        self.catch_up = catch_up
        self._jobs = jobs
        self._sessions = sessions
        self._lock = lock
        self._publish_floor = publish_floor
        self._status = status
        self._settings = settings

    def pool_publish_floor(self, session: str) -> None:
        """Raise the numbering floor of ``session`` from this writer's files and registry."""
        self._publish_floor(self._sessions[session])

    def pool_write(self, session: str, scan: ScanNode, claim: ScanClaim) -> None:
        """Write ``scan`` under its scan claim (pool mode)."""
        self._jobs.start(self._sessions[session], scan, claim)

    def pool_running(self, session: str, name: str) -> bool:
        """True while scan ``name`` of ``session`` is being written here."""
        with self._lock:
            return name in self._sessions[session].running

    def pool_status(self, session: str) -> dict[str, Any]:
        """This writer's status for ``session``, published in its pool member record."""
        return self._status(self._sessions[session])

    def pool_saved(self, session: str, number: int) -> bool:
        """True when scan ``number`` of ``session`` is recorded as saved."""
        return self._jobs.registry.is_saved(session, number)

    def pool_settings(self) -> dict[str, Any]:
        """The settings every member of the pool must share (``pool.SHARED_SETTINGS``)."""
        return dict(self._settings)
