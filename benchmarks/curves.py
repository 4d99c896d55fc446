"""(6) Scale curves: cost against channels, concurrent scans, subscribers and scan length.

Each curve varies one size and keeps the rest fixed; each point is short (a second or a
few) and repeated (``reps``); a row gives the median, the spread (min and max over the
repetitions) and the cost per unit (per channel, per point...), where a bend shows. The
machine's load average is recorded beside every row: on a shared machine it moves figures
more than most bends do.

- **channels** (1 ... 10 000): one scan of N channels, 1000 points each (one emit of 1000
  points per channel): the time to create the channels, to publish (until Redis holds every
  point), to ``end()`` (seals every stream) and for a subscriber to walk the ended scan.
- **concurrent scans** (1, 4, 16, 64) in one process, one thread each, one store: 10
  channels of 1000-point batches per scan (50 000 points each), the same points per scan;
  wall time and process CPU.
- **subscribers** (1, 4, 16, 64 processes): live latency of 10 channels at 1 kHz
  (step scan), median and p99 over every point received, and each subscriber's CPU.
- **scan length** (10^3 ... 10^7 points, 10^8 with ``--full``): one channel of float64 in
  1000-point batches: publish and walk time per point, Redis memory per point.
"""

from __future__ import annotations

import gc
import itertools
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import redis

from scanstream import DataStore, EventType, create_session, get_session_node

from . import latency
from .harness import flush, in_threads, open_store

_counter = itertools.count()


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _spread(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=float)
    return {"median": float(np.median(arr)), "min": float(arr.min()), "max": float(arr.max())}


def _publish_scan(
    url: str, nch: int, npts: int, batch: int = 1000, store: DataStore | None = None
) -> tuple[dict[str, float], str, int]:
    """One scan of ``nch`` float64 channels of ``npts`` points in ``batch``-point emits.

    Returns the seconds of each phase (create, publish until flushed, end) and the
    session name and scan number to read it back. Through ``store`` if given (left open),
    else through a store of its own.
    """
    own = store is None
    if store is None:
        store = open_store(url)
    try:
        name = f"curve{next(_counter)}"
        session = create_session(name, store=store)
        t0 = time.perf_counter()
        scan = session.create_scan("curve")
        top = scan.create_container("timer")
        channels = [top.create_channel(f"c{i}", dtype="float64") for i in range(nch)]
        scan.prepared()
        t1 = time.perf_counter()
        block = np.arange(min(batch, npts), dtype="float64")
        for start in range(0, npts, batch):
            points = block if start + batch <= npts else block[: npts - start]
            for ch in channels:
                ch.emit(points)
        scan.flush()
        t2 = time.perf_counter()
        scan.end()
        t3 = time.perf_counter()
        return {"create_s": t1 - t0, "publish_s": t2 - t1, "end_s": t3 - t2}, name, scan.number
    finally:
        if own:
            store.close()


def _walk_scan(url: str, session: str, number: int) -> tuple[float, int]:
    """Seconds for a subscriber to walk an ended scan from its start, and the points read."""
    store = open_store(url)
    try:
        t0 = time.perf_counter()
        scan = get_session_node(session, store=store).get_scan(number)
        points = 0
        for event_type, _node, data in scan.walk_events(timeout=60):
            if event_type is EventType.NEW_DATA:
                points += data.block_size
        return time.perf_counter() - t0, points
    finally:
        store.close()


def _repeat(reps: int, one: Callable[[], dict[str, float]], url: str) -> dict[str, Any]:
    """Run ``one`` ``reps`` times (the server flushed before each); median and spread of each key."""
    runs: list[dict[str, float]] = []
    loads = []
    for _ in range(reps):
        flush(url)
        gc.collect()
        loads.append(_load())
        runs.append(one())
    out: dict[str, Any] = {k: _spread([r[k] for r in runs]) for k in runs[0]}
    out["load"] = max(loads)
    out["reps"] = reps
    return out


def channels(url: str, sizes: tuple[int, ...], reps: int, npts: int = 1000) -> list[dict[str, Any]]:
    """Cost against the number of channels (``npts`` points each, one 1000-point emit)."""
    rows = []
    for nch in sizes:

        def one(nch: int = nch) -> dict[str, float]:
            phases, name, number = _publish_scan(url, nch, npts)
            walk_s, points = _walk_scan(url, name, number)
            if points != nch * npts:
                raise RuntimeError(f"walk read {points} of {nch * npts} points")
            return {**phases, "walk_s": walk_s}

        res = _repeat(reps, one, url)
        row: dict[str, Any] = {"channels": nch, "load": res["load"], "reps": reps}
        for phase in ("create_s", "publish_s", "end_s", "walk_s"):
            row[phase] = res[phase]
            row[phase.replace("_s", "_us_per_channel")] = res[phase]["median"] / nch * 1e6
        rows.append(row)
    return rows


def concurrent_scans(
    url: str, sizes: tuple[int, ...], reps: int, npts: int = 50_000, nch: int = 10
) -> list[dict[str, Any]]:
    """Cost against scans published at once by threads of one process (``nch`` x ``npts`` each).

    The threads share one ``DataStore``, opened before the timing, as the threads of a
    publishing process do (and figure 1f).
    """
    rows = []
    for nscans in sizes:

        def one(nscans: int = nscans) -> dict[str, float]:
            store = open_store(url)
            try:
                wall, cpu = in_threads(lambda: _publish_scan(url, nch, npts, store=store), nscans)
            finally:
                store.close()
            total = nscans * nch * npts
            return {"wall_s": wall, "cpu_s": cpu, "mpoints_per_s": total / wall / 1e6}

        res = _repeat(reps, one, url)
        total = nscans * nch * npts
        rows.append(
            {
                "scans": nscans,
                "load": res["load"],
                "reps": reps,
                "points": total,
                "wall_s": res["wall_s"],
                "cpu_s": res["cpu_s"],
                "mpoints_per_s": res["mpoints_per_s"],
                "cpu_ns_per_point": res["cpu_s"]["median"] / total * 1e9,
            }
        )
    return rows


def subscribers(
    url: str, sizes: tuple[int, ...], reps: int, seconds: float, nch: int = 10, rate: float = 1000.0
) -> list[dict[str, Any]]:
    """Live latency against subscriber processes (``nch`` channels stepped at ``rate``)."""
    rows = []
    for nsub in sizes:
        runs = []
        loads = []
        for _ in range(reps):
            loads.append(_load())
            res = latency.measure(url, nch, rate, seconds, nsub)
            runs.append(res)
        rows.append(
            {
                "subscribers": nsub,
                "load": max(loads),
                "reps": reps,
                "median_ms": _spread([r["median_ms"] for r in runs]),
                "p99_ms": _spread([r["p99_ms"] for r in runs]),
                "late_ticks": _spread([r["late_ticks"] for r in runs]),
                "all_points_received": all(r["all_points_received"] for r in runs),
                # The busiest subscriber's CPU while walking, per second of scan.
                "walk_cpu_per_s": _spread([r["subscriber_walk_cpu_s"] / seconds for r in runs]),
            }
        )
    return rows


def _redis_used(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        used: int = client.info("memory")["used_memory"]
        return used
    finally:
        client.close()


def _available_mib() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


def scan_length(url: str, sizes: tuple[int, ...], reps: int) -> list[dict[str, Any]]:
    """Cost against the number of points of a scan (one float64 channel, 1000-point emits).

    A size whose data would not fit three times in the available memory (Redis holds it
    once, its replies are read once, and the walk's events once) is skipped, with the reason.
    """
    rows: list[dict[str, Any]] = []
    for npts in sizes:
        available = _available_mib()
        need_mib = 3 * npts * 8 // (1 << 20)
        if available is not None and need_mib > available:
            rows.append(
                {"points": npts, "skipped": f"needs ~{need_mib} MiB, {available} MiB available"}
            )
            continue
        reps_here = reps if npts < 10**7 else 1

        def one(npts: int = npts) -> dict[str, float]:
            base = _redis_used(url)
            phases, name, number = _publish_scan(url, 1, npts)
            used = _redis_used(url) - base
            walk_s, points = _walk_scan(url, name, number)
            if points != npts:
                raise RuntimeError(f"walk read {points} of {npts} points")
            return {**phases, "walk_s": walk_s, "redis_bytes_per_point": used / npts}

        res = _repeat(reps_here, one, url)
        rows.append(
            {
                "points": npts,
                "load": res["load"],
                "reps": reps_here,
                "publish_s": res["publish_s"],
                "end_s": res["end_s"],
                "walk_s": res["walk_s"],
                "publish_ns_per_point": res["publish_s"]["median"] / npts * 1e9,
                "walk_ns_per_point": res["walk_s"]["median"] / npts * 1e9,
                "redis_bytes_per_point": res["redis_bytes_per_point"]["median"],
            }
        )
        flush(url)
    return rows


def run(url: str, quick: bool, full: bool = False) -> dict[str, list[dict[str, Any]]]:
    """Every curve: ``quick`` small sizes (seconds, for the smoke test); ``full`` adds the
    largest sizes (10 000 channels, 64 scans and subscribers, 10^8 points)."""
    if quick:
        return {
            "channels": channels(url, (1, 10, 100), reps=1),
            "concurrent_scans": concurrent_scans(url, (1, 4), reps=1, npts=2000),
            "subscribers": subscribers(url, (1, 2), reps=1, seconds=0.3),
            "scan_length": scan_length(url, (10**3, 10**4, 10**5), reps=1),
        }
    return {
        "channels": channels(url, (1, 10, 100, 1000, 10_000) if full else (1, 10, 100, 1000), 3),
        "concurrent_scans": concurrent_scans(url, (1, 4, 16, 64) if full else (1, 4, 16), 3),
        "subscribers": subscribers(url, (1, 4, 16, 64) if full else (1, 4, 16), 2, seconds=2.0),
        "scan_length": scan_length(url, tuple(10**k for k in range(3, 9 if full else 8)), reps=3),
    }


def table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of one curve: ``median (min-max)`` for the repeated figures."""
    if not rows:
        return ""
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]

    def cell(v: Any) -> str:
        if isinstance(v, dict):
            return f"{_num(v['median'])} ({_num(v['min'])}-{_num(v['max'])})"
        if isinstance(v, float):
            return _num(v)
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _num(v: float) -> str:
    if v == 0 or abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}"
