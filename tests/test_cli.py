"""The ``scanstream`` command line, run in-process with ``main([...])``, plus one smoke test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from scanstream.cli import build_parser, main


def _fields(text: str) -> dict[str, str]:
    """Parse the ``key: value`` lines printed by ``scanstream server status``."""
    return {
        key: value.strip() for key, _, value in (line.partition(":") for line in text.splitlines())
    }


def test_server_start_status_stop(
    private_runtime_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["server", "status"]) == 1
    assert _fields(capsys.readouterr().out)["running"] == "no"

    assert main(["server", "start"]) == 0
    url = capsys.readouterr().out.strip()
    assert url == f"unix://{private_runtime_dir}/redis.sock"
    with redis.Redis.from_url(url, socket_timeout=2) as client:
        pid = client.info("server")["process_id"]

    assert main(["server", "start"]) == 0  # already running: same server, same URL
    assert capsys.readouterr().out.strip() == url
    assert main(["-v", "server", "status"]) == 0
    fields = _fields(capsys.readouterr().out)
    assert fields["running"] == "yes" and fields["url"] == url and fields["pid"] == str(pid)
    assert fields["version"] != "-" and fields["used_memory_human"] != "-"

    assert main(["server", "stop"]) == 0
    assert capsys.readouterr().out.strip() == "stopped"
    assert main(["server", "status"]) == 1
    assert main(["server", "stop"]) == 0
    assert "no embedded server was running" in capsys.readouterr().out


def test_server_error_is_reported(
    private_runtime_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SCANSTREAM_REDIS_SERVER", str(private_runtime_dir / "no-such-server"))
    assert main(["server", "start"]) == 1
    assert "scanstream server: error: SCANSTREAM_REDIS_SERVER=" in capsys.readouterr().err


def test_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "server" in capsys.readouterr().err
    assert main(["server", "restart"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    args = build_parser().parse_args(
        ["--redis-url", "redis://127.0.0.1:1", "-vv", "server", "status"]
    )
    assert (args.redis_url, args.verbose, args.action) == ("redis://127.0.0.1:1", 2, "status")


def test_console_script_status(
    private_runtime_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The installed ``scanstream`` script runs and finds the server started in-process."""
    script = shutil.which("scanstream", path=str(Path(sys.executable).parent)) or shutil.which(
        "scanstream"
    )
    if script is None:
        if os.environ.get("CI"):
            pytest.fail("the scanstream console script is not installed")
        pytest.skip("the scanstream console script is not installed (pip install -e .)")
    assert main(["server", "start"]) == 0
    url = capsys.readouterr().out.strip()
    proc = subprocess.Popen(
        [script, "server", "status"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait(timeout=5)
    assert proc.returncode == 0, err
    fields = _fields(out)
    assert fields["running"] == "yes" and fields["url"] == url


def test_common_options_are_accepted_after_the_subcommand() -> None:
    parser = build_parser()
    after = parser.parse_args(["writer", "s1", "--redis-url", "redis://h:1/0", "-v"])
    assert (after.redis_url, after.verbose, after.sessions) == ("redis://h:1/0", 1, ["s1"])
    before = parser.parse_args(["--redis-url", "redis://h:2/0", "-vv", "writer", "s1"])
    assert (before.redis_url, before.verbose) == ("redis://h:2/0", 2)
    neither = parser.parse_args(["writer", "s1"])
    assert (neither.redis_url, neither.verbose) == (None, 0)
