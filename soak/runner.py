"""Orchestration of the soak: processes, memory sampling, incremental file checks, verdict.

Timeline of a run of ``--duration T`` seconds:

1. a private server starts (EmbeddedServer on a free 127.0.0.1 port, in a temp dir), unless
   ``--redis-url`` is given; 4 sessions are created;
2. 2 writer processes (``python -m scanstream writer``, 2 sessions each) and 4 subscriber
   processes (``python -m soak.subscriber``, all sessions) start, then 4 publisher processes
   (``python -m soak.publisher``, one session each) publish scans back to back for T seconds;
   ended scans expire from Redis ``--retention`` seconds after their end;
3. meanwhile the RSS (VmRSS) of every process and Redis ``used_memory`` are sampled, and each
   dataset file is checked against Redis and the plan as soon as the writer has saved all its
   scans (before they expire);
4. at the end the publishers have stopped; the runner waits for the writers to save and the
   subscribers to see everything, stops them (SIGTERM), and gives the verdict.

Memory is "flat" for a process when the median of its samples in the last third of the
publishing time is at most ``max(--rss-tolerance-mib, --rss-tolerance-pct of it)`` above the
median in the first third after the warm-up (the first ``--warmup`` seconds, at least the
retention time, are excluded: Redis fills up to its steady state then).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from benchmarks.harness import machine
from scanstream import DataStore, Settings, create_session
from scanstream._transport.server import EmbeddedServer
from scanstream.writer import saved_scans, writer_status

from . import verify

NSESSIONS = 4
NWRITERS = 2
NSUBSCRIBERS = 4
MIB = 1024 * 1024
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Interrupted(Exception):
    """SIGTERM or SIGINT received by the runner."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rss_bytes(pid: int) -> int | None:
    """VmRSS of a process, in bytes; None when it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


@dataclass
class Child:
    """One child process, its role and log."""

    name: str
    role: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


@dataclass
class Samples:
    """RSS samples per process name and Redis used_memory, with their times (monotonic)."""

    times: list[float] = field(default_factory=list)
    rss: dict[str, list[int | None]] = field(default_factory=lambda: defaultdict(list))
    redis_used: list[int | None] = field(default_factory=list)


class Sampler(threading.Thread):
    """Samples every ``period`` seconds until stopped."""

    def __init__(self, pids: dict[str, int], store: DataStore, period: float) -> None:
        super().__init__(name="soak-sampler", daemon=True)
        self.pids, self.store, self.period = pids, store, period
        self.samples = Samples()
        self.stop_event = threading.Event()
        self.lock = threading.Lock()

    def sample(self) -> None:
        try:
            used: int | None = int(self.store.redis.info("memory")["used_memory"])
        except (redis.RedisError, KeyError, ValueError):
            used = None
        with self.lock:
            self.samples.times.append(time.monotonic())
            for name, pid in self.pids.items():
                self.samples.rss[name].append(rss_bytes(pid))
            self.samples.redis_used.append(used)

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.sample()
            self.stop_event.wait(self.period)


class Verifier(threading.Thread):
    """Checks each dataset file as soon as every scan in it is saved (before they expire).

    Reads the publishers' manifests (JSON lines); a file is complete when its session has
    published a scan of a later file, or has finished.
    """

    def __init__(
        self,
        store: DataStore,
        sessions: list[str],
        manifests: dict[str, Path],
        root: Path,
        save_timeout: float,
    ) -> None:
        super().__init__(name="soak-verifier", daemon=True)
        self.store, self.sessions, self.manifests, self.root = store, sessions, manifests, root
        self.save_timeout = save_timeout
        self.offsets = dict.fromkeys(sessions, 0)
        self.partial = dict.fromkeys(sessions, b"")
        self.pending: dict[str, list[list[dict[str, Any]]]] = {s: [] for s in sessions}
        self.finished: dict[str, int | None] = dict.fromkeys(sessions)
        self.records: dict[str, list[dict[str, Any]]] = {s: [] for s in sessions}
        self.problems: list[str] = []
        self.files_checked = 0
        self.scans_checked = 0
        self.check_seconds = 0.0
        self.max_save_delay = 0.0
        self.stop_event = threading.Event()

    def _read_manifest(self, session: str) -> None:
        path = self.manifests[session]
        with contextlib.suppress(FileNotFoundError), open(path, "rb") as f:
            f.seek(self.offsets[session])
            data = f.read()
            self.offsets[session] += len(data)
            data = self.partial[session] + data
            *lines, self.partial[session] = data.split(b"\n")
            for line in lines:
                record = json.loads(line)
                if record.get("finished"):
                    self.finished[session] = record["scans"]
                    continue
                self.records[session].append(record)
                groups = self.pending[session]
                if groups and groups[-1][0]["file"] == record["file"]:
                    groups[-1].append(record)
                else:
                    groups.append([record])

    def done(self) -> bool:
        return all(self.finished[s] is not None and not self.pending[s] for s in self.sessions)

    def step(self) -> None:
        for session in self.sessions:
            self._read_manifest(session)
            groups = self.pending[session]
            while groups:
                group = groups[0]
                complete = len(groups) > 1 or self.finished[session] is not None
                if not complete:
                    break
                numbers = {r["number"] for r in group}
                last_end = max(r["end"] for r in group)
                if not numbers <= saved_scans(session, store=self.store):
                    if time.time() - last_end > self.save_timeout:
                        self.problems.append(
                            f"{session}: scans {sorted(numbers)} of {group[0]['file']} not saved "
                            f"{self.save_timeout:.0f} s after their end"
                        )
                        groups.pop(0)
                        continue
                    break
                self.max_save_delay = max(self.max_save_delay, time.time() - last_end)
                started = time.monotonic()
                self.problems += verify.check_file(self.store, session, group, self.root)
                self.check_seconds += time.monotonic() - started
                self.files_checked += 1
                self.scans_checked += len(group)
                groups.pop(0)

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.step()
            except Exception as exc:
                self.problems.append(f"verifier: {type(exc).__name__}: {exc}")
                return
            if self.done():
                return
            self.stop_event.wait(0.25)


# -------------------------------------------------------------------- subscriber results


def read_subscriber(path: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """The records of one subscriber, by (session, scan number): ``scan`` and ``end`` lists."""
    out: dict[tuple[str, int], dict[str, Any]] = defaultdict(
        lambda: {"scan": [], "end": [], "fatal": []}
    )
    with contextlib.suppress(FileNotFoundError), open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break  # being written
            record = json.loads(line)
            if "fatal" in record:
                out[(record["session"], -1)]["fatal"].append(record["fatal"])
            elif "scan" in record:
                out[(record["session"], record["number"])]["scan"].append(record["scan"])
            else:
                out[(record["session"], record["number"])]["end"].append(record["end"])
    return out


def subscriber_problems(
    name: str, seen: dict[tuple[str, int], dict[str, Any]], records: dict[str, list[dict[str, Any]]]
) -> list[str]:
    """What a subscriber missed or got wrong, compared with the publishers' manifests."""
    problems = []
    published = set()
    for session, recs in records.items():
        for r in recs:
            key = (session, r["number"])
            published.add(key)
            got = seen.get(key)
            where = f"{name}: {session} scan {r['number']}"
            if got is None or not got["scan"]:
                problems.append(f"{where}: scan never walked")
                continue
            if len(got["scan"]) != 1 or len(got["end"]) != 1:
                problems.append(
                    f"{where}: walked {len(got['scan'])} times, "
                    f"{len(got['end'])} END_SCAN in the session walk"
                )
            scan = got["scan"][0]
            if scan.get("errors"):
                problems.append(f"{where}: {scan['errors'][:3]}")
            if scan.get("points") != r["points"]:
                problems.append(f"{where}: points {scan.get('points')}, published {r['points']}")
            if scan.get("walk_end") != r["state"]:
                problems.append(
                    f"{where}: END_SCAN of the scan walk {scan.get('walk_end')}, "
                    f"published {r['state']}"
                )
            if got["end"] and got["end"][0] != r["state"]:
                problems.append(
                    f"{where}: END_SCAN of the session walk {got['end'][0]}, published {r['state']}"
                )
    for key, got in seen.items():
        if got["fatal"]:
            problems.append(f"{name}: session {key[0]} walk crashed: {got['fatal'][0][-500:]}")
        elif key not in published:
            problems.append(f"{name}: {key[0]} scan {key[1]} seen but not in the manifests")
    return problems


def subscriber_complete(
    seen: dict[tuple[str, int], dict[str, Any]], records: dict[str, list[dict[str, Any]]]
) -> bool:
    return all(
        seen.get((s, r["number"]), {}).get("scan") and seen[(s, r["number"])]["end"]
        for s, recs in records.items()
        for r in recs
    )


# -------------------------------------------------------------------- memory verdict


def window_median(
    times: list[float], values: list[int | None], start: float, stop: float
) -> float | None:
    picked = [v for t, v in zip(times, values, strict=True) if start <= t <= stop and v is not None]
    return statistics.median(picked) if picked else None


def _slope(points: list[tuple[float, int]]) -> float:
    """Least-squares slope (bytes per second) of (time, value) points; 0 for fewer than 3."""
    if len(points) < 3:
        return 0.0
    mt = statistics.fmean(t for t, _ in points)
    mv = statistics.fmean(v for _, v in points)
    den = sum((t - mt) ** 2 for t, _ in points)
    return sum((t - mt) * (v - mv) for t, v in points) / den if den else 0.0


def memory_figures(
    samples: Samples,
    t0: float,
    t_end: float,
    warmup: float,
    tol_mib: float,
    tol_pct: float,
    redis_tol_mib: float,
    redis_tol_pct: float,
    exclude: set[str],
) -> dict[str, dict[str, Any]]:
    """Per process (and ``redis_used_memory``): start/first-third/last-third/end/peak, verdict."""
    third = max(0.0, t_end - t0 - warmup) / 3
    first = (t0 + warmup, t0 + warmup + third)
    last = (t_end - third, t_end)
    out = {}
    series = dict(samples.rss)
    series["redis used_memory"] = samples.redis_used
    for name, values in series.items():
        valid = [v for v in values if v is not None]
        if not valid:
            continue
        a = window_median(samples.times, values, *first)
        b = window_median(samples.times, values, *last)
        is_redis = name == "redis used_memory"
        abs_tol, pct = (redis_tol_mib, redis_tol_pct) if is_redis else (tol_mib, tol_pct)
        allowed = max(abs_tol * MIB, (a or 0) * pct / 100)
        growth = None if a is None or b is None else b - a
        during = [
            v
            for t, v in zip(samples.times, values, strict=True)
            if t0 <= t <= t_end and v is not None
        ]
        after = [
            (t, v)
            for t, v in zip(samples.times, values, strict=True)
            if first[0] <= t <= t_end and v is not None
        ]
        out[name] = {
            "slope_mib_per_h": _slope(after) * 3600 / MIB,
            "start_mib": valid[0] / MIB,
            "first_third_mib": None if a is None else a / MIB,
            "last_third_mib": None if b is None else b / MIB,
            "end_mib": (during or valid)[-1] / MIB,
            "peak_mib": max(during or valid) / MIB,
            "growth_mib": None if growth is None else growth / MIB,
            "allowed_mib": allowed / MIB,
            "checked": name not in exclude,
            "flat": growth is not None and growth <= allowed,
        }
    return out


# -------------------------------------------------------------------- the run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m soak",
        description="Soak test: 4 sessions publishing scans back to back, 2 writers, 4 "
        "subscribers; checks files, subscribers and memory. Exit code 0 if all hold.",
    )
    parser.add_argument(
        "--duration", type=float, default=600.0, help="seconds of publishing (default 600)"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the figures to this file")
    parser.add_argument(
        "--redis-url",
        default=None,
        help="use this server instead of a private one (sessions get a unique name)",
    )
    parser.add_argument(
        "--point-time",
        type=float,
        default=0.01,
        help="sleep between two points of a scan (default 0.01 s)",
    )
    parser.add_argument(
        "--retention",
        type=float,
        default=None,
        help="SCANSTREAM retention time of the scans (default: duration/4, between 10 and 30 s)",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds excluded from the memory verdict (default: 15%% of the "
        "duration, at least retention + 2)",
    )
    parser.add_argument(
        "--sample-period",
        type=float,
        default=None,
        help="seconds between memory samples (default: duration/40, 0.5 to 3)",
    )
    parser.add_argument("--rss-tolerance-mib", type=float, default=8.0)
    parser.add_argument("--rss-tolerance-pct", type=float, default=10.0)
    parser.add_argument("--redis-tolerance-mib", type=float, default=8.0)
    parser.add_argument("--redis-tolerance-pct", type=float, default=25.0)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (files, logs)")
    parser.add_argument(
        "--isolated",
        action="store_true",
        help="writers write each scan in a worker process (the CLI's default); default: "
        "--in-process, see docs/reliability.md",
    )
    args = parser.parse_args(argv)
    if args.duration <= 0:
        parser.error("--duration must be positive")
    if args.retention is None:
        args.retention = min(30.0, max(10.0, args.duration / 4))
    if args.warmup is None:
        args.warmup = max(args.retention + 2, 0.15 * args.duration)
    if args.sample_period is None:
        args.sample_period = min(3.0, max(0.5, args.duration / 40))
    return args


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    for var in ("SCANSTREAM_REDIS_URL", "SCANSTREAM_RETENTION_TIME"):
        env.pop(var, None)
    return env


def _spawn(children: list[Child], logs: Path, name: str, role: str, argv: list[str]) -> Child:
    log = logs / f"{name}.log"
    with open(log, "ab") as out:
        # A new session: a Ctrl-C in the terminal reaches the runner only, which stops them.
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_child_env(),
            cwd=PROJECT_ROOT,
            start_new_session=True,
        )
    child = Child(name, role, popen, log)
    children.append(child)
    return child


def _stop(children: list[Child], timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds."""
    for child in children:
        if child.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in children:
        try:
            child.popen.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.popen.kill()
            child.popen.wait(5)


def _wait_until(condition: Any, timeout: float, period: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(period)
    return True


def _on_signal(signum: int, _frame: Any) -> None:
    raise Interrupted(signal.Signals(signum).name)


def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="scanstream-soak-"))
    root, logs = tmp / "data", tmp / "logs"
    root.mkdir()
    logs.mkdir()
    run_id = uuid.uuid4().hex[:6]
    sessions = [f"soak{run_id}_{k}" for k in range(NSESSIONS)]
    manifests = {s: tmp / f"manifest-{s}.jsonl" for s in sessions}
    children: list[Child] = []
    server: EmbeddedServer | None = None
    store: DataStore | None = None
    sampler: Sampler | None = None
    verifier: Verifier | None = None
    problems: list[str] = []
    report: dict[str, Any] = {
        "tmp_dir": str(tmp),
        "sessions": sessions,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        url = args.redis_url
        if url is None:
            server = EmbeddedServer(tmp / "redis", port=_free_port())
            server.start(timeout=10)
            url = server.url
        store = DataStore(settings=Settings.from_env(redis_url=url))
        for session in sessions:
            create_session(session, store=store)
        py = sys.executable
        writers = [
            _spawn(
                children,
                logs,
                f"writer{w}",
                "writer",
                [
                    py,
                    "-m",
                    "scanstream",
                    "--redis-url",
                    url,
                    "writer",
                    *sessions[w * 2 : (w + 1) * 2],
                    "--root",
                    str(root),
                    *([] if args.isolated else ["--in-process"]),
                ],
            )
            for w in range(NWRITERS)
        ]
        subscribers = [
            _spawn(
                children,
                logs,
                f"subscriber{n}",
                "subscriber",
                [py, "-m", "soak.subscriber", url, str(tmp / f"subscriber{n}.jsonl"), *sessions],
            )
            for n in range(NSUBSCRIBERS)
        ]
        # Wait until each writer owns its sessions before publishing (a writer that started
        # late would catch up anyway; this keeps the timeline simple).
        if not _wait_until(
            lambda: all((writer_status(s, store=store) or {}).get("writing") for s in sessions),
            30,
            0.1,
        ):
            raise RuntimeError(
                "the writers did not start within 30 s:\n"
                + "\n".join(w.log_tail() for w in writers)
            )
        pids = {c.name: c.pid for c in children}
        if server is not None and server.pid is not None:
            pids["redis-server"] = server.pid
        t0 = time.monotonic()
        until = time.time() + args.duration
        publishers = [
            _spawn(
                children,
                logs,
                f"publisher{k}",
                "publisher",
                [
                    py,
                    "-m",
                    "soak.publisher",
                    url,
                    s,
                    str(k),
                    str(root),
                    str(manifests[s]),
                    "--until",
                    repr(until),
                    "--point-time",
                    repr(args.point_time),
                    "--retention",
                    repr(args.retention),
                ],
            )
            for k, s in enumerate(sessions)
        ]
        pids.update({p.name: p.pid for p in publishers})
        sampler = Sampler(pids, store, args.sample_period)
        sampler.start()
        verifier = Verifier(store, sessions, manifests, root, save_timeout=0.7 * args.retention)
        verifier.start()

        # -- publishing: watch for early deaths
        while time.monotonic() - t0 < args.duration:
            dead = [
                c
                for c in children
                if c.popen.poll() is not None and (c.role != "publisher" or c.popen.returncode != 0)
            ]
            if dead:
                raise RuntimeError(
                    "processes died during the run: "
                    + "; ".join(
                        f"{c.name} (exit {c.popen.returncode}): {c.log_tail(8)}" for c in dead
                    )
                )
            time.sleep(0.5)
        t_end = time.monotonic()

        # -- end: publishers finish their scan, writers save, subscribers catch up
        if not _wait_until(lambda: all(p.popen.poll() is not None for p in publishers), 60):
            problems.append("publishers still running 60 s after the end: stopped")
            _stop(publishers)
        for p in publishers:
            if p.popen.returncode != 0:
                problems.append(f"{p.name} exited with {p.popen.returncode}: {p.log_tail(10)}")
        if not _wait_until(lambda: not verifier.is_alive(), max(60.0, args.retention)):
            problems.append("files not all checked 60 s after the end")
        t_saved = time.monotonic()
        records = verifier.records
        seen: dict[str, dict[tuple[str, int], dict[str, Any]]] = {}

        def subscribers_done() -> bool:
            for s in subscribers:
                seen[s.name] = read_subscriber(tmp / f"{s.name}.jsonl")
            return all(subscriber_complete(seen[s.name], records) for s in subscribers)

        if not _wait_until(subscribers_done, 60, 1.0):
            problems.append("subscribers had not seen every scan 60 s after the end")
        t_seen = time.monotonic()
        writer_errors = {s: (writer_status(s, store=store) or {}).get("errors") for s in sessions}
        for session, errors in writer_errors.items():
            if errors:
                problems.append(f"writer of {session} reported errors: {errors[:3]}")
        sampler.sample()
        sampler.stop_event.set()
        sampler.join(10)
        _stop(writers + subscribers)
        for c in writers + subscribers:
            if c.popen.returncode != 0:
                problems.append(f"{c.name} exited with {c.popen.returncode}: {c.log_tail(10)}")
        subscribers_done()

        # -- verdict
        sub_problems = [
            p for s in subscribers for p in subscriber_problems(s.name, seen[s.name], records)
        ]
        memory = memory_figures(
            sampler.samples,
            t0,
            t_end,
            args.warmup,
            args.rss_tolerance_mib,
            args.rss_tolerance_pct,
            args.redis_tolerance_mib,
            args.redis_tolerance_pct,
            exclude=set(),
        )
        not_flat = [n for n, m in memory.items() if m["checked"] and not m["flat"]]
        all_records = [r for recs in records.values() for r in recs]
        nscans = len(all_records)
        points = sum(
            sum(v for k, v in r["points"].items() if not k.startswith("lima")) for r in all_records
        )
        images = sum(r["points"].get("lima_soak:image", 0) for r in all_records)
        events = {
            s.name: sum(
                rec["events"] for v in seen[s.name].values() for rec in v["scan"] if "events" in rec
            )
            for s in subscribers
        }
        states: dict[str, int] = defaultdict(int)
        for r in all_records:
            states[r["state"]] += 1
        kinds: dict[str, int] = defaultdict(int)
        for r in all_records:
            kinds[r["kind"]] += 1
        checks = {
            "processes_ok": not [p for p in problems if "exited with" in p or "still running" in p],
            "files_exact": (
                not verifier.problems and verifier.scans_checked == nscans and nscans > 0
            ),
            "writers_no_errors": not any(writer_errors.values()),
            "subscribers_complete": not sub_problems
            and not any("subscribers had not" in p for p in problems),
            "memory_flat": not not_flat,
        }
        problems += verifier.problems + sub_problems
        problems += [
            f"memory of {n} grew by {memory[n]['growth_mib']} MiB (allowed "
            f"{memory[n]['allowed_mib']:.1f})"
            for n in not_flat
        ]
        report.update(
            {
                "ok": all(checks.values()) and not problems,
                "checks": checks,
                "duration_s": t_end - t0,
                "drain_s": {
                    "saved_and_checked": t_saved - t_end,
                    "subscribers_done": t_seen - t_end,
                },
                "counts": {
                    "scans": nscans,
                    "scans_by_state": dict(states),
                    "scans_by_kind": dict(kinds),
                    "scans_per_session": {s: len(records[s]) for s in sessions},
                    "points_0d_1d": points,
                    "lima_images": images,
                    "files_checked": verifier.files_checked,
                    "scans_checked": verifier.scans_checked,
                    "check_time_s": verifier.check_seconds,
                    "max_save_delay_s": verifier.max_save_delay,
                    "subscriber_events": events,
                },
                "memory_mib": memory,
                "machine": machine(),
                "problems": problems[:100],
                "problem_count": len(problems),
            }
        )
        return report
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if sampler is not None:
            sampler.stop_event.set()
        if verifier is not None:
            verifier.stop_event.set()
        _stop(children, timeout=10)
        if store is not None:
            store.close()
        if server is not None:
            server.stop()
        if not report.get("ok"):  # keep the evidence next to the files and logs
            with contextlib.suppress(OSError, TypeError, ValueError):
                (tmp / "report.json").write_text(json.dumps(report, indent=1, default=str))
        if not args.keep and report.get("ok"):
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)


def format_summary(report: dict[str, Any]) -> str:
    lines = []
    c = report["counts"]
    lines.append(
        f"soak: {report['duration_s']:.0f} s, {c['scans']} scans "
        f"({', '.join(f'{k} {v}' for k, v in sorted(c['scans_by_state'].items()))}), "
        f"{c['points_0d_1d']} points, {c['lima_images']} images, "
        f"{c['files_checked']} files checked"
    )
    lines.append(f"subscriber events: {c['subscriber_events']}")
    lines.append(
        f"{'process':<20} {'start':>8} {'1st 3rd':>8} {'last 3rd':>8} {'end':>8} "
        f"{'peak':>8} {'growth':>8} {'allowed':>8} {'MiB/h':>7}  flat (MiB)"
    )
    for name, m in report["memory_mib"].items():

        def f(v: Any) -> str:
            return "-" if v is None else f"{v:.1f}"

        verdict = ("yes" if m["flat"] else "NO") if m["checked"] else "(not checked)"
        lines.append(
            f"{name:<20} {f(m['start_mib']):>8} {f(m['first_third_mib']):>8} "
            f"{f(m['last_third_mib']):>8} {f(m['end_mib']):>8} {f(m['peak_mib']):>8} "
            f"{f(m['growth_mib']):>8} {f(m['allowed_mib']):>8} "
            f"{f(m['slope_mib_per_h']):>7}  {verdict}"
        )
    for name, ok in report["checks"].items():
        lines.append(f"{name:<22} {'ok' if ok else 'FAILED'}")
    for problem in report["problems"][:20]:
        lines.append(f"  problem: {problem}")
    if report["problem_count"] > 20:
        lines.append(f"  ... {report['problem_count'] - 20} more problems (see the JSON)")
    lines.append("OK" if report["ok"] else f"FAILED (files kept in {report['tmp_dir']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = run(args)
    except Interrupted as exc:
        print(f"soak: interrupted ({exc}); every child process was stopped", file=sys.stderr)
        return 130
    except Exception as exc:
        report = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        if args.json:
            args.json.write_text(json.dumps(report, indent=1))
        print(f"soak: FAILED: {report['error']}", file=sys.stderr)
        return 1
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    print(format_summary(report))
    return 0 if report["ok"] else 1
