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
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..models import ScanState
from ..publish import ContainerPublisher, PublishingSession, ScanPublisher
from .checks import check_duration
from .control import (
    Control,
    ScanResult,
    attach_scan_result,
    current_group,
    notify_scan_created,
    sigint_deferred,
    time_scale,
)
from .devices import Counter, Motor, PointContext
from .lima import LimaAcquisition, LimaDetector
from .masters import TopMaster, check_chain
from .metadata import build_scan_info, positioners_end
from .saving import SavingConfig

__all__ = ["run_chain"]

logger = logging.getLogger(__name__)

# How long a stopped master thread may take to notice it (it stops between points).
_JOIN_TIMEOUT = 30.0


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
    #: The container of each Lima acquisition: BLISS-like, it gets acquisition metadata.
    lima_devices: list[tuple[LimaAcquisition, ContainerPublisher]] = field(default_factory=list)


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
    on_values: Callable[[str, int, list[tuple[str, str | None, float]]], None] | None = None,
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
    on_values : callable, optional
        ``on_values(master_name, index, row)`` after each point is published, before
        ``on_point``: ``row`` lists ``(channel name, unit, value)`` of the scalar channels,
        motor positions first, then counters (what a terminal shows, as BLISS does).

    Returns
    -------
    ScanResult
        The ended scan. Scans stopped by ``stop_event``, ``kill_event`` or
        ``max_duration`` return normally.

    Raises
    ------
    InvalidArgumentError
        Bad chain (no master, duplicate names) or option, raised before the scan is created.
    MotorLimitError
        A position beyond a motor limit, raised before the scan is created.
    KeyboardInterrupt
        Re-raised after the scan ended USER_ABORTED, carrying its :class:`ScanResult` as
        ``exc.scan_result`` (read it with :func:`~scanstream.sim.control.scan_result_of`).
    Exception
        Any device error, re-raised after the scan ended FAILED, with ``exc.scan_result``.
    """
    scale = time_scale(sleep)
    check_chain(masters)
    motors = _positioner_motors(masters, positioners)
    if max_duration is not None:
        check_duration("max_duration", max_duration)

    info = build_scan_info(masters, name, motors, saving, scan_info, plots, channel_info)
    group = current_group()
    if group is not None:
        info.setdefault("group", group)  # as BLISS's sequences mark their scans
    ctl = Control(stop_event, kill_event, max_duration, scale, on_point, on_values)
    runs: list[_MasterRun] = []
    outcome = _Outcome()
    scan = session.create_scan(name, info, node_type=node_type)
    try:  # from here on the scan is ended, whatever happens (see finally)
        notify_scan_created(scan)
        if on_start is not None:
            on_start(scan)
        directory = saving.scan_directory(scan.number) if saving is not None else None
        runs.extend(_create_nodes(scan, m, directory) for m in masters)
        scan.prepared()
        _device_metadata(runs, prepared=True)
        _run_masters(runs, ctl, time.time())
    except KeyboardInterrupt as exc:
        outcome = _Outcome(ScanState.USER_ABORTED, "KeyboardInterrupt", exc)
    except BaseException as exc:
        outcome = _Outcome(ScanState.FAILED, f"{type(exc).__name__}: {exc}", exc)
    else:
        outcome = _stopped(runs, ctl)
    finally:
        # end() replaces top-level keys: give the start positions again with the end ones.
        files: list[str] = []
        positions = dict(info["positioners"])
        try:
            files = _close_detectors(scan, runs)
            _device_metadata(runs, prepared=False)
            positions.update(positioners_end(motors))
        finally:
            # Ended whatever the clean-up above met (a Ctrl-C or SIGTERM there included): left
            # open, the scan would run on in Redis until its lease declared it KILLED.
            _end(scan, outcome, positions)
    result = ScanResult(
        scan.number,
        scan.name,
        scan.db_name,
        session.name,
        scan.state,
        outcome.error,
        {r.master.name: r.acquired for r in runs},
        scan.info,
        files,
        scan,
    )
    if outcome.raised is not None:
        attach_scan_result(outcome.raised, result)
        raise outcome.raised
    return result


@dataclass(frozen=True)
class _Outcome:
    """How a scan ends: its final state, the error text, and the exception to re-raise."""

    state: ScanState = ScanState.DONE
    error: str | None = None
    raised: BaseException | None = None


def _stopped(runs: list[_MasterRun], ctl: Control) -> _Outcome:
    """The outcome of masters that returned normally: done, or stopped on request."""
    # A stop request that came after the last point does not make a complete scan aborted.
    reason = ctl.reason() if _incomplete(runs) else None
    if reason == "kill":
        return _Outcome(ScanState.KILLED, "killed (kill_event set)")
    if reason == "stop":
        return _Outcome(ScanState.USER_ABORTED, "stopped (stop_event set)")
    if reason == "max_duration":
        return _Outcome(
            ScanState.USER_ABORTED, f"stopped after max_duration={ctl.max_duration:g} s"
        )
    return _Outcome()


def _close_detectors(scan: ScanPublisher, runs: list[_MasterRun]) -> list[str]:
    """Close every Lima acquisition (each one even if another fails); the files written."""
    files: list[str] = []
    for run in runs:
        for acq, _ in run.lima:
            try:
                files.extend(acq.close())
            except Exception:
                logger.exception(
                    "scan %s: closing the files of %s failed", scan.db_name, acq.detector.name
                )
    return files


def _device_metadata(runs: list[_MasterRun], *, prepared: bool) -> None:
    """Add acquisition metadata to the Lima device nodes, as BLISS devices do when prepared
    and at the end (subscribers read it at END_SCAN). At the end, a failure is only logged:
    the scan must still end."""
    for run in runs:
        for acq, device in run.lima_devices:
            if prepared:
                device.update_info(
                    {
                        "acq_nb_frames": acq.npoints,
                        "acq_expo_time": acq.count_time,
                        "acq_trigger_mode": "INTERNAL_TRIGGER",
                    }
                )
                continue
            try:
                device.update_info({"acq_frames_acquired": acq.acquired})
            except Exception:  # the scan is lost or ended elsewhere: its end says so
                logger.exception("%s: the end metadata was not published", device.db_name)


def _end(scan: ScanPublisher, outcome: _Outcome, positioners: dict[str, Any]) -> None:
    """End the scan; a failure to end it is logged when another exception is on its way."""
    try:
        scan.end(outcome.state, error=outcome.error, info_update={"positioners": positioners})
    except Exception:
        if outcome.raised is None:
            raise
        logger.exception("scan %s: could not end it as %s", scan.db_name, outcome.state.name)


def _incomplete(runs: list[_MasterRun]) -> bool:
    """True when a terminator master (any master, if none is) stopped before its last point."""
    deciding = [r for r in runs if r.master.terminator] or runs
    return any(r.master.npoints == 0 or r.acquired < r.master.npoints for r in deciding)


def _positioner_motors(
    masters: Sequence[TopMaster], positioners: Sequence[Motor] | None
) -> list[Motor]:
    if positioners is not None:
        return list(positioners)
    motors: dict[str, Motor] = {}
    for m in masters:
        for motor in list(m.motors) + [
            x for c in m.counters if isinstance(c, Counter) for x in c.motors
        ]:
            motors.setdefault(motor.name, motor)
    return list(motors.values())


def _create_nodes(scan: ScanPublisher, m: TopMaster, directory: Any) -> _MasterRun:
    """Create the node tree of one top master (see the module docstring)."""
    top = scan.create_container(m.name)
    motor_nodes = [
        top.create_channel(s.name, s.dtype, s.shape, unit=s.unit) for s in m.motor_channels()
    ]
    timer: ContainerPublisher = top.create_container(m.timer) if m.motors else top
    timer_nodes = [
        timer.create_channel(s.name, s.dtype, s.shape, unit=s.unit) for s in m.timer_channels()
    ]
    controllers: dict[str, ContainerPublisher] = {}
    counter_nodes = []
    lima = []
    devices: list[tuple[LimaAcquisition, ContainerPublisher]] = []
    for device in m.counters:
        if isinstance(device, LimaDetector):
            acq = device.start(m.npoints, directory=directory, count_time=m.count_time)
            container = timer.create_container(device.name)
            node = container.create_lima(
                device.fullname,
                device.dtype,
                device.shape,
                saving_mode=acq.saving_mode.value,
                info=acq.description(),
            )
            lima.append((acq, node))
            devices.append((acq, container))
            continue
        if device.controller not in controllers:
            controllers[device.controller] = timer.create_container(device.controller)
        parent = controllers[device.controller]
        nodes = [
            parent.create_channel(s.name, s.dtype, s.shape, unit=s.unit) for s in device.channels()
        ]
        counter_nodes.append((device, nodes))
    return _MasterRun(m, motor_nodes, timer_nodes, counter_nodes, lima, lima_devices=devices)


def _row(
    run: _MasterRun, positions: dict[str, float], values: list[tuple[list[Any], list[Any]]]
) -> list[tuple[str, str | None, float]]:
    """The scalar values of one point, named and with their unit (motors, then counters)."""
    row: list[tuple[str, str | None, float]] = [
        (m.fullname, m.unit, positions[m.name]) for m in run.master.motors
    ]
    for (counter, _), (_, vals) in zip(run.counter_nodes, values):
        for spec, value in zip(counter.channels(), vals):
            if spec.shape == () and np.ndim(value) == 0:
                row.append((spec.name, spec.unit, float(value)))
    return row


def _run_masters(runs: list[_MasterRun], ctl: Control, t0: float) -> None:
    """Run the masters: inline when there is one, else one thread each."""
    if len(runs) == 1:
        _run_master(runs[0], ctl, t0)
        return
    threads = [
        threading.Thread(
            target=_master_thread, args=(run, ctl, t0), daemon=True, name=f"sim-{run.master.name}"
        )
        for run in runs
    ]
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


def _join_terminators(
    runs: list[_MasterRun], threads: list[threading.Thread], ctl: Control
) -> None:
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
    except BaseException as exc:
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
        if ctl.on_values is not None:
            ctl.on_values(m.name, i, _row(run, positions, values))
        if ctl.on_point is not None:
            ctl.on_point(m.name, i + 1)
        ctl.wait(m.sleep_time, m.terminator)
