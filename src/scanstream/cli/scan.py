"""``scanstream scan``: run one simulated scan from the command line, BLISS style.

    scanstream scan --session test_session ascan roby 0 1 10 0.1 diode     # 11 points
    scanstream scan ascan --help

The arguments of each scan type are defined and checked in :mod:`scanstream.cli.scan_args`
(a bad command line is a usage error, exit code 2); this module runs the scan. It names the
Redis server first (and where its URL came from); a live progress line (points done /
total, rate, elapsed time) goes to stderr, like BLISS's scan display; step scans print a
table row per point on stdout (until points come too fast to read: then the progress line
only), ``ct`` prints each counter's value and rate, and the summary line goes to stdout.
Ctrl-C stops the scan at the end of the current point: it ends USER_ABORTED with the points
acquired (exit code 130); a second Ctrl-C only says it is stopping, a third abandons it.
SIGTERM and SIGHUP do the same (exit codes 143 and 129).

A scan starts with a warning when no writer follows its session (``--require-writer``
refuses to start it, ``--no-writer-warning`` silences the warning). At its end the command
waits (``--save-timeout``) for the saving verdict of the writer and prints it on stdout:
``saved in FILE::ENTRY``, or ``NOT SAVED: reason; ...``. The exit code says it too
(:data:`EXIT_CODES`): 0 only for a scan that ended DONE and was saved, or whose saving is off
by design (``--no-saving``).

It is registered in :data:`scanstream.cli.COMMANDS` (``configure_scan``, ``run_scan``).
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

from .._protocol.keys import check_session_name
from .._transport.shared_server import resolve_url
from ..admin.wording import counted
from ..exceptions import InvalidArgumentError, NoWriterError
from ..models import ScanState
from ..publish import PublishingSession, ScanPublisher, create_session
from ..sim.beamline import Beamline, UnknownDeviceError, default_beamline
from ..sim.control import ScanResult, scan_result_of
from ..sim.devices import MotorLimitError
from ..sim.lima import unclosed_files
from ..sim.saving import SavingConfig
from .errors import describe_failure, describe_server, discard_stdout, print_error, url_origin
from .scan_args import (
    DATA_ROOT_ENV,
    DEFAULT_SESSION,
    SCAN_FUNCTIONS,
    SCAN_TYPES,
    SESSION_ENV,
    ScanArgumentError,
    configure_scan,
    parse_scan_arguments,
    summary,
    usage,
)
from .scan_display import (
    EXIT_CODES,
    EXIT_NOT_SAVED,
    EXIT_SAVE_TIMEOUT,
    PointTable,
    ProgressDisplay,
    Row,
    ct_lines,
    report_saving,
)
from .signals import STOP_SIGNALS, Terminated, interrupt_name
from .usage import UsageError, writable_directory

__all__ = [
    "EXIT_CODES",
    "EXIT_NOT_SAVED",
    "EXIT_SAVE_TIMEOUT",
    "SCAN_TYPES",
    "ProgressDisplay",
    "ScanArgumentError",
    "configure_scan",
    "parse_scan_arguments",
    "run_scan",
]


class _ScanDisplay:
    """What ``scanstream scan`` shows on stderr: the BLISS-like header, then the progress."""

    def __init__(
        self, session: str, quiet: bool, warn_no_writer: bool = True, scan_type: str = ""
    ) -> None:
        self.session = session
        self.quiet = quiet
        self.warn_no_writer = warn_no_writer
        self.progress: ProgressDisplay | None = None
        self.scan: ScanPublisher | None = None
        # ct: the values once counted; step scans: a row per point (stdout).
        self.ct = scan_type == "ct"
        self.table = None if quiet or self.ct else PointTable()
        self.last: Row = []

    def start(self, scan: ScanPublisher) -> None:
        """``on_start`` callback: the header, as BLISS prints it (after the no-writer warning)."""
        self.scan = scan
        info = scan.info
        if scan.no_writer is not None and self.warn_no_writer:
            print(f"WARNING: {scan.no_writer}", file=sys.stderr)
        print(
            f"Scan {scan.number} {info.get('start_time', '')} "
            f"{info.get('filename') or '(no filename)'} {self.session} user = {_user()}\n"
            f"{info['title']}",
            file=sys.stderr,
        )
        if not self.quiet:
            self.progress = ProgressDisplay(int(info.get("npoints") or 0))

    def values(self, master: str, index: int, row: Row) -> None:  # on_values callback
        self.last = row
        if self.table is None:
            return
        try:
            self.table(master, index, row)
        except BrokenPipeError:
            # The reader of the rows went away (`scanstream scan ... | head`): the scan goes
            # on, unseen, rather than ending FAILED because of its display.
            self.table = None
            discard_stdout()

    def point(self, master: str, done: int) -> None:  # on_point callback
        if self.progress is None:
            return
        if self.table is not None and self.table.active:
            self.progress.done[master] = done  # counted, not shown: it would garble the table
        else:
            self.progress(master, done)

    def close(self, result: ScanResult | None, interrupted_by: str | None = None) -> None:
        if self.progress is not None:
            # Stopped by Ctrl-C through the stop event: say so, not "stop_event set".
            aborted = result is not None and result.state is ScanState.USER_ABORTED
            self.progress.close(result, interrupted_by if aborted else None)
        if self.ct and self.last and result is not None:
            count_time = float(result.scan_info.get("count_time") or 0.0)
            for line in ct_lines(self.last, count_time):  # ct scans no motor
                print(line)


class _CtrlC:
    """SIGINT (Ctrl-C) during ``scanstream scan``; SIGTERM and SIGHUP (``kill``, a service
    manager, a closed terminal) the same way, with their own name and exit code.

    While the scan runs, the first sets ``stop`` (the scan ends USER_ABORTED at the end of
    its current point, published whole), the second only says so, the third raises
    KeyboardInterrupt (the scan is abandoned where it is). Once the scan has ended, a Ctrl-C
    stops the wait for the saving verdict, unless one already came (the command is ending).

    A stop request rather than an exception at an arbitrary place: a second Ctrl-C arriving
    while the scan is ending (its detectors closing, ``end()`` retrying through an outage)
    must not cut that short and leave the scan for the lease to declare KILLED. Python's
    default for SIGTERM did worse: the process ended at once, the scan open until then.
    """

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.count = 0
        self.scan_running = True
        self.signum = int(signal.SIGINT)  # the first signal received

    @property
    def name(self) -> str:
        """How the messages name the first signal: ``Ctrl-C``, ``SIGTERM``."""
        return interrupt_name(self.signum)

    @property
    def exit_code(self) -> int:
        """128 + the first signal: 130 for Ctrl-C, 143 for SIGTERM."""
        return 128 + self.signum

    def _interrupt(self) -> KeyboardInterrupt:
        return KeyboardInterrupt() if self.signum == signal.SIGINT else Terminated(self.signum)

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.count == 1:
            self.signum = signum
        if not self.scan_running:
            if self.count == 1:
                raise self._interrupt()
        elif self.count == 1:
            self.stop.set()
            print(
                f"\n{self.name}: stopping the scan at the end of this point (it ends USER_ABORTED)",
                file=sys.stderr,
            )
        elif self.count == 2:
            print(
                f"{interrupt_name(signum)}: already stopping; once more abandons the scan",
                file=sys.stderr,
            )
        else:
            raise self._interrupt()

    @contextlib.contextmanager
    def installed(self, keep: bool = False) -> Iterator[None]:
        """Handle SIGINT, SIGTERM and SIGHUP within the block (main thread only: elsewhere
        Python cannot).

        ``keep``: the process ends after the block (the ``scanstream`` program); once a
        signal came, they are then ignored, so that another one during the interpreter's
        exit (which restores the default disposition of the handlers Python installed, but
        not of an ignored signal) does not kill the process after its clean end.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        signals = (signal.SIGINT, *STOP_SIGNALS)
        previous = {signum: signal.signal(signum, self) for signum in signals}
        try:
            yield
        finally:
            for signum, action in previous.items():
                signal.signal(signum, signal.SIG_IGN if keep and self.count else action)


def _print_listing(beamline: Beamline) -> None:
    """``--list``: the devices, then each scan type with its arguments and what it does."""
    for kind, devices in beamline.describe().items():
        print(f"{kind}: " + ", ".join(f"{name} ({what})" for name, what in devices.items()))
    print("scans (scanstream scan TYPE --help for each argument):")
    for scan_type in SCAN_TYPES:
        print(f"  {usage(scan_type)}")
        print(f"      {summary(scan_type)}")


def _usage_error(parser: argparse.ArgumentParser, message: str) -> int:
    """Report a usage error as argparse does, but return its exit code instead of exiting."""
    parser.print_usage(sys.stderr)
    print(f"{parser.prog}: error: {message}", file=sys.stderr)
    return 2


def _session(args: argparse.Namespace) -> str:
    """``--session``, else ``$SCANSTREAM_SESSION`` (checked here: argparse checked the option).

    Raises
    ------
    UsageError
        The variable holds no valid session name.
    """
    if args.session:
        return str(args.session)
    name = os.environ.get(SESSION_ENV) or DEFAULT_SESSION
    try:
        return check_session_name(name)
    except InvalidArgumentError as exc:
        raise UsageError(f"${SESSION_ENV}: {exc}; or give --session") from None


def _saving_config(args: argparse.Namespace) -> SavingConfig | None:
    """The saving of ``--root`` (else ``$SCANSTREAM_DATA_ROOT``), its data directory made now.

    Checked before anything is published: a root the scan could not write would otherwise
    fail the scan after it started (or its Lima frames), with an OSError of some path below.

    Raises
    ------
    UsageError
        The root, or the data directory below it, is not a directory this user may write;
        the session, ``--sample`` or ``--dataset`` cannot be a directory name.
    """
    root, option = args.root, "--root"
    if not root:
        root, option = os.environ.get(DATA_ROOT_ENV), f"${DATA_ROOT_ENV}"
    if not root:
        return None
    try:
        saving = SavingConfig(
            root, args.session, args.sample, args.dataset, enabled=not args.no_saving
        )
    except InvalidArgumentError as exc:
        raise UsageError(f"{exc} (--sample and --dataset are directory names)") from None
    if not saving.enabled:  # nothing is written: nothing to check
        return saving
    writable_directory(root, option)
    directory = saving.dataset_directory
    try:
        saving.prepare()
    except OSError as exc:
        raise UsageError(
            f"cannot make the data directory {str(directory)!r} under {option} {root!r} "
            f"({exc.strerror}): remove what is in the way, or give another {option}"
        ) from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UsageError(
            f"the data directory {str(directory)!r} under {option} {root!r} is not writable by "
            f"this user: change its permissions, or give another {option}"
        )
    return saving


def _scan_options(
    args: argparse.Namespace, beamline: Beamline, saving: SavingConfig | None
) -> dict[str, Any]:
    """The keyword options of the scan function, from the command line."""
    options: dict[str, Any] = {
        "sleep": max(0.0, args.time_scale),
        "positioners": beamline.positioners,
        "max_duration": args.max_duration,
    }
    if saving is not None:
        options["saving"] = saving
    elif args.no_saving:
        options["scan_info"] = {"save": False}
    if args.type == "timescan":
        options["npoints"] = args.npoints
    return options


def run_scan(args: argparse.Namespace) -> int:
    """Run ``scanstream scan``; return the exit code.

    Returns
    -------
    int
        One of :data:`EXIT_CODES`: 0 DONE (or stopped by ``--max-duration``) and saved, or
        saving off by design; 1 a scan that ended otherwise, or a device or limit error;
        2 bad arguments (most are refused while parsing); 3 not saved (no writer, the
        writer failed; or not started with ``--require-writer``); 4 no saving verdict
        within ``--save-timeout``; 130 Ctrl-C (the scan ends USER_ABORTED); 143 SIGTERM and
        129 SIGHUP (the same).
    """
    beamline = default_beamline(args.seed)
    if args.list:
        _print_listing(beamline)
        return 0
    if not args.type:
        return _usage_error(args.scan_parser, f"no scan type; known: {', '.join(SCAN_TYPES)}")
    try:
        positional = parse_scan_arguments(args.type, args.args, beamline)
        args.session = _session(args)
        saving = _saving_config(args)
    except (ScanArgumentError, UnknownDeviceError, UsageError) as exc:
        return _usage_error(args.scan_parser, str(exc))
    given, origin = url_origin(args)
    url = resolve_url(given)
    if not args.quiet:
        print(describe_server(url, origin), file=sys.stderr)
    session = create_session(
        args.session,
        redis_url=url,
        require_writer=args.require_writer,
        warn_no_writer=False,  # the display prints the warning, as one line
    )
    display = _ScanDisplay(
        args.session, args.quiet, warn_no_writer=not args.no_writer_warning, scan_type=args.type
    )
    ctrl_c = _CtrlC()
    # Until the command ends: a late second Ctrl-C is no traceback.
    with ctrl_c.installed(keep=getattr(args, "standalone", False)):
        try:
            code = _run(
                args, session, positional, display, ctrl_c, _scan_options(args, beamline, saving)
            )
        except _Failed as failed:  # a connection, password or permission failure of the scan
            line = describe_failure(failed.__cause__ or failed, given, origin)
            print_error("scan", line or str(failed.__cause__ or failed))
            code = 1
    if getattr(args, "standalone", False):
        _exit_if_files_unclosed(code)
    return code


def _exit_if_files_unclosed(code: int) -> None:
    """End the process at once with ``code`` if HDF5 could not close a Lima frame file (its
    disk full): HDF5 closes it again at the interpreter's exit, and crashes (SIGSEGV)."""
    unclosed = unclosed_files()
    if not unclosed:
        return
    # Not a second error line: the scan's error, above, said why the file is unclosed.
    print(
        f"scanstream scan: HDF5 could not close {', '.join(unclosed)}: ending at once (HDF5 "
        "would crash on it at exit)",
        file=sys.stderr,
    )
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class _Failed(Exception):
    """A scan failed on Redis itself (reach, password, rights): reported by run_scan in one line."""


def _run(
    args: argparse.Namespace,
    session: PublishingSession,
    positional: list[Any],
    display: _ScanDisplay,
    ctrl_c: _CtrlC,
    options: dict[str, Any],
) -> int:
    """Run the scan, print its end and saving verdict; return the exit code."""
    result: ScanResult | None = None
    try:
        result = SCAN_FUNCTIONS[args.type](
            session,
            *positional,
            on_start=display.start,
            on_point=display.point,
            on_values=display.values,
            stop_event=ctrl_c.stop,
            **options,
        )
    except KeyboardInterrupt as exc:  # the third Ctrl-C (or SIGTERM)
        result = scan_result_of(exc)
        return ctrl_c.exit_code
    except NoWriterError as exc:
        print_error("scan", str(exc))
        return EXIT_NOT_SAVED
    except MotorLimitError as exc:
        print_error("scan", str(exc))
        return 1
    except Exception as exc:
        result = scan_result_of(exc)
        if describe_failure(exc, None, "") is not None:
            raise _Failed() from exc
        print_error("scan", f"{type(exc).__name__}: {exc}")
        return 1
    finally:
        ctrl_c.scan_running = False
        display.close(result, ctrl_c.name if ctrl_c.count else None)
        session.close()
    print(f"{result.db_name} {result.state.name} {counted(result.npoints, 'point')}")
    if ctrl_c.count:
        return ctrl_c.exit_code
    stopped_as_asked = args.max_duration is not None and result.state is ScanState.USER_ABORTED
    saving = report_saving(display.scan, args.session, args.save_timeout)
    if result.state is not ScanState.DONE and not stopped_as_asked:
        return 1
    return saving


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry nor USER variable (containers)
        return "?"
