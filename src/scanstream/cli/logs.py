"""Logging set-up for the command line only: the library never configures logging (STYLE.md 7.7)."""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from typing import TextIO

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
#: The names ``--log-level`` accepts.
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
LEVELS["error"] = logging.ERROR


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Write to the *current* ``sys.stderr``, which pytest or a service may replace after set-up."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr  # emit() runs under the handler's lock: no race with other threads
        super().emit(record)


class _OneLineFormatter(logging.Formatter):
    """:data:`FORMAT`, with a record's exception as one line (``TypeName: message``) appended
    instead of its traceback: a terminal gets no Python traceback unless debug records are
    wanted (``-vv``, ``--log-level debug``); a log file keeps them whole."""

    def __init__(self) -> None:
        super().__init__(FORMAT)
        self.tracebacks = False

    def format(self, record: logging.LogRecord) -> str:
        if self.tracebacks or not record.exc_info or record.exc_info[1] is None:
            return super().format(record)
        exc = record.exc_info[1]
        # A copy: the record is shared with the other handlers (the file keeps the traceback).
        line = logging.makeLogRecord(
            {**record.__dict__, "exc_info": None, "exc_text": None, "stack_info": None}
        )
        line.msg = f"{record.getMessage()} ({type(exc).__name__}: {exc})"
        line.args = None
        return super().format(line)


class _FileHandler(logging.handlers.WatchedFileHandler):
    """A log file, reopened when logrotate moves it away (``WatchedFileHandler``)."""


def configure_logging(
    verbosity: int = 0, level: int | None = None, log_file: str | os.PathLike[str] | None = None
) -> None:
    """Send scanstream's log records to stderr (or a file), at a level chosen by ``-v`` flags.

    Calling it again only changes the level, or the file (one handler of each kind, whatever
    the number of calls).

    Parameters
    ----------
    verbosity : int
        0: warnings and errors; 1: also info; 2 or more: also debug. A record's exception
        is one line on stderr, its traceback only at the debug level (always in the file).
    level : int, optional
        A :mod:`logging` level that replaces the one of ``verbosity``.
    log_file : path, optional
        Append the records to this file instead; stderr then gets warnings and errors only
        (a service manager's journal keeps the failures, the file everything).

    Raises
    ------
    OSError
        The file cannot be opened for appending.
    """
    if level is None:
        level = (
            logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
        )
    logger = logging.getLogger("scanstream")
    handler = next((h for h in logger.handlers if isinstance(h, _StderrHandler)), None)
    if handler is None:
        handler = _StderrHandler()
        handler.setFormatter(_OneLineFormatter())
        logger.addHandler(handler)
    if isinstance(handler.formatter, _OneLineFormatter):
        handler.formatter.tracebacks = level <= logging.DEBUG
    for old in [h for h in logger.handlers if isinstance(h, _FileHandler)]:
        logger.removeHandler(old)
        old.close()
    if log_file is not None:
        file_handler = _FileHandler(os.fspath(log_file), encoding="utf-8")
        file_handler.setFormatter(logging.Formatter(FORMAT))
        file_handler.setLevel(level)
        logger.addHandler(file_handler)
        handler.setLevel(max(level, logging.WARNING))
    else:
        handler.setLevel(level)
    if verbosity > 0 or level != logging.WARNING:
        # Without -v the logger level is left alone, so an embedding program's own set-up wins.
        logger.setLevel(level)
