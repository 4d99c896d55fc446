"""What an operator of a shared host sees of the commands: no password in the processes'
command lines, messages that can be read."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from small_fs import small_tmpfs

from scanstream import DataStore, get_session_node
from scanstream.models import ScanState
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


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB file system (tmpfs), or a skip where mounting is not allowed."""
    with small_tmpfs(tmp_path / "small", "3m") as mount_point:
        yield mount_point


def _fill(directory: Path) -> None:
    """Fill the file system of ``directory`` to the last byte."""
    with open(directory / "filler", "wb") as filler:
        try:
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
        except OSError:
            pass


@pytest.mark.parametrize("when", ["before the scan", "during the scan"])
def test_lima_frames_on_a_full_disk_fail_the_scan_in_one_line(
    when: str, redis_url: str, small_disk: Path
) -> None:
    """The simulated Lima detector on a full disk: a multi-line HDF5 error, then the
    process crashed at exit (SIGSEGV, exit code 139) on the file HDF5 could not flush."""
    argv = [sys.executable, "-m", "scanstream", "--redis-url", redis_url, "scan"]
    argv += ["--session", "lima", "--root", str(small_disk), "--no-writer-warning"]
    argv += ["--save-timeout", "0"]
    if when == "before the scan":  # 2000 frames, 100 per file: the 3rd file does not fit
        argv += ["-q", "--time-scale", "0", "loopscan", "2000", "0.01", "lima_simulator"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        out, err, code = done.stdout, done.stderr, done.returncode
        assert "no space left on device for " in err and "MiB needed" in err, err
    else:  # the disk fills once the scan writes its first file
        argv += ["loopscan", "200", "0.05", "lima_simulator"]
        scan = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert scan.stdout is not None
            while scan.stdout.readline().strip() != "0":  # the row of the first point
                assert scan.poll() is None
            _fill(small_disk)
            out, err = scan.communicate(timeout=60)
        finally:
            scan.kill()
            scan.communicate(timeout=10)
        code = scan.returncode
        assert "cannot write frame " in err and "No space left on device" in err, err
    assert code == 1, err
    assert "Traceback" not in err and "RuntimeError" not in err, err
    line = [line for line in err.splitlines() if "error:" in line]
    assert len(line) == 1 and "detector 'lima_simulator'" in line[0], err
    assert "free some space, or save elsewhere (scanstream scan --root)" in line[0]
    with DataStore(redis_url) as store:
        assert get_session_node("lima", store=store).get_scan(1).state is ScanState.FAILED


def test_the_demo_on_a_full_disk_says_why_each_scan_was_not_saved(
    redis_url: str, small_disk: Path
) -> None:
    """It listed each scan's entry as "?  0 points" and pointed at the status of its writer,
    which it had stopped."""
    done = subprocess.run(
        [sys.executable, "-m", "scanstream", "--redis-url", redis_url, "demo"]
        + ["--root", str(small_disk)],
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    entries = [line for line in done.stdout.splitlines() if "NOT SAVED: " in line]
    assert len(entries) == 19, done.stdout  # every scan but the one whose saving is off
    assert all("no space left on device" in line for line in entries), entries
    assert " 0 points" not in done.stdout and " ?  " not in done.stdout, done.stdout
    last = done.stderr.splitlines()[-1]
    assert last.startswith("scanstream demo: error: NOT saved: scans [1, 2, "), last
    assert last.endswith(f"`scanstream writer demo --root {small_disk}` saves them"), last


def test_the_header_of_a_scan_saved_nowhere_says_so(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--root DIR --no-saving` gives an empty filename: the header read "...+00:00  s1"."""
    from scanstream.cli import main

    argv = ["--redis-url", redis_url, "scan", "--session", "s1", "--root", str(tmp_path)]
    assert main([*argv, "--no-saving", "-q", "--time-scale", "0", "ct", "0.1", "diode"]) == 0
    header = capsys.readouterr().err.splitlines()[0]
    assert header.endswith(" (no filename) s1 user = " + header.rsplit(" = ", 1)[1]), header


def test_server_stop_names_the_clients_of_its_socket_readably(
    private_runtime_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every client of the unix socket has the address `[/path/redis.sock:0]:0`: the refusal
    listed `?@[/tmp/scanstream-0/redis.sock:0]:0` once per process."""
    import redis

    from scanstream._transport.shared_server import ensure_server

    url = ensure_server()
    clients = [redis.Redis.from_url(url, socket_timeout=5) for _ in range(3)]
    try:
        for client in clients:
            client.ping()
        clients[0].client_setname("subscriber")
        from scanstream.cli import main

        assert main(["server", "stop"]) == 1
        err = capsys.readouterr().err
        assert "3 clients connected (2 x ?@unix socket, subscriber@unix socket)" in err, err
        assert "sock:0]" not in err, err
    finally:
        for client in clients:
            client.close()
