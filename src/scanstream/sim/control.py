"""Run-time helpers of the simulator's scan engine: results, time scale, stop control.

Kept apart from :mod:`scanstream.sim.chain` so that the engine module holds only the
acquisition loop.

A scan that ends because of an exception (Ctrl-C, a device error) re-raises it after the
scan has ended; the exception then carries the scan's :class:`ScanResult` as its
``scan_result`` attribute. That attribute is the contract (:class:`CarriesScanResult`): the
engine sets it with :func:`attach_scan_result` and callers read it with
:func:`scan_result_of`, which also accepts exceptions that carry none.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from ..exceptions import InvalidArgumentError
from ..models import ScanState
from ..publish import ScanPublisher

__all__ = [
    "CarriesScanResult",
    "ScanResult",
    "attach_scan_result",
    "current_group",
    "notify_scan_created",
    "scan_created_hook",
    "scan_result_of",
    "time_scale",
]

# Longest uninterrupted sleep: bounds the reaction time to a stop or kill request.
_WAIT_SLICE = 0.02


@dataclass
class ScanResult:
    """What a simulated scan did.

    Attributes
    ----------
    number, name, db_name : int, str, str
        Identity of the published scan.
    state : ScanState
        Final state.
    error : str or None
        Error text of a scan that did not end DONE.
    acquired : dict
        Points acquired per top master name.
    scan_info : dict
        The scan_info as published at the end.
    files : list of str
        Detector files written.
    publisher : ScanPublisher
        The publisher (ended).
    label : str
        Free label (the catalogue puts its entry name there).
    """

    number: int
    name: str
    db_name: str
    session_name: str
    state: ScanState
    error: str | None
    acquired: dict[str, int]
    scan_info: dict[str, Any]
    files: list[str] = field(default_factory=list)
    publisher: ScanPublisher | None = field(default=None, repr=False)
    label: str = ""

    @property
    def npoints(self) -> int:
        """Points acquired by the first top master."""
        return next(iter(self.acquired.values()), 0)


class CarriesScanResult(Protocol):
    """An exception re-raised by a scan after it ended: ``scan_result`` is what the scan did."""

    scan_result: ScanResult


def attach_scan_result(exc: BaseException, result: ScanResult) -> None:
    """Give ``exc``, about to be re-raised by a scan, the result of that scan."""
    cast(CarriesScanResult, exc).scan_result = result


def scan_result_of(exc: BaseException) -> ScanResult | None:
    """The :class:`ScanResult` carried by an exception a scan re-raised, or None.

    None for an exception raised before any scan was created (a bad argument, a motor limit)
    or by code other than a scan.
    """
    result = getattr(exc, "scan_result", None)
    return result if isinstance(result, ScanResult) else None


def time_scale(sleep: bool | float) -> float:
    """Factor applied to count and sleep times: True 1.0, False 0.0, or a number >= 0."""
    if isinstance(sleep, bool):
        return 1.0 if sleep else 0.0
    if not isinstance(sleep, (int, float)) or sleep < 0:
        raise InvalidArgumentError(f"sleep must be True, False or a time scale >= 0, got {sleep!r}")
    return float(sleep)


# Scan groups being filled in this thread: each is told about scans created inside it.
_group_hooks = threading.local()


@contextlib.contextmanager
def scan_created_hook(
    hook: Callable[[ScanPublisher], None], group: str | None = None
) -> Iterator[None]:
    """Within the block, call ``hook(scan)`` for each scan :func:`run_chain` creates in this thread.

    ``group`` is the db_name of the group being filled: :func:`current_group` gives it.
    """
    stack = _group_hooks.__dict__.setdefault("stack", [])
    stack.append((hook, group))
    try:
        yield
    finally:
        stack.pop()


def current_group() -> str | None:
    """db_name of the innermost scan group being filled in this thread, or None.

    Scans created in it carry it as ``scan_info["group"]``, as BLISS's sequences set it.
    """
    stack = getattr(_group_hooks, "stack", ())
    return stack[-1][1] if stack else None


def notify_scan_created(scan: ScanPublisher) -> None:
    """Tell the innermost scan group being filled in this thread that ``scan`` was created."""
    for hook, _ in list(getattr(_group_hooks, "stack", ()))[-1:]:
        hook(scan)


@contextlib.contextmanager
def sigint_deferred() -> Iterator[None]:
    """Delay Ctrl-C until the block is done, so a point is published on all channels or none.

    Only in the main thread (the only one Python delivers signals to) and only when SIGINT
    has Python's default handler: an application's own handler is left alone.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    received: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if received:
        raise KeyboardInterrupt


class Control:
    """Why and when the masters of one scan stop."""

    def __init__(
        self,
        stop_event: threading.Event | None,
        kill_event: threading.Event | None,
        max_duration: float | None,
        scale: float,
        on_point: Callable[[str, int], None] | None = None,
        on_values: Callable[[str, int, list[tuple[str, str | None, float]]], None] | None = None,
    ) -> None:
        self.on_point = on_point
        self.on_values = on_values
        self.stop_event = stop_event
        self.kill_event = kill_event
        self.deadline = None if max_duration is None else time.monotonic() + max_duration
        self.max_duration = max_duration
        self.scale = scale
        self.abort = threading.Event()  # a master failed or the main thread was interrupted
        self.terminators_done = threading.Event()

    def reason(self, terminator: bool = True) -> str | None:
        """Why the caller must stop now, or None."""
        if self.abort.is_set():
            return "abort"
        if self.kill_event is not None and self.kill_event.is_set():
            return "kill"
        if self.stop_event is not None and self.stop_event.is_set():
            return "stop"
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return "max_duration"
        if not terminator and self.terminators_done.is_set():
            return "terminated"
        return None

    def wait(self, seconds: float, terminator: bool) -> None:
        """Sleep ``seconds`` times the time scale, waking up early on a stop request."""
        end = time.monotonic() + seconds * self.scale
        while (left := end - time.monotonic()) > 0 and self.reason(terminator) is None:
            # Event.wait is interruptible by Ctrl-C in the main thread, unlike a C sleep loop.
            self.abort.wait(min(left, _WAIT_SLICE))
