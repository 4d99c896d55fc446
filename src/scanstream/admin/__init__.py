"""Operations on stored scans: listing and deletion. A library: it returns data and prints nothing.

The text output of ``scanstream ls`` and ``scanstream delete`` is in :mod:`scanstream.cli.admin`.
"""

from .deletion import Decision, DeletionReport, delete_scans
from .listing import (
    ScanSummary,
    SessionSummary,
    format_age,
    list_scans,
    list_sessions,
    parse_duration,
    server_memory,
)
from .wording import counted

__all__ = [
    "Decision",
    "DeletionReport",
    "ScanSummary",
    "SessionSummary",
    "counted",
    "delete_scans",
    "format_age",
    "list_scans",
    "list_sessions",
    "parse_duration",
    "server_memory",
]
