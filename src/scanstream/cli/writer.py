"""``scanstream writer SESSION... [--root DIR] [--allow DIR]... [--umask OCTAL] [--pool] [--workers N]`` and ``scanstream writer --status [SESSION...]``.

At start it names the Redis server (and where its URL came from), checks that its root is a
directory it may write (created if missing), and says which of its sessions have no scan yet,
with the sessions Redis knows (a typo shows at once). ``--log-file`` and ``--log-level`` are
for running it as a service (docs/deployment.md).
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import time
from typing import Any

from .._transport.connection import DataStore, clear_default_stores, default_store
from .._transport.shared_server import resolve_url
from ..admin.registry import writer_status
from ..admin.wording import counted
from ..exceptions import ServerResetError
from ..writer.isolation import DEFAULT_WORKERS
from ..writer.service import WriterService
from ..writer.worker import WORKER_LOG_FILE_ENV, WORKER_LOG_LEVEL_ENV
from .errors import describe_server, url_origin
from .logs import LEVELS, configure_logging
from .usage import UsageError, session_name, writable_directory

logger = logging.getLogger(__name__)

#: Seconds between a service stopped by a server reset and the new one.
_RESET_PAUSE = 1.0


def configure_writer(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``scanstream writer``."""
    parser.add_argument(
        "sessions", nargs="*", type=session_name, metavar="SESSION", help="sessions to write"
    )
    parser.add_argument(
        "--root",
        default=".",
        metavar="DIR",
        help="base directory of scans without scan_info 'filename' (written to "
        "DIR/SESSION/SESSION.h5) and of relative filenames (default: .)",
    )
    parser.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="DIR",
        help="a further directory where scan_info 'filename' may point (repeatable); any "
        "other place, '..' components or a symbolic link leaving them fails that scan",
    )
    parser.add_argument(
        "--umask",
        type=_octal,
        default=None,
        metavar="OCTAL",
        help="umask of the files and directories the writer creates, e.g. 022 (readable "
        "by everyone) or 027 (by the group only); default: the umask it was started with",
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="write the scans in threads of this process instead of one process per scan "
        "(faster to start; a libhdf5 crash then stops every session of this writer)",
    )
    parser.add_argument(
        "--workers",
        type=_workers,
        default=None,
        metavar="N",
        help=f"scans this writer writes at once, each in a worker process of its own (default: "
        f"{DEFAULT_WORKERS}); more scans wait for a free worker. A scan being written uses "
        "about one core: more than the free cores of the host only share them",
    )
    parser.add_argument(
        "--pool",
        action="store_true",
        help="share the scans of the sessions with the other writers started with --pool "
        "(on this host or others): each scan is written by one of them, new scans go to the "
        "least busy one, a dead one's scans are taken over (default: one writer per session, "
        "others wait as standbys)",
    )
    parser.add_argument(
        "--only-new",
        action="store_true",
        help="write only the scans that start from now on (default: also the "
        "stored scans not saved yet, e.g. after a restart)",
    )
    parser.add_argument(
        "--strict-names",
        action="store_true",
        help="entry names scanN_1 (strict NeXus naming) instead of N.1",
    )
    parser.add_argument(
        "--compression",
        choices=["none", "gzip", "lz4", "bitshuffle-lz4", "zstd"],
        default="bitshuffle-lz4",
        help="compression of the datasets large enough to gain (default: bitshuffle-lz4, "
        "which readers open with hdf5plugin; gzip is readable everywhere)",
    )
    parser.add_argument(
        "--legacy-names",
        action="store_true",
        help="keep the layout of scanstream 0.1: full channel names in measurement/",
    )
    parser.add_argument(
        "--log-file",
        metavar="FILE",
        default=None,
        help="append the log to FILE (reopened when logrotate moves it); stderr then gets "
        "warnings and errors only (default: everything on stderr)",
    )
    parser.add_argument(
        "--log-level",
        choices=sorted(LEVELS, key=LEVELS.__getitem__),
        default=None,
        help="least severe records logged (default: info, a line per scan saved; -vv: debug)",
    )
    parser.add_argument(
        "--status",
        action="store_true",
        help="print the status of the writers of SESSION... (default: of all "
        "sessions) and exit: 0 if each has a writer, 1 if not (or if a pool writer takes no "
        "scan because its settings differ from the pool's)",
    )


def run_writer(args: argparse.Namespace) -> int:
    """Run the writer until SIGINT/SIGTERM (:meth:`WriterService.run`), or print the writers' status."""
    url, origin = url_origin(args)
    if args.status:
        return _print_status(default_store(resolve_url(url)), args.sessions)
    if not args.sessions:
        raise UsageError("give the sessions to write, e.g. `scanstream writer test_session`")
    if args.workers is not None and args.in_process:
        raise UsageError(
            "--workers sets the worker processes, and --in-process writes every scan in a "
            "thread of this process instead: give one of them"
        )
    root = writable_directory(args.root)
    for allowed in args.allow:
        if os.path.exists(allowed) and not os.path.isdir(allowed):
            raise UsageError(
                f"--allow {allowed!r} is not a directory; give the directories where scan_info "
                "'filename' may point"
            )
    level = LEVELS[args.log_level] if args.log_level else None
    if level is None:  # the service logs each scan it saves: show it
        level = logging.DEBUG if args.verbose >= 2 else logging.INFO
    try:
        configure_logging(max(args.verbose, 1), level=level, log_file=args.log_file)
    except OSError as exc:
        raise UsageError(
            f"--log-file {args.log_file!r} cannot be opened for appending ({exc.strerror}); "
            "give a file in a directory that exists and this user may write"
        ) from None
    if args.log_file:
        # The worker processes that write the scans append to the same file (they inherit
        # the environment; scanstream.writer.worker reads it).
        os.environ[WORKER_LOG_FILE_ENV] = os.path.abspath(args.log_file)
        os.environ[WORKER_LOG_LEVEL_ENV] = logging.getLevelName(level)
    url = resolve_url(url)
    logger.info(describe_server(url, origin))
    store = default_store(url)
    _hint_sessions(store, args.sessions)
    while True:
        service = WriterService(
            args.sessions,
            root=root,
            store=store,
            catch_up=not args.only_new,
            strict_names=args.strict_names,
            compression=args.compression,
            layout="legacy" if args.legacy_names else "esrf",
            allow=args.allow,
            umask=args.umask,
            isolate=not args.in_process,
            pool=args.pool,
            workers=args.workers or DEFAULT_WORKERS,
        )
        try:
            code = service.run()
        except ServerResetError:
            if service.server_reset is None:
                raise
            code = 0  # reset while it started: as below
        service.exit_if_files_unflushed()  # HDF5 would crash at interpreter exit on them
        if service.server_reset is None or code != 0:
            return code
        # The server lost its data (restarted without persistence, flushed): the store
        # refuses it for good, so a writer left running would save nothing more. Its scans
        # in flight went with the data; the next ones are saved by a new service on a new
        # store (entry numbers go on above those in the files, decision 0011).
        logger.warning("starting again on the server's new database in %.0f s", _RESET_PAUSE)
        time.sleep(_RESET_PAUSE)
        clear_default_stores()  # the cached store is the one that refuses the server
        store = default_store(url)


def _hint_sessions(store: DataStore, sessions: list[str]) -> None:
    """Say which sessions have no scan yet, naming the known ones (a typo shows at once)."""
    known = store.sessions()
    for session in sessions:
        if session not in known:
            logger.warning(
                "session %s has no scan in Redis yet: its scans are written once it has one "
                "(sessions with scans: %s)",
                session,
                ", ".join(sorted(known)) or "none",
            )


def _workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer; give 1 or more") from None
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"{value} is too few: a writer writes at least 1 scan at once; give 1 or more"
        )
    return value


def _octal(text: str) -> int:
    try:
        value = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an octal number; give one between 000 and 777, e.g. 022"
        ) from None
    if not 0 <= value <= 0o777:
        raise argparse.ArgumentTypeError(f"{text!r} is not between 000 and 777; give e.g. 022")
    return value


def _print_status(store: DataStore, sessions: list[str]) -> int:
    """Print :func:`writer_status` of each session; 1 if one has no writer, a dead one, or a
    pool member whose settings differ from the pool's."""
    if not sessions:
        sessions = store.sessions()
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
        if status["pool"]:
            _print_pool(session, status)
            _print_unreadable(status)
            if status["mismatch"] or not status["writing"]:
                code = 1
            continue
        print(f"{session}: {_describe(status)}")
        if status.get("dead"):
            code = 1
        _print_errors(status["errors"])
        for member in status["members"][1:]:  # pool writers waiting behind this one
            print(f"  pool writer {member['owner']} waits: the session has a single writer")
        _print_unreadable(status)
    return code


def _print_unreadable(status: dict[str, Any]) -> None:
    """The pool's records that are garbage: named, never a traceback (a live writer replaces
    its own within a period; the exit status is that of the members that can be read)."""
    for record in status.get("unreadable", []):
        print(f"  unreadable record at {record['key']}: {record['reason']}")


def _print_pool(session: str, status: dict[str, Any]) -> None:
    """The writers of a pool: their load, the scans of ``session`` each one holds, refusals."""
    members = status["members"]
    print(
        f"{session}: pool of {counted(len(members), 'writer')}, root "
        f"{status['root']}; scans saved {status['saved']}, failed {status['failed']}"
    )
    for member in members:
        uptime = time.time() - member["started"]
        held = ", ".join(member.get("held", [])) or "none"
        print(
            f"  {member['owner']} (pid {member['pid']} on {member['host']}, up {uptime:.0f} s, "
            f"root {member['root']}): load {member.get('load', 0)}; scans saved "
            f"{member['saved']}, failed {member['failed']}; holds: {held}"
        )
        refusing = member.get("refusing")
        if refusing:
            differences = "; ".join(
                f"{name} {here!r} here, {there!r} in the pool"
                for name, (here, there) in refusing["differences"].items()
            )
            print(
                f"    TAKES NO SCAN: its settings differ from the pool's (of {refusing['writer']})"
                f": {differences}; restart it with the pool's settings"
            )
        if member.get("blocked"):
            print(f"    waits: single writer {member['blocked']} holds the session")
        _print_errors(member["errors"])


def _print_errors(errors: list[dict[str, Any]]) -> None:
    for error in errors[-5:]:
        when = datetime.datetime.fromtimestamp(error["time"]).strftime("%H:%M:%S")
        print(f"    {when} {error['scan']}: {error['error']}")


def _describe(status: dict[str, Any]) -> str:
    if status.get("dead"):
        return (
            f"DEAD: the writer process {status['pid']} of this host is gone (its claim lapses "
            f"within seconds; a writer started now takes over): root {status['root']}, scans "
            f"saved {status['saved']}, failed {status['failed']}; were being written: "
            f"{', '.join(status['running']) or 'none'}"
        )
    state = "writing" if status["writing"] else "waiting for another writer"
    uptime = time.time() - status["started"]
    running = ", ".join(status["running"]) or "none"
    return (
        f"{state} (pid {status['pid']} on {status['host']}, up {uptime:.0f} s, root "
        f"{status['root']}); scans saved {status['saved']}, failed {status['failed']}; "
        f"being written: {running}"
    )
