"""File size and END -> saved time of the writer per compression (docs/performance.md).

``python -m benchmarks.compression [--points N] [--reps R]``: for each compression, a
``WriterService`` (in this process, its own threads) writes ``reps`` scans of ``points``
points: 10 scalar diodes (float64, noisy) and 2 MCA-like spectra of 1024 float64 (Poisson
counts of a peak over a background), published in batches of 100 points. Prints a markdown
table: file size, END -> saved (median, max), and the ratio to no compression.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from scanstream import create_session
from scanstream._transport.server import EmbeddedServer
from scanstream.writer import WriterService
from scanstream.writer.nexus import COMPRESSIONS

from .harness import open_store


def _data(points: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    diodes = rng.normal(1000.0, 30.0, size=(10, points))
    bins = np.arange(1024)
    peak = 50 + 2000 * np.exp(-0.5 * ((bins - 400) / 12.0) ** 2)
    spectra = rng.poisson(peak, size=(2, points, 1024)).astype(np.float64)
    return diodes, spectra


def _run(url: str, compression: str, points: int, reps: int, root: Path) -> tuple[int, list[float]]:
    diodes, spectra = _data(points)
    session_name = f"c_{compression.replace('-', '_')}"
    store = open_store(url)
    times: list[float] = []
    try:
        with WriterService([session_name], root=root, store=store, compression=compression):
            time.sleep(0.5)  # the service takes its session
            session = create_session(session_name, store=store)
            for _ in range(reps):
                scan = session.create_scan("ascan", {"npoints": points})
                top = scan.create_container("timer")
                d = [top.create_channel(f"d:diode{i}") for i in range(10)]
                s = [top.create_channel(f"mca{i}:spectrum", shape=(1024,)) for i in range(2)]
                scan.prepared()
                for k in range(0, points, 100):
                    for i, ch in enumerate(d):
                        ch.emit(diodes[i, k : k + 100])
                    for i, ch in enumerate(s):
                        ch.emit(spectra[i, k : k + 100])
                scan.end()
                t0 = time.perf_counter()
                key = store.keys.writer_saved(session_name)
                deadline = time.monotonic() + 120
                while not store.redis.sismember(key, scan.number):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"scan {scan.number} not saved in 120 s")
                    time.sleep(0.001)
                times.append(time.perf_counter() - t0)
    finally:
        store.close()
    size = sum(p.stat().st_size for p in root.rglob(f"{session_name}.h5"))
    return size // reps, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--points", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="scanstream-bench-c-") as tmp:
        server = EmbeddedServer(Path(tmp) / "redis")
        server.start(timeout=10)
        try:
            rows = []
            for compression in COMPRESSIONS:
                size, times = _run(server.url, compression, args.points, args.reps, Path(tmp))
                rows.append((compression, size, statistics.median(times), max(times)))
        finally:
            server.stop()
    raw = rows[0][1]
    print(f"{args.points} points x (10 diodes + 2 spectra of 1024 float64), {args.reps} scans")
    print("| compression | file size per scan | vs none | END -> saved median (max) |")
    print("|---|---|---|---|")
    for name, size, med, worst in rows:
        print(
            f"| {name} | {size / 2**20:.1f} MiB | {raw / size:.1f}x smaller |"
            f" {med * 1e3:.0f} ms ({worst * 1e3:.0f} ms) |"
        )


if __name__ == "__main__":
    main()
