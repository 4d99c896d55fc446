"""File size and END -> saved time of the writer per compression (docs/performance.md).

``python -m benchmarks.compression [--points N] [--reps R]``: one ``WriterService`` per
compression (in this process, its own threads, each on its own session) and ``reps`` rounds;
in each round every compression writes one scan of ``points`` points, in an order rotated
from round to round (interleaved, so that a slow spell of a shared machine falls on all of
them): 10 scalar diodes (float64, noisy) and 2 MCA-like spectra of 1024 float64 (Poisson
counts of a peak over a background), published in batches of 100 points. Prints a markdown
table: file size per scan, END -> saved median with its spread (min-max), and the ratio to
no compression.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from scanstream import DataStore, create_session
from scanstream._transport.server import EmbeddedServer
from scanstream.publish.session import PublishingSession
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


def _session_name(compression: str) -> str:
    return f"c_{compression.replace('-', '_')}"


def _one_scan(
    store: DataStore, session: PublishingSession, data: tuple[np.ndarray, np.ndarray]
) -> float:
    """Publish one scan at full speed; return END -> saved (s)."""
    diodes, spectra = data
    points = diodes.shape[1]
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
    key = store.keys.writer_saved(session.name)
    deadline = time.monotonic() + 120
    while not store.redis.sismember(key, scan.number):
        if time.monotonic() > deadline:
            raise RuntimeError(f"scan {scan.number} of {session.name} not saved in 120 s")
        time.sleep(0.001)
    return time.perf_counter() - t0


def measure(url: str, points: int, reps: int, root: Path) -> dict[str, tuple[int, list[float]]]:
    """Per compression: (file bytes per scan, END -> saved times)."""
    data = _data(points)
    store = open_store(url)
    times: dict[str, list[float]] = {c: [] for c in COMPRESSIONS}
    try:
        with contextlib.ExitStack() as stack:
            for compression in COMPRESSIONS:
                stack.enter_context(
                    WriterService(
                        [_session_name(compression)],
                        root=root,
                        store=store,
                        compression=compression,
                    )
                )
            time.sleep(0.5)  # the services take their sessions
            sessions = {c: create_session(_session_name(c), store=store) for c in COMPRESSIONS}
            order = list(COMPRESSIONS)
            for round_ in range(reps):
                for compression in order[round_ % len(order) :] + order[: round_ % len(order)]:
                    times[compression].append(_one_scan(store, sessions[compression], data))
    finally:
        store.close()
    result = {}
    for compression in COMPRESSIONS:
        # One file per scan (docs/decisions/0011): the scans' files, not the session file.
        files = root.rglob(f"{_session_name(compression)}_scans/scan*.h5")
        size = sum(p.stat().st_size for p in files)
        result[compression] = (size // reps, times[compression])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--points", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="scanstream-bench-c-") as tmp:
        server = EmbeddedServer(Path(tmp) / "redis")
        server.start(timeout=10)
        try:
            rows = measure(server.url, args.points, args.reps, Path(tmp))
        finally:
            server.stop()
    raw = rows["none"][0]
    print(f"{args.points} points x (10 diodes + 2 spectra of 1024 float64), {args.reps} rounds")
    print("| compression | file size per scan | vs none | END -> saved median (min-max) |")
    print("|---|---|---|---|")
    for name, (size, times) in rows.items():
        med = statistics.median(times)
        print(
            f"| {name} | {size / 2**20:.1f} MiB | {raw / size:.1f}x smaller |"
            f" {med * 1e3:.0f} ms ({min(times) * 1e3:.0f}-{max(times) * 1e3:.0f} ms) |"
        )


if __name__ == "__main__":
    main()
