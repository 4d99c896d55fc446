"""Bad input and unreachable services give clear errors."""

from __future__ import annotations

import pytest
import redis

from scanstream import (
    DataStore,
    EncodingError,
    InvalidArgumentError,
    ProtocolVersionError,
    RedisUnreachableError,
    ScanNotFoundError,
    ScanstreamError,
    SessionNotFoundError,
    Settings,
    create_session,
    get_session_node,
)


def test_unknown_session_in_a_read_api_names_it_and_lists_the_known_ones(session, store):
    with session.create_scan("s"):
        pass
    node = get_session_node("no_such_session", store=store)
    for read in (node.children, lambda: list(node.walk_events(wait=False))):
        with pytest.raises(SessionNotFoundError) as info:
            read()
        assert "'no_such_session'" in str(info.value) and "known sessions: test_session" in str(
            info.value
        )
        assert isinstance(info.value, KeyError) and isinstance(info.value, ScanstreamError)


def test_a_session_walk_may_start_before_the_session_exists(store):
    events = list(get_session_node("future_session", store=store).walk_on_new_events(timeout=0.2))
    assert events == []


def test_unknown_scan_number(session, store):
    with pytest.raises(ScanNotFoundError, match="no scan number 42 in session 'test_session'"):
        get_session_node(session.name, store=store).get_scan(42)


@pytest.mark.parametrize("name", ["", "a:b", "has space", "{tag}", "x" * 200, None, "-leading"])
def test_invalid_session_names(store, name):
    with pytest.raises(ValueError, match="invalid session name"):
        create_session(name, store=store)
    with pytest.raises(ValueError, match="invalid session name"):
        get_session_node(name, store=store)


def test_malformed_scan_info_is_refused_and_nothing_is_created(session, store):
    with pytest.raises(EncodingError, match=r"scan_info\['positioners'\]\['roby'\]"):
        session.create_scan("ascan", {"positioners": {"roby": object()}})
    with pytest.raises(EncodingError, match=r"info of node 'c'"):
        session.create_scan("ok").create_container("t").create_channel("c", info={"bad": {1.5: 2}})
    assert [s.name for s in get_session_node(session.name, store=store).children()] == ["1_ok"]


def test_bad_channel_definitions(session):
    timer = session.create_scan("s").create_container("t")
    with pytest.raises(EncodingError, match="channel 'c': dtype <U3 is not supported"):
        timer.create_channel("c", "U3")
    with pytest.raises(EncodingError, match="shape must be \\(height, width\\)"):
        timer.create_lima("l", "uint16", (3,))
    with pytest.raises(ValueError, match="invalid node name"):
        timer.create_channel("a/b")
    with pytest.raises(ValueError, match="'MAYBE' is not a valid SavingMode"):
        timer.create_lima("l", "uint16", (3, 3), saving_mode="MAYBE")


def test_redis_unreachable_raises_the_redis_connection_error():
    # After the outage budget (short here; 30 s by default), naming the server.
    settings = Settings(redis_url="redis://127.0.0.1:1", max_unreachable_time=0.3)
    with pytest.raises(redis.exceptions.ConnectionError, match="127.0.0.1:1 unreachable") as info:
        DataStore(settings=settings)
    assert isinstance(info.value, RedisUnreachableError)


def test_protocol_version_mismatch(redis_url, store):
    store.redis.set(store.keys.protocol, "999")
    with pytest.raises(ProtocolVersionError, match="protocol version '999'.*speaks '1'"):
        DataStore(settings=Settings(redis_url=redis_url))
    other = DataStore(
        settings=Settings(redis_url=redis_url, prefix="other")
    )  # another prefix is fine
    other.close()


def test_settings_from_the_environment_are_checked(monkeypatch):
    monkeypatch.setenv("SCANSTREAM_LEASE_TIME", "soon")
    with pytest.raises(ValueError, match="SCANSTREAM_LEASE_TIME='soon' is not a number"):
        Settings.from_env()
    monkeypatch.setenv("SCANSTREAM_LEASE_TIME", "-1")
    with pytest.raises(ValueError, match="lease_time must be positive"):
        Settings.from_env()


@pytest.mark.parametrize("name", ["", "a:b", "two\nlines", "bad\ud800", 7])
def test_invalid_scan_names_are_refused_before_a_number_is_taken(session, store, name):
    with pytest.raises(InvalidArgumentError, match="invalid scan name"):
        session.create_scan(name)
    with session.create_scan("fine") as scan:
        pass
    assert scan.number == 1


@pytest.mark.parametrize("query", ["decode_responses=false", "decode_responses=1", "protocol=3"])
def test_url_options_that_change_replies_are_refused(redis_url, query):
    with pytest.raises(InvalidArgumentError, match=query.split("=")[0]):
        DataStore(f"{redis_url}?{query}")


def test_url_options_that_keep_replies_are_accepted(redis_url):
    with DataStore(f"{redis_url}?protocol=2&socket_timeout=5") as store:
        assert store.redis.ping()


@pytest.mark.parametrize(
    "variable",
    ["SCANSTREAM_RETENTION_TIME", "SCANSTREAM_LEASE_TIME", "SCANSTREAM_MAX_UNREACHABLE_TIME"],
)
@pytest.mark.parametrize(
    "value", ["inf", "-inf", "nan", "NaN", "-5", "1e400", "1e300", "two", "1,5"]
)
def test_duration_settings_refuse_what_is_not_a_finite_duration(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(InvalidArgumentError) as info:
        Settings.from_env()
    assert f"{variable}={value!r}" in str(info.value)  # the variable and the value as given


def test_duration_settings_zero(monkeypatch):
    monkeypatch.setenv("SCANSTREAM_RETENTION_TIME", "0")  # kept until deleted: allowed
    assert Settings.from_env().retention_time == 0
    for variable in ("SCANSTREAM_LEASE_TIME", "SCANSTREAM_MAX_UNREACHABLE_TIME"):
        monkeypatch.setenv(variable, "0")
        with pytest.raises(InvalidArgumentError, match=f"{variable}='0'.*must be positive"):
            Settings.from_env()
        monkeypatch.delenv(variable)


@pytest.mark.parametrize("value", [float("inf"), float("nan"), -1.0, "60", True, None])
def test_duration_settings_given_as_arguments_are_checked(value):
    with pytest.raises(InvalidArgumentError, match="retention_time="):
        Settings(retention_time=value)
    with pytest.raises(InvalidArgumentError, match="keeps ended scans until deleted"):
        Settings(retention_time=float("inf"))


def test_an_overridden_setting_ignores_a_bad_environment_value(monkeypatch):
    monkeypatch.setenv("SCANSTREAM_RETENTION_TIME", "inf")
    assert Settings.from_env(retention_time=60.0).retention_time == 60.0
