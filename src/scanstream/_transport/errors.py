"""Redis error replies, classified: the only code that reads their text.

redis-py maps a few error prefixes to classes (``OOM`` to ``OutOfMemoryError``...), but most
refusals arrive as a plain ``ResponseError`` whose message is all there is to go by, and an
error refused when queued in MULTI/EXEC is reported with a "Command # n (...) of pipeline
caused error" (redis-py's pipeline) or "... of the transaction caused error" (the publisher's,
:mod:`.transaction`) text in front of the server's. The tests of this module (``tests/test_sender.py``) make
a real server produce each message, so that a server that rewords one fails a test.
"""

from __future__ import annotations

from typing import TypeVar

import redis

__all__ = ["is_duplicate_id", "is_out_of_memory", "is_wrong_type", "restate"]

_E = TypeVar("_E", bound=BaseException)


def is_duplicate_id(error: BaseException) -> bool:
    """True for XADD's refusal of an ID not above the stream's last one.

    Redis says "The ID specified in XADD is equal or smaller than the target stream top item".
    """
    return isinstance(error, redis.exceptions.ResponseError) and "equal or smaller" in str(error)


def is_out_of_memory(error: BaseException) -> bool:
    """True for a write refused because Redis is full (maxmemory reached, no eviction).

    Redis says "OOM command not allowed when used memory > 'maxmemory'"; inside a
    transaction redis-py may report it as a plain ResponseError quoting that text.
    """
    if isinstance(error, redis.exceptions.OutOfMemoryError):
        return True
    return isinstance(error, redis.exceptions.ResponseError) and "OOM" in str(error)


def is_wrong_type(error: object) -> bool:
    """True for a command refused because its key holds another type (garbage written over it).

    Redis says "WRONGTYPE Operation against a key holding the wrong kind of value"; inside a
    pipeline redis-py may put its "Command # n ..." text in front.
    """
    return isinstance(error, redis.exceptions.ResponseError) and "WRONGTYPE" in str(error)


def restate(error: _E, message: str) -> _E:
    """A copy of ``error`` (same class, same attributes) whose message is ``message``.

    The constructor is not called: ``type(error)(message)`` fails for a class whose
    constructor takes other arguments.
    """
    cls = type(error)
    out = cls.__new__(cls)
    out.__dict__.update(error.__dict__)
    out.args = (message,)
    out.__cause__ = error
    return out
