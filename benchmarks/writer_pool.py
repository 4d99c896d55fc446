"""Writer pool throughput: 1, 2 and 4 ``scanstream writer --pool`` processes on 16 scans.

``python -m benchmarks.writer_pool [--writers 1 2 4] [--workers 4 1] [--scans 16]
[--points 2000] [--repeats 3] [--in-process] [--json PATH]``

For each number of writers and of worker processes per writer (``--workers``: scans one
writer writes at once), in rounds (the configurations interleaved, in alternating order, so
that a slow moment of a shared machine weighs on all of them): a private server, and that many
writer processes as deployed (``scanstream writer --pool SESSION --root DIR --workers N``).
Each round starts the writers, waits until they are all in the pool and warms them up with a
first set of small scans (their worker processes started), then times, with the process
starts outside the timed sections:

- ``live``: the writers run while the ``--scans`` scans are published from this process;
  from the first scan's creation until every scan is in the saved set. The publisher shares
  the cores: on a small machine it bounds the figure.
- ``catch-up``: the writers are frozen (SIGSTOP to their process groups), the scans published
  in full, then the writers released (SIGCONT); from the release until every scan is saved:
  the writers' own rate.

Each scan has four float64 channels and a 256-channel uint32 spectrum per point, ``--points``
points in blocks of 100 interleaved over the scans, and a session file of its own (``filename``;
the data goes into a file per scan anyway, this keeps the session file's short updates, under
its lock, out of the figures). Once the writers are stopped every
file is compared with Redis (values, dtype, count; one entry per file) and every scan must be
SAVED, by one writer (its verdict names it). "writers' CPU s" is the CPU time of the writer
processes, their zygotes and worker processes during the timed section.

It also measures what a worker process costs to start: ``python -m scanstream.writer.worker``
(the imports) against a fork of the zygote (:mod:`scanstream.writer.zygote`).

Not part of ``python -m benchmarks`` nor of the CI smoke run: it starts several processes
and takes a few minutes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import signal
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
from scanstream._protocol.entries import parse_saving
from scanstream.models import SavingState
from scanstream.writer import nexus, pool_members, saved_scans, scan_file_path
from scanstream.writer.zygote import Zygote

from .harness import flush, machine, open_store, private_server

SESSION = "pool_bench"
BLOCK = 100
SPECTRUM = 256
CHANNELS = 4
_TICK = os.sysconf("SC_CLK_TCK")


# -- the writers --------------------------------------------------------------------------------
def _start_writers(url: str, root: Path, count: int, workers: int | None) -> list[Any]:
    extra = ["--in-process"] if workers is None else ["--workers", str(workers)]
    return [
        subprocess.Popen(
            [sys.executable, "-m", "scanstream", "--redis-url", url, "writer", "--pool", SESSION]
            + ["--root", str(root), "--log-level", "warning", *extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,  # a process group each: frozen with its zygote and workers
        )
        for _ in range(count)
    ]


def _stop_writers(procs: list[Any]) -> None:
    for proc in procs:
        _signal_group(proc, signal.SIGCONT)
        proc.terminate()
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            _, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"a writer exited with code {proc.returncode}: {err[-2000:]}")


def _signal_group(proc: Any, signum: int) -> None:
    try:
        os.killpg(proc.pid, signum)
    except ProcessLookupError:
        pass


def _group_cpu(procs: list[Any]) -> float:
    """CPU seconds of the writers' process groups (live processes and the children they reaped)."""
    groups = {proc.pid for proc in procs}
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile: its time is in its parent's children time
        if int(fields[2]) in groups:  # pgrp
            total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return total / _TICK


def _wait_members(store: Any, writers: int) -> None:
    deadline = time.monotonic() + 60
    while len(pool_members(SESSION, store=store)) < writers:
        if time.monotonic() > deadline:
            raise RuntimeError("the writers did not join the pool within 60 s")
        time.sleep(0.02)


def _wait_saved(store: Any, numbers: list[int]) -> None:
    deadline = time.monotonic() + 600
    while not set(numbers) <= saved_scans(SESSION, store=store):
        if time.monotonic() > deadline:
            raise RuntimeError("the scans were not saved within 600 s")
        time.sleep(0.01)


# -- the scans ----------------------------------------------------------------------------------
def _publish(url: str, tag: str, scans: int, points: int) -> tuple[list[int], float, float]:
    """Publish the scans at once; return their numbers, the time the first was created and
    the time the last one ended (its END in Redis)."""
    store = open_store(url)
    with warnings.catch_warnings():  # catch-up: the writers are frozen, as intended
        warnings.simplefilter("ignore", NoWriterWarning)
        logging.getLogger("scanstream.publish").setLevel(logging.ERROR)
        session = create_session(SESSION, store=store)
        started = time.monotonic()
        published, channels = [], []
        for k in range(scans):
            scan = session.create_scan(
                f"{tag}{k}", {"npoints": points, "filename": f"{tag}/scan{k:02d}.h5"}
            )
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


def _check_files(url: str, root: Path, numbers: list[int]) -> list[str]:
    """Compare every file with Redis; return the writer that saved each scan (its verdict)."""
    store = open_store(url)
    node = get_session_node(SESSION, store=store)
    savers = []
    for number in numbers:
        scan = node.get_scan(number)
        fields = store.redis.hgetall(store.keys.scan(SESSION, number))
        verdict = parse_saving(fields)
        if verdict.state is not SavingState.SAVED:
            raise AssertionError(f"scan {number}: {verdict}")
        savers.append(fields[b"saving_writer"].decode())
        with h5py.File(scan_file_path(scan.info, SESSION, root), "r") as file:
            if list(file) != [nexus.entry_name(number, 1)]:
                raise AssertionError(f"scan {number}: entries {list(file)}")
            entry = file[nexus.entry_name(number, 1)]
            for channel in scan.load_nodes():
                if channel.type != "channel":
                    continue
                data = file[nexus.channel_path(entry, channel.name)][()]
                expected = channel[:]
                if data.dtype != expected.dtype or not np.array_equal(data, expected):
                    raise AssertionError(f"scan {number}: {channel.name} differs from Redis")
    store.close()
    return savers


# -- one round of one configuration -------------------------------------------------------------
def run_round(
    url: str, writers: int, workers: int | None, scans: int, points: int
) -> dict[str, dict[str, Any]]:
    """Start ``writers`` pool writers, warm them up, time ``live`` then ``catch-up``."""
    flush(url)
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="pool-bench-") as tmp:
        root = Path(tmp)
        store = open_store(url)
        procs = _start_writers(url, root, writers, workers)
        measured: dict[str, list[int]] = {}
        try:
            _wait_members(store, writers)
            warm, _, _ = _publish(url, "warm", scans, BLOCK)  # every worker started
            _wait_saved(store, warm)

            cpu = _group_cpu(procs)
            numbers, started, ended = _publish(url, "live", scans, points)
            _wait_saved(store, numbers)
            rows["live"] = _row(
                time.monotonic() - started, ended - started, _group_cpu(procs) - cpu
            )
            measured["live"] = numbers

            for proc in procs:
                _signal_group(proc, signal.SIGSTOP)
            numbers, started, ended = _publish(url, "catchup", scans, points)
            cpu = _group_cpu(procs)
            released = time.monotonic()
            for proc in procs:
                _signal_group(proc, signal.SIGCONT)
            _wait_saved(store, numbers)
            rows["catch-up"] = _row(
                time.monotonic() - released, ended - started, _group_cpu(procs) - cpu
            )
            measured["catch-up"] = numbers
        finally:
            store.close()
            _stop_writers(procs)
        # The files are checked once the writers are stopped (every file closed).
        for mode, numbers in measured.items():
            savers = _check_files(url, root, numbers)
            counts = sorted((savers.count(w) for w in set(savers)), reverse=True)
            rows[mode]["scans_per_writer"] = counts
    return rows


def _row(seconds: float, publish: float, cpu: float) -> dict[str, Any]:
    return {"seconds": seconds, "publish_s": publish, "cpu_s": cpu}


# -- the start of a worker process --------------------------------------------------------------
def start_cost(count: int = 10) -> dict[str, dict[str, float]]:
    """Wall and CPU seconds per worker: ``python -m scanstream.writer.worker`` against a fork.

    Each worker is started, given EOF on its stdin (it exits once ready to read it) and waited
    for: its start and end, without a scan.
    """
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu, wall = usage.ru_utime + usage.ru_stime, time.monotonic()
    for _ in range(count):
        proc = subprocess.Popen(
            [sys.executable, "-m", "scanstream.writer.worker"], stdin=subprocess.PIPE, text=True
        )
        proc.communicate(timeout=60)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    spawned = {
        "wall_s": (time.monotonic() - wall) / count,
        "cpu_s": (usage.ru_utime + usage.ru_stime - cpu) / count,
    }
    zygote = Zygote()
    try:
        first = zygote.fork()  # starts the zygote (its imports: once per writer)
        first.stdin.close()
        first.wait(60)
        pid = zygote._proc.pid if zygote._proc is not None else 0

        def zygote_cpu() -> float:  # the zygote's and its reaped workers'
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            return sum(int(f) for f in fields[11:15]) / _TICK

        own = resource.getrusage(resource.RUSAGE_SELF)
        cpu, wall, zcpu = own.ru_utime + own.ru_stime, time.monotonic(), zygote_cpu()
        for _ in range(count * 5):
            worker = zygote.fork()
            worker.stdin.close()
            worker.wait(60)
        own = resource.getrusage(resource.RUSAGE_SELF)
        forked = {
            "wall_s": (time.monotonic() - wall) / count / 5,
            "cpu_s": (zygote_cpu() - zcpu + own.ru_utime + own.ru_stime - cpu) / count / 5,
        }
    finally:
        zygote.close()
    return {"python -m scanstream.writer.worker": spawned, "fork of the zygote": forked}


# -- the run ------------------------------------------------------------------------------------
def _median_spread(values: list[float]) -> tuple[float, float, float]:
    return float(np.median(values)), min(values), max(values)


def main(argv: list[str] | None = None) -> int:
    """Run the measurements and print the tables (and JSON with ``--json``)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.writer_pool")
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--workers", type=int, nargs="+", default=[4, 1])
    parser.add_argument("--in-process", action="store_true", help="threads, not --workers")
    parser.add_argument("--scans", type=int, default=16)
    parser.add_argument("--points", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    load = os.getloadavg()
    starts = start_cost()
    per_writer: list[int | None] = [None] if args.in_process else list(args.workers)
    configs = [(n, w) for w in per_writer for n in args.writers]
    results: dict[tuple[int, int | None], list[dict[str, dict[str, Any]]]] = {
        c: [] for c in configs
    }
    with private_server() as url:
        for k in range(args.repeats):
            for config in configs if k % 2 == 0 else configs[::-1]:
                results[config].append(run_round(url, *config, args.scans, args.points))
    total = args.scans * args.points
    nbytes = total * (CHANNELS * 8 + SPECTRUM * 4)
    rows = []
    for mode in ("catch-up", "live"):
        for (writers, workers), rounds in results.items():
            seconds = [r[mode]["seconds"] for r in rounds]
            median, low, high = _median_spread(seconds)
            rows.append(
                {
                    "mode": mode,
                    "writers": writers,
                    "workers": "threads" if workers is None else workers,
                    "seconds": round(median, 2),
                    "seconds_min": round(low, 2),
                    "seconds_max": round(high, 2),
                    "publish_s": round(float(np.median([r[mode]["publish_s"] for r in rounds])), 2),
                    "points_per_s": round(total / median),
                    "mb_per_s": round(nbytes / median / 1e6, 1),
                    "writers_cpu_s": round(float(np.median([r[mode]["cpu_s"] for r in rounds])), 1),
                    "scans_per_writer": [r[mode]["scans_per_writer"] for r in rounds],
                    "files_exact": True,  # _check_files raised otherwise
                    "repeats": len(rounds),
                }
            )
    print(f"machine: {machine()}")
    print(f"load average (1, 5, 15 min): at the start {load}, at the end {os.getloadavg()}")
    print("\n| worker start | wall s per worker | CPU s per worker |\n|---|---|---|")
    for name, cost in starts.items():
        print(f"| {name} | {cost['wall_s']:.4f} | {cost['cpu_s']:.4f} |")
    print(
        f"\n{args.scans} scans x {args.points} points, {nbytes / 1e6:.0f} MB; median of "
        f"{args.repeats} rounds (min-max)\n"
    )
    print(
        "| mode | writers | workers each | saved after s (min-max) | points/s | MB/s "
        "| writers' CPU s | publish s | scans per writer | exact |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        split = "; ".join(", ".join(map(str, c)) for c in r["scans_per_writer"])
        print(
            f"| {r['mode']} | {r['writers']} | {r['workers']} | {r['seconds']} "
            f"({r['seconds_min']}-{r['seconds_max']}) | {r['points_per_s']:,} | {r['mb_per_s']} "
            f"| {r['writers_cpu_s']} | {r['publish_s']} | {split} | "
            f"{'yes' if r['files_exact'] else 'NO'} |"
        )
    if args.json is not None:
        args.json.write_text(
            json.dumps({"machine": machine(), "worker_start": starts, "rows": rows}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
