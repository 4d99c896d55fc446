"""The kill loop: SIGKILL the writer at random instants during a mixed workload, restart it.

``python -m soak.killloop [--rounds 200] [--seed 1] [--redis-url URL] [--keep DIR]``

A publisher process (:mod:`soak.publisher`: 0D, 1D spectra, ragged 1D samples and Lima
frame files, some scans aborted) publishes scans back to back into one session while a
``scanstream writer`` process is started, left running for a random time, and SIGKILLed
(its whole process group), ``--rounds`` times. Then a last writer runs until every scan is
saved, and the verdict is made: every HDF5 file under the root opens and every object in it
can be read (0 unreadable files), no writer died of a signal of its own (0 segfaults), and
every scan is exact (bit for bit against Redis and the plan, :mod:`soak.verify`).
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
from pathlib import Path
from typing import Any

import h5py

from scanstream import DataStore
from scanstream._transport.server import EmbeddedServer
from scanstream.writer import saved_scans

from . import verify

SESSION = "killloop"
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


def run(
    url: str,
    root: Path,
    *,
    rounds: int,
    seed: int,
    up: tuple[float, float],
    timeout: float,
    point_time: float = 0.01,
) -> dict[str, Any]:
    """Run the loop against ``url`` writing under ``root``; return the figures."""
    rng = random.Random(seed)
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    data = root / "data"
    manifest = root / "manifest.jsonl"
    publisher_log = open(logs / "publisher.log", "wb")
    publisher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "soak.publisher",
            url,
            SESSION,
            "0",
            str(data),
            str(manifest),
            "--until",
            str(time.time() + 24 * 3600),
            "--point-time",
            str(point_time),
            "--retention",
            "7200",
        ],
        stdout=publisher_log,
        stderr=subprocess.STDOUT,
        env=_env(),
    )
    died_alone: list[int] = []
    started = time.monotonic()
    try:
        for index in range(rounds):
            with open(logs / f"writer{index:04d}.log", "wb") as log:
                writer = _writer(url, data, log)
                time.sleep(rng.uniform(*up))
                code = _kill_group(writer)
            if code is not None:
                died_alone.append(code)
    finally:
        publisher.send_signal(signal.SIGTERM)
        publisher.wait(timeout=120)
        publisher_log.close()
    records = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    scans = [r for r in records if "number" in r]
    store = DataStore(url)
    numbers = {r["number"] for r in scans}
    with open(logs / "writer-final.log", "wb") as log:
        final = _writer(url, data, log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not numbers <= saved_scans(SESSION, store=store):
            time.sleep(0.5)
        final.send_signal(signal.SIGTERM)
        final_code = final.wait(timeout=60)
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
    store.close()
    return {
        "rounds": rounds,
        "kills": rounds - len(died_alone),
        "seed": seed,
        "seconds": round(time.monotonic() - started, 1),
        "scans": len(scans),
        "lima_scans": sum(r["kind"] == "lima" for r in scans),
        "unsaved": unsaved,
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
