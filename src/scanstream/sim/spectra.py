"""Simulated devices publishing 1D data per point: sampling counters and an MCA.

Like :mod:`scanstream.sim.devices`, values depend only on the device parameters, the seed
and the point index.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ..exceptions import InvalidArgumentError
from .checks import check_count
from .devices import ChannelSpec, Counter, PointContext, seeded_rng

__all__ = ["Mca", "Peak", "SamplingCounter"]


SampleCount = int | Callable[[int], int]


class SamplingCounter(Counter):
    """A counter that records several samples per point (BLISS ``SamplingMode.SAMPLES``).

    It publishes the mean (``controller:name``) and the samples
    (``controller:name_samples``, 1D): shape ``(k,)`` when ``samples`` is an int, ``(-1,)``
    (variable length) when it is a function of the point index.

    Parameters
    ----------
    name : str
        Counter name.
    samples : int or callable
        Samples per point, or ``f(point_index) -> int`` (>= 1) for a varying count.
    mean, noise : float
        Mean value and relative standard deviation of the samples.
    seed : int
        Seed of the noise.
    """

    controller = "simulation_diode_sampling_controller"

    def __init__(
        self,
        name: str,
        samples: SampleCount = 10,
        mean: float = 100.0,
        noise: float = 0.1,
        *,
        unit: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(name, unit=unit, seed=seed)
        if not callable(samples) and (
            isinstance(samples, bool) or not isinstance(samples, int) or samples < 1
        ):
            raise InvalidArgumentError(
                f"counter {name!r}: samples must be an int >= 1 or a function, got {samples!r}"
            )
        self.samples = samples
        self.mean = float(mean)
        self.noise = float(noise)

    @property
    def variable(self) -> bool:
        """True when the number of samples varies per point."""
        return callable(self.samples)

    def sample_count(self, index: int) -> int:
        """Number of samples of point ``index``."""
        n = self.samples(index) if callable(self.samples) else self.samples
        return check_count(f"sample count at point {index}", n, 1, f"counter {self.name!r}")

    def channels(self) -> list[ChannelSpec]:
        shape = (-1,) if self.variable else (int(self.samples),)  # type: ignore[arg-type]
        return [
            ChannelSpec(self.fullname, "float64", (), self.unit),
            ChannelSpec(f"{self.fullname}_samples", "float64", shape, self.unit),
        ]

    def read(self, ctx: PointContext) -> list[Any]:
        rng = seeded_rng(self.seed, self.fullname, ctx.index)
        samples = self.mean * (1.0 + self.noise * rng.standard_normal(self.sample_count(ctx.index)))
        return [float(samples.mean()), samples]


@dataclass(frozen=True)
class Peak:
    """An emission line of the MCA: position and FWHM in channels, area in counts per second."""

    position: float
    fwhm: float
    area: float


class Mca(Counter):
    """A multichannel analyser: uint32 spectra with gaussian peaks and Poisson noise.

    Parameters
    ----------
    name : str
        Controller name (``simu1``); the channel is ``<name>:spectrum``.
    channels : int
        Number of bins of a spectrum.
    peaks : sequence of (position, fwhm, area)
        Emission lines; default: three lines at 20 %, 45 % and 70 % of the range.
    background : float
        Flat background, counts per bin per second.
    seed : int
        Seed of the Poisson noise.
    """

    def __init__(
        self,
        name: str,
        channels: int = 1024,
        peaks: Sequence[tuple[float, float, float]] | None = None,
        background: float = 2.0,
        *,
        seed: int = 0,
    ) -> None:
        super().__init__(name, unit="counts", seed=seed)
        self.nbins = check_count("channels", channels, 1, f"mca {name!r}")
        if peaks is None:
            peaks = [
                (0.2 * channels, channels / 100 + 2, 5e3),
                (0.45 * channels, channels / 80 + 2, 2e4),
                (0.7 * channels, channels / 60 + 2, 1e4),
            ]
        self.peaks = [Peak(float(p), float(w), float(a)) for p, w, a in peaks]
        self.background = float(background)
        x = np.arange(self.nbins, dtype=np.float64)
        rate = np.full(self.nbins, self.background)
        for peak in self.peaks:
            sigma = peak.fwhm / (2 * math.sqrt(2 * math.log(2)))
            rate += (
                peak.area
                / (sigma * math.sqrt(2 * math.pi))
                * np.exp(-0.5 * ((x - peak.position) / sigma) ** 2)
            )
        self._rate = rate  # expected counts per bin per second: computed once

    @property
    def fullname(self) -> str:
        return f"{self.name}:spectrum"

    @property
    def controller(self) -> str:  # type: ignore[override]
        return self.name

    def channels(self) -> list[ChannelSpec]:
        return [ChannelSpec(self.fullname, "uint32", (self.nbins,), "counts")]

    def expected(self, count_time: float) -> npt.NDArray[np.float64]:
        """Noiseless spectrum for ``count_time`` seconds."""
        return self._rate * (count_time if count_time > 0 else 1.0)

    def read(self, ctx: PointContext) -> list[Any]:
        rng = seeded_rng(self.seed, self.fullname, ctx.index)
        return [rng.poisson(self.expected(ctx.count_time)).astype(np.uint32)]

    def metadata(self) -> dict[str, Any]:
        return {
            "@NX_class": "NXdetector",
            "type": "mca",
            "channels": self.nbins,
            "peaks": [[p.position, p.fwhm, p.area] for p in self.peaks],
        }
