"""(1) Publish throughput, with raw pipelined XADD of the same bytes as the baseline.

- (a) 0D float64, ``nch`` channels, batches of 1000 points per emit;
- (b) 0D float64, 10 channels, one point per emit call (step scan): the figure is emit calls
  per second of the acquisition loop, and the end-to-end rate (until ``end()`` returns);
- (c) 1D spectra of 1024 float32, 10 channels, one spectrum per emit.

Publisher times include ``end()``, which waits until Redis holds every point.
"""

from __future__ import annotations

import itertools
import resource
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import redis

from scanstream import create_session

from .harness import Figure, Stat, flush, in_threads, interleave, open_store

_counter = itertools.count()


def _publish(
    url: str,
    nch: int,
    dtype: str,
    shape: tuple[int, ...],
    npoints: int,
    per_emit: int,
    scalars: list[Any] | None = None,
    active: int | None = None,
    stored: list[float] | None = None,
) -> tuple[float, float]:
    """Publish one scan; return (seconds of the emit loop, seconds until end() returned).

    ``scalars``: emit these, one per call (a step scan); default Python floats. ``active``:
    emit into that many of the ``nch`` channels only (the others stay idle). ``stored``: flush
    before ``end()`` and append the seconds until then (every point acknowledged by Redis).
    """
    store = open_store(url)
    try:
        session = create_session(f"bench{next(_counter)}", store=store)
        return _publish_in(session, nch, dtype, shape, npoints, per_emit, scalars, active, stored)
    finally:
        store.close()


def _publish_in(
    session: Any,
    nch: int,
    dtype: str,
    shape: tuple[int, ...],
    npoints: int,
    per_emit: int,
    scalars: list[Any] | None = None,
    active: int | None = None,
    stored: list[float] | None = None,
) -> tuple[float, float]:
    """:func:`_publish` in an open ``session`` (its store stays open)."""
    scan = session.create_scan("bench")
    top = scan.create_container("timer")
    channels = [top.create_channel(f"c{i}", dtype=dtype, shape=shape) for i in range(nch)]
    scan.prepared()
    channels = channels[:active]
    if per_emit == 1 and shape == ():
        values = scalars if scalars is not None else [float(i) for i in range(npoints)]
        t0 = time.perf_counter()
        for v in values:
            for ch in channels:
                ch.emit(v)
    else:
        block = np.arange(per_emit * int(np.prod(shape) or 1), dtype=dtype).reshape(
            (per_emit,) + shape
        )
        if per_emit == 1:
            block = block[0]
        t0 = time.perf_counter()
        for _ in range(npoints // per_emit):
            for ch in channels:
                ch.emit(block)
    t1 = time.perf_counter()
    if stored is not None:
        scan.flush()
        stored.append(time.perf_counter() - t0)
    scan.end()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t0


def _raw_xadd(url: str, nch: int, point_bytes: int, npoints: int, per_entry: int) -> float:
    """Raw redis-py: pipelined XADD of entries of ``per_entry`` points; return seconds."""
    client = redis.Redis.from_url(url)
    try:
        keys = [f"raw:{{x}}:data:{i}" for i in range(nch)]
        payload = b"\0" * (point_bytes * per_entry)
        n = b"%d" % per_entry
        # One pipeline round per ~1000 commands, or per round of channels if larger.
        per_round = max(1, 1000 // nch)
        t0 = time.perf_counter()
        pipe = client.pipeline(transaction=False)
        queued = 0
        for first in range(0, npoints, per_entry):
            for key in keys:
                pipe.xadd(key, {b"n": n, b"d": payload}, id=f"{first}-1")
            queued += 1
            if queued >= per_round:
                pipe.execute()
                queued = 0
        pipe.execute()
        return time.perf_counter() - t0
    finally:
        client.close()


def run(url: str, quick: bool) -> list[Figure]:
    """Measure (1a), (1b), (1c); return figures."""
    reps = 3 if quick else 7
    figures = []

    # (a) 100 channels, 1000-point batches.
    nch, npts = 100, (20_000 if quick else 100_000)
    total = nch * npts
    pub, raw = interleave(
        [
            lambda: total / _publish(url, nch, "float64", (), npts, 1000)[1],
            lambda: total / _raw_xadd(url, nch, 8, npts, 1000),
        ],
        reps,
        lambda: flush(url),
    )
    fig = Figure(
        "1a publish 0D float64, 100 ch, 1000-point batches",
        Stat.of(pub, "points/s"),
        Stat.of(raw, "points/s"),
        ">= 0.7 x baseline",
    )
    fig.met = fig.ratio is not None and fig.ratio >= 0.7
    figures.append(fig)

    # (b) 10 channels, one point per emit call.
    nch, npts = 10, (5_000 if quick else 50_000)
    total = nch * npts

    def one_b() -> tuple[float, float]:
        t_loop, t_end = _publish(url, nch, "float64", (), npts, 1)
        return total / t_loop, total / t_end

    rates, raw = interleave(
        [one_b, lambda: total / _raw_xadd(url, nch, 8, npts, 1)], reps, lambda: flush(url)
    )
    loop, e2e = [r[0] for r in rates], [r[1] for r in rates]
    fig = Figure(
        "1b emit 0D float64, 10 ch, 1 point per emit",
        Stat.of(loop, "emit calls/s"),
        Stat.of(raw, "points/s"),
        ">= 165k emit calls/s",
        extra={"end_to_end": Stat.of(e2e, "points/s").__dict__},
    )
    fig.met = fig.value.median >= 165_000
    figures.append(fig)

    figures += numpy_scalars(url, quick)

    figures.append(spectra(url, quick))
    figures += many_channels(url, quick)
    figures.append(concurrent_scans(url, quick))
    return figures


def many_channels(url: str, quick: bool) -> list[Figure]:
    """(1e) 1000-point batches into many channels, all active or a few of many.

    Baseline: raw pipelined XADD of the same entries into the active channels only. The
    figure is the rate until every point is stored (``flush()``); ``end()``, which seals
    every stream of the scan (idle ones too), is timed apart in ``extra``.
    """
    reps = 2 if quick else 5
    cases = (
        [(200, 200, 1_000), (1_000, 10, 2_000)]
        if quick
        else [(1_000, 1_000, 20_000), (10_000, 100, 100_000)]
    )
    figures = []
    for nch, active, npts in cases:

        def one(n: int = nch, a: int = active, p: int = npts) -> tuple[float, float]:
            stored: list[float] = []
            t_end = _publish(url, n, "float64", (), p, 1000, active=a, stored=stored)[1]
            return a * p / stored[0], t_end - stored[0]

        pub, raw = interleave(
            [one, lambda a=active, p=npts: a * p / _raw_xadd(url, a, 8, p, 1000)],
            reps,
            lambda: flush(url),
        )
        of = "" if active == nch else f" ({active} active)"
        fig = Figure(
            f"1e publish 0D float64, {nch} ch{of}, 1000-point batches",
            Stat.of([r[0] for r in pub], "points/s"),
            Stat.of(raw, "points/s"),
            ">= 0.9 x raw XADD into the active channels",
            extra={"end_seconds": Stat.of([r[1] for r in pub], "s").__dict__},
        )
        fig.met = fig.ratio is not None and fig.ratio >= 0.9
        figures.append(fig)
    return figures


def spectra(url: str, quick: bool) -> Figure:
    """(1c) 1D spectra of 1024 float32, 10 channels, one spectrum per emit.

    Baseline: the large-entry limit, raw pipelined XADD of the same bytes in entries of 256
    spectra (1 MiB); raw XADD of one spectrum per entry is in ``extra``.
    """
    reps = 3 if quick else 7
    nch, npts = 10, (1_024 if quick else 10_240)
    total = nch * npts
    pub, large, single = interleave(
        [
            lambda: total / _publish(url, nch, "float32", (1024,), npts, 1)[1],
            lambda: total / _raw_xadd(url, nch, 4096, npts, 256),
            lambda: total / _raw_xadd(url, nch, 4096, npts, 1),
        ],
        reps,
        lambda: flush(url),
    )
    fig = Figure(
        "1c publish 1D 1024 float32, 10 ch, 1 spectrum per emit",
        Stat.of(pub, "points/s"),
        Stat.of(large, "points/s"),
        ">= 0.9 x raw XADD of 1 MiB entries",
        extra={"raw_one_spectrum_per_entry": Stat.of(single, "points/s").__dict__},
    )
    fig.met = fig.ratio is not None and fig.ratio >= 0.9
    return fig


def scale_channels(url: str, quick: bool) -> list[dict[str, float]]:
    """(5) Publish rate of 1000-point batches against the number of channels."""
    rows = []
    reps = 2 if quick else 5
    for nch in (10, 100, 1000):
        npts = (2_000 if quick else 20_000) if nch == 1000 else (10_000 if quick else 100_000)
        total = nch * npts
        pub, raw = interleave(
            [
                lambda n=nch, p=npts, t=total: t / _publish(url, n, "float64", (), p, 1000)[1],
                lambda n=nch, p=npts, t=total: t / _raw_xadd(url, n, 8, p, 1000),
            ],
            reps,
            lambda: flush(url),
        )
        p, r = Stat.of(pub, "points/s"), Stat.of(raw, "points/s")
        rows.append(
            {
                "channels": nch,
                "publish_median": p.median,
                "publish_p99": p.p99,
                "raw_median": r.median,
                "ratio": p.median / r.median,
            }
        )
    return rows


#: (1d) the numpy scalar types measured, each into a channel of its own dtype.
SCALAR_DTYPES = ("float64", "float32", "int32", "int64", "uint16", "bool")


def _scalars(dtype: str, npoints: int) -> list[Any]:
    """What ``arr[i]`` gives for an array of ``dtype``: numpy scalars, one per point."""
    values = np.arange(npoints) % 2 if dtype == "bool" else np.arange(npoints) % 1000
    return list(values.astype(dtype))


def numpy_scalars(url: str, quick: bool) -> list[Figure]:
    """(1d) One numpy scalar per emit (10 channels of its dtype) against Python floats.

    The figure is the emit loop's rate with numpy scalars, the baseline the same loop with
    Python floats into float64 channels, interleaved in the same run; the end-to-end rates
    (until ``end()`` returned) are in ``extra``.
    """
    reps = 3 if quick else 7
    nch, npts = 10, (2_000 if quick else 20_000)
    total = nch * npts
    dtypes = SCALAR_DTYPES[:2] if quick else SCALAR_DTYPES
    floats = [float(i % 1000) for i in range(npts)]

    def one(dtype: str, values: list[Any]) -> tuple[float, float]:
        t_loop, t_end = _publish(url, nch, dtype, (), npts, 1, scalars=values)
        return total / t_loop, total / t_end

    runs = [lambda: one("float64", floats)]
    values = {d: _scalars(d, npts) for d in dtypes}
    runs += [lambda d=d: one(d, values[d]) for d in dtypes]
    results = interleave(runs, reps, lambda: flush(url))
    base = results[0]
    figures = []
    for dtype, res in zip(dtypes, results[1:]):
        fig = Figure(
            f"1d emit np.{np.dtype(dtype).type.__name__} into {dtype}, 10 ch, 1 point per emit",
            Stat.of([r[0] for r in res], "emit calls/s"),
            Stat.of([r[0] for r in base], "emit calls/s"),
            ">= 0.77 x Python floats (cost <= 1.3 x)",
            extra={
                "end_to_end": Stat.of([r[1] for r in res], "points/s").__dict__,
                "baseline_end_to_end": Stat.of([r[1] for r in base], "points/s").__dict__,
            },
        )
        fig.met = fig.ratio is not None and fig.ratio >= 1 / 1.3
        figures.append(fig)
    return figures


def _rusage() -> np.ndarray:
    """User s, system s, voluntary and involuntary context switches of this process."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return np.array([r.ru_utime, r.ru_stime, r.ru_nvcsw, r.ru_nivcsw], dtype=float)


def concurrent_scans(url: str, quick: bool, npts: int | None = None) -> Figure:
    """(1f) 16 scans published at once by 16 threads of one process, against one scan.

    Each of the 16 scans has 10 channels fed 1000-point batches; the baseline is one scan of
    160 channels holding the same points, from one thread. The process holds one
    ``DataStore`` (one connection pool), as a real publisher does, opened with the sessions
    before the timing; each scan has its own session. Throughput is points over the wall time
    until every ``end()`` returned, channel creation included; ``extra`` has the process CPU
    of each (user + system) and its voluntary context switches. ``npts`` (points per channel,
    default 50 000) sets how much of the cost is the fixed part of a scan.
    """
    reps = 2 if quick else 5
    nscans, nch = 16, 10
    npts = npts or (5_000 if quick else 50_000)
    total = nscans * nch * npts

    def timed(nsessions: int, publish: Callable[[list[Any]], None]) -> tuple[float, float, float]:
        store = open_store(url)
        try:
            sessions = [
                create_session(f"bench{next(_counter)}", store=store) for _ in range(nsessions)
            ]
            before, t0 = _rusage(), time.perf_counter()
            publish(sessions)
            wall = time.perf_counter() - t0
            used = _rusage() - before
            return total / wall, float(used[0] + used[1]), float(used[2])
        finally:
            store.close()

    def many() -> tuple[float, float, float]:
        def publish(sessions: list[Any]) -> None:
            free = iter(sessions)  # one session per thread (next() on an iterator is atomic)
            in_threads(lambda: _publish_in(next(free), nch, "float64", (), npts, 1000), nscans)

        return timed(nscans, publish)

    def single() -> tuple[float, float, float]:
        return timed(
            1, lambda sessions: _publish_in(sessions[0], nscans * nch, "float64", (), npts, 1000)
        )

    conc, one_scan = interleave([many, single], reps, lambda: flush(url))
    fig = Figure(
        f"1f publish {nscans} concurrent scans x {nch} ch, 1000-point batches",
        Stat.of([r[0] for r in conc], "points/s"),
        Stat.of([r[0] for r in one_scan], "points/s"),
        ">= 0.8 x one scan of the same data, CPU <= 1.3 x",
        extra={
            "cpu_s": Stat.of([r[1] for r in conc], "s").__dict__,
            "baseline_cpu_s": Stat.of([r[1] for r in one_scan], "s").__dict__,
            "voluntary_switches": Stat.of([r[2] for r in conc], "").__dict__,
            "baseline_voluntary_switches": Stat.of([r[2] for r in one_scan], "").__dict__,
        },
    )
    cpu_ratio = fig.extra["cpu_s"]["median"] / fig.extra["baseline_cpu_s"]["median"]
    fig.extra["cpu_ratio"] = cpu_ratio
    fig.met = fig.ratio is not None and fig.ratio >= 0.8 and cpu_ratio <= 1.3
    return fig
