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
from typing import Any

from redis import exceptions as redis_errors
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
    """redis-py's pure-Python packer, plus :class:`Scattered` arguments.

    Large values and every part of a :class:`Scattered` value come out as separate chunks
    (memoryviews), which redis-py writes to the socket without copying them first.
    """

    def pack(self, *args: Any) -> list[Any]:
        if not any(type(arg) is Scattered for arg in args):
            packed: list[Any] = super().pack(*args)  # type: ignore[no-untyped-call]
            return packed
        if isinstance(args[0], str):
            args = tuple(args[0].encode().split()) + args[1:]
        output: list[Any] = []
        head = [b"*%d\r\n" % len(args)]
        for arg in args:
            if type(arg) is Scattered:
                parts: list[Any] = arg.parts
                head.append(b"$%d\r\n" % arg.nbytes)
            else:
                value = self.encode(arg)
                if len(value) <= self._buffer_cutoff:
                    head += (b"$%d\r\n" % len(value), value, b"\r\n")
                    continue
                head.append(b"$%d\r\n" % len(value))
                parts = [memoryview(value)]
            output.append(b"".join(head))
            output += parts
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
