"""Checks of the soak: files against Redis (bit for bit), Redis against the plan.

The file comparison follows ``tests/writer/conftest.py::assert_file_matches_redis`` (values,
dtype, shape and count of every channel, ragged 1-D through the lengths dataset, every frame
of the Lima virtual dataset against the frame its reference names), but returns a list of
problems instead of asserting, and compares every frame. The data read from Redis is also
compared with the values :mod:`soak.workload` says were published.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # noqa: F401  (the writer compresses with its filters: readers need them)
import numpy as np

from scanstream import DataStore, get_session_node
from scanstream.exceptions import IndexNoMoreThereError, ScanNotFoundError
from scanstream.models import SavingState, SavingVerdict
from scanstream.writer import nexus, scan_file_path

from . import chaos_verify, workload


def _same(a: Any, b: Any) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def check_scan(
    store: DataStore, session: str, record: dict[str, Any], root: Path, file: h5py.File
) -> list[str]:
    """Problems of one scan (an empty list when its entry equals Redis and the plan)."""
    problems: list[str] = []
    number = record["number"]
    where = f"{session} scan {number}"
    p = workload.plan_of(record)
    scan = get_session_node(session, store=store).get_scan(number)
    if scan.state.name != record["state"]:
        problems.append(f"{where}: state {scan.state.name} in Redis, {record['state']} published")
    if scan_file_path(scan.info, session, root).resolve() != Path(file.filename).resolve():
        problems.append(f"{where}: scan_info filename points elsewhere")
    nodes = scan.load_nodes()
    top_masters = [n for n in nodes if n.parent is scan]
    expected = p.expected_points()
    seen = set()
    for node in nodes:
        if node.type not in ("channel", "lima"):
            continue
        seen.add(node.name)
        master = node
        while master.parent is not scan:
            master = master.parent
        entry_name = nexus.entry_name(number, top_masters.index(master) + 1)
        if entry_name not in file:
            problems.append(f"{where}: no entry {entry_name} in {file.filename}")
            continue
        path = nexus.channel_path(file[entry_name], node.name)
        if path is None:
            problems.append(f"{where}: no dataset of {node.name}")
            continue
        dset = file[path]
        if node.type == "lima":
            view = node.get(0, -1)
            refs = view.all_image_references()
            if len(refs) != expected.get(node.name):
                problems.append(
                    f"{where}: {node.name}: {len(refs)} images in Redis, "
                    f"{expected.get(node.name)} published"
                )
            if dset.shape != (len(refs),) + tuple(node.shape):
                problems.append(
                    f"{where}: {node.name}: file shape {dset.shape}, {len(refs)} images"
                )
                continue
            det = workload.detector(p)
            frames = dset[()]
            for i in range(len(refs)):
                image = view.get_image(i)
                if not _same(frames[i], image):
                    problems.append(f"{where}: {node.name} frame {i}: file differs from Redis")
                    break
                if not _same(image, det.image(i)):
                    problems.append(f"{where}: {node.name} frame {i}: differs from the plan")
                    break
            continue
        points = node[:]
        if len(points) != expected.get(node.name):
            problems.append(
                f"{where}: {node.name}: {len(points)} points in Redis, "
                f"{expected.get(node.name)} published"
            )
        if dset.dtype != node.dtype or dset.shape[0] != len(points):
            problems.append(
                f"{where}: {node.name}: file {dset.dtype} {dset.shape}, Redis "
                f"{node.dtype} {len(points)} points"
            )
            continue
        if node.name == "scan_numbers":  # a sequence: the numbers its sub-scans got
            plan_values = np.array(record.get("subs", []), dtype="int64")
        else:
            plan_values = workload.expected_array(p, node.name)
        if tuple(node.point_shape) == (-1,):
            lengths = dset.parent[dset.attrs["lengths_dataset"]][()]
            values = dset[()]
            for i, point in enumerate(points):
                if lengths[i] != len(point) or not _same(values[i, : len(point)], point):
                    problems.append(f"{where}: {node.name} point {i}: file differs from Redis")
                    break
                if not _same(point, plan_values[i]):
                    problems.append(f"{where}: {node.name} point {i}: differs from the plan")
                    break
            continue
        if dset.shape[1:] != tuple(node.shape):
            problems.append(
                f"{where}: {node.name}: file shape {dset.shape}, point shape {node.shape}"
            )
            continue
        if not _same(dset[()], points):
            problems.append(f"{where}: {node.name}: file differs from Redis")
        if not _same(points, plan_values):
            problems.append(f"{where}: {node.name}: Redis differs from the plan")
    missing = set(expected) - seen
    if missing:
        problems.append(f"{where}: nodes {sorted(missing)} missing in Redis")
    if p.kind == "sequence":
        problems += _check_subscan_links(where, file, nexus.entry_name(number, 1), record)
    return problems


def _check_subscan_links(
    where: str, file: h5py.File, entry_name: str, record: dict[str, Any]
) -> list[str]:
    """The group's ``scans`` collection: one link per sub-scan, each resolving to its entry."""
    scans = file.get(f"{entry_name}/scans")
    if scans is None:
        return [f"{where}: no {entry_name}/scans (links to the sub-scans)"]
    problems = []
    for sub in record.get("subs", []):
        name = nexus.entry_name(sub, 1)
        target = scans.get(name)
        if target is None:
            problems.append(f"{where}: {entry_name}/scans/{name} missing or dangling")
        elif "measurement" not in target:
            problems.append(f"{where}: {entry_name}/scans/{name} is not the sub-scan's entry")
    return problems


def check_file(
    store: DataStore, session: str, records: list[dict[str, Any]], root: Path
) -> list[str]:
    """Problems of every scan of one file (the file must be closed by the writer)."""
    path = root / records[0]["file"]
    try:
        file = h5py.File(path, "r", locking=False)
    except OSError as exc:
        return [f"{session}: cannot open {path}: {exc}"]
    with file:
        problems = []
        for record in records:
            try:
                problems += check_scan(store, session, record, root, file)
            except (ScanNotFoundError, IndexNoMoreThereError):
                # Expired from Redis before this check came (a loaded machine: the checks
                # lag behind the retention time): checked against the published plan
                # alone, as the chaos run checks its files.
                problems += _check_against_plan(session, record, path, file)
            except Exception as exc:
                problems.append(f"{session} scan {record['number']}: {type(exc).__name__}: {exc}")
        return problems


def _check_against_plan(
    session: str, record: dict[str, Any], path: Path, file: h5py.File
) -> list[str]:
    """Problems of a scan's entries in ``file`` against its plan only (its Redis data gone)."""
    number = str(record["number"])
    entries = tuple(sorted(k for k in file if k.split(".")[0] == number))
    verdict = SavingVerdict(SavingState.SAVED, str(path), entries, dict(record.get("points", {})))
    return chaos_verify.check_saved(
        workload.plan_of(record),
        verdict,
        complete=record["state"] == "DONE",
        where=f"{session} scan {number}",
    )
