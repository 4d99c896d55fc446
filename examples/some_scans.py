#!/usr/bin/env python
"""Run the catalogue of simulated scans (BLISS's ``some_scans.py``, for scanstream).

Start a subscriber first (for example ``scanstream writer test_session`` or the external
saving example), then::

    python examples/some_scans.py --session test_session --root /tmp/scanstream_data

It publishes, in one session: the eight scans of the BLISS external-writer test
(d2scan with a gaussian counter, a Lima loopscan over 3 files, an ascan with an MCA, a
chain with two top masters, three loopscans in parallel, a timescan stopped after 0.5 s,
a loopscan of a sampling counter, an ascan of a counter with a varying sample count),
then ct, amesh, a sequence of two scans, a2scan, dscan, a killed scan, a Lima NOSAVING
scan and a scan with saving off.
"""

from __future__ import annotations

import argparse
import sys
import time

from scanstream import create_session
from scanstream.sim import SavingConfig
from scanstream.sim.catalogue import CATALOGUE, run_catalogue


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--session", default="test_session", help="session name (default: test_session)"
    )
    parser.add_argument(
        "--redis-url",
        default=None,
        help="Redis URL (default: $SCANSTREAM_REDIS_URL, else the embedded server)",
    )
    parser.add_argument(
        "--root",
        default=None,
        help="base directory of the data; without it scans name no file (a writer "
        "puts them under its own --root) and Lima frames are not written",
    )
    parser.add_argument("--sample", default="sample", help="sample name (default: sample)")
    parser.add_argument("--dataset", default="0001", help="dataset name (default: 0001)")
    parser.add_argument("--slow", action="store_true", help="honour count times (real time)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulated noise")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=CATALOGUE,
        metavar="NAME",
        help=f"run only these entries: {', '.join(CATALOGUE)}",
    )
    args = parser.parse_args(argv)

    saving = SavingConfig(args.root, args.session, args.sample, args.dataset) if args.root else None
    session = create_session(args.session, redis_url=args.redis_url)
    t0 = time.monotonic()

    def report(entry: str, result) -> None:  # type: ignore[no-untyped-def]
        points = ", ".join(f"{master}: {n}" for master, n in result.acquired.items())
        print(f"{entry:<22} {result.db_name:<36} {result.state.name:<13} {points}", flush=True)

    try:
        results = run_catalogue(
            session, saving, fast=not args.slow, names=args.only, seed=args.seed, on_result=report
        )
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        session.close()
    print(
        f"{len(results)} scans in {time.monotonic() - t0:.1f} s"
        + (f"; dataset file: {saving.filename}" if saving else "; no filename given")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
