"""Worker processes forked from the zygote: what they take from the service, how they end."""

from __future__ import annotations

import os
import signal
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from scanstream.writer.worker import WORKER_LOG_FILE_ENV
from scanstream.writer.zygote import ForkedWorker, Zygote


def _end(worker: ForkedWorker) -> int:
    """EOF on the worker's stdin (it ends between scans); its exit code."""
    worker.stdin.close()
    code = worker.wait(30)
    worker.stdout.close()
    return code


@pytest.fixture
def zygote() -> Iterator[Zygote]:
    zygote = Zygote()
    try:
        # The zygote starts and imports at the first fork: it runs before the test acts.
        assert _end(zygote.fork()) == 0
        yield zygote
    finally:
        zygote.close()


@pytest.mark.timeout(60)
def test_a_worker_takes_the_environment_umask_and_directory_of_the_service_when_forked(
    zygote: Zygote, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Changed after the zygote started: the worker must see the values of the moment it is
    # forked. The log file's name is relative (the directory) and it is created by the worker
    # at its start (the environment), with mode 0o666 less the umask.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(WORKER_LOG_FILE_ENV, "worker.log")
    previous = os.umask(0o077)
    try:
        worker = zygote.fork()
    finally:
        os.umask(previous)
    assert _end(worker) == 0
    log = tmp_path / "worker.log"
    assert log.exists()
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


@pytest.mark.timeout(60)
def test_a_signal_is_the_negative_exit_code_and_sigterm_leaves_the_zygote(zygote: Zygote) -> None:
    worker = zygote.fork()
    assert worker.poll() is None
    os.kill(worker.pid, signal.SIGSEGV)
    assert _end(worker) == -signal.SIGSEGV
    assert worker.returncode == -signal.SIGSEGV
    worker.kill()  # ended: nothing (no signal to a pid that may be reused)
    # systemd's stop signals every process of the service: the zygote stays, to report.
    assert zygote._proc is not None
    pid = zygote._proc.pid
    os.kill(pid, signal.SIGTERM)
    worker = zygote.fork()
    assert zygote._proc.pid == pid
    assert _end(worker) == 0
    zygote.close()
    assert not Path(f"/proc/{pid}").exists()
