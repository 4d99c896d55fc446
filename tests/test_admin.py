"""Administration: ``scanstream ls`` / ``delete`` and their library functions, on real data."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from scanstream import (
    DataStore,
    ScanNotFoundError,
    ScanState,
    SessionNotFoundError,
    Settings,
    create_session,
    get_session_node,
)
from scanstream._protocol.entries import saving_fields
from scanstream._transport.server import EmbeddedServer
from scanstream.admin import (
    delete_scans,
    list_scans,
    list_sessions,
    parse_duration,
    server_memory,
)
from scanstream.cli import main
from scanstream.cli.admin import format_bytes
from scanstream.exceptions import InvalidArgumentError
from scanstream.models import SavingState, SavingVerdict


def _publish(session, name: str, npoints: int, *, end: bool = True, shape=()):
    """Publish a scan of ``npoints`` points in one channel; return (scan, channel)."""
    scan = session.create_scan(name, {"npoints": npoints})
    channel = scan.create_container("timer").create_channel("diode", shape=shape)
    scan.prepared()
    if npoints:
        channel.emit(
            np.arange(npoints * int(np.prod(shape)), dtype=float).reshape((npoints, *shape))
        )
    scan.flush()
    if end:
        scan.end()
    return scan, channel


def _mark_saved(store: DataStore, session: str, *numbers: int) -> None:
    store.redis.sadd(store.keys.writer_saved(session), *numbers)


def _scan_keys_left(store: DataStore, session: str, number: int) -> list[bytes]:
    # KEYS is fine in a test on a private server; the library never uses it.
    return store.redis.keys(f"{store.keys.prefix}:scan:{{{session}:{number}}}*")


@pytest.fixture
def long_lease_store(redis_url: str) -> Iterator[DataStore]:
    """A store whose publishers renew their lease rarely, so a test can delete the lease key
    to play a publisher that died (the next renewal is 20 s away)."""
    store = DataStore(settings=Settings(redis_url=redis_url, lease_time=60.0))
    try:
        yield store
    finally:
        store.close()


def test_parse_duration() -> None:
    assert parse_duration("90") == 90
    assert parse_duration("1.5s") == 1.5
    assert parse_duration("15m") == 900
    assert parse_duration("2h") == 7200
    assert parse_duration("7d") == 7 * 86400
    assert parse_duration("1W") == 604800
    for bad in ("", "-1h", "2 days", "h", "1y"):
        with pytest.raises(InvalidArgumentError, match="invalid duration"):
            parse_duration(bad)


def test_format_bytes() -> None:
    assert [format_bytes(v) for v in (None, 0, 1023, 1024, 5 << 20, 3 << 30)] == [
        "-",
        "0B",
        "1023B",
        "1.0KiB",
        "5.0MiB",
        "3.00GiB",
    ]


def test_list_sessions_and_scans(store: DataStore, session) -> None:
    _publish(session, "small", 10)
    _publish(session, "spectra", 100, shape=(1000,))
    running, _ = _publish(session, "running", 5, end=False)
    other = create_session("other", store=store)
    _publish(other, "ct", 1)
    _mark_saved(store, "test_session", 1)

    sessions = list_sessions(store)
    assert [s.name for s in sessions] == ["other", "test_session"]
    summary = sessions[1]
    assert [(s.number, s.name, s.state, s.points, s.saved, s.running) for s in summary.scans] == [
        (1, "small", "DONE", 10, True, False),
        (2, "spectra", "DONE", 100, False, False),
        (3, "running", "PREPARED", 5, False, True),
    ]
    small, spectra, live = summary.scans
    assert spectra.memory > 100 * 1000 * 8 > small.memory > 0
    assert small.keys == 3 and small.end_time is not None and live.end_time is None
    # Ended scans expire after the retention time (default one day); a running one does not.
    assert 86000 < small.expires_in <= 86400 and live.expires_in is None
    assert summary.memory > sum(s.memory for s in summary.scans)  # plus the session's own keys
    assert summary.points == 115
    assert list_scans(store, "other").scans[0].points == 1
    assert server_memory(store)["maxmemory_policy"] == "noeviction"
    running.end()

    with pytest.raises(SessionNotFoundError, match="no session named 'nope'.*known sessions"):
        list_sessions(store, "nope")


def test_ls_command(
    store: DataStore, session, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _publish(session, "loopscan", 7)
    _mark_saved(store, "test_session", 1)
    assert main(["--redis-url", redis_url, "ls"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("session test_session: 1 scan, ")
    assert lines[1].split() == [
        "#",
        "name",
        "state",
        "points",
        "memory",
        "ended",
        "expires",
        "in",
        "saving",
    ]
    row = lines[2].split()
    # In the writers' saved set, no verdict recorded (a writer without verdicts): "saved".
    assert row[:4] == ["1", "loopscan", "DONE", "7"] and row[-1] == "saved"
    assert lines[-1].startswith("total: 1 session, 1 scan, ")
    assert "policy noeviction" in lines[-1]

    assert main(["--redis-url", redis_url, "ls", "missing"]) == 1
    assert "no session named 'missing'" in capsys.readouterr().err


def test_delete_rules(store: DataStore, long_lease_store: DataStore) -> None:
    session = create_session("test_session", store=long_lease_store)
    _publish(session, "saved", 10)  # 1: ended, saved -> deleted
    _publish(session, "unsaved", 10)  # 2: ended, not saved -> kept
    running, _ = _publish(session, "running", 3, end=False)  # 3: running -> kept, even forced
    gone, _ = _publish(session, "gone", 4, end=False)  # 4: publisher died -> deletable
    _mark_saved(store, "test_session", 1, 3, 4)
    store.redis.delete(store.keys.scan_lease("test_session", 4))

    report = delete_scans(store, "test_session")
    assert [(d.number, d.reason) for d in report.deleted] == [
        (1, "ended DONE, saved"),
        (4, "publisher gone, saved"),
    ]
    assert [(d.number, d.reason) for d in report.kept] == [
        (2, "not saved by a writer (use --force to delete it anyway)"),
        (3, "running (PREPARED, publisher alive)"),
    ]
    assert report.freed > 0
    assert _scan_keys_left(store, "test_session", 1) == []
    assert _scan_keys_left(store, "test_session", 4) == []
    node = get_session_node("test_session", store=store)
    assert [s.number for s in node.children()] == [2, 3]
    with pytest.raises(ScanNotFoundError):
        node.get_scan(1)
    # What is left is intact.
    assert node.get_scan(2).children()[0].children()[0].get_as_array().tolist() == list(
        np.arange(10.0)
    )

    report = delete_scans(store, "test_session", force=True)
    assert [d.number for d in report.deleted] == [2]
    assert [(d.number, d.reason) for d in report.kept] == [
        (3, "running (PREPARED, publisher alive)")
    ]
    running.end()
    assert running.state is ScanState.DONE
    assert [d.number for d in delete_scans(store, "test_session").deleted] == [3]
    assert list_scans(store, "test_session").scans == []
    # The session stays known, and numbering goes on (a writer's saved set stays right).
    assert _publish(session, "next", 1)[0].number == 5
    gone._sender.stop()  # its background thread must not renew the deleted lease


def test_delete_older_than_and_numbers(store: DataStore, session) -> None:
    for name in ("a", "b", "c"):
        _publish(session, name, 2)
    _mark_saved(store, "test_session", 1, 2, 3)
    old = time.time() - 7200
    store.redis.hset(store.keys.scan("test_session", 1), "end_time", repr(old))

    report = delete_scans(store, "test_session", older_than=3600, dry_run=True)
    assert report.dry_run and [d.number for d in report.deleted] == [1]
    assert [d.reason.startswith("too recent (ended ") for d in report.kept] == [True, True]
    assert len(list_scans(store, "test_session").scans) == 3  # dry run: nothing deleted

    report = delete_scans(store, "test_session", older_than=3600)
    assert [d.number for d in report.deleted] == [1]
    report = delete_scans(store, "test_session", numbers=[3, 7])
    assert [d.number for d in report.deleted] == [3]
    assert [(d.number, d.reason) for d in report.kept] == [
        (7, "no such scan (never created, expired or deleted)")
    ]
    assert [s.number for s in list_scans(store, "test_session").scans] == [2]

    with pytest.raises(SessionNotFoundError):
        delete_scans(store, "nope")
    with pytest.raises(InvalidArgumentError, match="older_than"):
        delete_scans(store, "test_session", older_than=-1)
    with pytest.raises(InvalidArgumentError, match="positive ints"):
        delete_scans(store, "test_session", numbers=[0])


def test_delete_command(
    store: DataStore, session, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _publish(session, "kept", 3)
    _publish(session, "saved", 3)
    _mark_saved(store, "test_session", 2)
    url = ["--redis-url", redis_url]
    assert main([*url, "delete", "test_session", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "would delete test_session:2_saved: ended DONE, saved",
        ("kept test_session:1_kept: not saved by a writer (use --force to delete it anyway)"),
        out[-1],
    ]
    assert out[-1].startswith("1 scan would be deleted, 1 kept, ")
    # A scan named with --scan but kept makes the exit code 1, for scripts.
    assert main([*url, "delete", "test_session", "--scan", "1", "2"]) == 1
    out = capsys.readouterr().out
    assert "deleted test_session:2_saved" in out and "kept test_session:1_kept" in out
    assert (
        main([*url, "delete", "test_session", "--scan", "1", "--force", "--older-than", "0s"]) == 0
    )
    assert capsys.readouterr().out.startswith("deleted test_session:1_kept: ended DONE, not saved")
    assert main([*url, "delete", "test_session", "--older-than", "soon"]) == 2
    assert "invalid" in capsys.readouterr().err
    assert main([*url, "delete", "missing"]) == 1
    assert "no session named 'missing'" in capsys.readouterr().err


def test_full_server_recovers_by_deleting_old_scans(
    any_server_binary: Path, tmp_path: Path
) -> None:
    """noeviction: past maxmemory writes fail loudly (nothing is dropped); deleting old scans
    frees memory, after which the scan that hit the limit can send its queued points and end."""
    server = EmbeddedServer(tmp_path / "full", maxmemory="24mb", binary=any_server_binary)
    server.start(timeout=10)
    store = DataStore(settings=Settings(redis_url=server.url, lease_time=60.0))
    try:
        session = create_session("full", store=store)
        _publish(session, "old", 1000, shape=(1000,))  # 8 MB
        _mark_saved(store, "full", 1)
        scan, channel = _publish(session, "new", 0, end=False, shape=(1000,))
        # redis-py raises OutOfMemoryError or, when Redis refuses the XADD while queueing the
        # MULTI, ExecAbortError ("Transaction discarded because of: OOM ..."): both ResponseError.
        with pytest.raises(redis.exceptions.ResponseError, match="maxmemory"):
            for _ in range(1000):  # at most 80 MB: the limit is hit long before
                channel.emit(np.ones((10, 1000)))
                scan.flush()
        # Used memory hovers at the limit (a refused pipeline's buffers are freed at once, so
        # the next small write may fit): lower the limit so that end() surely meets a full server.
        store.redis.config_set("maxmemory", "1mb")
        with pytest.raises(redis.exceptions.ResponseError, match="maxmemory"):
            scan.end()
        assert scan.state is ScanState.PREPARED
        store.redis.config_set("maxmemory", "24mb")
        # Deleting needs no memory (DEL is allowed past maxmemory).
        report = delete_scans(store, "full", older_than=0)
        assert [d.number for d in report.deleted] == [1] and report.freed > 8_000_000
        scan.end()
        assert scan.state is ScanState.DONE
        # Every point accepted by emit() is there: none was dropped by the full server.
        node = get_session_node("full", store=store).get_scan(2)
        stored = node.children()[0].children()[0]
        assert len(stored) == len(channel) > 0
        assert np.array_equal(stored.get_as_array(), np.ones((len(channel), 1000)))
        session.create_scan("accepted").end()
    finally:
        store.close()
        server.stop()


def test_delete_command_frees_a_full_server(
    any_server_binary: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`scanstream delete` is the documented way out of a full server: it must work past
    maxmemory on every server, Redis 7.0 included, which refuses MULTI/EXEC there even for DEL."""
    server = EmbeddedServer(tmp_path / "full", binary=any_server_binary)
    server.start(timeout=10)
    store = DataStore(settings=Settings(redis_url=server.url, lease_time=60.0))
    try:
        session = create_session("full", store=store)
        _publish(session, "old", 500, shape=(1000,))  # 4 MB
        _publish(session, "unsaved", 10)
        running, _ = _publish(session, "running", 3, end=False)
        _mark_saved(store, "full", 1, 3)
        store.redis.config_set("maxmemory", "1mb")
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            store.redis.set("probe", "x")  # the server is full: it refuses writes
        url = ["--redis-url", server.url]
        assert main([*url, "delete", "full", "--dry-run"]) == 0
        assert capsys.readouterr().out.startswith("would delete full:1_old: ended DONE, saved\n")
        assert len(_scan_keys_left(store, "full", 1)) == 3  # hash, events, data
        assert main([*url, "delete", "full"]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[:3] == [
            "deleted full:1_old: ended DONE, saved",
            "kept full:2_unsaved: not saved by a writer (use --force to delete it anyway)",
            "kept full:3_running: running (PREPARED, publisher alive)",
        ]
        assert _scan_keys_left(store, "full", 1) == []
        assert len(_scan_keys_left(store, "full", 2)) == 3
        assert out[3].startswith("1 scan deleted, 2 kept, ") and out[3].endswith("MiB freed")
        store.redis.config_set("maxmemory", "0")
        running.end()
        assert [d.number for d in delete_scans(store, "full", force=True).deleted] == [2, 3]
    finally:
        store.close()
        server.stop()


# ----------------------------------------------------------------------------- saving verdicts


def _record_verdict(store: DataStore, session: str, number: int, verdict: SavingVerdict) -> None:
    """Record a verdict in the scan hash, as the writer that owns the scan does."""
    store.redis.hset(store.keys.scan(session, number), mapping=saving_fields(verdict))


_VERDICTS = {
    "saved": SavingVerdict(
        SavingState.SAVED, file="/data/s.h5", entries=("1.1", "1.2"), points={"diode": 4}
    ),
    "failed": SavingVerdict(SavingState.FAILED, reason="entry '2.1' already holds\nanother"),
    "writing": SavingVerdict(SavingState.WRITING, file="/data/s.h5", entries=("3.1",)),
    "waiting": SavingVerdict(SavingState.WAITING),  # recorded explicitly: still not final
    "off": SavingVerdict(SavingState.NOT_SAVED, reason="saving off in scan_info"),
}


def test_ls_shows_each_scans_saving_verdict(
    store: DataStore, session, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for number, (name, verdict) in enumerate(_VERDICTS.items(), start=1):
        _publish(session, name, 4)
        _record_verdict(store, "test_session", number, verdict)
    _publish(session, "none", 4)  # 6: no writer ever recorded anything
    # A garbage verdict reads as FAILED, never as saved.
    _publish(session, "garbage", 4)
    store.redis.hset(store.keys.scan("test_session", 7), "saving", "SAVED-ISH")

    summary = list_scans(store, "test_session")
    states = {s.name: (s.saving.state, s.saving_final, s.safe_to_drop) for s in summary.scans}
    assert states == {
        "saved": (SavingState.SAVED, True, True),
        "failed": (SavingState.FAILED, True, False),
        "writing": (SavingState.WRITING, False, False),
        "waiting": (SavingState.WAITING, False, False),
        "off": (SavingState.NOT_SAVED, True, True),
        "none": (SavingState.WAITING, False, False),
        "garbage": (SavingState.FAILED, True, False),
    }
    assert main(["--redis-url", redis_url, "ls", "test_session"]) == 0
    rows = {line.split()[1]: line for line in capsys.readouterr().out.splitlines()[2:-1]}
    assert rows["saved"].endswith("saved /data/s.h5::1.1,1.2")
    assert rows["failed"].endswith("FAILED: entry '2.1' already holds another")  # one line
    assert rows["writing"].endswith("WRITING /data/s.h5")
    assert rows["waiting"].endswith("WAITING") and rows["none"].endswith("WAITING")
    assert rows["off"].endswith("NOT_SAVED: saving off in scan_info")
    assert "FAILED: corrupt saving verdict" in rows["garbage"]


def test_delete_keeps_scans_whose_saving_is_not_done(
    store: DataStore, session, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for number, (name, verdict) in enumerate(_VERDICTS.items(), start=1):
        _publish(session, name, 4)
        _record_verdict(store, "test_session", number, verdict)
    _publish(session, "none", 4)
    # In the saved set but with a verdict that says otherwise: the verdict wins.
    _mark_saved(store, "test_session", 3)

    report = delete_scans(store, "test_session")
    assert [(d.number, d.reason) for d in report.deleted] == [
        (1, "ended DONE, saved"),
        (5, "ended DONE, not saved by design"),
    ]
    kept = {d.number: d.reason for d in report.kept}
    assert sorted(kept) == [2, 3, 4, 6]
    assert "saving FAILED: entry '2.1'" in kept[2] and "--force" in kept[2]
    assert "saving being written into /data/s.h5" in kept[3]
    assert kept[4] == kept[6] == "not saved by a writer (use --force to delete it anyway)"
    for number in (2, 3, 4, 6):
        assert _scan_keys_left(store, "test_session", number)

    assert main(["--redis-url", redis_url, "delete", "test_session", "--scan", "3"]) == 1
    assert "kept test_session:3_writing: not saved" in capsys.readouterr().out
    assert main(["--redis-url", redis_url, "delete", "test_session", "--force"]) == 0
    out = capsys.readouterr().out
    assert "deleted test_session:3_writing: ended DONE, not saved (forced; saving WRITING)" in out
    assert list_scans(store, "test_session").scans == []


def test_a_scan_with_saving_off_is_final_with_no_writer(
    store: DataStore, session, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # `scanstream scan --no-saving` says "not saved, by design" at once; ls, show, delete and
    # `server stop` must agree without a writer having run (README, docs/server.md).
    scan = session.create_scan("off", {"npoints": 2, "save": False})
    channel = scan.create_container("timer").create_channel("diode")
    scan.prepared()
    channel.emit([1.0, 2.0])
    scan.end()
    _publish(session, "none", 2)
    assert scan.wait_saved(0).state is SavingState.NOT_SAVED

    summary = {s.name: s for s in list_scans(store, "test_session").scans}
    assert summary["off"].saving.state is SavingState.NOT_SAVED
    assert summary["off"].saving_final and summary["off"].safe_to_drop
    assert not summary["none"].saving_final  # saving on, no writer: WAITING still
    node = get_session_node("test_session", store=store).get_scan(1)
    assert node.saving.state is SavingState.NOT_SAVED
    assert main(["--redis-url", redis_url, "show", "test_session", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["saving"]["state"] == "NOT_SAVED"
    assert main(["--redis-url", redis_url, "ls", "test_session"]) == 0
    rows = {line.split()[1]: line for line in capsys.readouterr().out.splitlines()[2:-1]}
    assert "NOT_SAVED" in rows["off"] and rows["none"].endswith("WAITING")
    report = delete_scans(store, "test_session")
    assert [(d.number, d.reason) for d in report.deleted] == [
        (1, "ended DONE, not saved by design")
    ]
    assert [d.number for d in report.kept] == [2]
