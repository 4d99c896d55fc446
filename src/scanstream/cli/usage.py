"""Usage errors: the argparse types that check a value while parsing (a session name, a scan
number), and the errors found after parsing (a directory that cannot be written, a missing
argument), reported as argparse reports its own, with the subcommand's usage and exit code 2.

Both come before any connection to Redis: a wrong command line never waits for a server.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from .._protocol.keys import check_session_name
from ..exceptions import InvalidArgumentError, ScanstreamError

# The base of subcommand actions that add behaviour to argparse's (lazy loading, scanstream's
# messages for scan types): argparse has no public one.
if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]  # noqa: SLF001
else:
    SubParsers = argparse._SubParsersAction  # noqa: SLF001

__all__ = [
    "SubParsers",
    "UsageError",
    "accept_negative_values",
    "argument_type",
    "scan_number",
    "session_name",
    "writable_directory",
]

_T = TypeVar("_T")


class UsageError(ScanstreamError, ValueError):
    """A command-line argument is wrong; the message names it and what to give instead."""


#: A word such as ``-5``, ``-.5``, ``-1e-3`` or ``-1h``: a value, as no option of scanstream
#: starts with a digit. argparse takes a word for an option unless it is a plain negative
#: number (``-1e-3`` or ``-1h`` gave "expected one argument" or "missing START").
_NEGATIVE_VALUE = re.compile(r"^-\.?\d")


def accept_negative_values(parser: argparse.ArgumentParser) -> None:
    """Make ``parser`` take every word of :data:`_NEGATIVE_VALUE` for a value, so that its
    ``type=`` check says what is wrong with it (a negative duration, a negative START)."""
    parser._negative_number_matcher = _NEGATIVE_VALUE  # noqa: SLF001 (no public way)


def argument_type(check: Callable[[str], _T]) -> Callable[[str], _T]:
    """An argparse ``type=`` made of a library check that raises :class:`InvalidArgumentError`.

    argparse reports the check's message as it is, after ``argument OPTION:`` (exit code 2);
    it would report a ValueError as ``invalid <function name> value``, which says nothing.
    """

    @functools.wraps(check)
    def parse(text: str) -> _T:
        try:
            return check(text)
        except InvalidArgumentError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


#: The ``type=`` of every session argument: the project's rule for session names, at parsing.
session_name = argument_type(check_session_name)


def scan_number(text: str) -> int:
    """The ``type=`` of a scan number: an integer >= 1 (scans are numbered from 1)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a scan number: give an integer >= 1 (`scanstream ls SESSION` "
            "lists the stored scans)"
        )
    return value


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
