"""``scanstream scan`` tells whether the scan was saved: the warning at the start, the verdict
at the end, and the exit code (EXIT_CODES), with and without a real writer."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import scanstream
from scanstream import DataStore, SavingState, SavingVerdict, ScanState
from scanstream._protocol import entries
from scanstream.cli import main
from scanstream.cli.scan import EXIT_CODES, EXIT_NOT_SAVED, EXIT_SAVE_TIMEOUT
from scanstream.writer import WriterService

SESSION = "cli_saving"


def last(out: str) -> str:
    """The last line printed on stdout: the saving verdict (rows and the summary come first)."""
    return out.splitlines()[-1]


def scan(redis_url: str, *options: str) -> int:
    argv = ["--redis-url", redis_url, "scan", "--time-scale", "0", "--session", SESSION]
    return main([*argv, *options, "loopscan", "3", "0.1", "diode"])


@pytest.fixture
def writer(redis_url: str, tmp_path: Path) -> Iterator[WriterService]:
    """A real writer following the session, once its health key is in Redis."""
    with DataStore(redis_url) as store:
        service = WriterService([SESSION], root=tmp_path, store=store).start()
        try:
            deadline = time.monotonic() + 10
            while not store.redis.exists(store.keys.writer_health(SESSION)):
                assert time.monotonic() < deadline, "the writer did not claim the session"
                time.sleep(0.02)
            yield service
        finally:
            service.stop(timeout=10)


@pytest.fixture
def stand_in_writer(redis_url: str) -> Iterator[None]:
    """A writer's health key for the session, without a writer: the verdicts of the tests
    that use it are recorded by a Judge, which a real writer would overwrite with its own."""
    with DataStore(redis_url) as store:
        key = store.keys.writer_health(SESSION)
        store.redis.hset(
            key,
            mapping={
                entries.WRITER_OWNER_FIELD: "stand-in:1:0",
                entries.WRITER_STATUS_FIELD: '{"writing": true}',
            },
        )
        store.redis.pexpire(key, 60_000)
        yield
        store.redis.delete(key)


class Judge(threading.Thread):
    """Records ``verdict`` for scan 1 once it has ended, as the owning writer records it."""

    def __init__(self, redis_url: str, verdict: SavingVerdict) -> None:
        super().__init__()
        self.redis_url = redis_url
        self.verdict = verdict

    def run(self) -> None:
        with DataStore(self.redis_url) as store:
            key = store.keys.scan(SESSION, 1)
            deadline = time.monotonic() + 10
            while store.redis.hget(key, "state") != ScanState.DONE.name.encode():
                if time.monotonic() > deadline:
                    return
                time.sleep(0.02)
            store.redis.hset(key, mapping=entries.saving_fields(self.verdict))

    def __enter__(self) -> Judge:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.join(15)


def test_no_writer_warns_then_says_not_saved(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert scan(redis_url) == EXIT_NOT_SAVED
    out, err = capsys.readouterr()
    assert f"WARNING: no writer follows session {SESSION}: this scan will not be saved" in err
    assert last(out).startswith(
        f"NOT SAVED: no writer follows session {SESSION}; data kept in Redis "
    )
    assert f"run `scanstream writer {SESSION}` to save it" in out


def test_the_warning_can_be_silenced_but_not_the_verdict(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert scan(redis_url, "--no-writer-warning") == EXIT_NOT_SAVED
    out, err = capsys.readouterr()
    assert "WARNING" not in err and "NOT SAVED" in out


def test_require_writer_starts_no_scan(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert scan(redis_url, "--require-writer") == EXIT_NOT_SAVED
    err = capsys.readouterr().err
    assert f"no writer follows session {SESSION}: the scan was not started" in err
    with DataStore(redis_url) as store:
        assert not store.redis.exists(store.keys.scan(SESSION, 1))
        assert not store.redis.exists(store.keys.session_counter(SESSION))


def test_saving_off_by_design_exits_0(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert scan(redis_url, "--no-saving") == 0
    out, err = capsys.readouterr()
    assert "WARNING" not in err
    assert last(out) == "not saved, by design: saving is off in scan_info (save=False)"


@pytest.mark.parametrize(
    ("verdict", "code", "printed"),
    [
        (
            SavingVerdict(SavingState.SAVED, file="/data/f.h5", entries=("1.1",)),
            0,
            "saved in /data/f.h5::1.1",
        ),
        (
            SavingVerdict(SavingState.FAILED, reason="entry '1.1' already holds another scan"),
            EXIT_NOT_SAVED,
            "NOT SAVED: entry '1.1' already holds another scan; data kept in Redis until 20",
        ),
    ],
)
def test_the_writers_verdict_is_printed_and_sets_the_exit_code(
    redis_url: str,
    stand_in_writer: None,
    capsys: pytest.CaptureFixture[str],
    verdict: SavingVerdict,
    code: int,
    printed: str,
) -> None:
    with Judge(redis_url, verdict):
        assert scan(redis_url, "--require-writer", "--save-timeout", "20") == code
    out, err = capsys.readouterr()
    assert "WARNING" not in err  # the writer was seen
    assert last(out).startswith(printed)


def test_no_verdict_in_time_exits_save_timeout(
    redis_url: str, stand_in_writer: None, capsys: pytest.CaptureFixture[str]
) -> None:
    writing = SavingVerdict(SavingState.WRITING, file="/data/f.h5", entries=("1.1",))
    with Judge(redis_url, writing):
        assert scan(redis_url, "--save-timeout", "0.5") == EXIT_SAVE_TIMEOUT
    out = capsys.readouterr().out
    assert last(out).startswith("NOT CONFIRMED: no saving verdict after 0.5 s (being written into ")
    assert f"`scanstream ls {SESSION}`" in out


def test_a_scan_saved_by_the_real_writer_exits_0(
    redis_url: str,
    writer: WriterService,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="scanstream.writer.scan_jobs")
    assert scan(redis_url, "--require-writer", "--save-timeout", "8") == 0
    out = capsys.readouterr().out
    assert last(out) == f"saved in {tmp_path / SESSION / SESSION}.h5::1.1"
    # The writer's line for it counts in words: one entry, not "1 entries"; and the points of
    # the scan (3), not those of its channels added up (9, as the scan display never shows).
    saved = [r.getMessage() for r in caplog.records if r.getMessage().startswith("saved ")]
    assert len(saved) == 1 and " in 1 entry 1.1 of " in saved[0], saved
    assert "(DONE): 3 points in 1 entry" in saved[0], saved


def test_a_scan_the_writer_refuses_says_why_naming_the_error_once(
    redis_url: str,
    writer: WriterService,
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    elsewhere = tmp_path_factory.mktemp("elsewhere")  # not under the writer's root
    assert scan(redis_url, "--root", str(elsewhere), "--save-timeout", "8") == EXIT_NOT_SAVED
    verdict = last(capsys.readouterr().out)
    # The worker process reports "WriterError: ..."; it was named twice on the way back.
    assert verdict.startswith("NOT SAVED: WriterError: scan_info['filename']"), verdict
    assert "outside the directories this writer may write" in verdict
    assert "WriterError: WriterError" not in verdict


def test_the_exit_codes_are_in_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scan", "loopscan", "--help"]) == 0
    out = capsys.readouterr().out
    for code, meaning in EXIT_CODES.items():
        assert f"  {code:<4} {meaning[:40]}" in out
    assert "--save-timeout S" in out and "--require-writer" in out


def test_the_console_command_prints_the_verdict_and_exits_not_saved(redis_url: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(scanstream.__file__).parents[1]))
    argv = ["--redis-url", redis_url, "scan", "--time-scale", "0", "--session", SESSION]
    done = subprocess.run(
        [sys.executable, "-m", "scanstream", *argv, "ct", "0.1", "diode"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == EXIT_NOT_SAVED, done.stderr
    assert "NOT SAVED: no writer follows session" in done.stdout
    assert "WARNING: no writer follows session" in done.stderr
    assert "Traceback" not in done.stderr and "NoWriterWarning" not in done.stderr
    assert redis.Redis.from_url(redis_url).exists(f"scanstream:scan:{{{SESSION}:1}}")


@pytest.mark.parametrize(
    ("reason", "hint"),
    [
        (
            "WriterError: no space left on device; the running writer tries again in 10 s "
            "(at 10:00:10, retry 1), and at once on its restart",
            f"see `scanstream ls {SESSION}` for its verdict",
        ),
        (
            "entry '1.1' already holds another scan",
            f"fix the cause, then restart the writer of session {SESSION} to save it",
        ),
    ],
)
def test_a_failure_seen_while_a_writer_runs_does_not_ask_to_start_one(
    redis_url: str,
    stand_in_writer: None,
    capsys: pytest.CaptureFixture[str],
    reason: str,
    hint: str,
) -> None:
    with Judge(redis_url, SavingVerdict(SavingState.FAILED, reason=reason)):
        assert scan(redis_url, "--require-writer", "--save-timeout", "20") == EXIT_NOT_SAVED
    out = last(capsys.readouterr().out)
    assert out.startswith(f"NOT SAVED: {reason}; data kept in Redis until "), out
    assert out.endswith(hint) and f"run `scanstream writer {SESSION}`" not in out, out
