"""Scatter packing and vectored writes (scanstream._transport.vectored), and entries sent that way read back."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import numpy as np
import pytest
from redis.connection import Encoder, PythonRespSerializer
from redis.exceptions import DataError

from scanstream import DataStore, Settings, create_session, get_session_node
from scanstream._transport.server import EmbeddedServer
from scanstream._transport.vectored import (
    Scattered,
    ScatterPacker,
    VectoredConnection,
    VectoredUnixConnection,
    _send_all,
    vectored_connection_class,
)

_ENCODE = Encoder("utf-8", "strict", False).encode


def _joined(chunks: list) -> bytes:
    return b"".join(bytes(c) for c in chunks)


def test_scattered_value_packs_like_the_joined_value() -> None:
    parts = [np.arange(n, dtype="<f8") for n in (1, 1000, 0, 7)]
    whole = b"".join(p.tobytes() for p in parts)
    big = b"x" * 10_000  # above the cutoff: sent as its own chunk by both packers
    args = ("XADD", "k:{a}", "5-1", b"n", b"1008", b"d", None, b"big", big)
    expected = PythonRespSerializer(6000, _ENCODE).pack(*(whole if a is None else a for a in args))
    packed = ScatterPacker(6000).pack(*(Scattered(parts) if a is None else a for a in args))
    assert _joined(packed) == _joined(expected)
    # The parts go out as they are, never copied into a joined buffer.
    assert sum(isinstance(c, memoryview) and c.obj is p for c in packed for p in parts) == 4


@pytest.mark.parametrize(
    "args",
    [
        ("SET", "key", b"v" * 7000),  # above the cutoff: its own chunk
        ("EVALSHA", "f" * 40, 2, "scan:{a}", b"lease", 500, -3, 2**70, 1.5, float("nan")),
        ("HSET", "h", "clé", "текст", b"\xff\x00", bytearray(b"ba"), memoryview(b"mv")),
        ("CONFIG GET", "maxmemory"),  # a command name of two words is split
        (b"CLIENT SETNAME", b"n"),
        tuple(["XADD", "s", "*"] + [f"f{i}" for i in range(3000)]),  # many small values
    ],
)
def test_commands_without_scattered_values_pack_as_redis_py_does(args: tuple) -> None:
    # The same bytes, or the same refusal (redis-py 7.2 refuses a bytearray, 8.x takes it).
    assert _packed_or_refused(ScatterPacker(6000), args) == _packed_or_refused(
        PythonRespSerializer(6000, _ENCODE), args
    )


def _packed_or_refused(packer: PythonRespSerializer, args: tuple) -> bytes | str:
    try:
        return _joined(packer.pack(*args))
    except DataError as exc:
        return f"refused: {exc}"


@pytest.mark.parametrize("bad", [True, None, object(), 1 + 2j])
def test_arguments_redis_py_refuses_are_refused_as_it_does(bad: object) -> None:
    with pytest.raises(DataError) as ours:
        ScatterPacker(6000).pack("SET", "key", bad)
    with pytest.raises(DataError) as theirs:
        PythonRespSerializer(6000, _ENCODE).pack("SET", "key", bad)
    assert str(ours.value) == str(theirs.value)


@pytest.mark.timeout(30)
def test_send_all_writes_every_buffer_in_order_across_partial_writes() -> None:
    rng = np.random.default_rng(3)
    # More buffers than one sendmsg takes, of sizes around the socket buffer's: many writes
    # end inside a buffer and the next one must resume at the right byte.
    chunks: list = [
        rng.integers(0, 256, int(n), dtype=np.uint8).tobytes() for n in rng.integers(0, 9000, 2500)
    ]
    chunks[5] = memoryview(np.arange(3000, dtype="<f8"))  # a multi-byte-item view
    expected = _joined(chunks)
    sender, receiver = socket.socketpair()
    received = bytearray()

    def read() -> None:
        while len(received) < len(expected):
            data = receiver.recv(3001)
            if not data:
                return
            received.extend(data)

    reader = threading.Thread(target=read)
    try:
        sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sender.settimeout(10)  # as redis-py's sockets: non-blocking underneath, partial writes
        receiver.settimeout(10)
        reader.start()
        _send_all(sender, chunks)
        reader.join(20)
    finally:
        sender.close()
        receiver.close()
        reader.join(5)
    assert not reader.is_alive()
    assert bytes(received) == expected


def test_connection_class_follows_the_url_scheme() -> None:
    assert vectored_connection_class("redis://127.0.0.1:1") is VectoredConnection
    assert vectored_connection_class("unix:///tmp/x.sock") is VectoredUnixConnection
    assert vectored_connection_class("rediss://host:6380") is None  # TLS: redis-py's own


def _publish_and_read_back(store: DataStore) -> None:
    rng = np.random.default_rng(11)
    batches = [rng.normal(size=(1000,)) for _ in range(40)]
    spectra = [rng.normal(size=(3, 512)).astype("float32") for _ in range(40)]
    session = create_session("resp", store=store)
    with session.create_scan("s") as scan:
        top = scan.create_container("t")
        c0d = top.create_channel("c0d", "float64")
        c1d = top.create_channel("c1d", "float32", (512,))
        for b, s in zip(batches, spectra):
            c0d.emit(b)
            c1d.emit(s)
    scan_node = get_session_node("resp", store=store).get_scan(scan.number)
    nodes = {n.name: n for n in scan_node.load_nodes() if n.name in ("c0d", "c1d")}
    assert nodes["c0d"].get(0, -1).tobytes() == np.concatenate(batches).tobytes()
    assert nodes["c1d"].get(0, -1).tobytes() == np.concatenate(spectra).tobytes()
    # Several emits went into one entry: the entries were sent scattered.
    key = store.keys.scan_data("resp", scan.number, nodes["c0d"].index)
    assert store.redis.xlen(key) < len(batches)


def test_scattered_entries_read_back_exactly_over_tcp(store: DataStore) -> None:
    assert store.redis.connection_pool.connection_class is VectoredConnection
    _publish_and_read_back(store)


@pytest.mark.timeout(60)
def test_scattered_entries_read_back_exactly_over_a_unix_socket(
    server_binary: Path, tmp_path: Path
) -> None:
    server = EmbeddedServer(tmp_path / "srv")
    server.start(timeout=10)
    try:
        store = DataStore(settings=Settings(redis_url=server.url))
        try:
            assert store.redis.connection_pool.connection_class is VectoredUnixConnection
            _publish_and_read_back(store)
        finally:
            store.close()
    finally:
        server.stop()


def test_entries_are_joined_when_the_connection_cannot_write_vectors(store: DataStore) -> None:
    session = create_session("join", store=store)
    batches = [np.arange(1000.0), np.arange(1000.0, 2000.0)]
    with session.create_scan("s") as scan:
        channel = scan.create_container("t").create_channel("c", "float64")
        assert isinstance(channel._queue.entry(batches)[b"d"], Scattered)
    store.scatter_writes = False  # as over TLS: redis-py's own connection class
    with session.create_scan("s") as scan:
        channel = scan.create_container("t").create_channel("c", "float64")
        assert channel._queue.entry(batches)[b"d"] == np.arange(2000.0).tobytes()
    _publish_and_read_back(store)
