"""The Python snippets of README.md, docs/web.md and docs/nexus_layout.md, taken from the documents and run as written.

Each snippet runs in a process of its own with ``$SCANSTREAM_REDIS_URL`` set to the test server,
as a user runs it; the test fails if the text of the document no longer works.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from scanstream.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _python_blocks(document: str) -> list[str]:
    """The ```python blocks of ``document`` (relative to the project), unindented."""
    text = (ROOT / document).read_text(encoding="utf-8")
    blocks = re.findall(r"^( *)```python\n(.*?)^\1```", text, flags=re.S | re.M)
    return ["\n".join(line[len(indent) :] for line in body.splitlines()) for indent, body in blocks]


def _env(redis_url: str) -> dict[str, str]:
    env = dict(os.environ, SCANSTREAM_REDIS_URL=redis_url, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


def test_readme_subscriber_sees_the_readme_publisher(redis_url: str) -> None:
    subscriber, publisher = _python_blocks("README.md")
    assert "walk_on_new_events" in subscriber and "create_scan" in publisher
    proc = subprocess.Popen(
        [sys.executable, "-c", subscriber],
        env=_env(redis_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
    reader.start()
    try:
        # The walk starts from the next scan (from_next=True) and says nothing when it is
        # ready: publish until it has reported one whole scan.
        deadline = time.monotonic() + 30
        while not any(line.startswith("scan ended") for line in lines):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)
            published = subprocess.run(
                [sys.executable, "-c", publisher],
                env=_env(redis_url),
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert published.returncode == 0, published.stderr
            seen = time.monotonic() + 3
            while time.monotonic() < seen and not any(
                line.startswith("scan ended") for line in lines
            ):
                time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait(timeout=5)
        reader.join(timeout=5)
        proc.stdout.close()
    out = "".join(lines)
    number = re.search(r"new scan (\d+)_ascan ascan roby 0 1 10 0.1\n", out)
    assert number, out
    assert "axis:roby 0 [0.  0.1 0.2" in out, out
    assert re.search(r"^diode 0 \[", out, flags=re.M), out
    assert f"scan ended {number.group(1)}_ascan DONE" in out, out


def test_web_analysis_snippet(redis_url: str) -> None:
    (snippet,) = _python_blocks("docs/web.md")
    # The scan the snippet reads, as its comment says it was taken.
    argv = ["--redis-url", redis_url, "scan", "--time-scale", "0", "--no-saving", "-q"]
    assert main([*argv, "ascan", "roby", "0", "1", "10", "0.1", "diode"]) == 0
    script = snippet.replace("get_scan(12)", "get_scan(1)")
    script += "\nprint(len(x), len(y), curve_stats(x, y))\n"
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=_env(redis_url),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(
        r"11 11 CurveStats\(peak=[-\d.e]+, peak_value=[-\d.e]+, cen=[-\d.e]+, fwhm=[-\d.e]+, "
        r"com=[-\d.e]+\)\n",
        done.stdout,
    ), done.stdout


def test_readme_writing_files_and_the_live_reading_snippet(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # README "Writing files": a writer in one terminal, a scan in the other, the file where
    # the README says; then docs/nexus_layout.md's way to read it (silx's retry helper).
    root = tmp_path / "data"
    writer = subprocess.Popen(
        [sys.executable, "-m", "scanstream", "writer", "test_session", "--root", str(root)],
        env=_env(redis_url),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        argv = ["--redis-url", redis_url, "scan", "--time-scale", "0", "--save-timeout", "20"]
        deadline = time.monotonic() + 30
        while True:  # a scan that starts before the writer follows is not saved: wait
            if main(["--redis-url", redis_url, "writer", "--status", "test_session"]) == 0:
                break
            assert time.monotonic() < deadline and writer.poll() is None, "no writer"
            time.sleep(0.2)
        capsys.readouterr()
        assert main([*argv, "ascan", "roby", "0", "1", "10", "0.1", "diode"]) == 0
        path = root / "test_session" / "test_session.h5"
        assert f"saved in {path}::1.1" in capsys.readouterr().out
    finally:
        writer.terminate()
        _, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err
    (snippet,) = [b for b in _python_blocks("docs/nexus_layout.md") if "h5py_utils" in b]
    script = f"import hdf5plugin\n{snippet}\nprint(len(read_diode({str(path)!r})))\n"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout) == (0, "11\n"), done.stderr


def test_the_acl_rules_the_docs_print_are_those_tested() -> None:
    # tests/test_cli_habits.py and tests/test_access.py run these users; the documents show
    # them to administrators, who copy them: the two must not drift apart.
    from test_access import READER_ACL
    from test_cli_habits import _ACL

    deployment = (ROOT / "docs" / "deployment.md").read_text(encoding="utf-8")
    for user in ("publisher", "writer", "reader"):
        line = re.search(rf"^user {user} +on +>\S+ +(.*)$", deployment, flags=re.M)
        assert line, user
        assert line.group(1).split() == _ACL[user].split(), user
    access = (ROOT / "docs" / "access.md").read_text(encoding="utf-8")
    line = re.search(r"^ACL SETUSER reader on >\S+ (.*)$", access, flags=re.M)
    assert line and line.group(1).split() == READER_ACL[2:]
