"""Writer pool throughput: 1, 2 and 4 ``scanstream writer --pool`` processes on 16 scans.

``python -m benchmarks.writer_pool [--writers 1 2 4] [--scans 16] [--points 2000]
[--mode live|catch-up|both] [--in-process] [--json PATH]``

For each number of writers: a private server and that many writer processes, as deployed
(``scanstream writer --pool SESSION --root DIR``; each scan in a worker process unless
``--in-process``). ``--scans`` scans, each with four float64 channels and a 256-channel
uint32 spectrum per point, ``--points`` points in blocks of 100 interleaved over the scans,
are published from this process:

- ``live``: while the writers run (after a first round of small scans has started their
  worker processes); timed from the first scan's creation until every scan is in the saved
  set. On a small machine the publisher shares the cores and bounds the figure.
- ``catch-up``: before the writers start; timed from the moment every writer is in the pool
  until every scan is saved: the writers' own rate.

Then every file is compared with Redis (values, dtype, count) and the scans each writer saved
are counted (from the SAVED verdicts). Not part of ``python -m benchmarks`` nor of the CI
smoke run: it starts several processes and takes one to two minutes.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # noqa: F401  (the writer compresses with bitshuffle-lz4)
import numpy as np

from scanstream import NoWriterWarning, create_session, get_session_node
from scanstream.writer import nexus, pool_members, saved_scans, scan_file_path

from .harness import machine, open_store, private_server

SESSION = "pool_bench"
BLOCK = 100
SPECTRUM = 256
CHANNELS = 4


def _start_writers(url: str, root: Path, count: int, in_process: bool) -> list[Any]:
    extra = ["--in-process"] if in_process else []
    return [
        subprocess.Popen(
            [sys.executable, "-m", "scanstream", "--redis-url", url, "writer", "--pool", SESSION]
            + ["--root", str(root), "--log-level", "warning", *extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        for _ in range(count)
    ]


def _stop_writers(procs: list[Any]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def _publish(url: str, scans: int, points: int) -> tuple[list[int], float, float]:
    """Publish the scans at once; return their numbers, the time the first was created and
    the time the last one ended (its END in Redis)."""
    store = open_store(url)
    with warnings.catch_warnings():  # catch-up mode: no writer yet, as intended
        warnings.simplefilter("ignore", NoWriterWarning)
        logging.getLogger("scanstream.publish").setLevel(logging.ERROR)
        session = create_session(SESSION, store=store)
        return _publish_scans(session, store, scans, points)


def _publish_scans(
    session: Any, store: Any, scans: int, points: int
) -> tuple[list[int], float, float]:
    started = time.monotonic()
    published, channels = [], []
    for k in range(scans):
        scan = session.create_scan(f"bench{k}", {"npoints": points})
        timer = scan.create_container("timer")
        counters = [timer.create_channel(f"timer:c{i}", "float64") for i in range(CHANNELS)]
        spectrum = timer.create_channel("mca:spectrum", "uint32", (SPECTRUM,))
        scan.prepared()
        published.append(scan)
        channels.append((counters, spectrum))
    rng = np.random.default_rng(0)
    for first in range(0, points, BLOCK):
        n = min(BLOCK, points - first)
        for counters, spectrum in channels:
            for channel in counters:
                channel.emit(rng.random(n))
            spectrum.emit(rng.integers(0, 1000, (n, SPECTRUM), dtype=np.uint32))
    for scan in published:
        scan.end()
    ended = time.monotonic()
    numbers = [s.number for s in published]
    session.close()
    store.close()
    return numbers, started, ended


def _check_files(url: str, root: Path, numbers: list[int]) -> dict[str, int]:
    """Compare every file with Redis; return the scans saved per writer (from verdicts)."""
    store = open_store(url)
    node = get_session_node(SESSION, store=store)
    per_writer: collections.Counter[str] = collections.Counter()
    for number in numbers:
        scan = node.get_scan(number)
        fields = store.redis.hgetall(store.keys.scan(SESSION, number))
        per_writer[fields[b"saving_writer"].decode()] += 1
        with h5py.File(scan_file_path(scan.info, SESSION, root), "r") as file:
            entry = file[nexus.entry_name(number, 1)]
            for channel in scan.load_nodes():
                if channel.type != "channel":
                    continue
                data = file[nexus.channel_path(entry, channel.name)][()]
                expected = channel[:]
                if data.dtype != expected.dtype or not np.array_equal(data, expected):
                    raise AssertionError(f"scan {number}: {channel.name} differs from Redis")
    store.close()
    return dict(per_writer)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _wait_members(store: Any, writers: int) -> None:
    deadline = time.monotonic() + 60
    while len(pool_members(SESSION, store=store)) < writers:
        if time.monotonic() > deadline:
            raise RuntimeError("the writers did not start within 60 s")
        time.sleep(0.02)


def _wait_saved(store: Any, numbers: list[int]) -> None:
    deadline = time.monotonic() + 600
    while not set(numbers) <= saved_scans(SESSION, store=store):
        if time.monotonic() > deadline:
            raise RuntimeError("the scans were not saved within 600 s")
        time.sleep(0.02)


def run(writers: int, scans: int, points: int, in_process: bool, mode: str) -> dict[str, Any]:
    """One measurement: ``writers`` pool writers, ``scans`` concurrent scans.

    ``live``: the writers run (warmed by a first round of small scans) while the scans are
    published; timed from the first scan's creation until all are saved. ``catch-up``: the
    scans are published first, then the writers started; timed from the moment every writer
    is in the pool until all are saved (the writers' own rate, without the publisher's).
    """
    with private_server() as url, tempfile.TemporaryDirectory(prefix="pool-bench-") as tmp:
        root = Path(tmp)
        store = open_store(url)
        procs: list[Any] = []
        cpu = _children_cpu()
        try:
            if mode == "catch-up":
                numbers, _, _ = _publish(url, scans, points)
                procs = _start_writers(url, root, writers, in_process)
                _wait_members(store, writers)
                started = ended = time.monotonic()
            else:
                procs = _start_writers(url, root, writers, in_process)
                _wait_members(store, writers)
                warm, _, _ = _publish(url, scans, BLOCK)  # every writer's workers started
                _wait_saved(store, warm)
                numbers, started, ended = _publish(url, scans, points)
            _wait_saved(store, numbers)
            elapsed = time.monotonic() - started
        finally:
            store.close()
            _stop_writers(procs)
        # The writers and their worker processes (reaped by them), from start to stop.
        cpu = _children_cpu() - cpu
        # The files are checked once the writers are stopped (every file closed).
        per_writer = _check_files(url, root, numbers)
    total = scans * points
    nbytes = total * (CHANNELS * 8 + SPECTRUM * 4)
    return {
        "mode": mode,
        "writers": writers,
        "scans": scans,
        "points_per_scan": points,
        "seconds": round(elapsed, 2),
        "publish_s": round(ended - started, 2),
        "points_per_s": round(total / elapsed),
        "mb_per_s": round(nbytes / elapsed / 1e6, 1),
        "writers_cpu_s": round(cpu, 1),
        "scans_per_writer": sorted(per_writer.values(), reverse=True),
        "files_exact": True,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the measurements and print a table (and JSON with ``--json``)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.writer_pool")
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--scans", type=int, default=16)
    parser.add_argument("--points", type=int, default=2000)
    parser.add_argument("--in-process", action="store_true")
    parser.add_argument("--mode", choices=["live", "catch-up", "both"], default="both")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    modes = ["live", "catch-up"] if args.mode == "both" else [args.mode]
    rows = [
        run(n, args.scans, args.points, args.in_process, mode)
        for mode in modes
        for n in args.writers
    ]
    print(f"machine: {machine()}")
    print(
        "| mode | writers | scans | points/scan | publish s | saved after s | points/s | MB/s "
        "| writers' CPU s | scans per writer | exact |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['mode']} | {r['writers']} | {r['scans']} | {r['points_per_scan']} | {r['publish_s']} | "
            f"{r['seconds']} | "
            f"{r['points_per_s']:,} | {r['mb_per_s']} | {r['writers_cpu_s']} | "
            f"{r['scans_per_writer']} | "
            f"{'yes' if r['files_exact'] else 'NO'} |"
        )
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
