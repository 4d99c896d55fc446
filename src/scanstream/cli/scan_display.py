"""What ``scanstream scan`` shows, as BLISS shows it: the progress line (stderr), a table row
per point of a step scan and each counter's value (and rate) after ``ct`` (stdout), and at the
end whether the scan was saved, with the exit code that says it (:data:`EXIT_CODES`).

Rows go to stdout (they are the scan's output); when points come faster than a terminal can
show them, the table stops and the progress line on stderr takes over.
"""

from __future__ import annotations

import sys
import textwrap
import time
from collections import deque
from collections.abc import Callable
from typing import IO, TYPE_CHECKING

from .._protocol.metadata import iso_time
from ..exceptions import ScanLostError
from ..models import SavingState

if TYPE_CHECKING:
    from ..publish import ScanPublisher
    from ..sim.control import ScanResult

__all__ = [
    "EXIT_CODES",
    "EXIT_NOT_SAVED",
    "EXIT_SAVE_TIMEOUT",
    "PointTable",
    "ProgressDisplay",
    "Row",
    "ct_lines",
    "exit_codes_text",
    "report_saving",
    "short_name",
]

#: Exit code of a scan that ended DONE but was not saved (or not started: --require-writer).
EXIT_NOT_SAVED = 3
#: Exit code of a scan that ended DONE whose saving verdict was not final within --save-timeout.
EXIT_SAVE_TIMEOUT = 4
#: The exit codes of ``scanstream scan``, as its --help lists them.
EXIT_CODES = {
    0: "the scan ended DONE (or was stopped by --max-duration) and was saved, "
    "or its saving is off by design (--no-saving)",
    1: "the scan ended otherwise (FAILED, KILLED...), or a device or limit error",
    2: "bad arguments",
    EXIT_NOT_SAVED: "NOT SAVED: no writer followed the session, or the writer failed to "
    "save the scan; with --require-writer and no writer, the scan was not started",
    EXIT_SAVE_TIMEOUT: "no saving verdict within --save-timeout (the writer may still save "
    "the scan: see `scanstream ls`)",
    130: "Ctrl-C: the scan ended USER_ABORTED",
    143: "SIGTERM (129: SIGHUP): the scan ended USER_ABORTED, as on Ctrl-C",
}


def exit_codes_text() -> str:
    """The epilog of the --help of ``scanstream scan``: :data:`EXIT_CODES`."""
    lines = ["exit codes:"]
    for code, meaning in EXIT_CODES.items():
        lines.append(
            textwrap.fill(
                meaning, width=78, initial_indent=f"  {code:<4} ", subsequent_indent=" " * 7
            )
        )
    return "\n".join(lines)


#: One point's scalar values: (channel name, unit, value), motors first.
Row = list[tuple[str, "str | None", float]]

# More than _FAST_ROWS rows within _FAST_WINDOW seconds: too fast to read, progress only.
_FAST_ROWS = 10
_FAST_WINDOW = 0.5


def short_name(name: str) -> str:
    """``axis:roby`` -> ``roby``, ``simulation_diode_sampling_controller:diode`` -> ``diode``."""
    return name.rsplit(":", 1)[-1]


def _number(value: float) -> str:
    return f"{value:.6g}"


def ct_lines(row: Row, count_time: float) -> list[str]:
    """``diode = 10.54 (105.4/s)`` per counter of a ``ct`` point, aligned, with units."""
    if not row:
        return []
    width = max(len(short_name(name)) for name, _, _ in row)
    lines = []
    for name, unit, value in row:
        unit_text = f" {unit}" if unit else ""
        line = f"  {short_name(name):>{width}} = {_number(value)}{unit_text}"
        if count_time > 0:
            per_s = f"{unit}/s" if unit else "/s"
            line += f" ({_number(value / count_time)} {per_s})".replace(" /s)", "/s)")
        lines.append(line)
    return lines


class PointTable:
    """A row per point on ``stream``: the point number, motors, then counters.

    Parameters
    ----------
    stream : text stream, optional
        Where the rows go (default stdout).
    clock : callable, optional
        Monotonic time source (tests may pass their own).
    fast_note : str, optional
        The line (stderr) that says the rows stop, and what shows instead.

    Attributes
    ----------
    active : bool
        True while rows are printed; False once points came too fast (then the caller shows
        its progress line instead).
    """

    def __init__(
        self,
        stream: IO[str] | None = None,
        clock: Callable[[], float] | None = None,
        fast_note: str = "(points come faster than a row each can be shown: progress only)",
    ) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.fast_note = fast_note
        self._clock = clock or time.monotonic
        self.active = True
        self.rows = 0
        self._widths: list[int] = []
        self._times: deque[float] = deque(maxlen=_FAST_ROWS)

    def header(self, row: Row) -> str:
        """The header line: ``#`` then each column's short name and unit."""
        names = ["#"] + [
            f"{short_name(name)}[{unit}]" if unit else short_name(name) for name, unit, _ in row
        ]
        self._widths = [max(len(n), 10 if i else 5) for i, n in enumerate(names)]
        return "  ".join(n.rjust(w) for n, w in zip(names, self._widths))

    def __call__(self, master: str, index: int, row: Row) -> None:
        """``on_values`` callback of a scan."""
        if not self.active:
            return
        now = self._clock()
        self._times.append(now)
        if len(self._times) == _FAST_ROWS and now - self._times[0] < _FAST_WINDOW:
            self.active = False
            print(self.fast_note, file=sys.stderr)
            return
        if self.rows == 0:
            self.stream.write(self.header(row) + "\n")
        cells = [str(index)] + [_number(value) for _, _, value in row]
        widths = self._widths + [10] * (len(cells) - len(self._widths))
        self.stream.write("  ".join(c.rjust(w) for c, w in zip(cells, widths)) + "\n")
        self.stream.flush()
        self.rows += 1


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

    def close(self, result: ScanResult | None, why: str | None = None) -> None:
        """Print the final line and the outcome (``why``: in place of the scan's error text)."""
        state = result.state.name if result is not None else "FAILED"
        why = why or (result.error if result is not None else None)
        end = f"{self.line()}  {state}" + (f" ({why})" if why else "")
        self.stream.write(("\r" if self.tty else "") + end + "\n")
        self.stream.flush()


def report_saving(scan: ScanPublisher | None, session: str, timeout: float) -> int:
    """Print whether the scan was saved (stdout); return 0, EXIT_NOT_SAVED or EXIT_SAVE_TIMEOUT.

    Does not wait when no writer follows the session (at the start and now): nothing would
    give a verdict.
    """
    if scan is None:
        return 0
    hint = f"run `scanstream writer {session}` to save it"
    try:
        if scan.no_writer is not None and not scan.writer_follows():
            print(f"NOT SAVED: no writer follows session {session}; {_kept(scan)}; {hint}")
            return EXIT_NOT_SAVED
        verdict = scan.wait_saved(max(0.0, timeout))
    except ScanLostError as exc:
        print(f"NOT SAVED: {exc}")
        return EXIT_NOT_SAVED
    if verdict.state is SavingState.SAVED:
        print(verdict)
        return 0
    if verdict.state is SavingState.NOT_SAVED:
        print(f"not saved, by design: {verdict.reason or 'saving is off'}")
        return 0
    if verdict.state is SavingState.FAILED:
        if verdict.retried:  # the reason says when; SAVED then, or FAILED for good
            hint = f"see `scanstream ls {session}` for its verdict"
        elif scan.writer_follows():  # a running writer tries the scan again at its start only
            hint = f"fix the cause, then restart the writer of session {session} to save it"
        print(f"NOT SAVED: {verdict.reason or 'the writer failed'}; {_kept(scan)}; {hint}")
        return EXIT_NOT_SAVED
    print(
        f"NOT CONFIRMED: no saving verdict after {timeout:g} s ({verdict}); {_kept(scan)}; "
        f"see `scanstream ls {session}`"
    )
    return EXIT_SAVE_TIMEOUT


def _kept(scan: ScanPublisher) -> str:
    """``data kept in Redis until T`` (from the scan's expiry in Redis)."""
    until = scan.kept_until()
    return (
        "data kept in Redis until it is deleted"
        if until is None
        else (f"data kept in Redis until {iso_time(float(int(until)))}")
    )
