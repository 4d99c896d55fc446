"""Simulated devices: motors and counters with deterministic signals.

Every simulated value is a pure function of the device parameters, the point index and the
motor positions: noise comes from a random generator seeded with ``(seed, device name, point
index)``. Running the same scan twice therefore publishes the same values, whatever the
thread scheduling or the order in which the devices are read.

The channel full names follow BLISS: ``axis:roby`` for motors,
``simulation_diode_sampling_controller:diode`` for diodes. Devices publishing 1D data per
point (sampling counters, MCA) are in :mod:`scanstream.sim.spectra`.
"""

from __future__ import annotations

import math
import threading
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ..exceptions import InvalidArgumentError, ScanstreamError

__all__ = [
    "ChannelSpec",
    "ConstantCounter",
    "Counter",
    "DiodeCounter",
    "GaussianCounter",
    "Motor",
    "MotorLimitError",
    "PointContext",
    "seeded_rng",
]


class MotorLimitError(ScanstreamError, ValueError):
    """A move would take a motor beyond one of its limits (raised before anything moves)."""


def seeded_rng(seed: int, name: str, index: int) -> np.random.Generator:
    """Random generator for point ``index`` of device ``name``: reproducible, order-free.

    ``zlib.crc32`` and not ``hash()``: string hashes are salted per process, and values
    must be the same in every run.
    """
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(name.encode()), int(index)])


# --------------------------------------------------------------------------------- motors


class Motor:
    """A simulated motor: moves instantly, checks its limits before any move.

    The user position is ``sign * dial + offset`` (BLISS convention); limits are given in
    user units.

    Parameters
    ----------
    name : str
        Motor name; its channel is ``axis:<name>``.
    position : float
        Initial user position.
    unit : str
        Unit of the positions.
    low_limit, high_limit : float
        User limits (inclusive).
    offset : float
        User minus dial position (for ``sign=1``).
    sign : {1, -1}
        Direction of the user axis relative to the dial axis.
    """

    def __init__(
        self,
        name: str,
        position: float = 0.0,
        unit: str = "mm",
        low_limit: float = -math.inf,
        high_limit: float = math.inf,
        *,
        offset: float = 0.0,
        sign: int = 1,
    ) -> None:
        if sign not in (1, -1):
            raise InvalidArgumentError(f"motor {name!r}: sign must be 1 or -1, got {sign!r}")
        if low_limit > high_limit:
            raise InvalidArgumentError(
                f"motor {name!r}: low limit {low_limit} > high limit {high_limit}"
            )
        self.name = name
        self.unit = unit
        self.low_limit = float(low_limit)
        self.high_limit = float(high_limit)
        self.offset = float(offset)
        self.sign = sign
        self._lock = threading.Lock()
        self.check_limits([position])
        self._dial = (float(position) - self.offset) * sign

    def __repr__(self) -> str:
        return f"<Motor {self.name!r} at {self.position:g} {self.unit}>"

    @property
    def fullname(self) -> str:
        """Channel full name, ``axis:<name>``."""
        return f"axis:{self.name}"

    @property
    def position(self) -> float:
        """User position."""
        return self.sign * self._dial + self.offset

    @property
    def dial(self) -> float:
        """Dial position."""
        return self._dial

    def check_limits(self, targets: Iterable[float]) -> None:
        """Raise :class:`MotorLimitError` if any of ``targets`` is outside the limits.

        Raises
        ------
        MotorLimitError
            The message names the motor, the first offending target and the limits.
        """
        values = np.asarray(list(targets), dtype=np.float64)
        if values.size == 0:
            return
        # Report the extreme target, the one the user must change, not the first one out.
        for target in (float(values.max()), float(values.min())):
            if not self.low_limit <= target <= self.high_limit:
                raise MotorLimitError(
                    f"motor {self.name!r}: move to {target:g} {self.unit} is outside its "
                    f"limits [{self.low_limit:g}, {self.high_limit:g}] {self.unit}"
                )

    def move(self, target: float) -> None:
        """Move to user position ``target`` (instantly).

        Raises
        ------
        MotorLimitError
            ``target`` is beyond a limit; the motor does not move.
        """
        self.check_limits([target])
        with self._lock:
            self._dial = (float(target) - self.offset) * self.sign


# -------------------------------------------------------------------------------- counters


@dataclass(frozen=True)
class ChannelSpec:
    """One channel published by a device.

    Attributes
    ----------
    name : str
        Full name (``controller:counter``).
    dtype : str
        numpy dtype string.
    shape : tuple of int
        Shape of one point; ``(-1,)`` for 1D points whose length varies.
    unit : str or None
        Physical unit.
    """

    name: str
    dtype: str = "float64"
    shape: tuple[int, ...] = ()
    unit: str | None = None

    @property
    def dim(self) -> int:
        """Dimension of one point (0 scalar, 1 spectrum, 2 image)."""
        return len(self.shape)

    @property
    def kind(self) -> str:
        """``scalars``, ``spectra`` or ``images``: its list in ``acquisition_chain``."""
        return ("scalars", "spectra", "images")[min(self.dim, 2)]

    @property
    def display_name(self) -> str:
        """Short name shown in plots (the part after the last ``:``)."""
        return self.name.rsplit(":", 1)[-1]


@dataclass(frozen=True)
class PointContext:
    """What a counter may use to compute its value at one point.

    Attributes
    ----------
    index : int
        Index of the point in its top master (0-based).
    count_time : float
        Nominal integration time of the point (seconds), whether or not it was slept.
    positions : Mapping[str, float]
        User position of every motor of the scan at this point, by motor name.
    """

    index: int
    count_time: float
    positions: Mapping[str, float] = field(default_factory=dict)


class Counter:
    """Base of simulated counters: a controller (a container node) and its channels.

    Subclasses set :attr:`controller` and implement :meth:`channels` and :meth:`read`.
    """

    controller = "simulation_counter_controller"

    def __init__(self, name: str, *, unit: str | None = None, seed: int = 0) -> None:
        if not name or ":" in name:
            raise InvalidArgumentError(f"invalid counter name {name!r}: non-empty, without ':'")
        self.name = name
        self.unit = unit
        self.seed = seed

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.fullname!r}>"

    @property
    def fullname(self) -> str:
        """Full name of the main channel, ``controller:name``."""
        return f"{self.controller}:{self.name}"

    @property
    def motors(self) -> tuple[Motor, ...]:
        """Motors the signal depends on (reported in the scan's positioners)."""
        return ()

    def channels(self) -> list[ChannelSpec]:
        """The channels published at each point, in the order of :meth:`read`'s values."""
        return [ChannelSpec(self.fullname, "float64", (), self.unit)]

    def read(self, ctx: PointContext) -> list[Any]:
        """Values of point ``ctx.index``, one per channel of :meth:`channels`."""
        raise NotImplementedError

    def metadata(self) -> dict[str, Any] | None:
        """Description for ``scan_info["instrument"]`` (None: nothing to add)."""
        return None


class ConstantCounter(Counter):
    """Always the same value (checks and plumbing tests)."""

    def __init__(self, name: str, value: float = 1.0, *, unit: str | None = None) -> None:
        super().__init__(name, unit=unit)
        self.value = float(value)

    def read(self, ctx: PointContext) -> list[Any]:
        return [self.value]


class DiodeCounter(Counter):
    """A diode: a mean value plus seeded gaussian noise, proportional to the count time.

    Parameters
    ----------
    name : str
        Counter name; channel ``simulation_diode_sampling_controller:<name>``.
    mean : float
        Mean count rate per second of count time.
    noise : float
        Standard deviation of the noise, relative to the mean.
    seed : int
        Seed of the noise.
    """

    controller = "simulation_diode_sampling_controller"

    def __init__(
        self,
        name: str,
        mean: float = 100.0,
        noise: float = 0.05,
        *,
        unit: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(name, unit=unit, seed=seed)
        self.mean = float(mean)
        self.noise = float(noise)

    def value(self, index: int, count_time: float) -> float:
        """Value at point ``index``: independent of read order and of threads."""
        scale = self.mean * (count_time if count_time > 0 else 1.0)
        rng = seeded_rng(self.seed, self.fullname, index)
        return float(scale * (1.0 + self.noise * rng.standard_normal()))

    def read(self, ctx: PointContext) -> list[Any]:
        return [self.value(ctx.index, ctx.count_time)]


class GaussianCounter(Counter):
    """A gaussian peak over a motor position, plus background and seeded noise.

    Parameters
    ----------
    name : str
        Counter name (``sim_ct_gauss`` in BLISS).
    motor : Motor
        The motor whose user position is the abscissa.
    center, fwhm, height, background : float
        The peak: ``background + height * exp(-4 ln2 (x - center)**2 / fwhm**2)``.
    noise : float
        Standard deviation of the additive gaussian noise (absolute).
    seed : int
        Seed of the noise.
    """

    def __init__(
        self,
        name: str,
        motor: Motor,
        center: float = 0.0,
        fwhm: float = 1.0,
        height: float = 1000.0,
        *,
        background: float = 0.0,
        noise: float = 0.0,
        unit: str | None = None,
        seed: int = 0,
    ) -> None:
        if fwhm <= 0:
            raise InvalidArgumentError(f"counter {name!r}: fwhm must be positive, got {fwhm!r}")
        super().__init__(name, unit=unit, seed=seed)
        self.motor = motor
        self.center = float(center)
        self.fwhm = float(fwhm)
        self.height = float(height)
        self.background = float(background)
        self.noise = float(noise)

    @property
    def motors(self) -> tuple[Motor, ...]:
        return (self.motor,)

    def signal(self, x: float | npt.NDArray[np.float64]) -> Any:
        """The noiseless signal at motor position(s) ``x``."""
        return self.background + self.height * np.exp(
            -4 * math.log(2) * (np.asarray(x) - self.center) ** 2 / self.fwhm**2
        )

    def read(self, ctx: PointContext) -> list[Any]:
        x = ctx.positions.get(self.motor.name, self.motor.position)
        value = float(self.signal(x))
        if self.noise:
            value += self.noise * float(
                seeded_rng(self.seed, self.fullname, ctx.index).standard_normal()
            )
        return [value]

    def metadata(self) -> dict[str, Any]:
        return {
            "@NX_class": "NXcollection",
            "motor": self.motor.name,
            "center": self.center,
            "fwhm": self.fwhm,
            "height": self.height,
            "background": self.background,
        }
