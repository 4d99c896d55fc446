"""Which failures of a scan a running writer retries, and when.

A scan fails for good when retrying cannot change the outcome (garbage in Redis, an entry
taken by another scan, a file scanstream did not create). It fails for now when the place it
goes to cannot take it at the moment: a full disk or quota, a directory or file system that is
not writable. Those are failures of the environment, fixed by someone freeing space or fixing
permissions; the running writer tries such a scan again after the pauses of
:data:`RETRY_DELAYS` while its data is in Redis (docs/reliability.md, "Retries").
"""

from __future__ import annotations

import errno
from collections.abc import Sequence

from ..exceptions import WriterError

__all__ = [
    "ENVIRONMENT_ERRNOS",
    "RETRY_DELAYS",
    "WriterEnvironmentError",
    "error_name",
    "is_environment_failure",
    "retry_delay",
]

#: Seconds before the 1st, 2nd, 3rd... retry of a scan that failed for its environment; the
#: last one repeats. Short first (a disk freed at once is used at once), then every 5 min
#: (a writer does not hammer a disk that stays full for hours).
RETRY_DELAYS: tuple[float, ...] = (10.0, 30.0, 60.0, 300.0)

#: errno values of the environment: no space, no quota, not writable, read-only.
ENVIRONMENT_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EFBIG}
)
# HDF5 reports a failed write as an OSError with no errno and the C library's text inside.
_ENVIRONMENT_TEXTS = tuple(
    ("No space left on device", "Disk quota exceeded", "Permission denied")
    + ("Read-only file system", "Operation not permitted")
)


class WriterEnvironmentError(WriterError):
    """A scan failed for its environment (disk full, not writable): retrying may save it.

    Raised again in the service for such a failure reported by a worker process.
    """


def is_environment_failure(exc: BaseException) -> bool:
    """True when ``exc`` (or an error it was raised from) is a failure of the environment.

    An :class:`OSError` with an errno of :data:`ENVIRONMENT_ERRNOS`, or HDF5's OSError naming
    one of them, anywhere in the chain of causes; or a :class:`WriterEnvironmentError`.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, WriterEnvironmentError):
            return True
        if isinstance(current, OSError):
            if current.errno in ENVIRONMENT_ERRNOS:
                return True
            if current.errno is None and any(t in str(current) for t in _ENVIRONMENT_TEXTS):
                return True
        current = current.__cause__ or current.__context__
    return False


def error_name(exc: BaseException) -> str:
    """The type named in a scan's failure: ``WriterError`` for a :class:`WriterEnvironmentError`
    (the public class; retried or not, the user reads the same failure)."""
    return "WriterError" if isinstance(exc, WriterEnvironmentError) else type(exc).__name__


def retry_delay(delays: Sequence[float], failures: int) -> float | None:
    """The pause before the retry after ``failures`` failures in a row (None: no retries)."""
    if not delays or failures < 1:
        return None
    return float(delays[min(failures, len(delays)) - 1])
