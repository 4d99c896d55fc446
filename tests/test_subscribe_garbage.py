"""Garbage written by hand over one scan's keys: a clear error naming the key, the rest kept.

Each case damages scan 1 of three (a key of the wrong type, a hash without its fields, a
channel without a dtype); session walks, ``children()``, ``scanstream ls`` (``list_scans``)
and ``scanstream show`` must report it and go on with scans 2 and 3, their data exact.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import numpy as np
import pytest
import redis

from scanstream import DataStore, EventType, PublishingSession, get_session_node
from scanstream._protocol.keys import Keys
from scanstream.admin.listing import list_scans
from scanstream.cli import main
from scanstream.models import SavingState


def _wrong_type(key: Callable[[Keys], str]) -> Callable[[redis.Redis, Keys], str]:
    def damage(client: redis.Redis, keys: Keys) -> str:
        client.delete(key(keys))
        client.set(key(keys), "garbage")
        return key(keys)

    return damage


def _hash_field(field: str, value: str | None) -> Callable[[redis.Redis, Keys], str]:
    def damage(client: redis.Redis, keys: Keys) -> str:
        if value is None:
            client.hdel(keys.scan("test_session", 1), field)
        else:
            client.hset(keys.scan("test_session", 1), field, value)
        return keys.scan("test_session", 1)

    return damage


def _channel_without_dtype(client: redis.Redis, keys: Keys) -> str:
    fields = {"event": "NEW_NODE", "node": "9", "parent": "1", "type": "channel"}
    client.xadd(keys.scan_events("test_session", 1), fields | {"name": "bad", "info": "{}"})
    return "'bad'"


DAMAGES = {
    "scan hash is a string": _wrong_type(lambda k: k.scan("test_session", 1)),
    "scan hash without number": _hash_field("number", None),
    "scan hash with a garbage state": _hash_field("state", "WHATEVER"),
    "event stream is a string": _wrong_type(lambda k: k.scan_events("test_session", 1)),
    "data stream is a string": _wrong_type(lambda k: k.scan_data("test_session", 1, 3)),
    "channel without dtype": _channel_without_dtype,
}


def _publish(session: PublishingSession) -> None:
    for i in range(3):
        with session.create_scan(f"scan{i}") as scan:
            timer = scan.create_container("timer")
            timer.create_channel("a").emit(np.arange(3.0) + i)
            timer.create_channel("b").emit(np.arange(3.0) - i)


@pytest.mark.parametrize("damage", DAMAGES.values(), ids=DAMAGES.keys())
def test_garbage_in_one_scan_keeps_the_others(
    damage: Callable[[redis.Redis, Keys], str],
    session: PublishingSession,
    store: DataStore,
    redis_url: str,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _publish(session)
    named = damage(store.redis, store.keys)
    caplog.set_level(logging.ERROR, logger="scanstream")

    node = get_session_node("test_session", store=store)
    data: dict[str, list[float]] = {}
    ends = {}
    walker = node.walk_events(wait=False, timeout=10)
    for event_type, item, event_data in walker:
        if event_type is EventType.NEW_DATA:
            data.setdefault(item.db_name, []).extend(event_data.data.tolist())
        elif event_type is EventType.END_SCAN:
            ends[item.number] = event_data
    assert {2, 3} <= set(ends)
    for i in (1, 2):
        assert data[f"test_session:{i + 1}_scan{i}:timer:a"] == (np.arange(3.0) + i).tolist()
        assert data[f"test_session:{i + 1}_scan{i}:timer:b"] == (np.arange(3.0) - i).tolist()
    if 1 in ends:  # followed: the damage is told in its END_SCAN
        assert any(named in text for text in ends[1].description["decoding_errors"].values())
    assert any(named in r.getMessage() for r in caplog.records), caplog.text
    assert {scan.number for scan in node.children()} >= {2, 3}
    assert {s.number for s in list_scans(store, "test_session").scans} >= {2, 3}

    capsys.readouterr()
    assert main(["show", "test_session", "2", "--json", "--redis-url", redis_url]) == 0
    assert {n["name"] for n in json.loads(capsys.readouterr().out)["nodes"]} == {"a", "b"}
    code = main(["show", "test_session", "1", "--redis-url", redis_url])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    assert named in out + err + caplog.text
    assert code in (0, 1)


def test_a_scan_hash_turned_garbage_reads_as_failed_never_saved(
    session: PublishingSession, store: DataStore
) -> None:
    _publish(session)
    scan = get_session_node("test_session", store=store).get_scan(1)
    key = store.keys.scan("test_session", 1)
    store.redis.delete(key)
    store.redis.set(key, "garbage")
    verdict = scan.saving
    assert verdict.state is SavingState.FAILED
    assert key in (verdict.reason or "") and "not a scan hash" in (verdict.reason or "")
