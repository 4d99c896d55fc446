"""``scanstream scan`` (scanstream.cli.scan), run in-process against the test Redis."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from scanstream import DataStore, ScanState, get_session_node
from scanstream.cli import build_parser, main
from scanstream.cli.scan import EXIT_NOT_SAVED, ScanArgumentError, parse_scan_arguments
from scanstream.sim import default_beamline


def run(redis_url: str, *argv: str) -> int:
    return main(["--redis-url", redis_url, "scan", "--time-scale", "0", *argv])


# No writer follows these sessions: a scan that ends DONE exits EXIT_NOT_SAVED (see
# tests/test_cli_saving.py for the exit codes with a writer).
NOT_SAVED = EXIT_NOT_SAVED


def test_ascan_has_intervals_plus_one_points(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        run(redis_url, "--session", "cli_session", "ascan", "roby", "0", "1", "10", "0.1", "diode")
        == NOT_SAVED
    )
    err = capsys.readouterr().err
    assert "ascan roby 0 1 10 0.1" in err and "11/11 points" in err and "DONE" in err
    with DataStore(redis_url) as store:
        scan = get_session_node("cli_session", store=store).get_scan(1)
        assert scan.state is ScanState.DONE and scan.info["npoints"] == 11
        diode = next(n for n in scan.load_nodes() if n.name.endswith(":diode"))
        assert len(diode) == 11
        assert set(scan.info["positioners"]["positioners_start"]) == {
            "robx",
            "roby",
            "robz",
            "robu",
        }


def test_negative_numbers_options_after_arguments_and_saving(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        run(
            redis_url,
            "d2scan",
            "roby",
            "-.1",
            ".1",
            "robz",
            "-.2",
            ".2",
            "15",
            ".1",
            "sim_ct_gauss",
            "--quiet",
        )
        == NOT_SAVED
    )
    assert "d2scan roby -0.1 0.1 robz -0.2 0.2 15 0.1" in capsys.readouterr().err
    assert (
        run(redis_url, "--root", str(tmp_path), "loopscan", "3", "0.1", "lima_simulator", "simu1")
        == NOT_SAVED
    )
    assert len(list(tmp_path.rglob("lima_simulator_0000.h5"))) == 1
    assert run(redis_url, "timescan", "0.01", "diode", "--max-duration", "0.05") == NOT_SAVED


@pytest.mark.parametrize(
    "argv, code, message",
    [
        (
            ["ascan", "rob", "0", "1", "3", "0.1", "diode"],
            2,
            "unknown motor 'rob'; motors: robx, roby, robz, robu",
        ),
        (
            ["ascan", "roby", "0", "1", "3", "0.1", "diodex"],
            2,
            "unknown counter 'diodex'; counters: diode,",
        ),
        (["ascan", "roby", "0", "1", "0.1", "diode"], 2, "INTERVALS must be an integer, got '0.1'"),
        (["ascan", "roby", "0", "1"], 2, "missing INTERVALS COUNT_TIME"),
        (["ascan", "roby", "0", "1", "3", "0.1"], 2, "no counter given"),
        (["ascan", "diode", "0", "1", "3", "0.1", "diode"], 2, "(it is a counter)"),
        (["mesh", "1"], 2, "unknown scan type 'mesh'; known: ct, loopscan"),
        ([], 2, "no scan type"),
        (
            ["ascan", "roby", "0", "200", "3", "0.1", "diode"],
            1,
            "move to 200 mm is outside its limits [-100, 100]",
        ),
    ],
)
def test_bad_arguments_give_clear_errors(
    redis_url: str, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, message: str
) -> None:
    assert run(redis_url, *argv) == code
    assert message in capsys.readouterr().err


def test_list_devices_and_registration(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(redis_url, "--list") == 0
    out = capsys.readouterr().out
    assert "roby" in out and "lima_simulator (LimaDetector)" in out
    args = build_parser().parse_args(
        ["scan", "--session", "s", "ascan", "roby", "0", "1", "2", "0.1", "diode"]
    )
    assert args.type == "ascan" and args.args[0] == "roby" and callable(args.run)
    motor, start, stop, intervals, count_time, diode = parse_scan_arguments(
        args.type, args.args, default_beamline()
    )
    assert (motor.name, start, stop, intervals, count_time, diode.name) == (
        "roby",
        0.0,
        1.0,
        2,
        0.1,
        "diode",
    )


def test_each_scan_type_is_a_subcommand_with_help(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(redis_url, "ascan", "--help") == 0
    out = capsys.readouterr().out
    assert (
        "usage: scanstream scan ascan [OPTIONS] MOTOR START STOP INTERVALS COUNT_TIME COUNTER"
        in out
    )
    assert "Absolute step scan of one motor" in out and "--max-duration" in out
    assert run(redis_url, "--list") == 0
    out = capsys.readouterr().out
    assert (
        "  amesh MOTOR1 START1 STOP1 INTERVALS1 MOTOR2 START2 STOP2 INTERVALS2 COUNT_TIME COUNTER"
        in out
    )


@pytest.mark.parametrize(
    "argv, usage_line",
    [
        (["ascan", "roby", "0", "1"], "usage: scanstream scan ascan [OPTIONS] MOTOR START"),
        (
            ["loopscan", "3", "x", "diode"],
            "usage: scanstream scan loopscan [OPTIONS] NPOINTS COUNT_TIME",
        ),
        (["mesh"], "usage: scanstream scan [-h]"),
        ([], "usage: scanstream scan [-h]"),
    ],
)
def test_usage_errors_show_the_usage(
    redis_url: str, capsys: pytest.CaptureFixture[str], argv: list[str], usage_line: str
) -> None:
    assert run(redis_url, *argv) == 2
    assert usage_line in capsys.readouterr().err
    assert redis.Redis.from_url(redis_url).dbsize() == 0  # refused before anything was published


def test_bad_arguments_are_refused_while_parsing() -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["scan", "ascan", "roby", "0", "1", "2", "0.1"])
    assert info.value.code == 2


def test_options_may_follow_the_scan_arguments(redis_url: str) -> None:
    # Given before the type and again after the arguments: the later value wins, as argparse does.
    assert (
        run(
            redis_url,
            "--session",
            "first",
            "loopscan",
            "2",
            "0.1",
            "diode",
            "diode2",
            "--session",
            "second",
            "-q",
        )
        == NOT_SAVED
    )
    with DataStore(redis_url) as store:
        scan = get_session_node("second", store=store).get_scan(1)
        assert scan.state is ScanState.DONE and scan.info["title"] == "loopscan 2 0.1"
        names = [n.name for n in scan.load_nodes()]
        assert any(n.endswith(":diode") for n in names) and any(
            n.endswith(":diode2") for n in names
        )


# ------------------------------------------------------------------ values in the terminal


def test_ct_prints_each_counter_with_its_rate(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(redis_url, "--session", "values", "ct", "0.1", "diode", "diode2") == NOT_SAVED
    out, err = capsys.readouterr()
    lines = out.splitlines()
    diode = next(line for line in lines if line.strip().startswith("diode ="))
    value, rate = diode.split("=")[1].split(" (")
    assert float(rate.removesuffix("/s)")) == pytest.approx(float(value) / 0.1, rel=1e-4)
    assert any(line.strip().startswith("diode2 =") for line in lines)
    assert "values:1_ct DONE 1 point" in lines  # the summary is on stdout
    assert "1/1 points" in err  # the progress on stderr


def test_a_step_scan_prints_a_row_per_point_motors_first(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(redis_url, "--session", "rows", "ascan", "roby", "0", "1", "4", "0.1", "diode") == (
        NOT_SAVED
    )
    out, err = capsys.readouterr()
    lines = out.splitlines()
    header = lines.index(next(line for line in lines if "roby[mm]" in line))
    assert lines[header].split() == ["#", "roby[mm]", "diode"]
    rows = [line.split() for line in lines[header + 1 : header + 6]]
    assert [r[0] for r in rows] == ["0", "1", "2", "3", "4"]
    assert [float(r[1]) for r in rows] == [0.0, 0.25, 0.5, 0.75, 1.0]
    with DataStore(redis_url) as store:
        node = get_session_node("rows", store=store).get_scan(1)
        diode = next(n for n in node.load_nodes() if n.name.endswith(":diode"))
        assert [float(r[2]) for r in rows] == pytest.approx(list(diode[0:5]), rel=1e-5)
    assert "rows:1_ascan DONE 5 points" in lines
    assert "5/5 points" in err and "roby[mm]" not in err


def test_the_table_gives_way_to_the_progress_line_when_points_come_too_fast() -> None:
    import io

    from scanstream.cli.scan_display import PointTable

    now = [0.0]
    slow = PointTable(io.StringIO(), clock=lambda: now[0])
    for i in range(30):
        now[0] += 1.0  # one point a second: every row is shown
        slow("timer", i, [("axis:roby", "mm", float(i)), ("c:diode", None, 2.0)])
    assert slow.active and slow.rows == 30
    assert len(slow.stream.getvalue().splitlines()) == 31  # header + rows

    fast = PointTable(io.StringIO(), clock=lambda: 5.0)  # all at the same instant
    for i in range(30):
        fast("timer", i, [("c:diode", None, 2.0)])
    assert not fast.active and fast.rows == 9


# ------------------------------------------------------------------ argument errors, Ctrl-C


@pytest.mark.parametrize(
    "argv, message",
    [
        (["ascan", "roby", "0", "1", "0", "0.1", "diode"], "INTERVALS must be at least 1, got '0'"),
        (["ascan", "roby", "0", "1", "-2", "0.1", "diode"], "INTERVALS must be at least 1"),
        (["ascan", "roby", "0", "1", "2", "0", "diode"], "COUNT_TIME must be a positive number"),
        (["dscan", "roby", "0", "1", "2", "-0.1", "diode"], "COUNT_TIME must be a positive"),
        (["ct", "0", "diode"], "COUNT_TIME must be a positive number of seconds, got '0'"),
        (["timescan", "0", "diode"], "COUNT_TIME must be a positive number"),
        (["loopscan", "0", "0.1", "diode"], "NPOINTS must be at least 1"),
        (["loopscan", "3", "inf", "diode"], "COUNT_TIME must be a positive number"),
        (["ascan", "roby", "nan", "1", "2", "0.1", "diode"], "START must be a finite number"),
        (["ascan", "roby", "0", "inf", "2", "0.1", "diode"], "STOP must be a finite number"),
        (["amesh", "roby", "0", "1", "2", "robz", "0", "1", "0", "0.1", "diode"], "INTERVALS2"),
        (
            ["a2scan", "roby", "0", "1", "roby", "0", "1", "2", "0.1", "diode"],
            "motor roby given twice",
        ),
        (
            ["ascan", "roby", "0", "1", "2", "0.1", "diode", "diode2", "diode"],
            "counter diode given",
        ),
    ],
)
def test_out_of_range_and_repeated_arguments_are_usage_errors(
    redis_url: str, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert run(redis_url, *argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: scanstream scan") and message in err and "Traceback" not in err
    assert redis.Redis.from_url(redis_url).dbsize() == 0  # refused before anything was published
    with pytest.raises(ScanArgumentError, match=message.split(",")[0]):
        parse_scan_arguments(argv[0], argv[1:], default_beamline())


@pytest.mark.parametrize(
    "option",
    [
        ["--save-timeout", "-1"],
        ["--time-scale", "-1"],
        ["--max-duration", "-1"],
        ["--max-duration", "nan"],
        ["--npoints", "-1"],
    ],
)
def test_negative_option_values_are_usage_errors(
    redis_url: str, capsys: pytest.CaptureFixture[str], option: list[str]
) -> None:
    assert run(redis_url, "timescan", "0.01", "diode", *option) == 2
    err = capsys.readouterr().err
    assert f"argument {option[0]}: '{option[1]}' must be" in err and "Traceback" not in err
    assert redis.Redis.from_url(redis_url).dbsize() == 0  # refused before anything was published


def test_list_gives_each_scan_type_its_arguments_and_summary(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(redis_url, "--list") == 0
    lines = capsys.readouterr().out.splitlines()
    at = lines.index("  ascan MOTOR START STOP INTERVALS COUNT_TIME COUNTER [COUNTER...]")
    assert lines[at + 1].strip().startswith("Absolute step scan of one motor")
    assert sum(line.startswith("  ") and not line.startswith("   ") for line in lines) == 8


def test_ctrl_c_twice_ends_the_scan_user_aborted(redis_url: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "scanstream", "--redis-url", redis_url, "scan"]
        + ["--session", "ctrl_c", "--no-writer-warning", "timescan", "0.05", "diode"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 30
        while "timescan 0.05" not in proc.stderr.readline():  # the header: the scan runs
            assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait(timeout=5)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Ctrl-C: stopping the scan" in err
    assert "ctrl_c:1_timescan USER_ABORTED" in out and "USER_ABORTED (Ctrl-C)" in err
    with DataStore(redis_url) as store:
        scan = get_session_node("ctrl_c", store=store).get_scan(1)
        assert scan.state is ScanState.USER_ABORTED and len(scan.load_nodes()[-1]) > 0
