"""``python -m benchmarks [--quick | --full] [--json PATH] [--only NAME ...]``"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import curves, latency, memory, publish
from .harness import Figure, machine, private_server

SECTIONS = ("publish", "latency", "memory", "writer", "scale", "curves")  # in the order they run


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None or math.isnan(value):
        return "-"
    if unit.endswith("/s"):
        return f"{value / 1000:,.0f}k"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _table(figures: list[Figure]) -> str:
    lines = [
        "| figure | median | p99 | baseline median | ratio | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in figures:
        unit = f.value.unit
        base = (
            _fmt(f.baseline.median, f.baseline.unit) + " " + f.baseline.unit if f.baseline else "-"
        )
        ratio = f"{f.ratio:.2f}" if f.ratio is not None else "-"
        met = {True: "yes", False: "NO", None: "-"}[f.met]
        lines.append(
            f"| {f.name} | {_fmt(f.value.median, unit)} {unit} | "
            f"{_fmt(f.value.p99, unit)} {unit} | {base} | {ratio} | {f.target} | {met} |"
        )
    return "\n".join(lines)


def _rows_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append(
            "| "
            + " | ".join(_fmt(v) if isinstance(v, float) else str(v) for v in r.values())
            + " |"
        )
    return "\n".join(lines)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    return obj


#: Rough duration of each section in a full run (s), for the progress lines.
_DURATION = {
    "publish": 90,
    "latency": 60,
    "memory": 10,
    "writer": 110,
    "scale": 50,
    "curves": 150,
}


def _progress(message: str) -> None:
    """Progress on stderr, so that stdout keeps only the tables."""
    print(f"[benchmarks] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Measure scanstream's data path (publish, live latency, memory, writer, "
        "scale) against raw redis-py and h5py baselines run beside it on a private "
        "server; print markdown tables (see docs/performance.md).",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a few seconds in all")
    parser.add_argument(
        "--full",
        action="store_true",
        help="the scale curves' largest sizes too (10 000 channels, 64 scans and "
        "subscribers, 10^8 points: several minutes more)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument(
        "--only",
        nargs="*",
        choices=SECTIONS,
        default=None,
        help="run these sections only (default: all, about 6 minutes)",
    )
    args = parser.parse_args(argv)
    only = [name for name in SECTIONS if name in set(args.only or SECTIONS)]
    t0 = time.perf_counter()
    figures: list[Figure] = []
    result: dict[str, Any] = {"quick": args.quick, "machine": machine()}
    with private_server() as url:
        for name in only:
            started = time.perf_counter()
            about = "" if args.quick else f" (about {_DURATION[name]} s)"
            _progress(f"{name}{about}...")
            if name == "publish":
                figures += publish.run(url, args.quick)
            elif name == "latency":
                figures += latency.run(url, args.quick)
            elif name == "memory":
                figures += memory.run(url, args.quick)
            elif name == "writer":
                from . import writer

                figures += writer.run(url, args.quick)
            elif name == "curves":
                result["curves"] = curves.run(url, args.quick, args.full)
            elif name == "scale":
                result["scale_channels"] = publish.scale_channels(url, args.quick)
                result["scale_latency"] = latency.scale(url, args.quick)
            _progress(f"{name} done in {time.perf_counter() - started:.0f} s")
    result["figures"] = [f.as_dict() for f in figures]
    result["seconds"] = time.perf_counter() - t0
    print(_table(figures))
    if "scale_channels" in result:
        print("\nPublish (1000-point batches) against channels:\n")
        print(_rows_table(result["scale_channels"]))
        print("\nLive latency against subscribers and channels:\n")
        print(_rows_table(result["scale_latency"]))
    for curve, rows in result.get("curves", {}).items():
        print(f"\nScale curve: {curve.replace('_', ' ')}\n")
        print(curves.table(rows))
    print(f"\n{result['seconds']:.1f} s in all")
    if args.json is not None:
        args.json.write_text(json.dumps(_jsonable(result), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
