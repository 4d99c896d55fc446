"""``scanstream legacy SCRIPT.py [ARGS]``: run a BLISS 1.x subscriber script unchanged."""

from __future__ import annotations

import argparse
import ast
import os
import traceback

import redis

from ..exceptions import ScanstreamError
from ..legacy import LegacyImportError, install, run_script
from .errors import print_error
from .usage import UsageError


def configure_legacy(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``scanstream legacy``."""
    # Optional for argparse, required below: argparse named the optional ARGS as missing too.
    parser.add_argument("script", metavar="SCRIPT.py", nargs="?", help="the script to run")
    parser.add_argument(
        "args", nargs=argparse.REMAINDER, metavar="ARGS", help="arguments of the script"
    )


def run_legacy(args: argparse.Namespace) -> int:
    """Run the script; 2 when it cannot be run (no file, not Python, a real BLISS installed).

    The script's own errors end it as with ``python SCRIPT``: their traceback from the
    script's frames on, exit code 1.
    """
    if args.script is None:
        raise UsageError("give the script to run: scanstream legacy SCRIPT.py [ARGS...]")
    if not os.path.isfile(args.script):
        print_error("legacy", f"no script {args.script!r}; give the path of a Python script")
        return 2
    problem = _compile_problem(args.script)
    if problem is not None:
        print_error("legacy", f"{args.script!r} {problem}")
        return 2
    try:
        install()
    except LegacyImportError as exc:
        print_error("legacy", str(exc))
        return 2
    try:
        run_script(args.script, args.args, redis_url=getattr(args, "redis_url", None))
    except SystemExit as exc:  # the script's own exit code
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except (ScanstreamError, redis.RedisError):
        raise  # one line from scanstream.cli.main: an unreachable server, a missing session
    except Exception as exc:
        _print_script_traceback(exc, args.script)
        return 1
    return 0


def _print_script_traceback(exc: BaseException, script: str) -> None:
    """The traceback ``python SCRIPT`` prints: from the script's first frame on, without
    those of scanstream and runpy that ran it (a user reads them as a scanstream defect)."""
    path = os.path.abspath(script)
    tb = exc.__traceback__
    while tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename) != path:
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb or exc.__traceback__)


def _compile_problem(path: str) -> str | None:
    """Why ``path`` cannot run as a Python script (unreadable, not Python), or None.

    Parsed here first: runpy would report it with a traceback through its own frames.
    """
    try:
        with open(path, "rb") as file:
            ast.parse(file.read(), path)  # parsed only: the script runs through runpy
    except OSError as exc:
        return f"cannot be read ({exc.strerror}); check its permissions"
    except (SyntaxError, ValueError) as exc:  # ValueError: null bytes, on some Pythons
        line = getattr(exc, "lineno", None)
        where = f" (line {line})" if line else ""
        text = exc.msg if isinstance(exc, SyntaxError) else str(exc)
        return f"cannot be compiled as Python: {text}{where}; fix it, or give a Python script"
    return None
