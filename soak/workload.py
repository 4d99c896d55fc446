"""The scans the soak publishes: a deterministic plan, so every value can be checked later.

Scan ``i`` of session number ``k`` is fully described by ``(k, i)``: its kind, its number of
points, whether it is aborted and after how many points, and the value of every point of every
channel. The verifier regenerates the values from the same functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scanstream.sim.lima import LimaDetector

KINDS = ("step", "mca", "sampling", "lima")
#: Scans written into one file (several NXentries per file, like a dataset file).
SCANS_PER_FILE = 5
SPECTRUM_SIZE = 128
FRAME_SHAPE = (12, 16)
FRAMES_PER_FILE = 8


@dataclass(frozen=True)
class ScanPlan:
    """What scan ``index`` of session number ``session_index`` publishes."""

    session_index: int
    index: int
    kind: str
    npoints: int
    abort_at: int | None  # points acquired before the scan is aborted (USER_ABORTED), or None

    @property
    def acquired(self) -> int:
        """Points actually published."""
        return self.npoints if self.abort_at is None else self.abort_at

    @property
    def file_group(self) -> int:
        return self.index // SCANS_PER_FILE

    def filename(self, session: str) -> str:
        """The scan_info filename, relative to the writers' root."""
        return f"{session}/{session}_{self.file_group:05d}.h5"

    def channels(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """Numeric channels: name -> (dtype, shape)."""
        out: dict[str, tuple[str, tuple[int, ...]]] = {
            "axis:roby": ("float64", ()),
            "diode": ("float64", ()),
            "counter": ("int32", ()),
        }
        if self.kind == "mca":
            out["mca:spectrum"] = ("float32", (SPECTRUM_SIZE,))
        if self.kind == "sampling":
            out["sampler:samples"] = ("float64", (-1,))
        return out

    def has_lima(self) -> bool:
        return self.kind == "lima"

    def expected_points(self) -> dict[str, int]:
        """Points (or images) of every data node, by node name, as published."""
        out = {name: self.acquired for name in self.channels()}
        if self.has_lima():
            out[detector(self).fullname] = self.acquired
        return out


def plan(session_index: int, index: int) -> ScanPlan:
    """The plan of scan ``index`` (0, 1, ...) of session number ``session_index`` (0..3)."""
    kind = KINDS[(index + session_index) % len(KINDS)]
    npoints = 20 + (index * 7 + session_index * 3) % 31
    abort_at = npoints // 2 if index % 9 == 8 else None
    return ScanPlan(session_index, index, kind, npoints, abort_at)


def point_value(p: ScanPlan, channel: str, j: int) -> Any:
    """Point ``j`` of ``channel`` in scan ``p``."""
    k, i = p.session_index, p.index
    if channel == "axis:roby":
        return j * 0.1 + k
    if channel == "diode":
        return float(100.0 * np.sin(0.3 * j + i) + 1000 * k + 0.001 * i)
    if channel == "counter":
        return np.int32((k * 1000003 + i * 101 + j * 7) % 65536)
    if channel == "mca:spectrum":
        rng = np.random.default_rng([k, i, j])
        return rng.random(SPECTRUM_SIZE, dtype=np.float32) * 1000
    if channel == "sampler:samples":
        length = 1 + (i + 3 * j) % 17
        return np.arange(length, dtype=np.float64) * 0.5 + j + 1000 * i
    raise KeyError(channel)


def expected_array(p: ScanPlan, channel: str) -> Any:
    """Every point of ``channel`` as published: an array, or a list for variable length."""
    dtype, shape = p.channels()[channel]
    values = [point_value(p, channel, j) for j in range(p.acquired)]
    if shape == (-1,):
        return values
    return np.array(values, dtype=dtype).reshape((p.acquired,) + shape)


def detector(p: ScanPlan) -> LimaDetector:
    """The Lima-like detector of scan ``p``: seeded by the scan, so frames differ between scans."""
    return LimaDetector(
        "lima_soak",
        FRAME_SHAPE,
        "uint16",
        frames_per_file=FRAMES_PER_FILE,
        seed=100000 * p.session_index + p.index,
    )


def lima_directory(root: Path, session: str, p: ScanPlan) -> Path:
    """Directory of the detector files of scan ``p``."""
    return root / "lima" / session / f"scan{p.index:05d}"
