"""The standard BLISS scans on simulated devices: ct, loopscan, timescan, a/d(2)scan, amesh.

Arguments follow BLISS's order, with the publishing session first::

    ascan(session, roby, 0, 1, 10, 0.1, diode)     # 10 intervals: 11 points

Every scan accepts the keyword options of :func:`~scanstream.sim.chain.run_chain`
(``saving``, ``sleep``, ``stop_event``, ``kill_event``, ``max_duration``, ``scan_info``,
``positioners``, ``on_start``, ``on_point``...). By default nothing sleeps: ``count_time`` is
published but only waited for with ``sleep=True`` (or a time scale such as ``sleep=0.1``).
All return a :class:`~scanstream.sim.control.ScanResult`; bad arguments raise
:class:`~scanstream.exceptions.InvalidArgumentError` before anything is published.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..exceptions import InvalidArgumentError
from ..publish import PublishingSession
from .chain import run_chain
from .checks import check_count, check_duration
from .control import ScanResult
from .devices import Motor
from .masters import Device, TopMaster
from .metadata import format_title

__all__ = [
    "a2scan",
    "amesh",
    "anscan",
    "ascan",
    "ct",
    "d2scan",
    "dnscan",
    "dscan",
    "loopscan",
    "timescan",
]


def ct(
    session: PublishingSession, count_time: float = 1.0, *counters: Device, **options: Any
) -> ScanResult:
    """Count once (``npoints=1``) on ``counters``.

    Parameters
    ----------
    session : PublishingSession
        Where to publish.
    count_time : float
        Integration time (s).
    *counters : Counter or LimaDetector
        Devices to read.
    **options
        Options of :func:`~scanstream.sim.chain.run_chain`.
    """
    count_time = check_duration("count_time", count_time)
    info = {"title": format_title("ct", count_time), "type": "ct", "npoints": 1}
    return _run(session, "ct", [TopMaster("timer", 1, count_time, counters)], info, options)


def loopscan(
    session: PublishingSession,
    npoints: int,
    count_time: float,
    *counters: Device,
    sleep_time: float = 0.0,
    **options: Any,
) -> ScanResult:
    """Count ``npoints`` times, without moving anything.

    Parameters
    ----------
    npoints : int
        Number of points (>= 1).
    count_time : float
        Integration time of each point (s).
    *counters : Counter or LimaDetector
        Devices to read.
    sleep_time : float
        Wait between points (s, scaled like ``count_time``).
    **options
        Options of :func:`~scanstream.sim.chain.run_chain`.
    """
    npoints = check_count("npoints", npoints, 1)
    count_time = check_duration("count_time", count_time)
    info = {
        "title": format_title("loopscan", npoints, count_time),
        "type": "loopscan",
        "npoints": npoints,
    }
    if sleep_time:
        info["sleep_time"] = sleep_time
    master = TopMaster("timer", npoints, count_time, counters, sleep_time=sleep_time)
    return _run(session, "loopscan", [master], info, options)


def timescan(
    session: PublishingSession,
    count_time: float,
    *counters: Device,
    npoints: int = 0,
    sleep_time: float = 0.0,
    **options: Any,
) -> ScanResult:
    """Count every ``count_time + sleep_time`` until stopped (``npoints=0``) or ``npoints`` times.

    An unbounded timescan ends with ``stop_event``, ``kill_event``, ``max_duration`` or
    Ctrl-C; it then ends USER_ABORTED (KILLED for ``kill_event``) with the points acquired.

    Parameters
    ----------
    count_time : float
        Integration time of each point (s).
    *counters : Counter or LimaDetector
        Devices to read.
    npoints : int
        0 (default): unbounded.
    sleep_time : float
        Wait between points (s).
    **options
        Options of :func:`~scanstream.sim.chain.run_chain`.
    """
    count_time = check_duration("count_time", count_time)
    npoints = check_count("npoints", npoints, 0)
    info: dict[str, Any] = {
        "title": format_title("timescan", count_time),
        "type": "timescan",
        "npoints": npoints,
    }
    if sleep_time:
        info["sleep_time"] = sleep_time
    master = TopMaster("timer", npoints, count_time, counters, sleep_time=sleep_time)
    return _run(session, "timescan", [master], info, options)


def anscan(
    session: PublishingSession,
    ranges: Sequence[tuple[Motor, float, float]],
    intervals: int,
    count_time: float,
    *counters: Device,
    scan_type: str | None = None,
    **options: Any,
) -> ScanResult:
    """Absolute step scan of N motors moved together: ``intervals + 1`` points.

    Parameters
    ----------
    ranges : sequence of (Motor, start, stop)
        Each motor goes linearly from start to stop.
    intervals : int
        Number of intervals (>= 1).
    count_time : float
        Integration time of each point (s).
    scan_type : str, optional
        ``type`` and title word; default ``ascan``/``a2scan``/``anscan``.
    """
    intervals = check_count("intervals", intervals, 1)
    count_time = check_duration("count_time", count_time)
    scan_type = scan_type or {1: "ascan", 2: "a2scan"}.get(len(ranges), "anscan")
    return _step_scan(session, scan_type, ranges, ranges, intervals, count_time, counters, options)


def ascan(
    session: PublishingSession,
    motor: Motor,
    start: float,
    stop: float,
    intervals: int,
    count_time: float,
    *counters: Device,
    **options: Any,
) -> ScanResult:
    """Absolute step scan of one motor: ``intervals + 1`` points from ``start`` to ``stop``.

    Raises
    ------
    MotorLimitError
        A position is beyond a limit (before the scan is created).
    """
    return anscan(session, [(motor, start, stop)], intervals, count_time, *counters, **options)


def a2scan(
    session: PublishingSession,
    motor1: Motor,
    start1: float,
    stop1: float,
    motor2: Motor,
    start2: float,
    stop2: float,
    intervals: int,
    count_time: float,
    *counters: Device,
    **options: Any,
) -> ScanResult:
    """Absolute step scan of two motors moved together (``intervals + 1`` points)."""
    return anscan(
        session,
        [(motor1, start1, stop1), (motor2, start2, stop2)],
        intervals,
        count_time,
        *counters,
        **options,
    )


def dnscan(
    session: PublishingSession,
    ranges: Sequence[tuple[Motor, float, float]],
    intervals: int,
    count_time: float,
    *counters: Device,
    scan_type: str | None = None,
    **options: Any,
) -> ScanResult:
    """Relative step scan of N motors; the motors go back to their start positions at the end.

    ``start``/``stop`` are relative to the current positions; ``scan_info["start"]`` and
    ``["stop"]`` hold the absolute positions, the title the relative ones (BLISS).
    """
    intervals = check_count("intervals", intervals, 1)
    count_time = check_duration("count_time", count_time)
    scan_type = scan_type or {1: "dscan", 2: "d2scan"}.get(len(ranges), "dnscan")
    origins = [m.position for m, _, _ in ranges]
    absolute = [(m, o + s, o + e) for (m, s, e), o in zip(ranges, origins)]
    try:
        return _step_scan(
            session, scan_type, ranges, absolute, intervals, count_time, counters, options
        )
    finally:  # also after an error or Ctrl-C, like BLISS's dscan cleanup
        for (motor, _, _), origin in zip(ranges, origins):
            if motor.position != origin:
                motor.move(origin)


def dscan(
    session: PublishingSession,
    motor: Motor,
    start: float,
    stop: float,
    intervals: int,
    count_time: float,
    *counters: Device,
    **options: Any,
) -> ScanResult:
    """Relative step scan of one motor, which returns to its start position at the end."""
    return dnscan(session, [(motor, start, stop)], intervals, count_time, *counters, **options)


def d2scan(
    session: PublishingSession,
    motor1: Motor,
    start1: float,
    stop1: float,
    motor2: Motor,
    start2: float,
    stop2: float,
    intervals: int,
    count_time: float,
    *counters: Device,
    **options: Any,
) -> ScanResult:
    """Relative step scan of two motors, which return to their start positions at the end."""
    return dnscan(
        session,
        [(motor1, start1, stop1), (motor2, start2, stop2)],
        intervals,
        count_time,
        *counters,
        **options,
    )


def amesh(
    session: PublishingSession,
    motor1: Motor,
    start1: float,
    stop1: float,
    intervals1: int,
    motor2: Motor,
    start2: float,
    stop2: float,
    intervals2: int,
    count_time: float,
    *counters: Device,
    backnforth: bool = False,
    **options: Any,
) -> ScanResult:
    """Mesh scan: ``motor1`` is the fast axis, ``(intervals1 + 1) * (intervals2 + 1)`` points.

    ``scan_info`` has ``data_dim=2``, ``npoints1``, ``npoints2`` and a scatter plot.

    Parameters
    ----------
    backnforth : bool
        Scan every other line of the fast axis backwards.
    """
    n1 = check_count("intervals1", intervals1, 1) + 1
    n2 = check_count("intervals2", intervals2, 1) + 1
    count_time = check_duration("count_time", count_time)
    p1, p2 = np.linspace(start1, stop1, n1), np.linspace(start2, stop2, n2)
    fast = np.concatenate([p1[::-1] if backnforth and j % 2 else p1 for j in range(n2)])
    positions = np.column_stack([fast, np.repeat(p2, n1)])
    title = format_title(
        "amesh", motor1, start1, stop1, intervals1, motor2, start2, stop2, intervals2, count_time
    )
    info = {
        "title": title,
        "type": "amesh",
        "npoints": n1 * n2,
        "npoints1": n1,
        "npoints2": n2,
        "data_dim": 2,
        "start": [start1, start2],
        "stop": [stop1, stop2],
    }
    channel_info = {
        motor1.fullname: {
            "axis-points": n1,
            "axis-id": 0,
            "axis-kind": "backnforth" if backnforth else "forth",
            "start": float(start1),
            "stop": float(stop1),
            "points": n1 * n2,
        },
        motor2.fullname: {
            "axis-points": n2,
            "axis-id": 1,
            "axis-kind": "forth",
            "start": float(start2),
            "stop": float(stop2),
            "points": n1 * n2,
        },
    }
    master = TopMaster(
        "axis", n1 * n2, count_time, counters, motors=[motor1, motor2], positions=positions
    )
    options.setdefault("channel_info", channel_info)
    return _run(session, "amesh", [master], info, options)


def _step_scan(
    session: PublishingSession,
    scan_type: str,
    given: Sequence[tuple[Motor, float, float]],
    absolute: Sequence[tuple[Motor, float, float]],
    intervals: int,
    count_time: float,
    counters: Sequence[Device],
    options: dict[str, Any],
) -> ScanResult:
    if not given:
        raise InvalidArgumentError(f"{scan_type}: at least one motor is needed")
    motors = [m for m, _, _ in absolute]
    if len({m.name for m in motors}) != len(motors):
        raise InvalidArgumentError(
            f"{scan_type}: a motor is given twice: {[m.name for m in motors]}"
        )
    positions = np.column_stack([np.linspace(s, e, intervals + 1) for _, s, e in absolute])
    words = [w for m, s, e in given for w in (m, s, e)]
    info = {
        "title": format_title(scan_type, *words, intervals, count_time),
        "type": scan_type,
        "npoints": intervals + 1,
        "start": [float(s) for _, s, _ in absolute],
        "stop": [float(e) for _, _, e in absolute],
    }
    master = TopMaster(
        "axis", intervals + 1, count_time, counters, motors=motors, positions=positions
    )
    return _run(session, scan_type, [master], info, options)


def _run(
    session: PublishingSession,
    name: str,
    masters: list[TopMaster],
    info: dict[str, Any],
    options: dict[str, Any],
) -> ScanResult:
    """Run the chain; user ``scan_info`` keys override the generated ones."""
    info.update(options.pop("scan_info", None) or {})
    options.setdefault("name", name)
    return run_chain(session, masters, scan_info=info, **options)
