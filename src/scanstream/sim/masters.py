"""The description of an acquisition chain: top masters and the devices they read.

Kept apart from the engine (:mod:`scanstream.sim.chain`), which runs a chain, and from
:mod:`scanstream.sim.metadata`, which describes one in ``scan_info``: both depend on this
module, and neither on the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..exceptions import InvalidArgumentError
from .checks import check_count, check_duration
from .devices import ChannelSpec, Counter, Motor
from .lima import LimaDetector

__all__ = ["Device", "TopMaster", "check_chain"]

#: What a top master reads at each point.
Device = Counter | LimaDetector


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

    Raises
    ------
    InvalidArgumentError
        A negative ``npoints``, count or sleep time, or positions of the wrong shape.
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
        owner = f"top master {self.name!r}"
        self.npoints = check_count("npoints", self.npoints, 0, owner)
        self.count_time = check_duration("count_time", self.count_time, owner)
        self.sleep_time = check_duration("sleep_time", self.sleep_time, owner)
        if self.motors:
            pos = np.asarray(self.positions, dtype=np.float64)
            if pos.ndim == 1 and len(self.motors) == 1:
                pos = pos[:, None]
            if pos.shape != (self.npoints, len(self.motors)):
                raise InvalidArgumentError(
                    f"{owner}: positions must have shape ({self.npoints}, {len(self.motors)}), "
                    f"got {pos.shape}"
                )
            self.positions = pos
        elif self.positions is not None:
            raise InvalidArgumentError(f"{owner}: positions given without motors")

    @property
    def timer_name(self) -> str:
        """Prefix of the timer channels (``timer:elapsed_time``...)."""
        return self.timer if self.motors else self.name

    def timer_channels(self) -> list[ChannelSpec]:
        """The software timer's channels."""
        return [
            ChannelSpec(f"{self.timer_name}:elapsed_time", "float64", (), "s"),
            ChannelSpec(f"{self.timer_name}:epoch", "float64", (), "s"),
        ]

    def motor_channels(self) -> list[ChannelSpec]:
        """The motor channels (``axis:<name>``)."""
        return [ChannelSpec(m.fullname, "float64", (), m.unit) for m in self.motors]

    def counter_channels(self) -> list[ChannelSpec]:
        """Channels of the counters (not of Lima detectors)."""
        return [spec for c in self.counters if isinstance(c, Counter) for spec in c.channels()]

    def detectors(self) -> list[LimaDetector]:
        """The Lima detectors of this master."""
        return [c for c in self.counters if isinstance(c, LimaDetector)]

    def published_names(self) -> list[str]:
        """Every node name this master publishes: itself, its channels and detectors."""
        channels = self.motor_channels() + self.timer_channels() + self.counter_channels()
        return [self.name] + [s.name for s in channels] + [d.fullname for d in self.detectors()]


def check_chain(masters: Sequence[TopMaster]) -> None:
    """Refuse a chain that would publish clashing names, or move a motor beyond its limits.

    Raises
    ------
    InvalidArgumentError
        No master, or a name used twice.
    MotorLimitError
        A position of a master is beyond a limit of its motor.
    """
    if not masters:
        raise InvalidArgumentError("a scan needs at least one top master")
    names: set[str] = set()
    for m in masters:
        for n in m.published_names():
            if n in names:
                raise InvalidArgumentError(
                    f"name {n!r} is used twice in the chain: each device "
                    "and top master may appear once"
                )
            names.add(n)
        for i, motor in enumerate(m.motors):
            motor.check_limits(m.positions[:, i])
