"""Measure what a SIGKILL does to saved scans under two file organisations (decision 0011).

``python -m soak.layout_kill [--trials 40]``

Each trial starts from a file holding 3 saved (closed, flushed) scans, then a child process
appends scans to it the way a writer does (groups, growing chunked datasets, attributes, a
growing variable-length string table, flushes every 50 ms) and is SIGKILLed at a random
instant (50 ms to 1.5 s). Then: does the file open, and can every dataset of the 3 saved scans
be read?

- ``single``: every scan's entries in the one file (the former layout);
- ``linked``: each scan in a file of its own, the session file holding only external links,
  changed in short open-link-close steps (the layout of :mod:`scanstream.writer.session_file`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np


def _write_scan(file: h5py.File, name: str, npoints: int, flush_every: float) -> None:
    entry = file.require_group(name)
    measurement = entry.require_group("measurement")
    data = measurement.create_dataset("c", (0,), maxshape=(None,), chunks=(64,), dtype="f8")
    refs = measurement.create_dataset(
        "refs", (0,), maxshape=(None,), chunks=(16,), dtype=h5py.string_dtype()
    )
    last = time.monotonic()
    for j in range(npoints):
        data.resize((j + 1,))
        data[j] = j
        refs.resize((j + 1,))
        refs[j] = f"/data/lima/scan/frames_{j:05d}.h5::/entry/data"
        entry.attrs["points"] = j + 1
        if time.monotonic() - last > flush_every:
            file.flush()
            last = time.monotonic()
    file.flush()


def child(layout: str, directory: Path) -> None:
    """Write scans forever (until killed)."""
    session = directory / "session.h5"
    number = 4
    while True:
        name = f"{number}.1"
        if layout == "single":
            with h5py.File(session, "a", locking=False) as file:
                _write_scan(file, name, 2000, 0.05)
        else:
            scan_file = directory / "session_scans" / f"scan{number:04d}.h5"
            with h5py.File(scan_file, "w", locking=False) as file:
                _write_scan(file, name, 2000, 0.05)
                file.flush()
                with h5py.File(session, "a", locking=False) as master:
                    master[name] = h5py.ExternalLink(f"session_scans/{scan_file.name}", f"/{name}")
        number += 1


def resume(layout: str, directory: Path) -> None:
    """What a restarted writer does: the former one extended the killed scan in place."""
    session = directory / "session.h5"
    if layout == "single":
        with h5py.File(session, "a", locking=False) as file:
            for name in [n for n in file if n not in ("1.1", "2.1", "3.1")]:
                measurement = file[name]["measurement"]
                for key in ("c", "refs"):
                    dataset = measurement[key]
                    start = dataset.shape[0]
                    dataset.resize((start + 500,))
                    for j in range(start, start + 500):
                        dataset[j] = j if key == "c" else f"/data/lima/frames_{j:05d}.h5"
        return
    scans = directory / "session_scans"
    for scan_file in scans.glob("scan*.h5"):
        if scan_file.name not in ("scan0001.h5", "scan0002.h5", "scan0003.h5"):
            scan_file.unlink()  # not saved: written again from the start
            with h5py.File(scan_file, "w", locking=False) as file:
                _write_scan(file, f"{int(scan_file.stem[4:])}.1", 500, 0.05)


def prepare(layout: str, directory: Path) -> None:
    """The session file with 3 saved scans."""
    (directory / "session_scans").mkdir(parents=True)
    for number in (1, 2, 3):
        name = f"{number}.1"
        if layout == "single":
            with h5py.File(directory / "session.h5", "a") as file:
                _write_scan(file, name, 300, 10)
        else:
            path = directory / "session_scans" / f"scan{number:04d}.h5"
            with h5py.File(path, "w") as file:
                _write_scan(file, name, 300, 10)
            with h5py.File(directory / "session.h5", "a") as master:
                master[name] = h5py.ExternalLink(f"session_scans/{path.name}", f"/{name}")


def saved_intact(directory: Path) -> str | None:
    """None when the 3 saved scans read back whole through the session file; else why not."""
    try:
        with h5py.File(directory / "session.h5", "r", locking=False) as file:
            for number in (1, 2, 3):
                data = file[f"{number}.1/measurement/c"][()]
                refs = file[f"{number}.1/measurement/refs"][()]
                if not np.array_equal(data, np.arange(300.0)) or len(refs) != 300:
                    return f"scan {number} differs"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m soak.layout_kill")
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("LAYOUT", "DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--resume", nargs=2, metavar=("LAYOUT", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], Path(args.child[1]))
        return 0
    if args.resume:
        resume(args.resume[0], Path(args.resume[1]))
        return 0
    rng = random.Random(args.seed)
    report: dict[str, dict[str, object]] = {}
    for layout in ("single", "linked"):
        damaged: list[str] = []
        resume_failures: list[str] = []
        for trial in range(args.trials):
            directory = Path(tempfile.mkdtemp(prefix=f"layout-{layout}-"))
            prepare(layout, directory)
            proc = subprocess.Popen(
                [sys.executable, "-m", "soak.layout_kill", "--child", layout, str(directory)]
            )
            time.sleep(rng.uniform(0.05, 1.5))
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            after = subprocess.run(
                [sys.executable, "-m", "soak.layout_kill", "--resume", layout, str(directory)],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            if after.returncode != 0:
                tail = after.stderr.strip().splitlines()[-1:] or [""]
                resume_failures.append(f"trial {trial}: exit {after.returncode} {tail[0]}")
            why = saved_intact(directory)
            if why is not None:
                damaged.append(f"trial {trial}: {why}")
        report[layout] = {
            "trials": args.trials,
            "saved_scans_damaged": len(damaged),
            "restarts_failed_or_crashed": len(resume_failures),
            "why": (damaged + resume_failures)[:6],
        }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
