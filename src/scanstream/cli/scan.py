"""``scanstream scan``: run one simulated scan from the command line, BLISS style.

    scanstream scan --session test_session ascan roby 0 1 10 0.1 diode     # 11 points

Devices are looked up by name in :func:`~scanstream.sim.beamline.default_beamline`. A live
progress line (points done / total, rate, elapsed time) goes to stderr, like BLISS's scan
display. Ctrl-C ends the scan USER_ABORTED with the points acquired (exit code 130).

It is registered in :data:`scanstream.cli.COMMANDS` (``configure_scan``, ``run_scan``).
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import time
from collections.abc import Callable
from typing import IO, Any

from ..exceptions import ScanstreamError
from ..models import ScanState
from ..sim.beamline import Beamline, UnknownDeviceError, default_beamline
from ..sim.control import ScanResult
from ..sim.devices import MotorLimitError
from ..sim.saving import SavingConfig
from ..sim.scans import a2scan, amesh, ascan, ct, d2scan, dscan, loopscan, timescan

__all__ = ["SCAN_HELP", "SCAN_TYPES", "ProgressDisplay", "ScanArgumentError", "configure_scan",
           "parse_scan_arguments", "run_scan"]

SCAN_HELP = "run a simulated scan (ct, loopscan, timescan, ascan, dscan, a2scan, d2scan, amesh)"

#: Positional arguments of each scan type, before the counters: (name, kind).
SCAN_TYPES: dict[str, list[tuple[str, str]]] = {
    "ct": [("COUNT_TIME", "float")],
    "loopscan": [("NPOINTS", "int"), ("COUNT_TIME", "float")],
    "timescan": [("COUNT_TIME", "float")],
    "ascan": [("MOTOR", "motor"), ("START", "float"), ("STOP", "float"), ("INTERVALS", "int"),
              ("COUNT_TIME", "float")],
    "a2scan": [("MOTOR1", "motor"), ("START1", "float"), ("STOP1", "float"), ("MOTOR2", "motor"),
               ("START2", "float"), ("STOP2", "float"), ("INTERVALS", "int"), ("COUNT_TIME", "float")],
    "amesh": [("MOTOR1", "motor"), ("START1", "float"), ("STOP1", "float"), ("INTERVALS1", "int"),
              ("MOTOR2", "motor"), ("START2", "float"), ("STOP2", "float"), ("INTERVALS2", "int"),
              ("COUNT_TIME", "float")],
}
SCAN_TYPES["dscan"] = SCAN_TYPES["ascan"]
SCAN_TYPES["d2scan"] = SCAN_TYPES["a2scan"]

_FUNCTIONS: dict[str, Callable[..., ScanResult]] = {"ct": ct, "loopscan": loopscan, "timescan": timescan, "ascan": ascan, "dscan": dscan,
              "a2scan": a2scan, "d2scan": d2scan, "amesh": amesh}


class ScanArgumentError(ScanstreamError, ValueError):
    """Wrong scan arguments on the command line; the message shows the usage."""


def usage(scan_type: str) -> str:
    """``ascan MOTOR START STOP INTERVALS COUNT_TIME COUNTER [COUNTER...]``."""
    return " ".join([scan_type] + [name for name, _ in SCAN_TYPES[scan_type]] + ["COUNTER", "[COUNTER...]"])


def parse_scan_arguments(scan_type: str, words: list[str], beamline: Beamline) -> list[Any]:
    """Turn command-line words into the positional arguments of a scan function.

    Raises
    ------
    ScanArgumentError
        Unknown scan type, missing or extra arguments, a number that is not one.
    UnknownDeviceError
        A motor or counter name the beamline does not have (the message lists them).
    """
    if scan_type not in SCAN_TYPES:
        raise ScanArgumentError(f"unknown scan type {scan_type!r}; known: {', '.join(SCAN_TYPES)}")
    spec = SCAN_TYPES[scan_type]
    if len(words) < len(spec):
        missing = [name for name, _ in spec[len(words):]]
        raise ScanArgumentError(f"{scan_type}: missing {' '.join(missing)} (got {len(words)} "
                                f"argument(s)); usage: {usage(scan_type)}")
    args: list[Any] = []
    for (name, kind), word in zip(spec, words):
        if kind == "motor":
            args.append(beamline.motor(word))
            continue
        try:
            args.append(int(word) if kind == "int" else float(word))
        except ValueError:
            raise ScanArgumentError(f"{scan_type}: {name} must be {'an integer' if kind == 'int' else 'a number'}, "
                                    f"got {word!r}; usage: {usage(scan_type)}") from None
    if len(words) == len(spec):
        raise ScanArgumentError(f"{scan_type}: no counter given; usage: {usage(scan_type)}; "
                                f"counters: {', '.join(beamline.counters)}")
    args += [beamline.counter(word) for word in words[len(spec):]]
    return args


class ProgressDisplay:
    """Live progress of a scan on a text stream: points done / total, rate, elapsed time.

    On a terminal the line is rewritten in place at most every ``interval`` seconds;
    otherwise a line is printed at most every 2 s.
    """

    def __init__(self, total: int, stream: IO[str] | None = None, interval: float = 0.1) -> None:
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if self.tty else 2.0
        self.t0 = time.monotonic()
        self.last = 0.0
        self.done: dict[str, int] = {}

    def line(self) -> str:
        """The current progress text."""
        done = sum(self.done.values())
        elapsed = time.monotonic() - self.t0
        rate = done / elapsed if elapsed > 0 else 0.0
        total = str(self.total) if self.total else "unbounded"
        return f"{done}/{total} points  {rate:8.1f} pt/s  elapsed {elapsed:6.2f} s"

    def __call__(self, master: str, done: int) -> None:
        """``on_point`` callback of a scan."""
        self.done[master] = done
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self.stream.write(("\r" if self.tty else "") + self.line() + ("" if self.tty else "\n"))
            self.stream.flush()

    def close(self, result: ScanResult | None) -> None:
        """Print the final line and the outcome."""
        state = result.state.name if result is not None else "FAILED"
        end = f"{self.line()}  {state}" + (f" ({result.error})" if result and result.error else "")
        self.stream.write(("\r" if self.tty else "") + end + "\n")
        self.stream.flush()


def configure_scan(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``scanstream scan`` to ``parser``."""
    parser.add_argument("--session", default=os.environ.get("SCANSTREAM_SESSION", "test_session"),
                        help="session name (default: $SCANSTREAM_SESSION or test_session)")
    parser.add_argument("--root", default=os.environ.get("SCANSTREAM_DATA_ROOT"),
                        help="base directory of the data (default: $SCANSTREAM_DATA_ROOT); "
                             "without it scans name no file (a writer puts them under its "
                             "own --root) and Lima frames are not written")
    parser.add_argument("--sample", default="sample", help="sample name (default: sample)")
    parser.add_argument("--dataset", default="0001", help="dataset name (default: 0001)")
    parser.add_argument("--time-scale", type=float, default=1.0, metavar="X",
                        help="multiply count times by X (default 1: real time; 0: no waiting)")
    parser.add_argument("--max-duration", type=float, default=None, metavar="S",
                        help="stop the scan after S seconds (USER_ABORTED), e.g. for timescan")
    parser.add_argument("--npoints", type=int, default=0, help="timescan: number of points (0: until stopped)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulated noise")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    parser.add_argument("--list", action="store_true", help="list the simulated devices and exit")
    parser.add_argument("type", nargs="?", metavar="TYPE", help=", ".join(SCAN_TYPES))
    # nargs="*" and not REMAINDER: options may also follow the scan arguments. Negative
    # numbers ("-.1") stay arguments, as no option of this parser looks like a number.
    parser.add_argument("args", nargs="*", metavar="ARGS",
                        help="BLISS order, e.g. ascan MOTOR START STOP INTERVALS COUNT_TIME COUNTER...")


def run_scan(args: argparse.Namespace) -> int:
    """Run ``scanstream scan``; return the exit code.

    Returns
    -------
    int
        0 DONE (or stopped by ``--max-duration``); 1 a scan that ended otherwise, or a
        device or limit error; 2 bad arguments;
        130 Ctrl-C (the scan ends USER_ABORTED).
    """
    beamline = default_beamline(args.seed)
    if args.list:
        for kind, devices in beamline.describe().items():
            print(f"{kind}: " + ", ".join(f"{name} ({what})" for name, what in devices.items()))
        return 0
    if not args.type:
        print(f"scanstream scan: error: no scan type; known: {', '.join(SCAN_TYPES)}", file=sys.stderr)
        return 2
    try:
        positional = parse_scan_arguments(args.type, list(args.args), beamline)
    except (ScanArgumentError, UnknownDeviceError) as exc:
        print(f"scanstream scan: error: {exc}", file=sys.stderr)
        return 2
    from .._transport.server import resolve_url
    from ..publish import create_session

    options: dict[str, Any] = {"sleep": max(0.0, args.time_scale), "positioners": beamline.positioners,
                               "max_duration": args.max_duration}
    if args.root:
        options["saving"] = SavingConfig(args.root, args.session, args.sample, args.dataset)
    if args.type == "timescan":
        options["npoints"] = args.npoints
    session = create_session(args.session, redis_url=resolve_url(getattr(args, "redis_url", None)))
    progress: ProgressDisplay | None = None

    def on_start(scan: Any) -> None:
        nonlocal progress
        info = scan.info
        print(f"Scan {scan.number} {info.get('start_time', '')} {info.get('filename', '(no filename)')} "
              f"{args.session} user = {_user()}\n{info['title']}", file=sys.stderr)
        if not args.quiet:
            progress = ProgressDisplay(int(info.get("npoints") or 0))

    def on_point(master: str, done: int) -> None:
        if progress is not None:
            progress(master, done)

    result: ScanResult | None = None
    try:
        result = _FUNCTIONS[args.type](session, *positional, on_start=on_start, on_point=on_point, **options)
    except KeyboardInterrupt as exc:
        result = getattr(exc, "scan_result", None)
        return 130
    except MotorLimitError as exc:
        print(f"scanstream scan: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - a device error: reported, the scan ended FAILED
        result = getattr(exc, "scan_result", None)
        print(f"scanstream scan: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        if progress is not None:
            progress.close(result)
        session.close()
    print(f"{result.db_name} {result.state.name} {result.npoints} points", file=sys.stderr)
    stopped_as_asked = args.max_duration is not None and result.state is ScanState.USER_ABORTED
    return 0 if result.state is ScanState.DONE or stopped_as_asked else 1


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry nor USER variable (containers)
        return "?"
