"""The scan engine of the simulator: acquisition chains of one or more top masters.

A :class:`TopMaster` is one independent acquisition: at each of its points it moves its
motors, counts (waits ``count_time`` times the time scale), reads its counters, acquires a
Lima frame and then publishes the whole point. :func:`run_chain` publishes a scan with one
container per top master and runs the masters (several at once in threads), then ends the
scan with the state that matches how it stopped.

Node tree published (BLISS layout)::

    <scan>
      axis                      top master with motors: axis:<motor> channels
        timer                   timer:elapsed_time, timer:epoch
          <controller>          one container per counter controller: its channels
          <lima detector>       lima node <detector>:image
      timer2                    top master without motors: timer2:elapsed_time, ...
        <controller> ...
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..exceptions import InvalidArgumentError
from ..models import ScanState
from ..publish import ContainerPublisher, PublishingSession, ScanPublisher
from .control import (
    Control,
    ScanResult,
    notify_scan_created,
    scan_created_hook,
    sigint_deferred,
    time_scale,
)
from .devices import ChannelSpec, Counter, Motor, PointContext
from .lima import LimaAcquisition, LimaDetector
from .metadata import build_scan_info, positioners_end
from .saving import SavingConfig

__all__ = ["Device", "ScanResult", "TopMaster", "notify_scan_created", "run_chain", "scan_created_hook", "time_scale"]

logger = logging.getLogger(__name__)

Device = Counter | LimaDetector

# How long a stopped master thread may take to notice it (it stops between points).
_JOIN_TIMEOUT = 30.0


@dataclass
class TopMaster:
    """One top master of an acquisition chain.

    Parameters
    ----------
    name : str
        Container name and ``acquisition_chain`` key (``axis`` for step scans, ``timer``...).
    npoints : int
        Number of points; 0 runs until stopped.
    count_time : float
        Integration time of each point (seconds, before the time scale).
    counters : sequence of Counter or LimaDetector
        Devices read at each point.
    motors : sequence of Motor
        Motors moved at each point (their channels ``axis:<name>`` belong to this master).
    positions : array-like, optional
        ``(npoints, len(motors))`` user positions; required when there are motors.
    sleep_time : float
        Extra wait after each point (seconds, before the time scale).
    timer : str
        Name of the timer sub-master under a master with motors.
    terminator : bool
        False: this master is stopped when every terminator master has finished (BLISS
        ``terminator=False``), keeping the points it has acquired.
    """

    name: str = "timer"
    npoints: int = 1
    count_time: float = 0.1
    counters: Sequence[Device] = ()
    motors: Sequence[Motor] = ()
    positions: Any = None
    sleep_time: float = 0.0
    timer: str = "timer"
    terminator: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.npoints, (int, np.integer)) or self.npoints < 0:
            raise InvalidArgumentError(f"top master {self.name!r}: npoints must be an int >= 0, got {self.npoints!r}")
        if self.count_time < 0 or self.sleep_time < 0:
            raise InvalidArgumentError(f"top master {self.name!r}: count_time and sleep_time must be >= 0")
        if self.motors:
            pos = np.asarray(self.positions, dtype=np.float64)
            if pos.ndim == 1 and len(self.motors) == 1:
                pos = pos[:, None]
            if pos.shape != (self.npoints, len(self.motors)):
                raise InvalidArgumentError(f"top master {self.name!r}: positions must have shape "
                                 f"({self.npoints}, {len(self.motors)}), got {pos.shape}")
            self.positions = pos
        elif self.positions is not None:
            raise InvalidArgumentError(f"top master {self.name!r}: positions given without motors")

    @property
    def timer_name(self) -> str:
        """Prefix of the timer channels (``timer:elapsed_time``...)."""
        return self.timer if self.motors else self.name

    def timer_channels(self) -> list[ChannelSpec]:
        """The software timer's channels."""
        return [ChannelSpec(f"{self.timer_name}:elapsed_time", "float64", (), "s"),
                ChannelSpec(f"{self.timer_name}:epoch", "float64", (), "s")]

    def motor_channels(self) -> list[ChannelSpec]:
        """The motor channels (``axis:<name>``)."""
        return [ChannelSpec(m.fullname, "float64", (), m.unit) for m in self.motors]

    def counter_channels(self) -> list[ChannelSpec]:
        """Channels of the counters (not of Lima detectors)."""
        return [spec for c in self.counters if isinstance(c, Counter) for spec in c.channels()]

    def detectors(self) -> list[LimaDetector]:
        """The Lima detectors of this master."""
        return [c for c in self.counters if isinstance(c, LimaDetector)]


@dataclass
class _MasterRun:
    """Publishers and state of one top master while the scan runs."""

    master: TopMaster
    motor_nodes: list[Any]
    timer_nodes: list[Any]
    counter_nodes: list[tuple[Counter, list[Any]]]
    lima: list[tuple[LimaAcquisition, Any]]
    acquired: int = 0
    error: BaseException | None = None


def run_chain(
    session: PublishingSession,
    masters: Sequence[TopMaster],
    *,
    name: str = "test",
    scan_info: Mapping[str, Any] | None = None,
    node_type: str = "scan",
    saving: SavingConfig | None = None,
    positioners: Sequence[Motor] | None = None,
    plots: list[dict[str, Any]] | None = None,
    channel_info: Mapping[str, Mapping[str, Any]] | None = None,
    sleep: bool | float = False,
    stop_event: threading.Event | None = None,
    kill_event: threading.Event | None = None,
    max_duration: float | None = None,
    on_start: Callable[[ScanPublisher], None] | None = None,
    on_point: Callable[[str, int], None] | None = None,
) -> ScanResult:
    """Publish and run a scan made of one or more top masters.

    Parameters
    ----------
    session : PublishingSession
        Where to publish.
    masters : sequence of TopMaster
        The top masters, run concurrently (one thread each when there are several).
    name : str
        Scan name (``db_name`` is ``session:N_name``).
    scan_info : Mapping, optional
        Keys overriding the generated ones (``title``, ``type``, ``npoints``...).
    node_type : {"scan", "scan_group"}
        Node type of the scan.
    saving : SavingConfig, optional
        Adds ``filename`` and gives Lima detectors their per-scan directory.
    positioners : sequence of Motor, optional
        Motors recorded in ``positioners`` (default: the scanned ones and those counters use).
    plots : list of dict, optional
        ``scan_info["plots"]``; default: a curve (or scatter for ``data_dim`` 2) of the first
        scalar counter against the first motor (or the elapsed time).
    channel_info : Mapping, optional
        Extra keys per channel of ``scan_info["channels"]`` (``axis-points``...).
    sleep : bool or float
        Time scale of count and sleep times: False (default) does not wait at all.
    stop_event : threading.Event, optional
        When set, masters stop after the current point; the scan ends USER_ABORTED.
    kill_event : threading.Event, optional
        When set, masters stop after the current point; the scan ends KILLED.
    max_duration : float, optional
        Seconds after which the scan stops as with ``stop_event``.
    on_start : callable, optional
        ``on_start(scan_publisher)`` right after the scan is created.
    on_point : callable, optional
        ``on_point(master_name, points_done)`` after each point is published (in the
        master's thread when there are several masters). Progress displays use it; an
        exception it raises stops the scan like one raised by a device.

    Returns
    -------
    ScanResult
        The ended scan. Scans stopped by ``stop_event``, ``kill_event`` or
        ``max_duration`` return normally.

    Raises
    ------
    ValueError
        Bad chain (no master, duplicate names), or a motor limit (:class:`MotorLimitError`),
        raised before the scan is created.
    KeyboardInterrupt
        Re-raised after the scan ended USER_ABORTED; ``exc.scan_result`` is the result.
    Exception
        Any device error, re-raised after the scan ended FAILED (``exc.scan_result`` set).
    """
    scale = time_scale(sleep)
    _check_chain(masters)
    motors = _positioner_motors(masters, positioners)
    if max_duration is not None and max_duration < 0:
        raise InvalidArgumentError(f"max_duration must be >= 0, got {max_duration!r}")

    info = build_scan_info(masters, name, motors, saving, scan_info, plots, channel_info)
    scan = session.create_scan(name, info, node_type=node_type)
    notify_scan_created(scan)
    if on_start is not None:
        on_start(scan)
    ctl = Control(stop_event, kill_event, max_duration, scale, on_point)
    runs: list[_MasterRun] = []
    files: list[str] = []
    state: ScanState = ScanState.DONE
    error: str | None = None
    raised: BaseException | None = None
    try:
        directory = saving.scan_directory(scan.number) if saving is not None else None
        runs = [_create_nodes(scan, m, directory) for m in masters]
        scan.prepared()
        t0 = time.time()
        _run_masters(runs, ctl, t0)
    except KeyboardInterrupt as exc:
        state, error, raised = ScanState.USER_ABORTED, "KeyboardInterrupt", exc
    except BaseException as exc:  # noqa: BLE001 - recorded in the scan, then re-raised
        state, error, raised = ScanState.FAILED, f"{type(exc).__name__}: {exc}", exc
    else:
        # A stop request that came after the last point does not make a complete scan aborted.
        reason = ctl.reason() if _incomplete(runs) else None
        if reason == "kill":
            state, error = ScanState.KILLED, "killed (kill_event set)"
        elif reason == "stop":
            state, error = ScanState.USER_ABORTED, "stopped (stop_event set)"
        elif reason == "max_duration":
            state, error = ScanState.USER_ABORTED, f"stopped after max_duration={ctl.max_duration:g} s"
    finally:
        for run in runs:
            for acq, _ in run.lima:
                try:
                    files.extend(acq.close())
                except Exception:
                    logger.exception("scan %s: closing the files of %s failed", scan.db_name, acq.detector.name)
        # end() replaces top-level keys: give the start positions again with the end ones.
        final_positioners = {**info["positioners"], **positioners_end(motors)}
        try:
            scan.end(state, error=error, info_update={"positioners": final_positioners})
        except Exception:
            if raised is None:
                raise
            logger.exception("scan %s: could not end it as %s", scan.db_name, state.name)
    result = ScanResult(scan.number, scan.name, scan.db_name, session.name, scan.state, error,
                        {r.master.name: r.acquired for r in runs}, scan.info, files, scan)
    if raised is not None:
        raised.scan_result = result  # type: ignore[attr-defined]
        raise raised
    return result


def _incomplete(runs: list[_MasterRun]) -> bool:
    """True when a terminator master (any master, if none is) stopped before its last point."""
    deciding = [r for r in runs if r.master.terminator] or runs
    return any(r.master.npoints == 0 or r.acquired < r.master.npoints for r in deciding)


def _check_chain(masters: Sequence[TopMaster]) -> None:
    """Refuse a chain that would publish clashing names, and moves beyond motor limits."""
    if not masters:
        raise InvalidArgumentError("a scan needs at least one top master")
    names: set[str] = set()
    for m in masters:
        for n in [m.name] + [s.name for s in m.motor_channels() + m.timer_channels() + m.counter_channels()] \
                + [d.fullname for d in m.detectors()]:
            if n in names:
                raise InvalidArgumentError(f"name {n!r} is used twice in the chain: each device and top "
                                 "master may appear once")
            names.add(n)
        for i, motor in enumerate(m.motors):
            motor.check_limits(m.positions[:, i])


def _positioner_motors(masters: Sequence[TopMaster], positioners: Sequence[Motor] | None) -> list[Motor]:
    if positioners is not None:
        return list(positioners)
    motors: dict[str, Motor] = {}
    for m in masters:
        for motor in list(m.motors) + [x for c in m.counters if isinstance(c, Counter) for x in c.motors]:
            motors.setdefault(motor.name, motor)
    return list(motors.values())


def _create_nodes(scan: ScanPublisher, m: TopMaster, directory: Any) -> _MasterRun:
    """Create the node tree of one top master (see the module docstring)."""
    top = scan.create_container(m.name)
    motor_nodes = [top.create_channel(s.name, s.dtype, s.shape, unit=s.unit) for s in m.motor_channels()]
    timer: ContainerPublisher = top.create_container(m.timer) if m.motors else top
    timer_nodes = [timer.create_channel(s.name, s.dtype, s.shape, unit=s.unit) for s in m.timer_channels()]
    controllers: dict[str, ContainerPublisher] = {}
    counter_nodes = []
    lima = []
    for device in m.counters:
        if isinstance(device, LimaDetector):
            acq = device.start(m.npoints, directory=directory, count_time=m.count_time)
            container = timer.create_container(device.name)
            node = container.create_lima(device.fullname, device.dtype, device.shape,
                                         saving_mode=acq.saving_mode.value, info=acq.description())
            lima.append((acq, node))
            continue
        if device.controller not in controllers:
            controllers[device.controller] = timer.create_container(device.controller)
        parent = controllers[device.controller]
        nodes = [parent.create_channel(s.name, s.dtype, s.shape, unit=s.unit) for s in device.channels()]
        counter_nodes.append((device, nodes))
    return _MasterRun(m, motor_nodes, timer_nodes, counter_nodes, lima)


def _run_masters(runs: list[_MasterRun], ctl: Control, t0: float) -> None:
    """Run the masters: inline when there is one, else one thread each."""
    if len(runs) == 1:
        _run_master(runs[0], ctl, t0)
        return
    threads = [threading.Thread(target=_master_thread, args=(run, ctl, t0), daemon=True,
                                name=f"sim-{run.master.name}") for run in runs]
    for t in threads:
        t.start()
    try:
        _join_terminators(runs, threads, ctl)
    except KeyboardInterrupt:
        ctl.abort.set()
        raise
    finally:
        if any(r.error for r in runs):
            ctl.abort.set()
        for t in threads:
            t.join(_JOIN_TIMEOUT)
            if t.is_alive():
                logger.error("simulated master thread %s did not stop", t.name)
    for run in runs:
        if run.error is not None:
            raise run.error


def _join_terminators(runs: list[_MasterRun], threads: list[threading.Thread], ctl: Control) -> None:
    """Wait until every terminator master is done (short joins: Ctrl-C stays responsive)."""
    for run, t in zip(runs, threads):
        if run.master.terminator or all(not r.master.terminator for r in runs):
            while t.is_alive():
                t.join(0.05)
                if any(r.error for r in runs):
                    ctl.abort.set()
    ctl.terminators_done.set()


def _master_thread(run: _MasterRun, ctl: Control, t0: float) -> None:
    try:
        _run_master(run, ctl, t0)
    except BaseException as exc:  # noqa: BLE001 - handed to the main thread
        run.error = exc
        ctl.abort.set()


def _run_master(run: _MasterRun, ctl: Control, t0: float) -> None:
    """Acquire and publish the points of one top master until done or stopped."""
    m = run.master
    indices = itertools.count() if m.npoints == 0 else range(m.npoints)
    for i in indices:
        if ctl.reason(m.terminator) is not None:
            return
        positions: dict[str, float] = {}
        for k, motor in enumerate(m.motors):
            motor.move(m.positions[i, k])
            positions[motor.name] = motor.position
        ctl.wait(m.count_time, m.terminator)
        ctx = PointContext(i, m.count_time, positions)
        # Read everything first, publish after: a failure or Ctrl-C while reading leaves
        # no channel with one point more than the others.
        values = [(nodes, counter.read(ctx)) for counter, nodes in run.counter_nodes]
        refs = [(node, acq.acquire(i)) for acq, node in run.lima]
        now = time.time()
        with sigint_deferred():
            for node, k in zip(run.motor_nodes, range(len(m.motors))):
                node.emit(float(m.positions[i, k]))
            run.timer_nodes[0].emit(now - t0)
            run.timer_nodes[1].emit(now)
            for nodes, vals in values:
                for node, value in zip(nodes, vals):
                    node.emit(value)
            for node, ref in refs:
                node.emit_unsaved(1) if ref is None else node.emit([ref])
            run.acquired = i + 1
        if ctl.on_point is not None:
            ctl.on_point(m.name, i + 1)
        ctl.wait(m.sleep_time, m.terminator)
