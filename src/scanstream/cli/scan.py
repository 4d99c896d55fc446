"""``scanstream scan``: run one simulated scan from the command line, BLISS style.

    scanstream scan --session test_session ascan roby 0 1 10 0.1 diode     # 11 points
    scanstream scan ascan --help

Each scan type is an argparse subcommand built from :data:`SCAN_TYPES`: its positional
arguments are converted and checked while parsing (numbers, and device names of
:func:`~scanstream.sim.beamline.default_beamline`), so a bad command line is a usage error
(exit code 2). A live progress line (points done / total, rate, elapsed time) goes to stderr,
like BLISS's scan display; step scans print a table row per point on stdout (until points
come too fast to read: then the progress line only), ``ct`` prints each counter's value and
rate, and the summary line goes to stdout. Ctrl-C ends the scan USER_ABORTED with the points acquired (exit
code 130).

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
import functools
import getpass
import inspect
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .._transport.server import resolve_url
from ..exceptions import NoWriterError, ScanstreamError
from ..models import ScanState
from ..publish import ScanPublisher, create_session
from ..sim.beamline import Beamline, UnknownDeviceError, default_beamline
from ..sim.control import ScanResult, scan_result_of
from ..sim.devices import MotorLimitError
from ..sim.saving import SavingConfig
from ..sim.scans import a2scan, amesh, ascan, ct, d2scan, dscan, loopscan, timescan
from .scan_display import (
    EXIT_CODES,
    EXIT_NOT_SAVED,
    EXIT_SAVE_TIMEOUT,
    PointTable,
    ProgressDisplay,
    Row,
    ct_lines,
    exit_codes_text,
    report_saving,
)

__all__ = [
    "EXIT_CODES",
    "EXIT_NOT_SAVED",
    "EXIT_SAVE_TIMEOUT",
    "SCAN_HELP",
    "SCAN_TYPES",
    "ProgressDisplay",
    "ScanArgumentError",
    "configure_scan",
    "parse_scan_arguments",
    "run_scan",
]

SCAN_HELP = "run a simulated scan (ct, loopscan, timescan, ascan, dscan, a2scan, d2scan, amesh)"

#: Positional arguments of each scan type, before the counters: (name, kind), kind being
#: ``int``, ``float`` or ``motor``.
SCAN_TYPES: dict[str, list[tuple[str, str]]] = {
    "ct": [("COUNT_TIME", "float")],
    "loopscan": [("NPOINTS", "int"), ("COUNT_TIME", "float")],
    "timescan": [("COUNT_TIME", "float")],
    "ascan": [
        ("MOTOR", "motor"),
        ("START", "float"),
        ("STOP", "float"),
        ("INTERVALS", "int"),
        ("COUNT_TIME", "float"),
    ],
    "a2scan": [
        ("MOTOR1", "motor"),
        ("START1", "float"),
        ("STOP1", "float"),
        ("MOTOR2", "motor"),
        ("START2", "float"),
        ("STOP2", "float"),
        ("INTERVALS", "int"),
        ("COUNT_TIME", "float"),
    ],
    "amesh": [
        ("MOTOR1", "motor"),
        ("START1", "float"),
        ("STOP1", "float"),
        ("INTERVALS1", "int"),
        ("MOTOR2", "motor"),
        ("START2", "float"),
        ("STOP2", "float"),
        ("INTERVALS2", "int"),
        ("COUNT_TIME", "float"),
    ],
}
SCAN_TYPES["dscan"] = SCAN_TYPES["ascan"]
SCAN_TYPES["d2scan"] = SCAN_TYPES["a2scan"]

_FUNCTIONS: dict[str, Callable[..., ScanResult]] = {
    "ct": ct,
    "loopscan": loopscan,
    "timescan": timescan,
    "ascan": ascan,
    "dscan": dscan,
    "a2scan": a2scan,
    "d2scan": d2scan,
    "amesh": amesh,
}


class ScanArgumentError(ScanstreamError, ValueError):
    """Wrong scan arguments; the message shows the usage."""


def usage(scan_type: str) -> str:
    """``ascan MOTOR START STOP INTERVALS COUNT_TIME COUNTER [COUNTER...]``."""
    return " ".join(
        [scan_type] + [name for name, _ in SCAN_TYPES[scan_type]] + ["COUNTER", "[COUNTER...]"]
    )


def _convert(kind: str, name: str, word: Any, beamline: Beamline) -> Any:
    """One argument: a number (kept if already one), or the device of ``beamline`` it names.

    Raises ScanArgumentError for a number that is not one, UnknownDeviceError for a name.
    """
    if kind in ("motor", "counter"):
        return beamline.motor(str(word)) if kind == "motor" else beamline.counter(str(word))
    if not isinstance(word, str):
        return word
    try:
        return int(word) if kind == "int" else float(word)
    except ValueError:
        what = "an integer" if kind == "int" else "a number"
        raise ScanArgumentError(f"{name} must be {what}, got {word!r}") from None


def _arity_error(scan_type: str, words: Sequence[Any], counters: Sequence[str]) -> str | None:
    """What is missing from the positional arguments of a scan, or None."""
    spec = SCAN_TYPES[scan_type]
    if len(words) < len(spec):
        missing = " ".join(name for name, _ in spec[len(words) :])
        return f"missing {missing} (got {len(words)} argument(s))"
    if len(words) == len(spec):
        return f"no counter given; counters: {', '.join(counters)}"
    return None


def parse_scan_arguments(scan_type: str, words: Sequence[Any], beamline: Beamline) -> list[Any]:
    """Turn the words of a command line into the positional arguments of a scan function.

    Parameters
    ----------
    scan_type : str
        A key of :data:`SCAN_TYPES`.
    words : sequence
        The scan's arguments in BLISS order: strings, or the parsed ``args.args``
        (numbers converted, device names checked).
    beamline : Beamline
        Where motors and counters are looked up.

    Raises
    ------
    ScanArgumentError
        Unknown scan type, missing arguments or counters, a number that is not one.
    UnknownDeviceError
        A motor or counter name the beamline does not have (the message lists them).
    """
    if scan_type not in SCAN_TYPES:
        raise ScanArgumentError(f"unknown scan type {scan_type!r}; known: {', '.join(SCAN_TYPES)}")
    spec = SCAN_TYPES[scan_type]
    # The order of the checks is the parser's: each word in turn, then what is missing.
    try:
        args = [_convert(kind, name, word, beamline) for (name, kind), word in zip(spec, words)]
    except ScanArgumentError as exc:
        raise ScanArgumentError(f"{scan_type}: {exc}; usage: {usage(scan_type)}") from None
    counters = [_convert("counter", "COUNTER", word, beamline) for word in words[len(spec) :]]
    problem = _arity_error(scan_type, words, list(beamline.counters))
    if problem is not None:
        raise ScanArgumentError(f"{scan_type}: {problem}; usage: {usage(scan_type)}")
    return args + counters


# --- the parser --------------------------------------------------------------------------------


@functools.cache
def _reference_beamline() -> Beamline:
    """The device names the parser accepts (noise seeds do not change names)."""
    return default_beamline()


def _parse_word(kind: str, name: str) -> Callable[[str], Any]:
    """The ``type=`` of one positional: a number, or a checked device name (kept as a name).

    Errors are ``ArgumentError(None, ...)``, which argparse reports as they are (it would
    prefix an ``ArgumentTypeError`` with ``argument NAME:``, which the message already says).
    """

    def parse(word: str) -> Any:
        try:
            value = _convert(kind, name, word, _reference_beamline())
        except (ScanArgumentError, UnknownDeviceError) as exc:
            raise argparse.ArgumentError(None, str(exc)) from None
        return word if kind in ("motor", "counter") else value

    parse.__name__ = kind  # argparse names the type in some messages
    return parse


class _ScanArgument(argparse.Action):
    """Appends the value(s) of one positional to ``args.args``: the scan's arguments in order."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        given = values if isinstance(values, list) else [] if values is None else [values]
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest, None) or []), *given])


if TYPE_CHECKING:
    _SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]  # noqa: SLF001
else:
    _SubParsers = argparse._SubParsersAction  # noqa: SLF001 (argparse has no public base)


class _ScanTypes(_SubParsers):
    """The scan-type subcommands, with scanstream's messages for an unknown or short one.

    argparse would refuse an unknown subcommand before calling the action, quoting every
    choice; without ``choices`` it reaches :meth:`__call__`, which names the known types.
    Missing arguments are checked here too, after the subcommand has parsed its own, so
    the error shows that subcommand's usage (argparse's own check cannot say "no counter").
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.choices = None  # type: ignore[assignment]  # typeshed: always the parser map

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        scan_type = values[0]
        sub = self._name_parser_map.get(scan_type)
        if sub is None:
            raise argparse.ArgumentError(
                None, f"unknown scan type {scan_type!r}; known: {', '.join(SCAN_TYPES)}"
            )
        super().__call__(parser, namespace, values, option_string)
        problem = _arity_error(
            scan_type, namespace.args or [], list(_reference_beamline().counters)
        )
        if problem is not None and not namespace.list:
            sub.error(problem)


def _add_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """The options of ``scanstream scan``; ``suppress``: without defaults.

    Each scan type accepts them too, so that they may follow the scan's arguments; their
    defaults are suppressed there, or they would replace the values given before the type.
    """

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    session = os.environ.get("SCANSTREAM_SESSION", "test_session")
    parser.add_argument(
        "--session",
        default=default(session),
        help="session name (default: $SCANSTREAM_SESSION or test_session)",
    )
    parser.add_argument(
        "--root",
        default=default(os.environ.get("SCANSTREAM_DATA_ROOT")),
        help="base directory of the data (default: $SCANSTREAM_DATA_ROOT); "
        "without it scans name no file (a writer puts them under its "
        "own --root) and Lima frames are not written",
    )
    parser.add_argument("--sample", default=default("sample"), help="sample name (default: sample)")
    parser.add_argument("--dataset", default=default("0001"), help="dataset name (default: 0001)")
    parser.add_argument(
        "--time-scale",
        type=float,
        default=default(1.0),
        metavar="X",
        help="multiply count times by X (default 1: real time; 0: no waiting)",
    )
    parser.add_argument(
        "--max-duration",
        type=float,
        default=default(None),
        metavar="S",
        help="stop the scan after S seconds (USER_ABORTED), e.g. for timescan",
    )
    parser.add_argument(
        "--npoints",
        type=int,
        default=default(0),
        help="timescan: number of points (0: until stopped)",
    )
    parser.add_argument("--seed", type=int, default=default(0), help="seed of the simulated noise")
    parser.add_argument(
        "--require-writer",
        action="store_true",
        default=default(False),
        help="refuse to start the scan when no writer follows the session (exit code 3)",
    )
    parser.add_argument(
        "--no-writer-warning",
        action="store_true",
        default=default(False),
        help="no warning when no writer follows the session (the verdict is still printed)",
    )
    parser.add_argument(
        "--save-timeout",
        type=float,
        default=default(10.0),
        metavar="S",
        help="seconds to wait at the end for the writer's saving verdict (default 10; "
        "0: read it once, do not wait)",
    )
    parser.add_argument(
        "--no-saving",
        action="store_true",
        default=default(False),
        help="turn saving off (scan_info save=False): no writer is expected, exit code 0",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", default=default(False), help="no progress display"
    )
    parser.add_argument(
        "--list",
        action="store_true",
        default=default(False),
        help="list the simulated devices and scan types, and exit",
    )
    if suppress:  # `scanstream` adds these to the `scan` parser itself
        parser.add_argument(
            "--redis-url",
            metavar="URL",
            default=argparse.SUPPRESS,
            help="as `scanstream --redis-url`",
        )
        parser.add_argument(
            "-v", "--verbose", action="count", default=argparse.SUPPRESS, help="as `scanstream -v`"
        )


_KIND_HELP = {"int": "an integer", "float": "a number", "motor": "a motor name (see --list)"}


def _summary(scan_type: str) -> str:
    """The first line of the scan function's docstring, without reST markup."""
    return (inspect.getdoc(_FUNCTIONS[scan_type]) or "").splitlines()[0].replace("``", "")


def configure_scan(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``scanstream scan`` and one subcommand per scan type to ``parser``.

    The parsed namespace has ``type`` (None when absent) and ``args``: the scan's arguments
    in BLISS order, numbers converted and device names checked (see
    :func:`parse_scan_arguments`).
    """
    _add_options(parser, suppress=False)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = exit_codes_text()
    parser.set_defaults(args=[], scan_parser=parser)
    types = parser.add_subparsers(
        dest="type",
        metavar="TYPE",
        action=_ScanTypes,
        title="scan types",
        help="BLISS argument order",
    )
    for scan_type, spec in SCAN_TYPES.items():
        summary = _summary(scan_type)
        sub = types.add_parser(
            scan_type,
            help=summary,
            description=summary,
            usage=f"%(prog)s [OPTIONS] {usage(scan_type)[len(scan_type) + 1 :]}",
        )
        # nargs="?": a missing argument is reported by _ScanTypes, in the scanstream words.
        # Negative numbers ("-.1") stay arguments, as no option here looks like a number.
        for name, kind in spec:
            sub.add_argument(
                "args",
                nargs="?",
                type=_parse_word(kind, name),
                action=_ScanArgument,
                metavar=name,
                help=_KIND_HELP[kind],
            )
        sub.add_argument(
            "args",
            nargs="*",
            type=_parse_word("counter", "COUNTER"),
            action=_ScanArgument,
            metavar="COUNTER",
            help="counters and detectors to read (see --list)",
        )
        _add_options(sub, suppress=True)
        sub.formatter_class = argparse.RawDescriptionHelpFormatter
        sub.epilog = exit_codes_text()
        sub.set_defaults(scan_parser=sub)


# --- running a scan ----------------------------------------------------------------------------


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
            f"{info.get('filename', '(no filename)')} {self.session} user = {_user()}\n"
            f"{info['title']}",
            file=sys.stderr,
        )
        if not self.quiet:
            self.progress = ProgressDisplay(int(info.get("npoints") or 0))

    def values(self, master: str, index: int, row: Row) -> None:  # on_values callback
        self.last = row
        if self.table is not None:
            self.table(master, index, row)

    def point(self, master: str, done: int) -> None:  # on_point callback
        if self.progress is None:
            return
        if self.table is not None and self.table.active:
            self.progress.done[master] = done  # counted, not shown: it would garble the table
        else:
            self.progress(master, done)

    def close(self, result: ScanResult | None) -> None:
        if self.progress is not None:
            self.progress.close(result)
        if self.ct and self.last and result is not None:
            count_time = float(result.scan_info.get("count_time") or 0.0)
            for line in ct_lines(self.last, count_time):  # ct scans no motor
                print(line)


def _print_listing(beamline: Beamline) -> None:
    """``--list``: the devices, then each scan type with its arguments."""
    for kind, devices in beamline.describe().items():
        print(f"{kind}: " + ", ".join(f"{name} ({what})" for name, what in devices.items()))
    print("scans:")
    for scan_type in SCAN_TYPES:
        print(f"  {usage(scan_type)}")


def _usage_error(parser: argparse.ArgumentParser, message: str) -> int:
    """Report a usage error as argparse does, but return its exit code instead of exiting."""
    parser.print_usage(sys.stderr)
    print(f"{parser.prog}: error: {message}", file=sys.stderr)
    return 2


def _scan_options(args: argparse.Namespace, beamline: Beamline) -> dict[str, Any]:
    """The keyword options of the scan function, from the command line."""
    options: dict[str, Any] = {
        "sleep": max(0.0, args.time_scale),
        "positioners": beamline.positioners,
        "max_duration": args.max_duration,
    }
    if args.root:
        options["saving"] = SavingConfig(
            args.root, args.session, args.sample, args.dataset, enabled=not args.no_saving
        )
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
        within ``--save-timeout``; 130 Ctrl-C (the scan ends USER_ABORTED).
    """
    beamline = default_beamline(args.seed)
    if args.list:
        _print_listing(beamline)
        return 0
    if not args.type:
        return _usage_error(args.scan_parser, f"no scan type; known: {', '.join(SCAN_TYPES)}")
    try:
        positional = parse_scan_arguments(args.type, args.args, beamline)
    except (ScanArgumentError, UnknownDeviceError) as exc:
        return _usage_error(args.scan_parser, str(exc))
    session = create_session(
        args.session,
        redis_url=resolve_url(getattr(args, "redis_url", None)),
        require_writer=args.require_writer,
        warn_no_writer=False,  # the display prints the warning, as one line
    )
    display = _ScanDisplay(
        args.session, args.quiet, warn_no_writer=not args.no_writer_warning, scan_type=args.type
    )
    result: ScanResult | None = None
    try:
        result = _FUNCTIONS[args.type](
            session,
            *positional,
            on_start=display.start,
            on_point=display.point,
            on_values=display.values,
            **_scan_options(args, beamline),
        )
    except KeyboardInterrupt as exc:
        result = scan_result_of(exc)
        return 130
    except NoWriterError as exc:
        print(f"scanstream scan: error: {exc}", file=sys.stderr)
        return EXIT_NOT_SAVED
    except MotorLimitError as exc:
        print(f"scanstream scan: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        result = scan_result_of(exc)
        print(f"scanstream scan: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        display.close(result)
        session.close()
    print(f"{result.db_name} {result.state.name} {result.npoints} points")
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
