"""The sender behind its queue protocol, and the Redis error texts it relies on, on real servers."""

from __future__ import annotations

import ast
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from list_queue import ListQueue
from redis.backoff import AbstractBackoff, ConstantBackoff, NoBackoff
from redis.retry import Retry

import scanstream.publish
from scanstream import DataStore, RedisFullError, ScanEndedError, Settings, create_session
from scanstream._transport.errors import is_duplicate_id, is_out_of_memory, restate
from scanstream._transport.server import EmbeddedServer
from scanstream.publish.sender import _FAILED_SEND_BACKOFF, _MAX_COUNTED_FAILURES, Sender


@pytest.fixture
def private_server(
    server_binary: Path, tmp_path: Path, free_tcp_port: int
) -> Iterator[EmbeddedServer]:
    srv = EmbeddedServer(tmp_path / "redis", port=free_tcp_port)
    srv.start(timeout=10)
    try:
        yield srv
    finally:
        srv.stop()


def test_the_sender_sends_any_queue_with_point_index_ids(store: DataStore) -> None:
    sender = Sender(store, "lease-of-nothing", "plain")
    queue = ListQueue("plain:data", sender)
    sender.add(queue)
    for point in (b"a", b"b", b"c"):
        queue.put(point)
    assert sender.send(raise_errors=True)
    queue.put(b"d")
    assert sender.send(raise_errors=True)
    assert queue.sent == 4 and sender.queued == 0
    entries = store.redis.xrange(queue.key)
    assert entries == [(b"0-1", {b"n": b"3", b"d": b"abc"}), (b"3-1", {b"n": b"1", b"d": b"d"})]


def test_another_entry_at_the_same_id_is_an_error_not_a_replay(store: DataStore) -> None:
    sender = Sender(store, "lease-of-nothing", "twice")
    queue = ListQueue("twice:data", sender)
    sender.add(queue)
    store.redis.xadd(queue.key, {b"n": b"2", b"d": b"xy"}, id="0-1")  # another publisher's
    queue.put(b"a")
    with pytest.raises(
        redis.exceptions.ResponseError,
        match=r"did not write \(entry 0-1, the ID of its next entry\): another process",
    ):
        sender.send(raise_errors=True)
    assert queue.pending == [b"a"] and queue.sent == 0  # kept queued
    assert isinstance(sender.error, redis.exceptions.ResponseError) and sender.refusing


def test_stop_interrupts_the_pause_after_a_failed_send(private_server: EmbeddedServer) -> None:
    settings = Settings(
        redis_url=private_server.url,
        retry=Retry(NoBackoff(), 0),
        max_unreachable_time=600.0,
        lease_time=600.0,
    )
    store = DataStore(settings=settings)
    try:
        sender = Sender(store, "lease", "paused", backoff=ConstantBackoff(60.0))
        queue = ListQueue("paused:data", sender)
        sender.add(queue)
        sender.start()
        private_server.stop()
        queue.put(b"a")
        sender.wake.set()
        deadline = time.monotonic() + 10
        # A network error: the send may have been applied, so its batches are held to be
        # resent as they were (not given back to the queue, to be merged with later points).
        while sender._unconfirmed is None:
            assert time.monotonic() < deadline, "the send did not fail"
            time.sleep(0.01)
        time.sleep(0.05)  # into the 60 s pause
        started = time.monotonic()
        sender.stop()
        assert time.monotonic() - started < 5.0
        assert sender.stopped and sender.refusing and sender._unconfirmed == [(queue, [b"a"])]
        assert sender.queued == 1
    finally:
        store.close()


class _RecordingBackoff(AbstractBackoff):
    """The sender's default pauses, computed and recorded, but not waited (0 s)."""

    def __init__(self) -> None:
        self.counts: list[int] = []
        self.delays: list[float] = []

    def reset(self) -> None:
        pass

    def compute(self, failures: int) -> float:
        self.counts.append(failures)
        # What the default backoff would wait: an OverflowError here ends the sender's thread.
        self.delays.append(_FAILED_SEND_BACKOFF.compute(failures))
        return 0.0


def test_the_sender_survives_thousands_of_failed_sends(private_server: EmbeddedServer) -> None:
    # 2 ** failures overflows a float after about 1000 failures (a server full or away for
    # minutes): the count given to the backoff must stay bounded, the thread alive.
    settings = Settings(
        redis_url=private_server.url,
        retry=Retry(NoBackoff(), 0),
        max_unreachable_time=600.0,
        lease_time=600.0,
    )
    store = DataStore(settings=settings)
    backoff = _RecordingBackoff()
    sender = Sender(store, "lease", "failing", backoff=backoff)
    try:
        queue = ListQueue("failing:data", sender)
        sender.add(queue)
        sender.start()
        private_server.stop()
        queue.put(b"a")
        sender.wake.set()
        wanted = 20 * _MAX_COUNTED_FAILURES  # 1280 consecutive failures, past the overflow
        deadline = time.monotonic() + 120
        while len(backoff.counts) < wanted and time.monotonic() < deadline:
            assert sender._loop.thread is not None and sender._loop.thread.is_alive()
            time.sleep(0.05)
        assert len(backoff.counts) >= wanted, f"only {len(backoff.counts)} failed sends in 120 s"
        assert sender._loop.thread is not None and sender._loop.thread.is_alive()
        assert max(backoff.counts) == _MAX_COUNTED_FAILURES
        assert backoff.counts[:3] == [1, 2, 3]  # consecutive failures are counted
        assert all(0.0 < d <= 0.2 for d in backoff.delays), max(backoff.delays)
        assert not sender.fatal and queue.sent == 0 and sender.queued == 1  # kept, not dropped
        # Still the same sender: once the server is back, the queued point goes out.
        private_server.start(timeout=10)
        sender.wake.set()
        deadline = time.monotonic() + 30
        while queue.sent == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert queue.sent == 1
        assert store.redis.xrange(queue.key) == [(b"0-1", {b"n": b"1", b"d": b"a"})]
    finally:
        sender.stop()
        store.close()


def test_a_refused_send_refuses_emits_and_end_sends_the_rest(store: DataStore) -> None:
    # A key of another type where the data stream should be: every send is refused.
    scan = create_session("refused", store=store).create_scan("s")
    channel = scan.create_container("timer").create_channel("c")
    store.redis.set(channel.key, b"not a stream")
    channel.emit(1.0)
    deadline = time.monotonic() + 10
    while not scan._sender.refusing and time.monotonic() < deadline:  # the thread's first failure
        time.sleep(0.01)
    with pytest.raises(redis.exceptions.ResponseError, match="refused:1_s: Redis refused its data"):
        channel.emit(2.0)
    store.redis.delete(channel.key)
    scan.end("FAILED", error="test")
    assert scan.state.name == "FAILED"
    assert store.redis.xrange(channel.key)[0] == (
        b"0-1",
        {b"n": b"1", b"d": np.float64(1.0).tobytes()},
    )
    with pytest.raises(ScanEndedError, match="has ended"):
        channel.emit(3.0)


# ------------------------------------------------------------------ the error texts we match


def test_xadd_below_the_top_is_recognised_as_a_duplicate_id(store: DataStore) -> None:
    store.redis.xadd("s", {b"n": b"1"}, id="5-1")
    with pytest.raises(redis.exceptions.ResponseError) as info:
        store.redis.xadd("s", {b"n": b"1"}, id="5-1")
    assert is_duplicate_id(info.value)
    pipe = store.redis.pipeline(transaction=True)
    pipe.xadd("s", {b"n": b"1"}, id="3-1")
    (result,) = pipe.execute(raise_on_error=False)  # as the sender sees it
    assert is_duplicate_id(result) and not is_out_of_memory(result)
    store.redis.set("k", b"v")
    with pytest.raises(redis.exceptions.ResponseError) as other:
        store.redis.xadd("k", {b"n": b"1"})
    assert not is_duplicate_id(other.value) and not is_out_of_memory(other.value)


def test_a_full_server_is_recognised_inside_a_transaction(
    server_binary: Path, tmp_path: Path, free_tcp_port: int
) -> None:
    srv = EmbeddedServer(tmp_path / "full", port=free_tcp_port, maxmemory="2mb")
    srv.start(timeout=10)
    client = redis.Redis.from_url(srv.url)
    try:
        with pytest.raises(redis.exceptions.ResponseError) as info:
            for i in range(100):
                client.set(f"k{i}", b"x" * 100_000)
        assert is_out_of_memory(info.value)
        pipe = client.pipeline(transaction=True)
        pipe.xadd("s", {b"d": b"x" * 100_000}, id="0-1")
        with pytest.raises(redis.exceptions.ResponseError) as in_transaction:
            pipe.execute(raise_on_error=False)
        assert is_out_of_memory(in_transaction.value) and not is_duplicate_id(in_transaction.value)
    finally:
        client.close()
        srv.stop()


def test_the_publisher_reports_a_full_server_as_redis_full(
    server_binary: Path, tmp_path: Path, free_tcp_port: int
) -> None:
    srv = EmbeddedServer(tmp_path / "full", port=free_tcp_port, maxmemory="4mb")
    srv.start(timeout=10)
    store = DataStore(settings=Settings(redis_url=srv.url))
    try:
        scan = create_session("full", store=store).create_scan("s")
        channel = scan.create_container("t").create_channel("c", shape=(1000,))
        with pytest.raises(RedisFullError, match="full:1_s"):
            for _ in range(100):
                channel.emit(np.ones((10, 1000)))
                scan.flush()
        scan.end("FAILED", error="full")
        assert scan.state.name == "FAILED"
    finally:
        store.close()
        srv.stop()


class _PickyError(redis.exceptions.ResponseError):
    """An error class whose constructor does not take a message."""

    def __init__(self, code: int, text: str) -> None:
        self.code = code
        super().__init__(f"{code}: {text}")


def test_restate_keeps_the_class_and_attributes_without_calling_the_constructor() -> None:
    error = _PickyError(7, "refused")
    out = restate(error, "scan x: Redis refused its data: 7: refused")
    assert type(out) is _PickyError and out.code == 7
    assert str(out) == "scan x: Redis refused its data: 7: refused" and out.__cause__ is error


# ------------------------------------------------------------------ the package's structure


def test_publish_modules_import_downward_only() -> None:
    """session -> scan -> nodes, announcement, saving, scan_info -> channels -> sender ->
    send_loop, send_transaction at run time; back-references are type-only."""
    order = [
        "session",
        "scan",
        "nodes",
        "announcement",
        "saving",
        "scan_info",
        "channels",
        "sender",
        "send_loop",
        "send_transaction",
    ]
    folder = Path(scanstream.publish.__file__).parent
    for position, name in enumerate(order):
        tree = ast.parse((folder / f"{name}.py").read_text())
        type_only = {
            id(node)
            for block in ast.walk(tree)
            if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
            for node in ast.walk(block)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and id(node) not in type_only:
                assert node.module in order[position + 1 :], f"{name} imports .{node.module}"


def test_a_queue_announced_twice_is_sent_once_in_order(store: DataStore) -> None:
    sender = Sender(store, "lease-of-nothing", "twice-ready")
    queue = ListQueue("twice-ready:data", sender)
    sender.add(queue)
    queue.put(b"a")
    sender.ready(queue)  # as if it had been taken and filled again meanwhile
    queue.put(b"b")
    assert sender.send(raise_errors=True)
    assert store.redis.xrange(queue.key) == [(b"0-1", {b"n": b"2", b"d": b"ab"})]
    assert queue.sent == 2


def test_a_send_touches_only_the_channels_with_points(session: Any) -> None:
    scan = session.create_scan("idle", {})
    timer = scan.create_container("timer")
    channels = [timer.create_channel(f"c{i}") for i in range(300)]
    scan.prepared()
    takes = [0] * len(channels)
    for i, channel in enumerate(channels):
        queue = channel._queue
        take = queue.take

        def counted(i: int = i, take: Any = take) -> list[Any]:
            takes[i] += 1
            return take()

        queue.take = counted  # type: ignore[method-assign]
    for k in range(50):
        channels[7].emit(float(k))
        channels[250].emit(np.arange(3.0))
        if k % 10 == 0:
            scan.flush()
    scan.end()
    assert [i for i, n in enumerate(takes) if n] == [7, 250]
    assert 1 <= takes[7] <= 51 and len(channels[7]) == 50 and len(channels[250]) == 150
