"""Every command says its errors in one form, ``scanstream COMMAND: error: MESSAGE``, with the
exit code docs/configuration.md gives ("Errors and exit codes"); run as a user runs them.

``ls`` and ``delete`` said ``scanstream: error: ...`` and ``show`` ``scanstream show: error:
...``; ``legacy``, ``web`` and ``server`` had forms of their own, without ``error:``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

#: A port nothing listens on: the commands that try it fail at once (connection refused).
DOWN = "redis://127.0.0.1:1"


def _run(url: str, *argv: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "scanstream", "--redis-url", url, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **os.environ,
            "SCANSTREAM_MAX_UNREACHABLE_TIME": "0.5",  # a server never reached: told at once
            **(env or {}),
        },
    )
    return done.returncode, done.stderr


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if ": error: " in line]


def _assert_one_error(command: str, err: str, *words: str) -> None:
    """One error line, of the form of ``command``, holding ``words``; no traceback."""
    assert "Traceback" not in err, err
    lines = _error_lines(err)
    assert len(lines) == 1, err
    assert lines[0].startswith(f"scanstream {command}: error: "), err
    for word in words:
        assert word in lines[0], err
    # Nothing else on stderr names itself as scanstream in another form.
    others = [
        line
        for line in err.splitlines()
        if re.match(r"scanstream( \w+)?: ", line) and ": error: " not in line
    ]
    assert others == [], err


@pytest.mark.parametrize(
    "argv",
    [
        ["ls"],
        ["show", "s1"],
        ["delete", "s1"],
        ["watch", "s1"],
        ["writer", "--status"],
        ["scan", "--no-writer-warning", "ct", "0.01", "diode"],
        ["web", "--port", "0"],
    ],
    ids=lambda argv: argv[0],
)
def test_an_unreachable_server_is_one_error_line_of_the_command(
    argv: list[str], tmp_path: Path
) -> None:
    code, err = _run(DOWN, *argv)
    assert code == 1, err
    _assert_one_error(argv[0], err, "unreachable", DOWN)


def test_the_writer_and_the_demo_on_an_unreachable_server(tmp_path: Path) -> None:
    code, err = _run(DOWN, "writer", "s1", "--root", str(tmp_path / "w"))
    assert code == 1, err
    _assert_one_error("writer", err, "unreachable")
    code, err = _run(DOWN, "demo", "--root", str(tmp_path / "d"))
    assert code == 1, err
    _assert_one_error("demo", err, "unreachable")


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["ls", "nosuch"], ["no session named 'nosuch'"]),
        (["show", "nosuch"], ["no session named 'nosuch'"]),
        (["show", "nosuch", "3"], ["no session named 'nosuch'"]),
        (["delete", "nosuch"], ["no session named 'nosuch'"]),
    ],
    ids=["ls", "show", "show scan", "delete"],
)
def test_a_missing_session_is_one_error_line_of_the_command(
    argv: list[str], words: list[str], redis_url: str
) -> None:
    code, err = _run(redis_url, *argv)
    assert code == 1, err
    _assert_one_error(argv[0], err, *words)


def test_usage_errors_of_each_kind_have_the_same_form(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    cases = [
        # (argv, command, words): argparse's, the command's after parsing, main()'s URL check
        (["show", "s1", "0"], "show", ["not a scan number"]),
        (["writer", "s1", "--root", str(blocker)], "writer", ["is not a directory"]),
        (["demo", "--root", str(blocker / "x")], "demo", ["cannot be created"]),
        (["legacy", str(tmp_path / "none.py")], "legacy", ["no script"]),
        (["web", "--host", "0.0.0.0"], "web", ["without a token"]),
    ]
    for argv, command, words in cases:
        code, err = _run(DOWN, *argv)
        assert code == 2, (argv, err)
        _assert_one_error(command, err, *words)
    code, err = _run("nope", "ls")
    assert code == 2, err
    _assert_one_error("ls", err, "no scheme")


def test_a_script_that_is_no_python_is_an_error_of_legacy(tmp_path: Path) -> None:
    script = tmp_path / "bad.py"
    script.write_text("def (:\n")
    code, err = _run(DOWN, "legacy", str(script))
    assert code == 2, err
    _assert_one_error("legacy", err, "cannot be compiled as Python")


def test_legacy_without_a_script_names_only_the_script(tmp_path: Path) -> None:
    """argparse said "the following arguments are required: SCRIPT.py, ARGS": ARGS is not."""
    code, err = _run(DOWN, "legacy")
    assert code == 2, err
    _assert_one_error("legacy", err, "give the script to run")
    assert "ARGS" not in _error_lines(err)[0].split("give the script")[0], err


def test_an_unopenable_log_file_says_what_to_give(tmp_path: Path) -> None:
    log = tmp_path / "no" / "such" / "writer.log"
    code, err = _run(DOWN, "writer", "s1", "--root", str(tmp_path), "--log-file", str(log))
    assert code == 2, err
    _assert_one_error("writer", err, f"--log-file {str(log)!r} cannot be opened", "give a file")


def test_ctrl_c_while_the_command_starts_is_no_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Parsing imports the subcommand's module (h5py and the writer for ``demo``: the first
    half second of the command): a Ctrl-C then printed the traceback of the imports."""
    import importlib

    from scanstream import cli

    def interrupted(name: str) -> object:
        raise KeyboardInterrupt  # as a Ctrl-C arriving during the import

    monkeypatch.setattr(importlib, "import_module", interrupted)
    assert cli.main(["demo", "--root", "x"]) == 130
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == "", captured
