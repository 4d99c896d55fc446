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
from cli_processes import process_groups, scanstream_command, wait_until

from scanstream import DataStore, get_session_node
from scanstream.models import SavingState, ScanState
from scanstream.writer import writer_status


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start commands in process groups of their own (as a shell's jobs); kill what is left."""
    with process_groups() as start:
        yield start


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
    writer = spawn(scanstream_command(redis_url, "writer", "cc", "--root", str(tmp_path)))
    with DataStore(redis_url) as store:
        wait_until(lambda: writer_status("cc", store=store) is not None, "the writer")
    scan = subprocess.run(
        scanstream_command(redis_url, "scan", "--session", "cc", "-q", "--time-scale", "0")
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
    wait_until(lambda: not _group_alive(writer.pid), "the worker processes to end", timeout=10)


def _read_until(proc: subprocess.Popen[str], text: str, timeout: float = 30.0) -> str:
    """Read the stdout of ``proc`` up to a line holding ``text``; return what was read."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    seen = ""
    while text not in seen:
        assert time.monotonic() < deadline and proc.poll() is None, seen
        seen += proc.stdout.readline()
    return seen


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_terminated_demo_stops_its_writer(
    signum: int, redis_url: str, tmp_path: Path, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    """`kill PID` of the demo: its writer process used to run on, orphaned, for ever."""
    demo = spawn(scanstream_command(redis_url, "demo", "--root", str(tmp_path)))
    _read_until(demo, "demo:1_")  # a scan ended, the next one runs
    with DataStore(redis_url) as store:
        status = writer_status("demo", store=store)
        assert status is not None
        writer_pid = int(status["pid"])
        demo.send_signal(signum)  # the demo alone, not its process group
        _, err = demo.communicate(timeout=60)
        assert demo.returncode == 128 + signum, err
        assert "Traceback" not in err, err
        name = signal.Signals(signum).name
        assert f"{name}: the demo stopped; its scans not saved yet stay in Redis" in err
        wait_until(lambda: not _group_alive(demo.pid), "the writer and its workers", timeout=20)
        with pytest.raises(ProcessLookupError):
            os.kill(writer_pid, 0)
        # The scan running at the signal was ended (USER_ABORTED), not left to its lease.
        for scan in get_session_node("demo", store=store).children():
            assert scan.state is not ScanState.PREPARED, scan.name  # type: ignore[attr-defined]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_terminated_scan_ends_user_aborted(
    signum: int, redis_url: str, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    """`kill PID` of `scanstream scan`: the scan stayed open until its lease declared it
    KILLED, and the command printed nothing."""
    scan = spawn(
        scanstream_command(redis_url, "scan", "--session", "term", "--no-saving")
        + ["ascan", "roby", "0", "1", "100", "0.05", "diode"]
    )
    _read_until(scan, "roby[mm]")
    scan.send_signal(signum)
    out, err = scan.communicate(timeout=30)
    assert scan.returncode == 128 + signum, err
    assert "Traceback" not in err, err
    name = signal.Signals(signum).name
    assert f"{name}: stopping the scan at the end of this point" in err
    assert f"USER_ABORTED ({name})" in err
    assert "term:1_ascan USER_ABORTED" in out
    with DataStore(redis_url) as store:
        node = get_session_node("term", store=store).get_scan(1)
        assert node.state is ScanState.USER_ABORTED


def test_ctrl_c_of_a_writer_during_a_scan_then_a_restart_saves_it_whole(
    redis_url: str, tmp_path: Path, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    """The worker writing the scan gets the Ctrl-C too: it stops as on SIGTERM, and the
    restarted writer completes the scan, every point in the file."""
    root = tmp_path / "data"
    writer = spawn(scanstream_command(redis_url, "writer", "mid", "--root", str(root)))
    with DataStore(redis_url) as store:
        wait_until(lambda: writer_status("mid", store=store) is not None, "the writer")
        scan = spawn(
            scanstream_command(redis_url, "scan", "--session", "mid", "-q", "--save-timeout", "60")
            + ["loopscan", "100", "0.05", "diode"]
        )

        def writing() -> bool:
            try:
                node = get_session_node("mid", store=store).get_scan(1)
            except Exception:  # not created yet
                return False
            return node.saving.state is SavingState.WRITING and node.state is ScanState.PREPARED

        wait_until(writing, "the writing of the scan")
        os.killpg(writer.pid, signal.SIGINT)
        _, err = writer.communicate(timeout=30)
        assert writer.returncode == 0 and "Traceback" not in err, err
        wait_until(lambda: not _group_alive(writer.pid), "the worker processes to end", timeout=10)
        again = spawn(scanstream_command(redis_url, "writer", "mid", "--root", str(root)))
        out, scan_err = scan.communicate(timeout=60)
        assert scan.returncode == 0, out + scan_err
        verdict = get_session_node("mid", store=store).get_scan(1).saving
        assert verdict.points and set(verdict.points.values()) == {100}, verdict
        os.killpg(again.pid, signal.SIGINT)
        _, err = again.communicate(timeout=30)
        assert "Traceback" not in err, err


def test_a_signal_that_comes_during_a_finalizer_still_stops_the_command() -> None:
    """Found by the suite: SIGTERM came while the garbage collector ran redis-py's
    ``ConnectionPool.__del__``; Terminated raised there was printed ("Exception ignored in")
    and dropped, and ``scanstream demo`` ran on to its end and exited 0."""
    from scanstream.cli.signals import Terminated, terminating_as_interrupt

    class SignalledWhileCollected:
        def __del__(self) -> None:
            os.kill(os.getpid(), signal.SIGTERM)
            deadline = time.monotonic() + 0.2
            while time.monotonic() < deadline:  # the handler runs here, inside __del__
                pass

    with pytest.raises(Terminated) as stopped, terminating_as_interrupt():
        obj = SignalledWhileCollected()
        del obj
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            time.sleep(0.01)
    assert stopped.value.signum == signal.SIGTERM


# A program that ends a scan while its server is frozen, and gets SIGTERM meanwhile.
_END_DURING_SIGTERM = """
import os, signal, sys, threading, time
from scanstream import DataStore, create_session
from scanstream.cli.signals import Terminated, terminating_as_interrupt

url, server_pid = sys.argv[1], int(sys.argv[2])
with DataStore(url) as store:
    scan = create_session("sig", store=store).create_scan("s")
    channel = scan.create_container("t").create_channel("c")
    scan.prepared()
    channel.emit(list(range(10)))
    scan.flush()
    os.kill(server_pid, signal.SIGSTOP)
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
    threading.Timer(1.0, os.kill, (server_pid, signal.SIGCONT)).start()
    with terminating_as_interrupt():
        try:
            scan.end()
            print("ended", scan.state.name, flush=True)
            time.sleep(5)  # the signal, delivered again once end() returned, comes here
            print("no signal", flush=True)
        except Terminated:
            print("terminated after", scan.state.name, flush=True)
"""


@pytest.mark.timeout(60)
def test_a_stop_signal_during_a_scan_end_comes_once_the_scan_has_ended(
    private_server,
) -> None:
    """SIGTERM used to cut a scan's end() short: the scan stayed open until its lease."""
    pid = private_server.pid
    assert pid is not None
    try:
        out = subprocess.run(
            [sys.executable, "-c", _END_DURING_SIGTERM, private_server.url, str(pid)],
            capture_output=True,
            text=True,
            timeout=40,
        )
    finally:
        os.kill(pid, signal.SIGCONT)  # whatever happened to the program
    assert out.stdout.split("\n")[:2] == ["ended DONE", "terminated after DONE"], (
        out.stdout + out.stderr
    )
    with DataStore(private_server.url) as store:
        assert get_session_node("sig", store=store).get_scan(1).state is ScanState.DONE
