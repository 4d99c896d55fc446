"""A simulated beamline: devices looked up by name (the CLI and the catalogue use it)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..exceptions import InvalidArgumentError, ScanstreamError
from .devices import DiodeCounter, GaussianCounter, Motor
from .lima import LimaDetector
from .masters import Device
from .spectra import Mca, SamplingCounter

__all__ = ["Beamline", "UnknownDeviceError", "default_beamline"]


class UnknownDeviceError(ScanstreamError, KeyError):
    """No device of that name on the beamline; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class Beamline:
    """Named motors and counters.

    Parameters
    ----------
    motors : iterable of Motor
        The motors (also the default ``positioners`` of scans).
    counters : iterable of Counter or LimaDetector
        The counting devices.

    Raises
    ------
    InvalidArgumentError
        Two devices share a name.
    """

    def __init__(self, motors: Iterable[Motor] = (), counters: Iterable[Device] = ()) -> None:
        self.motors: dict[str, Motor] = {}
        self.counters: dict[str, Device] = {}
        for motor in motors:
            self._check_free(motor.name)
            self.motors[motor.name] = motor
        for counter in counters:
            self._check_free(counter.name)
            self.counters[counter.name] = counter

    def _check_free(self, name: str) -> None:
        if name in self.motors or name in self.counters:
            raise InvalidArgumentError(f"two devices are named {name!r}")

    def __repr__(self) -> str:
        return f"<Beamline motors={list(self.motors)} counters={list(self.counters)}>"

    @property
    def positioners(self) -> list[Motor]:
        """All motors, for ``scan_info["positioners"]``."""
        return list(self.motors.values())

    def motor(self, name: str) -> Motor:
        """The motor ``name``.

        Raises
        ------
        UnknownDeviceError
            Not a motor of this beamline (the message lists the motors).
        """
        try:
            return self.motors[name]
        except KeyError:
            kind = " (it is a counter)" if name in self.counters else ""
            raise UnknownDeviceError(
                f"unknown motor {name!r}{kind}; motors: {', '.join(self.motors)}"
            ) from None

    def counter(self, name: str) -> Device:
        """The counter or detector ``name``.

        Raises
        ------
        UnknownDeviceError
            Not a counter of this beamline (the message lists the counters).
        """
        try:
            return self.counters[name]
        except KeyError:
            kind = " (it is a motor)" if name in self.motors else ""
            raise UnknownDeviceError(
                f"unknown counter {name!r}{kind}; counters: {', '.join(self.counters)}"
            ) from None

    def describe(self) -> dict[str, Any]:
        """Device names and kinds, for listings."""
        return {
            "motors": {n: f"{m.position:g} {m.unit}" for n, m in self.motors.items()},
            "counters": {n: type(c).__name__ for n, c in self.counters.items()},
        }


def _varying_samples(index: int) -> int:
    """Sample count of ``var_samples`` at point ``index``: 3, 4, ... 9, 3, 4, ..."""
    return 3 + index % 7


def default_beamline(seed: int = 0) -> Beamline:
    """The default simulated beamline (names of the BLISS test session).

    Motors ``robx``, ``roby``, ``robz`` (limits +-100 mm), ``robu`` (deg, unlimited).
    Counters ``diode``, ``diode2`` ... ``diode8`` (diodes), ``diode9`` (10 samples per point),
    ``var_samples`` (3 to 9 samples per point), ``sim_ct_gauss`` (a gaussian over roby,
    centred at 0, FWHM 0.1), ``simu1`` (MCA, 1024 channels) and ``lima_simulator`` (a
    64x80 uint16 Lima detector, 100 frames per file).

    Parameters
    ----------
    seed : int
        Seed of every noisy device.
    """
    motors = [
        Motor("robx", 0.0, "mm", -100, 100),
        Motor("roby", 0.0, "mm", -100, 100),
        Motor("robz", 0.0, "mm", -100, 100),
        Motor("robu", 0.0, "deg"),
    ]
    roby = motors[1]
    counters: list[Device] = [DiodeCounter("diode", 100.0, seed=seed)]
    counters += [DiodeCounter(f"diode{k}", 100.0 * k, seed=seed) for k in range(2, 9)]
    counters += [
        SamplingCounter("diode9", 10, 900.0, seed=seed),
        SamplingCounter("var_samples", _varying_samples, 50.0, seed=seed),
        GaussianCounter(
            "sim_ct_gauss",
            roby,
            center=0.0,
            fwhm=0.1,
            height=1000.0,
            background=10.0,
            noise=5.0,
            seed=seed,
        ),
        Mca("simu1", 1024, seed=seed),
        LimaDetector("lima_simulator", (64, 80), "uint16", frames_per_file=100, seed=seed),
    ]
    return Beamline(motors, counters)
