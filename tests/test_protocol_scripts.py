"""The Lua scripts of _protocol/scripts.py follow the rules of _protocol/entries.py.

Both sides state which nodes own a data stream, which states are final and how long a stream
is; these tests read the rules out of the .lua text and run the scripts on the real server.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator

import pytest
import redis

from scanstream import DataStore, DecodingError, ScanState, Settings
from scanstream._protocol import entries, scripts
from scanstream._protocol.keys import Keys
from scanstream.models import NodeDescription, NodeType

LUA_FILES = ("end_scan.lua", "delete_scan.lua")
SESSION, NUMBER = "lua", 1


def _lua_set(text: str, name: str) -> set[str]:
    """Keys of the Lua table literal ``local NAME = {a = true, b = true}``."""
    match = re.search(rf"^local {name} = \{{(.*)\}}$", text, re.MULTILINE)
    assert match is not None, f"no 'local {name} = {{...}}' line"
    items = [item.strip() for item in match.group(1).split(",")]
    assert all(re.fullmatch(r"\w+ = true", item) for item in items), items
    return {item.split(" = ")[0] for item in items}


@pytest.mark.parametrize("name", LUA_FILES)
def test_lua_rules_are_the_python_ones(name: str) -> None:
    text = scripts.script_text(name)
    assert _lua_set(text, "FINAL_STATES") == set(entries.FINAL_STATE_NAMES)
    node_types = {t.value for t in NodeType}
    data_types = {t for t in node_types if entries.has_data_stream(t)}
    assert _lua_set(text, "DATA_NODE_TYPES") == data_types
    # Data keys are built in Lua as <scan key>:data:<node index>, as Keys.scan_data builds them.
    assert "scan .. ':data:' .. " in text
    keys = Keys("p")
    assert keys.scan_data(SESSION, NUMBER, 7) == keys.scan(SESSION, NUMBER) + ":data:7"


def test_node_info_script_knows_the_final_states() -> None:
    text = scripts.script_text("set_node_info.lua")
    assert _lua_set(text, "FINAL_STATES") == set(entries.FINAL_STATE_NAMES)


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url, socket_timeout=5) as connection:
        yield connection


def _make_scan(client: redis.Redis, keys: Keys, state: str, *, lease: bool) -> dict[str, int]:
    """A scan written by hand with one node of every type; returns {type: node index}."""
    client.hset(keys.scan(SESSION, NUMBER), mapping={"state": state, "name": "s"})
    if lease:
        client.set(keys.scan_lease(SESSION, NUMBER), "1", px=60_000)
    indices = {}
    for index, node_type in enumerate(t.value for t in NodeType):
        desc = NodeDescription(index=index + 2, parent=1, type=node_type, name=node_type)
        for _ in range(2):  # a NEW_NODE replayed by a client retry appears twice
            client.xadd(keys.scan_events(SESSION, NUMBER), entries.new_node_fields(desc))
        # A stream for every node, even those that must not have one: the scripts must leave
        # those alone, as the readers ignore them.
        key = keys.scan_data(SESSION, NUMBER, index + 2)
        client.xadd(key, {"n": 3, "d": b"x"}, id=entries.data_entry_id(0))
        client.xadd(key, {"n": 2 + index, "d": b"x"}, id=entries.data_entry_id(3))
        indices[node_type] = index + 2
    return indices


def _last(client: redis.Redis, key: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    return client.xrevrange(key, count=1)  # type: ignore[return-value]


def test_end_scan_seals_what_python_calls_data_streams(client: redis.Redis) -> None:
    keys = Keys()
    indices = _make_scan(client, keys, "PREPARED", lease=True)
    expected = {
        index: entries.stream_length(_last(client, keys.scan_data(SESSION, NUMBER, index)))[0]
        for node_type, index in indices.items()
        if entries.has_data_stream(node_type)
    }
    assert sorted(expected) == [indices["channel"], indices["lima"], indices["node_ref_channel"]]

    outcome = scripts.end_scan(
        client,
        keys,
        SESSION,
        NUMBER,
        "DONE",
        "",
        12.5,
        retention_time=0,
        only_if_lease_expired=True,
    )
    assert outcome == ("alive", "PREPARED", "")
    assert scripts.end_scan(client, keys, SESSION, NUMBER, "DONE", "", 12.5, retention_time=60) == (
        "ok",
        "DONE",
        "",
    )
    for node_type, index in indices.items():
        last = _last(client, keys.scan_data(SESSION, NUMBER, index))
        length, sealed = entries.stream_length(last)
        assert sealed is entries.has_data_stream(node_type), node_type
        if sealed:
            assert length == expected[index]
    end = client.xrevrange(keys.scan_events(SESSION, NUMBER), count=1)[0][1]
    parsed = entries.parse_end(end, "lua:1")
    assert parsed.state is ScanState.DONE and parsed.lengths == expected
    assert json.loads(end[b"lengths"]) == {str(k): v for k, v in expected.items()}
    assert not client.exists(keys.scan_lease(SESSION, NUMBER))
    assert 0 < client.pttl(keys.scan_data(SESSION, NUMBER, indices["lima"])) <= 60_000
    assert client.pttl(keys.scan_data(SESSION, NUMBER, indices["container"])) == -1


@pytest.mark.parametrize("short", [0, 3])
def test_end_scan_fails_a_scan_whose_streams_lost_acknowledged_points(
    client: redis.Redis, short: int
) -> None:
    keys = Keys()
    indices = _make_scan(client, keys, "PREPARED", lease=False)
    channel = indices["channel"]
    have = entries.stream_length(_last(client, keys.scan_data(SESSION, NUMBER, channel)))[0]
    # What a failover to a lagging replica leaves: the publisher had `have + short` acknowledged.
    acknowledged = {channel: have + short, indices["container"]: 0}
    outcome, final, detail = scripts.end_scan(
        client, keys, SESSION, NUMBER, "DONE", "", 1.0, retention_time=0, acknowledged=acknowledged
    )
    end = entries.parse_end(client.xrevrange(keys.scan_events(SESSION, NUMBER), count=1)[0][1], "1")
    if not short:
        assert (outcome, final, detail) == ("ok", "DONE", "")
        assert end.state is ScanState.DONE and end.lost == {}
        return
    assert (outcome, final) == ("lost", "FAILED")
    assert end.lost == {channel: have + short}  # readers (the writer) see the loss as data
    assert f"node {channel}: {have} of {have + short} points" in detail, detail
    assert end.state is ScanState.FAILED and end.error == detail
    assert client.hget(keys.scan(SESSION, NUMBER), "error") == detail.encode()


@pytest.mark.parametrize("state", [s.name for s in ScanState])
def test_end_scan_final_states_are_the_python_ones(client: redis.Redis, state: str) -> None:
    keys = Keys()
    _make_scan(client, keys, state, lease=False)
    outcome, final, _ = scripts.end_scan(
        client, keys, SESSION, NUMBER, "FAILED", "boom", 1.0, retention_time=0
    )
    if entries.is_final_state(state):
        assert (outcome, final) == ("ended", state)
    else:
        assert (outcome, final) == ("ok", "FAILED")
        assert client.hget(keys.scan(SESSION, NUMBER), "error") == b"boom"


@pytest.mark.parametrize("state", [s.name for s in ScanState])
@pytest.mark.parametrize("lease", [False, True])
def test_delete_scan_follows_the_python_rules(client: redis.Redis, state: str, lease: bool) -> None:
    keys = Keys()
    indices = _make_scan(client, keys, state, lease=lease)
    final = entries.is_final_state(state)
    options = {"cutoff": None, "saved": True, "force": False}
    outcome = scripts.delete_scan(client, keys, SESSION, NUMBER, dry_run=True, **options)
    if lease and not final:
        assert outcome == ("running", state, "")
        return
    assert outcome == ("deletable", state, "ended" if final else "gone")
    assert client.exists(keys.scan(SESSION, NUMBER))
    assert scripts.delete_scan(client, keys, SESSION, NUMBER, dry_run=False, **options) == (
        "deleted",
        state,
        "ended" if final else "gone",
    )
    for node_type, index in indices.items():
        left = client.exists(keys.scan_data(SESSION, NUMBER, index))
        assert left == (0 if entries.has_data_stream(node_type) else 1), node_type
    assert not client.exists(
        keys.scan(SESSION, NUMBER),
        keys.scan_events(SESSION, NUMBER),
        keys.scan_lease(SESSION, NUMBER),
    )
    assert scripts.delete_scan(client, keys, SESSION, NUMBER, dry_run=False, **options) == (
        "missing",
        "",
        "",
    )


def test_delete_scan_checks_age_and_saved(client: redis.Redis) -> None:
    keys = Keys()
    _make_scan(client, keys, "DONE", lease=False)
    client.hset(keys.scan(SESSION, NUMBER), mapping={"start_time": "100.5", "end_time": "200.25"})
    common = {"dry_run": True}
    assert scripts.delete_scan(
        client, keys, SESSION, NUMBER, cutoff=150.0, saved=True, force=False, **common
    ) == ("recent", "ended", "200.25")
    client.hdel(keys.scan(SESSION, NUMBER), "end_time")
    assert scripts.delete_scan(
        client, keys, SESSION, NUMBER, cutoff=50.0, saved=True, force=False, **common
    ) == ("recent", "started", "100.5")
    assert scripts.delete_scan(
        client, keys, SESSION, NUMBER, cutoff=150.0, saved=False, force=False, **common
    ) == ("unsaved", "DONE", "")
    assert scripts.delete_scan(
        client, keys, SESSION, NUMBER, cutoff=150.0, saved=False, force=True, **common
    ) == ("deletable", "DONE", "ended")


def test_delete_scan_with_thousands_of_streams(client: redis.Redis) -> None:
    keys = Keys()
    client.hset(keys.scan(SESSION, NUMBER), "state", "DONE")
    pipe = client.pipeline(transaction=False)
    for index in range(2, 3002):
        desc = NodeDescription(index=index, parent=1, type="channel", name=f"c{index}")
        pipe.xadd(keys.scan_events(SESSION, NUMBER), entries.new_node_fields(desc))
        pipe.xadd(keys.scan_data(SESSION, NUMBER, index), {"n": 1, "d": b"x"}, id="0-1")
    pipe.execute()
    outcome = scripts.delete_scan(
        client, keys, SESSION, NUMBER, cutoff=None, saved=True, force=False, dry_run=False
    )
    assert outcome.outcome == "deleted"
    assert client.dbsize() == 0


def test_scripts_survive_a_flushed_script_cache(redis_url: str) -> None:
    with DataStore(settings=Settings(redis_url=redis_url)) as store:
        keys = store.keys
        _make_scan(store.redis, keys, "PREPARED", lease=False)
        store.redis.script_flush()
        assert scripts.end_scan(
            store.redis, keys, SESSION, NUMBER, "DONE", "", 1.0, retention_time=0
        ) == ("ok", "DONE", "")
        assert store.redis.script_exists(scripts._END_SCAN.sha) == [True]


def test_create_scan_refuses_a_number_taken_and_accepts_its_own_replay(
    client: redis.Redis,
) -> None:
    keys = Keys()
    fields = entries.scan_hash_fields(SESSION, NUMBER, "a", "scan", "{}", 1.5)
    created = entries.state_entry_fields(entries.CREATED, 1.5)
    assert scripts.create_scan(client, keys, SESSION, NUMBER, fields, created, 10_000)
    assert client.hget(keys.scan(SESSION, NUMBER), "name") == b"a"
    assert 0 < client.pttl(keys.scan_lease(SESSION, NUMBER)) <= 10_000
    # The same call replayed after a lost reply: created, nothing written twice.
    assert scripts.create_scan(client, keys, SESSION, NUMBER, fields, created, 10_000)
    assert client.xlen(keys.scan_events(SESSION, NUMBER)) == 1
    # Another scan given the same number (a session counter gone back): refused, untouched.
    other = entries.scan_hash_fields(SESSION, NUMBER, "b", "scan", "{}", 2.5)
    assert not scripts.create_scan(client, keys, SESSION, NUMBER, other, created, 10_000)
    assert client.hget(keys.scan(SESSION, NUMBER), "name") == b"a"
    assert client.xlen(keys.scan_events(SESSION, NUMBER)) == 1
    # Only the event stream left (hash deleted by hand): still taken.
    client.delete(keys.scan(SESSION, NUMBER))
    assert not scripts.create_scan(client, keys, SESSION, NUMBER, other, created, 10_000)


def test_prepare_scan_writes_only_while_the_scan_exists(client: redis.Redis) -> None:
    keys = Keys()
    fields = entries.prepared_hash_fields('{"a": 1}')
    entry = entries.state_entry_fields(entries.PREPARED, 3.5)
    assert not scripts.prepare_scan(client, keys, SESSION, NUMBER, fields, entry)
    assert client.dbsize() == 0  # a scan that is gone gets no key without expiry
    client.hset(keys.scan(SESSION, NUMBER), "state", "CREATED")
    assert scripts.prepare_scan(client, keys, SESSION, NUMBER, fields, entry)
    assert client.hgetall(keys.scan(SESSION, NUMBER)) == {
        b"state": b"PREPARED",
        b"info": b'{"a": 1}',
    }
    ((_, written),) = client.xrange(keys.scan_events(SESSION, NUMBER))
    assert written == {b"event": entries.PREPARED, b"time": b"3.5"}


@pytest.mark.parametrize("final", sorted(entries.FINAL_STATE_NAMES))
def test_set_node_info_refuses_a_gone_or_ended_scan(client: redis.Redis, final: str) -> None:
    keys = Keys()
    field = entries.node_info_field(2)
    assert scripts.set_node_info(client, keys, SESSION, NUMBER, field, "{}") == "missing"
    assert client.dbsize() == 0
    client.hset(keys.scan(SESSION, NUMBER), "state", "PREPARED")
    assert scripts.set_node_info(client, keys, SESSION, NUMBER, field, '{"x": 1}') == ""
    assert client.hget(keys.scan(SESSION, NUMBER), field) == b'{"x": 1}'
    client.hset(keys.scan(SESSION, NUMBER), "state", final)
    assert scripts.set_node_info(client, keys, SESSION, NUMBER, field, '{"x": 2}') == final
    assert client.hget(keys.scan(SESSION, NUMBER), field) == b'{"x": 1}'


def _lua_function(text: str, name: str) -> str:
    """The text of ``local function NAME(...) ... end`` (up to the first unindented ``end``)."""
    match = re.search(rf"^local function {name}\(.*?^end$", text, re.MULTILINE | re.DOTALL)
    assert match is not None, f"no 'local function {name}' in the script"
    return match.group(0)


NODE_FIELDS = [b"0", b"7", b"12", b"9999999999999999", b"10000000000000000", b"07", b"-1"]
NODE_FIELDS += [b"+7", b" 7", b"7 ", b"7_0", b"1.5", b"1e3", b"0x10", b"abc", b"", b"\xff\x00"]


def test_lua_node_index_is_the_python_one(client: redis.Redis) -> None:
    # Both scripts build data keys from the node field: with the same rule as the readers, so
    # that a garbage field names no key (it named ':data:abc', and END's lengths held "abc").
    (function,) = {_lua_function(scripts.script_text(name), "node_index") for name in LUA_FILES}
    probe = (
        function
        + "\nlocal out = {}\nfor i, v in ipairs(ARGV) do out[i] = node_index(v) or '-' end\nreturn out"
    )
    lua = client.eval(probe, 0, *NODE_FIELDS)
    python = [entries.parse_node_index(raw) for raw in NODE_FIELDS]
    assert [None if v == b"-" else int(v) for v in lua] == python
    assert python[:4] == [0, 7, 12, 9999999999999999] and set(python[4:]) == {None}


def test_end_scan_skips_garbage_nodes_and_seals_the_others(
    client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    keys = Keys()
    indices = _make_scan(client, keys, "PREPARED", lease=False)
    events = keys.scan_events(SESSION, NUMBER)
    garbage = [b"abc", b"07", b"1.5", b"\xff"]
    for raw in garbage:
        client.xadd(events, {"event": "NEW_NODE", "node": raw, "type": "channel", "name": "g"})
    client.xadd(events, {"event": "NEW_NODE", "type": "lima", "name": "no index"})
    # A node whose data key is not a stream (garbage of another type): reported, not sealed.
    client.xadd(events, entries.new_node_fields(NodeDescription(40, 1, "channel", "wrongtype")))
    client.set(keys.scan_data(SESSION, NUMBER, 40), "not a stream")
    caplog.set_level(logging.ERROR, logger="scanstream._protocol.scripts")

    outcome = scripts.end_scan(client, keys, SESSION, NUMBER, "DONE", "", 1.0, retention_time=0)

    assert outcome == ("ok", "DONE", "")
    end = entries.parse_end(client.xrevrange(events, count=1)[0][1], "lua:1")  # parses
    sealed = {indices[t] for t in ("channel", "lima", "node_ref_channel")}
    assert set(end.lengths) == sealed
    for index in sealed:
        assert entries.stream_length(_last(client, keys.scan_data(SESSION, NUMBER, index)))[1]
    assert client.get(keys.scan_data(SESSION, NUMBER, 40)) == b"not a stream"
    assert not client.exists(keys.scan(SESSION, NUMBER) + ":data:abc")
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 6, logged
    assert all(message.startswith(f"scan {SESSION}:{NUMBER}: ") for message in logged)
    assert any("node field 'abc' is not a node index" in m for m in logged), logged
    assert any("node field missing" in m for m in logged), logged
    assert any("node 40" in m and "WRONGTYPE" in m for m in logged), logged


def test_delete_scan_builds_no_key_from_a_garbage_node(client: redis.Redis) -> None:
    keys = Keys()
    indices = _make_scan(client, keys, "DONE", lease=False)
    events = keys.scan_events(SESSION, NUMBER)
    client.xadd(events, {"event": "NEW_NODE", "node": "07", "type": "channel", "name": "g"})
    client.xadd(events, {"event": "NEW_NODE", "type": "channel", "name": "no index"})
    # Not a data stream of the scan, though in its slot: only the keys readers know go.
    client.set(keys.scan(SESSION, NUMBER) + ":data:07", "kept")
    outcome = scripts.delete_scan(
        client, keys, SESSION, NUMBER, cutoff=None, saved=True, force=False, dry_run=False
    )
    assert outcome.outcome == "deleted"
    assert client.get(keys.scan(SESSION, NUMBER) + ":data:07") == b"kept"
    assert not client.exists(keys.scan_data(SESSION, NUMBER, indices["channel"]))


def test_end_and_delete_of_a_scan_whose_event_stream_is_garbage(client: redis.Redis) -> None:
    keys = Keys()
    _make_scan(client, keys, "PREPARED", lease=False)
    events = keys.scan_events(SESSION, NUMBER)
    client.delete(events)
    client.set(events, "garbage")
    with pytest.raises(DecodingError, match=r"lua:1 cannot be ended: its event stream .* is not a"):
        scripts.end_scan(client, keys, SESSION, NUMBER, "DONE", "", 1.0, retention_time=0)
    assert client.hget(keys.scan(SESSION, NUMBER), "state") == b"PREPARED"  # nothing changed
    outcome = scripts.delete_scan(
        client, keys, SESSION, NUMBER, cutoff=None, saved=False, force=True, dry_run=False
    )
    assert outcome.outcome == "deleted"
    assert not client.exists(keys.scan(SESSION, NUMBER), events)


def test_end_of_a_scan_whose_hash_is_garbage_changes_nothing(client: redis.Redis) -> None:
    keys = Keys()
    _make_scan(client, keys, "PREPARED", lease=False)
    client.delete(keys.scan(SESSION, NUMBER))
    client.set(keys.scan(SESSION, NUMBER), "garbage")
    before = client.xlen(keys.scan_events(SESSION, NUMBER))
    with pytest.raises(DecodingError, match=r"its hash .* is not a hash .*scanstream delete lua"):
        scripts.end_scan(client, keys, SESSION, NUMBER, "DONE", "", 1.0, retention_time=0)
    assert client.xlen(keys.scan_events(SESSION, NUMBER)) == before


def test_end_scan_seals_at_the_last_data_entry_before_foreign_ones(client: redis.Redis) -> None:
    """Entries another process added with ``XADD *`` (IDs far ahead, valid counts): found by
    soak.chaos, the stream was sealed at the foreign entry's ID plus its count (some 1.8e12
    points), so the writer also reported "37 points in the file, 1796319879976 sealed"."""
    keys = Keys()
    indices = _make_scan(client, keys, "PREPARED", lease=False)
    key = keys.scan_data(SESSION, NUMBER, indices["channel"])
    (published, _) = entries.stream_length(_last(client, key))
    # Two in the same millisecond: the second one's ID is <time>-1, as a data entry's.
    foreign = [client.xadd(key, {"n": "1", "data": b"\0" * 8}) for _ in range(2)]
    assert not entries.is_data_entry_id(foreign[0])

    outcome = scripts.end_scan(client, keys, SESSION, NUMBER, "DONE", "", 1.0, retention_time=0)

    assert outcome == ("ok", "DONE", "")
    assert entries.stream_length(_last(client, key)) == (published, True)
    end = entries.parse_end(client.xrevrange(keys.scan_events(SESSION, NUMBER), count=1)[0][1], "")
    assert end.lengths[indices["channel"]] == published
    # The other streams (no foreign entry) are sealed as before.
    lima = keys.scan_data(SESSION, NUMBER, indices["lima"])
    assert entries.stream_length(_last(client, lima)) == (end.lengths[indices["lima"]], True)


def test_end_scan_seals_a_stream_with_points_gone_in_the_middle_at_what_follows(
    client: redis.Redis,
) -> None:
    """A data entry gone between two others (a restore, an XDEL): the stream's end is that of
    the entries that follow each other from its start, so that the acknowledged points
    tell the loss (before, the seal counted the points after the hole too)."""
    keys = Keys()
    indices = _make_scan(client, keys, "PREPARED", lease=False)
    key = keys.scan_data(SESSION, NUMBER, indices["channel"])
    (end_before, _) = entries.stream_length(_last(client, key))
    client.xadd(key, {"n": "4", "d": b"x"}, id=entries.data_entry_id(end_before))
    client.xadd(key, {"n": "2", "d": b"x"}, id=entries.data_entry_id(end_before + 4))
    client.xdel(key, entries.data_entry_id(end_before))
    outcome = scripts.end_scan(
        client,
        keys,
        SESSION,
        NUMBER,
        "DONE",
        "",
        1.0,
        retention_time=0,
        acknowledged={indices["channel"]: end_before + 6},
    )
    assert outcome[0] == "lost", outcome
    assert entries.stream_length(_last(client, key)) == (end_before, True)
