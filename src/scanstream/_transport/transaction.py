"""The publisher's MULTI/EXEC, packed and parsed here instead of by a redis-py pipeline.

A send of the publisher is one transaction: MULTI, one XADD per data node with points, now
and then EXISTS and HEXISTS of the scan, EXEC. Through ``pipeline(transaction=True)`` most of
a small send's time went to redis-py's per-command work: the pipeline's command stack, the
generic packer, the response callbacks, its bookkeeping around MULTI/EXEC
(docs/performance.md, "Sixth round"). The commands of a send have few shapes, and the heads
of their RESP arrays (``*9``, ``XADD``, the key, ``NOMKSTREAM``, the field names) repeat from
send to send: :class:`CommandHeads` builds each once, and :class:`PackedTransaction` writes the
whole transaction as one buffer list (the parts of :class:`~.vectored.Scattered` values passed
through to ``sendmsg``) and reads its replies back with the connection's own parser, so that
errors are redis-py's classes (decision 0009).

A cluster client keeps redis-py's pipeline (:class:`PipelinedTransaction`): it routes the
transaction to the master of its slot and follows redirections, which a hand-made
transaction on one pool could not.

Replies are RESP2, the only protocol the store speaks (``DataStore`` refuses ``protocol=3``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import redis
from redis.cluster import RedisCluster
from redis.exceptions import ExecAbortError, ResponseError

from .vectored import Scattered

__all__ = [
    "CommandHeads",
    "PackedTransaction",
    "PipelinedTransaction",
    "Transaction",
    "new_transaction",
]

_MULTI = b"*1\r\n$5\r\nMULTI\r\n"
_EXEC = b"*1\r\n$4\r\nEXEC\r\n"
_CRLF = b"\r\n"
# Values longer than this are written from their own memory, not copied into the buffer of
# the commands around them: redis-py's buffer cutoff (and the store's packer's).
_BUFFER_CUTOFF = 6000


def _bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


def _encoded(value: str | bytes | int) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode()


class CommandHeads:
    """The RESP heads of the commands of a sender's transactions, each built once.

    An XADD's head is the array length, ``XADD``, the key and ``NOMKSTREAM``: the same for
    every entry of a node but its first. Field names are cached as bulk strings. One instance
    per sender: what it caches is bounded by that scan's data nodes.
    """

    __slots__ = ("_names", "_xadd")

    def __init__(self) -> None:
        self._xadd: dict[tuple[str, int, bool], bytes] = {}
        self._names: dict[bytes, bytes] = {}

    def xadd(self, key: str, nfields: int, nomkstream: bool) -> bytes:
        """``*<n> XADD <key> [NOMKSTREAM]`` of an XADD of ``nfields`` fields (the ID follows)."""
        shape = (key, nfields, nomkstream)
        head = self._xadd.get(shape)
        if head is None:
            argc = 3 + 2 * nfields + nomkstream
            head = b"*%d\r\n$4\r\nXADD\r\n%b" % (argc, _bulk(key.encode()))
            if nomkstream:
                head += _bulk(b"NOMKSTREAM")
            self._xadd[shape] = head
        return head

    def name(self, field: bytes) -> bytes:
        """The bulk string of a field name."""
        bulk = self._names.get(field)
        if bulk is None:
            bulk = self._names[field] = _bulk(field)
        return bulk


def _pack_command(*args: str | bytes | int) -> bytes:
    """A command of small arguments as one RESP array (for the rare commands of a send)."""
    return b"*%d\r\n" % len(args) + b"".join(_bulk(_encoded(a)) for a in args)


class Transaction(Protocol):
    """The commands of one send, queued, then sent as one MULTI/EXEC by :meth:`execute`."""

    def xadd(
        self, key: str, fields: Mapping[bytes, Any], entry_id: str, *, nomkstream: bool
    ) -> None:
        """Queue ``XADD key [NOMKSTREAM] entry_id field value...``."""

    def exists(self, key: str) -> None:
        """Queue ``EXISTS key``."""

    def hexists(self, key: str, field: str) -> None:
        """Queue ``HEXISTS key field``."""

    def execute(self) -> list[Any]:
        """Send the transaction; return one reply per queued command.

        An error of a command inside EXEC is its reply (an exception object); a command
        refused when queued (EXECABORT) raises that refusal, and a network error that
        outlasts the connection's retry policy raises, as ``pipe.execute(raise_on_error=False)``
        of redis-py does.
        """


class PackedTransaction:
    """MULTI, the queued commands and EXEC, written at once on a connection of the pool.

    The connection is taken from ``client``'s pool for :meth:`execute` only, and given back
    either with every reply read or disconnected: a write or a read interrupted by anything
    (a network error, a timeout, an exception of another thread's signal handler) disconnects
    it, so that no later command reads this transaction's replies. A network error is retried
    on the same connection, reconnected, by its ``retry`` policy (the outage budget), as
    redis-py's pipeline does: the whole transaction is sent again.

    Parameters
    ----------
    client : redis.Redis
        A single server's client (not a cluster's: :func:`new_transaction` chooses).
    heads : CommandHeads
        The sender's cache of command heads.
    """

    __slots__ = ("_chunks", "_commands", "_heads", "_pool", "_small")

    def __init__(self, client: redis.Redis, heads: CommandHeads) -> None:
        self._pool = client.connection_pool
        self._heads = heads
        # Small pieces are joined into one buffer; large values and Scattered parts are
        # written from their own memory, between two such buffers.
        self._small: list[Any] = [_MULTI]
        self._chunks: list[Any] = []
        self._commands: list[str] = []  # what each queued command is, for error messages

    def _write_from(self, size: int, parts: list[Any]) -> None:
        """A bulk string of ``size`` bytes written from ``parts`` without copying them."""
        small = self._small
        small.append(b"$%d\r\n" % size)
        self._chunks.append(b"".join(small))
        self._chunks += parts
        self._small = [_CRLF]

    def xadd(
        self, key: str, fields: Mapping[bytes, Any], entry_id: str, *, nomkstream: bool
    ) -> None:
        heads = self._heads
        self._small += (heads.xadd(key, len(fields), nomkstream), _bulk(entry_id.encode()))
        for field, value in fields.items():
            self._small.append(heads.name(field))
            if type(value) is Scattered:
                self._write_from(value.nbytes, value.parts)
            elif len(value) > _BUFFER_CUTOFF:
                self._write_from(len(value), [memoryview(value)])
            else:
                self._small += (b"$%d\r\n" % len(value), value, _CRLF)
        self._commands.append(f"XADD {key} {entry_id}")

    def exists(self, key: str) -> None:
        self._small.append(_pack_command("EXISTS", key))
        self._commands.append(f"EXISTS {key}")

    def hexists(self, key: str, field: str) -> None:
        self._small.append(_pack_command("HEXISTS", key, field))
        self._commands.append(f"HEXISTS {key} {field}")

    def execute(self) -> list[Any]:
        chunks = [*self._chunks, b"".join([*self._small, _EXEC])]
        pool = self._pool
        conn: Any = pool.get_connection()  # redis-py's connections are partly untyped
        try:
            replies: list[Any] = conn.retry.call_with_retry(
                lambda: self._round_trip(conn, chunks), lambda _error: conn.disconnect()
            )
            return replies
        finally:
            pool.release(conn)

    def _round_trip(self, conn: Any, chunks: list[Any]) -> list[Any]:
        """Write the transaction, read its replies: one attempt."""
        try:
            conn.send_packed_command(chunks)
            queued: list[ResponseError] = []
            # Every reply is read before anything is raised: the connection stays in step.
            try:
                conn.read_response()  # MULTI: OK
            except ResponseError as exc:
                queued.append(exc)
            for number, command in enumerate(self._commands, 1):
                try:
                    conn.read_response()  # QUEUED
                except ResponseError as exc:
                    # Refused before it could run (OOM of Redis 7.0, a wrong argument):
                    # EXEC will abort the whole transaction.
                    exc.args = (
                        f"Command # {number} ({command}) of the transaction caused error: "
                        f"{exc.args[0]}",
                        *exc.args[1:],
                    )
                    queued.append(exc)
            try:
                replies = conn.read_response()
            except ExecAbortError:
                if queued:
                    raise queued[0] from None
                raise
        except ResponseError:
            raise  # a refusal, read in full: the connection is clean
        except BaseException:
            conn.disconnect()  # read_response and the write disconnect too; this is for the rest
            raise
        if not isinstance(replies, list) or len(replies) != len(self._commands):
            conn.disconnect()
            raise ResponseError(
                f"EXEC replied {replies!r} to a transaction of {len(self._commands)} commands"
            )
        return replies


class PipelinedTransaction:
    """The same commands through redis-py's ``pipeline(transaction=True)``: for a cluster.

    redis-py's cluster pipeline sends a transaction to the master of its slot (every key of
    a scan shares one, ``_protocol/keys.py``) and follows MOVED and ASK redirections; the
    store's cluster client retries it within the outage budget (``cluster.py``).
    """

    __slots__ = ("_pipe",)

    def __init__(self, client: redis.Redis) -> None:
        self._pipe = client.pipeline(transaction=True)

    def xadd(
        self, key: str, fields: Mapping[bytes, Any], entry_id: str, *, nomkstream: bool
    ) -> None:
        # Our fields hold bytes and Scattered values, which the connection's packer writes.
        self._pipe.xadd(key, fields, id=entry_id, nomkstream=nomkstream)  # type: ignore[arg-type]

    def exists(self, key: str) -> None:
        self._pipe.exists(key)

    def hexists(self, key: str, field: str) -> None:
        self._pipe.hexists(key, field)

    def execute(self) -> list[Any]:
        return self._pipe.execute(raise_on_error=False)


def new_transaction(client: redis.Redis, heads: CommandHeads) -> Transaction:
    """An empty transaction on ``client``: packed here for a server, redis-py's for a cluster."""
    if isinstance(client, RedisCluster):
        return PipelinedTransaction(client)
    return PackedTransaction(client, heads)
