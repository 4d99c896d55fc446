"""The chaos run's verdict on each scan: its saving verdict against what was published.

The reference is the plan (:mod:`soak.workload`), not Redis: the chaos run damages Redis on
purpose, so a file compared with a damaged key would prove nothing. A scan SAVED must hold, in
the entries its verdict names, every published point of every channel (every frame of its
Lima detector) bit for bit, and as many points as were published (the plan's count for a scan
the publisher ended as planned, else the count its verdict states, which must not exceed the
plan's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # noqa: F401  (the writer compresses with its filters: readers need them)
import numpy as np

from scanstream.models import SavingVerdict
from scanstream.writer import nexus

from . import workload


def _same(a: Any, b: Any) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _entry_of(p: workload.ScanPlan, channel: str, entries: tuple[str, ...]) -> str | None:
    """The entry (of the verdict's) holding ``channel``: ``N.2`` for timer2 of two masters."""
    masters = list(p.masters().values())
    rank = len(masters) - 1  # the Lima detector is under the last top master
    for i, names in enumerate(masters):
        if channel in names:
            rank = i
    return entries[rank] if rank < len(entries) else None


def check_saved(
    p: workload.ScanPlan, verdict: SavingVerdict, *, complete: bool, where: str
) -> list[str]:
    """Problems of a SAVED scan's file against the plan ``p`` (empty list: exact).

    ``complete``: the publisher ended the scan as planned, so every planned point must be
    there; else (killed, failed under garbage) a prefix of the plan is expected.
    """
    if verdict.file is None or not verdict.entries:
        return [f"{where}: SAVED without a file or entries ({verdict})"]
    try:
        file = h5py.File(Path(verdict.file), "r", locking=False)
    except OSError as exc:
        return [f"{where}: SAVED but {verdict.file} does not open: {exc}"]
    problems: list[str] = []
    with file:
        expected = p.expected_points()
        for name, count in expected.items():
            entry = _entry_of(p, name, verdict.entries)
            if entry is None or entry not in file:
                problems.append(f"{where}: {name}: no entry {entry} in {verdict.file}")
                continue
            path = nexus.channel_path(file[entry], name)
            if path is None and not complete and not verdict.points.get(name):
                continue  # no point of it published: no dataset
            if path is None:
                problems.append(f"{where}: {name}: no dataset in {entry}")
                continue
            dset = file[path]
            n = dset.shape[0]
            said = verdict.points.get(name)
            if said is not None and said != n:
                problems.append(f"{where}: {name}: {n} points in the file, verdict says {said}")
            if (complete and n != count) or n > count:
                problems.append(f"{where}: {name}: {n} points in the file, {count} published")
                continue
            if name == detector_name(p):
                det = workload.detector(p)
                frames = dset[()]
                for i in range(n):
                    if not _same(frames[i], det.image(i)):
                        problems.append(f"{where}: {name} frame {i} differs from the published")
                        break
                continue
            if name == "scan_numbers":
                continue  # the sub-scans' numbers: not in the plan (checked by the kill loop)
            published = workload.expected_array(p, name)
            if tuple(p.channels()[name][1]) == (-1,):
                lengths = dset.parent[dset.attrs["lengths_dataset"]][()]
                values = dset[()]
                for i in range(n):
                    point = published[i]
                    if lengths[i] != len(point) or not _same(values[i, : len(point)], point):
                        problems.append(f"{where}: {name} point {i} differs from the published")
                        break
                continue
            if not _same(dset[()], published[:n]):
                problems.append(f"{where}: {name}: file differs from the published values")
    return problems


def detector_name(p: workload.ScanPlan) -> str | None:
    return workload.detector(p).fullname if p.has_lima() else None
