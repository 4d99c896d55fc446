"""What an operator of a shared host sees of the commands: no password in the processes'
command lines, messages that can be read."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scanstream import DataStore
from scanstream.writer import writer_status


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads /proc")
def test_the_demo_gives_its_writer_no_password_on_the_command_line(
    server_binary: Path, tmp_path: Path, free_tcp_port: int
) -> None:
    """`ps` shows every user the command lines of the host: the demo started its writer with
    `--redis-url URL`, the password of the URL in it."""
    server = subprocess.Popen(
        [str(server_binary), "--port", str(free_tcp_port), "--bind", "127.0.0.1"]
        + ["--requirepass", "sekret", "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://:sekret@127.0.0.1:{free_tcp_port}/0"
    demo = None
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with DataStore(url) as store:
                    store.sessions()
                break
            except Exception:
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.05)
        demo = subprocess.Popen(
            [sys.executable, "-m", "scanstream", "--redis-url", url, "demo"]
            + ["--root", str(tmp_path / "data")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its writer too is killed at the end, whatever happens
        )
        with DataStore(url) as store:
            while (status := writer_status("demo", store=store)) is None:
                assert demo.poll() is None and time.monotonic() < deadline + 20, "no writer"
                time.sleep(0.05)
        cmdline = Path(f"/proc/{status['pid']}/cmdline").read_bytes().replace(b"\0", b" ")
        assert b"scanstream" in cmdline and b"writer" in cmdline, cmdline
        assert b"sekret" not in cmdline, cmdline
        out, err = demo.communicate(timeout=120)
        assert demo.returncode == 0, out + err
        assert "sekret" not in out + err
        assert "sekret" not in (tmp_path / "data" / "writer.log").read_text()
    finally:
        if demo is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(demo.pid, signal.SIGKILL)
            demo.communicate(timeout=10)
        server.terminate()
        server.wait(timeout=10)


def test_a_failing_legacy_script_shows_its_own_traceback(tmp_path: Path) -> None:
    """As `python SCRIPT` shows it: the frames of scanstream and runpy that ran the script
    read as a defect of scanstream."""
    script = tmp_path / "subscriber.py"
    script.write_text("def f():\n    raise RuntimeError('boom')\n\nf()\n")
    done = subprocess.run(
        [sys.executable, "-m", "scanstream", "legacy", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    err = done.stderr
    assert err.startswith("Traceback (most recent call last):\n"), err
    assert f'File "{script}", line 4, in <module>' in err and "line 2, in f" in err, err
    assert err.rstrip().endswith("RuntimeError: boom"), err
    assert "runpy" not in err and "scanstream" not in err.replace(str(tmp_path), ""), err
