"""``scanstream legacy SCRIPT.py [ARGS]``: run a BLISS 1.x subscriber script unchanged."""

from __future__ import annotations

import argparse
import os
import sys

from ..legacy import LegacyImportError, install, run_script


def configure_legacy(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``scanstream legacy``."""
    parser.add_argument("script", metavar="SCRIPT.py", help="the script to run")
    parser.add_argument(
        "args", nargs=argparse.REMAINDER, metavar="ARGS", help="arguments of the script"
    )


def run_legacy(args: argparse.Namespace) -> int:
    """Run the script; 2 when it cannot be run (no file, a real BLISS installed).

    The script's own errors propagate (a traceback, exit code 1), as with ``python SCRIPT``.
    """
    if not os.path.isfile(args.script):
        print(f"scanstream legacy: no script {args.script!r}", file=sys.stderr)
        return 2
    try:
        install()
    except LegacyImportError as exc:
        print(f"scanstream legacy: {exc}", file=sys.stderr)
        return 2
    try:
        run_script(args.script, args.args, redis_url=getattr(args, "redis_url", None))
    except SystemExit as exc:  # the script's own exit code
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0
