"""Secrets are never printed: every error path we can trigger with a URL holding a password.

A real server with a password and an ACL user; each error is triggered for real, and its
message, repr, the CLI's one-line error and every log record are searched for the password.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from scanstream import (
    DataStore,
    InvalidArgumentError,
    ProtocolVersionError,
    RedisUnreachableError,
    ServerResetError,
    SessionNotFoundError,
    Settings,
    create_session,
)
from scanstream._transport.server import EmbeddedServer
from scanstream._transport.urls import mask_url
from scanstream.cli import main

PASSWORD = "hunter2-Secret"
ACL_PASSWORD = "alice-S3cret"


@pytest.fixture
def secret_server(
    server_binary: Path, tmp_path: Path, free_tcp_port: int
) -> Iterator[EmbeddedServer]:
    """A server with a password, and an ACL user ``alice`` with another."""
    server = EmbeddedServer(tmp_path / "redis", port=free_tcp_port, password=PASSWORD)
    server.start(timeout=10)
    with redis.Redis.from_url(server.url, socket_timeout=5) as admin:
        admin.acl_setuser(
            "alice", enabled=True, passwords=[f"+{ACL_PASSWORD}"], keys=["*"], commands=["+@all"]
        )
    try:
        yield server
    finally:
        server.stop()


def _urls(server: EmbeddedServer) -> list[str]:
    return [server.url, f"redis://alice:{ACL_PASSWORD}@127.0.0.1:{server.port}/0"]


def _clean(text: str) -> None:
    assert PASSWORD not in text and ACL_PASSWORD not in text, text


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://user:pw@host:6380/1", "redis://user:***@host:6380/1"),
        ("redis://:pw@host", "redis://:***@host"),
        ("rediss://a:p%40ss@[::1]:6390", "rediss://a:***@[::1]:6390"),
        ("unix://:pw@/run/redis.sock?db=2", "unix://:***@/run/redis.sock?db=2"),
        ("redis://host:1?password=pw&db=1", "redis://host:1?password=***&db=1"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("unix:///tmp/redis.sock", "unix:///tmp/redis.sock"),
        ("redis://u:pw@host:notaport", "redis://u:***@host:notaport"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_no_error_message_repr_or_log_shows_a_password(
    secret_server: EmbeddedServer,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    for url in _urls(secret_server):
        store = DataStore(settings=Settings(redis_url=url, max_unreachable_time=0.5))
        try:
            seen.append(repr(store))
            assert "***" in repr(store)
            session = create_session("secret", store=store)
            seen.append(repr(session))
            with pytest.raises(SessionNotFoundError) as not_found:
                store.require_session("nope")
            seen.append(str(not_found.value))
            assert main(["--redis-url", url, "ls", "nope"]) == 1
            err = capsys.readouterr().err
            assert "no session named 'nope'" in err and "***@127.0.0.1" in err
            seen.append(err)
            with pytest.raises(InvalidArgumentError) as option:
                DataStore(f"{url}?decode_responses=1" if "?" not in url else url + "&protocol=3")
            seen.append(str(option.value))
            store.redis.set(store.keys.protocol, "999")
            with pytest.raises(ProtocolVersionError) as version:
                DataStore(url)
            seen.append(str(version.value))
            store.redis.set(store.keys.protocol, "1")
            with redis.Redis.from_url(secret_server.url, socket_timeout=5) as admin:
                admin.flushall()
                admin.acl_setuser(
                    "alice",
                    enabled=True,
                    passwords=[f"+{ACL_PASSWORD}"],
                    keys=["*"],
                    commands=["+@all"],
                )
            with pytest.raises(ServerResetError) as reset:
                store.check_server_identity()
            seen.append(str(reset.value))
        finally:
            store.close()
        captured = capsys.readouterr()
        seen += [captured.out, captured.err]

    # Unreachable: the store's budget, a publisher's, and the CLI's one-line error.
    store = DataStore(
        settings=Settings(redis_url=_urls(secret_server)[1], max_unreachable_time=0.5)
    )
    scan = create_session("gone", store=store).create_scan("s")
    channel = scan.create_container("timer").create_channel("c")
    channel.emit(np.arange(3.0))
    scan.flush()
    secret_server.stop()
    try:
        with pytest.raises(RedisUnreachableError) as unreachable:
            store.redis.get("k")
        seen.append(str(unreachable.value))
        assert "alice:***@127.0.0.1" in str(unreachable.value)
        deadline = time.monotonic() + 20
        with pytest.raises(RedisUnreachableError) as failed_scan:
            while time.monotonic() < deadline:
                channel.emit(1.0)
                time.sleep(0.01)
        seen.append(str(failed_scan.value))
    finally:
        scan._sender.stop()
        store.close()
    monkeypatch.setenv("SCANSTREAM_MAX_UNREACHABLE_TIME", "0.5")
    for url in _urls(secret_server):
        assert main(["--redis-url", url, "ls"]) == 1
        err = capsys.readouterr().err
        last = err.splitlines()[-1]  # after log lines of the scan that failed above
        assert last.startswith("scanstream ls: error: ") and "unreachable" in last
        seen.append(err)
    # A wrong password is refused at once, and not shown either.
    secret_server.start(timeout=10)
    with pytest.raises(redis.exceptions.AuthenticationError) as refused:
        DataStore(f"redis://:{PASSWORD}-wrong@127.0.0.1:{secret_server.port}")
    seen.append(str(refused.value))

    seen += [record.getMessage() for record in caplog.records]
    seen += [str(record.args) for record in caplog.records]
    for text in seen:
        _clean(text)
    assert len(seen) > 20
