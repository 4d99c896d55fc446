"""Bad entries (written with raw XADD) fail their scan or node once; every other scan is saved.

And the saving verdict: what the writer records in the scan hash, checked against the
sealed lengths (a corrupt or a missing data entry is never "saved").
"""

from __future__ import annotations

import logging
import time

import h5py
import numpy as np
import pytest

from scanstream import get_session_node
from scanstream._protocol.entries import parse_saving
from scanstream.models import SavingState
from scanstream.writer import saved_scans, writer_status

from .conftest import assert_file_matches_redis, wait_for, wait_saved


def _verdict(store, number: int):
    return parse_saving(store.redis.hgetall(store.keys.scan("test_session", number)))


def _final_verdict(store, number: int, timeout: float = 15.0):
    wait_for(lambda: _verdict(store, number).state.is_final, timeout, f"a verdict on scan {number}")
    return _verdict(store, number)


def _good_scan(session, name: str, values=(1.0, 2.0, 3.0)):
    with session.create_scan(name) as scan:
        scan.create_container("timer").create_channel("timer:c").emit(list(values))
    return scan


def test_saved_verdict_names_file_entries_and_points(writer, session, store, tmp_path):
    scan = _good_scan(session, "fine")
    verdict = _final_verdict(store, scan.number)
    assert verdict.state is SavingState.SAVED
    assert verdict.file == str(tmp_path / "data/test_session/test_session.h5")
    assert verdict.entries == (f"{scan.number}.1",)
    assert list(verdict.points.values()) == [3]
    assert verdict.writer == writer.owner


def test_saving_off_is_recorded_as_not_saved(writer, session, store):
    with session.create_scan("off", {"save": False}) as scan:
        scan.create_container("timer").create_channel("timer:c").emit([1.0])
    verdict = _final_verdict(store, scan.number)
    assert verdict.state is SavingState.NOT_SAVED
    assert "save=False" in (verdict.reason or "")


def test_a_garbage_new_scan_entry_does_not_stop_the_session(writer, session, store, caplog):
    caplog.set_level(logging.CRITICAL, logger="scanstream")
    store.redis.xadd(store.keys.session_scans("test_session"), {"event": "NEW_SCAN", "x": "?"})
    store.redis.xadd(store.keys.session_scans("test_session"), {"garbage": b"\xff\x00"})
    scans = [_good_scan(session, f"after{i}") for i in range(2)]
    wait_saved_ignoring_errors(store, {s.number for s in scans})
    for scan in scans:
        assert _final_verdict(store, scan.number).state is SavingState.SAVED


def test_a_corrupt_new_node_entry_fails_that_scan_once(writer, session, store, caplog):
    caplog.set_level(logging.CRITICAL, logger="scanstream")
    bad = session.create_scan("bad")
    bad.create_container("timer").create_channel("timer:c").emit([1.0])
    store.redis.xadd(
        store.keys.scan_events("test_session", bad.number),
        {"event": "NEW_NODE", "node": "x", "info": "{"},
    )
    bad.end()
    good = _good_scan(session, "good")
    verdict = _final_verdict(store, bad.number)
    assert verdict.state is SavingState.FAILED, verdict
    wait_saved_ignoring_errors(store, {good.number})
    wait_for(
        lambda: writer_status("test_session", store=store)["errors"], 5, "the error in --status"
    )
    errors = writer_status("test_session", store=store)["errors"]
    assert [e["number"] for e in errors] == [bad.number]  # once, not in a loop
    assert bad.number not in saved_scans("test_session", store=store)


def test_a_new_node_with_a_garbage_index_fails_that_scan_and_the_next_is_saved(
    writer, session, store, caplog
):
    # The end script skips it (its END once named the index "abc"); the scan's walk reports
    # the entry: the scan fails once, the session listener goes on with the later scans.
    caplog.set_level(logging.CRITICAL, logger="scanstream")
    bad = session.create_scan("bad")
    bad.create_container("timer").create_channel("timer:c").emit([1.0])
    store.redis.xadd(
        store.keys.scan_events("test_session", bad.number),
        {
            "event": "NEW_NODE",
            "node": "abc",
            "parent": "0",
            "type": "channel",
            "name": "q",
            "info": "{}",
        },
    )
    bad.end()
    good = _good_scan(session, "good")
    assert _final_verdict(store, bad.number).state is SavingState.FAILED
    wait_saved_ignoring_errors(store, {good.number})
    assert _final_verdict(store, good.number).state is SavingState.SAVED
    wait_for(
        lambda: writer_status("test_session", store=store)["errors"], 5, "the error in --status"
    )
    errors = writer_status("test_session", store=store)["errors"]
    assert [e["number"] for e in errors] == [bad.number]  # once, not in a loop


def test_a_corrupt_data_entry_is_never_saved(writer, session, store, caplog, tmp_path):
    caplog.set_level(logging.CRITICAL, logger="scanstream")
    scan = session.create_scan("corrupt")
    channel = scan.create_container("timer").create_channel("timer:c", "float64")
    channel.emit(np.arange(10.0))
    key = _channel_key(store, scan.number)
    wait_for(lambda: store.redis.xlen(key) > 0, 5, "the first points in Redis")
    # Between the first batch (ID 0-1) and the next one (10-1): an ID no real entry has.
    store.redis.xadd(key, {"garbage": "1"}, id="10-0")
    channel.emit(np.arange(10.0, 20.0))
    scan.end()
    good = _good_scan(session, "good")
    verdict = _final_verdict(store, scan.number)
    assert verdict.state is SavingState.FAILED, verdict
    assert "timer:c" in verdict.reason and "corrupt" in verdict.reason, verdict.reason
    assert scan.number not in saved_scans("test_session", store=store)
    wait_saved_ignoring_errors(store, {good.number})


def test_missing_data_fails_with_the_channel_and_counts(session, store, caplog, tmp_path):
    from scanstream.writer import WriterService

    caplog.set_level(logging.CRITICAL, logger="scanstream")
    scan = session.create_scan("holes")
    channel = scan.create_container("timer").create_channel("timer:c", "float64")
    channel.emit(np.arange(0.0, 10.0))
    key = _channel_key(store, scan.number)
    for start in range(0, 30, 10):  # three entries
        if start:
            channel.emit(np.arange(start, start + 10.0))
        wait_for(lambda s=start: store.redis.xlen(key) > s // 10, 5, "the entry in Redis")
    scan.end()
    # As a Redis restored from an older snapshot would have it: points gone, seal kept.
    entries = store.redis.xrange(key)
    assert len(entries) >= 2
    store.redis.xdel(key, entries[0][0])
    with WriterService(["test_session"], root=tmp_path, store=store):  # started after the loss
        writer_verdict = _final_verdict(store, scan.number)
    assert writer_verdict.state is SavingState.FAILED, writer_verdict
    # The walk finds the hole (its reason names the channel and the points), or the length
    # check does ("N points in the file, 30 sealed in Redis").
    reason = writer_verdict.reason or ""
    assert "timer:c" in reason and ("gone" in reason or "30 sealed" in reason), reason


def _channel_key(store, number: int) -> str:
    scan = get_session_node("test_session", store=store).get_scan(number)
    wait_for(lambda: any(n.type == "channel" for n in scan.load_nodes()), 5, "the channel")
    (node,) = [n for n in scan.load_nodes() if n.type == "channel"]
    return str(node.key)


def wait_saved_ignoring_errors(store, numbers, timeout: float = 20.0) -> None:
    wait_for(
        lambda: numbers <= saved_scans("test_session", store=store),
        timeout,
        f"scans {sorted(numbers)} to be saved",
    )


def test_numbering_restarted_never_drops_a_scan(redis_url, store, tmp_path):
    from scanstream import DataStore, create_session
    from scanstream.writer import WriterService

    with WriterService(["test_session"], root=tmp_path, store=store):
        session = create_session("test_session", store=store)
        first = _good_scan(session, "before", (1.0,))
        wait_saved(store, "test_session", {first.number})
        session.close()
    store.redis.flushall()  # a server reset: every key gone, numbering starts again
    with DataStore(redis_url) as fresh:
        session = create_session("test_session", store=fresh)
        second = _good_scan(session, "after", (7.0, 8.0))
        assert second.number == first.number  # the same number again
        with WriterService(["test_session"], root=tmp_path, store=fresh):
            verdict = _final_verdict(fresh, second.number)
            floor = fresh.redis.get(fresh.keys.session_number_floor("test_session"))
        session.close()
    assert verdict.state is SavingState.SAVED, verdict
    assert verdict.entries == (f"{first.number + 1}.1",)
    assert floor is not None and int(floor) >= first.number
    with h5py.File(tmp_path / "test_session/test_session.h5", "r") as file:
        assert file[f"{first.number}.1/measurement/c"][()].tolist() == [1.0]
        assert file[f"{first.number + 1}.1/measurement/c"][()].tolist() == [7.0, 8.0]


def test_the_number_floor_is_published(session, store, tmp_path):
    from scanstream.writer import WriterService

    _ = assert_file_matches_redis  # the fixtures' helper, used by the other modules
    for _i in range(3):
        _good_scan(session, "s")
    with WriterService(["test_session"], root=tmp_path, store=store):
        wait_saved(store, "test_session", {1, 2, 3})
    with WriterService(["test_session"], root=tmp_path, store=store):
        wait_for(
            lambda: store.redis.get(store.keys.session_number_floor("test_session")) == b"3",
            5,
            "the floor to be published",
        )


def test_a_session_file_left_half_created_is_rebuilt(writer, session, store, tmp_path):
    # What a writer SIGKILLed while creating the session file leaves: a truncated file.
    first = _good_scan(session, "first", (1.0,))
    wait_saved(store, "test_session", {first.number})
    path = tmp_path / "data/test_session/test_session.h5"
    with open(path, "r+b") as file:
        file.truncate(96)
    second = _good_scan(session, "second", (2.0,))
    assert _final_verdict(store, second.number).state is SavingState.SAVED
    with h5py.File(path, "r") as file:
        assert file[f"{first.number}.1/measurement/c"][()].tolist() == [1.0]
        assert file[f"{second.number}.1/measurement/c"][()].tolist() == [2.0]
    assert list(path.parent.glob("test_session.h5.damaged-*"))


def _wrong_type(key):
    def damage(store):
        store.redis.delete(key(store.keys))
        store.redis.set(key(store.keys), "garbage")

    return damage


GARBAGE = {
    "scan hash is a string": _wrong_type(lambda k: k.scan("test_session", 1)),
    "scan hash without number": lambda store: store.redis.hdel(
        store.keys.scan("test_session", 1), "number"
    ),
    "scan hash with a garbage state": lambda store: store.redis.hset(
        store.keys.scan("test_session", 1), "state", "WHATEVER"
    ),
    "scan hash with garbage info": lambda store: store.redis.hset(
        store.keys.scan("test_session", 1), "info", "{garbage"
    ),
    "event stream is a string": _wrong_type(lambda k: k.scan_events("test_session", 1)),
    "data stream is a string": _wrong_type(lambda k: k.scan_data("test_session", 1, 2)),
    "saved set is a string": _wrong_type(lambda k: k.writer_saved("test_session")),
}


@pytest.mark.parametrize("damage", GARBAGE.values(), ids=GARBAGE.keys())
def test_garbage_over_one_scan_keys_the_writer_saves_the_others(
    damage, session, store, caplog, tmp_path
):
    from scanstream.writer import WriterService

    caplog.set_level(logging.CRITICAL, logger="scanstream")
    first = _good_scan(session, "damaged")
    assert first.number == 1
    damage(store)
    later = [_good_scan(session, f"later{i}", (float(i),)) for i in range(2)]
    with WriterService(["test_session"], root=tmp_path, store=store, flush_period=0.05):
        for scan in later:
            assert _final_verdict(store, scan.number, timeout=30).state is SavingState.SAVED
        more = _good_scan(session, "after the writer started", (9.0,))
        assert _final_verdict(store, more.number, timeout=30).state is SavingState.SAVED
    with h5py.File(tmp_path / "test_session/test_session.h5", "r") as file:
        for scan in later:
            assert f"{scan.number}.1" in file


def test_garbage_over_the_session_stream_is_one_clear_line(session, store, caplog, tmp_path):
    from scanstream.writer import WriterService

    _good_scan(session, "before")
    key = store.keys.session_scans("test_session")
    store.redis.delete(key)
    store.redis.set(key, "garbage")
    caplog.set_level(logging.WARNING, logger="scanstream.writer")
    with WriterService(["test_session"], root=tmp_path, store=store, flush_period=0.05):
        wait_for(lambda: key in caplog.text, 10, "the error naming the key")
        time.sleep(2.5)  # two more attempts of the listener
    lines = [r for r in caplog.records if key in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]  # once per run of failures
    assert lines[0].exc_info is None and "is not a stream" in lines[0].getMessage()


@pytest.mark.parametrize("kind", ["string", "list"])
def test_garbage_over_the_writer_claim_is_replaced(kind, session, store, caplog, tmp_path, capsys):
    """The session's writer claim (its health key) of another type holds no claim: left
    there it kept every writer from the session forever (a WRONGTYPE warning a second) and
    made `scanstream writer --status` and `scanstream scan` fail with a traceback."""
    from scanstream.cli import main
    from scanstream.publish.saving import writer_of
    from scanstream.writer import WriterService

    key = store.keys.writer_health("test_session")

    def damage() -> None:
        store.redis.delete(key)
        if kind == "string":
            store.redis.set(key, "garbage")
        else:
            store.redis.rpush(key, "garbage")

    damage()
    caplog.set_level(logging.WARNING, logger="scanstream")
    assert writer_status("test_session", store=store) is None
    assert writer_of(store, "test_session") is None
    assert main(["--redis-url", store.url, "writer", "--status", "test_session"]) == 1
    assert "test_session: no writer" in capsys.readouterr().out
    first = _good_scan(session, "before")
    with WriterService(["test_session"], root=tmp_path, store=store, flush_period=0.05):
        assert _final_verdict(store, first.number, timeout=30).state is SavingState.SAVED
        damage()  # again, under the running writer
        wait_for(lambda: store.redis.type(key) == b"hash", 10, "the claim to be taken back")
        later = _good_scan(session, "after")
        assert _final_verdict(store, later.number, timeout=30).state is SavingState.SAVED
        assert writer_status("test_session", store=store)["writing"]
    replaced = [r for r in caplog.records if "replaced by the claim" in r.getMessage()]
    assert len(replaced) == 2, caplog.text
    assert all(key in r.getMessage() and f"was a {kind}" in r.getMessage() for r in replaced)
    assert not [r for r in caplog.records if r.exc_info], caplog.text


@pytest.mark.parametrize("field", ["number", "state", "name", "node_type"])
def test_a_scan_whose_hash_is_corrupt_is_failed_with_the_reason(field, session, store, tmp_path):
    """Garbage over one identity field of a scan's hash: the walk skips the scan (no reader
    can follow it); its verdict stayed WAITING ("waiting for a writer") while a writer ran,
    so a publisher waiting for it timed out instead of hearing why (found by soak.chaos)."""
    from scanstream.writer import WriterService

    saved_before = _good_scan(session, "saved before")
    with WriterService(["test_session"], root=tmp_path, store=store, flush_period=0.05):
        wait_saved_ignoring_errors(store, {saved_before.number})
    damaged = _good_scan(session, "damaged")
    later = _good_scan(session, "later", (4.0,))
    key = store.keys.scan("test_session", damaged.number)
    store.redis.hset(key, field, b"\xff\x00junk")
    # A scan SAVED before its hash was damaged keeps its verdict: its file is whole.
    store.redis.hset(store.keys.scan("test_session", saved_before.number), field, b"\xff")
    with WriterService(["test_session"], root=tmp_path, store=store, flush_period=0.05):
        verdict = _final_verdict(store, damaged.number)
        assert _final_verdict(store, later.number).state is SavingState.SAVED
    assert verdict.state is SavingState.FAILED, verdict
    assert key in (verdict.reason or "") and "corrupt scan hash" in (verdict.reason or "")
    assert _verdict(store, saved_before.number).state is SavingState.SAVED


def test_a_data_stream_overwritten_while_its_scan_runs_is_not_called_a_failover(
    writer, session, store, caplog
):
    """Found by soak.chaos: a data stream replaced by a string mid-scan failed the scan with
    the corrupt key named, then "N points were acknowledged by Redis and 0 are left in it
    (lost by a failover or a restart)", a wrong cause for the operator to chase."""
    from scanstream.exceptions import ScanstreamError

    caplog.set_level(logging.CRITICAL, logger="scanstream")
    scan = session.create_scan("overwritten")
    channel = scan.create_container("timer").create_channel("timer:c", "float64")
    other = scan.create_container("timer2").create_channel("timer2:d", "float64")
    channel.emit(np.arange(10.0))
    other.emit(np.arange(10.0))
    key = _channel_key_named(store, scan.number, "timer:c")
    wait_for(lambda: store.redis.xlen(key) > 0, 5, "the first points in Redis")
    store.redis.delete(key)
    store.redis.set(key, b"\xff garbage")
    with pytest.raises(ScanstreamError):
        scan.end()  # the publisher's acknowledged points are not there: ScanLostError
    verdict = _final_verdict(store, scan.number)
    assert verdict.state is SavingState.FAILED, verdict
    reason = verdict.reason or ""
    assert key in reason and "is not a stream" in reason, reason
    assert "failover" not in reason, reason
    good = _good_scan(session, "good")
    wait_saved_ignoring_errors(store, {good.number})


def _channel_key_named(store, number: int, name: str) -> str:
    scan = get_session_node("test_session", store=store).get_scan(number)
    wait_for(lambda: any(n.name == name for n in scan.load_nodes()), 5, f"channel {name}")
    return str(next(n.key for n in scan.load_nodes() if n.name == name))


def test_a_sequence_is_saved_when_one_of_its_sub_scans_is_corrupt(session, store, tmp_path):
    """Found by soak.chaos: garbage over a sub-scan's hash failed the sequence referencing it
    too ("GroupingMaster:scans: corrupt data entry ... corrupt scan hash" of the sub-scan),
    where a sub-scan gone is skipped: the damage must cost that scan only."""
    from scanstream.writer import WriterService

    group = session.create_scan(
        "seq", {"type": "sequence", "is-scan-sequence": True}, node_type="scan_group"
    )
    refs = group.create_container("GroupingMaster").create_scan_ref_channel("scans")
    group.prepared()
    subs = []
    for i in range(2):
        sub = session.create_scan(f"sub{i}")
        refs.emit((sub.session_name, int(sub.number)))
        sub.create_container("timer").create_channel("timer:c").emit([float(i)])
        sub.end()
        subs.append(sub)
    group.end()
    bad_key = store.keys.scan("test_session", subs[1].number)
    store.redis.hset(bad_key, "state", b"\xff junk")
    with WriterService(["test_session"], root=tmp_path, store=store, flush_period=0.05):
        verdict = _final_verdict(store, group.number)
        assert _final_verdict(store, subs[0].number).state is SavingState.SAVED
        assert _final_verdict(store, subs[1].number).state is SavingState.FAILED
    assert verdict.state is SavingState.SAVED, verdict
    with h5py.File(tmp_path / "test_session/test_session.h5", "r") as file:
        links = file[f"{group.number}.1/scans"]
        assert f"{subs[0].number}.1" in links
        assert f"{subs[1].number}.1" not in links


def test_an_ended_scan_whose_event_stream_is_gone_is_failed(session, store, tmp_path):
    """Found by soak.chaos: an ended scan, not yet saved, whose event stream was deleted kept
    the verdict WRITING for good, with no line in the log: its walk waited for an END."""
    from scanstream.writer import WriterService

    gone = _good_scan(session, "gone")
    later = _good_scan(session, "later", (5.0,))
    key = store.keys.scan_events("test_session", gone.number)
    store.redis.delete(key)
    with WriterService(["test_session"], root=tmp_path, store=store, flush_period=0.05):
        verdict = _final_verdict(store, gone.number)
        assert _final_verdict(store, later.number).state is SavingState.SAVED
    assert verdict.state is SavingState.FAILED, verdict
    assert key in (verdict.reason or "") and "is gone" in (verdict.reason or ""), verdict


def test_a_running_scan_whose_event_stream_is_deleted_is_never_saved_empty(
    writer, session, store, caplog
):
    """Found by soak.chaos: the event stream of a running scan deleted, END (from its
    publisher, or from a writer declaring it KILLED) made the stream again with no NEW_NODE
    entry, and the scan was SAVED with 0 points: its data was in Redis, named by nothing."""
    from scanstream.exceptions import DecodingError

    caplog.set_level(logging.CRITICAL, logger="scanstream")
    scan = session.create_scan("events deleted")
    channel = scan.create_container("timer").create_channel("timer:c", "float64")
    scan.prepared()
    channel.emit(np.arange(10.0))
    key = store.keys.scan_events("test_session", scan.number)
    data_key = _channel_key_named(store, scan.number, "timer:c")
    wait_for(lambda: store.redis.xlen(data_key) > 0, 5, "the first points in Redis")
    store.redis.delete(key)
    with pytest.raises(DecodingError, match="is gone") as error:
        scan.end()
    assert key in str(error.value) and "scanstream delete" in str(error.value)
    assert not store.redis.exists(key), "END made the event stream again"
    verdict = _final_verdict(store, scan.number, timeout=30)
    assert verdict.state is SavingState.FAILED, verdict
    assert key in (verdict.reason or "") and "is gone" in (verdict.reason or ""), verdict
    assert store.redis.xlen(data_key) > 0, "the data left in Redis must be kept"
    good = _good_scan(session, "good")
    wait_saved_ignoring_errors(store, {good.number})
