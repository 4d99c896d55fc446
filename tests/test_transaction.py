"""The publisher's packed MULTI/EXEC (scanstream._transport.transaction) on real servers.

Replies and errors against redis-py's own pipeline on the same server; faults through a real
TCP relay (a connection cut in the middle of a transaction, a reply lost after EXEC) and on a
real server process frozen (SIGSTOP) or killed during a send.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from list_queue import ListQueue
from redis.backoff import NoBackoff
from redis.connection import Encoder, PythonRespSerializer
from redis.retry import Retry

from scanstream import DataStore, Settings
from scanstream._transport.connection import _COMMAND_PACKER
from scanstream._transport.errors import is_duplicate_id, is_out_of_memory
from scanstream._transport.retry import default_retry
from scanstream._transport.server import EmbeddedServer
from scanstream._transport.transaction import (
    _EXEC,
    CommandHeads,
    PackedTransaction,
    PipelinedTransaction,
)
from scanstream._transport.vectored import Scattered, VectoredConnection
from scanstream.publish.sender import Sender

_ENCODE = Encoder("utf-8", "strict", False).encode


def _client(port: int, **options: Any) -> redis.Redis:
    """A client of the store's kind (vectored writes, the store's packer), short timeouts."""
    options.setdefault("socket_timeout", 5)
    options.setdefault("retry", Retry(NoBackoff(), 0))
    return redis.Redis.from_url(
        f"redis://127.0.0.1:{port}",
        socket_connect_timeout=5,
        connection_class=VectoredConnection,
        command_packer=_COMMAND_PACKER,
        **options,
    )


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def _wire(txn: PackedTransaction) -> bytes:
    """The bytes :meth:`PackedTransaction.execute` writes."""
    return b"".join(bytes(c) for c in [*txn._chunks, *txn._small, _EXEC])


def _queue_the_same(txns: list[Any], key: str) -> None:
    """A send's commands: a new stream, entries after it, a missing stream, the scan checks."""
    for txn in txns:
        txn.xadd(key, {b"n": b"1", b"d": b"\x01" * 8}, "0-1", nomkstream=False)
        txn.xadd(key, {b"n": b"2", b"d": Scattered([b"ab", b"cd"])}, "1-1", nomkstream=True)
        txn.xadd(f"{key}:gone", {b"n": b"1", b"d": b"x"}, "3-1", nomkstream=True)
        txn.exists(key)
        txn.hexists(f"{key}:scan", "lost")


# ------------------------------------------------------------------ packing


def test_the_transaction_packs_as_redis_py_does_and_sends_parts_as_they_are() -> None:
    parts = [np.arange(n, dtype="<f8") for n in (1, 1000, 0, 7)]
    big = b"y" * 10_000  # above the cutoff: written from its own memory
    txn = PackedTransaction(redis.Redis(), CommandHeads())
    txn.xadd("k:{a}", {b"n": b"1008", b"d": Scattered(parts), b"big": big}, "5-1", nomkstream=True)
    txn.xadd("k:{a}", {b"n": b"1", b"d": b"z"}, "1013-1", nomkstream=False)
    txn.exists("scan:{a}")
    txn.hexists("scan:{a}", "lost")
    whole = b"".join(p.tobytes() for p in parts)
    packer = PythonRespSerializer(6000, _ENCODE)
    commands = [
        ("MULTI",),
        ("XADD", "k:{a}", "NOMKSTREAM", "5-1", b"n", b"1008", b"d", whole, b"big", big),
        ("XADD", "k:{a}", "1013-1", b"n", b"1", b"d", b"z"),
        ("EXISTS", "scan:{a}"),
        ("HEXISTS", "scan:{a}", "lost"),
        ("EXEC",),
    ]
    expected = b"".join(bytes(c) for cmd in commands for c in packer.pack(*cmd))
    assert _wire(txn) == expected
    # Scattered parts and the large value go out from their own memory, never joined.
    chunks = txn._chunks
    assert sum(isinstance(c, memoryview) and c.obj is p for c in chunks for p in parts) == 4
    assert any(isinstance(c, memoryview) and c.obj is big for c in chunks)


def test_heads_are_built_once_per_shape() -> None:
    heads = CommandHeads()
    first = heads.xadd("k", 2, True)
    assert heads.xadd("k", 2, True) is first
    assert heads.xadd("k", 2, False) != first and heads.xadd("k2", 2, True) != first


# ------------------------------------------------------------------ replies and errors


def test_replies_are_redis_py_pipeline_replies(store: DataStore) -> None:
    packed = PackedTransaction(store.redis, CommandHeads())
    piped = PipelinedTransaction(store.redis)
    _queue_the_same([packed], "p:{s}")
    _queue_the_same([piped], "r:{s}")
    ours, theirs = packed.execute(), piped.execute()
    assert ours == [b"0-1", b"1-1", None, 1, 0]
    # redis-py turns HEXISTS into a bool: the sender only tests its truth.
    assert [int(r) if isinstance(r, bool) else r for r in theirs] == ours
    assert store.redis.xrange("p:{s}") == store.redis.xrange("r:{s}")
    assert store.redis.xrange("p:{s}")[1] == (b"1-1", {b"n": b"2", b"d": b"abcd"})
    assert not store.redis.exists("p:{s}:gone")


def test_an_error_inside_exec_is_its_reply_and_the_rest_is_applied(store: DataStore) -> None:
    store.redis.set("p:{s}:gone", b"not a stream")
    store.redis.set("r:{s}:gone", b"not a stream")
    packed = PackedTransaction(store.redis, CommandHeads())
    piped = PipelinedTransaction(store.redis)
    _queue_the_same([packed], "p:{s}")
    _queue_the_same([piped], "r:{s}")
    ours, theirs = packed.execute(), piped.execute()
    assert type(ours[2]) is type(theirs[2]) is redis.exceptions.ResponseError
    assert str(ours[2]).startswith("WRONGTYPE") and str(ours[2]) == str(theirs[2])
    assert ours[:2] == [b"0-1", b"1-1"] and store.redis.xlen("p:{s}") == 2
    # A duplicate ID inside EXEC: the replay the sender recognises.
    again = PackedTransaction(store.redis, CommandHeads())
    again.xadd("p:{s}", {b"n": b"1", b"d": b"x"}, "1-1", nomkstream=True)
    (duplicate,) = again.execute()
    assert is_duplicate_id(duplicate) and not is_out_of_memory(duplicate)
    assert store.redis.ping()  # the pool's connection is in step


def test_a_refusal_at_queue_time_aborts_the_transaction_and_raises_it(store: DataStore) -> None:
    packed = PackedTransaction(store.redis, CommandHeads())
    piped = PipelinedTransaction(store.redis)
    for txn, key in ((packed, "p:{s}"), (piped, "r:{s}")):
        txn.xadd(key, {b"n": b"1"}, "0-1", nomkstream=False)
    # XADD without fields: refused when queued (redis-py's xadd refuses it before sending)
    packed.xadd("p:{s}", {}, "1-1", nomkstream=True)
    piped._pipe.execute_command("XADD", "r:{s}", "NOMKSTREAM", "1-1")
    with pytest.raises(redis.exceptions.ResponseError) as ours:
        packed.execute()
    with pytest.raises(redis.exceptions.ResponseError) as theirs:
        piped.execute()
    assert type(ours.value) is type(theirs.value)
    assert "Command # 2 (XADD p:{s} 1-1) of the transaction" in str(ours.value)
    assert "wrong number of arguments" in str(ours.value)
    assert not store.redis.exists("p:{s}") and not store.redis.exists("r:{s}")  # none applied
    assert store.redis.get("nothing") is None  # the pool's connection is in step


@pytest.fixture
def server(private_server: EmbeddedServer) -> EmbeddedServer:
    """A private server for one test (tests here freeze and kill it)."""
    return private_server


def test_a_full_server_is_recognised_at_queue_time_or_at_exec(
    any_server_binary: Path, tmp_path: Path, free_tcp_port: int
) -> None:
    # Redis 7.0 refuses a write past maxmemory when it is queued, Valkey at EXEC.
    srv = EmbeddedServer(
        tmp_path / "full", port=free_tcp_port, maxmemory="2mb", binary=any_server_binary
    )
    srv.start(timeout=10)
    client = _client(free_tcp_port)
    try:
        with pytest.raises(redis.exceptions.ResponseError):
            for i in range(100):
                client.set(f"k{i}", b"x" * 100_000)
        txn = PackedTransaction(client, CommandHeads())
        txn.xadd("s", {b"n": b"1", b"d": b"x" * 100_000}, "0-1", nomkstream=False)
        with pytest.raises(redis.exceptions.ResponseError) as info:
            txn.execute()
        assert is_out_of_memory(info.value) and not is_duplicate_id(info.value)
        assert client.ping()
    finally:
        client.close()
        srv.stop()


def test_a_resp3_connection_gets_the_same_replies(store: DataStore, redis_url: str) -> None:
    # The store speaks RESP2 only (protocol=3 is refused in its URL); a RESP3 client of the
    # same server parses these replies to the same values.
    client = _client(_port(redis_url), protocol=3)
    try:
        resp3 = PackedTransaction(client, CommandHeads())
        resp2 = PackedTransaction(store.redis, CommandHeads())
        _queue_the_same([resp3], "p:{s}")
        _queue_the_same([resp2], "r:{s}")
        assert resp3.execute() == resp2.execute() == [b"0-1", b"1-1", None, 1, 0]
    finally:
        client.close()


# ------------------------------------------------------------------ faults


class _Relay:
    """A TCP relay to a server on 127.0.0.1, one thread per connection.

    ``cut_after(n)``: the next bytes from a client are forwarded up to ``n`` of them, then
    both sides are closed (a connection lost in the middle of a write). ``drop_next_reply()``:
    the next bytes from the server are not forwarded and both sides are closed (the reply of
    an applied transaction lost).
    """

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._cut: int | None = None
        self._drop = False
        self.faults = 0
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def cut_after(self, nbytes: int) -> None:
        self._cut = nbytes

    def drop_next_reply(self) -> None:
        self._drop = True

    def close(self) -> None:
        self._closed.set()
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        try:
            while not self._closed.is_set():
                readable, _, _ = select.select([client, server], [], [], 0.1)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if sock is client:
                        if self._cut is not None:
                            server.sendall(data[: self._cut])
                            self._cut = None
                            self.faults += 1
                            return
                        server.sendall(data)
                    else:
                        if self._drop:
                            self._drop = False
                            self.faults += 1
                            return
                        client.sendall(data)
        except OSError:
            return
        finally:
            client.close()
            server.close()


@pytest.fixture
def relay(redis_server_url: str, redis_url: str) -> Iterator[_Relay]:
    """A relay to the session's (flushed) server."""
    through = _Relay(_port(redis_url))
    try:
        yield through
    finally:
        through.close()


def _budget_client(port: int) -> redis.Redis:
    return _client(port, retry=default_retry(10.0))


@pytest.mark.timeout(30)
def test_a_connection_cut_mid_write_is_resent_and_applied_once(relay: _Relay) -> None:
    client = _budget_client(relay.port)
    try:
        assert client.ping()  # a connection of the pool, connected through the relay
        txn = PackedTransaction(client, CommandHeads())
        for i in range(10):
            txn.xadd("c:{s}", {b"n": b"1", b"d": b"%d" % i}, f"{i}-1", nomkstream=i > 0)
        relay.cut_after(len(_wire(txn)) // 2)  # the server gets half a MULTI ... EXEC
        assert txn.execute() == [b"%d-1" % i for i in range(10)]
        assert relay.faults == 1
        assert [e[0] for e in client.xrange("c:{s}")] == [b"%d-1" % i for i in range(10)]
    finally:
        client.close()


@pytest.mark.timeout(30)
def test_a_lost_reply_is_resent_and_seen_as_duplicates(relay: _Relay) -> None:
    client = _budget_client(relay.port)
    try:
        assert client.ping()
        txn = PackedTransaction(client, CommandHeads())
        txn.xadd("l:{s}", {b"n": b"1", b"d": b"a"}, "0-1", nomkstream=False)
        txn.xadd("l:{s}", {b"n": b"1", b"d": b"b"}, "1-1", nomkstream=True)
        relay.drop_next_reply()
        replies = txn.execute()
        assert relay.faults == 1
        assert all(is_duplicate_id(r) for r in replies), replies  # applied by the first attempt
        assert client.xlen("l:{s}") == 2
    finally:
        client.close()


@pytest.mark.timeout(30)
def test_the_sender_counts_a_send_whose_reply_was_lost_once(relay: _Relay) -> None:
    store = DataStore(settings=Settings(redis_url=f"redis://127.0.0.1:{relay.port}"))
    try:
        sender = Sender(store, "lease", "relayed")
        queues = [ListQueue(f"relayed:{{s}}:{i}", sender) for i in range(3)]
        for queue in queues:
            sender.add(queue)
            queue.put(b"a")
        assert sender.send(raise_errors=True)
        for queue in queues:
            queue.put(b"b")
            queue.put(b"c")
        relay.drop_next_reply()
        assert sender.send(raise_errors=True)
        assert relay.faults == 1
        for queue in queues:
            assert queue.sent == 3 and not queue.pending
            assert store.redis.xrange(queue.key) == [
                (b"0-1", {b"n": b"1", b"d": b"a"}),
                (b"1-1", {b"n": b"2", b"d": b"bc"}),
            ]
    finally:
        store.close()


def _pool_connections(client: redis.Redis) -> list[Any]:
    pool: Any = client.connection_pool
    return list(pool._available_connections) + list(pool._in_use_connections)


@pytest.mark.timeout(30)
def test_a_frozen_server_times_out_and_the_connection_is_not_reused(
    server: EmbeddedServer,
) -> None:
    assert server.pid is not None and server.port is not None
    client = _client(server.port, socket_timeout=0.5)
    try:
        client.set("k", b"v")
        txn = PackedTransaction(client, CommandHeads())
        txn.xadd("f:{s}", {b"n": b"1", b"d": b"a"}, "0-1", nomkstream=False)
        os.kill(server.pid, signal.SIGSTOP)
        try:
            with pytest.raises(redis.exceptions.TimeoutError):
                txn.execute()
            (conn,) = _pool_connections(client)
            assert conn._sock is None  # disconnected before it went back: no unread replies
        finally:
            os.kill(server.pid, signal.SIGCONT)
        assert client.get("k") == b"v"  # its own reply, not the transaction's
    finally:
        client.close()


class _Interrupted(Exception):
    """Raised by a signal handler in the middle of a read."""


@pytest.mark.timeout(30)
def test_a_read_interrupted_by_an_exception_disconnects(server: EmbeddedServer) -> None:
    assert server.pid is not None and server.port is not None
    client = _client(server.port)
    previous = signal.getsignal(signal.SIGALRM)

    def interrupt(signum: int, frame: Any) -> None:
        raise _Interrupted

    signal.signal(signal.SIGALRM, interrupt)
    try:
        client.set("k", b"v")
        txn = PackedTransaction(client, CommandHeads())
        txn.xadd("i:{s}", {b"n": b"1", b"d": b"a"}, "0-1", nomkstream=False)
        os.kill(server.pid, signal.SIGSTOP)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.3)  # while it waits for the replies
            with pytest.raises(_Interrupted):
                txn.execute()
            (conn,) = _pool_connections(client)
            assert conn._sock is None
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            os.kill(server.pid, signal.SIGCONT)
        # The server runs the transaction it had received, but nobody reads those replies.
        assert client.get("k") == b"v"
        deadline = time.monotonic() + 5
        while not client.exists("i:{s}") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert client.xlen("i:{s}") == 1
    finally:
        signal.signal(signal.SIGALRM, previous)
        client.close()


@pytest.mark.timeout(60)
def test_a_server_killed_mid_send_and_restarted_gets_the_transaction_once(
    server: EmbeddedServer,
) -> None:
    assert server.pid is not None and server.port is not None
    client = _client(server.port, socket_timeout=2, retry=default_retry(20.0))
    try:
        assert client.ping()
        txn = PackedTransaction(client, CommandHeads())
        for i in range(5):
            txn.xadd("k:{s}", {b"n": b"1", b"d": b"%d" % i}, f"{i}-1", nomkstream=i > 0)
        pid = server.pid
        os.kill(pid, signal.SIGSTOP)  # the transaction reaches a server that never answers
        result: list[Any] = []
        sending = threading.Thread(target=lambda: result.append(txn.execute()), daemon=True)
        sending.start()
        time.sleep(0.3)
        os.kill(pid, signal.SIGKILL)
        server.stop()  # reaps it (waiting on server.pid would not end: it reads the pidfile)
        server.start(timeout=10)  # empty: no persistence
        sending.join(30)
        assert not sending.is_alive() and result == [[b"%d-1" % i for i in range(5)]]
        assert client.xlen("k:{s}") == 5
    finally:
        client.close()


@pytest.mark.timeout(60)
def test_a_tls_server_gets_the_same_entries(
    redis70_binary: Path, tmp_path: Path, free_tcp_port: int
) -> None:
    # Over TLS the connections are redis-py's own (no sendmsg): they write the packed
    # buffers one by one, large values from their own memory. (The bundled server has no
    # TLS; Debian's Redis 7.0 has.)
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem"),
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    server = subprocess.Popen(
        [str(redis70_binary), "--port", "0", "--tls-port", str(free_tcp_port)]
        + ["--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)]
        + [
            "--tls-cert-file",
            str(tmp_path / "cert.pem"),
            "--tls-key-file",
            str(tmp_path / "key.pem"),
        ]
        + ["--tls-ca-cert-file", str(tmp_path / "cert.pem"), "--tls-auth-clients", "no"],
        stdout=subprocess.DEVNULL,
    )
    url = f"rediss://127.0.0.1:{free_tcp_port}?ssl_ca_certs={tmp_path / 'cert.pem'}"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                store = DataStore(settings=Settings(redis_url=url, max_unreachable_time=2.0))
                break
            except redis.exceptions.ConnectionError:
                assert time.monotonic() < deadline, "the TLS server did not start"
                time.sleep(0.1)
        try:
            assert not store.scatter_writes
            sender = Sender(store, "lease", "tls")
            small, large = ListQueue("tls:{s}:small", sender), ListQueue("tls:{s}:large", sender)
            for queue, point in ((small, b"a"), (large, b"x" * 20_000)):
                sender.add(queue)
                queue.put(point)
                queue.put(point)
            assert sender.send(raise_errors=True)
            assert store.redis.xrange(small.key) == [(b"0-1", {b"n": b"2", b"d": b"aa"})]
            assert store.redis.xrange(large.key) == [(b"0-1", {b"n": b"2", b"d": b"x" * 40_000})]
        finally:
            store.close()
    finally:
        server.terminate()
        server.wait(10)
