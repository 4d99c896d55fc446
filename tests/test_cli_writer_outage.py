"""``scanstream writer`` when its server goes away: what it logs, and how fast it stops.

Run as an operator runs it (a process, its server really stopped). The writer logged "cannot
renew the claim" at each renewal for as long as the server was gone (every budget + 1 s),
and took the outage budget and more (40 to 50 s) to stop on SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import pytest
from cli_processes import process_groups, scanstream_command, wait_until

from scanstream import DataStore, get_session_node
from scanstream._transport.server import EmbeddedServer
from scanstream.models import SavingState, ScanState
from scanstream.writer import writer_status


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start commands in process groups of their own (as a shell's jobs); kill what is left."""
    with process_groups() as start:
        yield start


def _writing(store: DataStore, session: str) -> Callable[[], bool]:
    def writing() -> bool:
        try:
            node = get_session_node(session, store=store).get_scan(1)
        except Exception:  # not created yet
            return False
        return node.saving.state is SavingState.WRITING and node.state is ScanState.PREPARED

    return writing


@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C"])
def test_a_writer_stops_at_once_when_its_server_is_gone_and_its_scan_is_resumed(
    how: str,
    persistent_server: EmbeddedServer,
    tmp_path: Path,
    spawn: Callable[..., subprocess.Popen[str]],
) -> None:
    url = persistent_server.url
    root = tmp_path / "data"
    writer = spawn(scanstream_command(url, "writer", "gone", "--root", str(root)))
    with DataStore(url) as store:
        wait_until(lambda: writer_status("gone", store=store) is not None, "the writer")
        # The scan rides out the outage (points queued), and goes on once the server is back.
        scan = spawn(
            scanstream_command(url, "scan", "--session", "gone", "-q", "--save-timeout", "60")
            + ["loopscan", "200", "0.05", "diode"],
            SCANSTREAM_MAX_UNREACHABLE_TIME="120",
        )
        wait_until(_writing(store, "gone"), "the writing of the scan")
    persistent_server.stop()  # its data persisted: it comes back with the scan
    time.sleep(2.0)  # the writer's commands are riding out the outage
    started = time.monotonic()
    if how == "SIGTERM":
        writer.send_signal(signal.SIGTERM)  # kill PID: the writer process alone
    else:
        os.killpg(writer.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole group
    _, err = writer.communicate(timeout=60)
    took = time.monotonic() - started
    assert writer.returncode == 0, err
    assert "Traceback" not in err, err
    assert took < 3.0, f"the writer took {took:.1f} s to stop\n{err}"
    # Its files are closed and valid: every one opens and holds the scan's entry.
    files = sorted(root.rglob("*.h5"))
    assert files, err
    for path in files:
        with h5py.File(path, "r") as file:
            assert "1.1" in file, path
    # Its claim expires on the server: a writer started once the server is back resumes the
    # scan, and saves it whole.
    persistent_server.start(timeout=10)
    again = spawn(scanstream_command(url, "writer", "gone", "--root", str(root)))
    out, scan_err = scan.communicate(timeout=90)
    assert scan.returncode == 0, out + scan_err
    with DataStore(url) as store:
        verdict = get_session_node("gone", store=store).get_scan(1).saving
    assert verdict.state is SavingState.SAVED and set(verdict.points.values()) == {200}, verdict
    os.killpg(again.pid, signal.SIGINT)
    _, err = again.communicate(timeout=30)
    assert again.returncode == 0 and "Traceback" not in err, err


def test_a_writer_says_an_outage_once_at_its_start_and_once_at_its_end(
    persistent_server: EmbeddedServer,
    tmp_path: Path,
    spawn: Callable[..., subprocess.Popen[str]],
) -> None:
    url = persistent_server.url
    # A budget of 1 s: the claim's renewal gave up, and said so, every 2 s.
    writer = spawn(
        scanstream_command(url, "writer", "out", "--root", str(tmp_path)),
        SCANSTREAM_MAX_UNREACHABLE_TIME="1",
    )
    with DataStore(url) as store:
        wait_until(lambda: writer_status("out", store=store) is not None, "the writer")
    persistent_server.stop()
    time.sleep(8.0)
    persistent_server.start(timeout=10)
    time.sleep(3.0)  # the next renewals reach it
    os.killpg(writer.pid, signal.SIGINT)
    _, err = writer.communicate(timeout=30)
    assert writer.returncode == 0 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if " WARNING " in line or " ERROR " in line]
    assert not [line for line in lines if "cannot renew the claim" in line], err
    gone = [line for line in lines if "does not answer" in line]
    assert len(gone) == 1, err
    assert f"Redis at {url} does not answer (" in gone[0], err
    assert "the writer keeps retrying for as long as it runs" in gone[0], err
    back = [line for line in lines if f"Redis at {url} answers again after " in line]
    assert len(back) == 1, err
    # Nothing else repeats the outage: neither the claim's renewals nor the session listener;
    # the claim taken again is said once.
    expected = ("session out has no scan", "session out: claim taken again after it had lapsed")
    others = [
        line for line in lines if line not in gone + back and not any(e in line for e in expected)
    ]
    assert others == [], err
