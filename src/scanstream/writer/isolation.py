"""The service's side of the worker processes: start one per scan, read its report, count crashes.

A libhdf5 crash (a segfault on a damaged file, an abort on a failed assertion) kills the
process it happens in. With ``WriterService(isolate=True)`` (the default of ``scanstream
writer``) every scan is written by :mod:`scanstream.writer.worker` in a process of its own:
a crash loses that attempt only, and the service writes the scan again from Redis into a
fresh file. A scan whose worker dies of a signal :data:`MAX_CRASHES` times is FAILED with
the signal named, instead of crashing again and again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..exceptions import WriterError
from ..subscribe.events import StopHandler
from .scan_writer import WriteResult

__all__ = ["MAX_CRASHES", "WorkerConfig", "WorkerCrashedError", "WorkerProcesses"]

logger = logging.getLogger(__name__)

#: Crashes of the process writing a scan after which the scan is FAILED.
MAX_CRASHES = 2


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
    """The worker processes of a service: started, watched, stopped with it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: Scan db_name -> its live worker process.
        self.running: dict[str, subprocess.Popen[str]] = {}
        self._crashes: dict[str, int] = {}
        self._spare: subprocess.Popen[str] | None = None
        self._stopped = False

    def _start(self) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "scanstream.writer.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def _take(self) -> subprocess.Popen[str]:
        """A worker ready for a scan: the warm spare (then a new spare starts), or a new one."""
        with self._lock:
            if self._stopped:
                raise WriterError("the writer is stopping")
            proc, self._spare = self._spare, None
            if proc is None or proc.poll() is not None:
                if proc is not None:
                    _close(proc)
                proc = self._start()
            self._spare = self._start()
        return proc

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

        Raises
        ------
        WorkerCrashedError
            The worker died of a signal (fewer than :data:`MAX_CRASHES` times: retried by
            the caller; then with the reason that fails the scan).
        WriterError
            The worker reported an error (the scan fails with it).
        """
        proc = self._take()
        with self._lock:
            self.running[db_name] = proc
        assert proc.stdin is not None
        try:
            proc.stdin.write(
                json.dumps({"session": session, "number": number, "config": config.to_json()})
                + "\n"
            )
            proc.stdin.close()
        except OSError:
            pass  # it died already: its exit code says how
        watcher = threading.Thread(
            target=_terminate_on_stop, args=(proc, stop), name=f"watch-{db_name}", daemon=True
        )
        watcher.start()
        report: dict[str, Any] = {}
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if "started" in message:
                    on_start(message["started"], message["entry"])
                else:
                    report = message
            code = proc.wait()
        finally:
            with self._lock:
                self.running.pop(db_name, None)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            _close(proc)
            watcher.join(timeout=5)
        if code < 0 and code != -signal.SIGTERM:
            return self._crashed(db_name, -code)
        if "result" in report:
            return _result(report["result"])
        if report.get("retry"):
            raise _RetryError(report.get("error", "Redis unreachable"))
        if stop.stopped:
            return WriteResult(Path(""))  # stopped before it reported: incomplete
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
            spare, self._spare = self._spare, None
        if spare is not None:
            spare.kill()
            spare.wait()
            _close(spare)
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()


#: Errors after which the attempt is made again.
RETRY_ERRORS: tuple[type[Exception], ...] = (WorkerCrashedError, _RetryError)


def _terminate_on_stop(proc: subprocess.Popen[str], stop: StopHandler) -> None:
    """SIGTERM the worker once ``stop`` is stopped (the worker fences itself too)."""
    while proc.poll() is None:
        if stop.stopped:  # a claim stops by time too (it lapses): poll it, do not wait on it
            if proc.poll() is None:
                proc.terminate()
            return
        time.sleep(0.1)


def _close(proc: subprocess.Popen[str]) -> None:
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
