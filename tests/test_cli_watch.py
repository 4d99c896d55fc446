"""``scanstream watch``: run as a user runs it (a process), beside real scans."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from scanstream import DataStore, get_session_node
from scanstream._transport.connection import clear_default_stores
from scanstream._transport.server import EmbeddedServer
from scanstream.cli import main
from scanstream.writer import WriterService


def _watch(redis_url: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "scanstream", "--redis-url", redis_url, "watch", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_line(proc: subprocess.Popen[str], marker: str) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + 20
    line = ""
    while marker not in line:
        assert time.monotonic() < deadline and proc.poll() is None, f"no {marker!r} line"
        line = proc.stdout.readline()


def _finish(proc: subprocess.Popen[str]) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait(timeout=5)


def _scan(redis_url: str, session: str, *argv: str) -> None:
    main(
        ["--redis-url", redis_url, "scan", "--session", session, "-q", "--save-timeout", "0"]
        + ["--no-writer-warning", *argv]
    )


def test_watch_waits_for_a_session_then_shows_a_slow_scan_row_by_row(redis_url: str) -> None:
    proc = _watch(redis_url, "later", "--timeout", "2")
    _wait_line(proc, "session later does not exist yet: waiting for its first scan")
    _wait_line(proc, "watching later")
    time.sleep(0.3)  # the walk starts from the next scan: let it reach its first read
    _scan(redis_url, "later", "ascan", "roby", "0", "1", "3", "0.1", "diode")
    out, err = _finish(proc)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert any(
        line.endswith("later:1_ascan started  ascan roby 0 1 3 0.1  (4 points)") for line in lines
    )
    header = next(i for i, line in enumerate(lines) if "roby[mm]" in line)
    assert lines[header].split() == ["#", "roby[mm]", "elapsed_time[s]", "diode"]
    rows = [line.split() for line in lines[header + 1 : header + 5]]
    assert [float(r[1]) for r in rows] == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0], abs=1e-6)
    with DataStore(redis_url) as store:
        scan = get_session_node("later", store=store).get_scan(1)
        diode = next(n for n in scan.load_nodes() if n.name.endswith(":diode"))
        assert [float(r[3]) for r in rows] == pytest.approx(list(diode[0:4]), rel=1e-5)
    ended = next(line for line in lines if "ended" in line)
    assert ended.endswith("later:1_ascan ended    DONE  4 points")
    assert f"diode={float(diode[3]):.6g}" in lines[lines.index(ended) + 1]
    assert any("NOT SAVED: no writer follows session later" in line for line in lines)
    assert f"Redis server: {redis_url} (from --redis-url)" in err


def test_fast_points_give_way_to_the_last_values(redis_url: str) -> None:
    proc = _watch(redis_url, "fast", "--timeout", "2")
    _wait_line(proc, "watching fast")
    time.sleep(0.3)
    _scan(redis_url, "fast", "--time-scale", "0", "loopscan", "300", "0.1", "diode")
    out, err = _finish(proc)
    assert proc.returncode == 0, err
    assert "fast:1_loopscan: points come faster than a row each can be shown" in err
    rows = [line for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert 0 < len(rows) < 300
    assert "fast:1_loopscan ended    DONE  300 points" in out and "last values: " in out


@pytest.fixture
def writer(redis_url: str, tmp_path: Path) -> Iterator[None]:
    with DataStore(redis_url) as store:
        service = WriterService(["saved"], root=tmp_path, store=store, isolate=False).start()
        try:
            deadline = time.monotonic() + 10
            while not store.redis.exists(store.keys.writer_health("saved")):
                assert time.monotonic() < deadline, "the writer did not claim the session"
                time.sleep(0.02)
            yield
        finally:
            service.stop(timeout=10)


def test_every_session_is_watched_and_the_verdict_shown(
    redis_url: str, writer: None, tmp_path: Path
) -> None:
    _scan(redis_url, "other", "--time-scale", "0", "ct", "0.1", "diode")  # a known session
    proc = _watch(redis_url, "--timeout", "2")
    _wait_line(proc, "watching 1 session: other")
    time.sleep(0.3)
    _scan(redis_url, "saved", "--time-scale", "0", "ct", "0.1", "diode")
    out, err = _finish(proc)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert "new session saved: following it" in lines  # seen from its first scan on
    assert any(line.endswith("saved:1_ct started  ct 0.1  (1 point)") for line in lines)
    assert any(line.endswith("saved:1_ct ended    DONE  1 point") for line in lines)
    verdict = next(line for line in lines if "saved:1_ct saved in " in line)
    assert verdict.endswith(f"{tmp_path}/saved/saved.h5::1.1")


def test_a_session_named_twice_is_watched_once(redis_url: str) -> None:
    proc = _watch(redis_url, "twice", "twice", "--timeout", "2")
    _wait_line(proc, "watching twice (Ctrl-C to stop)")
    _scan(redis_url, "twice", "--time-scale", "0", "loopscan", "3", "0.1", "diode")
    out, err = _finish(proc)
    assert proc.returncode == 0 and "Traceback" not in err, err
    lines = out.splitlines()
    assert sum(line.endswith("twice:1_loopscan ended    DONE  3 points") for line in lines) == 1


def test_ctrl_c_ends_watch_cleanly(redis_url: str) -> None:
    proc = _watch(redis_url, "idle")
    _wait_line(proc, "watching idle")
    proc.send_signal(signal.SIGINT)
    out, err = _finish(proc)
    assert proc.returncode == 130 and "Traceback" not in err, err


def test_bad_arguments_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["watch", "--timeout", "0"]) == 2
    assert "must be a positive number of seconds" in capsys.readouterr().err


class _Terminal(io.StringIO):
    """stdout and stderr of a terminal: one screen."""

    def isatty(self) -> bool:
        return True


def test_the_refreshed_values_line_is_erased_before_any_other_line(redis_url: str) -> None:
    from scanstream.cli.watch import _Watcher

    screen = _Terminal()
    with DataStore(redis_url) as store:
        watcher = _Watcher(store, rows=False, save_wait=1.0, out=screen)
        watcher.err, watcher.tty = screen, True
        done: list[int] = []
        thread = threading.Thread(target=lambda: done.append(watcher.run(["tty"], 1.5)))
        thread.start()
        try:
            time.sleep(0.5)
            _scan(redis_url, "tty", "loopscan", "8", "0.05", "diode")
            thread.join(timeout=30)
        finally:
            watcher.stop()
    assert done == [0]
    text = screen.getvalue()
    refreshed = [p for p in text.split("\r\x1b[K") if " pt: " in p and "diode=" in p]
    assert refreshed, text  # the values line was shown while the scan ran
    visible = [line.rsplit("\r\x1b[K", 1)[-1] for line in text.split("\n")]
    assert not [line for line in visible if " pt: " in line], text  # each one erased in time
    assert any(line.endswith("tty:1_loopscan ended    DONE  8 points") for line in visible)


@pytest.mark.parametrize("outage", [0.0, 2.0], ids=["reset", "outage beyond the budget"])
def test_watch_goes_on_through_a_server_restart(
    outage: float, private_server: EmbeddedServer, tmp_path: Path
) -> None:
    """It ended with exit code 1 ("reconnect to go on") when the server came back without
    its data, or after the outage budget: a monitor outlives its server's restarts."""
    url = private_server.url
    env = {**os.environ, "SCANSTREAM_MAX_UNREACHABLE_TIME": "1"}
    watch = subprocess.Popen(
        [sys.executable, "-m", "scanstream", "--redis-url", url, "watch", "w1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert watch.stdout is not None
        _wait_line(watch, "watching w1")
        _scan(url, "w1", "--time-scale", "0", "loopscan", "2", "0.01", "diode")
        _wait_line(watch, "w1:1_loopscan ended    DONE")
        private_server.stop()
        time.sleep(outage)
        private_server.start(timeout=10)  # empty: no persistence
        _wait_line(watch, "watching w1")  # a new watch of the session
        clear_default_stores()  # this process's stores rightly refuse the reset server
        _scan(url, "w1", "--time-scale", "0", "loopscan", "3", "0.01", "diode")
        _wait_line(watch, "_loopscan ended    DONE  3 points")
        watch.send_signal(signal.SIGINT)
        _, err = watch.communicate(timeout=20)
    finally:
        watch.kill()
        watch.communicate(timeout=5)  # closes the pipes too
    assert watch.returncode == 130, err
    assert "Traceback" not in err, err
    lost = [line for line in err.splitlines() if line.startswith("scanstream watch: ")]
    assert len(lost) == 1 and lost[0].endswith("watching again (Ctrl-C to stop)"), err


class _Lines:
    """The lines of a stream of a child process, read by a thread, with the time each came."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[tuple[float, str]] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def wait_for(self, text: str, timeout: float) -> float:
        """The time the first line holding ``text`` came; fails after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            for when, line in list(self.lines):
                if text in line:
                    return when
            assert time.monotonic() < deadline, f"no {text!r} line in {self.text()}"
            time.sleep(0.05)

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def close(self, stream: IO[str]) -> None:
        """Once the child has ended: read to the end, close the stream."""
        self._thread.join(timeout=10)
        stream.close()


@pytest.mark.parametrize("budget", ["30", "1"], ids=["within the budget", "past the budget"])
def test_watch_says_at_once_that_the_server_is_gone_and_when_it_is_back(
    budget: str, persistent_server: EmbeddedServer
) -> None:
    """It said nothing for the outage budget (30 s); past it, its new watch failed at once
    on the server still gone (exit code 1): a monitor retries for as long as it runs."""
    url = persistent_server.url
    watch = subprocess.Popen(
        [sys.executable, "-m", "scanstream", "--redis-url", url, "watch", "w2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "SCANSTREAM_MAX_UNREACHABLE_TIME": budget},
    )
    assert watch.stderr is not None
    err = _Lines(watch.stderr)
    try:
        _wait_line(watch, "watching w2")
        persistent_server.stop()  # with its data: it comes back as it was
        gone = time.monotonic()
        said = err.wait_for("does not answer", timeout=10) - gone
        assert said < 2.5, err.text()
        time.sleep(8.0)  # longer than the budget, and than a new watch's first contact (5 s)
        assert watch.poll() is None, err.text()
        persistent_server.start(timeout=10)
        back = time.monotonic()
        assert err.wait_for("answers again after", timeout=35) - back < 3.0, err.text()
        if budget == "1":
            err.wait_for("watching again (Ctrl-C to stop)", timeout=10)
        # Watched on: a scan run now is shown.
        _scan(url, "w2", "--time-scale", "0", "loopscan", "2", "0.01", "diode")
        _wait_line(watch, "w2:1_loopscan ended    DONE  2 points")
        watch.send_signal(signal.SIGINT)
        watch.wait(timeout=20)
    finally:
        watch.kill()
        watch.wait(timeout=5)
        assert watch.stdout is not None and watch.stderr is not None
        watch.stdout.close()
        err.close(watch.stderr)
    assert watch.returncode == 130, err.text()
    text = err.text()
    assert "Traceback" not in text, text
    lines = text.splitlines()
    down = [line for line in lines if "does not answer" in line]
    assert len(down) == 1, text  # once, however many commands and walks retried
    assert f"Redis at {url} does not answer" in down[0], text
    assert down[0].endswith("scanstream watch retries until it answers (Ctrl-C to stop)"), text
    assert len([line for line in lines if "answers again after" in line]) == 1, text
    assert not [line for line in lines if "error:" in line], text


def test_ctrl_c_of_a_watch_whose_server_is_gone_ends_it_at_once(
    private_server: EmbeddedServer,
) -> None:
    """Each walker, blocked in a read retried against the server gone, was joined for 5 s:
    a watch of three sessions took 15 s to end on Ctrl-C."""
    watch = _watch(private_server.url, "c1", "c2", "c3")
    try:
        _wait_line(watch, "watching c1, c2, c3")
        private_server.stop()
        time.sleep(2.0)  # every walker is retrying
        started = time.monotonic()
        watch.send_signal(signal.SIGINT)
        _, err = watch.communicate(timeout=30)
        took = time.monotonic() - started
    finally:
        watch.kill()
        watch.communicate(timeout=5)
    assert watch.returncode == 130, err
    assert "Traceback" not in err, err
    assert took < 3.0, f"{took:.1f} s to end"
