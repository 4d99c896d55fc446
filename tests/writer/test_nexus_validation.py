"""The demo's file, as beamline tools read it: nxvalidate (nexusformat), silx and PyMca.

Each tool is a test extra (pyproject ``test``); a missing one skips its test locally and fails
it on CI. The catalogue is published and written once for the module (``scanstream demo``).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
import redis

from scanstream.cli import main

#: Seconds nxcheck may take on the demo's file (about 2 s here).
NXCHECK_TIMEOUT = 120.0

#: The deliberate deviations (docs/nexus_layout.md, "What nxvalidate reports"): BLISS entry
#: names ("12.1"; --strict-names gives "scan12_1"), and the scatter form of a mesh, whose
#: two 1-D axes for a 1-D signal are silx's scatter convention.
DOCUMENTED = [
    (re.compile(r"^/(.*/)?\d+\.\d+$"), re.compile(r'^"\d+\.\d+" is an invalid name$')),
    (
        re.compile(r".*/plotselect_scatter$"),
        re.compile(r'^"@axes" length does not match the signal rank$'),
    ),
]


def _require(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        reason = f"{module} is not installed (pip install -e .[test])"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


# The demo (20 scans written by worker processes) runs in the first test's setup.
pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def demo_file(redis_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    client = redis.Redis.from_url(redis_server_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.flushall()
    finally:
        client.close()
    root = tmp_path_factory.mktemp("demo")
    assert main(["--redis-url", redis_server_url, "demo", "--root", str(root)]) == 0
    files = list(root.rglob("sample_*.h5"))
    assert len(files) == 1
    return files[0]


def nxcheck_errors(path: Path) -> list[tuple[str, str]]:
    """(group path, message) of every error nexusformat's ``nxcheck`` reports on ``path``."""
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from nexusformat.scripts.nxcheck import main; main()",
            "-e",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=NXCHECK_TIMEOUT,
        check=False,
    )
    out = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + proc.stderr)
    total = re.search(r"Total number of errors: (\d+)", out)
    if total is None and "Cannot read the external link" in out:
        # A sequence's entry links its sub-scans' entries in the session file, which nxcheck
        # cannot follow from the scan file: the sub-scans are checked in their own files.
        return [("/", "external links not followed by nxcheck")]
    assert total is not None, out
    errors: list[tuple[str, str]] = []
    where = ""
    started = False
    for line in out.splitlines():
        text = line.strip()
        if text.startswith("NXroot: /"):
            started = True
        if not started or not text or text.startswith("Total number"):
            continue
        header = re.match(r"^NX\w+: (/.*)$", text)
        if header:
            where = header[1]
        else:
            errors.append((where, text))
    assert len(errors) == int(total[1]), out  # every error was parsed, none invented
    return errors


def _documented(where: str, message: str) -> bool:
    return any(p.match(where) and m.match(message) for p, m in DOCUMENTED)


def test_nxvalidate_finds_no_undocumented_error(demo_file: Path) -> None:
    _require("nexusformat")
    # The session file holds only links to the entries of one file per scan (decision 0011):
    # nxcheck follows external links very slowly, so each scan file is checked instead.
    scan_files = sorted(demo_file.parent.glob(f"{demo_file.stem}_scans/*.h5"))
    assert scan_files, "the demo wrote no scan file"
    errors = [e for f in scan_files for e in nxcheck_errors(f)]
    unfollowed = [e for e in errors if e[1] == "external links not followed by nxcheck"]
    assert len(unfollowed) <= 1, unfollowed  # the demo's one sequence
    errors = [e for e in errors if e not in unfollowed]
    assert [e for e in errors if not _documented(*e)] == []
    # The filter removes what it is meant to, and the checker did look at the entries.
    with h5py.File(demo_file, "r") as f:
        entries = list(f)
    names = {w for w, m in errors if "invalid name" in m}
    assert len({f"/{e}" for e in entries} - names) <= len(unfollowed)


def test_silx_finds_a_valid_default_plot_for_every_entry_with_data(demo_file: Path) -> None:
    _require("silx")
    from silx.io.nxdata import get_default

    with h5py.File(demo_file, "r") as f:
        root = get_default(f)
        assert root is not None and root.is_valid
        newest = max(f, key=lambda n: tuple(int(k) for k in n.split(".")))
        assert root.group.name == f"/{newest}/plotselect"  # the newest scan, not the last saved
        checked = 0
        for name in f:  # sequences too: their last sub-scan's plot
            nxdata = get_default(f[name])
            assert nxdata is not None and nxdata.is_valid, name
            checked += 1
        assert checked >= 20
        mesh = next(f[n] for n in f if f[n]["title"].asstr()[()].startswith("amesh"))
        grid = get_default(mesh)
        assert grid is not None and grid.signal.ndim == 2 and len(grid.axes) == 2
        scatter_names = [g for g in mesh if g.endswith("_scatter")]
        assert scatter_names and mesh[scatter_names[0]].attrs["NX_class"] == "NXdata"


def test_pymca_finds_the_scanned_motor_and_the_counters_of_a_step_scan(
    demo_file: Path,
) -> None:
    _require("PyMca5")
    from PyMca5.PyMcaCore import NexusTools

    with h5py.File(demo_file, "r") as f:
        steps = [n for n in f if f[n]["title"].asstr()[()].startswith(("ascan", "dscan"))]
        assert steps
        for name in steps:
            title = f[name]["title"].asstr()[()]
            motor = title.split()[1]
            scanned = NexusTools.getScannedPositioners(f, f"/{name}")
            assert scanned == [f"/{name}/measurement/{motor}"], (name, scanned)
            measurement = NexusTools.getMeasurementGroup(f, f"/{name}")
            assert measurement is not None and measurement.name == f"/{name}/measurement"
            counters = [m for m in measurement if m not in (motor, "elapsed_time", "epoch")]
            assert counters, name
            for counter in counters:
                assert measurement[counter].shape[0] == f[scanned[0]].shape[0]
            parameters = f[name]["scan_parameters"]  # as blisswriter 2
            assert parameters.attrs["NX_class"] == "NXparameters"
            assert parameters["count_time"][()] == 0.1
            assert parameters["count_time"].attrs["units"] == "s"
        a2 = next(n for n in f if f[n]["title"].asstr()[()].startswith("a2scan"))
        assert NexusTools.getScannedPositioners(f, f"/{a2}") == [
            f"/{a2}/measurement/roby",
            f"/{a2}/measurement/robz",
        ]
