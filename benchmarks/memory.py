"""(4) Memory: peak RSS of the publisher against scan length; Redis memory per stored point."""

from __future__ import annotations

import multiprocessing as mp
import resource
import time
from typing import Any

import numpy as np
import redis

from scanstream import create_session

from .harness import Figure, Stat, flush, open_store


def _publisher(url: str, nch: int, npts: int, results: Any) -> None:
    """Publisher process: a step scan of ``npts`` points on ``nch`` channels; report peak RSS."""
    store = open_store(url)
    before = _vm_hwm_kib()
    session = create_session("mem", store=store)
    with session.create_scan("mem") as scan:
        top = scan.create_container("timer")
        channels = [top.create_channel(f"c{i}", dtype="float64") for i in range(nch)]
        scan.prepared()
        for i in range(npts):
            v = float(i)
            for ch in channels:
                ch.emit(v)
    after = _vm_hwm_kib()
    store.close()
    results.put({"rss_before_kib": before, "peak_rss_kib": after})


def _vm_hwm_kib() -> int:
    """Peak RSS of this process (VmHWM; ru_maxrss would include the parent's before exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def peak_rss(url: str, nch: int, npts: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_publisher, args=(url, nch, npts, q), daemon=True)
    p.start()
    try:
        return dict(q.get(timeout=300))
    finally:
        p.join(10)
        if p.is_alive():
            p.kill()
            p.join(5)


def redis_bytes_per_point(url: str, nch: int, npts: int, per_emit: int) -> float:
    """INFO memory ``used_memory`` growth per point of a 0D float64 scan."""
    flush(url)
    client = redis.Redis.from_url(url)
    store = open_store(url)
    try:
        base = int(client.info("memory")["used_memory"])
        session = create_session("memory", store=store)
        with session.create_scan("mem") as scan:
            top = scan.create_container("timer")
            channels = [top.create_channel(f"c{i}", dtype="float64") for i in range(nch)]
            scan.prepared()
            if per_emit == 1:
                for i in range(npts):
                    v = float(i)
                    for ch in channels:
                        ch.emit(v)
                    if i % 100 == 99:
                        time.sleep(0.001)  # a step scan: points trickle in
            else:
                block = np.arange(per_emit, dtype="float64")
                for _ in range(npts // per_emit):
                    for ch in channels:
                        ch.emit(block)
        used = int(client.info("memory")["used_memory"])
        return (used - base) / (nch * npts)
    finally:
        store.close()
        client.close()


def run(url: str, quick: bool) -> list[Figure]:
    nch = 10
    short, long_ = (5_000, 20_000) if quick else (50_000, 400_000)
    flush(url)
    a = peak_rss(url, nch, short)
    flush(url)
    b = peak_rss(url, nch, long_)
    growth = (b["peak_rss_kib"] - a["peak_rss_kib"]) / 1024.0
    fig_rss = Figure(
        f"4 publisher peak RSS, {nch} ch step scan, {short} vs {long_} points",
        Stat.of([b["peak_rss_kib"] / 1024.0], "MiB", higher_is_better=False),
        Stat.of([a["peak_rss_kib"] / 1024.0], "MiB", higher_is_better=False),
        "no growth with scan length",
        extra={
            "short": a,
            "long": b,
            "growth_mib": growth,
            "raw_bytes_long_mib": nch * long_ * 8 / 2**20,
        },
    )
    fig_rss.met = growth < max(5.0, 0.1 * nch * long_ * 8 / 2**20)
    n = 20_000 if quick else 200_000
    batched = redis_bytes_per_point(url, 100, n // 10, 1000)
    step = redis_bytes_per_point(url, 10, n // 10, 1)
    fig_mem = Figure(
        "4 Redis memory per stored 0D float64 point (batches of 1000 / step scan)",
        Stat.of([batched], "bytes", higher_is_better=False),
        Stat.of([8.0], "bytes", higher_is_better=False),
        "close to 8 bytes (raw float64)",
        extra={"step_scan_bytes_per_point": step},
    )
    fig_mem.met = batched < 16
    return [fig_rss, fig_mem]
