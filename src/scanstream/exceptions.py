"""The error tree of scanstream.

Every error raised by scanstream for a domain reason derives from :class:`ScanstreamError`
and also from the builtin a Python user would naturally catch (``KeyError`` for a missing
scan, ``ValueError`` for bad input, ``IndexError`` for data out of range...).

Transport errors of redis-py (``redis.exceptions.ConnectionError``, ``TimeoutError``) are
deliberately *not* wrapped: they propagate unchanged, and retries are configured with a
redis-py ``Retry`` object. Where scanstream itself gives up on Redis (a publisher that could
not reach it for too long, a full server), it raises :class:`RedisUnreachableError` or
:class:`RedisFullError`, which are also the corresponding redis-py errors.
"""

from __future__ import annotations

from typing import Any

import redis


class ScanstreamError(Exception):
    """Root of every error raised by scanstream for a domain reason."""


class ProtocolVersionError(ScanstreamError, RuntimeError):
    """The database holds scanstream data of another protocol version.

    Raised on connect. Use a scanstream version that matches the data, or another
    key prefix / database.
    """


class ServerError(ScanstreamError, RuntimeError):
    """The embedded Redis server could not be found, started or stopped."""


class SessionNotFoundError(ScanstreamError, KeyError):
    """A read asked for a session that has never published a scan."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable.
        return str(self.args[0]) if self.args else ""


class ScanNotFoundError(ScanstreamError, KeyError):
    """The scan does not exist (never created, or expired after its retention time)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class InvalidArgumentError(ScanstreamError, ValueError):
    """An argument of the API is invalid: a bad name, a negative timeout, a bad setting."""


class NodeExistsError(ScanstreamError, ValueError):
    """A node with that name already exists under the same parent."""


class InvalidTransitionError(ScanstreamError, RuntimeError):
    """A scan state change that the state machine forbids (for example END after END)."""

    def __init__(self, from_state: Any, to_state: Any, detail: str = "") -> None:
        self.from_state = from_state
        self.to_state = to_state
        message = _transition_text(from_state, to_state)
        if detail:
            message += f": {detail}"
        super().__init__(message)


def _transition_text(from_state: Any, to_state: Any) -> str:
    """The refused state change in words: a change to the same state, or after the end, reads
    as what it is (``the scan is already DONE``), not as ``from DONE to DONE``."""
    if from_state == to_state:
        return f"the scan is already {from_state.name}"
    if getattr(from_state, "is_final", False):
        what = "end" if getattr(to_state, "is_final", False) else "go back to"
        return f"the scan has already ended {from_state.name}: it cannot {what} {to_state.name}"
    return f"cannot go from scan state {from_state.name} to {to_state.name}"


class ScanEndedError(ScanstreamError, RuntimeError):
    """Data was published to a scan that has already ended (or was declared KILLED)."""


class ScanLostError(ScanEndedError):
    """A running scan disappeared from Redis under its publisher.

    The server was flushed, restarted without its data or restored from an older snapshot,
    or the scan was deleted: what it had stored is gone, and its publisher stops instead of
    sending points nowhere (or into keys that would never expire).
    """


class NoWriterError(ScanstreamError, RuntimeError):
    """``require_writer=True`` and no writer follows the session: the scan was not created."""


class NoWriterWarning(UserWarning):
    """A scan starts while no writer follows its session: it will not be saved."""


class EncodingError(ScanstreamError, ValueError):
    """A value cannot be published: wrong dtype, wrong shape, empty batch, bad metadata."""


class DecodingError(ScanstreamError, ValueError):
    """An entry read from Redis is corrupt or not of the expected format."""


class ImageNotSavedError(ScanstreamError, RuntimeError):
    """Image references were asked of a lima node whose images are not saved (NOSAVING)."""


class IndexNotYetThereError(ScanstreamError, IndexError):
    """The index is past the data published so far, but the channel is still open.

    Wait and ask again, or walk the events to be told when it arrives.
    """


class IndexNoMoreThereError(ScanstreamError, IndexError):
    """The data existed but is gone from Redis (expired after the retention time).

    Read it from the saved file instead.
    """


class IndexWontBeThereError(ScanstreamError, IndexError):
    """The index is past the final length of a sealed (ended) channel: it will never exist."""


class EndOfStream(ScanstreamError):
    """Normal termination: a sealed channel has been read to its end."""


class NexusLayoutError(ScanstreamError, ValueError):
    """An HDF5 object cannot hold what the writer must put there (other dtype, shape, kind)."""


class WriterError(ScanstreamError, RuntimeError):
    """The writer cannot save a scan (file not writable or locked, disk full, entry taken)."""


class RedisUnreachableError(ScanstreamError, redis.exceptions.ConnectionError):
    """Redis could not be reached for longer than ``max_unreachable_time`` (the outage budget).

    Raised by every command of a :class:`~scanstream.DataStore` (the subscriber API, the
    writer, a scan's ``end()``) once its retries have lasted the budget, and by a publisher
    whose points could not be sent for that long (its scan failed). The message names the
    server's URL, its password masked. A ``redis.exceptions.ConnectionError`` too, so code
    that caught redis-py's error still catches it.
    """


class ServerResetError(ScanstreamError, RuntimeError):
    """The Redis server lost or rolled back its data since this client first saw it.

    Its identity key (created with the protocol key when the database was initialized) is
    gone or holds another value, or its epoch went backwards: the server was restarted
    without persistence, restored from an older snapshot, or flushed. Scans this client was
    publishing, following or writing may have lost data: they must fail loudly, never carry
    on as if nothing happened. Deliberately not a ``ConnectionError``: retrying cannot help.
    """


class RedisFullError(ScanstreamError, redis.exceptions.OutOfMemoryError):
    """Redis is full (maxmemory reached, no eviction) and refuses a scan's data."""
