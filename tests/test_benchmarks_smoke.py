"""``python -m benchmarks --quick --json PATH`` runs and writes every figure (no timing checks)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_quick_benchmarks_write_their_figures(server_binary: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = dict(os.environ)
    env.pop("SCANSTREAM_REDIS_URL", None)
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--json", str(out)],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| figure |" in proc.stdout
    result = json.loads(out.read_text())
    names = [f["name"] for f in result["figures"]]
    for prefix in (
        "1a ",
        "1b ",
        "1c ",
        "1d ",
        "1e ",
        "2 ",
        "2b ",
        "2c ",
        "3a ",
        "3b ",
        "3c ",
        "3d ",
        "4 ",
    ):
        assert any(n.startswith(prefix) for n in names), (prefix, names)
    for figure in result["figures"]:
        # A lag figure may rightly be 0 (the writer kept up): finite and not negative.
        assert 0 <= figure["value"]["median"] < math.inf and figure["value"]["runs"] >= 1, figure
        assert figure["baseline"] is not None, figure
        assert 0 <= figure["baseline"]["median"] < math.inf, figure
    assert [r["channels"] for r in result["scale_channels"]] == [10, 100, 1000]
    assert result["scale_latency"] and all(
        r["all_points_received"] for r in result["scale_latency"]
    )
    curves = result["curves"]
    assert [r["channels"] for r in curves["channels"]] == [1, 10, 100]
    assert [r["scans"] for r in curves["concurrent_scans"]] == [1, 4]
    assert all(r["all_points_received"] for r in curves["subscribers"])
    assert [r["points"] for r in curves["scan_length"]] == [10**3, 10**4, 10**5]
    assert all(0 < r["walk_s"]["median"] < math.inf for r in curves["scan_length"])
    assert result["machine"]["cores"] >= 1
