"""The writer service: follows sessions and writes every scan into HDF5/NeXus files.

One thread per session walks the session's scans (from the start of the stored history, so a
restarted writer finishes what it had started and catches up what ran while it was down);
each scan gets its own thread (:mod:`scanstream.writer.scan_jobs`), so scans running at once
are written at once. What is written is recorded in Redis (:mod:`scanstream.writer.registry`):
the scans completely saved (skipped on restart), and a claim on each session that keeps one
writer per session (:mod:`scanstream.writer.session_claims`): a second writer waits until the
first one is gone.

With ``pool=True`` the writers share the sessions' scans instead, each scan claimed by one of
them (:mod:`scanstream.writer.pool`, through :mod:`scanstream.writer.pool_host`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import redis

from .._protocol.keys import check_session_name
from .._transport.connection import DataStore, default_store
from .._transport.retry import OUTAGE_REMINDER
from ..admin.registry import saved_scans
from ..exceptions import DecodingError, InvalidArgumentError, ScanstreamError, ServerResetError
from ..models import SCAN_NODE_TYPES
from ..subscribe.events import EventType, StopHandler
from ..subscribe.tree import ScanNode, get_session_node
from . import nexus
from .files import FLUSH_PERIOD, OpenFiles
from .isolation import DEFAULT_WORKERS, WorkerProcesses
from .paths import WritePolicy
from .pool import WriterPool
from .pool_host import ServicePoolHost
from .registry import WriterRegistry, new_owner_id
from .retry import RETRY_DELAYS
from .scan_jobs import CATCH_UP_WORKERS, ScanJobs
from .session_claims import (
    HEALTH_TTL,
    HEARTBEAT_PERIOD,
    SessionClaim,
    SessionOwnership,
    SessionState,
)
from .session_file import SessionFiles
from .supervise import RETRY_PERIOD, supervise

__all__ = ["CATCH_UP_WORKERS", "HEALTH_TTL", "HEARTBEAT_PERIOD", "RETRY_PERIOD", "WriterService"]

logger = logging.getLogger(__name__)

_SCAN_TYPES = tuple(sorted(SCAN_NODE_TYPES))
#: How often run() looks whether a signal came (s).
_SIGNAL_POLL = 0.1
#: Seconds between two reads of the server's identity (see _watch_server_identity).
_IDENTITY_PERIOD = 1.0


class WriterService:
    """Write every scan of some sessions into HDF5/NeXus files, live.

    Parameters
    ----------
    sessions : sequence of str
        Session names to follow (they need not exist yet).
    root : str or Path
        Base directory of scans whose scan_info has no ``filename`` (they go to
        ``<root>/<session>/<session>.h5``) and of relative filenames. Default: current directory.
    redis_url : str, optional
        Redis URL; default ``SCANSTREAM_REDIS_URL``, else the embedded server.
    store : DataStore, optional
        An existing connection (takes precedence over ``redis_url``).
    catch_up : bool
        True (default): also write the stored scans not saved yet (after a restart). False:
        only scans that start from now on.
    pool : bool
        False (default): this writer claims whole sessions, another one started for them
        waits as a standby. True: the writers started with ``pool=True`` share the scans of
        the sessions, each scan claimed by one of them (:mod:`scanstream.writer.pool`,
        docs/decisions/0014-writer-pool.md).
    strict_names : bool
        Entry names ``scan3_1`` (strict NeXus naming) instead of BLISS's ``3.1``.
    flush_period : float
        Seconds between flushes of a file receiving data (readers see data this old at most).
    compression : str
        Compression of the channel datasets large enough to gain: ``"none"``, ``"gzip"``,
        ``"lz4"``, ``"bitshuffle-lz4"`` (default) or ``"zstd"`` (docs/nexus_layout.md).
    layout : str
        ``"esrf"`` (default: data in device groups, short names in ``measurement/``) or
        ``"legacy"`` (full channel names in ``measurement/``, as scanstream 0.1).
    allow : sequence of str or Path
        Further directories where ``scan_info["filename"]`` may point (besides ``root``);
        any other place, ``..`` components or a symbolic link leaving them fails the scan.
    umask : int, optional
        The umask applied (process-wide, at :meth:`start`) to the files and directories the
        writer creates: ``0o022`` makes them readable by everyone, ``0o027`` by the group
        only. None keeps the process's umask.
    isolate : bool
        True (default): each scan is written in a worker process
        (:mod:`scanstream.writer.isolation`), so that a libhdf5 crash (a segfault on a
        damaged file) loses that attempt at that scan only: the scan is written again, and
        FAILED after a second crash, while the other scans and sessions go on. False: every
        scan is written in this process's threads (no process start per scan, less memory;
        a crash there ends the whole service).
    workers : int
        With ``isolate``: worker processes, so scans written at once (default 4); more
        scans wait for a free worker. About one core each: more than the host's free cores
        only share them (docs/deployment.md, "How many writers"). Not used without
        ``isolate`` (every scan in a thread of its own).
    retry_delays : sequence of float
        Pauses (s) before the retries of a scan that failed for its environment (disk full,
        directory not writable), while the writer runs and the scan's data is in Redis; the
        last pause repeats. Default :data:`~scanstream.writer.retry.RETRY_DELAYS` (10, 30,
        60 s, then every 300 s); empty: such a scan stays FAILED until the next start. Not
        in pool mode (a failed scan goes to another member). See docs/reliability.md.

    Raises
    ------
    InvalidArgumentError
        A session name is not valid, ``workers`` is less than 1, or a retry delay is not
        a number of seconds > 0.
    ScanstreamError
        No session is given.

    Examples
    --------
    In a program of its own, :meth:`run` does everything (signals, clean-up, exit code):

    >>> raise SystemExit(WriterService(["test_session"], root="/data").run())  # doctest: +SKIP

    Inside another program, start and stop it:

    >>> with WriterService(["test_session"], root="/data") as writer:  # doctest: +SKIP
    ...     writer.wait(60)
    """

    def __init__(
        self,
        sessions: Sequence[str],
        *,
        root: str | os.PathLike[str] = ".",
        redis_url: str | None = None,
        store: DataStore | None = None,
        catch_up: bool = True,
        pool: bool = False,
        strict_names: bool = False,
        flush_period: float = FLUSH_PERIOD,
        compression: str = nexus.DEFAULT_COMPRESSION,
        layout: str = "esrf",
        allow: Sequence[str | os.PathLike[str]] = (),
        umask: int | None = None,
        isolate: bool = True,
        workers: int = DEFAULT_WORKERS,
        retry_delays: Sequence[float] = RETRY_DELAYS,
    ) -> None:
        nexus.compression_options(compression, 0)  # an unknown name fails here, not per scan
        if layout not in nexus.LAYOUTS:
            raise ScanstreamError(f"unknown layout {layout!r}; use one of {nexus.LAYOUTS}")
        self.compression = compression
        self.layout = layout
        if isinstance(sessions, str):
            sessions = [sessions]
        self.sessions = [check_session_name(s) for s in dict.fromkeys(sessions)]
        if not self.sessions:
            raise ScanstreamError("give at least one session to write")
        if any(not (isinstance(d, (int, float)) and d > 0) for d in retry_delays):
            raise InvalidArgumentError(
                f"retry_delays must be seconds > 0, got {list(retry_delays)!r}; give e.g. "
                "(10, 30, 60, 300), or () for no retries"
            )
        self.root = Path(root).expanduser().resolve()
        self.policy = WritePolicy.create(self.root, allow, umask)
        self.session_files = SessionFiles()
        self.isolate = isolate
        self.workers = WorkerProcesses(workers)
        self.store = store or default_store(redis_url)
        self.catch_up = catch_up
        self.strict_names = strict_names
        self.files = OpenFiles(flush_period)
        self.owner = new_owner_id()
        self.registry = WriterRegistry(self.store, self.owner)
        self._stop = StopHandler()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._sessions = {name: SessionState(name) for name in self.sessions}
        self._started = time.time()
        self._jobs = ScanJobs(
            self.registry,
            root=self.root,
            policy=self.policy,
            files=self.files,
            session_files=self.session_files,
            workers=self.workers,
            isolate=isolate,
            strict_names=strict_names,
            compression=compression,
            layout=layout,
            lock=self._lock,
            spawn=self._spawn,
            others_may_try=self._others_may_try,
            retry_delays=retry_delays,
        )
        self._ownership = SessionOwnership(
            self.registry,
            self._sessions,
            root=self.root,
            lock=self._lock,
            stop=self._stop,
            status=functools.partial(self._status, writing=True),
        )
        self.pool = (
            WriterPool(
                ServicePoolHost(
                    self._jobs,
                    self._sessions,
                    catch_up=catch_up,
                    lock=self._lock,
                    publish_floor=self._publish_floor,
                    status=functools.partial(self._status, writing=True),
                    settings={
                        "root": str(self.root),
                        "allow": sorted(str(a) for a in self.policy.allowed),
                        "layout": layout,
                        "strict_names": strict_names,
                    },
                ),
                self.sessions,
                ttl=HEALTH_TTL,
                period=HEARTBEAT_PERIOD,
                capacity=workers if isolate else None,
            )
            if pool
            else None
        )

    def __repr__(self) -> str:
        owned = [s.name for s in self._sessions.values() if s.owned]
        return f"<WriterService owner={self.owner!r} writing={owned} {self._counters()}>"

    # -- life cycle ---------------------------------------------------------------------------
    def run(self) -> int:
        """Write until SIGINT or SIGTERM (or :meth:`stop`, or the server found reset:
        :attr:`server_reset`), then stop and clean up.

        The life cycle of a writer process: installs the signal handlers (when called from
        the main thread; they are restored on return), starts, waits, and stops in any case,
        logging why and what was done.

        Returns
        -------
        int
            The exit code: 0, or 1 when HDF5 files are left unflushed (disk full), see
            :meth:`exit_if_files_unflushed`.
        """
        received: list[str] = []

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            # Only note it: taking a lock here (Event.set) could deadlock with the main
            # thread, which the handler interrupts; the loop below sees it within _SIGNAL_POLL.
            received.append(signal.Signals(signum).name)

        previous: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, on_signal)
        try:
            self.start()
            while not received and not self.wait(_SIGNAL_POLL) and self.server_reset is None:
                pass
        finally:
            if received:
                # Its threads and workers blocked in commands retried against a server that
                # went away would each wait out the outage budget (30 s) before they stop:
                # the process stops within a second instead. Its claims need no release: they
                # expire on the server, and another writer resumes the scans.
                self.store.stop_riding_out()
                why = f"on {received[0]}"
            elif self.server_reset is not None:
                why = f"as the server was reset ({self.server_reset})"
            else:
                why = "on request"
            logger.info(
                "stopping %s: %s; scans being written are completed at the next start",
                why,
                self._counters(),
            )
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if self.files.unclosed:
            logger.error(
                "files left unflushed (disk full?): %s", ", ".join(map(str, self.files.unclosed))
            )
            return 1
        return 0

    def exit_if_files_unflushed(self) -> None:
        """End the process at once, with exit code 1, if HDF5 files are left unflushed.

        HDF5 crashes the process at exit on a file it could not flush (disk full, see
        :mod:`scanstream.writer.files`), so its clean-up is skipped (``os._exit``). For
        programs that end after :meth:`run`; returns when every file was closed.
        """
        if self.files.unclosed:
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)

    def start(self) -> WriterService:
        """Start following the sessions (returns at once)."""
        self._describe_outages()
        self.policy.apply_umask()
        if self.isolate:
            self.workers.warm()
        self._spawn(self._watch_server_identity, "identity")
        if self.pool is not None:
            self.pool.start(self._spawn)
        else:
            self._spawn(self._ownership.run, "heartbeat")
            for session in self._sessions.values():
                self._spawn(self._follow_session, f"session-{session.name}", session)
        logger.info(
            "writing sessions %s into %s (unless scan_info gives a filename)",
            ", ".join(self.sessions),
            self.root,
        )
        return self

    def _describe_outages(self) -> None:
        """Make the store's outage lines say what this writer does (unless the store's owner
        chose the words): it retries for as long as it runs, where a command gives up after
        the budget; a reminder every
        :data:`~scanstream._transport.retry.OUTAGE_REMINDER` s, one line at the end."""
        notice = self.store.outage_notice
        if notice is None or notice.consequence is not None:
            return
        notice.consequence = (
            "the writer keeps retrying for as long as it runs; meanwhile its claims lapse on "
            f"the server after {HEALTH_TTL:g} s and the scans it was writing wait, stored in "
            "Redis, until it (or another writer) resumes them"
        )
        notice.reminder = OUTAGE_REMINDER

    def stop(self, timeout: float = 10.0) -> None:
        """Stop: scans being written stay unfinished in the file and are completed at restart."""
        with self._lock:  # no claim starts after this (see _hold)
            self._stop.stop()
            if self.pool is not None:
                self.pool.stop()
            for session in self._sessions.values():
                if session.claim is not None:
                    session.claim.stop()
        self.workers.stop(timeout)
        deadline = time.monotonic() + timeout
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))
        self.files.close()
        if self.pool is not None:  # after the files are closed: others take the scans over
            self.pool.release()
        notice = self.store.outage_notice
        if notice is not None and notice.down_since is not None:
            # Each release would ride out the outage first; the claims expire on the server.
            logger.info(
                "claims not released (Redis does not answer): they expire on the server "
                "within %g s, then another writer may take the sessions",
                HEALTH_TTL,
            )
            return
        for name in self.sessions:
            # A reset server (ServerResetError) holds no claim to release: stopping must not fail.
            with contextlib.suppress(redis.RedisError, ServerResetError):
                self.registry.release(name)

    @property
    def server_reset(self) -> str | None:
        """Why the server was found reset (lost or rolled back its data), or None.

        The service's store then refuses the server for good (``ServerResetError``): its
        scans in flight are lost with the server's data, and nothing more is saved through
        it. :meth:`run` returns then; ``scanstream writer`` starts a new service on a new
        store, which follows the server's new database.
        """
        return self.store.identity.reset

    def wait(self, timeout: float | None = None) -> bool:
        """Block until :meth:`stop` is called (from another thread or a signal handler).

        Returns True if stopped, False on timeout.
        """
        return self._stop.wait(timeout)

    def __enter__(self) -> WriterService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _watch_server_identity(self) -> None:
        """Read the server's identity every second, until a reset is seen or the service stops.

        Connections check it only when they connect: a writer that started before the
        server had an identity, or a server flushed without a restart, would otherwise go
        unnoticed, and the writer would go on with the state of the former database.
        """
        while not self._stop.wait(_IDENTITY_PERIOD):
            try:
                self.store.check_server_identity()
            except ServerResetError:
                return  # remembered in store.identity.reset: see server_reset
            except redis.RedisError:
                continue  # an outage: each command rides it out or fails on its own

    def _spawn(self, target: Callable[..., None], name: str, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=f"writer-{name}", daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    # -- sessions -----------------------------------------------------------------------------
    def _follow_session(self, session: SessionState) -> None:
        """Walk the session's scans during each period this writer owns it."""
        while True:
            claim = self._ownership.next_claim(session)
            if claim is None:
                return
            supervise(
                functools.partial(self._walk_session, session, claim),
                store=self.store,
                stop=claim,
                what=f"session {session.name}: listener",
                restart_on=(Exception,),
                # Garbage over the session's own stream: one clear line until it is fixed,
                # not a traceback every second.
                wait_on=(DecodingError,),
            )
            if not claim.stopped:  # the walk ended by itself: nothing more will come
                return

    def _walk_session(self, session: SessionState, claim: SessionClaim) -> None:
        self._publish_floor(session)
        node = get_session_node(session.name, store=self.store)
        # Scans only: their nodes are the scan writers' job.
        for event_type, scan, _ in node.walk_on_new_events(
            include_filter=_SCAN_TYPES,
            exclude_children=_SCAN_TYPES,
            from_next=not self.catch_up,
            stop_handler=claim,
        ):
            if event_type == EventType.NEW_NODE and isinstance(scan, ScanNode):
                self._jobs.start(session, scan, claim)

    def _publish_floor(self, session: SessionState) -> None:
        """Publish the highest scan number this writer knows for the session.

        The publisher numbers new scans above it, so that numbering restarted by a server
        reset does not reuse the numbers of saved scans (entries that are taken anyway are
        written under another number, see :meth:`SessionFiles.choose_number`).
        """
        known = list(saved_scans(session.name, store=self.registry.store))
        default_file = self.policy.scan_file({}, session.name)
        try:
            known.append(self.session_files.highest_number(default_file))
        except (OSError, ScanstreamError) as exc:
            logger.warning("session %s: %s not read: %s", session.name, default_file, exc)
        if known and max(known) > 0:
            self.registry.raise_number_floor(session.name, max(known))

    def _others_may_try(self, session: str, number: int) -> bool:
        """Pool mode: another member may still take scan ``number`` that this writer failed."""
        return self.pool is not None and self.pool.others_may_try(session, number)

    # -- claims and status --------------------------------------------------------------------
    @property
    def _owned(self) -> set[str]:
        """Names of the sessions this writer owns now."""
        return {s.name for s in self._sessions.values() if s.owned}

    def status(self, session: str) -> dict[str, Any]:
        """This writer's own status for ``session``: a member of :func:`writer_status`."""
        state = self._sessions[session]
        return self._status(state, writing=state.owned or self.pool is not None)

    def _status(self, session: SessionState, *, writing: bool) -> dict[str, Any]:
        with self._lock:
            running = sorted(session.running)
            errors = list(session.errors)
        return {
            "owner": self.owner,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "root": str(self.root),
            "started": self._started,
            "heartbeat": time.time(),
            "writing": writing,
            "running": running,
            "saved": session.saved,
            "failed": len(errors),
            "errors": errors,
        }

    def _counters(self) -> str:
        with self._lock:
            saved = sum(s.saved for s in self._sessions.values())
            failed = sum(len(s.errors) for s in self._sessions.values())
            running = sum(len(s.running) for s in self._sessions.values())
        return f"scans saved {saved}, failed {failed}, being written {running}"
