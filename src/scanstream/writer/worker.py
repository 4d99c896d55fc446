"""Scans written in a process apart from the service, so that a libhdf5 crash stays there.

``python -m scanstream.writer.worker`` (started by
:class:`~scanstream.writer.service.WriterService` with ``isolate=True``) reads its
assignments on stdin, one JSON line each (scan and settings; not in argv, so that no
password shows in ``ps``), and writes one scan at a time with a
:class:`~scanstream.writer.scan_writer.ScanWriter`. It reports on stdout, one JSON line per
message: ``{"started": file, "entry": name}`` once the scan's file is chosen, then
``{"result": ...}`` or ``{"error": text, "retry": bool, "environment": bool}`` (a
failure the service retries later, :mod:`scanstream.writer.retry`); then it waits for the next
assignment (the service keeps a few workers warm), or exits at EOF.

The worker fences itself: before each event (at most every :data:`FENCE_PERIOD` s, a Redis
read) it checks that the claim of the service that started it still holds the session with
the same token. A frozen or killed service stops renewing its claim; once it lapses (or is
taken over), the worker stops before its next HDF5 call and closes its file, which releases
the file's lock for the new owner. SIGTERM stops it the same way, and so does SIGINT: a
terminal's Ctrl-C signals the whole process group, the workers with their service, which then
stops them anyway.

A service killed outright (SIGKILL) is noticed sooner, at the same checks: the read end of the
worker's stdout closes with it. The worker then stops the same way (its file closed, valid up
to the last batch written, never reported saved: the next writer writes the scan again from
Redis), logs one line saying so, and exits.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import select
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import redis

from .._transport.connection import DataStore
from .._transport.settings import Settings
from ..exceptions import ServerResetError
from ..subscribe.events import StopHandler
from ..subscribe.tree import get_session_node
from .files import FileBusyError, OpenFiles
from .isolation import WorkerConfig
from .paths import WritePolicy
from .registry import WriterRegistry
from .retry import error_name, is_environment_failure
from .scan_claims import ClaimFence, ScanClaims
from .scan_result import WriteResult
from .scan_writer import ScanWriter
from .supervise import UNREACHABLE

__all__ = ["FENCE_PERIOD", "WORKER_LOG_FILE_ENV", "WORKER_LOG_LEVEL_ENV", "main"]

logger = logging.getLogger(__name__)

#: Errors the service retries: Redis unreachable, or the file still locked by a writer that
#: lost the session (frozen).
_RETRIED: tuple[type[Exception], ...] = (*UNREACHABLE, FileBusyError)
#: Seconds between two checks of the fence (the service's claim) in Redis.
FENCE_PERIOD = 0.25


class _Reports:
    """The JSON lines to the service, on stdout; :attr:`gone` once nobody reads them."""

    def __init__(self) -> None:
        self.gone = False

    def unread(self) -> bool:
        """True once the service's end of the pipe is closed (the service is gone)."""
        if not self.gone:
            try:
                poller = select.poll()
                # POLLERR on the write end of a pipe whose read end is closed everywhere.
                poller.register(sys.stdout.fileno(), 0)
                if any(mask & select.POLLERR for _, mask in poller.poll(0)):
                    self._lost()
            except (OSError, ValueError):  # not a pipe, or closed: nothing to tell
                pass
        return self.gone

    def say(self, **message: Any) -> None:
        """Send one message (nothing once the service is gone)."""
        if self.gone:
            return
        try:
            sys.stdout.write(json.dumps(message) + "\n")
            sys.stdout.flush()
        except BrokenPipeError:
            self._lost()

    def _lost(self) -> None:
        self.gone = True
        # What is still buffered would fail again in the interpreter's last flush, with a
        # traceback: the rest goes to /dev/null.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


_REPORTS = _Reports()


class _Fence(StopHandler):
    """Stopped by SIGTERM, once the service's claim no longer holds the session, or once the
    service is gone (nobody reads the reports)."""

    def __init__(
        self,
        registry: WriterRegistry | ClaimFence,
        session: str,
        token: str,
        terminated: threading.Event,
    ) -> None:
        super().__init__()
        self._terminated = terminated
        self._registry = registry
        self._session = session
        self._token = token
        self._checked = 0.0
        self._held = True

    @property
    def stopped(self) -> bool:
        if super().stopped or not self._held or self._terminated.is_set():
            return True
        now = time.monotonic()
        if now - self._checked >= FENCE_PERIOD:
            try:
                # A killed service is seen here at once; its claim would lapse only later.
                self._held = not _REPORTS.unread() and self._registry.holds(
                    self._session, self._token
                )
            except (redis.RedisError, ServerResetError):
                # Not known to hold it: stop (the claim cannot be renewed either, and will
                # lapse); the service starts the scan again once Redis is back. A reset
                # server is refused at each command: raised here, it escaped the read-ahead
                # thread (which asks this too) as a traceback.
                self._held = False
            self._checked = now
        return not self._held


def _result_message(result: WriteResult) -> dict[str, Any]:
    return {
        "path": str(result.path),
        "entries": result.entries,
        "points": result.points,
        "state": result.state,
        "warnings": result.warnings,
        "scan_file": str(result.scan_file) if result.scan_file else None,
        "problems": result.problems,
    }


def _write_one(assignment: dict[str, Any], terminated: threading.Event) -> bool:
    """Write the assigned scan and report it; True when the worker may take another one."""
    session, number = assignment["session"], int(assignment["number"])
    logger.debug("writing scan %s:%s", session, number)
    config = WorkerConfig.from_json(assignment["config"])
    if config.umask is not None:
        os.umask(config.umask)
    store = DataStore(
        settings=Settings(
            redis_url=config.redis_url,
            prefix=config.prefix,
            lease_time=config.lease_time,
            retention_time=config.retention_time,
        )
    )
    checker: WriterRegistry | ClaimFence = WriterRegistry(store, config.owner)
    if config.scan_fence:  # pool mode: the claim is the scan's
        checker = ClaimFence(ScanClaims(store, config.owner), number)
    fence = _Fence(checker, session, config.token, terminated)
    if store.outage_notice is not None:  # the line says what becomes of the scan
        store.outage_notice.consequence = (
            f"the writing of scan {session}:{number} waits for it for up to "
            f"{store.settings.max_unreachable_time:g} s, then the writer starts it again"
        )
    _STORES.append(store)
    files = OpenFiles(config.flush_period)
    reusable = False
    writer: ScanWriter | None = None
    try:
        scan = get_session_node(session, store=store).get_scan(number)
        writer = ScanWriter(
            scan,
            files,
            Path(config.root),
            strict_names=config.strict_names,
            compression=config.compression,
            layout=config.layout,
            policy=WritePolicy.create(config.root, config.allowed, config.umask),
            on_start=lambda result, entry: _REPORTS.say(started=str(result.path), entry=entry),
        )
        result = writer.run(fence)
        files.close()
        stopped = fence.stopped
        _REPORTS.say(result=_result_message(result), stopped=stopped)
        reusable = not stopped and not files.unclosed
    except _RETRIED as exc:
        # Redis unreachable, or the file still locked by a writer that lost the session
        # (frozen): the service tries again.
        _REPORTS.say(error=f"{type(exc).__name__}: {exc}", retry=True)
    except Exception as exc:
        logger.debug("scan %s:%s", session, number, exc_info=True)
        # Whether a later attempt may succeed is known here only, where the OSError is.
        _REPORTS.say(
            error=f"{error_name(exc)}: {exc}",
            retry=False,
            environment=is_environment_failure(exc),
        )
    finally:
        files.close()
        store.close()
        _STORES.remove(store)
    if _REPORTS.gone:
        done = writer is not None and writer.result.complete
        written = writer.result.scan_file if writer is not None else None
        logger.warning(
            "the writer service that started this worker is gone (nobody reads its reports): "
            "scan %s:%s %s%s, not marked saved (the next writer writes it again from Redis); "
            "exiting",
            session,
            number,
            "written to its end" if done else "stopped before its end",
            f", its file {str(written)!r} closed" if written else "",
        )
        reusable = False
    if files.unclosed:  # HDF5 would crash at exit on a file it could not flush
        logging.shutdown()
        os._exit(2)
    return reusable


#: Set by ``scanstream writer --log-file``: workers append their records to the writer's file
#: (WatchedFileHandler: reopened after logrotate), at its level; stderr keeps the warnings.
WORKER_LOG_FILE_ENV = "SCANSTREAM_WRITER_LOG_FILE"
WORKER_LOG_LEVEL_ENV = "SCANSTREAM_WRITER_LOG_LEVEL"


def _configure_logging() -> None:
    """This process's log set-up (a worker is a program of its own: it may configure logging)."""
    fmt = logging.Formatter(
        f"%(asctime)s %(levelname)-7s worker {os.getpid()} %(name)s: %(message)s"
    )
    level = logging.getLevelName(os.environ.get(WORKER_LOG_LEVEL_ENV, "INFO"))
    root = logging.getLogger()
    root.setLevel(level if isinstance(level, int) else logging.INFO)
    stderr = logging.StreamHandler()
    stderr.setFormatter(fmt)
    root.addHandler(stderr)
    path = os.environ.get(WORKER_LOG_FILE_ENV)
    if path:
        try:
            handler = logging.handlers.WatchedFileHandler(path, encoding="utf-8")
        except OSError as exc:
            root.warning("cannot append to the writer's log file %r: %s", path, exc.strerror)
        else:
            handler.setFormatter(fmt)
            root.addHandler(handler)
            stderr.setLevel(logging.WARNING)


#: The store of the scan being written: a SIGTERM shortens the outages it rides out.
_STORES: list[DataStore] = []


def _terminate(terminated: threading.Event) -> None:
    """SIGTERM or SIGINT: stop before the next HDF5 call. A read blocked on a server that
    went away gives up within a second (the outage budget was 30 s, and the service kills a
    worker that is not gone within 10 s: its file left unclosed)."""
    for store in list(_STORES):
        store.stop_riding_out()
    terminated.set()


def main(argv: list[str] | None = None) -> int:
    """Write the scans assigned on stdin, one at a time, until EOF or an unusable state."""
    _configure_logging()
    terminated = threading.Event()
    # SIGINT too: Ctrl-C at the terminal of `scanstream writer` reaches every process of its
    # group; as KeyboardInterrupt it printed a traceback per worker, cut an HDF5 call short.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: _terminate(terminated))
    # Assignments come on stdin, one JSON line each, once the imports are done: the service
    # keeps such workers warm, so a scan's writing starts without the import time.
    for line in sys.stdin:
        if not line.strip():
            continue
        if not _write_one(json.loads(line), terminated) or terminated.is_set():
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
