"""Shared pieces of the benchmarks: a private server, statistics, result records."""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import redis

from scanstream import DataStore, Settings
from scanstream._transport.server import EmbeddedServer, find_server_binary


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def private_server(maxmemory: str | None = None) -> Iterator[str]:
    """Start a private server on a free loopback port; yield its URL; stop it at the end."""
    with tempfile.TemporaryDirectory(prefix="scanstream-bench-") as tmp:
        server = EmbeddedServer(Path(tmp), port=free_port(), maxmemory=maxmemory)
        server.start(timeout=10)
        try:
            yield server.url
        finally:
            server.stop()


def flush(url: str) -> None:
    """Empty the benchmark server between runs (it belongs to the benchmark)."""
    client = redis.Redis.from_url(url)
    try:
        client.flushall()
    finally:
        client.close()


def open_store(url: str) -> DataStore:
    """A DataStore on the benchmark server."""
    return DataStore(settings=Settings(redis_url=url))


@dataclass
class Stat:
    """Median and 99th percentile of repeated measurements.

    For rates (``higher_is_better``) the p99 is the rate of the slowest 1 % of runs (the first
    percentile of the rates), so that p99 always names the bad tail.
    """

    median: float
    p99: float
    runs: int
    unit: str

    @classmethod
    def of(
        cls, values: list[float] | np.ndarray, unit: str, higher_is_better: bool | None = None
    ) -> Stat:
        arr = np.asarray(values, dtype=float)
        if arr.size == 0:
            return cls(float("nan"), float("nan"), 0, unit)
        if higher_is_better is None:
            higher_is_better = unit.endswith("/s")
        tail = 1 if higher_is_better else 99
        return cls(float(np.median(arr)), float(np.percentile(arr, tail)), int(arr.size), unit)


@dataclass
class Figure:
    """One benchmark figure with its baseline (both measured in the same run)."""

    name: str
    value: Stat
    baseline: Stat | None = None
    target: str = ""
    met: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or not self.baseline.median:
            return None
        return self.value.median / self.baseline.median

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ratio"] = self.ratio
        return out


def interleave(
    runs: Sequence[Callable[[], Any]],
    times: int,
    setup: Callable[[], None] | None = None,
    warmup: bool = True,
) -> list[list[Any]]:
    """Call each of ``runs`` ``times`` times, interleaved; return the results of each.

    The order alternates (A B, B A, A B, ...) so that a slow moment of a shared machine, or
    the state one run leaves behind, weighs on a figure and its baseline alike. With
    ``warmup``, each is first called once, uncounted (imports, first connections, caches).
    ``setup`` runs before every call.
    """
    results: list[list[Any]] = [[] for _ in runs]
    order = list(range(len(runs)))
    for k in range(times + (1 if warmup else 0)):
        for i in order if k % 2 == 0 else order[::-1]:
            if setup is not None:
                setup()
            value = runs[i]()
            if k or not warmup:
                results[i].append(value)
    return results


def machine() -> dict[str, Any]:
    """Describe the machine, Python and server the figures come from (benchmarks and soak)."""
    import subprocess

    import h5py

    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_mib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        memory_mib = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    server = None
    with contextlib.suppress(Exception):  # a description must not fail the run
        server = subprocess.run(
            [str(find_server_binary()), "--version"],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        ).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_mib": memory_mib,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
        "h5py": h5py.__version__,
        "redis_py": redis.__version__,
        "server": server,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def in_threads(target: Callable[[], Any], count: int) -> tuple[float, float]:
    """Run ``target`` in ``count`` threads at once; return (wall s, process CPU s).

    The first error of a thread is raised once all have been joined.
    """
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as exc:  # re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(count)]
    c0, t0 = time.process_time(), time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    if errors:
        raise errors[0]
    return time.perf_counter() - t0, time.process_time() - c0
