"""Bad command lines, as a new user types them: one line naming the value and what to give, a
usage error (exit code 2) decided before any connection to Redis, no traceback, nothing
published.

The usage errors are checked against an unreachable Redis URL: a command that connected first
would fail with exit code 1 (unreachable) instead of 2.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scanstream import DataStore, get_session_node
from scanstream._transport.server import EmbeddedServer
from scanstream.admin import counted
from scanstream.cli import build_parser, main
from scanstream.cli.logs import configure_logging
from scanstream.exceptions import InvalidTransitionError, ScanstreamError
from scanstream.models import ScanState

#: Nothing listens there: reaching it fails (exit code 1), after SCANSTREAM_MAX_UNREACHABLE_TIME.
DOWN = "redis://127.0.0.1:1"


@pytest.fixture(autouse=True)
def _short_outage_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """A command that does try the down server gives up fast (and fails the test with 1)."""
    monkeypatch.setenv("SCANSTREAM_MAX_UNREACHABLE_TIME", "0.5")
    for name in ("SCANSTREAM_REDIS_URL", "SCANSTREAM_SESSION", "SCANSTREAM_DATA_ROOT"):
        monkeypatch.delenv(name, raising=False)


def _usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``scanstream --redis-url DOWN ARGV``; assert a usage error; return its message line."""
    code = main(["--redis-url", DOWN, *argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and "unreachable" not in err, err
    assert err.startswith("usage: scanstream"), err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1, err
    return lines[0]


# ------------------------------------------------------------------ durations


@pytest.mark.parametrize(
    "value", ["-5", "-0.5", "-1h", "-.5m", "abc", "nan", "inf", "5 parsecs", "9" * 400]
)
def test_a_bad_duration_is_a_usage_error_naming_the_option_and_the_accepted_form(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    line = _usage_error(["delete", "s1", "--older-than", value], capsys)
    assert f"argument --older-than: invalid duration {value!r}" in line
    assert "a number of seconds >= 0" in line and "90s, 15m, 2h, 7d" in line
    assert "parse_duration" not in line


# ------------------------------------------------------------------ session names

_BAD_SESSIONS = ["", "a b", "a/b", ".hidden", "x" * 129, "name\n", "s:1"]
_SESSION_COMMANDS = [
    ["ls", "{}"],
    ["show", "{}"],
    ["show", "{}", "1"],
    ["delete", "{}"],
    ["delete", "{}", "--older-than", "1d", "--dry-run"],
    ["writer", "{}"],
    ["writer", "ok", "{}"],
    ["writer", "--status", "{}"],
    ["watch", "{}"],
    ["web", "{}"],
    ["demo", "--session", "{}"],
    ["scan", "--session", "{}", "ct", "0.1", "diode"],
    ["scan", "ct", "0.1", "diode", "--session", "{}"],
]


@pytest.mark.parametrize("template", _SESSION_COMMANDS, ids=lambda t: " ".join(t[:2]))
@pytest.mark.parametrize("name", _BAD_SESSIONS, ids=repr)
def test_a_bad_session_name_is_a_usage_error_in_every_subcommand(
    template: list[str], name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [word.format(name) for word in template]
    if argv[0] in ("writer", "demo"):  # their root is checked too: a good one
        argv += ["--root", str(tmp_path)]
    line = _usage_error(argv, capsys)
    assert f"invalid session name {name!r}" in line
    assert "1 to 128 characters among letters, digits, '_', '.' and '-'" in line


def test_a_bad_session_name_from_the_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SCANSTREAM_SESSION", "my session")
    line = _usage_error(["scan", "ct", "0.1", "diode"], capsys)
    assert "$SCANSTREAM_SESSION: invalid session name 'my session'" in line
    assert "or give --session" in line


# ------------------------------------------------------------------ scan numbers and ports


@pytest.mark.parametrize(
    "argv",
    [
        ["show", "s1", "0"],
        ["show", "s1", "-3"],
        ["show", "s1", "two"],
        ["delete", "s1", "--scan", "0"],
        ["delete", "s1", "--scan", "1", "-1"],
    ],
)
def test_a_scan_number_below_one_is_a_usage_error(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    line = _usage_error(argv, capsys)
    assert "is not a scan number: give an integer >= 1" in line


@pytest.mark.parametrize("port", ["70000", "-1", "http"])
def test_a_port_that_is_not_one_is_a_usage_error(
    port: str, capsys: pytest.CaptureFixture[str]
) -> None:
    line = _usage_error(["web", "--port", port], capsys)
    assert f"argument --port: {port} is not a TCP port (0 to 65535)" in line


def test_web_on_an_address_of_another_machine_names_the_host_not_the_port(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # 192.0.2.1 (TEST-NET-1) is never an address of this machine: bind() fails EADDRNOTAVAIL.
    code = main(["--redis-url", DOWN, "web", "--host", "192.0.2.1", "--token", "t", "--port", "0"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err, err
    assert "cannot listen on 192.0.2.1:0" in err
    assert "--host '192.0.2.1' is no address of this machine" in err and "--port" not in err


def test_writer_option_messages_name_the_option_once(capsys: pytest.CaptureFixture[str]) -> None:
    line = _usage_error(["writer", "s1", "--umask", "999"], capsys)
    assert line.endswith(
        "argument --umask: '999' is not an octal number; give one between 000 and 777, e.g. 022"
    )
    line = _usage_error(["writer", "s1", "--umask", "1000"], capsys)
    assert "argument --umask: '1000' is not between 000 and 777" in line


# ------------------------------------------------------------------ scan --root


def _nothing_published(redis_url: str) -> None:
    with DataStore(redis_url) as store:
        assert store.sessions() == []


def test_scan_with_a_root_it_cannot_use_is_a_usage_error_before_publishing(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "s1").write_text("")  # where the session's directory would go
    scan = ["--redis-url", redis_url, "scan", "--session", "s1", "--time-scale", "0"]
    for root, message in (
        (a_file, f"--root {str(a_file)!r} is not a directory; give a directory"),
        (a_file / "below", f"--root {str(a_file / 'below')!r} does not exist and cannot be"),
        (
            blocked,
            f"cannot make the data directory {str(blocked / 's1/sample/sample_0001')!r} under "
            f"--root {str(blocked)!r} (Not a directory): remove what is in the way",
        ),
    ):
        assert main([*scan, "--root", str(root), "ct", "0.1", "diode"]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and "NotADirectoryError" not in err, err
        assert f"scanstream scan ct: error: {message}" in err, err
    assert main([*scan, "--root", str(tmp_path), "--sample", "a/b", "ct", "0.1", "diode"]) == 2
    assert "invalid sample name 'a/b'" in capsys.readouterr().err
    _nothing_published(redis_url)


def test_scan_names_the_variable_of_a_bad_data_root(
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    monkeypatch.setenv("SCANSTREAM_DATA_ROOT", str(a_file))
    assert main(["--redis-url", redis_url, "scan", "ct", "0.1", "diode"]) == 2
    err = capsys.readouterr().err
    assert (
        f"$SCANSTREAM_DATA_ROOT {str(a_file)!r} is not a directory" in err
        and "--root" not in (err.splitlines()[-1])
    )
    _nothing_published(redis_url)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write in a read-only directory")
def test_scan_with_a_read_only_root_is_a_usage_error(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tmp_path.chmod(0o555)
    try:
        assert main(["--redis-url", redis_url, "scan", "--root", str(tmp_path), "ct", "0.1"]) == 2
        assert "is not writable by this user" in capsys.readouterr().err
    finally:
        tmp_path.chmod(0o755)
    _nothing_published(redis_url)


# ------------------------------------------------------------------ wording


def test_counted_nouns() -> None:
    assert [counted(n, "scan") for n in (0, 1, 2)] == ["0 scans", "1 scan", "2 scans"]
    assert counted(0, "scan", none=True) == "no scan"
    assert counted(1, "entry", "entries") == "1 entry"
    assert counted(3, "entry", "entries") == "3 entries"


def test_a_refused_state_change_reads_naturally() -> None:
    same = InvalidTransitionError(ScanState.DONE, ScanState.DONE)
    assert str(same) == "the scan is already DONE"
    after = InvalidTransitionError(ScanState.KILLED, ScanState.DONE, "ended by another process")
    assert str(after) == (
        "the scan has already ended KILLED: it cannot end DONE: ended by another process"
    )
    back = InvalidTransitionError(ScanState.DONE, ScanState.PREPARED)
    assert str(back) == "the scan has already ended DONE: it cannot go back to PREPARED"
    forward = InvalidTransitionError(ScanState.PREPARED, ScanState.CREATED)
    assert str(forward) == "cannot go from scan state PREPARED to CREATED"


def test_ls_and_delete_count_in_words(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    url = ["--redis-url", redis_url]
    scan = [*url, "scan", "--session", "s1", "--time-scale", "0", "--no-saving", "-q"]
    assert main([*scan, "ct", "0.1", "diode"]) == 0
    assert "s1:1_ct DONE 1 point\n" in capsys.readouterr().out
    assert main([*url, "ls"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("session s1: 1 scan, ") and out[-1].startswith(
        "total: 1 session, 1 scan, "
    )
    # Saving off: NOT_SAVED by design, nothing for a writer to save: deleted without --force.
    assert main([*url, "delete", "s1", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("1 scan would be deleted, 0 kept, ")
    assert out[-1].endswith(" would be freed")
    assert main([*url, "delete", "s1", "--scan", "7"]) == 1  # no such scan
    assert capsys.readouterr().out.splitlines()[-1] == "no scan deleted, 1 kept, 0B freed"
    assert main([*url, "show", "s1"]) == 0
    assert " 1 point   float64" in capsys.readouterr().out
    assert main([*url, "delete", "s1", "--force"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("1 scan deleted, 0 kept, ")


# ------------------------------------------------------------------ tracebacks in the log


def _log_a_failure() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("scanstream.test").exception("could not end it")


def test_a_logged_exception_is_one_line_on_stderr_unless_debug(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "writer.log"
    configure_logging(0, log_file=log)
    _log_a_failure()
    err = capsys.readouterr().err
    assert err.endswith("scanstream.test: could not end it (ValueError: boom)\n"), err
    assert "Traceback" not in err
    assert "Traceback (most recent call last)" in log.read_text()  # the file keeps it whole
    configure_logging(2)
    _log_a_failure()
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def _has_points(store: DataStore, session: str) -> bool:
    """Whether a channel of the session's first scan holds a point."""
    try:
        scan = get_session_node(session, store=store).get_scan(1)
        return any(len(node) for node in scan.load_nodes() if node.type == "channel")
    except ScanstreamError:  # no scan or no channel yet
        return False


def test_a_server_that_goes_down_during_a_scan_gives_no_traceback(
    server_binary: Path, tmp_path: Path, free_tcp_port: int
) -> None:
    server = EmbeddedServer(tmp_path / "redis", port=free_tcp_port)
    server.start(timeout=10)
    env = {**os.environ, "SCANSTREAM_MAX_UNREACHABLE_TIME": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "scanstream", "--redis-url", server.url, "scan"]
        + ["--session", "down", "-q", "timescan", "0.05", "diode"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        with DataStore(server.url) as store:  # until points are flowing
            deadline = time.monotonic() + 20
            while not _has_points(store, "down"):
                assert time.monotonic() < deadline and proc.poll() is None, "no point published"
                time.sleep(0.05)
        server.stop()
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait(timeout=5)
        server.stop()
    assert proc.returncode == 1, err
    assert "Traceback" not in err and "Traceback" not in out, err
    assert "scanstream scan: error: scan down:1_timescan failed: Redis at" in err
    assert "unreachable" in err.splitlines()[-1]


# ------------------------------------------------------------------ malformed URLs


@pytest.mark.parametrize(
    "url, problem",
    [
        ("redis://127.0.0.1:notaport", "is malformed: Port could not be cast to integer"),
        ("redis://127.0.0.1:99999", "is malformed: Port out of range 0-65535"),
        ("redis://[::1", "is malformed: Invalid IPv6 URL"),
        ("rediss://:secret@:1/0", "names no host"),  # redis-py would take localhost
        ("redis://127.0.0.1:1/abc", "names database 'abc', which is not a number"),  # or db 0
    ],
)
def test_a_malformed_url_is_one_usage_line_without_traceback(
    url: str, problem: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--redis-url", url, "ls"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert f"(from --redis-url) {problem}" in err
    assert "write redis://[USER:PASSWORD@]HOST[:PORT][/DB]" in err and "secret" not in err
    monkeypatch.setenv("SCANSTREAM_REDIS_URL", url)
    assert main(["show", "s1"]) == 2
    assert f"(from $SCANSTREAM_REDIS_URL) {problem}" in capsys.readouterr().err


# ------------------------------------------------------------------ Ctrl-C


def test_ctrl_c_during_the_demo_says_how_to_save_what_is_left(
    redis_url: str, tmp_path: Path
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "scanstream", "--redis-url", redis_url, "demo"]
        + ["--root", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        line = ""
        while "running the example scans" not in line:
            assert time.monotonic() < deadline and proc.poll() is None, "the demo did not start"
            line = proc.stdout.readline()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait(timeout=5)
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    assert (
        "Ctrl-C: the demo stopped; its scans not saved yet stay in Redis (`scanstream ls demo`): "
        f"`scanstream writer demo --root {tmp_path}` saves them"
    ) in err


def test_delete_scan_repeated_keeps_every_number(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = ["--redis-url", redis_url]
    scan = [*url, "scan", "--session", "s1", "--time-scale", "0", "--no-saving", "-q"]
    for _ in range(3):
        assert main([*scan, "ct", "0.1", "diode"]) == 0
    capsys.readouterr()
    argv = [*url, "delete", "s1", "--force", "--dry-run", "--scan", "1", "--scan", "3"]
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[1] for line in out[:-1]] == ["1_ct", "3_ct"], out


def test_writer_refuses_a_file_as_allowed_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    line = _usage_error(["writer", "s1", "--root", str(tmp_path), "--allow", str(a_file)], capsys)
    assert f"--allow {str(a_file)!r} is not a directory" in line


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"def f(:\n", "cannot be compiled as Python: invalid syntax (line 1)"),
        (b"\x7fELF\x00\x00binary", "cannot be compiled as Python: source code"),
    ],
)
def test_legacy_with_a_file_that_is_not_python_is_one_line(
    content: bytes, problem: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "script.py"
    script.write_bytes(content)
    assert main(["legacy", str(script)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert f"scanstream legacy: error: {str(script)!r} {problem}" in err


def test_a_scan_whose_output_reader_goes_away_still_ends_done(redis_url: str) -> None:
    """`scanstream scan ... | head -2`: the rows stop, not the scan (it ended FAILED)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "scanstream", "--redis-url", redis_url, "scan", "--session"]
        + ["piped", "--save-timeout", "0", "--no-writer-warning"]
        + ["ascan", "roby", "0", "1", "30", "0.02", "diode"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        header, first = proc.stdout.readline(), proc.stdout.readline()
        assert "roby[mm]" in header and first.split()[:2] == ["0", "0"]
        proc.stdout.close()  # as head does after its lines
        err = proc.stderr.read()
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.wait(timeout=5)
        if proc.stderr is not None:
            proc.stderr.close()
    assert proc.returncode == 3, err  # DONE, and not saved: no writer follows the session
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    with DataStore(redis_url) as store:
        scan = get_session_node("piped", store=store).get_scan(1)
        assert scan.state is ScanState.DONE and scan.info["npoints"] == 31


def test_negative_scan_arguments_with_an_exponent_are_numbers() -> None:
    args = build_parser().parse_args(
        ["scan", "ascan", "roby", "-1e-1", "-2.5E-2", "3", "0.1", "diode"]
    )
    assert args.args == ["roby", -0.1, -0.025, 3, 0.1, "diode"]


@pytest.mark.parametrize(
    "argv, points",
    [
        (["ascan", "roby", "0", "1", "1000000000000", "0.1", "diode"], "1,000,000,000,001"),
        (["amesh", "robx", "0", "1", "100000", "roby", "0", "1", "100000", "0.1", "diode"], None),
    ],
)
def test_a_step_scan_too_big_to_compute_is_a_usage_error(
    argv: list[str], points: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    """It failed with MemoryError ("Unable to allocate 7.28 TiB"), after connecting."""
    line = _usage_error(["scan", *argv], capsys)
    assert "is more than the 10,000,000 a step scan may have" in line
    assert "give fewer INTERVALS, or use loopscan or timescan" in line
    assert points is None or f"{points} points" in line
