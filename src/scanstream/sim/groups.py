"""Scan groups (sequences of scans referencing their sub-scans) and scans run in parallel.

A group is a ``scan_group`` whose top master ``GroupingMaster`` has a ``scans`` channel of
scan references and a ``scan_numbers`` channel (BLISS ``Sequence`` / ``Group``). In a
:func:`sequence` each reference is published as soon as its sub-scan is created, and the
group ends only after every reference is published.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..publish import PublishingSession, ScanPublisher
from .control import ScanResult, current_group, notify_scan_created, scan_created_hook
from .saving import SavingConfig

__all__ = ["GroupResult", "group", "parallel", "sequence"]

logger = logging.getLogger(__name__)

Step = Callable[[], Any]


@dataclass
class GroupResult(ScanResult):
    """A :class:`~scanstream.sim.control.ScanResult` of a group, with its sub-scans' results."""

    scans: list[Any] = field(default_factory=list)


def _group_info(
    title: str,
    scan_type: str,
    count: int | None,
    saving: SavingConfig | None,
    extra: Mapping[str, Any] | None,
) -> dict[str, Any]:
    info: dict[str, Any] = {
        "title": title,
        "type": scan_type,
        "is-scan-sequence": True,
        "acquisition_chain": {
            "GroupingMaster": {
                "master": {"scalars": ["scan_numbers"], "spectra": [], "images": []},
                "scalars": [],
                "spectra": [],
                "images": [],
            }
        },
        "channels": {"scan_numbers": {"display_name": "scan_numbers", "unit": None, "dim": 0}},
        "publisher": "scanstream.sim",
    }
    if count is not None:
        info["npoints"] = count
        info["sequence-info"] = {"scan-count": count}
    if saving is not None:
        saving.prepare()
    info.update(saving.scan_info() if saving is not None else {})  # as build_scan_info
    info.update(extra or {})
    return info


class _Group:
    """The publishers of a group scan."""

    def __init__(self, session: PublishingSession, name: str, info: dict[str, Any]) -> None:
        group = current_group()
        if group is not None:  # a group inside a sequence names it, as the sequence's scans
            info = {**info, "group": group}
        self.scan = session.create_scan(name, info, node_type="scan_group")
        notify_scan_created(self.scan)  # a group inside a sequence is referenced too
        master = self.scan.create_container("GroupingMaster")
        self.refs = master.create_scan_ref_channel("scans")
        self.numbers = master.create_channel("scan_numbers", "int64")
        self.scan.prepared()
        self.count = 0

    def add(self, sub: Any) -> None:
        """Reference ``sub`` (a ScanPublisher or ScanResult)."""
        self.refs.emit((sub.session_name, int(sub.number)))
        self.numbers.emit(int(sub.number))
        self.count += 1

    def result(self, scans: list[Any]) -> GroupResult:
        s = self.scan
        return GroupResult(
            s.number,
            s.name,
            s.db_name,
            s.session_name,
            s.state,
            s.info.get("error"),
            {"GroupingMaster": self.count},
            s.info,
            publisher=s,
            scans=scans,
        )


def sequence(
    session: PublishingSession,
    steps: Sequence[Step],
    *,
    title: str = "sequence",
    name: str = "sequence",
    saving: SavingConfig | None = None,
    scan_info: Mapping[str, Any] | None = None,
) -> GroupResult:
    """Run ``steps`` one after the other inside a scan group.

    Parameters
    ----------
    session : PublishingSession
        Where the group is published (sub-scans may use any session).
    steps : sequence of callables
        Each ``step()`` runs one scan (or several, or a nested sequence), for example
        ``lambda: loopscan(session, 3, 0.1, diode)``. Every scan a step creates in this
        thread with :func:`~scanstream.sim.chain.run_chain` is referenced by the group as
        soon as it is created.
    title, name : str
        Title and name of the group scan.
    saving : SavingConfig, optional
        Saving configuration (``filename`` of the group).
    scan_info : Mapping, optional
        Extra scan_info keys.

    Returns
    -------
    GroupResult
        ``scans`` holds what each step returned.

    Raises
    ------
    KeyboardInterrupt, Exception
        From a step: the group ends USER_ABORTED / FAILED (after the references already
        published), and the exception is re-raised.
    """
    group_ = _Group(session, name, _group_info(title, "sequence", len(steps), saving, scan_info))
    results: list[Any] = []
    # The scan's context ends it DONE, or USER_ABORTED (Ctrl-C) / FAILED, and re-raises.
    with group_.scan, scan_created_hook(group_.add, group_.scan.db_name):
        for step in steps:
            results.append(step())
    return group_.result(results)


def group(
    session: PublishingSession,
    scans: Sequence[ScanResult | ScanPublisher],
    *,
    title: str = "group",
    name: str = "group",
    saving: SavingConfig | None = None,
    scan_info: Mapping[str, Any] | None = None,
) -> GroupResult:
    """A scan group referencing scans that already ran (BLISS ``Group(s1, s2)``).

    Parameters
    ----------
    scans : sequence of ScanResult or ScanPublisher
        The scans to reference, in order.
    """
    group_ = _Group(session, name, _group_info(title, "group", len(scans), saving, scan_info))
    with group_.scan:
        for scan in scans:
            group_.add(scan)
    return group_.result(list(scans))


def parallel(steps: Sequence[Step], *, timeout: float | None = 60.0) -> list[Any]:
    """Run ``steps`` at the same time, one thread each; return their results in order.

    Parameters
    ----------
    steps : sequence of callables
        For example ``[lambda: loopscan(session, 5, 0.1, diode), ...]``.
    timeout : float or None
        Seconds to wait for all steps.

    Raises
    ------
    TimeoutError
        A step is still running after ``timeout`` (its thread is left running, as a daemon).
    Exception
        The first error raised by a step, once every step has finished.
    """
    results: list[Any] = [None] * len(steps)
    errors: list[BaseException | None] = [None] * len(steps)

    def worker(k: int) -> None:
        try:
            results[k] = steps[k]()
        except BaseException as exc:
            errors[k] = exc

    threads = [
        threading.Thread(target=worker, args=(k,), name=f"sim-parallel-{k}", daemon=True)
        for k in range(len(steps))
    ]
    for t in threads:
        t.start()
    deadline = None if timeout is None else time.monotonic() + timeout
    for t in threads:
        t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if t.is_alive():
            raise TimeoutError(f"parallel scans: {t.name} still running after {timeout} s")
    for error in errors:
        if error is not None:
            raise error
    return results
