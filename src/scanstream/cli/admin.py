"""``scanstream ls`` and ``scanstream delete``: their arguments and their text output.

The library (:mod:`scanstream.admin`) returns data; this module parses and prints.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

from .._transport.connection import DataStore
from .._transport.shared_server import resolve_url
from ..admin.deletion import DeletionReport, delete_scans
from ..admin.listing import (
    ScanSummary,
    SessionSummary,
    format_age,
    list_sessions,
    parse_duration,
    server_memory,
)
from ..admin.wording import counted
from ..models import SavingState
from .usage import argument_type, scan_number, session_name


def configure_ls(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``scanstream ls``."""
    parser.add_argument(
        "session",
        nargs="?",
        type=session_name,
        default=None,
        help="only this session (default: every session)",
    )


def run_ls(args: argparse.Namespace) -> int:
    """Print the sessions, their stored scans and the server's memory; exit code 0."""
    with DataStore(resolve_url(args.redis_url)) as store:
        print(format_listing(list_sessions(store, args.session), server_memory(store)))
    return 0


def configure_delete(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``scanstream delete``."""
    parser.add_argument("session", type=session_name, help="the session whose scans to delete")
    parser.add_argument(
        "--older-than",
        metavar="DURATION",
        type=argument_type(parse_duration),
        default=None,
        help="only scans ended longer ago than this (90s, 15m, 2h, 7d; default: any age)",
    )
    parser.add_argument(
        "--scan",
        metavar="N",
        type=scan_number,
        nargs="+",
        action="extend",  # --scan 1 --scan 2 is both, as --scan 1 2 (not the last only)
        dest="numbers",
        help="only these scan numbers, repeatable (default: every stored scan)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="also delete scans no writer has saved (waiting for a writer, being written, "
        "failed); running ones never are",
    )
    parser.add_argument("--dry-run", action="store_true", help="say what would be deleted")


def run_delete(args: argparse.Namespace) -> int:
    """Delete and print the report; exit code 1 if a scan named with ``--scan`` was kept."""
    with DataStore(resolve_url(args.redis_url)) as store:
        report = delete_scans(
            store,
            args.session,
            older_than=args.older_than,
            numbers=args.numbers,
            force=args.force,
            dry_run=args.dry_run,
        )
    print(format_report(report))
    # Scans named with --scan that were kept are a failure for scripts; others are expected.
    return 1 if args.numbers and report.kept else 0


def format_bytes(size: int | None) -> str:
    """Format a byte count as ``512B``, ``12.3KiB``, ``4.0MiB``, ``1.50GiB``; None as ``-``."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.2f}GiB"


def saving_text(scan: ScanSummary) -> str:
    """The ``saving`` cell of ``scanstream ls``: where the scan was saved, or why it was not.

    ``saved FILE::ENTRIES``, ``FAILED: reason``, ``WRITING FILE``, ``WAITING`` (no writer has
    taken it), ``NOT_SAVED: reason`` (saving off by design); ``saved`` alone for a scan in
    the writers' saved set with no verdict recorded.
    """
    text: str = _saving_text(scan)
    return text.replace("\r", " ").replace("\n", " ")  # one line per scan


def _saving_text(scan: ScanSummary) -> str:
    verdict = scan.saving
    if verdict.state is SavingState.SAVED:
        return f"saved {verdict.file}::{','.join(verdict.entries)}"
    if not scan.saving_recorded and scan.saved:
        return "saved"
    if verdict.state is SavingState.WRITING:
        return f"WRITING {verdict.file or '?'}"
    if verdict.state is SavingState.WAITING:
        return "WAITING"
    if verdict.reason:
        return f"{verdict.state.value}: {verdict.reason}"
    return str(verdict.state.value)


def _when(timestamp: float | None) -> str:
    return (
        "-" if timestamp is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))
    )


def format_listing(sessions: Sequence[SessionSummary], memory: dict[str, Any] | None = None) -> str:
    """Text of ``scanstream ls``: one table per session, then the totals."""
    lines = []
    header = ("#", "name", "state", "points", "memory", "ended", "expires in", "saving")
    for summary in sessions:
        lines.append(
            f"session {summary.name}: {counted(len(summary.scans), 'scan')}, "
            f"{format_bytes(summary.memory)}"
        )
        rows = [header] + [
            (
                str(s.number),
                s.name,
                s.status,
                str(s.points),
                format_bytes(s.memory),
                _when(s.end_time),
                "-" if s.expires_in is None else format_age(s.expires_in),
                # Last: a file path or a reason is long, and nothing comes after it.
                saving_text(s),
            )
            for s in summary.scans
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        for row in rows:
            lines.append(
                "  "
                + "  ".join(
                    cell.rjust(w) if i in (0, 3, 4) else cell.ljust(w)
                    for i, (cell, w) in enumerate(zip(row, widths))
                ).rstrip()
            )
    nscans = sum(len(s.scans) for s in sessions)
    total = (
        f"total: {counted(len(sessions), 'session')}, {counted(nscans, 'scan')}, "
        f"{format_bytes(sum(s.memory for s in sessions))}"
    )
    if memory and memory.get("used_memory") is not None:
        limit = memory.get("maxmemory")
        total += (
            f"; server uses {format_bytes(memory['used_memory'])} of "
            f"{format_bytes(limit) if limit else 'no limit'}"
            f" (policy {memory.get('maxmemory_policy')})"
        )
    lines.append(total)
    return "\n".join(lines)


def format_report(report: DeletionReport) -> str:
    """Text of ``scanstream delete``: each scan deleted or kept, with the reason, then a total."""
    verb = "would delete" if report.dry_run else "deleted"
    lines = []
    for d in report.deleted:
        name = d.scan.name if d.scan else "?"
        lines.append(f"{verb} {report.session}:{d.number}_{name}: {d.reason}")
    for d in report.kept:
        name = f"_{d.scan.name}" if d.scan else ""
        lines.append(f"kept {report.session}:{d.number}{name}: {d.reason}")
    done = "would be deleted" if report.dry_run else "deleted"
    freed = "would be freed" if report.dry_run else "freed"
    lines.append(
        f"{counted(len(report.deleted), 'scan', none=True)} {done}, {len(report.kept)} kept, "
        f"{format_bytes(report.freed)} {freed}"
    )
    return "\n".join(lines)
