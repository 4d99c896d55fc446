"""The chaos run: random kills, freezes, server restarts and garbage over the keys of scans.

``python -m soak.chaos [--duration 180] [--seed 1] [--pool] [--persistence on|off] [--keep DIR]``

A publisher process (:mod:`soak.publisher`, kinds :data:`soak.workload.KILL_KINDS`) publishes
scans back to back into one session while ``scanstream writer`` (two ``--pool`` writers with
``--pool``) writes them. Every 0.3 to 2 s one thing happens, drawn with :data:`ACTIONS`:

- ``kill_writer`` / ``stop_writer``: SIGKILL of a writer's process group (restarted at
  once), or SIGSTOP for 1 to 8 s then SIGCONT;
- ``kill_publisher`` / ``stop_publisher``: the same for the publisher (a killed one is
  restarted with the next plan index; its running scan ends KILLED);
- ``restart_server``: the EmbeddedServer stopped (SIGTERM, or SIGKILL one time in two) and
  started again on the same port (with ``--persistence off`` it comes back empty); at least
  once per run, half way at the latest;
- ``garbage``: one of :data:`soak.chaos_damage.DAMAGES` over a key of the running scan or of
  a finished one (the damage and the scan are logged in ``damage.jsonl``);
- ``session_garbage``: the same over a key of the session (writer claim, saved set, number
  floor, a scan's pool claim, the pool's records), which must cost no scan its data.

A writer that exits by itself is restarted and counted (a crash loop shows there). At the end
the publisher stops, one writer catches up until every scan has a final verdict (bounded), and
every scan announced in Redis is judged (:func:`judge`): SAVED => the file holds exactly what
was published (:mod:`soak.chaos_verify`); an undamaged scan must be SAVED; a damaged one SAVED
(exact) or FAILED with a reason. The writers' logs must hold no traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from scanstream import DataStore
from scanstream._protocol import entries
from scanstream._transport.server import EmbeddedServer
from scanstream.models import SavingState

from . import chaos_damage, chaos_verify, killloop, workload
from .killloop import _env, _free_port

SESSION = "chaos"
#: Relative weights of the actions.
ACTIONS = {
    "kill_writer": 3,
    "stop_writer": 2,
    "kill_publisher": 2,
    "stop_publisher": 1,
    "restart_server": 0.4,
    "garbage": 5,
    "session_garbage": 1,
}


class Child:
    """A restartable child process with its log (one file per life)."""

    def __init__(self, name: str, argv: list[str], logs: Path) -> None:
        self.name, self.argv, self.logs = name, argv, logs
        self.lives = 0
        self.died_alone: list[int] = []
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, argv: list[str] | None = None) -> None:
        self.lives += 1
        log = open(self.logs / f"{self.name}-{self.lives:03d}.log", "wb")
        self.proc = subprocess.Popen(
            argv or self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_env(),
            start_new_session=True,  # its own group: a kill takes its workers with it
        )
        log.close()

    def signal(self, sig: int) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        if self.proc is None:
            return
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def check(self) -> int | None:
        """The exit code if the process ended by itself (recorded), else None."""
        if self.proc is None or self.proc.poll() is None:
            return None
        code = self.proc.returncode
        self.died_alone.append(code)
        self.proc = None
        return code


def _writer_argv(url: str, root: Path, pool: bool) -> list[str]:
    argv = [sys.executable, "-m", "scanstream", "--redis-url", url, "writer", SESSION]
    return argv + ["--root", str(root)] + (["--pool"] if pool else [])


def _publisher_argv(url: str, data: Path, manifest: Path, first: int, point_time: float) -> list:
    return killloop.publisher_argv(
        url,
        SESSION,
        data,
        manifest,
        workload.KILL_KINDS,
        point_time,
        "--first-index",
        str(first),
        "--keep-going",
    )


def _manifest(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


def _next_index(manifest: Path, started: int) -> int:
    # + 2: the scan the killed publisher was running had the next index, and its Lima files
    # exist (a plan's detector refuses to overwrite them).
    indices = [r["index"] for r in _manifest(manifest) if "index" in r]
    return max([started, *(i + 2 for i in indices)])


def run(
    work: Path, *, duration: float, seed: int, pool: bool, persistence: bool, point_time: float
) -> dict[str, Any]:
    """One chaos run under ``work``; return the report (``problems`` empty when it passed)."""
    rng = random.Random(seed)
    logs, data, manifest = work / "logs", work / "data", work / "manifest.jsonl"
    logs.mkdir(parents=True, exist_ok=True)
    server = EmbeddedServer(
        work / "redis", port=_free_port(), data_dir=(work / "redis-data") if persistence else None
    )
    server.start(timeout=10)
    url = server.url
    writers = [
        Child(f"writer{i}", _writer_argv(url, data, pool), logs) for i in range(2 if pool else 1)
    ]
    publisher = Child("publisher", _publisher_argv(url, data, manifest, 0, point_time), logs)
    damages: list[dict[str, Any]] = []
    actions: dict[str, int] = defaultdict(int)
    resets: list[float] = []
    next_index = 0
    store = DataStore(url)
    started = time.monotonic()
    try:
        for w in writers:
            w.start()
        publisher.start()
        time.sleep(2.0)
        while time.monotonic() - started < duration:
            time.sleep(rng.uniform(0.3, 2.0))
            for w in writers:
                if w.check() is not None:
                    w.start()
            if publisher.check() is not None:
                next_index = _next_index(manifest, next_index + 1)
                publisher.start(_publisher_argv(url, data, manifest, next_index, point_time))
            action = rng.choices(list(ACTIONS), weights=list(ACTIONS.values()))[0]
            elapsed = time.monotonic() - started
            if not resets and elapsed > duration / 2:
                action = "restart_server"  # at least one per run
            elif not any("number" in d for d in damages) and elapsed > duration / 4:
                action = "garbage"  # at least one damaged scan per run, early enough to judge
            actions[action] += 1
            if action == "kill_writer":
                w = rng.choice(writers)
                w.kill()
                w.start()
            elif action == "stop_writer":
                w = rng.choice(writers)
                w.signal(signal.SIGSTOP)
                time.sleep(rng.uniform(1.0, 8.0))
                w.signal(signal.SIGCONT)
            elif action == "kill_publisher":
                publisher.kill()
                next_index = _next_index(manifest, next_index + 1)
                publisher.start(_publisher_argv(url, data, manifest, next_index, point_time))
            elif action == "stop_publisher":
                publisher.signal(signal.SIGSTOP)
                time.sleep(rng.uniform(0.5, 4.0))
                publisher.signal(signal.SIGCONT)
            elif action == "restart_server":
                hard = rng.random() < 0.5
                if hard and server.pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(server.pid, signal.SIGKILL)
                    time.sleep(0.2)
                server.stop()
                resets.append(time.time())
                time.sleep(rng.uniform(0.2, 3.0))
                server.start(timeout=30)
                # A store refuses a server that restarted empty (ServerResetError): a new one.
                store.close()
                store = DataStore(url)
                damages.append({"action": "server", "hard": hard, "time": resets[-1]})
            elif action == "session_garbage":
                with contextlib.suppress(Exception):  # the server may be restarting
                    damages.append(chaos_damage.damage_session(store, SESSION, rng))
            else:
                try:
                    done = chaos_damage.damage(store, SESSION, rng)
                except Exception as exc:  # the server may be restarting: try again later
                    actions[f"garbage not done: {type(exc).__name__}"] += 1
                    continue
                if done is None:  # no scan (or no data key) yet
                    actions["garbage not done: nothing to damage"] += 1
                else:
                    damages.append(done)
        publisher.signal(signal.SIGCONT)
        publisher.signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            if publisher.proc is not None:
                publisher.proc.wait(timeout=120)
        publisher.kill()
        for w in writers:
            w.signal(signal.SIGCONT)
            if w.check() is not None:
                w.start()
        catch_up = _wait_verdicts(store, 240.0)
        for w in writers:
            w.signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                if w.proc is not None:
                    w.proc.wait(timeout=60)
            w.kill()  # its exit code at SIGTERM is not a death of its own
        (work / "damage.jsonl").write_text("".join(json.dumps(d) + "\n" for d in damages))
        report = judge(store, work, damages, resets, persistence)
        report.update(
            {
                "seed": seed,
                "pool": pool,
                "persistence": persistence,
                "seconds": round(time.monotonic() - started, 1),
                "actions": dict(actions),
                "catch_up_s": catch_up,
                "writer_lives": {w.name: w.lives for w in writers},
                "writers_died_alone": {w.name: w.died_alone for w in writers},
                "publisher_lives": publisher.lives,
            }
        )
        report["problems"] += _log_problems(logs)
        return report
    finally:
        for child in (*writers, publisher):
            with contextlib.suppress(Exception):
                child.kill()
        store.close()
        server.stop()


def _announced(store: DataStore) -> list[int]:
    numbers = []
    for _, fields in store.redis.xrange(store.keys.session_scans(SESSION)):
        number = entries.parse_new_scan(fields)
        if number is not None and number not in numbers:
            numbers.append(number)
    return numbers


def _verdict(store: DataStore, number: int) -> Any:
    key = store.keys.scan(SESSION, number)
    if store.redis.type(key) != b"hash":
        return None
    return entries.parse_saving(store.redis.hgetall(key))


def _wait_verdicts(store: DataStore, bound: float) -> float:
    """Wait until every announced scan has a final verdict (or no hash); return the time."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < bound:
        try:
            pending = [
                n
                for n in _announced(store)
                if (v := _verdict(store, n)) is not None and not v.state.is_final
            ]
        except Exception:
            pending = [-1]
        if not pending:
            break
        time.sleep(1.0)
    return round(time.monotonic() - t0, 1)


def judge(
    store: DataStore,
    work: Path,
    damages: list[dict[str, Any]],
    resets: list[float],
    persistence: bool,
) -> dict[str, Any]:
    """Every announced scan's verdict against the plan, the damages and the kills."""
    damaged = {d["number"]: d for d in damages if "number" in d}
    records = _manifest(work / "manifest.jsonl")
    # Numbers start again after a server restarted empty: only the records since the last.
    since = max(resets) if resets and not persistence else 0.0
    ended = {r["number"]: r for r in records if "number" in r and r["end"] > since}
    problems: list[str] = []
    counts: dict[str, int] = defaultdict(int)
    reasons: dict[int, str] = {}
    judged: dict[str, str] = {}
    for number in _announced(store):
        where = f"scan {number}"
        verdict = _verdict(store, number)
        d = damaged.get(number)
        if verdict is None:
            counts["no hash"] += 1
            if d is None:
                problems.append(f"{where}: its hash is gone, yet it was not damaged")
            continue
        state = verdict.state
        counts[f"{state.name}{' damaged' if d else ''}"] += 1
        if d is not None:
            judged[str(number)] = f"{d['kind']} ({d['state_before']}): {state.name}"
        record = ended.get(number)
        p = _plan(store, number, record)
        if state is SavingState.SAVED:
            if p is None:
                problems.append(f"{where}: SAVED, but its scan_info is not the published one")
                continue
            complete = (
                record is not None
                and record["state"] in ("DONE", "USER_ABORTED")
                and workload.plan_of(record | {"session_index": 0}) == p
            )
            problems += chaos_verify.check_saved(p, verdict, complete=complete, where=where)
        elif state is SavingState.FAILED:
            reasons[number] = verdict.reason or ""
            if not verdict.reason:
                problems.append(f"{where}: FAILED without a reason")
            if d is None and not _explained(store, number, resets, verdict.reason or ""):
                problems.append(f"{where}: FAILED but undamaged: {verdict.reason}")
        else:
            problems.append(f"{where}: verdict {state.name} at the end ({verdict.reason})")
    unreadable = {}
    for path in sorted((work / "data").rglob("*.h5")):
        if "lima" in path.relative_to(work / "data").parts:
            continue
        why = killloop.readable(path)
        if why is not None:
            unreadable[str(path.relative_to(work / "data"))] = why
    problems += [f"unreadable file {k}: {v}" for k, v in unreadable.items()]
    if not counts:
        problems.append("no scan in Redis at the end: the publisher published none")
    return {
        "scans": sum(counts.values()),
        "verdicts": dict(counts),
        "failed_reasons": {str(k): v[:300] for k, v in sorted(reasons.items())},
        "damages": len([d for d in damages if "number" in d]),
        "damaged_scans": judged,
        "damages_by_kind": _by_kind(damages),
        "problems": problems,
    }


def _plan(store: DataStore, number: int, record: dict[str, Any] | None) -> Any:
    """The plan of a scan: from its scan_info, else (damaged) from the manifest."""
    try:
        info = json.loads(store.redis.hget(store.keys.scan(SESSION, number), "info") or "{}")
        soak = info["soak"]
        return workload.plan_of_kind(0, soak["index"], soak["kind"], soak.get("sub", 0))
    except (ValueError, KeyError, TypeError):
        pass
    return None if record is None else workload.plan_of(record | {"session_index": 0})


def _explained(store: DataStore, number: int, resets: list[float], reason: str) -> bool:
    """A FAILED verdict of an undamaged scan is expected only for a loss of the server's data
    (a server SIGKILLed before its last second reached the disk, or restarted empty)."""
    return bool(resets) and ("lost" in reason or "gone" in reason or "reset" in reason)


def _by_kind(damages: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for d in damages:
        out[d.get("kind", d.get("action", "?"))] += 1
    return dict(out)


def _log_problems(logs: Path) -> list[str]:
    out = []
    for path in sorted(logs.glob("writer*.log")):
        text = path.read_text(errors="replace")
        if "Traceback" in text:
            i = text.index("Traceback")
            out.append(f"traceback in {path.name}: {text[max(0, i - 300) : i + 1500]}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m soak.chaos")
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of chaos")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--pool", action="store_true", help="two pool writers (--pool)")
    parser.add_argument("--persistence", choices=("on", "off"), default="on")
    parser.add_argument("--point-time", type=float, default=0.02, help="seconds per point")
    parser.add_argument("--keep", type=Path, default=None, help="work directory to keep")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    work = args.keep or Path(tempfile.mkdtemp(prefix="scanstream-chaos-"))
    report = run(
        work,
        duration=args.duration,
        seed=args.seed,
        pool=args.pool,
        persistence=args.persistence == "on",
        point_time=args.point_time,
    )
    report["work"] = str(work)
    print(json.dumps(report, indent=2))
    return 0 if not report["problems"] else 1


if __name__ == "__main__":
    sys.exit(main())
