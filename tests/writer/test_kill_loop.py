"""The kill loop in CI: SIGKILL the writer at random instants during a mixed workload.

Ten rounds here (the long one: ``python -m soak.killloop --rounds 200``, figures in
docs/reliability.md). Mixed workload: 0D, 1D spectra, ragged 1D samples, Lima frame files,
two top masters, sequences with their sub-scans, aborted scans (:mod:`soak.workload`); kills
at random instants, just after a scan's file is created, in the first second of a Lima scan,
and a writer frozen (SIGSTOP) while a second one takes over.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from soak import killloop


def _check(report: dict) -> None:
    assert report["kills"] >= 1, report
    assert report["scans_exact"] == report["scans"], report
    assert report["scans"] >= 3, report
    assert report["unreadable_files"] == {}, report
    assert report["segfaults"] == 0, report
    assert report["unsaved"] == [], report
    assert report["problems"] == [], report


@pytest.mark.timeout(120)
def test_ten_random_kills_lose_and_corrupt_nothing(redis_url: str, tmp_path: Path) -> None:
    report = killloop.run(
        redis_url,
        tmp_path,
        rounds=10,
        seed=11,
        up=(0.4, 1.6),
        timeout=60,
        point_time=0.04,
        modes=("file", "lima", "random", "freeze", "random", "file", "lima", "random"),
    )
    _check(report)
    assert {"lima", "two_masters", "sequence", "sequence sub-scan"} <= set(report["scans_by_kind"])
    assert report["rounds_by_mode"].get("freeze") == 1, report
    # A targeted round whose event did not come in time is a random kill: most must have come.
    assert report["rounds_by_mode"].get("file", 0) + report["rounds_by_mode"].get("lima", 0) >= 2


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_fifty_random_kills_lose_and_corrupt_nothing(redis_url: str, tmp_path: Path) -> None:
    _check(killloop.run(redis_url, tmp_path, rounds=50, seed=5, up=(0.3, 2.5), timeout=120))
