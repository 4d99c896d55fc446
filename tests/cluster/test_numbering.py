"""A session counter that went back (what a failover losing its latest INCR leaves) never
makes a new scan write into the keys of one still in Redis, which live in other slots."""

from __future__ import annotations

import logging

import pytest

from scanstream import DataStore, PublishingSession, get_session_node


def test_a_counter_gone_back_skips_the_numbers_still_taken(
    store: DataStore, session: PublishingSession, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("first", "second"):
        with session.create_scan(name) as scan:
            scan.create_container("timer").create_channel("x").emit([1.0, 2.0])
    store.redis.set(store.keys.session_counter("test_session"), 0)  # the lost increments
    with caplog.at_level(logging.WARNING, logger="scanstream.publish.session"):
        with session.create_scan("third") as scan:
            scan.create_container("timer").create_channel("x").emit([3.0])
    assert scan.number == 3
    assert "scan number 1 is taken" in caplog.text and "scan number 2 is taken" in caplog.text
    node = get_session_node("test_session", store=store)
    names = {n: node.get_scan(n).name for n in (1, 2, 3)}
    assert names == {1: "1_first", 2: "2_second", 3: "3_third"}
    assert [c.name for c in node.get_scan(1).load_nodes() if c.type == "channel"] == ["x"]
    assert node.get_scan(1).load_nodes()[-1][:].tolist() == [1.0, 2.0]
