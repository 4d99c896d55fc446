"""The writer service: follows sessions and writes every scan into HDF5/NeXus files.

One thread per session walks the session's scans (from the start of the stored history, so a
restarted writer finishes what it had started and catches up what ran while it was down);
each scan gets its own :class:`~scanstream.writer.scan_writer.ScanWriter` thread, so scans
running at once are written at once. What is written is recorded in Redis
(:mod:`scanstream.writer.registry`): the scans completely saved (skipped on restart), and a
claim on each session, renewed every second with a short TTL, that holds the writer's status
and keeps one writer per session: a second writer waits until the first one is gone.

A writer that finds its claim taken by another writer (it froze, or lost Redis, for longer
than the TTL) stops writing that session at once, and waits like any second writer.

With ``pool=True`` the writers share the sessions' scans instead, each scan claimed by one of
them (:mod:`scanstream.writer.pool`): only the hooks are here.
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
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import redis

from .._protocol.keys import check_session_name
from .._transport.connection import DataStore, default_store
from ..admin.registry import writer_status
from ..exceptions import ScanNotFoundError, ScanstreamError
from ..models import SCAN_NODE_TYPES, SavingState, SavingVerdict
from ..subscribe.events import EventType, StopHandler
from ..subscribe.lost import record_if_lost_by_number
from ..subscribe.tree import ScanNode, get_session_node
from . import nexus
from .files import FLUSH_PERIOD, FileBusyError, OpenFiles
from .isolation import RETRY_ERRORS, WorkerConfig, WorkerProcesses
from .paths import WritePolicy
from .pool import WriterPool
from .registry import WriterRegistry, is_dead_local_process, new_owner_id
from .scan_claims import ScanClaim
from .scan_writer import ScanWriter, WriteResult
from .session_file import SessionFiles
from .supervise import RETRY_PERIOD, UNREACHABLE, supervise

__all__ = ["CATCH_UP_WORKERS", "HEALTH_TTL", "HEARTBEAT_PERIOD", "RETRY_PERIOD", "WriterService"]

logger = logging.getLogger(__name__)

HEARTBEAT_PERIOD = 1.0
HEALTH_TTL = 5.0
#: Finished scans caught up at once after a (re)start; running scans always get a thread.
CATCH_UP_WORKERS = 4
_MAX_ERRORS = 20
#: How often a session listener looks whether its session is owned (s).
_OWNED_POLL = 0.05
_SCAN_TYPES = tuple(sorted(SCAN_NODE_TYPES))
#: How often run() looks whether a signal came (s).
_SIGNAL_POLL = 0.1


class _Claim(StopHandler):
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
_AnyClaim = _Claim | ScanClaim


class _Session:
    """What the service keeps about one session."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.claim: _Claim | None = None  # the current period of ownership
        self.running: set[str] = set()  # names of the scans being written
        self.saved = 0
        self.errors: deque[dict[str, Any]] = deque(maxlen=_MAX_ERRORS)
        self.other: str | None = None  # the writer holding the session instead of this one

    @property
    def owned(self) -> bool:
        return self.claim is not None and not self.claim.stopped


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

    Raises
    ------
    InvalidArgumentError
        A session name is not valid.
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
        self.root = Path(root).expanduser().resolve()
        self.policy = WritePolicy.create(self.root, allow, umask)
        self.session_files = SessionFiles()
        self.isolate = isolate
        self.workers = WorkerProcesses()
        self.store = store or default_store(redis_url)
        self.catch_up = catch_up
        self.strict_names = strict_names
        self.files = OpenFiles(flush_period)
        self.owner = new_owner_id()
        self.registry = WriterRegistry(self.store, self.owner)
        self._stop = StopHandler()
        self._threads: list[threading.Thread] = []
        self._catch_up_slots = threading.Semaphore(CATCH_UP_WORKERS)
        self._lock = threading.Lock()
        self._sessions = {name: _Session(name) for name in self.sessions}
        self._started = time.time()
        self.pool = (
            WriterPool(self, self.sessions, ttl=HEALTH_TTL, period=HEARTBEAT_PERIOD)
            if pool
            else None
        )

    def __repr__(self) -> str:
        owned = [s.name for s in self._sessions.values() if s.owned]
        return f"<WriterService owner={self.owner!r} writing={owned} {self._counters()}>"

    # -- life cycle ---------------------------------------------------------------------------
    def run(self) -> int:
        """Write until SIGINT or SIGTERM (or :meth:`stop`), then stop and clean up.

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
            while not received and not self.wait(_SIGNAL_POLL):
                pass
        finally:
            why = f"on {received[0]}" if received else "on request"
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
        self.policy.apply_umask()
        if self.isolate:
            self.workers.warm()
        if self.pool is not None:
            self.pool.start(self._spawn)
        else:
            self._spawn(self._heartbeat_loop, "heartbeat")
            for session in self._sessions.values():
                self._spawn(self._follow_session, f"session-{session.name}", session)
        logger.info(
            "writing sessions %s into %s (unless scan_info gives a filename)",
            ", ".join(self.sessions),
            self.root,
        )
        return self

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
        for name in self.sessions:
            with contextlib.suppress(redis.RedisError):
                self.registry.release(name)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until :meth:`stop` is called (from another thread or a signal handler).

        Returns True if stopped, False on timeout.
        """
        return self._stop.wait(timeout)

    def __enter__(self) -> WriterService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, target: Callable[..., None], name: str, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=f"writer-{name}", daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    # -- sessions -----------------------------------------------------------------------------
    def _follow_session(self, session: _Session) -> None:
        """Walk the session's scans during each period this writer owns it."""
        while True:
            claim = self._next_claim(session)
            if claim is None:
                return
            supervise(
                functools.partial(self._walk_session, session, claim),
                stop=claim,
                what=f"session {session.name}: listener",
                restart_on=(Exception,),
            )
            if not claim.stopped:  # the walk ended by itself: nothing more will come
                return

    def _next_claim(self, session: _Session) -> _Claim | None:
        """The claim of the next period of ownership, once the writes of the last one ended."""
        while not self._stop.stopped:
            claim = session.claim  # taken by the heartbeat thread
            with self._lock:
                idle = not session.running
            if claim is not None and not claim.stopped and idle:
                return claim
            self._stop.wait(_OWNED_POLL)
        return None

    def _walk_session(self, session: _Session, claim: _Claim) -> None:
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
                self._on_scan(session, scan, claim)

    def _publish_floor(self, session: _Session) -> None:
        """Publish the highest scan number this writer knows for the session.

        The publisher numbers new scans above it, so that numbering restarted by a server
        reset does not reuse the numbers of saved scans (entries that are taken anyway are
        written under another number, see :meth:`SessionFiles.choose_number`).
        """
        saved = self.registry.store.redis.smembers(self.store.keys.writer_saved(session.name))
        known = [int(n) for n in saved if n.isdigit()]
        default_file = self.policy.scan_file({}, session.name)
        try:
            known.append(self.session_files.highest_number(default_file))
        except (OSError, ScanstreamError) as exc:
            logger.warning("session %s: %s not read: %s", session.name, default_file, exc)
        if known and max(known) > 0:
            self.registry.raise_number_floor(session.name, max(known))

    def _on_scan(self, session: _Session, scan: ScanNode, claim: _AnyClaim) -> None:
        if self.registry.is_saved(session.name, scan.number):
            return
        with self._lock:
            if scan.name in session.running:
                return
            session.running.add(scan.name)
        try:
            info, finished, lost = scan.info, scan.state.is_final, scan.lost
        except ScanNotFoundError:
            lost = self._record_if_lost(session, scan)
            if lost is None:
                logger.warning("scan %s expired from Redis before it was saved", scan.db_name)
            else:
                self._failed(session, scan, claim, lost)
            self._done(session, scan)
            return
        except UNREACHABLE:
            self._done(session, scan)
            raise
        except Exception as exc:  # a malformed scan: that scan fails, the session goes on
            self._failed(session, scan, claim, f"{type(exc).__name__}: {exc}")
            self._done(session, scan)
            return
        if lost is not None:  # recorded lost: nothing to write, its data is gone
            self._failed(session, scan, claim, lost)
            self._done(session, scan)
            return
        if info.get("save") is False:
            logger.info("scan %s: not saved (scan_info save=False)", scan.db_name)
            verdict = SavingVerdict(
                SavingState.NOT_SAVED, reason="saving is off (scan_info save=False)"
            )
            if self._record(session, scan, claim, verdict):
                self.registry.mark_saved(session.name, scan.number)
            self._done(session, scan)
            return
        self._spawn(self._write_scan, f"scan-{scan.db_name}", session, scan, claim, finished)

    def _record(
        self, session: _Session, scan: ScanNode, claim: _AnyClaim, verdict: SavingVerdict
    ) -> bool:
        """Record ``verdict`` in the scan hash, only while this writer's claim holds (fence)."""
        if claim.stopped or not self._holds(session.name, claim):
            return False
        verdict = SavingVerdict(
            verdict.state,
            file=verdict.file,
            entries=verdict.entries,
            points=verdict.points,
            reason=verdict.reason,
            writer=self.owner,
            time=time.time(),
        )
        try:
            self.registry.record_verdict(session.name, scan.number, verdict)
        except redis.RedisError as exc:
            logger.warning("scan %s: verdict %s not recorded: %s", scan.db_name, verdict, exc)
            return False
        return True

    def _failed(self, session: _Session, scan: ScanNode, claim: _AnyClaim, message: str) -> None:
        # A scan whose keys are gone before they could have expired was lost (a cluster
        # master restarted empty): recorded ended FAILED, with the verdict below.
        lost = self._record_if_lost(session, scan)
        if lost is not None:
            message = f"{message}; {lost}"
        logger.error("scan %s NOT saved: %s", scan.db_name, message)
        session.errors.append(
            {"scan": scan.name, "number": scan.number, "error": message, "time": time.time()}
        )
        with contextlib.suppress(Exception):
            self._record(session, scan, claim, SavingVerdict(SavingState.FAILED, reason=message))

    def _record_if_lost(self, session: _Session, scan: ScanNode) -> str | None:
        """The error of ``scan`` if its keys are gone and it was lost (:mod:`..subscribe.lost`)."""
        try:
            if self.store.redis.exists(self.store.keys.scan(session.name, scan.number)):
                return None
            return record_if_lost_by_number(self.store, session.name, scan.number)
        except redis.exceptions.RedisError as exc:
            logger.warning("scan %s: not checked for a loss: %s", scan.db_name, exc)
            return None

    def _write_scan(
        self, session: _Session, scan: ScanNode, claim: _AnyClaim, finished: bool
    ) -> None:
        slot = self._catch_up_slots if finished else contextlib.nullcontext()
        try:
            with slot:
                started = time.monotonic()
                result = self._write_until_done(session, scan, claim)
            if result is None or claim.stopped:  # stopped, or the session was lost meanwhile
                return
            if result.problems:
                self._failed(
                    session,
                    scan,
                    claim,
                    "the file does not hold every sealed point: " + "; ".join(result.problems),
                )
                return
            verdict = SavingVerdict(
                SavingState.SAVED,
                file=str(result.path),
                entries=tuple(result.entries),
                points=dict(result.points),
            )
            if not self._record(session, scan, claim, verdict):
                return  # the claim lapsed meanwhile: the new owner decides
            self.registry.mark_saved(session.name, scan.number)
            with self._lock:  # scan threads of one session finish concurrently
                session.saved += 1
            points = sum(result.points.values())
            logger.info(
                "saved %s (%s): %d points in %s entries %s of %s (%.2f s)",
                scan.db_name,
                result.state,
                points,
                len(result.entries),
                ", ".join(result.entries),
                result.path,
                time.monotonic() - started,
            )
        except Exception as exc:
            if not claim.stopped:
                self._failed(session, scan, claim, f"{type(exc).__name__}: {exc}")
        finally:
            self._done(session, scan)

    def _write_until_done(
        self, session: _Session, scan: ScanNode, claim: _AnyClaim
    ) -> WriteResult | None:
        """Write the scan; while Redis is unreachable, write it again (a replay is idempotent).

        Returns None when the claim stops first (the writer stops, or lost the session).
        """

        def started(result: WriteResult, first_entry: str) -> None:
            self._record(
                session,
                scan,
                claim,
                SavingVerdict(
                    SavingState.WRITING,
                    file=str(result.path),
                    entries=(first_entry,),
                ),
            )

        def attempt() -> WriteResult:
            if self.isolate:
                return self.workers.write(
                    session.name,
                    scan.number,
                    scan.db_name,
                    self._worker_config(claim),
                    claim,
                    lambda file, entry: started(WriteResult(Path(file)), entry),
                )
            writer = ScanWriter(
                scan,
                self.files,
                self.root,
                strict_names=self.strict_names,
                compression=self.compression,
                layout=self.layout,
                session_files=self.session_files,
                policy=self.policy,
                on_start=started,
            )
            return writer.run(claim)

        # A file another writer holds (FileBusyError) is waited for: that writer stops once
        # it finds its claim lapsed, and closes the file.
        result = supervise(
            attempt,
            stop=claim,
            what=f"scan {scan.db_name}",
            restart_on=(*UNREACHABLE, FileBusyError, *RETRY_ERRORS),
            # Waits and worker crashes are logged where they happen: no traceback each second.
            wait_on=(FileBusyError, *RETRY_ERRORS),
        )
        return result if result is not None and result.complete else None

    def _worker_config(self, claim: _AnyClaim) -> WorkerConfig:
        settings = self.store.settings
        return WorkerConfig(
            redis_url=self.store.url,
            prefix=settings.prefix,
            lease_time=settings.lease_time,
            retention_time=settings.retention_time,
            root=str(self.policy.root),
            allowed=tuple(str(a) for a in self.policy.allowed),
            umask=self.policy.umask,
            strict_names=self.strict_names,
            flush_period=self.files.flush_period,
            owner=self.owner,
            token=claim.token or "",
            scan_fence=isinstance(claim, ScanClaim),
            compression=self.compression,
            layout=self.layout,
        )

    def _holds(self, session: str, claim: _AnyClaim) -> bool:
        """The fence before a verdict: the claim, of the session or the scan, holds now."""
        if isinstance(claim, ScanClaim):
            return claim.holds()
        return self.registry.holds(session, claim.token)

    # -- pool mode (what WriterPool asks of its host) -----------------------------------------
    def pool_publish_floor(self, session: str) -> None:
        """Raise the numbering floor of ``session`` from this writer's files and registry."""
        self._publish_floor(self._sessions[session])

    def pool_write(self, session: str, scan: ScanNode, claim: ScanClaim) -> None:
        """Write ``scan`` under its scan claim (pool mode)."""
        self._on_scan(self._sessions[session], scan, claim)

    def pool_running(self, session: str, name: str) -> bool:
        """True while scan ``name`` of ``session`` is being written here."""
        with self._lock:
            return name in self._sessions[session].running

    def pool_status(self, session: str) -> dict[str, Any]:
        """This writer's status for ``session``, published in its pool member record."""
        return self._status(self._sessions[session], writing=True)

    def pool_saved(self, session: str, number: int) -> bool:
        """True when scan ``number`` of ``session`` is recorded as saved."""
        return self.registry.is_saved(session, number)

    def _done(self, session: _Session, scan: ScanNode) -> None:
        with self._lock:
            session.running.discard(scan.name)

    # -- claims and status --------------------------------------------------------------------
    @property
    def _owned(self) -> set[str]:
        """Names of the sessions this writer owns now."""
        return {s.name for s in self._sessions.values() if s.owned}

    def status(self, session: str) -> dict[str, Any]:
        """The status of this writer for ``session``, as :func:`writer_status` returns it."""
        state = self._sessions[session]
        return self._status(state, writing=state.owned or self.pool is not None)

    def _status(self, session: _Session, *, writing: bool) -> dict[str, Any]:
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

    def _heartbeat_loop(self) -> None:
        while True:
            for session in self._sessions.values():
                try:
                    self._renew(session)
                except Exception:  # a dead heartbeat would let every claim lapse
                    logger.exception("session %s: claim not renewed", session.name)
            if self._stop.wait(HEARTBEAT_PERIOD):
                return

    def _renew(self, session: _Session) -> None:
        """Take or renew the claim on ``session``, or learn that another writer holds it."""
        sent = time.monotonic()  # the claim lasts HEALTH_TTL from *before* Redis renewed it
        try:
            # The status published is the one that holds once the script has recorded the
            # claim (it writes nothing otherwise): "writing" is true from the first claim on.
            other = self.registry.claim(
                session.name, self._status(session, writing=True), HEALTH_TTL
            )
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
            logger.warning("session %s: cannot renew the claim: %s", session.name, exc)
            return
        if other is None:
            self._hold(session, sent + HEALTH_TTL)
        else:
            self._give_up(session, other)

    def _hold(self, session: _Session, valid_until: float) -> None:
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
            session.claim = _Claim(valid_until, self.registry.tokens.get(session.name))
            session.other = None

    def _give_up(self, session: _Session, other: str) -> None:
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
            status = writer_status(session, store=self.store) or {}
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
