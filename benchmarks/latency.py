"""(2) Live latency: publish -> NEW_DATA delivered to subscribers in other processes.

Every point published carries its publication time (``time.time()``, float64); each
subscriber process walks the session from ``from_next=True`` and records, for every point it
receives, ``arrival - publication``. The publisher emits one point per channel per tick
(a step scan at ``rate_hz``), so batching happens only behind ``emit``.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from scanstream import EventType, create_session, get_session_node

from .harness import Figure, Stat, flush, open_store


def _subscriber(url: str, session: str, ready: Any, results: Any) -> None:
    """Subscriber process: walk the session until END_SCAN, send latencies back."""
    store = open_store(url)
    walker = get_session_node(session, store=store).walk_on_new_events(timeout=60)
    ready.set()
    cpu_ready = time.process_time()  # start-up (imports, connection) excluded from walk_cpu_s
    chunks: list[np.ndarray] = []
    received = 0
    end_lag = float("nan")
    for event_type, node, data in walker:
        if event_type is EventType.NEW_DATA:
            now = time.time()
            chunks.append(now - np.asarray(data.data, dtype=float))
            received += data.block_size
        elif event_type is EventType.END_SCAN and node.type == "scan":
            end_lag = time.time() - float(data.description["end_time"])
            break
    lat = np.concatenate(chunks) if chunks else np.empty(0)
    # Latency over the last tenth of the points: equal to the rest when nobody falls behind.
    tail = lat[-max(1, len(lat) // 10) :] if len(lat) else lat
    results.put(
        {
            "received": received,
            "latencies": lat.astype(np.float32),
            "tail_p99": float(np.percentile(tail, 99)) if len(tail) else float("nan"),
            "end_lag": end_lag,
            "cpu_s": time.process_time(),
            "walk_cpu_s": time.process_time() - cpu_ready,
        }
    )
    store.close()


@contextlib.contextmanager
def _processes(target: Callable[..., None], args: tuple[Any, ...], count: int) -> Iterator[Any]:
    """Start ``count`` processes of ``target(*args, ready, results)`` and wait until each set
    its ``ready``; yield the shared ``results`` queue; join them at the end (kill a late one)."""
    ctx = mp.get_context("spawn")
    readies, results = [ctx.Event() for _ in range(count)], ctx.Queue()
    procs = [
        ctx.Process(target=target, args=(*args, ready, results), daemon=True) for ready in readies
    ]
    for proc in procs:
        proc.start()
    try:
        for ready in readies:
            if not ready.wait(30):
                raise RuntimeError(f"a {target.__name__} process did not start")
        yield results
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)


class _Ticks:
    """``npts`` ticks at ``rate_hz`` (sleeping, never spinning: it would steal a core from the
    subscribers); :attr:`late` counts those started more than a period after they were due."""

    def __init__(self, npts: int, rate_hz: float) -> None:
        self.npts, self.period, self.late = npts, 1.0 / rate_hz, 0

    def __iter__(self) -> Iterator[int]:
        start = time.perf_counter()
        for i in range(self.npts):
            due = start + i * self.period
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            if time.perf_counter() - due > self.period:
                self.late += 1
            yield i


def measure(url: str, nch: int, rate_hz: float, seconds: float, nsub: int) -> dict[str, Any]:
    """One run: ``nsub`` subscriber processes, ``nch`` channels at ``rate_hz`` for ``seconds``."""
    flush(url)
    session_name = f"lat{nch}x{nsub}"
    store = open_store(url)
    session = create_session(session_name, store=store)
    npts = int(rate_hz * seconds)
    ticks = _Ticks(npts, rate_hz)
    try:
        with _processes(_subscriber, (url, session_name), nsub) as results:
            with session.create_scan("latency") as scan:
                top = scan.create_container("timer")
                channels = [top.create_channel(f"c{i}", dtype="float64") for i in range(nch)]
                scan.prepared()
                start = time.perf_counter()
                for _ in ticks:
                    stamp = time.time()
                    for ch in channels:
                        ch.emit(stamp)
                achieved = npts / (time.perf_counter() - start)
            outs = [results.get(timeout=60) for _ in range(nsub)]
    finally:
        store.close()
    lat = np.concatenate([o["latencies"] for o in outs]) * 1000.0
    expected = nch * npts
    return {
        "channels": nch,
        "rate_hz": rate_hz,
        "achieved_rate_hz": achieved,
        "late_ticks": ticks.late,
        "subscribers": nsub,
        "seconds": seconds,
        "median_ms": float(np.median(lat)),
        "p99_ms": float(np.percentile(lat, 99)),
        "max_ms": float(lat.max()),
        "tail_p99_ms": max(o["tail_p99"] for o in outs) * 1000.0,
        "end_lag_ms": max(o["end_lag"] for o in outs) * 1000.0,
        "all_points_received": all(o["received"] == expected for o in outs),
        "subscriber_cpu_s": max(o["cpu_s"] for o in outs),
        "subscriber_walk_cpu_s": max(o["walk_cpu_s"] for o in outs),
        "received": [o["received"] for o in outs],
        "expected": expected,
        "_latencies_ms": lat,
    }


def _raw_subscriber(url: str, keys: list[str], npoints: int, ready: Any, results: Any) -> None:
    """Raw redis-py subscriber: XREAD BLOCK on ``keys`` until ``npoints`` points arrived."""
    import redis

    client = redis.Redis.from_url(url)
    last = dict.fromkeys(keys, "0-0")
    ready.set()
    out = np.empty(npoints)
    received = 0
    deadline = time.monotonic() + 120
    while received < npoints and time.monotonic() < deadline:
        reply = client.xread(last, block=100)  # type: ignore[arg-type]
        now = time.time()
        for key, entries in reply or []:
            for entry_id, fields in entries:
                values = np.frombuffer(fields[b"d"], dtype="<f8")
                out[received : received + len(values)] = now - values
                received += len(values)
                last[key.decode()] = entry_id
    results.put(
        {
            "received": received,
            "latencies": out[:received].astype(np.float32),
            "cpu_s": time.process_time(),
        }
    )
    client.close()


def measure_raw(
    url: str, nch: int, rate_hz: float, seconds: float, nsub: int = 1
) -> dict[str, Any]:
    """Baseline: raw XADD (one pipeline per tick, one entry per channel) -> XREAD BLOCK.

    ``nsub`` raw subscriber processes read every stream, as the walkers of :func:`measure` do.
    """
    import redis

    flush(url)
    keys = [f"rawlat:{{x}}:data:{i}" for i in range(nch)]
    npts = int(rate_hz * seconds)
    ticks = _Ticks(npts, rate_hz)
    client = redis.Redis.from_url(url)
    try:
        with _processes(_raw_subscriber, (url, keys, nch * npts), nsub) as results:
            time.sleep(0.2)  # into their first XREAD
            for i in ticks:
                stamp = np.float64(time.time()).tobytes()
                pipe = client.pipeline(transaction=False)
                for key in keys:
                    pipe.xadd(key, {b"n": b"1", b"d": stamp}, id=f"{i}-1")
                pipe.execute()
            outs = [results.get(timeout=60) for _ in range(nsub)]
    finally:
        client.close()
    lat = np.concatenate([o["latencies"] for o in outs]) * 1000.0
    return {
        "received": min(o["received"] for o in outs),
        "expected": nch * npts,
        "all_points_received": all(o["received"] == nch * npts for o in outs),
        "late_ticks": ticks.late,
        "subscriber_cpu_s": max(o["cpu_s"] for o in outs),
        "_latencies_ms": lat,
    }


def isolated_points(url: str, quick: bool) -> list[Figure]:
    """(2b) Step scans at 10, 100 and 1000 Hz, 11 channels, 1 subscriber, against raw XADD->XREAD.

    The scanstream run and the raw run alternate (raw, scanstream, scanstream, raw, ...).
    """
    rates = (1000.0,) if quick else (10.0, 100.0, 1000.0)
    reps = 1 if quick else 2
    figures = []
    for rate in rates:
        seconds = 0.5 if quick else max(2.0, min(5.0, 200 / rate))
        ours: list[np.ndarray] = []
        raw: list[np.ndarray] = []
        complete = True
        cpu: dict[str, list[float]] = {"ours": [], "raw": []}
        for k in range(reps):
            for which in ("raw", "ours") if k % 2 == 0 else ("ours", "raw"):
                if which == "raw":
                    res = measure_raw(url, 11, rate, seconds)
                    raw.append(res["_latencies_ms"])
                else:
                    res = measure(url, 11, rate, seconds, 1)
                    ours.append(res["_latencies_ms"])
                    complete = complete and res["all_points_received"]
                # Subscriber CPU per second of scan: what the walk costs beside raw XREAD.
                cpu[which].append(res["subscriber_cpu_s"] / seconds)
        fig = Figure(
            f"2b live latency 11 ch x {rate:.0f} Hz, 1 subscriber",
            Stat.of(np.concatenate(ours), "ms", higher_is_better=False),
            Stat.of(np.concatenate(raw), "ms", higher_is_better=False),
            "median <= 1.5 x raw XADD->XREAD",
            extra={
                "all_points_received": complete,
                "subscriber_cpu_per_s": float(np.median(cpu["ours"])),
                "raw_subscriber_cpu_per_s": float(np.median(cpu["raw"])),
            },
        )
        fig.met = fig.ratio is not None and fig.ratio <= 1.5 and complete
        figures.append(fig)
    return figures


def many_subscribers(url: str, quick: bool) -> Figure:
    """(2c) 100 channels x 1 kHz, 16 subscriber processes (quick: 10 ch, 4 subscribers).

    The baseline is the same load in raw redis-py (:func:`measure_raw` with as many raw
    subscriber processes), run just before: what this machine allows for that many readers.
    """
    nch, nsub, seconds = (10, 4, 0.5) if quick else (100, 16, 5.0)
    raw = measure_raw(url, nch, 1000.0, seconds, nsub)
    res = measure(url, nch, 1000.0, seconds, nsub)
    lat = res.pop("_latencies_ms")
    base = raw.pop("_latencies_ms")
    res["raw_p99_ms"] = float(np.percentile(base, 99))
    res["raw_late_ticks"] = raw["late_ticks"]
    res["raw_all_points_received"] = raw["all_points_received"]
    fig = Figure(
        f"2c live latency {res['channels']} ch x 1000 Hz, {res['subscribers']} subscribers "
        "(baseline: raw XADD->XREAD, as many raw subscribers)",
        Stat.of(lat, "ms", higher_is_better=False),
        Stat.of(base, "ms", higher_is_better=False),
        "p99 <= 5 ms, no subscriber behind",
        extra=res,
    )
    fig.met = fig.value.p99 <= 5.0 and res["all_points_received"]
    return fig


def run(url: str, quick: bool) -> list[Figure]:
    """Measure (2): 100 ch x 1 kHz x 10 s, 4 subscribers (quick: 10 ch x 1 kHz x 1 s, 2 subs)."""
    if quick:
        res = measure(url, 10, 1000.0, 1.0, 2)
    else:
        res = measure(url, 100, 1000.0, 10.0, 4)
    lat = res.pop("_latencies_ms")
    # Baseline: the same subscribers reading the same server, measured as Redis' own round trip
    # (PING) from this process: the floor under any delivery latency.
    base = _ping_ms(url, 2000 if quick else 20000)
    fig = Figure(
        f"2 live latency {res['channels']} ch x {res['rate_hz']:.0f} Hz, {res['subscribers']} subscribers",
        Stat.of(lat, "ms", higher_is_better=False),
        Stat.of(base, "ms", higher_is_better=False),
        "p99 <= 10 ms, no subscriber behind",
        extra=res,
    )
    fig.met = fig.value.p99 <= 10.0 and res["all_points_received"] and res["tail_p99_ms"] <= 10.0
    return [fig, *isolated_points(url, quick), many_subscribers(url, quick)]


def _ping_ms(url: str, n: int) -> np.ndarray:
    import redis

    client = redis.Redis.from_url(url)
    out = np.empty(n)
    try:
        for i in range(n):
            t0 = time.perf_counter()
            client.ping()
            out[i] = (time.perf_counter() - t0) * 1000.0
    finally:
        client.close()
    return out


def scale(url: str, quick: bool) -> list[dict[str, Any]]:
    """(5) Latency against the number of subscribers and of channels (same point rate)."""
    rows = []
    secs = 0.5 if quick else 3.0
    grid = (
        [(10, 1000.0, 1), (10, 1000.0, 2)]
        if quick
        else [
            (100, 1000.0, 1),
            (100, 1000.0, 2),
            (100, 1000.0, 4),
            (100, 1000.0, 8),
            (10, 1000.0, 4),
            (1000, 100.0, 4),
        ]
    )
    for nch, rate, nsub in grid:
        res = measure(url, nch, rate, secs, nsub)
        res.pop("_latencies_ms")
        rows.append(
            {
                k: res[k]
                for k in (
                    "channels",
                    "rate_hz",
                    "achieved_rate_hz",
                    "subscribers",
                    "median_ms",
                    "p99_ms",
                    "max_ms",
                    "tail_p99_ms",
                    "all_points_received",
                )
            }
        )
    return rows
