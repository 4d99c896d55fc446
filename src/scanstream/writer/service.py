"""The writer service: follows sessions and writes every scan into HDF5/NeXus files.

One thread per session walks the session's scans (from the start of the stored history, so a
restarted writer finishes what it had started and catches up what ran while it was down);
each scan gets its own :class:`~scanstream.writer.scan_writer.ScanWriter` thread, so scans
running at once are written at once. What is written is recorded in Redis: the set
``writer_saved(session)`` holds the numbers of the scans completely saved (they are skipped
on restart), and the hash ``writer_health(session)`` (with a short TTL, renewed every second)
holds the writer's identity and status, which makes it a lock too: a second writer for the
same session waits until the first one is gone instead of writing the same files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis

from .._protocol.keys import check_session_name
from .._transport.connection import DataStore, default_store
from ..exceptions import ScanNotFoundError, ScanstreamError
from ..subscribe.events import EventType, StopHandler
from ..subscribe.tree import ScanNode, get_session_node
from .files import FLUSH_PERIOD, OpenFiles
from .scan_writer import ScanResult, ScanWriter

logger = logging.getLogger(__name__)

HEARTBEAT_PERIOD = 1.0
HEALTH_TTL = 5.0
#: Finished scans caught up at once after a (re)start; running scans always get a thread.
CATCH_UP_WORKERS = 4
_MAX_ERRORS = 20
#: Seconds between attempts while Redis is unreachable (redis-py's own retries came first).
RETRY_PERIOD = 1.0

# Take or renew the health key of a session unless another live writer owns it.
_CLAIM = """
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner and owner ~= ARGV[1] then return owner end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'status', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return false
"""
_RELEASE = """
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


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
    strict_names : bool
        Entry names ``scan3_1`` (strict NeXus naming) instead of BLISS's ``3.1``.
    flush_period : float
        Seconds between flushes of a file receiving data (readers see data this old at most).

    Examples
    --------
    >>> with WriterService(["test_session"], root="/data") as writer:  # doctest: +SKIP
    ...     writer.wait()   # until stop() or Ctrl-C
    """

    def __init__(
        self,
        sessions: Sequence[str],
        *,
        root: str | os.PathLike[str] = ".",
        redis_url: str | None = None,
        store: DataStore | None = None,
        catch_up: bool = True,
        strict_names: bool = False,
        flush_period: float = FLUSH_PERIOD,
    ) -> None:
        if isinstance(sessions, str):
            sessions = [sessions]
        self.sessions = [check_session_name(s) for s in dict.fromkeys(sessions)]
        if not self.sessions:
            raise ScanstreamError("give at least one session to write")
        self.root = Path(root).expanduser().resolve()
        self.store = store or default_store(redis_url)
        self.catch_up = catch_up
        self.strict_names = strict_names
        self.files = OpenFiles(flush_period)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = StopHandler()
        self._threads: list[threading.Thread] = []
        self._catch_up_slots = threading.Semaphore(CATCH_UP_WORKERS)
        self._lock = threading.Lock()
        self._running: dict[str, set[str]] = {s: set() for s in self.sessions}
        self._owned: set[str] = set()
        self._written = dict.fromkeys(self.sessions, 0)
        self._errors: dict[str, deque[dict[str, Any]]] = {s: deque(maxlen=_MAX_ERRORS) for s in self.sessions}
        self._started = time.time()
        self._claim = self.store.redis.register_script(_CLAIM)
        self._release = self.store.redis.register_script(_RELEASE)

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> WriterService:
        """Start following the sessions (returns at once)."""
        self._spawn(self._heartbeat_loop, "heartbeat")
        for session in self.sessions:
            self._spawn(self._follow_session, f"session-{session}", session)
        logger.info("writing sessions %s into %s", ", ".join(self.sessions), self.root)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop: scans being written stay unfinished in the file and are completed at restart."""
        self._stop.stop()
        deadline = time.monotonic() + timeout
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))
        self.files.close()
        for session in self.sessions:
            with contextlib.suppress(redis.RedisError):
                self._release(keys=[self.store.keys.writer_health(session)], args=[self.owner])

    def wait(self, timeout: float | None = None) -> bool:
        """Block until :meth:`stop` is called (from another thread or a signal handler).

        Returns True if stopped, False on timeout.
        """
        return self._stop.wait(timeout)

    def __enter__(self) -> WriterService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, target: Any, name: str, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=f"writer-{name}", daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    # -- sessions -----------------------------------------------------------------------------
    def _follow_session(self, session: str) -> None:
        while not self._stop.stopped:
            if session not in self._owned:  # the heartbeat thread claims it
                self._stop.wait(0.05)
                continue
            try:
                node = get_session_node(session, store=self.store)
                scan_types = ("scan", "scan_group")  # scans only: their nodes are the scan writers' job
                for event_type, scan, _ in node.walk_on_new_events(
                    include_filter=scan_types, exclude_children=scan_types,
                    from_next=not self.catch_up, stop_handler=self._stop,
                ):
                    if event_type == EventType.NEW_NODE and isinstance(scan, ScanNode):
                        self._on_scan(session, scan)
                return
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                logger.warning("session %s: Redis unreachable (%s); retrying in %.0f s", session, exc,
                               RETRY_PERIOD)
            except Exception:
                logger.exception("session %s: listener failed; restarting it in %.0f s", session,
                                 RETRY_PERIOD)
            self._stop.wait(RETRY_PERIOD)

    def _on_scan(self, session: str, scan: ScanNode) -> None:
        keys = self.store.keys
        if self.store.redis.sismember(keys.writer_saved(session), str(scan.number)):
            return
        with self._lock:
            if scan.name in self._running[session]:
                return
            self._running[session].add(scan.name)
        try:
            info, finished = scan.info, scan.state.is_final
        except ScanNotFoundError:
            logger.warning("scan %s expired from Redis before it was saved", scan.db_name)
            self._done(session, scan)
            return
        if info.get("save") is False:
            logger.info("scan %s: not saved (scan_info save=False)", scan.db_name)
            self.store.redis.sadd(keys.writer_saved(session), scan.number)
            self._done(session, scan)
            return
        self._spawn(self._write_scan, f"scan-{scan.db_name}", session, scan, finished)

    def _write_scan(self, session: str, scan: ScanNode, finished: bool) -> None:
        slot = self._catch_up_slots if finished else contextlib.nullcontext()
        try:
            with slot:
                started = time.monotonic()
                result = self._write_until_done(scan)
            if result is None:
                return
            self.store.redis.sadd(self.store.keys.writer_saved(session), scan.number)
            with self._lock:  # scan threads of one session finish concurrently
                self._written[session] += 1
            points = sum(result.points.values())
            logger.info("saved %s (%s): %d points in %s entries %s of %s (%.2f s)",
                        scan.db_name, result.state, points, len(result.entries),
                        ", ".join(result.entries), result.path, time.monotonic() - started)
        except Exception as exc:  # noqa: BLE001 - one bad scan must not stop the others
            message = f"{type(exc).__name__}: {exc}"
            logger.error("scan %s NOT saved: %s", scan.db_name, message)
            self._errors[session].append(
                {"scan": scan.name, "number": scan.number, "error": message, "time": time.time()})
        finally:
            self._done(session, scan)

    def _write_until_done(self, scan: ScanNode) -> ScanResult | None:
        """Write the scan; while Redis is unreachable, retry (a replay is idempotent).

        Returns None when the writer stops first.
        """
        while not self._stop.stopped:
            try:
                writer = ScanWriter(scan, self.files, self.root, strict_names=self.strict_names)
                result = writer.run(self._stop)
                return result if result.complete else None
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                logger.warning("scan %s: Redis unreachable (%s); writing it again in %.0f s",
                               scan.db_name, exc, RETRY_PERIOD)
                self._stop.wait(RETRY_PERIOD)
        return None

    def _done(self, session: str, scan: ScanNode) -> None:
        with self._lock:
            self._running[session].discard(scan.name)

    # -- health -------------------------------------------------------------------------------
    def status(self, session: str) -> dict[str, Any]:
        """The status this writer publishes for ``session`` (see :func:`writer_status`)."""
        with self._lock:
            running = sorted(self._running[session])
        return {
            "owner": self.owner,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "root": str(self.root),
            "started": self._started,
            "heartbeat": time.time(),
            "writing": session in self._owned,
            "running": running,
            "saved": self._written[session],
            "failed": len(self._errors[session]),
            "errors": list(self._errors[session]),
        }

    def _heartbeat_loop(self) -> None:
        ttl_ms = int(HEALTH_TTL * 1000)
        while True:
            for session in self.sessions:
                try:
                    other = self._claim(
                        keys=[self.store.keys.writer_health(session)],
                        args=[self.owner, json.dumps(self.status(session)), ttl_ms],
                    )
                except redis.RedisError as exc:
                    logger.warning("session %s: cannot publish the writer status: %s", session, exc)
                    continue
                if other is None:
                    self._owned.add(session)
                elif _is_dead_local_process(other.decode()):
                    # A writer of this machine killed without clean-up: no need to wait for
                    # its key to expire. Delete it only if it still names that writer.
                    logger.warning("session %s: taking over from writer %s, which is dead",
                                   session, other.decode())
                    self._release(keys=[self.store.keys.writer_health(session)], args=[other])
                elif session not in self._owned:
                    logger.warning("session %s is written by another writer (%s); waiting until "
                                   "it stops", session, other.decode())
            if self._stop.wait(HEARTBEAT_PERIOD):
                return


def _is_dead_local_process(owner: str) -> bool:
    """True when ``owner`` (``host:pid:id``) names a process of this host that does not exist."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def writer_status(session: str, *, store: DataStore | None = None, redis_url: str | None = None
                  ) -> dict[str, Any] | None:
    """The status of the writer of ``session``, or None when no writer runs for it.

    Keys: ``owner``, ``pid``, ``host``, ``root``, ``started`` and ``heartbeat`` (epoch s),
    ``writing`` (False while waiting for another writer), ``running`` (scans being written),
    ``saved`` and ``failed`` (counts since it started), ``errors`` (the last ones, each with
    ``scan`` (name), ``number``, ``error``, ``time``).
    """
    store = store or default_store(redis_url)
    raw = store.redis.hget(store.keys.writer_health(check_session_name(session)), "status")
    return json.loads(raw) if raw else None


def saved_scans(session: str, *, store: DataStore | None = None, redis_url: str | None = None) -> set[int]:
    """Numbers of the scans of ``session`` that a writer has completely saved."""
    store = store or default_store(redis_url)
    return {int(n) for n in store.redis.smembers(store.keys.writer_saved(check_session_name(session)))}
