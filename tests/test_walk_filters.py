"""What a walk reads: include_filter and exclude_children prune the streams read."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import redis

from scanstream import EventType, get_session_node


@contextmanager
def commands_sent(redis_url: str) -> Iterator[list[list[str]]]:
    """Record every command the server executes (SLOWLOG with a 0 µs threshold)."""
    client = redis.Redis.from_url(redis_url)
    old = client.config_get("slowlog-*")
    client.config_set("slowlog-log-slower-than", 0)
    client.config_set("slowlog-max-len", 100000)
    client.slowlog_reset()
    recorded: list[list[str]] = []
    try:
        yield recorded
        for entry in client.slowlog_get(100000):
            args = entry["command"]
            recorded.append(
                (args.decode(errors="replace") if isinstance(args, bytes) else str(args)).split()
            )
    finally:
        client.config_set("slowlog-log-slower-than", old["slowlog-log-slower-than"])
        client.config_set("slowlog-max-len", old["slowlog-max-len"])
        client.close()


def data_keys_read(commands: list[list[str]]) -> set[str]:
    return {
        arg
        for cmd in commands
        if cmd and cmd[0].upper() in ("XREAD", "XRANGE", "XREVRANGE")
        for arg in cmd
        if ":data:" in arg
    }


@pytest.fixture
def two_finished_scans(session):
    scans = []
    for name in ("ascan", "loopscan"):
        with session.create_scan(name) as scan:
            timer = scan.create_container("timer")
            a = timer.create_channel("diode")
            b = timer.create_channel("mca", "uint16", (64,))
            scan.prepared()
            for i in range(50):
                a.emit(float(i))
                b.emit(np.full(64, i, dtype="uint16"))
        scans.append(scan)
    return scans


@pytest.mark.parametrize(
    "include_filter, exclude_children",
    [
        ("scan", None),
        (("scan", "scan_group"), ("scan", "scan_group")),
        (lambda n: n.type == "scan", "scan"),
    ],
)
def test_scan_level_walks_never_read_data_streams(
    redis_url, store, two_finished_scans, include_filter, exclude_children
):
    node = get_session_node("test_session", store=store)
    with commands_sent(redis_url) as commands:
        events = list(
            node.walk_events(
                include_filter=include_filter, exclude_children=exclude_children, wait=False
            )
        )
    for scan in two_finished_scans:  # scans may interleave; each one's events are in order
        assert [e[0] for e in events if e[1].db_name == scan.db_name] == [
            EventType.NEW_NODE,
            EventType.PREPARED_SCAN,
            EventType.END_SCAN,
        ]
    assert len(events) == 6
    assert commands, "the command log recorded nothing"
    assert data_keys_read(commands) == set()


def test_a_full_walk_reads_data_streams(redis_url, store, two_finished_scans):
    node = get_session_node("test_session", store=store)
    with commands_sent(redis_url) as commands:
        events = list(node.walk_events(wait=False))
    assert sum(e[2].block_size for e in events if e[0] == EventType.NEW_DATA) == 4 * 50
    assert len(data_keys_read(commands)) == 4


def test_exclude_children_of_a_container_hides_and_does_not_read_its_subtree(
    redis_url, store, session
):
    with session.create_scan("s") as scan:
        timer = scan.create_container("timer")
        timer.create_channel("kept").emit([1.0, 2.0])
        det = timer.create_container("detector")
        det.create_channel("hidden").emit([3.0])
        det.create_container("deeper").create_channel("hidden2").emit([4.0])
    scan_node = get_session_node("test_session", store=store).get_scan(scan.number)
    with commands_sent(redis_url) as commands:
        events = list(
            scan_node.walk_events(exclude_children=lambda n: n.name == "detector", timeout=5)
        )
    names = {e[1].name for e in events if e[0] in (EventType.NEW_NODE, EventType.NEW_DATA)}
    assert names == {"timer", "kept", "detector"}
    assert len(data_keys_read(commands)) == 1


def test_include_filter_by_type_yields_only_those_nodes_but_scan_events_of_included_scans(
    store, two_finished_scans
):
    node = get_session_node("test_session", store=store)
    events = list(node.walk_events(include_filter="channel", wait=False))
    assert {e[1].type for e in events} == {"channel"}
    assert {e[0] for e in events} == {EventType.NEW_NODE, EventType.NEW_DATA}


def test_walk_of_one_channel_yields_its_data_then_returns_without_end_scan(store, session):
    with session.create_scan("s") as scan:
        timer = scan.create_container("timer")
        timer.create_channel("a").emit([1.0, 2.0, 3.0])
        timer.create_channel("b").emit([4.0])
    channel = next(
        n
        for n in get_session_node("test_session", store=store).get_scan(scan.number).load_nodes()
        if n.name == "a"
    )
    events = list(channel.walk_events(timeout=5))
    # END_SCAN belongs to the scan node (BLISS): a channel walk ends without it.
    assert [(e[0], e[1].name) for e in events] == [(EventType.NEW_DATA, "a")]
    np.testing.assert_array_equal(events[0][2].data, [1.0, 2.0, 3.0])


def test_first_index_starts_a_session_walk_at_a_time(store, session):
    import time

    with session.create_scan("old"):
        pass
    time.sleep(0.01)
    start_ms = int(time.time() * 1000)
    with session.create_scan("new") as new:
        pass
    events = list(
        get_session_node("test_session", store=store).walk_events(
            include_filter="scan", first_index=start_ms, wait=False
        )
    )
    assert {e[1].db_name for e in events} == {new.db_name}
