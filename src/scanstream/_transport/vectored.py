"""Packing of Redis commands whose large values are sent from several buffers (scatter).

A publisher's entry holds the points of several ``emit`` calls. Joining their buffers into
one bytes object before the send costs a copy of every point, page faults included, while
the socket copies them anyway: :class:`Scattered` lets one RESP bulk string be written from
the buffers as they are, and the connection classes here write all the buffers of a
pipeline with one ``sendmsg`` call per ``_IOV_MAX`` of them. Used by
:class:`~scanstream.DataStore`.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any, cast

from redis import exceptions as redis_errors
from redis._parsers import Encoder
from redis.connection import (
    AbstractConnection,
    Connection,
    PythonRespSerializer,
    UnixDomainSocketConnection,
)

from .identity import IdentityCheck


class Scattered:
    """One command argument (a bulk string) given as consecutive buffers, never joined.

    The buffers must stay unchanged until the command has been sent (and resent, when
    redis-py retries it after a network error).
    """

    __slots__ = ("nbytes", "parts")

    def __init__(self, parts: Sequence[Any]) -> None:
        self.parts = [memoryview(p).cast("B") for p in parts]
        self.nbytes = sum(len(p) for p in self.parts)

    def __len__(self) -> int:
        return self.nbytes

    def __bytes__(self) -> bytes:
        return b"".join(self.parts)


class ScatterPacker(PythonRespSerializer):
    """redis-py's pure-Python packer, plus :class:`Scattered` arguments, and faster.

    Large values and every part of a :class:`Scattered` value come out as separate chunks
    (memoryviews), which redis-py writes to the socket without copying them first. Small
    values are joined, as redis-py does. Arguments of the exact types bytes, str and int are
    encoded here without the encoder's chain of type checks: the NEW_NODE fields of a scan's
    PREPARED script are a few hundred arguments, and packing them was a fifth of the CPU of
    a short scan. Anything else goes through redis-py's encoder (its errors included). Text is
    UTF-8 (strict), as a ``DataStore``'s connections have it.
    """

    def __init__(self, buffer_cutoff: int) -> None:
        # redis-py's Encoder is untyped: called through Any, so that mypy's strict and default
        # modes both accept it.
        super().__init__(buffer_cutoff, cast(Any, Encoder)("utf-8", "strict", False).encode)

    def pack(self, *args: Any) -> list[Any]:
        command = args[0]
        if isinstance(command, str):
            args = tuple(command.encode().split()) + args[1:]
        elif b" " in command:
            args = tuple(command.split()) + args[1:]
        cutoff = self._buffer_cutoff
        output: list[Any] = []
        head = [b"*%d\r\n" % len(args)]
        for arg in args:
            kind = type(arg)
            if kind is bytes:
                value = arg
            elif kind is str:
                value = arg.encode()
            elif kind is int:
                value = b"%d" % arg
            elif kind is Scattered:
                head.append(b"$%d\r\n" % arg.nbytes)
                output.append(b"".join(head))
                output += arg.parts
                head = [b"\r\n"]
                continue
            else:
                value = self.encode(arg)
            size = len(value)
            if size <= cutoff and kind is not memoryview:
                head.append(b"$%d\r\n%b\r\n" % (size, value))
                continue
            head.append(b"$%d\r\n" % size)
            output.append(b"".join(head))
            output.append(value)  # sent from where it is, not joined
            head = [b"\r\n"]
        output.append(b"".join(head))
        return output


# Buffers per sendmsg call: Linux's IOV_MAX.
_IOV_MAX = 1024


def _send_all(sock: socket.socket, chunks: Sequence[Any]) -> None:
    """Write ``chunks`` in order with as few system calls as the kernel allows.

    One ``sendall`` per chunk would release and retake the GIL per chunk: a sender thread
    then waits up to the interpreter's switch interval each time behind a busy acquisition
    thread. ``sendmsg`` writes up to ``_IOV_MAX`` buffers per call.
    """
    views = [memoryview(c).cast("B") for c in chunks]
    first = 0
    while first < len(views):
        sent = sock.sendmsg(views[first : first + _IOV_MAX])
        while sent:
            size = len(views[first])
            if sent < size:
                views[first] = views[first][sent:]
                break
            sent -= size
            first += 1
        while first < len(views) and not len(views[first]):
            first += 1


class _VectoredSend:
    """Connection mixin: write a packed command with :func:`_send_all`.

    The error handling is redis-py's: a failed or timed-out write disconnects and raises its
    ConnectionError or TimeoutError, which the connection's Retry policy retries.
    """

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        conn: Any = self  # a redis-py connection (this class is only mixed into those)
        # redis-py keeps the socket private; this class exists to write to it (decision 0009).
        if not conn._sock:  # noqa: SLF001
            conn.connect_check_health(check_health=False)
        if check_health:
            conn.check_health()
        try:
            sock = conn._sock  # noqa: SLF001
            _send_all(sock, [command] if isinstance(command, bytes) else command)
        except TimeoutError:  # socket.timeout
            conn.disconnect()
            raise redis_errors.TimeoutError("Timeout writing to socket") from None
        except OSError as exc:
            conn.disconnect()
            raise redis_errors.ConnectionError(
                f"Error {exc.errno} while writing to socket: {exc.strerror or exc}"
            ) from None
        except BaseException:
            conn.disconnect()  # part of a command may have been written: never reuse
            raise


class VectoredConnection(_VectoredSend, IdentityCheck, Connection):
    """TCP connection writing commands with ``sendmsg`` (and checking the server identity)."""


class VectoredUnixConnection(_VectoredSend, IdentityCheck, UnixDomainSocketConnection):
    """Unix socket connection writing commands with ``sendmsg`` (and checking the identity)."""


def vectored_connection_class(url: str) -> type[AbstractConnection] | None:
    """The vectored connection class for ``url``; None for TLS (``rediss://``), whose
    sockets have no ``sendmsg`` (redis-py's own class then writes chunk by chunk)."""
    scheme = url.split("://", 1)[0].lower()
    if scheme == "unix":
        return VectoredUnixConnection
    if scheme == "redis":
        return VectoredConnection
    return None
