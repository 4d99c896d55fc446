"""A foreign entry in a data stream: an entry no publisher wrote (``XADD key * ...`` by hand or
by another client), with an ID far beyond the published points.

Found by soak.chaos: the writer failed such a scan with "points 10 to 1796319463972 are gone
from Redis", as if data had expired or been lost by a failover, a wrong cause for the
operator to chase. The entry is garbage (DESIGN.md: one bad scan is reported with its reason),
and the points published before it are kept in the file.
"""

from __future__ import annotations

import logging

import h5py
import hdf5plugin  # noqa: F401  (the writer compresses with its filters: readers need them)
import numpy as np
import pytest
import redis

from scanstream._protocol import entries
from scanstream._protocol.entries import parse_saving
from scanstream.models import SavingState
from scanstream.writer import nexus

from .conftest import wait_for
from .test_bad_entries import _channel_key, _good_scan, wait_saved_ignoring_errors


def _verdict(store, number):
    return parse_saving(store.redis.hgetall(store.keys.scan("test_session", number)))


@pytest.mark.parametrize(
    "fields",
    [
        {"data": b"\x00" * 64, "n": "1"},
        {"n": "10", "d": np.arange(10.0).tobytes()},
        {b"\n\x1a": b"\xd6 junk"},
    ],
    ids=["not-points", "points-shaped", "no-count"],
)
def test_a_foreign_entry_far_ahead_is_named_and_the_points_kept(
    fields, writer, session, store, caplog, tmp_path
):
    caplog.set_level(logging.CRITICAL, logger="scanstream")
    scan = session.create_scan("foreign")
    channel = scan.create_container("timer").create_channel("timer:c", "float64")
    channel.emit(np.arange(10.0))
    key = _channel_key(store, scan.number)
    wait_for(lambda: store.redis.xlen(key) > 0, 5, "the first points in Redis")
    foreign = store.redis.xadd(key, fields).decode()  # ID: the time in ms, far ahead of 10
    channel.emit(np.arange(10.0, 20.0))
    # Redis refuses the publisher's next entry, below the foreign one.
    with pytest.raises(redis.exceptions.ResponseError, match="did not write"):
        scan.end()
    # The publisher stopped renewing its lease: the writer ends the scan KILLED, then judges.
    wait_for(lambda: _verdict(store, scan.number).state.is_final, 15, "a verdict")
    verdict = _verdict(store, scan.number)
    reason = verdict.reason or ""
    assert verdict.state is SavingState.FAILED, verdict
    assert f"garbage entry {foreign} in {key}" in reason, reason
    assert "gone" not in reason, reason
    # Sealed at the published points, not at the foreign entry's ID (some 1.8e12 points).
    assert "sealed in Redis" not in reason, reason
    assert entries.stream_length(store.redis.xrevrange(key, count=1)) == (10, True)
    good = _good_scan(session, "good")
    wait_saved_ignoring_errors(store, {good.number})
    # The 10 points published before the entry are in the file, exactly.
    with h5py.File(tmp_path / "data/test_session/test_session.h5", "r", locking=False) as file:
        entry = file[f"{scan.number}.1"]
        path = nexus.channel_path(entry, "timer:c")
        assert path is not None
        data = file[path][()]
    assert data.dtype == np.float64 and data.tobytes() == np.arange(10.0).tobytes(), data
