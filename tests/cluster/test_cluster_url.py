"""The cluster URL form, its checks, and the client it gives (node connections, budget)."""

from __future__ import annotations

import time

import pytest
import redis

from scanstream import DataStore, InvalidArgumentError, RedisUnreachableError, Settings
from scanstream._transport.cluster import cluster_seeds, is_cluster_url
from scanstream._transport.retry import default_retry
from scanstream._transport.urls import mask_url
from scanstream._transport.vectored import VectoredConnection
from scanstream.cli import main

from .cluster_nodes import LocalCluster


def test_the_scheme_selects_a_cluster() -> None:
    assert is_cluster_url("redis+cluster://h:1")
    assert is_cluster_url("REDISS+CLUSTER://h:1,h:2")
    assert not is_cluster_url("redis://h:1")
    assert not is_cluster_url("unix:///run/redis.sock")


def test_seeds_credentials_and_options() -> None:
    node_url, others, options = cluster_seeds(
        "redis+cluster://user:s3cret@10.0.0.1:7000,[::1]:7001, host-b:7002?socket_timeout=3"
    )
    assert node_url == "redis://user:s3cret@10.0.0.1:7000?socket_timeout=3"
    assert others == [("::1", 7001), ("host-b", 7002)]
    assert options["username"] == "user" and options["password"] == "s3cret"
    assert options["socket_timeout"] == 3.0
    node_url, others, options = cluster_seeds("rediss+cluster://[::1]:7000")
    assert node_url == "rediss://[::1]:7000" and others == []
    assert options["connection_class"].__name__ == "SSLConnection"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+cluster://h1:7000,h2", "seed 'h2' is not host:port"),
        ("redis+cluster://h1:7000,:7001", "seed ':7001' is not host:port"),
        ("redis+cluster://h1:99999", "seed 'h1:99999' is not host:port"),
        ("redis+cluster://:pw@h1:7000/2", "only database 0"),
        ("redis://h1:7000", "not a cluster URL"),
    ],
)
def test_bad_cluster_urls_are_refused_with_the_reason(url: str, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message) as info:
        cluster_seeds(url)
    assert "pw" not in str(info.value)


def test_passwords_of_cluster_urls_are_masked() -> None:
    assert (
        mask_url("redis+cluster://u:s3cret@h1:1,h2:2?password=s3cret")
        == "redis+cluster://u:***@h1:1,h2:2?password=***"
    )
    assert mask_url("rediss+cluster://:s3cret@[::1]:1,h:2") == "rediss+cluster://:***@[::1]:1,h:2"


def test_reply_options_and_a_retry_of_ones_own_are_refused() -> None:
    # Checked before anything is connected: no server needed.
    with pytest.raises(InvalidArgumentError, match="decode_responses"):
        DataStore("redis+cluster://127.0.0.1:1?decode_responses=yes")
    settings = Settings(redis_url="redis+cluster://127.0.0.1:1", retry=default_retry(1.0))
    with pytest.raises(InvalidArgumentError, match="Settings.retry cannot be used"):
        DataStore(settings=settings)


def test_unreachable_seeds_are_reported_in_seconds_with_the_masked_url(free_tcp_port: int) -> None:
    url = f"redis+cluster://:s3cret@127.0.0.1:{free_tcp_port}"
    started = time.monotonic()
    with pytest.raises(RedisUnreachableError) as info:
        DataStore(settings=Settings(redis_url=url, max_unreachable_time=1.0))
    assert time.monotonic() - started < 5
    assert f"127.0.0.1:{free_tcp_port}" in str(info.value) and "s3cret" not in str(info.value)


def test_a_refused_password_fails_at_once_as_on_one_server(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = redis_url.replace("redis+cluster://", "redis+cluster://nobody:s3cret@")
    started = time.monotonic()
    with pytest.raises(redis.exceptions.AuthenticationError):
        DataStore(settings=Settings(redis_url=url, max_unreachable_time=10.0))
    assert time.monotonic() - started < 3  # not retried for the outage budget
    assert main(["--redis-url", url, "ls"]) == 1
    err = capsys.readouterr().err
    assert "refused the user name or password of the URL" in err and "s3cret" not in err


def test_node_connections_write_vectored_and_check_the_identity(
    redis_url: str, cluster: LocalCluster
) -> None:
    with DataStore(redis_url) as store:
        assert store.is_cluster and store.scatter_writes
        store.check_protocol(initialize=True)
        node = store.redis.get_node_from_key(store.keys.server_identity)  # type: ignore[attr-defined]
        connection = node.redis_connection.connection_pool.get_connection()
        try:
            assert isinstance(connection, VectoredConnection)
            # The identity is checked on each new connection to the node holding its key.
            assert connection._server_identity is store.identity
        finally:
            node.redis_connection.connection_pool.release(connection)
        assert store.identity.server_id is not None
