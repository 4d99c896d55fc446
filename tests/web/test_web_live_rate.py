"""A fast, long scan in the browser: drawn at least 10 times a second, with bounded rows and memory.

The figures (draws per second, rows drawn, browser CPU, JS heap) are printed (``-s``); decision
0012 quotes them. ``SCANSTREAM_WEB_BENCH_POINTS=1000000`` runs the same check on a 10^6-point
scan (about 20 s, not for every run).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from scanstream import DataStore, PublishingSession, create_session
from scanstream.web.live import MAX_BUCKETS

pytestmark = pytest.mark.timeout(120)

POINTS = int(os.environ.get("SCANSTREAM_WEB_BENCH_POINTS", "200000"))
# Rows a decimated view may hold: 2 rows per bucket, up to 2 * MAX_BUCKETS buckets, plus the
# points of the bucket being filled (POINTS / MAX_BUCKETS at most).
MAX_ROWS = 4 * MAX_BUCKETS + POINTS // MAX_BUCKETS + 1


@pytest.fixture
def beamline(store: DataStore) -> Iterator[PublishingSession]:
    publishing = create_session("fast_session", store=store, warn_no_writer=False)
    try:
        yield publishing
    finally:
        publishing.close()


def _publish(session: PublishingSession, npoints: int, seconds: float) -> None:
    """A timescan of ``npoints`` points of two channels, published evenly over ``seconds``."""
    block = max(1, npoints // int(seconds * 50))
    info = {"title": f"timescan fast {npoints}", "type": "timescan", "npoints": npoints}
    with session.create_scan("timescan", info) as scan:
        timer = scan.create_container("timer")
        elapsed = timer.create_channel("elapsed_time", dtype="float64", unit="s")
        diode = timer.create_container("diode_controller").create_channel("diode", dtype="float64")
        scan.prepared()
        rng = np.random.default_rng(1)
        start = time.monotonic()
        for first in range(0, npoints, block):
            n = min(block, npoints - first)
            t = (first + np.arange(n)) * 1e-4
            elapsed.emit(t)
            diode.emit(np.sin(t * 3) + rng.normal(0, 0.05, n))
            delay = start + seconds * (first + n) / npoints - time.monotonic()
            if delay > 0:
                time.sleep(delay)


def test_a_long_fast_scan_is_drawn_ten_times_a_second_with_bounded_rows(
    beamline: PublishingSession, start_web: Any, new_page: Any, screenshots: Any
) -> None:
    web = start_web()
    page = new_page()
    cdp = page.context.new_cdp_session(page)
    cdp.send("Performance.enable")
    seconds = max(3.0, POINTS / 50_000)
    thread = threading.Thread(target=_publish, args=(beamline, POINTS, seconds), daemon=True)
    thread.start()
    page.goto(web.url + "#/scan/fast_session/1")
    page.wait_for_function("() => window.scanstreamStats && window.scanstreamStats.points > 0")

    def metrics() -> dict[str, float]:
        return {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}

    before, wall0 = metrics(), time.monotonic()
    renders0 = page.evaluate("window.scanstreamStats.renders")
    rows, heaps = [], []
    while thread.is_alive() and time.monotonic() - wall0 < seconds + 10:
        time.sleep(0.25)
        rows.append(page.evaluate("window.scanstreamStats.rows"))
        heaps.append(metrics()["JSHeapUsedSize"])
    wall = time.monotonic() - wall0
    after = metrics()
    renders = page.evaluate("window.scanstreamStats.renders") - renders0
    print(page.evaluate("JSON.stringify(window.scanstreamStats)"))
    print({k: round(after[k] - before[k], 3) for k in after if k.endswith("Duration")})
    thread.join(timeout=30)
    assert not thread.is_alive()
    page.wait_for_function(
        f"() => +document.getElementById('curve-points').dataset.points === {POINTS}"
    )
    final_rows = page.evaluate("window.scanstreamStats.rows")
    cpu = (after["TaskDuration"] - before["TaskDuration"]) / wall
    print(
        f"\n{POINTS} points in {seconds:.1f} s: {renders / wall:.1f} draws/s, "
        f"browser main-thread CPU {100 * cpu:.0f}%, rows drawn max {max(rows)} "
        f"(final {final_rows}), JS heap max {max(heaps) / 1e6:.1f} MB"
    )
    screenshots(page, "fast-scan")
    assert renders / wall >= 10, f"drawn {renders / wall:.1f} times a second"
    assert max(rows) <= MAX_ROWS and final_rows <= MAX_ROWS
    assert final_rows < POINTS  # decimated, not the raw points
    assert max(heaps) < 200e6
