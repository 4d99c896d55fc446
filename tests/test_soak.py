"""The soak test (``python -m soak``) in short, and the checks it relies on.

The full soak runs 10 minutes (see docs/reliability.md, "Soak test"); here it runs about 20 s
in a subprocess and must pass every check. The other tests show that its checks do fail when
something is wrong: a file that differs from Redis, a subscriber that missed points or an
END_SCAN, memory that grows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # ``soak`` is a package of the project root, like ``benchmarks``
    sys.path.insert(0, str(ROOT))

from soak import runner, verify, workload  # noqa: E402 (needs the path set above)
from soak.publisher import publish_scan  # noqa: E402


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_short_soak_passes_every_check(server_binary: Path, tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    env = dict(os.environ)
    env.pop("SCANSTREAM_REDIS_URL", None)
    proc = subprocess.run(
        # Retention 15 s (the default for 20 s would be 10): a scan checked against Redis after
        # it is saved must still be there when the writer lags behind a burst of short scans.
        [sys.executable, "-m", "soak", "--duration", "30", "--retention", "15", "--json", str(out)],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["ok"] and report["problems"] == [], report["problems"][:20]
    assert report["checks"] == {
        "processes_ok": True,
        "files_exact": True,
        "writers_no_errors": True,
        "subscribers_complete": True,
        "memory_flat": True,
    }
    counts = report["counts"]
    assert counts["scans"] >= 40 and counts["scans_checked"] == counts["scans"], counts
    assert set(counts["scans_by_kind"]) == set(workload.KINDS)
    assert counts["scans_by_state"].get("USER_ABORTED", 0) >= 1
    assert counts["lima_images"] > 0 and counts["points_0d_1d"] > 0
    assert len(counts["subscriber_events"]) == 4 and min(counts["subscriber_events"].values()) > 0
    processes = set(report["memory_mib"])
    assert {f"publisher{i}" for i in range(4)} <= processes
    assert {f"subscriber{i}" for i in range(4)} <= processes
    assert {"writer0", "writer1", "redis used_memory"} <= processes
    assert "OK" in proc.stdout


@pytest.mark.slow
@pytest.mark.timeout(300)
# Pool mode with persistence on: the restart without persistence is tested step by step in
# tests/writer/test_server_reset.py; run the combination by hand with
# `python -m soak.chaos --pool --persistence off` (how much is published before a reset
# depends on the machine's load).
@pytest.mark.parametrize("mode", [["--persistence", "on"], ["--pool", "--persistence", "on"]])
def test_short_chaos_run_passes(server_binary: Path, tmp_path: Path, mode: list[str]) -> None:
    """``python -m soak.chaos`` for 25 s: kills, freezes, a server restart, garbage writes.

    Every scan SAVED holds exactly what was published, every undamaged scan is SAVED, a
    damaged one SAVED (exact) or FAILED with a reason; no traceback in the writers' logs.
    """
    env = dict(os.environ)
    env.pop("SCANSTREAM_REDIS_URL", None)
    proc = subprocess.run(
        [sys.executable, "-m", "soak.chaos", "--duration", "25", "--seed", "7", *mode]
        + ["--keep", str(tmp_path / "chaos")],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    report = json.loads(proc.stdout)
    assert proc.returncode == 0 and report["problems"] == [], report["problems"]
    assert report["scans"] >= 10 and report["damages"] >= 1, report
    assert report["verdicts"].get("SAVED", 0) >= 5, report["verdicts"]
    assert not any(report["writers_died_alone"].values()), report["writers_died_alone"]


def test_plan_is_deterministic_and_mixed() -> None:
    plans = [workload.plan(k, i) for k in range(4) for i in range(36)]
    assert {p.kind for p in plans} == set(workload.KINDS)
    assert any(p.abort_at for p in plans)
    p = workload.plan(2, 5)
    for name in p.channels():
        a, b = workload.expected_array(p, name), workload.expected_array(p, name)
        assert all(x.tobytes() == y.tobytes() for x, y in zip(a, b, strict=True))


def test_file_check_catches_a_value_that_differs(session, store, tmp_path: Path) -> None:
    from scanstream.admin import delete_scans
    from scanstream.writer import WriterService, saved_scans

    name = session.name
    records = []
    for index in range(4):  # the 4 kinds (session index 0): step, mca, sampling, lima
        p = workload.plan(0, index)
        number, state = publish_scan(session, name, p, tmp_path, 0.0)
        records.append(
            {
                "number": number,
                "session_index": 0,
                "index": index,
                "kind": p.kind,
                "state": state,
                "file": p.filename(name),
            }
        )
    with WriterService([name], root=tmp_path, store=store, flush_period=0.05):
        deadline = time.monotonic() + 30
        while saved_scans(name, store=store) != {r["number"] for r in records}:
            assert time.monotonic() < deadline, "the writer did not save the scans"
            time.sleep(0.05)
    assert verify.check_file(store, name, records, tmp_path) == []
    with h5py.File(tmp_path / records[0]["file"], "r+") as f:
        f[f"{records[0]['number']}.1/measurement/diode"][3] += 1.0
    problems = verify.check_file(store, name, records, tmp_path)
    assert problems and "diode: file differs from Redis" in problems[0]
    # Expired from Redis before the check: checked against the published plan alone.
    delete_scans(store, name)  # every scan is saved: all go
    problems = verify.check_file(store, name, records, tmp_path)
    assert len(problems) == 1 and "diode: file differs from the published values" in problems[0]
    with h5py.File(tmp_path / records[0]["file"], "r+") as f:
        f[f"{records[0]['number']}.1/measurement/diode"][3] -= 1.0
    assert verify.check_file(store, name, records, tmp_path) == []


def test_file_check_of_two_top_masters_and_sequences(session, store, tmp_path: Path) -> None:
    """The kill loop's extra kinds: each top master in its entry, sub-scans linked."""
    from scanstream.writer import WriterService, saved_scans

    name = session.name
    records: list[dict] = []

    def record(p: workload.ScanPlan, number: int, state: str, **extra: object) -> None:
        records.append(
            {"number": number, "session_index": 0, "index": p.index, "sub": p.sub}
            | {"kind": p.kind, "state": state, "file": p.filename(name), **extra}
        )

    subs: list[int] = []

    def sub_ended(sub: workload.ScanPlan, number: int, state: str) -> None:
        subs.append(number)
        record(sub, number, state)

    for kind in ("two_masters", "sequence"):
        p = workload.plan_of_kind(0, 4, kind)
        number, state = publish_scan(session, name, p, tmp_path, 0.0, sub_ended)
        record(p, number, state, subs=list(subs) if kind == "sequence" else [])
    assert [r["kind"] for r in records] == ["two_masters", "step", "step", "sequence"]
    with WriterService([name], root=tmp_path, store=store, flush_period=0.05):
        deadline = time.monotonic() + 30
        while saved_scans(name, store=store) != {r["number"] for r in records}:
            assert time.monotonic() < deadline, "the writer did not save the scans"
            time.sleep(0.05)
    assert verify.check_file(store, name, records, tmp_path) == []
    two, group = records[0]["number"], records[3]["number"]
    with h5py.File(tmp_path / records[0]["file"], "r+") as f:
        assert list(f[f"{two}.1/measurement"]) == ["diode1"]  # the 2-point top master
        assert f[f"{two}.1/measurement/diode1"].shape == (2,)
        f[f"{two}.1/measurement/diode1"][1] += 1.0
        del f[f"{group}.1/scans/{records[2]['number']}.1"]
    problems = verify.check_file(store, name, records, tmp_path)
    assert any("diode1: file differs from Redis" in p for p in problems), problems
    assert any("scans/" in p and "missing" in p for p in problems), problems


def test_subscriber_check_catches_missing_points_and_ends() -> None:
    records = {
        "s_0": [
            {"number": 1, "state": "DONE", "points": {"diode": 10}},
            {"number": 2, "state": "USER_ABORTED", "points": {"diode": 5}},
        ]
    }
    good = {
        ("s_0", 1): {
            "scan": [{"points": {"diode": 10}, "walk_end": "DONE", "errors": []}],
            "end": ["DONE"],
            "fatal": [],
        },
        ("s_0", 2): {
            "scan": [{"points": {"diode": 5}, "walk_end": "USER_ABORTED", "errors": []}],
            "end": ["USER_ABORTED"],
            "fatal": [],
        },
    }
    assert runner.subscriber_problems("sub", good, records) == []
    assert runner.subscriber_complete(good, records)
    bad = json.loads(json.dumps({"|".join(map(str, k)): v for k, v in good.items()}))
    bad = {(k.split("|")[0], int(k.split("|")[1])): v for k, v in bad.items()}
    bad[("s_0", 1)]["scan"][0]["points"]["diode"] = 9
    bad[("s_0", 2)]["end"] = []
    problems = runner.subscriber_problems("sub", bad, records)
    assert any("points" in p for p in problems) and any("END_SCAN" in p for p in problems)
    assert not runner.subscriber_complete(bad, records)


def test_memory_verdict_flags_growth() -> None:
    samples = runner.Samples()
    for t in range(100):
        samples.times.append(float(t))
        samples.rss["flat"].append(50 * runner.MIB + (t % 3) * 100_000)
        samples.rss["leaky"].append(50 * runner.MIB + t * runner.MIB // 4)
        samples.redis_used.append(4 * runner.MIB)
    figures = runner.memory_figures(
        samples,
        0.0,
        99.0,
        warmup=10,
        tol_mib=8,
        tol_pct=10,
        redis_tol_mib=8,
        redis_tol_pct=25,
        exclude=set(),
    )
    assert figures["flat"]["flat"] and figures["redis used_memory"]["flat"]
    assert not figures["leaky"]["flat"] and figures["leaky"]["slope_mib_per_h"] > 800
