"""The embedded server keeps what it accepted; a server that lost or rolled back data is detected.

Real servers, really stopped, killed (SIGKILL) and restarted; data directories really copied
back to play a restore from an older snapshot.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import threading
from pathlib import Path

import numpy as np
import pytest
import redis

from scanstream import (
    DataStore,
    ScanState,
    ServerResetError,
    Settings,
    create_session,
    get_session_node,
)
from scanstream._protocol.entries import saving_fields
from scanstream._transport.server import EmbeddedServer
from scanstream._transport.shared_server import data_dir, ensure_server, server_status, stop_server
from scanstream.cli import main
from scanstream.models import SavingState, SavingVerdict


def _store(url: str) -> DataStore:
    return DataStore(settings=Settings(redis_url=url, lease_time=30.0))


def _publish(store: DataStore, session: str, npoints: int) -> int:
    """Publish one ended scan of ``npoints`` points; return its number."""
    with create_session(session, store=store).create_scan("s") as scan:
        channel = scan.create_container("timer").create_channel("c")
        scan.prepared()
        channel.emit(np.arange(float(npoints)))
    return scan.number


def _points(store: DataStore, session: str, number: int) -> np.ndarray:
    scan = get_session_node(session, store=store).get_scan(number)
    assert scan.state is ScanState.DONE
    channel = [n for n in scan.load_nodes() if n.name == "c"][0]
    return np.asarray(channel.get(0, -1))


def test_persistent_server_config(tmp_path: Path, server_binary: Path, free_tcp_port: int) -> None:
    server = EmbeddedServer(tmp_path / "run", port=free_tcp_port, data_dir=tmp_path / "data")
    server.start(timeout=10)
    try:
        with redis.Redis.from_url(server.url, socket_timeout=5, decode_responses=True) as client:
            config = client.config_get("*")
            assert config["appendonly"] == "yes" and config["appendfsync"] == "everysec"
            assert config["save"] == ""  # no RDB snapshots besides the AOF
            assert config["dir"] == str(tmp_path / "data")
            assert config["maxmemory-policy"] == "noeviction"
        assert stat.S_IMODE(os.stat(tmp_path / "data").st_mode) == 0o700
        assert "data=" in repr(server)
    finally:
        server.stop()
    with pytest.raises(ValueError, match="appendfsync='sometimes'"):
        EmbeddedServer(tmp_path / "x", data_dir=tmp_path / "d", appendfsync="sometimes")


def test_restart_and_crash_lose_no_accepted_scan(persistent_server: EmbeddedServer) -> None:
    store = _store(persistent_server.url)
    try:
        first = _publish(store, "keep", 500)
        store.check_server_identity()
        persistent_server.stop()  # SIGTERM: a clean stop
        persistent_server.start(timeout=30)
        # The same store goes on: it reconnects, and the identity it saw is still there.
        assert np.array_equal(_points(store, "keep", first), np.arange(500.0))
        store.check_server_identity()
        second = _publish(store, "keep", 300)
        pid = persistent_server.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)  # a crash, right after the scan was accepted
        persistent_server.stop()  # reaps it, cleans the pidfile
        persistent_server.start(timeout=30)
        assert np.array_equal(_points(store, "keep", first), np.arange(500.0))
        assert np.array_equal(_points(store, "keep", second), np.arange(300.0))
        store.check_server_identity()
        # Numbering goes on above what the server kept.
        assert _publish(store, "keep", 1) == second + 1
    finally:
        store.close()


def test_shared_server_persists_by_default(private_runtime_dir: Path) -> None:
    url = ensure_server()
    status = server_status()
    assert status["persistence"] == "aof everysec"
    assert status["data_directory"] == str(data_dir())
    assert data_dir().is_relative_to(os.environ["XDG_STATE_HOME"])  # survives a reboot
    store = _store(url)
    try:
        number = _publish(store, "shared", 200)
        verdict = SavingVerdict(SavingState.SAVED, file="/x.h5", entries=(f"{number}.1",))
        store.redis.hset(store.keys.scan("shared", number), mapping=saving_fields(verdict))
    finally:
        store.close()
    assert stop_server() is True
    url = ensure_server()
    with _store(url) as store:
        assert np.array_equal(_points(store, "shared", number), np.arange(200.0))


def test_shared_server_without_persistence(
    private_runtime_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCANSTREAM_SERVER_PERSISTENCE", "off")
    ensure_server()
    assert server_status()["persistence"] == "off"
    assert not data_dir().exists()
    stop_server()
    monkeypatch.setenv("SCANSTREAM_SERVER_PERSISTENCE", "weekly")
    with pytest.raises(ValueError, match="SCANSTREAM_SERVER_PERSISTENCE='weekly'"):
        ensure_server()


def test_server_stop_refuses_while_clients_or_unsaved_scans_depend_on_it(
    private_runtime_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = ensure_server()
    pid = server_status()["pid"]
    listener = redis.Redis.from_url(url, socket_timeout=5)
    listener.client_setname("subscriber")
    listener.ping()
    try:
        assert main(["server", "stop"]) == 1
        err = capsys.readouterr().err
        assert "refusing to stop" in err and "1 client connected (subscriber@" in err
        assert "--force" in err
    finally:
        listener.close()
    with _store(url) as store:
        first = _publish(store, "busy", 10)
        second = _publish(store, "busy", 10)
        done = SavingVerdict(SavingState.SAVED, file="/x.h5", entries=(f"{first}.1",))
        store.redis.hset(store.keys.scan("busy", first), mapping=saving_fields(done))
    assert main(["server", "stop"]) == 1
    err = capsys.readouterr().err
    assert f"1 scan not saved yet: busy:{second}_s (DONE, WAITING)" in err
    assert "client" not in err.split("refusing to stop the embedded server:")[1].split(".")[0]
    assert "persisted" in err
    assert server_status()["pid"] == pid  # still running

    with _store(url) as store:  # the writer's verdict makes it final: nothing depends any more
        failed = SavingVerdict(SavingState.FAILED, reason="disk full")
        store.redis.hset(store.keys.scan("busy", second), mapping=saving_fields(failed))
    assert main(["server", "stop"]) == 0
    assert capsys.readouterr().out == "stopped\n"
    assert server_status()["running"] is False


def test_server_stop_force(private_runtime_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = ensure_server()
    with _store(url) as store:
        _publish(store, "forced", 5)
        assert main(["server", "stop", "--force"]) == 0
    assert capsys.readouterr().out == "stopped\n"
    assert server_status()["running"] is False
    assert main(["server", "stop"]) == 0
    assert capsys.readouterr().out == "no embedded server was running\n"


# ----------------------------------------------------------------------------- server identity


def test_restart_without_persistence_is_detected(
    tmp_path: Path, server_binary: Path, free_tcp_port: int
) -> None:
    server = EmbeddedServer(tmp_path / "run", port=free_tcp_port, password="pw-never-shown")
    server.start(timeout=10)
    store = _store(server.url)
    try:
        _publish(store, "lost", 10)
        store.check_server_identity()
        server.stop()
        server.start(timeout=10)  # the same address, nothing on disk: an empty database
        with pytest.raises(ServerResetError) as info:
            store.check_server_identity()
        message = str(info.value)
        assert "lost or rolled back its data (restarted without persistence" in message
        assert f"redis://:***@127.0.0.1:{free_tcp_port}" in message
        assert "pw-never-shown" not in message and "identity key is gone" in message
        # Any command on a new connection checks first: nothing runs on the reset server.
        store.redis.connection_pool.disconnect()
        with pytest.raises(ServerResetError):
            store.redis.set("written-after-reset", 1)
        with redis.Redis.from_url(server.url, socket_timeout=5) as admin:
            assert admin.exists("written-after-reset") == 0
        # Another publisher initializes the empty database anew: the old store still refuses.
        with _store(server.url) as fresh:
            _publish(fresh, "lost", 1)
            fresh.check_server_identity()  # it never saw the old server: fine
        with pytest.raises(ServerResetError, match="identity changed"):
            store.check_server_identity()
    finally:
        store.close()
        server.stop()


def test_flush_is_detected(redis_url: str) -> None:
    with _store(redis_url) as store, _store(redis_url) as reader:
        _publish(store, "flushed", 3)
        reader.check_server_identity()
        with redis.Redis.from_url(redis_url, socket_timeout=5) as admin:
            admin.flushall()
        with pytest.raises(ServerResetError, match="flushed"):
            reader.check_server_identity()
        # The publisher that saw the old identity does not re-initialize over the reset.
        with pytest.raises(ServerResetError):
            create_session("flushed", store=store)


def test_restore_of_an_older_snapshot_is_detected(
    persistent_server: EmbeddedServer, tmp_path: Path
) -> None:
    data = persistent_server.data_dir
    assert data is not None
    store = _store(persistent_server.url)
    try:
        _publish(store, "old", 5)  # the session's start advanced the epoch
        persistent_server.stop()
        shutil.copytree(data, tmp_path / "backup")  # a snapshot of that moment
        persistent_server.start(timeout=30)
        with _store(persistent_server.url) as other:
            _publish(other, "new", 5)  # a later session: the epoch moves on
        store.check_server_identity()  # sees the newer epoch
        persistent_server.stop()
        shutil.rmtree(data)
        shutil.copytree(tmp_path / "backup", data)  # restored from the older snapshot
        persistent_server.start(timeout=30)
        with pytest.raises(ServerResetError, match="epoch went back"):
            store.check_server_identity()
        # A client that never saw the newer epoch cannot know: only what it saw is compared.
        with _store(persistent_server.url) as late:
            late.check_server_identity()
    finally:
        store.close()


def test_replies_of_concurrent_requests_are_compared_with_what_was_known_when_sent() -> None:
    from scanstream._protocol.keys import Keys
    from scanstream._transport.identity import ServerIdentity

    identity = ServerIdentity(Keys(), "redis://x")
    identity.observe(b"id1", 2)
    seen = identity.seen()  # a read leaves while the epoch known is 2 ...
    identity.observe(b"id1", 3)  # ... another thread advances it and sees 3 first
    identity.observe(b"id1", 2, seen)  # the earlier read's reply: no reset
    assert identity.epoch == 3
    with pytest.raises(ServerResetError, match="went back from 3 to 2"):
        identity.observe(b"id1", 2)  # a read sent after 3 was known
    with pytest.raises(ServerResetError, match="identity changed"):
        identity.observe(b"id2", 3, seen)  # another id is a reset whatever was known
    fresh = ServerIdentity(Keys(), "redis://x")
    before_init = fresh.seen()
    fresh.observe(b"id1", 1)
    fresh.observe(None, None, before_init)  # a read sent before the database had an id
    with pytest.raises(ServerResetError, match="gone"):
        fresh.observe(None, None)


def test_threads_sharing_a_store_never_see_a_false_reset(redis_url: str) -> None:
    """Sessions started from several threads on one store: each advances the epoch while the
    others read it on other connections; no reply may be taken for a rollback."""
    errors: list[BaseException] = []
    with _store(redis_url) as store:

        def publish(index: int) -> None:
            try:
                for _ in range(5):
                    _publish(store, f"threads_{index}", 3)
                    store.check_server_identity()
            except BaseException as exc:  # handed to the test thread
                errors.append(exc)

        threads = [threading.Thread(target=publish, args=(i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in threads)
    assert errors == []
