"""Usage errors found after parsing (a directory that cannot be written, a missing argument):
reported as argparse reports its own, with the subcommand's usage and exit code 2."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..exceptions import ScanstreamError

# The base of subcommand actions that add behaviour to argparse's (lazy loading, scanstream's
# messages for scan types): argparse has no public one.
if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]  # noqa: SLF001
else:
    SubParsers = argparse._SubParsersAction  # noqa: SLF001

__all__ = ["SubParsers", "UsageError", "writable_directory"]


class UsageError(ScanstreamError, ValueError):
    """A command-line argument is wrong; the message names it and what to give instead."""


def writable_directory(text: str, option: str = "--root") -> Path:
    """The directory ``text``, created if missing.

    Raises
    ------
    UsageError
        It is not a directory, cannot be created, or this user may not write in it; the
        message names ``option`` and its value.
    """
    root = Path(text).expanduser()
    if root.exists() and not root.is_dir():
        raise UsageError(f"{option} {text!r} is not a directory; give a directory for the files")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"{option} {text!r} does not exist and cannot be created ({exc.strerror}); "
            f"create it, or give another {option}"
        ) from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise UsageError(
            f"{option} {text!r} is not writable by this user; give a directory it may write "
            "(or change its permissions)"
        )
    return root
