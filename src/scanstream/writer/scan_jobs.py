"""Writing the scans: a thread per scan, its retries, and its verdict, recorded behind a fence.

Each scan not saved yet gets its own thread (:meth:`ScanJobs.start`), so scans running at
once are written at once; finished scans caught up after a (re)start share
:data:`CATCH_UP_WORKERS` slots. A scan is written by a
:class:`~scanstream.writer.scan_writer.ScanWriter`, in a worker process
(:mod:`scanstream.writer.isolation`) or in the thread itself, again and again while Redis is
unreachable, the file is held by another writer or the worker crashed (a replay is
idempotent), and after a failure of its environment (disk full, not writable:
:mod:`scanstream.writer.retry`) again after a pause, FAILED meanwhile with the reason saying
when; its verdict (WRITING, SAVED, FAILED, NOT_SAVED) goes into the scan hash only
while the claim it is written under, of the session or of the scan (pool mode), holds. In a
pool, a scan this writer failed while another member may still try it is left WAITING (with
the reason), so that the verdict turns final only with the last attempt.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import redis

from .._transport.connection import DataStore
from ..admin.wording import counted
from ..exceptions import ScanNotFoundError, ServerResetError
from ..models import RETRY_NOTE, SavingState, SavingVerdict
from ..subscribe.lost import record_if_lost_by_number
from ..subscribe.tree import ScanNode
from .files import FileBusyError, OpenFiles
from .isolation import RETRY_ERRORS, WorkerConfig, WorkerProcesses
from .paths import WritePolicy
from .registry import WriterRegistry
from .retry import (
    RETRY_DELAYS,
    WriterEnvironmentError,
    error_name,
    is_environment_failure,
    retry_delay,
)
from .scan_claims import ScanClaim
from .scan_result import WriteResult
from .scan_writer import ScanWriter
from .session_claims import AnyClaim, SessionClaim, SessionState
from .session_file import SessionFiles
from .supervise import UNREACHABLE, supervise

__all__ = ["CATCH_UP_WORKERS", "ScanJobs"]

logger = logging.getLogger(__name__)

#: Finished scans caught up at once after a (re)start; running scans always get a thread.
CATCH_UP_WORKERS = 4
#: Seconds before an ended scan's expiry from Redis when its last retry starts.
_EXPIRY_MARGIN = 5.0


class ScanJobs:
    """Writes each scan it is given in a thread of its own, and records its verdict.

    Parameters
    ----------
    registry : WriterRegistry
        This writer's records in Redis (verdicts, saved set, the session claims' fence).
    root : Path
        The writer's root (resolved).
    policy : WritePolicy
        Where files may go.
    files : OpenFiles
        The HDF5 files open in this process (``isolate=False``).
    session_files : SessionFiles
        The session files' links (``isolate=False``).
    workers : WorkerProcesses
        The worker processes writing the scans (``isolate=True``).
    isolate : bool
        Write in worker processes (True) or in this process's threads.
    strict_names, compression, layout
        As for :class:`~scanstream.writer.service.WriterService`.
    lock : threading.Lock
        The service's lock over the sessions' state.
    spawn : callable
        ``spawn(target, name, *args)`` starts a thread of the service.
    others_may_try : callable
        ``others_may_try(session, number)``: True when another writer of the pool may still
        take a scan this writer failed (its verdict is then WAITING, not FAILED).
    retry_delays : sequence of float
        Pauses (s) before the retries of a scan that failed for its environment (disk full,
        not writable; :mod:`scanstream.writer.retry`), the last one repeated; empty: no
        retries (the scan is FAILED until the writer's next start).
    """

    def __init__(
        self,
        registry: WriterRegistry,
        *,
        root: Path,
        policy: WritePolicy,
        files: OpenFiles,
        session_files: SessionFiles,
        workers: WorkerProcesses,
        isolate: bool,
        strict_names: bool,
        compression: str,
        layout: str,
        lock: threading.Lock,
        spawn: Callable[..., None],
        others_may_try: Callable[[str, int], bool],
        retry_delays: Sequence[float] = RETRY_DELAYS,
    ) -> None:
        self.registry = registry
        self.store: DataStore = registry.store
        self.owner = registry.owner
        self.policy = policy
        self.root = root
        self.files = files
        self.session_files = session_files
        self.workers = workers
        self.isolate = isolate
        self.strict_names = strict_names
        self.compression = compression
        self.layout = layout
        self._lock = lock
        self._spawn = spawn
        self._others_may_try = others_may_try
        self.retry_delays = tuple(retry_delays)
        self._catch_up_slots = threading.Semaphore(CATCH_UP_WORKERS)

    def start(self, session: SessionState, scan: ScanNode, claim: AnyClaim) -> None:
        """Write ``scan`` under ``claim`` in a thread of its own, unless saved or being written.

        A scan whose metadata cannot be read is FAILED (or left, expired from Redis) here; one
        with ``save=False`` gets its NOT_SAVED verdict.

        Raises
        ------
        redis.ConnectionError, redis.TimeoutError
            Redis is unreachable while the scan is read (the caller retries).
        """
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
            self.done(session, scan)
            return
        except UNREACHABLE:
            self.done(session, scan)
            raise
        except Exception as exc:  # a malformed scan: that scan fails, the session goes on
            # Unless a writer saved it before garbage was written over its hash (and over the
            # saved set, or it would not be read again): its file is complete, and its SAVED
            # verdict must stay (writing it again would delete that file).
            try:
                saved = self._verdict_final(session, scan)
            except UNREACHABLE:
                self.done(session, scan)
                raise
            if not saved:
                self._failed(session, scan, claim, _error_text(exc))
            self.done(session, scan)
            return
        if lost is not None:  # recorded lost: nothing to write, its data is gone
            self._failed(session, scan, claim, lost)
            self.done(session, scan)
            return
        # Before the verdict check: a scan with saving off reads as NOT_SAVED without any
        # recorded verdict (entries.parse_saving), and its writer records one all the same.
        if info.get("save") is False:
            logger.info("scan %s: not saved (scan_info save=False)", scan.db_name)
            verdict = SavingVerdict(
                SavingState.NOT_SAVED, reason="saving is off (scan_info save=False)"
            )
            if self._record(session, scan, claim, verdict):
                self.registry.mark_saved(session.name, scan.number)
            self.done(session, scan)
            return
        try:
            final = finished and self._verdict_final(session, scan)
        except UNREACHABLE:
            self.done(session, scan)
            raise
        if final:
            self.done(session, scan)
            return
        self._spawn(self._write_scan, f"scan-{scan.db_name}", session, scan, claim, finished)

    def _verdict_final(self, session: SessionState, scan: ScanNode) -> bool:
        """True when ``scan``'s hash holds a SAVED or NOT_SAVED verdict (then put in the
        saved set, where a writer killed between the two records left it out).

        The verdict is recorded first and the saved set after (another hash slot on a
        cluster: not one script); a scan found SAVED in its hash is never written again,
        since writing again deletes the file users were told is complete.
        """
        try:
            state = scan.saving.state
        except ScanNotFoundError:
            return False
        if state not in (SavingState.SAVED, SavingState.NOT_SAVED):
            return False
        logger.info(
            "scan %s: %s by an earlier writer; recorded in the saved set",
            scan.db_name,
            state.value,
        )
        self.registry.mark_saved(session.name, scan.number)
        return True

    def _record(
        self, session: SessionState, scan: ScanNode, claim: AnyClaim, verdict: SavingVerdict
    ) -> bool:
        """Record ``verdict`` in the scan hash, only while this writer's claim holds (fence)."""
        if claim.stopped or not self._holds(session.name, claim):
            return False
        verdict = dataclasses.replace(verdict, writer=self.owner, time=time.time())
        try:
            self.registry.record_verdict(session.name, scan.number, verdict)
        except redis.RedisError as exc:
            logger.warning("scan %s: verdict %s not recorded: %s", scan.db_name, verdict, exc)
            return False
        return True

    def _failed(self, session: SessionState, scan: ScanNode, claim: AnyClaim, message: str) -> None:
        """Log and count the failure of ``scan``, and record its FAILED verdict (fenced)."""
        # A scan whose keys are gone before they could have expired was lost (a cluster
        # master restarted empty): recorded ended FAILED, with the verdict below.
        lost = self._record_if_lost(session, scan)
        if lost is not None:
            message = f"{message}; {lost}"
        if _data_gone(message) and not message.startswith(_GONE):
            message = f"{_GONE}: {message}"
        logger.error("scan %s NOT saved: %s", scan.db_name, message)
        with self._lock:  # one entry per scan: a retried scan's last failure
            _forget_errors(session, scan.name)
            session.errors.append(
                {"scan": scan.name, "number": scan.number, "error": message, "time": time.time()}
            )
        with contextlib.suppress(Exception):
            verdict = SavingVerdict(SavingState.FAILED, reason=message)
            if isinstance(claim, ScanClaim) and self._others_may_try(session.name, scan.number):
                # Not final yet: another writer of the pool tries the scan (decision 0014), and
                # its verdict is the final one. A publisher waiting for it keeps waiting.
                verdict = SavingVerdict(
                    SavingState.WAITING,
                    reason=f"not saved by writer {self.owner} ({message}); another writer of "
                    "the pool tries it",
                )
            self._record(session, scan, claim, verdict)

    def _record_if_lost(self, session: SessionState, scan: ScanNode) -> str | None:
        """The error of ``scan`` if its keys are gone and it was lost (:mod:`..subscribe.lost`)."""
        store = self.registry.store
        try:
            if store.redis.exists(store.keys.scan(session.name, scan.number)):
                return None
            return record_if_lost_by_number(store, session.name, scan.number)
        except (redis.exceptions.RedisError, ServerResetError) as exc:
            logger.warning("scan %s: not checked for a loss: %s", scan.db_name, exc)
            return None

    def _gone(self, session: SessionState, scan: ScanNode) -> str | None:
        """Why ``scan``, whose write stopped with its claim, can no longer be saved by anyone:
        its data left Redis (a server reset stops the claim as well, and the walk of the next
        claim does not find the scan). None while its keys are there, or when it was saved."""
        store = self.registry.store
        try:
            if store.redis.exists(store.keys.scan(session.name, scan.number)):
                return None
            if self.registry.is_saved(session.name, scan.number):
                return None
        except ServerResetError as exc:
            return f"{_GONE}: {_error_text(exc)}"
        except redis.exceptions.RedisError:
            return None  # unknown: the next claim finds the scan if it is there
        return (
            f"{_GONE} (its keys are gone: the server restarted empty or was flushed, or the "
            "scan was deleted)"
        )

    def _write_scan(
        self, session: SessionState, scan: ScanNode, claim: AnyClaim, finished: bool
    ) -> None:
        """Write ``scan``; after a failure of its environment, again after each pause of
        ``retry_delays`` while the claim holds and the scan's data is in Redis."""
        try:
            failures = 0
            while True:
                error = self._write_once(session, scan, claim, finished)
                if error is None or claim.stopped:
                    return
                failures += 1
                pause = self._retry_pause(session, scan, claim, error, failures)
                if pause is None:
                    return
                # The thread waits, not a catch-up slot nor a worker: other scans go on.
                if claim.wait(pause):
                    return  # stopped or lost: the next owner writes it at its start
                if not self._still_in_redis(session, scan, claim, error):
                    return
                logger.info("scan %s: retry %d after %s", scan.db_name, failures, error)
        finally:
            self.done(session, scan)

    def _write_once(
        self, session: SessionState, scan: ScanNode, claim: AnyClaim, finished: bool
    ) -> Exception | None:
        """One attempt at ``scan``: its verdict, or the failure of its environment (the
        caller retries it, its verdict not recorded yet); None when there is nothing to retry."""
        slot = self._catch_up_slots if finished else contextlib.nullcontext()
        try:
            with slot:
                started = time.monotonic()
                result = self._write_until_done(session, scan, claim)
            if result is None or claim.stopped:  # stopped, or the session was lost meanwhile
                gone = self._gone(session, scan)
                if gone is not None:  # a server reset lapses the claim too: count the scan
                    self._failed(session, scan, claim, gone)
                return None
            if result.problems:
                self._failed(
                    session,
                    scan,
                    claim,
                    "the file does not hold every sealed point: " + "; ".join(result.problems),
                )
                return None
            verdict = SavingVerdict(
                SavingState.SAVED,
                file=str(result.path),
                entries=tuple(result.entries),
                points=dict(result.points),
            )
            if not self._record(session, scan, claim, verdict):
                return None  # the claim lapsed meanwhile: the new owner decides
            self.registry.mark_saved(session.name, scan.number)
            with self._lock:  # scan threads of one session finish concurrently
                session.saved += 1
                # A failure retried with success is no longer a failure of this writer.
                _forget_errors(session, scan.name)
            # The scan's points (its longest channel), as `scanstream scan` and `ls` count
            # them; the sum over its channels read "44 points" for an 11-point scan.
            points = max(result.points.values(), default=0)
            logger.info(
                "saved %s (%s): %s in %s %s of %s (%.2f s)",
                scan.db_name,
                result.state,
                counted(points, "point"),
                counted(len(result.entries), "entry", "entries"),
                ", ".join(result.entries),
                result.path,
                time.monotonic() - started,
            )
        except Exception as exc:
            text = _error_text(exc)
            if claim.stopped:
                # A server reset also lapses the session's claim; the scan must be counted all
                # the same: no writer can save it now, and the new claim's walk will not see it.
                if _data_gone(text):
                    self._failed(session, scan, claim, text)
                return None
            # Pool mode: a failed scan goes to another member or ends (decision 0014).
            if (
                self.retry_delays
                and is_environment_failure(exc)
                and isinstance(claim, SessionClaim)
            ):
                return exc
            self._failed(session, scan, claim, text)
        return None

    def _retry_pause(
        self,
        session: SessionState,
        scan: ScanNode,
        claim: AnyClaim,
        error: Exception,
        failures: int,
    ) -> float | None:
        """Record ``scan`` FAILED, saying when it is tried again; the pause (None: not again).

        An ended scan is tried once more just before its data expires from Redis, and not
        after: then it stays FAILED, saying that its data expired before it could be saved.
        """
        pause = retry_delay(self.retry_delays, failures)
        assert pause is not None  # retry_delays is not empty (see _write_once)
        text = _error_text(error)
        try:
            ttl = self._expires_in(session, scan)
        except redis.RedisError:
            ttl = None  # not known now: the check before the retry finds out
        if ttl is not None:
            if ttl <= _EXPIRY_MARGIN:
                self._failed(
                    session,
                    scan,
                    claim,
                    f"{text}; not tried again: its data expires from Redis in {ttl:.0f} s, "
                    "so this scan is lost (it cannot be saved any more)",
                )
                return None
            pause = min(pause, ttl - _EXPIRY_MARGIN)
        when = time.strftime("%H:%M:%S", time.localtime(time.time() + pause))
        self._failed(
            session,
            scan,
            claim,
            f"{text}; {RETRY_NOTE} in {pause:.3g} s (at {when}, retry "
            f"{failures}), and at once on its restart",
        )
        return pause

    def _expires_in(self, session: SessionState, scan: ScanNode) -> float | None:
        """Seconds until an ended ``scan`` expires from Redis; None while it runs or keeps.

        Raises
        ------
        redis.RedisError
            Redis cannot be read.
        """
        store = self.registry.store
        key = store.keys.scan(session.name, scan.number)
        try:
            if not scan.state.is_final:
                return None  # a running scan's keys are kept by its publisher's lease
        except ScanNotFoundError:
            return 0.0
        ttl = store.redis.pttl(key)
        if ttl == -2:
            return 0.0
        return None if ttl < 0 else ttl / 1000

    def _still_in_redis(
        self, session: SessionState, scan: ScanNode, claim: AnyClaim, error: Exception
    ) -> bool:
        """True when ``scan`` is still in Redis, to be tried again; else record it lost."""
        store = self.registry.store
        try:
            if store.redis.exists(store.keys.scan(session.name, scan.number)):
                return True
        except redis.RedisError:
            return True  # the attempt waits for Redis (_write_until_done)
        message = (
            f"{_error_text(error)}; its data expired from Redis before a retry could save "
            "it: this scan is lost"
        )
        self._failed(session, scan, claim, message)  # logged and in --status (no hash left)
        return False

    def _write_until_done(
        self, session: SessionState, scan: ScanNode, claim: AnyClaim
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
            store=self.store,
            stop=claim,
            what=f"scan {scan.db_name}",
            restart_on=(*UNREACHABLE, FileBusyError, *RETRY_ERRORS),
            # Waits and worker crashes are logged where they happen: no traceback each second.
            wait_on=(FileBusyError, *RETRY_ERRORS),
        )
        return result if result is not None and result.complete else None

    def _worker_config(self, claim: AnyClaim) -> WorkerConfig:
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

    def _holds(self, session: str, claim: AnyClaim) -> bool:
        """The fence before a verdict: the claim, of the session or the scan, holds now."""
        if isinstance(claim, ScanClaim):
            return claim.holds()
        return self.registry.holds(session, claim.token)

    def done(self, session: SessionState, scan: ScanNode) -> None:
        """``scan`` is no longer written here."""
        with self._lock:
            session.running.discard(scan.name)


def _forget_errors(session: SessionState, name: str) -> None:
    """Drop the errors recorded for scan ``name`` (called under the service's lock)."""
    kept = [e for e in session.errors if e["scan"] != name]
    session.errors.clear()
    session.errors.extend(kept)


#: The start of the error of a scan whose data the server lost before it was saved.
_GONE = "its data was gone from Redis before it was saved"


def _data_gone(text: str) -> bool:
    """True for a failure text saying the server lost the scan's data (a worker process reports
    its error as text: the type name is what is left of it)."""
    return f"{ServerResetError.__name__}: " in text


def _error_text(exc: Exception) -> str:
    """``TypeName: message`` of a scan's failure, the type named once: the error a worker
    process reports comes as that text already, raised again here as a WriterError."""
    text = str(exc)
    name = error_name(exc)
    if isinstance(exc, WriterEnvironmentError) and re.match(r"[A-Z]\w*Error: ", text):
        return text  # a worker's report, raised again as retryable: its own type kept
    return text if text.startswith(f"{name}: ") else f"{name}: {text}"
