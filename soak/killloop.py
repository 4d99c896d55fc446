"""The kill loop: SIGKILL the writer at random instants during a mixed workload, restart it.

``python -m soak.killloop [--rounds 200] [--seed 1] [--redis-url URL] [--keep DIR]``

A publisher process (:mod:`soak.publisher`, kinds :data:`soak.workload.KILL_KINDS`: 0D, 1D
spectra, ragged 1D samples, Lima frame files, two top masters of 2 and N points, sequences of
two sub-scans, one scan in 9 aborted) publishes scans back to back into one session while a
``scanstream writer`` process is started and SIGKILLed (its whole process group: service and
worker processes), ``--rounds`` times. Each round is one of:

- ``random``: killed after a random life in [``--min-up``, ``--max-up``] s;
- ``file``: killed 0 to 0.1 s after it recorded WRITING for a scan (its file just created);
- ``lima``: killed 0 to 1 s after it recorded WRITING for a scan with a Lima detector;
- ``freeze``: after a random life, SIGSTOPped for 1 to 9 s (the claim lasts 5 s) while a
  second writer is started for the session; then SIGCONT, both run on a moment, both are
  killed. The frozen writer must find its claim lapsed and stop without touching its files.

A ``file`` or ``lima`` round whose event does not come within a few writer lives is a
``random`` kill (counted as such). Then a last writer runs until every scan is saved (bounded
by ``--timeout``), and the verdict is made: every HDF5 file under the root opens and every
object in it can be read (0 unreadable files), no writer died of a signal of its own
(0 segfaults), and every scan is exact (bit for bit against Redis and the plan,
:mod:`soak.verify`). Scans not saved within the bound are reported with the verdict Redis
holds for them (still there and not FAILED: the writer was behind, nothing is lost).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py

from scanstream import DataStore, get_session_node
from scanstream._protocol import entries
from scanstream._transport.server import EmbeddedServer
from scanstream.exceptions import ScanstreamError
from scanstream.writer import saved_scans

from . import verify, workload

SESSION = "killloop"
#: Share of the rounds of each kind (the rest are ``random``).
ROUND_SHARES = {"file": 0.15, "lima": 0.15, "freeze": 0.1}
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(PROJECT_ROOT / "src")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (src, str(PROJECT_ROOT), env.get("PYTHONPATH")) if p
    )
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _writer(url: str, root: Path, log: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "scanstream",
            "--redis-url",
            url,
            "writer",
            SESSION,
            "--root",
            str(root),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=_env(),
        start_new_session=True,  # its own group: the kill takes its workers with it
    )


def _kill_group(proc: subprocess.Popen[bytes]) -> int | None:
    """SIGKILL the process group; return the exit code if it had died by itself first."""
    died = proc.poll()
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
    return died


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _recent_writing(store: DataStore, since: float, lima: bool) -> bool:
    """Whether one of the latest scans got WRITING after ``since`` (with a Lima detector)."""
    redis = store.redis
    session = get_session_node(SESSION, store=store)
    recent = redis.xrevrange(store.keys.session_scans(SESSION), count=4)
    for _, fields in recent:
        number = entries.parse_new_scan(fields)
        if number is None:
            continue
        try:
            scan = session.get_scan(number)
            verdict = scan.saving
        except ScanstreamError:
            continue
        if verdict.state.name != "WRITING" or (verdict.time or 0.0) < since:
            continue
        kind = (scan.info.get("soak") or {}).get("kind")
        if not lima or kind in ("lima", "two_masters"):
            return True
    return False


def _wait_writing(store: DataStore, since: float, lima: bool, bound: float) -> bool:
    """Poll until a scan gets WRITING after ``since`` (see :func:`_recent_writing`)."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if _recent_writing(store, since, lima):
            return True
        time.sleep(0.02)
    return False


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _unsaved_verdicts(store: DataStore, numbers: list[int]) -> dict[str, int]:
    """How the scans not saved stand in Redis: verdict -> count (GONE: not in Redis any more)."""
    out: dict[str, int] = defaultdict(int)
    session = get_session_node(SESSION, store=store)
    for number in numbers:
        try:
            out[session.get_scan(number).saving.state.name] += 1
        except ScanstreamError:
            out["GONE"] += 1
    return dict(out)


def readable(path: Path) -> str | None:
    """None when every object of the HDF5 file ``path`` can be opened and read; else why not."""
    problems: list[str] = []
    try:
        with h5py.File(path, "r", locking=False) as file:

            def visit(name: str, obj: Any) -> None:
                if isinstance(obj, h5py.Dataset) and obj.size and not obj.is_virtual:
                    obj[(0,) * obj.ndim] if obj.ndim else obj[()]

            file.visititems(visit)
    except Exception as exc:  # any failure is the finding
        problems.append(f"{type(exc).__name__}: {exc}")
    return "; ".join(problems) or None


def publisher_argv(
    url: str,
    session: str,
    data: Path,
    manifest: Path,
    kinds: Sequence[str],
    point_time: float,
    *extra: str,
) -> list[str]:
    """The command of a publisher into ``session`` (session index 0) that runs until it is
    killed (a day at most)."""
    return [
        sys.executable,
        "-m",
        "soak.publisher",
        url,
        session,
        "0",
        str(data),
        str(manifest),
        "--until",
        str(time.time() + 24 * 3600),
        "--point-time",
        str(point_time),
        "--retention",
        "7200",
        "--kinds",
        ",".join(kinds),
        *extra,
    ]


def run(
    url: str,
    root: Path,
    *,
    rounds: int,
    seed: int,
    up: tuple[float, float],
    timeout: float,
    point_time: float = 0.01,
    kinds: tuple[str, ...] = workload.KILL_KINDS,
    modes: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Run the loop against ``url`` writing under ``root``; return the figures.

    ``modes`` gives the kind of each round in turn (cycled); default: drawn at random with
    :data:`ROUND_SHARES`.
    """
    rng = random.Random(seed)
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    data = root / "data"
    manifest = root / "manifest.jsonl"
    publisher_log = open(logs / "publisher.log", "wb")
    publisher = subprocess.Popen(
        publisher_argv(url, SESSION, data, manifest, kinds, point_time),
        stdout=publisher_log,
        stderr=subprocess.STDOUT,
        env=_env(),
    )
    died_alone: list[int] = []
    by_mode: dict[str, int] = defaultdict(int)
    store = DataStore(url)
    load_before = os.getloadavg()
    started = time.monotonic()
    try:
        for index in range(rounds):
            mode = modes[index % len(modes)] if modes else _draw_mode(rng)
            mode, codes = _round(url, data, logs, index, mode, rng, up, store)
            by_mode[mode] += 1
            died_alone += [code for code in codes if code is not None]
    finally:
        publisher.send_signal(signal.SIGTERM)
        try:
            publisher.wait(timeout=120)
        except subprocess.TimeoutExpired:
            publisher.kill()
            publisher.wait(timeout=30)
        publisher_log.close()
    load_during = os.getloadavg()
    records = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    scans = [r for r in records if "number" in r]
    numbers = {r["number"] for r in scans}
    with open(logs / "writer-final.log", "wb") as log:
        final = _writer(url, data, log)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and not numbers <= saved_scans(SESSION, store=store):
                time.sleep(0.5)
            final.send_signal(signal.SIGTERM)
            final_code = final.wait(timeout=60)
        finally:
            _kill_group(final)
    unsaved = sorted(numbers - saved_scans(SESSION, store=store))
    by_file: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in scans:
        by_file[record["file"]].append(record)
    problems: list[str] = []
    for file_records in by_file.values():
        problems += verify.check_file(store, SESSION, file_records, data)
    unreadable = {}
    for path in sorted(data.rglob("*.h5")):
        if "lima" in path.relative_to(data).parts:
            continue
        why = readable(path)
        if why is not None:
            unreadable[str(path.relative_to(data))] = why
    bad_scans = {p.split(":")[0] for p in problems}
    unsaved_verdicts = _unsaved_verdicts(store, unsaved)
    store.close()
    kinds: dict[str, int] = defaultdict(int)
    for record in scans:
        kinds[record["kind"] if not record.get("sub") else "sequence sub-scan"] += 1
    return {
        "rounds": rounds,
        "kills": rounds + by_mode["freeze"] - len(died_alone),
        "rounds_by_mode": dict(by_mode),
        "seed": seed,
        "seconds": round(time.monotonic() - started, 1),
        "load_average_start": [round(x, 1) for x in load_before],
        "load_average_end_of_kills": [round(x, 1) for x in load_during],
        "scans": len(scans),
        "scans_by_kind": dict(kinds),
        "lima_scans": sum(r["kind"] in ("lima", "two_masters") for r in scans),
        "scans_exact": len(scans) - len(unsaved) - (len(bad_scans) if problems else 0),
        "unsaved": unsaved,
        "unsaved_verdicts_in_redis": unsaved_verdicts,
        "problems": problems,
        "scans_not_exact": len(bad_scans) if problems else 0,
        "unreadable_files": unreadable,
        "writers_died_alone": died_alone,
        "segfaults": sum(code == -signal.SIGSEGV for code in died_alone)
        + (final_code == -signal.SIGSEGV),
        "final_writer_exit": final_code,
        "damaged_session_files": sorted(
            str(p.relative_to(data)) for p in data.rglob("*.damaged-*")
        ),
    }


def _round(
    url: str,
    data: Path,
    logs: Path,
    index: int,
    mode: str,
    rng: random.Random,
    up: tuple[float, float],
    store: DataStore,
) -> tuple[str, list[int | None]]:
    """One writer's life and death; return the mode it had and the exit codes of those that
    died by themselves first (None: killed). Every writer started is killed on the way out."""
    writer = standby = None
    codes: list[int | None] = []
    with open(logs / f"writer{index:04d}.log", "wb") as log:
        try:
            born = time.time()
            writer = _writer(url, data, log)
            if mode in ("file", "lima"):
                bound = 3 * up[1] + (10.0 if mode == "lima" else 0.0)
                if _wait_writing(store, born, mode == "lima", bound):
                    time.sleep(rng.uniform(0.0, 0.1 if mode == "file" else 1.0))
                else:
                    mode = "random"
            else:
                time.sleep(rng.uniform(*up))
            if mode == "freeze":
                _signal_group(writer, signal.SIGSTOP)
                with open(logs / f"writer{index:04d}-standby.log", "wb") as standby_log:
                    standby = _writer(url, data, standby_log)
                time.sleep(rng.uniform(1.0, 9.0))
                _signal_group(writer, signal.SIGCONT)
                time.sleep(rng.uniform(0.5, 2.0))
        finally:
            for proc in (writer, standby):
                if proc is not None:
                    codes.append(_kill_group(proc))
    return mode, codes


def _draw_mode(rng: random.Random) -> str:
    draw = rng.random()
    for mode, share in ROUND_SHARES.items():
        if draw < share:
            return mode
        draw -= share
    return "random"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m soak.killloop")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--min-up", type=float, default=0.5, help="shortest life of a writer (s)")
    parser.add_argument("--max-up", type=float, default=2.5, help="longest life of a writer (s)")
    parser.add_argument("--redis-url", default=None, help="default: a private server")
    parser.add_argument("--keep", type=Path, default=None, help="work directory to keep")
    parser.add_argument("--timeout", type=float, default=300.0, help="final catch-up bound (s)")
    parser.add_argument("--point-time", type=float, default=0.01, help="seconds per point")
    args = parser.parse_args(argv)
    # SIGTERM (kill PID) ends the loop as Ctrl-C does: writers, publisher and server stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    work = args.keep or Path(tempfile.mkdtemp(prefix="scanstream-killloop-"))
    server = None
    url = args.redis_url
    if url is None:
        server = EmbeddedServer(work / "redis", port=_free_port())
        server.start(timeout=10)
        url = server.url
    try:
        report = run(
            url,
            work,
            rounds=args.rounds,
            seed=args.seed,
            up=(args.min_up, args.max_up),
            timeout=args.timeout,
            point_time=args.point_time,
        )
    finally:
        if server is not None:
            server.stop()
    print(json.dumps(report, indent=2))
    ok = not (report["problems"] or report["unreadable_files"] or report["unsaved"])
    ok = ok and report["segfaults"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
