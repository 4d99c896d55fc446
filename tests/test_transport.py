"""The connection layer: settings precedence, the retry policy, the process-wide store cache."""

from __future__ import annotations

import inspect
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import redis
from redis.retry import Retry

from scanstream import DataStore, RedisUnreachableError, Settings, create_session
from scanstream._transport.connection import DEFAULT_STORES, clear_default_stores, default_store
from scanstream._transport.retry import default_retry

# ----------------------------------------------------------------------------- settings


def test_url_overrides_only_the_settings_url(redis_url: str) -> None:
    settings = Settings(
        redis_url="redis://127.0.0.1:1",
        prefix="mine",
        lease_time=2.0,
        retention_time=60.0,
        max_unreachable_time=5.0,
    )
    with DataStore(redis_url, settings) as store:
        assert store.url == redis_url and store.settings.redis_url == redis_url
        assert store.settings == Settings(
            redis_url=redis_url,
            prefix="mine",
            lease_time=2.0,
            retention_time=60.0,
            max_unreachable_time=5.0,
        )
        assert store.keys.prefix == "mine"
        # The settings are the ones used: the lease and the retention of a real scan.
        session = create_session("settings", store=store)
        scan = session.create_scan("s")
        scan.create_container("timer").create_channel("c").emit(np.arange(3.0))
        scan.flush()
        lease_key = store.keys.scan_lease("settings", scan.number)
        assert lease_key.startswith("mine:") and 0 < store.redis.pttl(lease_key) <= 2000
        scan.end()
        assert 0 < store.redis.pttl(store.keys.scan("settings", scan.number)) <= 60_000
        session.close()


def test_settings_alone_and_url_alone(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with DataStore(settings=Settings(redis_url=redis_url, lease_time=3.0)) as store:
        assert store.url == redis_url and store.settings.lease_time == 3.0
    monkeypatch.setenv("SCANSTREAM_LEASE_TIME", "4.5")
    monkeypatch.setenv("SCANSTREAM_PREFIX", "env")
    with DataStore(redis_url) as store:  # no settings: the environment's, with this URL
        assert store.url == redis_url
        assert (store.settings.lease_time, store.keys.prefix) == (4.5, "env")
    with DataStore(redis_url, Settings()) as store:  # given settings: the environment is not read
        assert (store.settings.lease_time, store.keys.prefix) == (10.0, "scanstream")


# ----------------------------------------------------------------------------- retry policy


class _Calls:
    """A command that fails with ``error`` a number of times, then returns "ok"."""

    def __init__(self, error: Exception, failures: int = 1000) -> None:
        self.error, self.failures = error, failures
        self.attempts = 0
        self.failed: list[tuple[Any, ...]] = []

    def do(self) -> str:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise self.error
        return "ok"

    def fail(self, *args: Any) -> None:
        self.failed.append(args)


def test_network_errors_are_retried_for_the_outage_budget() -> None:
    calls = _Calls(redis.exceptions.ConnectionError("gone"), failures=3)
    assert default_retry().call_with_retry(calls.do, calls.fail) == "ok"
    assert calls.attempts == 4 and len(calls.failed) == 3
    # Time, not a count: a command failing for longer than the budget raises the domain error,
    # naming the URL (masked) and the budget; it is still a redis-py ConnectionError.
    calls = _Calls(redis.exceptions.TimeoutError("slow"))
    retry = default_retry(1.5, "redis://user:hunter2@db.example:6380/0")
    started = time.monotonic()
    with pytest.raises(RedisUnreachableError) as info:
        retry.call_with_retry(calls.do, calls.fail)
    assert time.monotonic() - started >= 1.5
    assert isinstance(info.value, redis.exceptions.ConnectionError)
    assert isinstance(info.value.__cause__, redis.exceptions.TimeoutError)
    message = str(info.value)
    assert "redis://user:***@db.example:6380/0" in message and "hunter2" not in message
    assert "max_unreachable_time = 1.5 s" in message
    # Back-off without jitter sleeps 1.27 s over 7 failures: 1.5 s takes more than 7 attempts.
    assert calls.attempts > 7  # more than the 6 retries of the former count-based policy


def test_refused_authentication_is_not_retried() -> None:
    calls = _Calls(redis.exceptions.AuthenticationError("invalid password"))
    with pytest.raises(redis.exceptions.AuthenticationError):
        default_retry().call_with_retry(calls.do, calls.fail)
    assert calls.attempts == 1
    assert len(calls.failed) == 1  # redis-py's clean-up (disconnect) still ran


def test_retry_passes_the_arguments_of_this_redis_py_through() -> None:
    """Whatever call_with_retry takes in this redis-py version reaches it unchanged."""
    parameters = inspect.signature(Retry.call_with_retry).parameters
    if "is_retryable" in parameters:
        calls = _Calls(redis.exceptions.ConnectionError("gone"))
        with pytest.raises(redis.exceptions.ConnectionError):
            default_retry().call_with_retry(calls.do, calls.fail, lambda error: False)
        assert calls.attempts == 1
    if "with_failure_count" in parameters:
        calls = _Calls(redis.exceptions.ConnectionError("gone"), failures=2)
        assert (
            default_retry().call_with_retry(calls.do, calls.fail, with_failure_count=True) == "ok"
        )
        assert [args[1] for args in calls.failed] == [1, 2]
        calls = _Calls(redis.exceptions.AuthenticationError("no"))
        with pytest.raises(redis.exceptions.AuthenticationError):
            default_retry().call_with_retry(calls.do, calls.fail, with_failure_count=True)
        assert calls.attempts == 1 and calls.failed[0][1] == 1


def test_every_command_goes_through_the_retry_policy(redis_url: str) -> None:
    """The policy is the pool's: a command on a killed connection is retried and succeeds."""
    with (
        DataStore(settings=Settings(redis_url=redis_url)) as store,
        redis.Redis.from_url(redis_url, socket_timeout=5) as admin,
    ):
        store.redis.set("k", "v")
        admin.client_kill_filter(_type="normal", skipme=True)
        assert store.redis.get("k") == b"v"


# ----------------------------------------------------------------------------- store cache


@pytest.fixture
def empty_cache() -> Iterator[None]:
    clear_default_stores()
    try:
        yield
    finally:
        clear_default_stores()


def _clients(admin: redis.Redis) -> int:
    return len(admin.client_list(_type="normal")) - 1  # without the admin connection


def test_default_stores_are_shared_until_cleared(redis_url: str, empty_cache: None) -> None:
    first = default_store(redis_url)
    assert default_store(redis_url) is first
    other = default_store(redis_url, "other")
    assert other is not first and other.keys.prefix == "other"
    assert len(DEFAULT_STORES) == 2
    with redis.Redis.from_url(redis_url, socket_timeout=5) as admin:
        first.redis.ping()
        other.redis.ping()
        assert _clients(admin) == 2
        clear_default_stores()
        assert len(DEFAULT_STORES) == 0
        deadline = time.monotonic() + 2
        while _clients(admin) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _clients(admin) == 0  # cleared stores are closed
    again = default_store(redis_url)
    assert again is not first and again.redis.ping()


@pytest.mark.timeout(20)  # the first contact gives up after FIRST_CONTACT_TIME, not the budget
def test_a_server_never_reached_is_reported_without_waiting_the_outage_budget(
    free_tcp_port: int,
) -> None:
    settings = Settings(
        redis_url=f"redis://:hunter2@127.0.0.1:{free_tcp_port}", max_unreachable_time=600
    )
    with pytest.raises(RedisUnreachableError, match="unreachable: no answer within") as caught:
        DataStore(settings=settings)
    assert "hunter2" not in str(caught.value) and f":{free_tcp_port}" in str(caught.value)
