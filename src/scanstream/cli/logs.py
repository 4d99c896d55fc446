"""Logging set-up for the command line only: the library never configures logging (STYLE.md 7.7)."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Write to the *current* ``sys.stderr``, which pytest or a service may replace after set-up."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr  # emit() runs under the handler's lock: no race with other threads
        super().emit(record)


def configure_logging(verbosity: int = 0) -> None:
    """Send scanstream's log records to stderr, at a level chosen by ``-v`` flags.

    Calling it again only changes the level (one handler, whatever the number of calls).

    Parameters
    ----------
    verbosity : int
        0: warnings and errors; 1: also info; 2 or more: also debug.
    """
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logger = logging.getLogger("scanstream")
    handler = next((h for h in logger.handlers if isinstance(h, _StderrHandler)), None)
    if handler is None:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(FORMAT))
        logger.addHandler(handler)
    handler.setLevel(level)
    if verbosity > 0:
        # Without -v the logger level is left alone, so an embedding program's own set-up wins.
        logger.setLevel(level)
