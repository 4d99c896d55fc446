"""The service's side of the worker processes: start one per scan, read its report, count crashes.

A libhdf5 crash (a segfault on a damaged file, an abort on a failed assertion) kills the
process it happens in. With ``WriterService(isolate=True)`` (the default, as for ``scanstream
writer``) scans are written by :mod:`scanstream.writer.worker` processes, one scan at a
time per process (kept warm and reused for the next scans once a scan ended cleanly): a
crash loses that attempt at that scan only, and the service writes the scan again from Redis
into a fresh file. A scan whose worker dies of a signal :data:`MAX_CRASHES` times is FAILED with
the signal named, instead of crashing again and again.

At most ``workers`` (:data:`DEFAULT_WORKERS`) scans are written at once by one service: the
others wait for a free worker. The workers are forked from a preloaded fork server
(:mod:`scanstream.writer.zygote`), so a new one costs a fork, not the imports.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import subprocess
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..exceptions import InvalidArgumentError, WriterError
from ..subscribe.events import StopHandler
from .retry import WriterEnvironmentError
from .scan_result import WriteResult
from .zygote import ForkedWorker, Zygote

__all__ = [
    "DEFAULT_WORKERS",
    "MAX_CRASHES",
    "WorkerConfig",
    "WorkerCrashedError",
    "WorkerProcesses",
    "check_workers",
]

logger = logging.getLogger(__name__)

#: Crashes of the process writing a scan after which the scan is FAILED.
MAX_CRASHES = 2
#: Idle workers kept warm for the next scans (at most ``workers``).
MAX_IDLE = 2
#: Worker processes alive at once (busy and idle) by default: more scans wait for a free one.
#: One scan's writing uses about one core (HDF5 calls, compression, Redis reads), so more
#: workers than the host's free cores only share them (docs/deployment.md, "How many writers").
DEFAULT_WORKERS = 4


def check_workers(workers: int) -> int:
    """``workers`` if it is a valid number of worker processes (an int of at least 1).

    Raises
    ------
    InvalidArgumentError
        It is not an int, or less than 1.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InvalidArgumentError(
            f"workers={workers!r}: the number of scans a writer writes at once must be an "
            f"integer of at least 1 (default {DEFAULT_WORKERS})"
        )
    return workers


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker needs from the service that starts it."""

    redis_url: str
    prefix: str
    lease_time: float
    retention_time: float
    root: str
    allowed: tuple[str, ...]
    umask: int | None
    strict_names: bool
    flush_period: float
    owner: str
    token: str
    compression: str
    layout: str
    #: Pool mode: ``token`` is that of the scan's claim, not the session's.
    scan_fence: bool = False

    def to_json(self) -> dict[str, Any]:
        """The configuration as JSON values."""
        return asdict(self)

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> WorkerConfig:
        """The configuration from :meth:`to_json`'s values."""
        return cls(**{**values, "allowed": tuple(values["allowed"])})


class WorkerCrashedError(WriterError):
    """The process writing a scan died of a signal (the scan is written again from Redis)."""


class _RetryError(WriterError):
    """The worker could not reach Redis: the attempt is made again."""


class WorkerProcesses:
    """The worker processes of a service: started, watched, stopped with it.

    Parameters
    ----------
    workers : int
        Worker processes alive at once, so scans written at once (:data:`DEFAULT_WORKERS`).

    Raises
    ------
    InvalidArgumentError
        ``workers`` is less than 1 (:func:`check_workers`).
    """

    def __init__(self, workers: int = DEFAULT_WORKERS) -> None:
        self.limit = check_workers(workers)
        self._max_idle = min(MAX_IDLE, self.limit)
        self._lock = threading.Lock()
        #: Scan db_name -> its live worker process.
        self.running: dict[str, ForkedWorker] = {}
        self._crashes: dict[str, int] = {}
        self._idle: list[ForkedWorker] = []
        self._busy = 0
        self._stopped = False
        self._free = threading.Condition(self._lock)
        self._zygote = Zygote()

    def _start(self) -> ForkedWorker:
        return self._zygote.fork()

    def warm(self, count: int = 1) -> None:
        """Start ``count`` idle workers now, so that the first scans do not wait for them."""
        with self._free:
            try:
                while not self._stopped and len(self._idle) < min(count, self._max_idle):
                    self._idle.append(self._start())
            except WriterError as exc:  # each scan tries again, and fails with the reason
                logger.error("cannot start a worker process: %s", exc)

    def _take(self, stop: StopHandler) -> ForkedWorker | None:
        """An idle worker, or a new one; None if ``stop`` first.

        Waits while :attr:`limit` workers are busy.
        """
        with self._free:
            while True:
                if self._stopped:
                    raise WriterError("the writer is stopping")
                if stop.stopped:
                    return None
                while self._idle:
                    proc = self._idle.pop()
                    if proc.poll() is None:
                        self._busy += 1
                        break
                    _close(proc)
                else:
                    if self._busy + len(self._idle) >= self.limit:
                        self._free.wait(0.1)
                        continue
                    proc = self._start()
                    self._busy += 1
                if not self._idle and self._busy < self.limit:
                    self._idle.append(self._start())  # the next scan starts at once
                return proc

    def _give_back(self, proc: ForkedWorker, *, reusable: bool) -> None:
        """Keep a worker that completed its scan for the next one (up to :data:`MAX_IDLE`)."""
        with self._free:
            self._busy -= 1
            self._free.notify()
            if reusable and not self._stopped and len(self._idle) < self._max_idle:
                if proc.poll() is None:
                    self._idle.append(proc)
                    return
        _retire(proc)

    def write(
        self,
        session: str,
        number: int,
        db_name: str,
        config: WorkerConfig,
        stop: StopHandler,
        on_start: Callable[[str, str], None],
    ) -> WriteResult:
        """Write scan ``number`` of ``session`` in a worker; return its result.

        A worker writes one scan at a time (so a crash is the crash of that scan), and is
        kept for the next scan once it has reported a complete result.

        Raises
        ------
        WorkerCrashedError
            The worker died of a signal (fewer than :data:`MAX_CRASHES` times: retried by
            the caller; then with the reason that fails the scan).
        WriterError
            The worker reported an error (the scan fails with it).
        """
        proc = self._take(stop)
        if proc is None:
            return WriteResult(Path(""))  # stopped while waiting for a worker: incomplete
        with self._lock:
            self.running[db_name] = proc
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(
                json.dumps({"session": session, "number": number, "config": config.to_json()})
                + "\n"
            )
            proc.stdin.flush()
        except OSError:
            pass  # it died already: its exit code says how
        reported = threading.Event()
        watcher = threading.Thread(
            target=_terminate_on_stop,
            args=(proc, stop, reported),
            name=f"watch-{db_name}",
            daemon=True,
        )
        watcher.start()
        report: dict[str, Any] = {}
        reusable = False
        try:
            for line in proc.stdout:
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if "started" in message:
                    on_start(message["started"], message["entry"])
                    continue
                report = message
                break
            reported.set()
            watcher.join(timeout=5)
            reusable = "result" in report and not report.get("stopped") and not stop.stopped
        finally:
            reported.set()
            with self._lock:
                self.running.pop(db_name, None)
            self._give_back(proc, reusable=reusable)
        code = proc.returncode
        if not report and code is not None and code < 0 and code != -signal.SIGTERM:
            return self._crashed(db_name, -code)
        if "result" in report:
            return _result(report["result"])
        if report.get("retry"):
            raise _RetryError(report.get("error", "Redis unreachable"))
        if stop.stopped:
            return WriteResult(Path(""))  # stopped before it reported: incomplete
        if report.get("environment"):
            raise WriterEnvironmentError(report.get("error") or "the disk refused the file")
        raise WriterError(report.get("error") or f"the writing process exited with code {code}")

    def _crashed(self, db_name: str, signum: int) -> WriteResult:
        name = (
            signal.Signals(signum).name if signum in signal.Signals._value2member_map_ else signum
        )
        with self._lock:
            count = self._crashes.get(db_name, 0) + 1
            self._crashes[db_name] = count
        if count >= MAX_CRASHES:
            raise WriterError(
                f"the process writing it died of {name} {count} times (a libhdf5 crash?); "
                "not tried again: the scan stays in Redis, run the writer again to retry"
            )
        logger.error(
            "scan %s: the process writing it died of %s; writing it again from Redis", db_name, name
        )
        raise WorkerCrashedError(f"the process writing {db_name} died of {name}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM every worker (each stops before its next HDF5 call), then SIGKILL."""
        with self._lock:
            self._stopped = True
            procs = list(self.running.values())
            idle, self._idle = self._idle, []
        for proc in idle:
            _retire(proc)
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
        self._zygote.close()


#: Errors after which the attempt is made again.
RETRY_ERRORS: tuple[type[Exception], ...] = (WorkerCrashedError, _RetryError)


def _terminate_on_stop(proc: ForkedWorker, stop: StopHandler, reported: threading.Event) -> None:
    """SIGTERM the worker once ``stop`` is stopped (the worker fences itself too)."""
    while proc.poll() is None and not reported.is_set():
        if stop.stopped:  # a claim stops by time too (it lapses): poll it, do not wait on it
            if proc.poll() is None:
                proc.terminate()
            return
        # Woken at once when the worker has reported: the caller joins this thread before it
        # records the verdict (a plain sleep here added 50 ms on average to every scan's save).
        reported.wait(0.1)


def _retire(proc: ForkedWorker) -> None:
    """End a worker: EOF on its stdin ends it between scans; SIGKILL if it does not go."""
    with contextlib.suppress(OSError):
        if proc.stdin is not None:
            proc.stdin.close()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    _close(proc)


def _close(proc: ForkedWorker) -> None:
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


def _result(values: dict[str, Any]) -> WriteResult:
    return WriteResult(
        Path(values["path"]),
        entries=list(values["entries"]),
        points=dict(values["points"]),
        state=values["state"],
        warnings=list(values["warnings"]),
        scan_file=Path(values["scan_file"]) if values["scan_file"] else None,
        problems=list(values["problems"]),
    )
