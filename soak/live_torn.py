"""Torn reads of a file read while it is written, by cause, over several runs.

``python -m soak.live_torn [--runs N]`` runs ``tests/writer/test_live_consistency.py``
(a real writer, two reader processes; docs/nexus_layout.md, "Reading a file while it is
written") N times and sums what its readers report: per compression, the torn reads by cause
(the object read and HDF5's reason), the invalid states met in snapshots that straddled a
flush, and the scan file's size. One run gives a few torn reads at most; the causes only
show over a dozen runs or more. The figures depend on the machine's load (print it with
them).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TEST = "tests/writer/test_live_consistency.py"
MARK = '{\n "compression"'


def reports(output: str) -> list[dict[str, Any]]:
    """The JSON reports a run of the test printed (one per compression)."""
    decoder = json.JSONDecoder()
    found, start = [], 0
    while (begin := output.find(MARK, start)) >= 0:
        report, length = decoder.raw_decode(output[begin:])
        found.append(report)
        start = begin + length
    return found


def summarize(all_reports: list[dict[str, Any]]) -> str:
    """A text table per compression: torn reads by cause, per reader and run."""
    readers: collections.Counter[str] = collections.Counter()
    causes: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    straddling: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    sizes: dict[str, list[int]] = collections.defaultdict(list)
    snapshots: dict[str, list[int]] = collections.defaultdict(list)
    for report in all_reports:
        compression = str(report["compression"])
        sizes[compression].append(int(report.get("file_bytes", 0)))
        for mode in ("locking on", "locking off"):
            result = report[mode]
            readers[compression] += 1
            snapshots[compression].append(int(result["counts"]["snapshots"]))
            for cause, (n, _example) in result["torn"].items():
                causes[compression][cause] += n
            for kind, (n, _example) in result["failures"].items():
                straddling[compression][kind] += n
    lines = []
    for compression, n in readers.items():
        lines.append(
            f"{compression}: {n} readers, {min(snapshots[compression])}-"
            f"{max(snapshots[compression])} snapshots each, file "
            f"{min(sizes[compression])}-{max(sizes[compression])} bytes"
        )
        total = sum(causes[compression].values())
        lines.append(f"  torn reads: {total} ({total / n:.2f} per reader and run)")
        for cause, count in causes[compression].most_common():
            lines.append(f"    {count:4d}  {cause}")
        if straddling[compression]:
            lines.append(
                f"  invalid states in straddling snapshots: {dict(straddling[compression])}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m soak.live_torn", description=__doc__)
    parser.add_argument("--runs", type=int, default=6, help="runs of the test (default 6)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per run")
    args = parser.parse_args(argv)
    collected: list[dict[str, Any]] = []
    failed = 0
    for run in range(args.runs):
        command = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider"]
        command += [TEST, "-k", "readers"]
        try:
            done = subprocess.run(
                command,
                cwd=ROOT,
                env=dict(os.environ),
                capture_output=True,
                text=True,
                timeout=args.timeout,
            )
        except subprocess.TimeoutExpired:
            print(f"run {run + 1}: timed out after {args.timeout} s", file=sys.stderr)
            failed += 1
            continue
        found = reports(done.stdout)
        collected.extend(found)
        if done.returncode != 0:
            failed += 1
            print(f"run {run + 1}: the test failed:\n{done.stdout[-2000:]}", file=sys.stderr)
        print(f"run {run + 1}/{args.runs}: {len(found)} reports", file=sys.stderr)
    print(f"load average {os.getloadavg()[0]:.1f}; {failed} of {args.runs} runs failed")
    print(summarize(collected))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
