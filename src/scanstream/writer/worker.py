"""One scan written in a process of its own, so that a libhdf5 crash stays with that scan.

``python -m scanstream.writer.worker`` (started by
:class:`~scanstream.writer.service.WriterService` with ``isolate=True``) reads its scan and
settings as one JSON line on stdin (not in argv: no password shows in ``ps``). It writes the scan with a :class:`~scanstream.writer.scan_writer.ScanWriter` and
reports on stdout, one JSON line per message: ``{"started": file, "entry": name}`` once its
file is chosen, then ``{"result": ...}`` or ``{"error": text, "retry": bool}``.

The worker fences itself: before each event (at most every :data:`FENCE_PERIOD` s, a Redis
read) it checks that the claim of the service that started it still holds the session with
the same token. A frozen or killed service stops renewing its claim; once it lapses (or is
taken over), the worker stops before its next HDF5 call and closes its file, which releases
the file's lock for the new owner. SIGTERM stops it the same way.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import redis

from .._transport.connection import DataStore, Settings
from ..subscribe.events import StopHandler
from ..subscribe.tree import get_session_node
from .files import OpenFiles
from .isolation import WorkerConfig
from .paths import WritePolicy
from .registry import WriterRegistry
from .scan_writer import ScanWriter, WriteResult
from .supervise import UNREACHABLE

__all__ = ["FENCE_PERIOD", "main"]

logger = logging.getLogger(__name__)

#: Seconds between two checks of the fence (the service's claim) in Redis.
FENCE_PERIOD = 0.25


class _Fence(StopHandler):
    """Stopped by SIGTERM, or once the service's claim no longer holds the session."""

    def __init__(self, registry: WriterRegistry, session: str, token: str) -> None:
        super().__init__()
        self._registry = registry
        self._session = session
        self._token = token
        self._checked = 0.0
        self._held = True

    @property
    def stopped(self) -> bool:
        if super().stopped or not self._held:
            return True
        now = time.monotonic()
        if now - self._checked >= FENCE_PERIOD:
            try:
                self._held = self._registry.holds(self._session, self._token)
            except redis.RedisError:
                # Not known to hold it: stop (the claim cannot be renewed either, and will
                # lapse); the service starts the scan again once Redis is back.
                self._held = False
            self._checked = now
        return not self._held


def _say(**message: Any) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


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


def main(argv: list[str] | None = None) -> int:
    """Write scan ``NUMBER`` of ``SESSION``; exit 0 (result or stopped), 2 (error), 3 (retry)."""
    # The assignment comes on stdin, one JSON line, once the imports are done: the service
    # keeps one such worker warm, so a scan's writing starts without the import time.
    assignment = json.loads(sys.stdin.readline() or "null")
    if not assignment:
        return 0  # the service stopped before giving it a scan
    session, number = assignment["session"], int(assignment["number"])
    config = WorkerConfig.from_json(assignment["config"])
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s worker {session}:{number}: %(message)s",
    )
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
    fence = _Fence(WriterRegistry(store, config.owner), session, config.token)
    signal.signal(signal.SIGTERM, lambda *_: fence.stop())
    files = OpenFiles(config.flush_period)
    code = 0
    try:
        scan = get_session_node(session, store=store).get_scan(number)
        writer = ScanWriter(
            scan,
            files,
            Path(config.root),
            strict_names=config.strict_names,
            policy=WritePolicy.create(config.root, config.allowed, config.umask),
            on_start=lambda result, entry: _say(started=str(result.path), entry=entry),
        )
        result = writer.run(fence)
        files.close()
        _say(result=_result_message(result), stopped=fence.stopped)
    except UNREACHABLE as exc:
        _say(error=f"{type(exc).__name__}: {exc}", retry=True)
        code = 3
    except Exception as exc:
        _say(error=f"{type(exc).__name__}: {exc}", retry=False)
        code = 2
    finally:
        files.close()
        store.close()
    if files.unclosed:  # HDF5 would crash at exit on a file it could not flush
        logging.shutdown()
        os._exit(2)
    return code


if __name__ == "__main__":
    sys.exit(main())
