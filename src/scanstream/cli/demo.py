"""``scanstream demo``: publish the catalogue of example scans and write their NeXus files.

It names the Redis server, checks that ``--root`` is a directory it may write (one line and
exit code 2 if not), starts a writer process for the demo session (unless a writer already
runs for it), runs the catalogue of simulated scans (:mod:`scanstream.sim.catalogue`), waits
until the writer has saved every scan, and prints where the files are with one line per scan.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .._transport.connection import DataStore
from .._transport.shared_server import ENV_URL, resolve_url
from ..admin.registry import saved_scans, writer_status
from ..admin.wording import counted
from ..exceptions import ScanstreamError
from ..models import SavingState
from ..publish import create_session
from ..sim import SavingConfig
from ..sim.catalogue import run_catalogue
from ..subscribe.tree import ScanNode, get_session_node
from ..writer import nexus, scan_file_path
from .errors import describe_server, print_error, url_origin
from .signals import Terminated, interrupt_exit_code, interrupt_name
from .usage import session_name, writable_directory

#: Seconds to wait for the writer to start, and then for the files once the scans have run.
START_TIMEOUT = 30.0
SAVE_TIMEOUT = 120.0


def configure_demo(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``scanstream demo``."""
    parser.add_argument(
        "--root",
        default="scanstream_demo",
        metavar="DIR",
        help="base directory of the data files (default: ./scanstream_demo)",
    )
    parser.add_argument(
        "--session", type=session_name, default="demo", help="session name (default: demo)"
    )


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo; exit code 0 when every scan was saved, 130 on Ctrl-C (143 on SIGTERM).

    Stopped by a signal, it stops the writer process it started (never left running).
    """
    root = writable_directory(args.root).resolve()
    url, origin = url_origin(args)
    url = resolve_url(url)
    print(describe_server(url, origin), flush=True)
    store = DataStore(url)
    writer = None
    try:
        status = writer_status(args.session, store=store)
        if status is None:
            writer = _start_writer(url, args.session, root, store)
        else:
            print(
                f"using the writer already running for session {args.session!r} "
                f"(pid {status['pid']} on {status['host']})"
            )
        # A new dataset per run: the files of earlier runs are never touched.
        dataset = time.strftime("%Y%m%d_%H%M%S")
        saving = SavingConfig(root, args.session, sample="sample", dataset=dataset)
        print(f"running the example scans in session {args.session!r}...", flush=True)
        session = create_session(args.session, store=store)
        results = run_catalogue(
            session,
            saving,
            on_result=lambda name, r: print(
                f"  {r.db_name:<28} {r.state.name:<13} "
                f"{counted(sum(r.acquired.values()), 'point'):>11}",
                flush=True,
            ),
        )
        first = min(r.number for r in results)  # the run's scans, sub-scans of sequences too
        scans = [
            s
            for s in get_session_node(args.session, store=store).children()
            if isinstance(s, ScanNode) and s.number >= first
        ]
        numbers = {s.number for s in scans}
        off = {s.number for s in scans if s.info.get("save") is False}
        missing = _wait_saved(store, args.session, numbers, off)
        _summary(store, args.session, sorted(numbers), root)
        if missing:
            # The demo's writer stops with it: its --status would say nothing more.
            print_error(
                "demo",
                f"NOT saved: scans {sorted(missing)} (why: above); they stay in Redis "
                f"(`scanstream ls {args.session}`): once the cause is fixed, `scanstream writer "
                f"{args.session} --root {root}` saves them",
            )
            return 1
        return 0
    except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM or SIGHUP (signals.Terminated)
        # The scans already published stay in Redis, with their retention time: say how to
        # save those the stopped writer had not saved yet.
        signum = exc.signum if isinstance(exc, Terminated) else signal.SIGINT
        print(
            f"\n{interrupt_name(signum)}: the demo stopped; its scans not saved yet stay in Redis (`scanstream ls "
            f"{args.session}`): `scanstream writer {args.session} --root {root}` saves them",
            file=sys.stderr,
        )
        return interrupt_exit_code(exc)
    finally:
        if writer is not None:
            writer.terminate()
            try:
                writer.wait(timeout=15)
            except subprocess.TimeoutExpired:
                writer.kill()
                writer.wait(timeout=5)
        store.close()


def _start_writer(url: str, session: str, root: Path, store: DataStore) -> subprocess.Popen[bytes]:
    log = root / "writer.log"
    print(
        f"starting a writer for session {session!r} (files under {root}, log in {log})", flush=True
    )
    root.mkdir(parents=True, exist_ok=True)
    # The URL goes in the environment, not in argv: any user of the host reads the command
    # lines of its processes (`ps`), and the URL may hold a password.
    env = {**os.environ, ENV_URL: url}
    with open(log, "ab") as out:
        writer = subprocess.Popen(
            [sys.executable, "-m", "scanstream", "writer", session, "--root", str(root)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while (writer_status(session, store=store) or {}).get("pid") != writer.pid:
            if writer.poll() is not None or time.monotonic() > deadline:
                raise ScanstreamError(f"the writer process did not start; see its log {log}")
            time.sleep(0.1)
    except BaseException:
        # Ctrl-C too: the caller has no handle on it yet, so it would run on, orphaned.
        writer.kill()
        writer.wait(timeout=5)
        raise
    return writer


def _wait_saved(store: DataStore, session: str, numbers: set[int], off: set[int]) -> set[int]:
    """Wait until every scan is saved or reported failed; return those not saved.

    The scans of ``off`` (saving off by design) count as done, not as saved: "20/20 scans
    saved" read false beside the scan listed as not saved.
    """
    deadline = time.monotonic() + SAVE_TIMEOUT
    shown = -1
    while True:
        saved = saved_scans(session, store=store) & numbers
        status = writer_status(session, store=store) or {}
        failed = {e["number"] for e in status.get("errors", [])} & numbers
        finished = saved | failed >= numbers or time.monotonic() > deadline
        if len(saved) != shown and (sys.stdout.isatty() or finished):
            shown = len(saved)
            end = "\n" if finished else ""
            line = f"writer: {len(saved - off)}/{len(numbers - off)} scans saved"
            if off:
                line += f" ({counted(len(off), 'scan')} with saving off)"
            print(f"\r{line}", end=end, flush=True)
        if finished:
            return numbers - saved
        time.sleep(0.1)


def _summary(store: DataStore, session: str, numbers: list[int], root: Path) -> None:
    node = get_session_node(session, store=store)
    files: dict[Path, list[str]] = {}
    for number in numbers:
        scan = node.get_scan(number)
        info = scan.info
        if info.get("save") is False:
            files.setdefault(Path("(not saved: saving off)"), []).append(
                f"{number:>4}  {info.get('title', scan.name)}"
            )
            continue
        path = scan_file_path(info, session, root)
        verdict = scan.saving
        if verdict.state is not SavingState.SAVED:
            # Its entry, if any, would read as "?, 0 points": say why it is not there.
            reason = verdict.reason or verdict.state.value
            line = f"{number:<5} {info.get('title', scan.name):<36} NOT SAVED: {reason}"
            files.setdefault(path, []).append(line)
            continue
        files.setdefault(path, []).append(_describe_entry(path, number))
    for path, lines in files.items():
        print(f"\n{path}")
        for line in lines:
            print(f"  {line}")


def _describe_entry(path: Path, number: int) -> str:
    """``"3.1  ascan roby 0 1 10 0.1  DONE  5 channels x 11 points"`` from the file itself."""
    try:
        entries = nexus.read_scan_entries(path, number)
    except (OSError, KeyError) as exc:
        return f"{number}: cannot read the file: {exc}"
    parts = []
    for entry in entries:
        reason = entry.end_reason or "?"
        points = counted(max(entry.points.values()), "point") if entry.points else "no data"
        channels = counted(len(entry.points), "channel")
        parts.append(f"{entry.name:<5} {entry.title:<36} {reason:<13} {channels}, {points}")
    return "\n  ".join(parts) if parts else f"{number}: no entry in the file"
