"""``scanstream writer SESSION... [--root DIR] [--allow DIR]... [--umask OCTAL]`` and ``scanstream writer --status [SESSION...]``."""

from __future__ import annotations

import argparse
import datetime
import time
from typing import Any

from .._transport.connection import DataStore, default_store
from .._transport.server import resolve_url
from ..admin.registry import writer_status
from ..exceptions import InvalidArgumentError
from ..writer.service import WriterService
from .logs import configure_logging


def configure_writer(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``scanstream writer``."""
    parser.add_argument("sessions", nargs="*", metavar="SESSION", help="sessions to write")
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
        "--status",
        action="store_true",
        help="print the status of the writers of SESSION... (default: of all "
        "sessions) and exit: 0 if each has a writer, 1 if not",
    )


def run_writer(args: argparse.Namespace) -> int:
    """Run the writer until SIGINT/SIGTERM (:meth:`WriterService.run`), or print the writers' status."""
    store = default_store(resolve_url(args.redis_url))
    if args.status:
        return _print_status(store, args.sessions)
    if not args.sessions:
        raise InvalidArgumentError(
            "give the sessions to write, e.g. `scanstream writer test_session`"
        )
    configure_logging(max(args.verbose, 1))  # the service logs each scan it saves: show it
    service = WriterService(
        args.sessions,
        root=args.root,
        store=store,
        catch_up=not args.only_new,
        strict_names=args.strict_names,
        compression=args.compression,
        layout="legacy" if args.legacy_names else "esrf",
        allow=args.allow,
        umask=args.umask,
        isolate=not args.in_process,
    )
    code = service.run()
    service.exit_if_files_unflushed()  # HDF5 would crash at interpreter exit on them
    return code


def _octal(text: str) -> int:
    try:
        value = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--umask {text!r} is not an octal number") from None
    if not 0 <= value <= 0o777:
        raise argparse.ArgumentTypeError(f"--umask {text!r} is not between 000 and 777")
    return value


def _print_status(store: DataStore, sessions: list[str]) -> int:
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
        print(f"{session}: {_describe(status)}")
        for error in status["errors"][-5:]:
            when = datetime.datetime.fromtimestamp(error["time"]).strftime("%H:%M:%S")
            print(f"    {when} {error['scan']}: {error['error']}")
    return code


def _describe(status: dict[str, Any]) -> str:
    state = "writing" if status["writing"] else "waiting for another writer"
    uptime = time.time() - status["started"]
    running = ", ".join(status["running"]) or "none"
    return (
        f"{state} (pid {status['pid']} on {status['host']}, up {uptime:.0f} s, root "
        f"{status['root']}); scans saved {status['saved']}, failed {status['failed']}; "
        f"being written: {running}"
    )
