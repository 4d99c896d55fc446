"""What a publisher says and raises when its server goes away: killed for good, killed and
restarted empty or with its data. The server process is really killed (SIGKILL).

Each incident must give a few clear log lines (no traceback: the outage is expected), and the
user's ``emit``/``end`` one documented ``ScanstreamError`` naming the scan and the server,
within the outage budget (not twice it), with what was dropped counted.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

import numpy as np
import pytest

from scanstream import (
    DataStore,
    RedisUnreachableError,
    ScanLostError,
    ScanState,
    ScanstreamError,
    Settings,
    create_session,
    get_session_node,
)
from scanstream._transport.server import EmbeddedServer


def _store(url: str, **settings: Any) -> DataStore:
    settings.setdefault("lease_time", 30.0)
    return DataStore(settings=Settings(redis_url=url, **settings))


def _kill(server: EmbeddedServer) -> None:
    pid = server.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    server.stop()  # reaps it


def _emit_until_refused(channel: Any, timeout: float) -> tuple[BaseException, float]:
    """Emit a point every 10 ms until ``emit`` raises; return the error and when."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            channel.emit(1.0)
        except ScanstreamError as exc:
            return exc, time.monotonic()
        time.sleep(0.01)
    pytest.fail(f"emit did not raise within {timeout} s")


def _records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name.startswith("scanstream.publish") and r.levelno >= logging.INFO
    ]


def test_a_server_killed_for_good_fails_the_scan_within_the_budget(
    private_server: EmbeddedServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="scanstream")
    store = _store(private_server.url, max_unreachable_time=3.0)
    try:
        scan = create_session("gone", store=store, warn_no_writer=False).create_scan("s")
        channel = scan.create_container("timer").create_channel("c")
        scan.prepared()
        channel.emit(np.arange(100.0))
        scan.flush()
        killed = time.monotonic()
        _kill(private_server)
        error, when = _emit_until_refused(channel, 20)
        # The budget is timed from the first failed attempt, not from when redis-py's retry
        # gave up on it (which let a publisher ride out twice the budget).
        assert when - killed < 3.0 + 2.0, f"emit raised {when - killed:.1f} s after the kill"
        assert isinstance(error, RedisUnreachableError)
        text = str(error)
        assert scan.db_name in text and f"127.0.0.1:{private_server.port}" in text
        assert "queued points were dropped" in text and "KILLED" in text
        started = time.monotonic()
        with pytest.raises(RedisUnreachableError) as ended:
            scan.end(ScanState.FAILED, error="outage")
        assert ended.value is error  # the same error, at once: not another budget spent
        assert time.monotonic() - started < 1.0
        records = _records(caplog)
        assert not [r for r in records if r.exc_info], "a traceback for an expected outage"
        assert len(records) <= 2, [r.getMessage() for r in records]
        assert sum(scan.db_name in r.getMessage() for r in records) >= 1
    finally:
        scan._sender.stop()
        store.close()


def test_a_server_restarted_empty_loses_the_scan_with_one_clear_error(
    private_server: EmbeddedServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="scanstream")
    store = _store(private_server.url, max_unreachable_time=10.0)
    try:
        scan = create_session("reset", store=store, warn_no_writer=False).create_scan("s")
        channel = scan.create_container("timer").create_channel("c")
        scan.prepared()
        channel.emit(np.arange(100.0))
        scan.flush()
        _kill(private_server)
        time.sleep(1.0)
        private_server.start(timeout=10)  # without persistence: empty
        error, _ = _emit_until_refused(channel, 20)
        assert isinstance(error, ScanLostError), repr(error)
        text = str(error)
        assert scan.db_name in text and f"127.0.0.1:{private_server.port}" in text
        assert "new DataStore" in text
        with pytest.raises(ScanLostError) as ended:
            scan.end()
        assert ended.value is error
        assert scan.state is ScanState.FAILED
        records = _records(caplog)
        assert not [r for r in records if r.exc_info], "a traceback for an expected reset"
        assert len(records) <= 2, [r.getMessage() for r in records]
    finally:
        scan._sender.stop()
        store.close()
    # The next scan works, through a new store (the old one refuses the reset server).
    with _store(private_server.url) as fresh:
        session = create_session("reset", store=fresh, warn_no_writer=False)
        with session.create_scan("next") as next_scan:
            next_scan.create_container("timer").create_channel("c").emit(np.arange(5.0))
        assert get_session_node("reset", store=fresh).get_scan(next_scan.number).state is (
            ScanState.DONE
        )


def test_a_server_restarted_with_its_data_loses_nothing_and_logs_no_error(
    persistent_server: EmbeddedServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="scanstream")
    store = _store(persistent_server.url, max_unreachable_time=20.0)
    try:
        scan = create_session("kept", store=store, warn_no_writer=False).create_scan("s")
        channel = scan.create_container("timer").create_channel("c")
        scan.prepared()
        for i in range(100):
            channel.emit(float(i))
        scan.flush()
        _kill(persistent_server)
        for i in range(100, 300):  # during the outage: queued
            channel.emit(float(i))
            time.sleep(0.01)
        persistent_server.start(timeout=30)
        for i in range(300, 400):
            channel.emit(float(i))
        scan.end()
        node = [
            n
            for n in get_session_node("kept", store=store).get_scan(scan.number).load_nodes()
            if n.name == "c"
        ][0]
        assert np.array_equal(node.get(0, -1), np.arange(400.0))
        records = _records(caplog)
        assert not [r for r in records if r.levelno >= logging.ERROR or r.exc_info], [
            r.getMessage() for r in records
        ]
        # The store says once that the server does not answer, and once that it is back,
        # whatever the number of commands retried meanwhile (sends, lease renewals).
        store_lines = [
            r.getMessage()
            for r in caplog.records
            if r.name == "scanstream._transport.retry" and r.levelno >= logging.WARNING
        ]
        where = f"Redis at redis://127.0.0.1:{persistent_server.port}"
        assert len(store_lines) == 2, store_lines
        assert store_lines[0].startswith(f"{where} does not answer"), store_lines
        assert store_lines[1].startswith(f"{where} answers again after"), store_lines
    finally:
        store.close()


def test_a_scan_block_left_by_an_outage_logs_one_line(
    private_server: EmbeddedServer, caplog: pytest.LogCaptureFixture
) -> None:
    """``with create_scan(...)``: the error of emit propagates; ending it FAILED cannot be
    recorded either, which is logged as one line, without a traceback."""
    caplog.set_level(logging.INFO, logger="scanstream")
    store = _store(private_server.url, max_unreachable_time=2.0)
    try:
        session = create_session("block", store=store, warn_no_writer=False)
        with pytest.raises(RedisUnreachableError):
            with session.create_scan("s") as scan:
                channel = scan.create_container("timer").create_channel("c")
                scan.prepared()
                channel.emit(1.0)
                scan.flush()
                _kill(private_server)
                _emit_until_refused(channel, 20)
                raise_again = scan._sender.error
                assert raise_again is not None
                raise raise_again
        records = _records(caplog)
        assert not [r for r in records if r.exc_info], [r.getMessage() for r in records]
        assert len(records) <= 2, [r.getMessage() for r in records]
    finally:
        store.close()


def test_a_send_that_may_have_been_applied_is_resent_as_it_was(
    private_server: EmbeddedServer,
) -> None:
    """A send that failed on a network error may have been applied (its reply lost): the next
    send resends exactly its entries, then the points emitted since, never one entry with more
    points under the same ID (taken for another process's entry)."""
    store = _store(private_server.url)
    try:
        scan = create_session("resend", store=store, warn_no_writer=False).create_scan("s")
        channel = scan.create_container("timer").create_channel("c")
        scan.prepared()
        scan._sender.stop()  # sends only when told to, from here
        scan._sender.refusing = False  # and emits are still taken
        queue = channel._queue
        channel.emit(np.arange(10.0))
        batches = queue.take()
        queue.give_back(batches)
        scan._sender.send(raise_errors=True)  # applied...
        queue.sent = 0  # ...but its reply lost: what the sender knows after a network error
        scan._sender._unconfirmed = [(queue, batches)]
        channel.emit(np.arange(10.0, 15.0))  # emitted during the outage
        scan._sender.send(raise_errors=True)
        assert queue.sent == 15
        scan.end()
        node = get_session_node("resend", store=store).get_scan(scan.number).load_nodes()[1]
        assert np.array_equal(node.get(0, -1), np.arange(15.0))
    finally:
        store.close()


def test_a_writer_under_a_reset_server_says_so_once_not_every_second(
    private_server: EmbeddedServer, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The writer's heartbeat renews its claim every second: on a reset server each renewal
    raised ServerResetError, logged with its traceback every second, for ever."""
    from scanstream.writer import WriterService, writer_status

    caplog.set_level(logging.INFO, logger="scanstream")
    store = _store(private_server.url, max_unreachable_time=10.0)
    try:
        create_session("wreset", store=store, warn_no_writer=False)
        with WriterService(["wreset"], root=tmp_path, store=store, isolate=False):
            deadline = time.monotonic() + 10
            while not (writer_status("wreset", store=store) or {}).get("writing"):
                assert time.monotonic() < deadline, "the writer did not claim the session"
                time.sleep(0.02)
            _kill(private_server)
            private_server.start(timeout=10)  # empty
            time.sleep(5.0)  # five heartbeats
        lines = [
            r
            for r in caplog.records
            if r.name == "scanstream.writer.session_claims"
            and "claim not renewed" in r.getMessage()
        ]
        assert len(lines) == 1, [r.getMessage() for r in lines]
        assert not lines[0].exc_info and "restart this writer" in lines[0].getMessage()
        assert not [
            r
            for r in caplog.records
            if r.name.startswith("scanstream.writer") and r.exc_info is not None
        ], "a traceback for an expected reset"
    finally:
        store.close()


def test_a_server_frozen_past_the_budget_fails_the_scan_once(
    private_server: EmbeddedServer, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGSTOP: each attempt waits for the socket timeout (10 s, the budget here), then the
    scan fails, at once and not after a second budget, with one ERROR and no traceback."""
    caplog.set_level(logging.INFO, logger="scanstream")
    store = _store(private_server.url, max_unreachable_time=10.0)
    pid = private_server.pid
    assert pid is not None
    try:
        scan = create_session("frozen", store=store, warn_no_writer=False).create_scan("s")
        channel = scan.create_container("timer").create_channel("c")
        scan.prepared()
        channel.emit(np.arange(10.0))
        scan.flush()
        frozen = time.monotonic()
        os.kill(pid, signal.SIGSTOP)
        error, when = _emit_until_refused(channel, 40)
        assert isinstance(error, RedisUnreachableError)
        assert when - frozen < 10.0 + 3.0, f"emit raised {when - frozen:.1f} s after the freeze"
        assert scan.db_name in str(error) and "queued points were dropped" in str(error)
        records = _records(caplog)
        assert not [r for r in records if r.exc_info], "a traceback for an expected outage"
        errors = [r for r in records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and scan.db_name in errors[0].getMessage(), [
            r.getMessage() for r in records
        ]
    finally:
        os.kill(pid, signal.SIGCONT)
        scan._sender.stop()
        store.close()


def _store_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "scanstream._transport.retry"]


def test_an_outage_ridden_out_for_ever_is_recalled_at_the_reminder_interval(
    private_server: EmbeddedServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A program that retries for as long as it runs (a writer) says the outage at its start,
    then every ``reminder`` seconds, with what it does (``consequence``)."""
    caplog.set_level(logging.WARNING, logger="scanstream")
    store = _store(private_server.url, max_unreachable_time=4.5)
    try:
        assert store.outage_notice is not None
        store.outage_notice.consequence = "this program retries for ever"
        store.outage_notice.reminder = 0.5
        _kill(private_server)
        with pytest.raises(RedisUnreachableError):
            store.redis.get("k")
    finally:
        store.close()
    lines = _store_lines(caplog)
    where = f"Redis at {private_server.url}"
    assert lines[0].startswith(f"{where} does not answer ("), lines
    assert lines[0].endswith("; this program retries for ever"), lines
    reminders = lines[1:]
    # At the attempts (1 s apart at most) past each interval: at least 2 in the 3.5 s after the
    # first line, and never two within one interval (not one per attempt). The count itself
    # follows the jittered attempts and the machine's load.
    assert len(reminders) >= 2, lines
    assert all(r.startswith(f"{where} still does not answer after ") for r in reminders), lines
    said_at = [r.created for r in caplog.records if r.name == "scanstream._transport.retry"]
    gaps = [later - earlier for earlier, later in zip(said_at, said_at[1:])]
    assert min(gaps) >= 0.5 - 0.01, (gaps, lines)


def test_a_stopping_program_rides_out_an_outage_for_the_grace_only(
    private_server: EmbeddedServer,
) -> None:
    """A command blocked on a server that went away waited out the whole budget (30 s) even
    once its program was stopping: ``stop_riding_out`` ends it within the grace."""
    store = _store(private_server.url)  # the budget of 30 s
    try:
        store.redis.set("k", b"v")
        _kill(private_server)
        started = time.monotonic()
        store.stop_riding_out(0.5)
        with pytest.raises(RedisUnreachableError, match="this program is stopping"):
            store.redis.get("k")
        assert time.monotonic() - started < 2.0
        private_server.start(timeout=10)
        assert store.redis.get("k") is None  # a dropped connection is still made again
    finally:
        store.close()


def test_a_server_back_between_two_commands_is_said_back(
    private_server: EmbeddedServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Only a command that had retried said the server back: one that found it back at its
    first attempt (the last one had given up) left the store taking it for down, without the
    line, until the next outage (a writer then kept its claims at its stop)."""
    caplog.set_level(logging.WARNING, logger="scanstream")
    store = _store(private_server.url, max_unreachable_time=1.5)
    try:
        store.redis.set("k", b"v")
        _kill(private_server)
        with pytest.raises(RedisUnreachableError):
            store.redis.get("k")
        assert store.outage_notice is not None and store.outage_notice.down_since is not None
        private_server.start(timeout=10)
        # A connection made again is no reply yet; the command's reply is.
        store.redis.ping()
        assert store.outage_notice.down_since is None
    finally:
        store.close()
    lines = _store_lines(caplog)
    assert len(lines) == 2 and lines[1].startswith(f"Redis at {private_server.url} answers again")
