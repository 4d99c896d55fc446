"""``scanstream writer SESSION... [--root DIR]`` and ``scanstream writer --status [SESSION...]``."""

from __future__ import annotations

import argparse
import datetime
import os
import signal
import sys
import threading
import time
from typing import Any

from .._transport.connection import DataStore, default_store
from .._transport.server import resolve_url
from ..exceptions import InvalidArgumentError
from ..writer.service import WriterService, writer_status
from .logs import configure_logging

WRITER_HELP = "write every scan of some sessions into HDF5/NeXus files, live (Ctrl-C stops)"


def configure_writer(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``scanstream writer``."""
    parser.add_argument("sessions", nargs="*", metavar="SESSION", help="sessions to write")
    parser.add_argument("--root", default=".", metavar="DIR",
                        help="base directory of scans without scan_info 'filename' (written to "
                             "DIR/SESSION/SESSION.h5) and of relative filenames (default: .)")
    parser.add_argument("--only-new", action="store_true",
                        help="write only the scans that start from now on (default: also the "
                             "stored scans not saved yet, e.g. after a restart)")
    parser.add_argument("--strict-names", action="store_true",
                        help="entry names scanN_1 (strict NeXus naming) instead of N.1")
    parser.add_argument("--status", action="store_true",
                        help="print the status of the writers of SESSION... (default: of all "
                             "sessions) and exit: 0 if each has a writer, 1 if not")


def run_writer(args: argparse.Namespace) -> int:
    """Run the writer until SIGINT/SIGTERM, or print the writers' status."""
    store = default_store(resolve_url(args.redis_url))
    if args.status:
        return _print_status(store, args.sessions)
    if not args.sessions:
        raise InvalidArgumentError("give the sessions to write, e.g. `scanstream writer test_session`")
    configure_logging(max(args.verbose, 1))  # the service logs each scan it saves: show it
    service = WriterService(args.sessions, root=args.root, store=store,
                            catch_up=not args.only_new, strict_names=args.strict_names)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    print(f"writing sessions {', '.join(service.sessions)} (files under {service.root} unless "
          "scan_info gives a filename); Ctrl-C to stop", flush=True)
    service.start()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        print("stopping the writer (unfinished scans are completed at the next start)", flush=True)
        service.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if service.files.unclosed:
        # HDF5 crashes at exit on a file it could not flush (disk full): skip its clean-up.
        print(f"files left unflushed (disk full?): {', '.join(map(str, service.files.unclosed))}",
              file=sys.stderr, flush=True)
        os._exit(1)
    return 0


def _print_status(store: DataStore, sessions: list[str]) -> int:
    if not sessions:
        sessions = sorted(n.decode() if isinstance(n, bytes) else n
                          for n in store.redis.hkeys(store.keys.sessions))
        if not sessions:
            print("no session in this Redis")
            return 1
    code = 0
    for session in sessions:
        status = writer_status(session, store=store)
        if status is None:
            print(f"{session}: no writer")
            code = 1
            continue
        print(f"{session}: {_describe(status)}")
        for error in status["errors"][-5:]:
            when = datetime.datetime.fromtimestamp(error["time"]).strftime("%H:%M:%S")
            print(f"    {when} {error['scan']}: {error['error']}")
    return code


def _describe(status: dict[str, Any]) -> str:
    state = "writing" if status["writing"] else "waiting for another writer"
    uptime = time.time() - status["started"]
    running = ", ".join(status["running"]) or "none"
    return (f"{state} (pid {status['pid']} on {status['host']}, up {uptime:.0f} s, root "
            f"{status['root']}); scans saved {status['saved']}, failed {status['failed']}; "
            f"being written: {running}")
