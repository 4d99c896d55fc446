"""The blocking calls a scan makes from the thread that publishes it, on a single server.

Each is a round trip that hands the GIL over among the threads of a process publishing many
scans at once (docs/performance.md, "Eighth round"): the writer's status and the scan's
number in one pipeline, the create script (which writes the NEW_SCAN entry too), the prepare
script (which checks that entry), the send of the last points and the end script (which
checks the entry again).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import redis

from scanstream import DataStore, PublishingSession
from scanstream._transport import transaction
from scanstream.exceptions import NoWriterError


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """What the test's own thread sends: command names, ``pipeline``, ``transaction``."""
    made: list[str] = []
    me = threading.current_thread()
    command = redis.Redis.execute_command
    pipeline = redis.client.Pipeline.execute
    packed = transaction.PackedTransaction.execute

    def counted_command(self: Any, *args: Any, **options: Any) -> Any:
        if threading.current_thread() is me:
            made.append(str(args[0]).upper())
        return command(self, *args, **options)

    def counted_pipeline(self: Any, *args: Any, **options: Any) -> Any:
        if threading.current_thread() is me:
            made.append("pipeline")
        return pipeline(self, *args, **options)

    def counted_transaction(self: Any, *args: Any, **options: Any) -> Any:
        if threading.current_thread() is me:
            made.append("transaction")
        return packed(self, *args, **options)

    monkeypatch.setattr(redis.Redis, "execute_command", counted_command)
    monkeypatch.setattr(redis.client.Pipeline, "execute", counted_pipeline)
    monkeypatch.setattr(transaction.PackedTransaction, "execute", counted_transaction)
    yield made


def _publish(session: PublishingSession) -> None:
    with session.create_scan("counted", {}) as scan:
        timer = scan.create_container("timer")
        channels = [timer.create_channel(f"c{i}") for i in range(3)]
        scan.prepared()
        for channel in channels:
            channel.emit(np.arange(10.0))


def test_a_scan_makes_five_round_trips_from_its_thread(
    session: PublishingSession, store: DataStore, calls: list[str]
) -> None:
    if store.is_cluster:
        pytest.skip("a single server's path: on a cluster the session's stream is elsewhere")
    _publish(session)  # loads the scripts into the server (EVAL once each)
    calls.clear()
    _publish(session)
    # The sender's thread may have sent the points before end(): then end() sends nothing.
    made = [c for c in calls if c != "transaction"]
    assert made == ["pipeline", "EVALSHA", "EVALSHA", "EVALSHA"], calls
    assert calls.count("transaction") <= 1


def test_the_round_trips_with_require_writer_keep_the_number_for_a_scan_that_starts(
    session: PublishingSession, store: DataStore, calls: list[str]
) -> None:
    counter = store.keys.session_counter(session.name)
    with pytest.raises(NoWriterError):
        session.create_scan("refused", {}, require_writer=True)
    assert calls == ["HGETALL"]  # no number taken for a scan that does not start
    assert store.redis.get(counter) is None
