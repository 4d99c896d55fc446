"""The kill loop in CI: SIGKILL the writer at random instants during a mixed workload.

Ten rounds here (the long one: ``python -m soak.killloop --rounds 200``, figures in
docs/reliability.md). Mixed workload: 0D, 1D spectra, ragged 1D samples, Lima frame files,
aborted scans (:mod:`soak.workload`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from soak import killloop


def _check(report: dict) -> None:
    assert report["kills"] >= 1, report
    assert report["scans"] >= 3, report
    assert report["unreadable_files"] == {}, report
    assert report["segfaults"] == 0, report
    assert report["unsaved"] == [], report
    assert report["problems"] == [], report


@pytest.mark.timeout(120)
def test_ten_random_kills_lose_and_corrupt_nothing(redis_url: str, tmp_path: Path) -> None:
    report = killloop.run(
        redis_url, tmp_path, rounds=10, seed=11, up=(0.4, 1.6), timeout=60, point_time=0.04
    )
    _check(report)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_fifty_random_kills_lose_and_corrupt_nothing(redis_url: str, tmp_path: Path) -> None:
    _check(killloop.run(redis_url, tmp_path, rounds=50, seed=5, up=(0.3, 2.5), timeout=120))
