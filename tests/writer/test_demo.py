"""``scanstream demo``: the catalogue published and written by a writer process."""

from __future__ import annotations

from pathlib import Path

import h5py

from scanstream.cli import main
from scanstream.writer import writer_status


def test_demo_writes_every_catalogue_scan_and_summarizes_them(redis_url, store, tmp_path, capsys):
    assert main(["--redis-url", redis_url, "demo", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "writer: 19/19 scans saved (1 scan with saving off)" in out
    files = list(tmp_path.rglob("sample_*.h5"))
    assert len(files) == 1 and str(files[0]) in out
    with h5py.File(files[0], "r") as file:
        entries = set(file)
        assert {
            "1.1",
            "4.1",
            "4.2",
            "13.1",
            "18.1",
            "19.1",
        } <= entries and "20.1" not in entries  # 20: saving off (the catalogue's last)
        assert file["18.1/end_reason"].asstr()[()] == "KILLED"
    assert "4.2   test" in out and "(not saved: saving off)" in out
    assert writer_status("demo", store=store) is None  # the demo's writer process has stopped


def test_ctrl_c_while_the_demo_writer_starts_leaves_no_writer_running(redis_url, tmp_path):
    """SIGINT to `scanstream demo` while it waits for its writer to start: the writer process
    it started must not run on, orphaned (the demo had no handle on it yet)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    demo = subprocess.Popen(
        [sys.executable, "-m", "scanstream", "--redis-url", redis_url, "demo"]
        + ["--root", str(tmp_path), "--session", "demo_ctrl_c"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    writers: list[int] = []
    try:
        assert demo.stdout is not None
        for line in demo.stdout:  # bounded: the demo prints this within seconds
            if line.startswith("starting a writer"):
                break
        children = Path(f"/proc/{demo.pid}/task/{demo.pid}/children")
        deadline = time.monotonic() + 10
        while not children.read_text().split():
            assert time.monotonic() < deadline, "the demo started no writer process"
            time.sleep(0.01)
        writers += [int(pid) for pid in children.read_text().split()]
        # Signal once the writer runs its own program (Popen has returned in the demo): a
        # signal between fork and exec would interrupt Popen itself, which no code can see.
        for pid in writers:
            while b"writer" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                assert time.monotonic() < deadline, f"process {pid} did not start the writer"
                time.sleep(0.01)
        time.sleep(0.2)  # the writer takes seconds to register: the demo still waits for it
        demo.send_signal(signal.SIGINT)
        out, _ = demo.communicate(timeout=30)
        assert demo.returncode == 130, out
        assert "Traceback" not in out, out
        for pid in writers:
            assert not Path(f"/proc/{pid}").exists(), f"writer {pid} still runs"
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.communicate(timeout=10)
        for pid in writers:  # an orphan the test found
            if Path(f"/proc/{pid}").exists():
                os.kill(pid, signal.SIGKILL)
