"""The habits a user expects of the command line: --version, completion, one line (never a
traceback) for a bad, unreachable or password-protected Redis URL, usage errors with exit code
2, checked roots, the server named at start, subcommands loaded only when they run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import scanstream
from scanstream.cli import COMMANDS, main
from scanstream.cli.completion import completion_script


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"scanstream {scanstream.__version__}"


# ------------------------------------------------------------------ completion


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
@pytest.mark.parametrize(
    "line, expected, absent",
    [
        ("scanstream s", {"scan", "server", "show"}, {"writer"}),
        ("scanstream --redis-url redis://h:1 wr", {"writer"}, set()),
        ("scanstream server ", {"start", "stop", "status"}, {"scan"}),
        ("scanstream scan asc", {"ascan"}, set()),
        ("scanstream scan ascan ro", {"robx", "roby", "robz", "robu"}, set()),
        ("scanstream scan ascan roby 0 1 2 0.1 dio", {"diode", "diode2"}, set()),
        ("scanstream writer --compression ", {"gzip", "bitshuffle-lz4"}, {"--root"}),
        ("scanstream watch --n", {"--no-rows"}, set()),
    ],
)
def test_bash_completion_completes_commands_options_scan_types_and_devices(
    tmp_path: Path, line: str, expected: set[str], absent: set[str]
) -> None:
    script = tmp_path / "scanstream.bash"
    script.write_text(completion_script("bash"))
    words = line.split(" ")
    program = (
        f"source {script}\n"
        f"COMP_WORDS=({' '.join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}\n"
        "_scanstream; printf '%s\\n' \"${COMPREPLY[@]}\"\n"
    )
    done = subprocess.run(
        ["bash", "--norc", "-c", program], capture_output=True, text=True, timeout=20
    )
    assert done.returncode == 0, done.stderr
    offered = set(done.stdout.split())
    assert expected <= offered and not absent & offered, offered


def test_completion_command_prints_the_scripts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", "bash"]) == 0
    bash = capsys.readouterr().out
    assert "complete -o default -F _scanstream scanstream" in bash
    assert all(command.name in bash for command in COMMANDS)
    assert main(["completion", "zsh"]) == 0
    zsh = capsys.readouterr().out
    assert zsh.startswith("autoload -U +X bashcompinit && bashcompinit\n")
    assert bash.split("\n", 1)[1] in zsh  # the same function, under bashcompinit
    assert main(["completion", "fish"]) == 2
    assert "invalid choice: 'fish'" in capsys.readouterr().err


# ------------------------------------------------------------------ the Redis URL


@pytest.mark.parametrize("how", ["--redis-url", "$SCANSTREAM_REDIS_URL"])
def test_a_url_without_scheme_is_one_usage_line_naming_where_it_came_from(
    how: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = "user:secret@localhost:6390"
    if how == "--redis-url":
        argv = ["--redis-url", url, "ls"]
    else:
        monkeypatch.setenv("SCANSTREAM_REDIS_URL", url)
        argv = ["ls"]
    assert main(argv) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"(from {how})" in line and "redis://user:***@localhost:6390" in line
    assert "secret" not in line


def test_an_unreachable_server_is_one_line(
    free_tcp_port: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SCANSTREAM_MAX_UNREACHABLE_TIME", "0.5")  # first contact: at most that
    monkeypatch.setenv("SCANSTREAM_REDIS_URL", f"redis://:pw@127.0.0.1:{free_tcp_port}/0")
    assert main(["ls"]) == 1
    line = _one_line(capsys.readouterr().err)
    assert f"redis://:***@127.0.0.1:{free_tcp_port}/0" in line and "unreachable" in line
    assert "(URL from $SCANSTREAM_REDIS_URL)" in line and "pw@" not in line


def test_a_wrong_password_is_one_line(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    host = redis_url.split("://", 1)[1]
    bad = f"redis://nobody:wrong@{host}"
    assert main(["--redis-url", bad, "ls"]) == 1
    line = _one_line(capsys.readouterr().err)
    assert "refused the user name or password" in line and "(URL from --redis-url)" in line
    assert "nobody:***@" in line and "wrong" not in line


def test_a_server_that_wants_a_password_is_one_line(
    server_binary: Path, tmp_path: Path, free_tcp_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    server = subprocess.Popen(
        [str(server_binary), "--port", str(free_tcp_port), "--bind", "127.0.0.1"]
        + ["--requirepass", "sekret", "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )
    try:
        url = f"redis://127.0.0.1:{free_tcp_port}/0"
        deadline = time.monotonic() + 10
        while main(["--redis-url", url.replace("//", "//:sekret@"), "ls"]) != 0:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        capsys.readouterr()
        assert main(["--redis-url", url, "ls"]) == 1
        line = _one_line(capsys.readouterr().err)
        assert "requires a password and the URL gives none" in line and url in line
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_scan_names_the_server_it_uses(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--redis-url", redis_url, "scan", "--time-scale", "0", "--no-writer-warning"]
    main([*argv, "loopscan", "1", "0.1", "diode"])
    assert f"Redis server: {redis_url} (from --redis-url)" in capsys.readouterr().err


# ------------------------------------------------------------------ lazy subcommands


def test_server_status_loads_neither_the_writer_nor_h5py(private_runtime_dir: Path) -> None:
    code = (
        "import sys; from scanstream.cli import main; code = main(['server', 'status']); "
        "print(sorted(m for m in sys.modules if m == 'h5py' or m.startswith('scanstream.writer')"
        " or m.startswith('scanstream.sim') or m == 'scanstream.cli.scan'))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout + done.stderr
    assert "running:" in done.stdout  # it did run


def test_every_registered_command_has_its_functions() -> None:
    for command in COMMANDS:
        configure, run = command.load()
        assert callable(configure) and callable(run), command


# ------------------------------------------------------------------ roots and sessions


def test_writer_and_demo_refuse_a_root_they_cannot_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    for argv in (["writer", "s1", "--root"], ["demo", "--root"]):
        assert main([*argv, str(a_file)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("usage: scanstream ") and "Traceback" not in err
        assert f"--root {str(a_file)!r} is not a directory" in err
        assert main([*argv, str(a_file / "below")]) == 2
        assert "does not exist and cannot be created" in capsys.readouterr().err


def test_writer_refuses_a_number_of_workers_below_one_or_with_in_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["writer", "s1", "--root", str(tmp_path), "--workers"]
    for value, message in (
        ("0", "argument --workers: 0 is too few: a writer writes at least 1 scan at once"),
        ("-2", "argument --workers: -2 is too few: a writer writes at least 1 scan at once"),
        ("two", "argument --workers: 'two' is not an integer"),
    ):
        assert main([*argv, value]) == 2
        err = capsys.readouterr().err
        assert err.startswith("usage: scanstream ") and "Traceback" not in err
        assert message in err, err
    assert main([*argv, "2", "--in-process"]) == 2
    err = capsys.readouterr().err
    assert "--workers sets the worker processes, and --in-process" in err and "Traceback" not in err
    assert main(["writer", "--help"]) == 0
    assert "--workers N" in capsys.readouterr().out


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write in a read-only directory")
def test_demo_with_a_read_only_root_gives_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tmp_path.chmod(0o555)
    try:
        assert main(["demo", "--root", str(tmp_path)]) == 2
        assert "is not writable by this user" in capsys.readouterr().err
    finally:
        tmp_path.chmod(0o755)


def test_writer_names_the_server_and_hints_at_known_sessions_in_its_log_file(
    redis_url: str, tmp_path: Path
) -> None:
    assert (
        main(
            ["--redis-url", redis_url, "scan", "--session", "known", "-q"]
            + ["--time-scale", "0", "loopscan", "1", "0.1", "diode"]
        )
        != 2
    )
    log = tmp_path / "writer.log"
    writer = subprocess.Popen(
        [sys.executable, "-m", "scanstream", "--redis-url", redis_url, "writer", "knwon"]
        + ["--root", str(tmp_path / "data"), "--in-process", "--log-file", str(log)]
        + ["--log-level", "info"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while "has no scan in Redis yet" not in (log.read_text() if log.exists() else ""):
            assert writer.poll() is None and time.monotonic() < deadline, writer.stderr
            time.sleep(0.05)
        writer.send_signal(signal.SIGTERM)
        out, err = writer.communicate(timeout=20)
    finally:
        writer.kill()
        writer.wait(timeout=5)
    text = log.read_text()
    assert f"Redis server: {redis_url} (from --redis-url)" in text
    assert (
        "session knwon has no scan in Redis yet" in text and "(sessions with scans: known)" in text
    )
    assert "INFO" in text and "INFO" not in err  # info records go to the file only
    assert (tmp_path / "data").is_dir()  # the root was created


def test_writer_log_file_that_cannot_be_opened_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "no_dir" / "writer.log"
    argv = ["writer", "s1", "--root", str(tmp_path), "--log-file", str(log)]
    assert main(argv) == 2
    assert "--log-file" in capsys.readouterr().err


# ------------------------------------------------------------------ the ACLs of docs/deployment.md

_ACL = {
    "publisher": "resetkeys ~scanstream:* resetchannels -@all +@read +@write +@scripting +@transaction "
    "+@connection -@dangerous",
    "writer": "resetkeys ~scanstream:* resetchannels -@all +@read +@write +@scripting +@transaction "
    "+@connection -@dangerous",
    "reader": "resetkeys %R~scanstream:* resetchannels -@all +@read +@connection -@dangerous",
    # a publisher whose administrator forgot +@transaction
    "forgetful": "resetkeys ~scanstream:* resetchannels -@all +@read +@write +@scripting "
    "+@connection -@dangerous",
}


def test_the_users_of_the_deployment_guide_publish_write_and_read(
    server_binary: Path, tmp_path: Path, free_tcp_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    import redis

    from scanstream import DataStore, SavingState, get_session_node
    from scanstream.writer import WriterService

    server = subprocess.Popen(
        [str(server_binary), "--port", str(free_tcp_port), "--bind", "127.0.0.1"]
        + ["--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )
    try:
        admin = redis.Redis(port=free_tcp_port, socket_timeout=5)
        deadline = time.monotonic() + 10
        while True:
            try:
                admin.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.05)
        for user, rules in _ACL.items():
            admin.execute_command("ACL", "SETUSER", user, "on", f">{user}-pw", *rules.split())
        url = {u: f"redis://{u}:{u}-pw@127.0.0.1:{free_tcp_port}/0" for u in _ACL}
        with DataStore(url["writer"]) as store:
            service = WriterService(["acl"], root=tmp_path, store=store, isolate=False).start()
            try:
                while not store.redis.exists(store.keys.writer_health("acl")):
                    assert time.monotonic() < deadline + 10, "the writer did not claim the session"
                    time.sleep(0.02)
                argv = ["--redis-url", url["publisher"], "scan", "--session", "acl", "-q"]
                assert main([*argv, "--time-scale", "0", "ct", "0.1", "diode"]) == 0
                assert "saved in " in capsys.readouterr().out
            finally:
                service.stop(timeout=10)
        with DataStore(url["reader"]) as store:
            scan = get_session_node("acl", store=store).get_scan(1)
            assert scan.saving.state is SavingState.SAVED
        assert main(["--redis-url", url["reader"], "ls"]) == 0
        assert "acl" in capsys.readouterr().out
        assert (
            main(
                ["--redis-url", url["reader"], "scan", "--session", "acl", "-q"]
                + ["--time-scale", "0", "ct", "0.1", "diode"]
            )
            == 1
        )
        line = _one_line(capsys.readouterr().err)
        assert "refused a command to this user" in line and "reader:***@" in line
        assert (
            main(
                ["--redis-url", url["forgetful"], "scan", "--session", "acl", "-q"]
                + ["--time-scale", "0", "ct", "0.1", "diode"]
            )
            == 1
        )
        # The scan is created (one script), then its data is refused: the header and the
        # sender's log come first; the error itself is one line, the last, with no traceback.
        err = capsys.readouterr().err
        assert "Traceback" not in err, err
        line = [line for line in err.splitlines() if line.strip()][-1]
        assert line.startswith("scanstream scan: error: "), err
        assert "refused a command to this user" in line and "'multi'" in line
        assert "forgetful:***@" in line and "(URL from --redis-url)" in line
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_the_worker_processes_log_into_the_writers_log_file(redis_url: str, tmp_path: Path) -> None:
    from scanstream import DataStore
    from scanstream.writer import writer_status

    log = tmp_path / "writer.log"
    writer = subprocess.Popen(
        [sys.executable, "-m", "scanstream", "--redis-url", redis_url, "writer", "workers"]
        + ["--root", str(tmp_path / "data"), "--log-file", str(log), "--log-level", "debug"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        with DataStore(redis_url) as store:
            while writer_status("workers", store=store) is None:
                assert writer.poll() is None and time.monotonic() < deadline, writer.stderr
                time.sleep(0.05)
        argv = ["--redis-url", redis_url, "scan", "--session", "workers", "-q"]
        assert main([*argv, "--time-scale", "0", "--save-timeout", "30", "ct", "0.1", "diode"]) == 0
        writer.send_signal(signal.SIGTERM)
        _, err = writer.communicate(timeout=20)
    finally:
        writer.kill()
        writer.wait(timeout=5)
    worker_lines = [line for line in log.read_text().splitlines() if " worker " in line]
    assert any("writing scan workers:1" in line for line in worker_lines), log.read_text()
    assert "writing scan workers:1" not in err  # debug records go to the file only


def test_a_reader_that_goes_away_ends_the_output_quietly() -> None:
    """`scanstream scan --list | head -1`: no BrokenPipeError traceback, exit code 141."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line: the first write fails
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "scanstream", "scan", "--list"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 141, proc.stderr
