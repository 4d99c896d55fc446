"""``python -m scanstream.legacy SCRIPT.py [ARGS]``: run a BLISS 1.x subscriber script unchanged."""

from __future__ import annotations

import os
import sys

from .hook import LegacyImportError, install, run_script


def main(argv: list[str] | None = None) -> int:
    """Run the script named by the first argument; 2 on a usage error or a refused hook."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print("usage: python -m scanstream.legacy SCRIPT.py [ARGS...]", file=sys.stderr)
        return 2
    if not os.path.isfile(args[0]):
        # The form of every scanstream command's errors (scanstream.cli.errors.error_line).
        print(
            f"scanstream legacy: error: no script {args[0]!r}; give the path of a Python script",
            file=sys.stderr,
        )
        return 2
    try:
        install()
    except LegacyImportError as exc:
        print(f"scanstream legacy: error: {exc}", file=sys.stderr)
        return 2
    run_script(args[0], args[1:])  # the script's errors and SystemExit propagate
    return 0


if __name__ == "__main__":
    sys.exit(main())
