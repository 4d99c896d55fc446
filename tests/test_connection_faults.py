"""Connection faults against a real private server: dropped connections, paused or frozen
server, lost replies, an unreachable server, a full server, corrupt entries.

Every test checks that subscribers get each point exactly once, in order, and that the
stored data matches what was emitted.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from scanstream import (
    DataStore,
    DecodingError,
    EventType,
    RedisFullError,
    RedisUnreachableError,
    ScanState,
    Settings,
    StopHandler,
    create_session,
    get_session_node,
)
from scanstream._transport.server import EmbeddedServer


@pytest.fixture
def server(private_server: EmbeddedServer) -> EmbeddedServer:
    """A private server for one test (tests here kill, pause and freeze it)."""
    return private_server


def _store(url: str, **settings: Any) -> DataStore:
    settings.setdefault("lease_time", 30.0)  # longer than any pause below
    return DataStore(settings=Settings(redis_url=url, **settings))


class _Collector(threading.Thread):
    """Walks a session in a thread; keeps the points of each channel in arrival order."""

    def __init__(self, url: str, session: str, **settings: Any) -> None:
        super().__init__(daemon=True)
        self.store = _store(url, **settings)
        self.walker = get_session_node(session, store=self.store).walk_on_new_events(timeout=20)
        self.points: dict[str, list[np.ndarray]] = {}
        self.firsts: dict[str, list[int]] = {}
        self.end: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for event_type, node, data in self.walker:
                if event_type is EventType.NEW_DATA:
                    self.points.setdefault(node.name, []).append(np.asarray(data.data))
                    self.firsts.setdefault(node.name, []).append(data.first_index)
                elif event_type is EventType.END_SCAN:
                    self.end = data
                    return
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.store.close()

    def values(self, name: str) -> np.ndarray:
        return np.concatenate(self.points.get(name, [np.empty(0)]))

    def finish(self) -> None:
        self.join(30)
        assert not self.is_alive(), "the subscriber did not finish"
        assert self.error is None, self.error


def _publish_with_fault(
    url: str, fault: Any, npoints: int = 3000, nch: int = 4, **settings: Any
) -> _Collector:
    """Publish ``npoints`` step points on ``nch`` channels; call ``fault()`` midway."""
    store = _store(url, **settings)
    try:
        session = create_session("faults", store=store)
        collector = _Collector(url, "faults", **settings)
        collector.start()
        with session.create_scan("s") as scan:
            top = scan.create_container("timer")
            channels = [top.create_channel(f"c{i}") for i in range(nch)]
            scan.prepared()
            for i in range(npoints):
                for ch in channels:
                    ch.emit(float(i))
                if i == npoints // 2:
                    fault()
                if i % 100 == 0:
                    time.sleep(0.002)
        collector.finish()
        expected = np.arange(npoints, dtype=float)
        for i in range(nch):
            got = collector.values(f"c{i}")
            assert np.array_equal(got, expected), f"c{i}: {len(got)} points, not 0..{npoints - 1}"
            stored = get_session_node("faults", store=store).get_scan(1)
            node = [n for n in stored.load_nodes() if n.name == f"c{i}"][0]
            assert np.array_equal(node.get(0, -1), expected)
        assert collector.end.data == ScanState.DONE
        return collector
    finally:
        store.close()


def test_client_kill_publisher_and_subscriber_reconnect(server: EmbeddedServer) -> None:
    admin = redis.Redis.from_url(server.url, socket_timeout=5)

    def kill() -> None:
        for _ in range(3):
            admin.client_kill_filter(_type="normal", skipme=True)
            time.sleep(0.02)

    try:
        _publish_with_fault(server.url, kill)
    finally:
        admin.close()


def test_client_pause_is_waited_out(server: EmbeddedServer) -> None:
    admin = redis.Redis.from_url(server.url, socket_timeout=5)
    try:
        _publish_with_fault(server.url, lambda: admin.client_pause(300, all=True))
    finally:
        admin.close()


def test_sigstop_sigcont_of_the_server(server: EmbeddedServer) -> None:
    pid = server.pid
    assert pid is not None

    def freeze() -> None:
        os.kill(pid, signal.SIGSTOP)
        time.sleep(0.5)
        os.kill(pid, signal.SIGCONT)

    _publish_with_fault(server.url, freeze)


_PUBLISHER = """
import sys, time
from scanstream import DataStore, Settings, create_session
store = DataStore(settings=Settings(redis_url=sys.argv[1], lease_time=3.0))
with create_session("faults", store=store).create_scan("s") as scan:
    channel = scan.create_container("timer").create_channel("c")
    scan.prepared()
    print("started", flush=True)
    for i in range(700):  # 7 s
        channel.emit(float(i))
        time.sleep(0.01)
"""


def test_a_server_frozen_past_the_lease_kills_no_running_scan(server: EmbeddedServer) -> None:
    """Every lease expires while the server is frozen; at SIGCONT a reader that had seen the
    lease alive must leave the publisher time to renew it (the publisher, here, is held
    0.8 s more, as a busy one sending its backlog first is), not end the running scan KILLED:
    its publisher then failed on the sealed streams ("already holds another entry")."""
    import subprocess
    import sys

    pid = server.pid
    assert pid is not None
    store = _store(server.url)
    create_session("faults", store=store)
    store.close()
    collector = _Collector(server.url, "faults", lease_time=3.0)
    collector.start()
    publisher = subprocess.Popen(
        [sys.executable, "-c", _PUBLISHER, server.url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert publisher.stdout is not None and publisher.stdout.readline() == "started\n"
        time.sleep(1.0)
        os.kill(pid, signal.SIGSTOP)
        time.sleep(3.5)  # past the 3 s lease
        os.kill(publisher.pid, signal.SIGSTOP)
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.8)  # the old reader looked within 0.75 s (a quarter of the lease)
        os.kill(publisher.pid, signal.SIGCONT)
        assert publisher.wait(timeout=30) == 0
        collector.finish()
        assert collector.end.data == ScanState.DONE, collector.end
        assert np.array_equal(collector.values("c"), np.arange(700.0))
    finally:
        os.kill(pid, signal.SIGCONT)
        if publisher.poll() is None:
            os.kill(publisher.pid, signal.SIGCONT)
            publisher.kill()
        publisher.communicate(timeout=10)


def test_replayed_send_is_neither_lost_nor_duplicated(server: EmbeddedServer) -> None:
    """A transaction replayed after its reply was lost: duplicate IDs count as sent."""
    store = _store(server.url)
    try:
        session = create_session("replay", store=store)
        scan = session.create_scan("s")
        channel = scan.create_container("timer").create_channel("c")
        scan.prepared()
        channel.emit(np.arange(10.0))
        batches = channel._queue.take()
        channel._queue.give_back(batches)
        scan.flush()
        # What redis-py's retry does when the reply of EXEC is lost: send it all again.
        channel._queue.sent = 0
        channel._queue.give_back(batches)
        scan.flush()
        assert channel._queue.sent == 10
        channel.emit(np.arange(10.0, 15.0))
        scan.end()
        node = get_session_node("replay", store=store).get_scan(1).load_nodes()[1]
        assert np.array_equal(node.get(0, -1), np.arange(15.0))
        assert store.redis.xlen(node.key) == 3  # two entries and the seal, no duplicate
    finally:
        store.close()


def test_unreachable_for_too_long_fails_the_scan(server: EmbeddedServer) -> None:
    store = _store(server.url, max_unreachable_time=0.5)
    try:
        session = create_session("gone", store=store)
        scan = session.create_scan("s")
        channel = scan.create_container("timer").create_channel("c")
        scan.prepared()
        channel.emit(1.0)
        scan.flush()
        server.stop()
        deadline = time.monotonic() + 20
        with pytest.raises(RedisUnreachableError, match="max_unreachable_time") as info:
            while time.monotonic() < deadline:
                channel.emit(2.0)
                time.sleep(0.01)
        assert "gone:1_s" in str(info.value)
        assert len(channel) - channel._queue.sent == 0  # the queue was dropped, not kept forever
    finally:
        scan._sender.stop()
        store.close()


def test_full_server_fails_the_scan_and_keeps_earlier_ones(
    any_server_binary: Path, tmp_path: Path, free_tcp_port: int
) -> None:
    srv = EmbeddedServer(
        tmp_path / "full", port=free_tcp_port, maxmemory="8mb", binary=any_server_binary
    )
    srv.start(timeout=10)
    store = _store(srv.url)
    try:
        session = create_session("full", store=store)
        with session.create_scan("old") as scan:
            scan.create_container("timer").create_channel("c").emit(np.arange(1000.0))
        with pytest.raises(RedisFullError, match="full:2_new") as info:
            with session.create_scan("new") as scan:
                channel = scan.create_container("timer").create_channel("c", shape=(1000,))
                scan.prepared()
                for _ in range(200):  # 16 MB: the limit is hit long before
                    channel.emit(np.ones((10, 1000)))
                    scan.flush()
        assert "maxmemory" in str(info.value)
        assert scan.state is ScanState.FAILED
        session_node = get_session_node("full", store=store)
        failed = session_node.get_scan(2)
        assert failed.state is ScanState.FAILED and "could not be stored" in failed.info["error"]
        old = session_node.get_scan(1)
        assert old.state is ScanState.DONE
        assert np.array_equal(old.load_nodes()[1].get(0, -1), np.arange(1000.0))
    finally:
        store.close()
        srv.stop()


def test_corrupt_entry_is_reported_for_its_node_only(server: EmbeddedServer) -> None:
    store = _store(server.url)
    try:
        session = create_session("corrupt", store=store)
        with session.create_scan("s") as scan:
            top = scan.create_container("timer")
            bad, good = top.create_channel("bad"), top.create_channel("good")
            scan.prepared()
            bad.emit(np.arange(5.0))
            good.emit(np.arange(5.0))
            scan.flush()
            # By hand, between two entries of the publisher (its next one is 5-1).
            store.redis.xadd(bad.key, {b"n": b"three", b"d": b"xx"}, id="5-0")
            bad.emit(np.arange(5.0, 10.0))
            good.emit(np.arange(5.0, 10.0))
        scan_node = get_session_node("corrupt", store=store).get_scan(1)
        walker = scan_node.walk_events(wait=False)
        events = list(walker)
        data = {}
        for event_type, node, event_data in events:
            if event_type is EventType.NEW_DATA:
                data.setdefault(node.name, []).append(event_data.data)
        assert np.array_equal(np.concatenate(data["good"]), np.arange(10.0))
        assert np.array_equal(
            np.concatenate(data["bad"]), np.arange(5.0)
        )  # up to the corrupt entry
        assert isinstance(walker.errors["corrupt:1_s:timer:bad"], DecodingError)
        end = [e for e in events if e[0] is EventType.END_SCAN][0]
        assert "corrupt:1_s:timer:bad" in end[2].description["decoding_errors"]
        bad_node = [n for n in scan_node.load_nodes() if n.name == "bad"][0]
        assert np.array_equal(bad_node.get(0, 4), np.arange(5.0))  # before it: readable
        with pytest.raises(DecodingError, match="point count"):
            bad_node.get(0, -1)
    finally:
        store.close()


def test_corrupt_scan_events_do_not_end_a_session_walk(server: EmbeddedServer) -> None:
    """A garbage NEW_NODE, and an END whose lengths name a node index that is not a number
    (what the end script seals for such a NEW_NODE), are reported for their scan only: the
    session walk goes on with the next scan, every point of it delivered."""
    store = _store(server.url)
    try:
        session = create_session("garbage_events", store=store)
        with session.create_scan("bad") as scan:
            channel = scan.create_container("timer").create_channel("c")
            scan.prepared()
            channel.emit(np.arange(3.0))
            scan.flush()
            events_key = store.keys.scan_events("garbage_events", scan.number)
            store.redis.xadd(events_key, {"event": "NEW_NODE"})
            store.redis.xadd(
                events_key,
                {
                    "event": "NEW_NODE",
                    "node": "abc",
                    "parent": "0",
                    "type": "channel",
                    "name": "q",
                    "info": "{}",
                },
            )
        with session.create_scan("good") as good:
            good.create_container("timer").create_channel("c").emit(np.arange(4.0))
        walker = get_session_node("garbage_events", store=store).walk_events(wait=False)
        ends, data = {}, {}
        for event_type, node, event_data in walker:
            if event_type is EventType.END_SCAN:
                ends[node.name] = event_data
            elif event_type is EventType.NEW_DATA:
                data.setdefault(node.db_name, []).append(event_data.data)
        assert set(ends) == {"1_bad", "2_good"}
        assert ends["2_good"].data is ScanState.DONE
        assert np.array_equal(np.concatenate(data["garbage_events:2_good:timer:c"]), np.arange(4.0))
        # Its END is readable (the end script skipped the garbage index): the publisher's
        # state, the corrupt entries told beside it.
        assert ends["1_bad"].data is ScanState.DONE
        assert "corrupt" in ends["1_bad"].description["decoding_errors"]["garbage_events:1_bad"]
        assert isinstance(walker.errors["garbage_events:1_bad"], DecodingError)
    finally:
        store.close()


# ----------------------------------------------------------------------------- the outage budget


class _ReadmeSubscriber(threading.Thread):
    """The README's subscriber: a session walk for new scans, then each scan's events."""

    def __init__(self, store: DataStore, session: str) -> None:
        super().__init__(daemon=True)
        self.session_node = get_session_node(session, store=store)
        self.stop_handler = StopHandler()
        # from_next=False: the session is new, and the walk must not miss its first scan.
        self.walker = self.session_node.walk_on_new_events(
            include_filter="scan", from_next=False, timeout=60, stop_handler=self.stop_handler
        )
        self.points: list[np.ndarray] = []
        self.end: Any = None
        self.error: BaseException | None = None
        self.walking = threading.Event()

    def run(self) -> None:
        try:
            for event_type, node, _ in self.walker:
                if event_type is EventType.NEW_NODE:
                    self.walking.set()
                    scan_walk = node.walk_events(timeout=60, stop_handler=self.stop_handler)
                    for kind, child, data in scan_walk:
                        if kind is EventType.NEW_DATA and child.type == "channel":
                            self.points.append(np.asarray(data.data))
                        elif kind is EventType.END_SCAN:
                            self.end = data
                            return
        except BaseException as exc:  # reported by the test
            self.error = exc


def _outage_under_a_walking_subscriber(server: EmbeddedServer, outage: Any) -> None:
    """Publish 2000 points; midway, ``outage()``; the README subscriber must get them all."""
    store, subscriber_store = _store(server.url), _store(server.url)
    subscriber = _ReadmeSubscriber(subscriber_store, "outage")
    try:
        session = create_session("outage", store=store)
        subscriber.start()
        with session.create_scan("s") as scan:
            channel = scan.create_container("timer").create_channel("c")
            scan.prepared()
            assert subscriber.walking.wait(10), "the subscriber saw no scan"
            for i in range(2000):
                channel.emit(float(i))
                if i == 1000:
                    scan.flush()
                    outage()
                if i % 100 == 0:
                    time.sleep(0.002)
        subscriber.join(60)
        assert not subscriber.is_alive(), "the subscriber did not finish"
        assert subscriber.error is None, subscriber.error
        assert np.array_equal(np.concatenate(subscriber.points), np.arange(2000.0))
        assert subscriber.end.data == ScanState.DONE
    finally:
        subscriber.stop_handler.stop()
        subscriber.join(10)
        store.close()
        subscriber_store.close()


def test_readme_subscriber_survives_a_3s_freeze_of_the_server(server: EmbeddedServer) -> None:
    pid = server.pid
    assert pid is not None

    def freeze() -> None:
        os.kill(pid, signal.SIGSTOP)
        time.sleep(3.0)
        os.kill(pid, signal.SIGCONT)

    _outage_under_a_walking_subscriber(server, freeze)


def test_readme_subscriber_survives_a_server_killed_and_restarted(
    persistent_server: EmbeddedServer,
) -> None:
    """Killed (SIGKILL), down 3 s, restarted on the same port and data: every client goes on."""

    def crash_and_restart() -> None:
        pid = persistent_server.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        persistent_server.stop()  # reaps it
        time.sleep(3.0)
        persistent_server.start(timeout=30)

    _outage_under_a_walking_subscriber(persistent_server, crash_and_restart)


def test_outage_longer_than_the_budget_raises(server: EmbeddedServer) -> None:
    """Every command of the store gives up after max_unreachable_time, naming the server."""
    store = _store(server.url, max_unreachable_time=1.0)
    publisher = _store(server.url)
    try:
        session = create_session("budget", store=store)
        scan = session.create_scan("s")
        scan.create_container("timer").create_channel("c").emit(1.0)
        scan.flush()
        errors: list[BaseException] = []

        def walk() -> None:
            try:
                for _ in get_session_node("budget", store=store).walk_on_new_events(timeout=60):
                    pass
            except BaseException as exc:
                errors.append(exc)

        walker = threading.Thread(target=walk, daemon=True)
        walker.start()
        time.sleep(0.2)  # into its blocking read
        server.stop()  # and not restarted
        walker.join(30)
        assert not walker.is_alive(), "the walk did not give up"
        assert len(errors) == 1 and isinstance(errors[0], RedisUnreachableError), errors
        assert f"127.0.0.1:{server.port}" in str(errors[0])
        assert "max_unreachable_time = 1 s" in str(errors[0])
        with pytest.raises(RedisUnreachableError, match="SCANSTREAM_MAX_UNREACHABLE_TIME"):
            store.redis.get("anything")
    finally:
        scan._sender.stop()
        store.close()
        publisher.close()


def test_frozen_server_longer_than_the_budget_raises(server: EmbeddedServer) -> None:
    """A frozen server (no refusal, no reply) is given up too: the socket timeout, then the
    budget."""
    store = _store(server.url, max_unreachable_time=1.0)
    try:
        store.redis.set("k", "v")
        pid = server.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        with pytest.raises(RedisUnreachableError, match="unreachable"):
            store.redis.get("k")
    finally:
        if server.pid is not None:
            os.kill(server.pid, signal.SIGCONT)
        store.close()


@pytest.mark.parametrize("outage", ["freeze", "restart"])
def test_an_outage_at_end_is_ridden_out(persistent_server: EmbeddedServer, outage: str) -> None:
    """3 s of outage exactly at ``end()``: it waits, and the scan ends DONE with every point."""
    store = _store(persistent_server.url)
    try:
        session = create_session("ending", store=store)
        scan = session.create_scan("s")
        channel = scan.create_container("timer").create_channel("c")
        scan.prepared()
        channel.emit(np.arange(1000.0))
        scan.flush()
        pid = persistent_server.pid
        assert pid is not None
        if outage == "freeze":
            os.kill(pid, signal.SIGSTOP)
            resume = threading.Timer(3.0, os.kill, (pid, signal.SIGCONT))
        else:
            os.kill(pid, signal.SIGKILL)
            persistent_server.stop()  # reaps it
            resume = threading.Timer(3.0, persistent_server.start, kwargs={"timeout": 30})
        resume.start()
        try:
            scan.end()
        finally:
            resume.join(40)
        stored = get_session_node("ending", store=store).get_scan(scan.number)
        assert stored.state is ScanState.DONE
        node = [n for n in stored.load_nodes() if n.name == "c"][0]
        assert np.array_equal(node.get(0, -1), np.arange(1000.0))
    finally:
        store.close()
