"""Commands run as a shell runs its jobs: ``scanstream ...`` in process groups of their own."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator


def scanstream_command(url: str, *argv: str) -> list[str]:
    """``python -m scanstream --redis-url URL ARGV...`` (this interpreter)."""
    return [sys.executable, "-m", "scanstream", "--redis-url", url, *argv]


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll ``condition`` every 50 ms; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@contextlib.contextmanager
def process_groups() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """``start(argv, **env)`` starts a command in a process group of its own (text pipes,
    ``env`` added to this environment); every group is killed at the end, even once its
    command has ended: what it started may run on."""
    started: list[subprocess.Popen[str]] = []

    def start(argv: list[str], **env: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            env={**os.environ, **env},
        )
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=10)
