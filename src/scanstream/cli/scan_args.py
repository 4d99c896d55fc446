"""The arguments of ``scanstream scan``: each scan type's positional arguments, their checks,
and the argparse subcommands built from them (:func:`configure_scan`).

Each scan type is an argparse subcommand built from :data:`SCAN_TYPES`: its positional
arguments are converted and checked while parsing (numbers, positive point counts and count
times, device names of :func:`~scanstream.sim.beamline.default_beamline`, no device given
twice), so a bad command line is a usage error (exit code 2) before anything is published.
Running the scan is :mod:`scanstream.cli.scan`.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

from ..admin.wording import counted
from ..exceptions import ScanstreamError
from ..sim.beamline import Beamline, UnknownDeviceError, default_beamline
from ..sim.control import ScanResult
from ..sim.scans import a2scan, amesh, ascan, ct, d2scan, dscan, loopscan, timescan
from .scan_display import exit_codes_text
from .usage import SubParsers, accept_negative_values, session_name

__all__ = [
    "SCAN_FUNCTIONS",
    "SCAN_TYPES",
    "ScanArgumentError",
    "add_scan_options",
    "configure_scan",
    "parse_scan_arguments",
    "usage",
]

#: The environment variables of the defaults of ``--session`` and ``--root``.
SESSION_ENV = "SCANSTREAM_SESSION"
DATA_ROOT_ENV = "SCANSTREAM_DATA_ROOT"
DEFAULT_SESSION = "test_session"

#: Positional arguments of each scan type, before the counters: (name, kind), kind being
#: ``count`` (an integer >= 1), ``time`` (seconds > 0), ``float`` or ``motor``.
SCAN_TYPES: dict[str, list[tuple[str, str]]] = {
    "ct": [("COUNT_TIME", "time")],
    "loopscan": [("NPOINTS", "count"), ("COUNT_TIME", "time")],
    "timescan": [("COUNT_TIME", "time")],
    "ascan": [
        ("MOTOR", "motor"),
        ("START", "float"),
        ("STOP", "float"),
        ("INTERVALS", "count"),
        ("COUNT_TIME", "time"),
    ],
    "a2scan": [
        ("MOTOR1", "motor"),
        ("START1", "float"),
        ("STOP1", "float"),
        ("MOTOR2", "motor"),
        ("START2", "float"),
        ("STOP2", "float"),
        ("INTERVALS", "count"),
        ("COUNT_TIME", "time"),
    ],
    "amesh": [
        ("MOTOR1", "motor"),
        ("START1", "float"),
        ("STOP1", "float"),
        ("INTERVALS1", "count"),
        ("MOTOR2", "motor"),
        ("START2", "float"),
        ("STOP2", "float"),
        ("INTERVALS2", "count"),
        ("COUNT_TIME", "time"),
    ],
}
SCAN_TYPES["dscan"] = SCAN_TYPES["ascan"]
SCAN_TYPES["d2scan"] = SCAN_TYPES["a2scan"]

#: The simulated scan function of each scan type.
SCAN_FUNCTIONS: dict[str, Callable[..., ScanResult]] = {
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

    Raises ScanArgumentError for a number that is not one or out of range, UnknownDeviceError
    for a name.
    """
    if kind in ("motor", "counter"):
        return beamline.motor(str(word)) if kind == "motor" else beamline.counter(str(word))
    value = word
    if isinstance(word, str):
        try:
            value = int(word) if kind == "count" else float(word)
        except ValueError:
            what = "an integer" if kind == "count" else "a number"
            raise ScanArgumentError(f"{name} must be {what}, got {word!r}") from None
    if kind == "count" and value < 1:
        raise ScanArgumentError(f"{name} must be at least 1, got {word!r}")
    if kind == "time" and not 0 < value < math.inf:  # also refuses nan
        raise ScanArgumentError(f"{name} must be a positive number of seconds, got {word!r}")
    if kind == "float" and not math.isfinite(value):  # a motor cannot move to nan or inf
        raise ScanArgumentError(f"{name} must be a finite number, got {word!r}")
    return value


def _arity_error(scan_type: str, words: Sequence[Any], counters: Sequence[str]) -> str | None:
    """What is missing from the positional arguments of a scan, or given twice; or None."""
    spec = SCAN_TYPES[scan_type]
    if len(words) < len(spec):
        missing = " ".join(name for name, _ in spec[len(words) :])
        return f"missing {missing} (got {counted(len(words), 'argument')})"
    if len(words) == len(spec):
        return f"no counter given; counters: {', '.join(counters)}"
    motors = [str(w) for (_, kind), w in zip(spec, words) if kind == "motor"]
    for what, names in (("motor", motors), ("counter", [str(w) for w in words[len(spec) :]])):
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            return f"{what} {', '.join(twice)} given twice; give each {what} once"
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
    problem = _arity_error(scan_type, words, list(beamline.counters)) or _size_error(spec, args)
    if problem is not None:
        raise ScanArgumentError(f"{scan_type}: {problem}; usage: {usage(scan_type)}")
    return args + counters


#: The most points of a step scan: the simulator computes every position before it starts
#: (8 bytes per motor and point); more would fail on memory after the scan was announced.
MAX_STEP_POINTS = 10_000_000


def _size_error(spec: Sequence[tuple[str, str]], args: Sequence[Any]) -> str | None:
    """Why a step scan has too many points (INTERVALS + 1 per motor axis), or None."""
    points = 1
    for (name, _), value in zip(spec, args):
        if name.startswith("INTERVALS"):
            points *= int(value) + 1
    if points <= MAX_STEP_POINTS:
        return None
    return (
        f"{points:,} points is more than the {MAX_STEP_POINTS:,} a step scan may have (its "
        "positions are computed in advance); give fewer INTERVALS, or use loopscan or timescan"
    )


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


class _ScanTypes(SubParsers):
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


def _non_negative_seconds(text: str) -> float:
    """An option's number of seconds or scale factor: finite and >= 0 (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number >= 0")
    return value


def _non_negative_int(text: str) -> int:
    """An option's count: an integer >= 0 (argparse type)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be an integer >= 0")
    return value


def add_scan_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """The options of ``scanstream scan``; ``suppress``: without defaults.

    Each scan type accepts them too, so that they may follow the scan's arguments; their
    defaults are suppressed there, or they would replace the values given before the type.
    """

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    # Both default to None, not to the environment: the command then names the variable a
    # wrong value came from (scan_environment), which argparse would call --session or --root.
    parser.add_argument(
        "--session",
        type=session_name,
        default=default(None),
        help=f"session name (default: ${SESSION_ENV} or {DEFAULT_SESSION})",
    )
    parser.add_argument(
        "--root",
        default=default(None),
        help=f"base directory of the data (default: ${DATA_ROOT_ENV}); "
        "without it scans name no file (a writer puts them under its "
        "own --root) and Lima frames are not written",
    )
    parser.add_argument("--sample", default=default("sample"), help="sample name (default: sample)")
    parser.add_argument("--dataset", default=default("0001"), help="dataset name (default: 0001)")
    parser.add_argument(
        "--time-scale",
        type=_non_negative_seconds,
        default=default(1.0),
        metavar="X",
        help="multiply count times by X (default 1: real time; 0: no waiting)",
    )
    parser.add_argument(
        "--max-duration",
        type=_non_negative_seconds,
        default=default(None),
        metavar="S",
        help="stop the scan after S seconds (USER_ABORTED), e.g. for timescan",
    )
    parser.add_argument(
        "--npoints",
        type=_non_negative_int,
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
        type=_non_negative_seconds,
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


_KIND_HELP = {
    "count": "an integer >= 1",
    "time": "seconds, > 0",
    "float": "a number",
    "motor": "a motor name (see --list)",
}


def summary(scan_type: str) -> str:
    """The first line of the scan function's docstring, without reST markup."""
    return (inspect.getdoc(SCAN_FUNCTIONS[scan_type]) or "").splitlines()[0].replace("``", "")


def configure_scan(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``scanstream scan`` and one subcommand per scan type to ``parser``.

    The parsed namespace has ``type`` (None when absent) and ``args``: the scan's arguments
    in BLISS order, numbers converted and device names checked (see
    :func:`parse_scan_arguments`).
    """
    add_scan_options(parser, suppress=False)
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
        text = summary(scan_type)
        sub = types.add_parser(
            scan_type,
            help=text,
            description=text,
            usage=f"%(prog)s [OPTIONS] {usage(scan_type)[len(scan_type) + 1 :]}",
        )
        # nargs="?": a missing argument is reported by _ScanTypes, in the scanstream words.
        # Negative numbers ("-.1", "-1e-3") stay arguments.
        accept_negative_values(sub)
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
        add_scan_options(sub, suppress=True)
        sub.formatter_class = argparse.RawDescriptionHelpFormatter
        sub.epilog = exit_codes_text()
        sub.set_defaults(scan_parser=sub)
