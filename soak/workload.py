"""The scans the soak publishes: a deterministic plan, so every value can be checked later.

Scan ``i`` of session number ``k`` is fully described by ``(k, i)`` (and, for the sub-scans
of a sequence, their rank ``sub``): its kind, its number of points, whether it is aborted and
after how many points, and the value of every point of every channel. The verifier regenerates
the values from the same functions.

The memory soak publishes :data:`KINDS`; the kill loop :data:`KILL_KINDS`, which adds a scan
of two top masters (``timer1``: 2 points of ``diode1``; ``timer2``: every point of the other
channels and a Lima detector; entries ``N.1`` and ``N.2``) and a sequence (a ``scan_group``
referencing two step sub-scans published while it runs, each a scan of its own).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scanstream.sim.lima import LimaDetector

KINDS = ("step", "mca", "sampling", "lima")
#: The kill loop's workload: every kind of :data:`KINDS`, two top masters, and sequences.
KILL_KINDS = (*KINDS, "two_masters", "sequence")
#: Sub-scans of a sequence (``sub`` 1 and 2 of its plan).
SEQUENCE_LENGTH = 2
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
    sub: int = 0  # 1, 2... for the sub-scans of the sequence of plan ``index``; 0 otherwise

    @property
    def key(self) -> int:
        """What seeds the values: unique per (index, sub) within a session."""
        return self.index * (SEQUENCE_LENGTH + 1) + self.sub

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

    def masters(self) -> dict[str, list[str]]:
        """Top masters (containers) -> the numeric channels each one holds."""
        if self.kind == "sequence":
            return {"GroupingMaster": ["scan_numbers"]}
        names = list(self.channels())
        if self.kind == "two_masters":
            return {"timer1": ["diode1"], "timer2": [n for n in names if n != "diode1"]}
        return {"timer": names}

    def channels(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """Numeric channels: name -> (dtype, shape)."""
        if self.kind == "sequence":
            return {"scan_numbers": ("int64", ())}
        out: dict[str, tuple[str, tuple[int, ...]]] = {
            "axis:roby": ("float64", ()),
            "diode": ("float64", ()),
            "counter": ("int32", ()),
        }
        if self.kind == "two_masters":
            out["diode1"] = ("float64", ())
        if self.kind == "mca":
            out["mca:spectrum"] = ("float32", (SPECTRUM_SIZE,))
        if self.kind == "sampling":
            out["sampler:samples"] = ("float64", (-1,))
        return out

    def has_lima(self) -> bool:
        return self.kind in ("lima", "two_masters")

    def emits(self, channel: str, j: int) -> bool:
        """Whether step ``j`` of the scan publishes a point of ``channel``.

        ``diode1`` (the 2-point top master of ``two_masters``) at steps 0 and npoints // 2;
        the sub-scan numbers of a sequence are published as the sub-scans start.
        """
        if channel == "diode1":
            return j in (0, self.npoints // 2)
        return True

    def expected_points(self) -> dict[str, int]:
        """Points (or images) of every data node, by node name, as published."""
        if self.kind == "sequence":
            return {"scan_numbers": SEQUENCE_LENGTH}
        out = {
            name: sum(self.emits(name, j) for j in range(self.acquired)) for name in self.channels()
        }
        if self.has_lima():
            out[detector(self).fullname] = self.acquired
        return out

    def subscans(self) -> list[ScanPlan]:
        """The step sub-scans of a sequence (none for the other kinds)."""
        if self.kind != "sequence":
            return []
        return [
            ScanPlan(self.session_index, self.index, "step", 4 + 3 * s, None, sub=s)
            for s in range(1, SEQUENCE_LENGTH + 1)
        ]


def plan(session_index: int, index: int, kinds: tuple[str, ...] = KINDS) -> ScanPlan:
    """The plan of scan ``index`` (0, 1, ...) of session number ``session_index`` (0..3)."""
    return plan_of_kind(session_index, index, kinds[(index + session_index) % len(kinds)])


def plan_of_kind(session_index: int, index: int, kind: str, sub: int = 0) -> ScanPlan:
    """The plan of scan ``index`` given its kind (and its rank in a sequence)."""
    if sub:
        return plan_of_kind(session_index, index, "sequence").subscans()[sub - 1]
    npoints = 20 + (index * 7 + session_index * 3) % 31
    abort_at = npoints // 2 if index % 9 == 8 and kind != "sequence" else None
    return ScanPlan(session_index, index, kind, npoints, abort_at)


def plan_of(record: dict[str, Any]) -> ScanPlan:
    """The plan of a scan from its manifest record (``session_index``, ``index``, ``kind``)."""
    return plan_of_kind(
        record["session_index"], record["index"], record["kind"], record.get("sub", 0)
    )


def point_value(p: ScanPlan, channel: str, j: int) -> Any:
    """Point ``j`` of ``channel`` in scan ``p``."""
    k, i = p.session_index, p.key
    if channel == "diode1":
        return float(-50.0 * j + 7 * k + 0.01 * i)
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
    values = [point_value(p, channel, j) for j in range(p.acquired) if p.emits(channel, j)]
    if shape == (-1,):
        return values
    return np.array(values, dtype=dtype).reshape((len(values),) + shape)


def detector(p: ScanPlan) -> LimaDetector:
    """The Lima-like detector of scan ``p``: seeded by the scan, so frames differ between scans."""
    return LimaDetector(
        "lima_soak",
        FRAME_SHAPE,
        "uint16",
        frames_per_file=FRAMES_PER_FILE,
        seed=100000 * p.session_index + p.key,
    )


def lima_directory(root: Path, session: str, p: ScanPlan) -> Path:
    """Directory of the detector files of scan ``p``."""
    sub = f"_{p.sub}" if p.sub else ""
    return root / "lima" / session / f"scan{p.index:05d}{sub}"
