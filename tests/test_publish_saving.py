"""The publisher knows whether its scan will be saved: the writer that follows the session at
the start, the saving verdict at the end, numbering above what a writer saved."""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from scanstream import (
    DataStore,
    NoWriterError,
    NoWriterWarning,
    PublishingSession,
    SavingState,
    SavingVerdict,
    create_session,
)
from scanstream._protocol import entries
from scanstream.writer import WriterService


def wait_for(condition: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"not true after {timeout} s: {condition}")
        time.sleep(0.02)


@pytest.fixture
def writer(store: DataStore, tmp_path: Path) -> Iterator[WriterService]:
    """A real writer following test_session, once its health key is in Redis."""
    service = WriterService(["test_session"], root=tmp_path, store=store).start()
    try:
        wait_for(lambda: store.redis.exists(store.keys.writer_health("test_session")))
        yield service
    finally:
        service.stop(timeout=10)


def record(store: DataStore, session: str, number: int, verdict: SavingVerdict) -> None:
    """Record a verdict as the owning writer does (the wire format of _protocol.entries)."""
    store.redis.hset(store.keys.scan(session, number), mapping=entries.saving_fields(verdict))


# ------------------------------------------------------------------ no writer at the start


def test_a_scan_no_writer_follows_warns_and_says_until_when_it_is_kept(
    session: PublishingSession, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING), pytest.warns(NoWriterWarning) as caught:
        scan = session.create_scan("unsaved", {})
    text = str(caught[0].message)
    assert text.startswith(
        "no writer follows session test_session: this scan will not be saved; "
        "it is kept in Redis until "
    )
    assert "retention_time = 86400 s after its end" in text
    assert "`scanstream writer test_session`" in text
    assert caught[0].filename == __file__  # points at the caller of create_scan
    assert text in caplog.text
    assert scan.no_writer == text and scan.writer is None
    scan.end()


def test_the_warning_can_be_silenced_and_the_scan_still_knows(store: DataStore) -> None:
    quiet = create_session("test_session", store=store, warn_no_writer=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet.create_scan("a", {}) as scan:
            assert scan.no_writer is not None
        with session_default(store).create_scan("b", {}, warn_no_writer=False) as other:
            assert other.no_writer is not None
    assert not [w for w in caught if issubclass(w.category, NoWriterWarning)]


def session_default(store: DataStore) -> PublishingSession:
    return create_session("test_session", store=store)


def test_require_writer_refuses_before_anything_is_created(store: DataStore) -> None:
    strict = create_session("test_session", store=store, require_writer=True)
    before = set(store.redis.keys("*"))
    with pytest.raises(NoWriterError, match="no writer follows session test_session"):
        strict.create_scan("refused", {})
    with pytest.raises(NoWriterError, match="scanstream writer test_session"):
        session_default(store).create_scan("refused", {}, require_writer=True)
    assert set(store.redis.keys("*")) == before  # no number taken, no key written


def test_a_scan_whose_saving_is_off_expects_no_writer(store: DataStore) -> None:
    strict = create_session("test_session", store=store, require_writer=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scan = strict.create_scan("off", {"save": False})
    assert not caught and scan.no_writer is None
    scan.end()
    verdict = scan.wait_saved(0)
    assert verdict.state is SavingState.NOT_SAVED and "save=False" in (verdict.reason or "")


def test_a_live_writer_is_seen_and_require_writer_then_starts(
    store: DataStore, writer: WriterService
) -> None:
    strict = create_session("test_session", store=store, require_writer=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with strict.create_scan("followed", {}) as scan:
            assert scan.writer is not None and scan.writer["owner"] == writer.owner
            assert scan.no_writer is None and scan.writer_follows()
    assert not caught


def test_a_writer_health_hash_without_an_owner_is_no_writer() -> None:
    status = b'{"pid": 1, "writing": true}'
    assert entries.parse_writer_health({}) is None
    assert entries.parse_writer_health({b"status": status}) is None
    assert entries.parse_writer_health({b"owner": b"h:1:x", b"status": b"{bad"}) is None
    assert entries.parse_writer_health({b"owner": b"h:1:x", b"status": b"[1]"}) is None
    parsed = entries.parse_writer_health({b"owner": b"h:1:x", b"status": status})
    assert parsed == {"pid": 1, "writing": True, "owner": "h:1:x"}


# ------------------------------------------------------------------ the verdict at the end


def test_wait_saved_returns_the_verdict_once_final(session: PublishingSession) -> None:
    scan = session.create_scan("judged", {}, warn_no_writer=False)
    scan.end()
    assert scan.saving.state is SavingState.WAITING
    writing = SavingVerdict(SavingState.WRITING, file="/data/f.h5", entries=("1.1",))
    saved = SavingVerdict(
        SavingState.SAVED, file="/data/f.h5", entries=("1.1",), points={"diode": 3}, time=1.0
    )
    record(session.store, session.name, scan.number, writing)

    def judge() -> None:
        time.sleep(0.3)
        record(session.store, session.name, scan.number, saved)

    thread = threading.Thread(target=judge)
    thread.start()
    try:
        assert scan.saving.state is SavingState.WRITING
        assert scan.wait_saved(10) == saved
    finally:
        thread.join(5)
    assert str(scan.wait_saved(0)) == "saved in /data/f.h5::1.1"


def test_wait_saved_gives_the_current_verdict_when_the_timeout_passes(
    session: PublishingSession,
) -> None:
    scan = session.create_scan("unjudged", {}, warn_no_writer=False)
    scan.end()
    t0 = time.monotonic()
    assert scan.wait_saved(0.3).state is SavingState.WAITING
    assert time.monotonic() - t0 >= 0.3
    assert scan.kept_until() is not None and scan.kept_until() > time.time()  # type: ignore[operator]


# ------------------------------------------------------------------ numbering


def test_numbering_continues_above_the_floor_after_a_reset(store: DataStore) -> None:
    publishing = create_session("test_session", store=store, warn_no_writer=False)
    scans = [publishing.create_scan("one", {})]
    assert scans[0].number == 1
    floor = store.keys.session_number_floor("test_session")
    counter = store.keys.session_counter("test_session")
    store.redis.set(floor, 41)
    store.redis.delete(counter)  # as a flushed or restarted-empty server has it
    scans += [publishing.create_scan(f"s{i}", {}) for i in range(3)]
    assert [scan.number for scan in scans[1:]] == [42, 43, 44]
    store.redis.set(floor, 10)  # a floor below the counter changes nothing
    scans.append(publishing.create_scan("next", {}))
    assert scans[-1].number == 45
    store.redis.set(floor, "garbage")
    scans.append(publishing.create_scan("again", {}))
    assert scans[-1].number == 46
    for scan in scans:  # their senders stop with them (none left retrying after the test)
        scan.end()
    publishing.close()


def test_concurrent_publishers_never_share_a_number(store: DataStore) -> None:
    store.redis.set(store.keys.session_number_floor("test_session"), 100)
    got: list[int] = []
    lock = threading.Lock()

    def publish() -> None:
        with DataStore(store.url) as own:
            publishing = create_session("test_session", store=own, warn_no_writer=False)
            for _ in range(10):
                scan = publishing.create_scan("c", {})
                with lock:
                    got.append(scan.number)
                scan.end()

    threads = [threading.Thread(target=publish) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert sorted(got) == list(range(101, 131))


def test_redis_errors_propagate_from_numbering(store: DataStore) -> None:
    store.redis.set(store.keys.session_counter("test_session"), "not a number")
    with pytest.raises(redis.exceptions.ResponseError):
        create_session("test_session", store=store, warn_no_writer=False).create_scan("x", {})
