"""Ctrl-C and SIGTERM of the long-running commands, as a terminal and an operator send them.

A terminal's Ctrl-C signals the whole foreground process group (the command and every process
it started); ``kill PID``, ``timeout`` or a service manager signals the command itself. Either
way: no traceback, the exit code of the signal, nothing left running, no scan left open.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from scanstream import DataStore
from scanstream.writer import writer_status


def _command(redis_url: str, *argv: str) -> list[str]:
    return [sys.executable, "-m", "scanstream", "--redis-url", redis_url, *argv]


def _wait(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start commands in process groups of their own (as a shell's jobs); kill what is left."""
    started: list[subprocess.Popen[str]] = []

    def start(argv: list[str], **kwargs: object) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            **kwargs,  # type: ignore[call-overload]
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.communicate(timeout=10)


def _group_alive(pgid: int) -> bool:
    """Whether a process of the process group ``pgid`` still runs (zombies aside)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def test_ctrl_c_of_a_writer_stops_its_workers_without_traceback(
    redis_url: str, tmp_path: Path, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    """Ctrl-C reaches the writer's worker processes too: each used to print a
    KeyboardInterrupt traceback (it waited for its next scan on stdin)."""
    writer = spawn(_command(redis_url, "writer", "cc", "--root", str(tmp_path)))
    with DataStore(redis_url) as store:
        _wait(lambda: writer_status("cc", store=store) is not None, "the writer")
    scan = subprocess.run(
        _command(redis_url, "scan", "--session", "cc", "-q", "--time-scale", "0")
        + ["--save-timeout", "30", "loopscan", "2", "0.1", "diode"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert scan.returncode == 0, scan.stdout + scan.stderr  # a worker wrote it, and waits
    os.killpg(writer.pid, signal.SIGINT)
    _, err = writer.communicate(timeout=30)
    assert writer.returncode == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "stopping on SIGINT" in err
    _wait(lambda: not _group_alive(writer.pid), "the worker processes to end", timeout=10)
