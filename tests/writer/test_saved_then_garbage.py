"""Garbage over the hash of a scan saved earlier: its SAVED verdict and its file stay.

Found by soak.chaos (``--seed 3 --pool``): scan 27 was SAVED; then its ``info`` field was
overwritten with junk and the saved set replaced by a string, so a writer started later did
not know the scan was saved, read its scan_info, failed, and replaced the SAVED verdict with
"not saved ... (its scan_info is unreadable)": a complete file reported as not saved (in a
pool, WAITING for good).
"""

from __future__ import annotations

import logging

import h5py
import hdf5plugin  # noqa: F401  (the writer compresses with its filters: readers need them)
import numpy as np
import pytest

from scanstream._protocol.entries import parse_saving
from scanstream.models import SavingState
from scanstream.writer import WriterService, nexus, saved_scans

from .conftest import owning_writer, wait_for


def _verdict(store, number):
    return parse_saving(store.redis.hgetall(store.keys.scan("test_session", number)))


@pytest.mark.parametrize("pool", [False, True], ids=["single", "pool"])
def test_a_saved_scan_whose_info_turns_garbage_stays_saved(pool, session, store, tmp_path, caplog):
    root = tmp_path / "data"
    with owning_writer(store, root, flush_period=0.05):
        with session.create_scan("saved") as scan:
            scan.create_container("timer").create_channel("timer:c", "float64").emit(np.arange(5.0))
        wait_for(lambda: _verdict(store, scan.number).state.is_final, 15, "the verdict")
    before = _verdict(store, scan.number)
    assert before.state is SavingState.SAVED, before
    store.redis.hset(store.keys.scan("test_session", scan.number), "info", b"{\xff junk")
    store.redis.delete(store.keys.writer_saved("test_session"))
    store.redis.set(store.keys.writer_saved("test_session"), b"junk")
    caplog.set_level(logging.INFO, logger="scanstream.writer.scan_jobs")
    service = WriterService(["test_session"], root=root, store=store, pool=pool, isolate=False)
    with service:  # catches up the session's scans, the saved one included
        with session.create_scan("later") as later:
            later.create_container("timer").create_channel("timer:c").emit([1.0])
        wait_for(lambda: _verdict(store, later.number).state is SavingState.SAVED, 20, "later")
        wait_for(
            lambda: (
                any("by an earlier writer" in r.getMessage() for r in caplog.records)
                or _verdict(store, scan.number) != before
            ),
            10,
            "the saved scan to be looked at",
        )
    assert _verdict(store, scan.number) == before
    assert "failed 0" in repr(service), service
    assert scan.number not in saved_scans("test_session", store=store)  # the set is garbage
    with h5py.File(before.file, "r", locking=False) as file:
        path = nexus.channel_path(file[before.entries[0]], "timer:c")
        assert path is not None and file[path][()].tobytes() == np.arange(5.0).tobytes()
