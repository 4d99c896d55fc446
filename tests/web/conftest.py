"""Fixtures of the browser tests: a real headless Chromium and ``scanstream web`` as a subprocess.

Chromium is Debian's package (``apt-get install chromium``; ``.ci/run`` installs it), driven by
Playwright's Python package with ``executable_path``: nothing is downloaded. Where neither is
there, the tests skip (and fail on CI, which installs both).
"""

from __future__ import annotations

import os
import pathlib
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

CHROMIUM = os.environ.get("SCANSTREAM_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
SRC = pathlib.Path(__file__).resolve().parents[2] / "src"


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI installs it: .ci/run)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """A headless Chromium for the whole test session."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _skip_or_fail("the playwright package is not installed (pip install -e '.[test]')")
    if not os.path.exists(CHROMIUM):
        _skip_or_fail(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def new_page(browser: Any, tmp_path: pathlib.Path) -> Iterator[Callable[[], Any]]:
    """Make pages (each in its own browser context); no page may raise a script error."""
    contexts: list[Any] = []
    errors: list[str] = []

    def make() -> Any:
        context = browser.new_context(viewport={"width": 1280, "height": 1000})
        context.set_default_timeout(15_000)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        return page

    try:
        yield make
    finally:
        for context in contexts:
            context.close()
    assert errors == [], f"script errors in the page: {errors}"


@pytest.fixture
def screenshots(tmp_path: pathlib.Path) -> Callable[[Any, str], pathlib.Path]:
    """``shot(page, name)`` saves a full-page screenshot under the test's tmp dir."""
    folder = tmp_path / "screenshots"
    folder.mkdir()

    def shot(page: Any, name: str) -> pathlib.Path:
        path = folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return shot


@dataclass
class WebServer:
    """A running ``scanstream web``: its URL (with the token, if any) and its process."""

    url: str
    process: subprocess.Popen[str]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), *filter(None, [env.get("PYTHONPATH")])])
    return env


def run_web(redis_url: str, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """Run ``scanstream web`` to its end (for the refusals)."""
    return subprocess.run(
        [sys.executable, "-m", "scanstream", "--redis-url", redis_url, "web", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
    )


@pytest.fixture
def start_web(redis_url: str) -> Iterator[Callable[..., WebServer]]:
    """``start_web(*args, url=...)`` starts ``scanstream web --port 0 *args``; all stopped at the end."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str, url: str = redis_url) -> WebServer:
        process = subprocess.Popen(
            [sys.executable, "-m", "scanstream", "--redis-url", url, "web", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        started.append(process)
        assert process.stdout is not None
        deadline = time.monotonic() + 20
        line = ""
        while time.monotonic() < deadline and not line:
            ready, _, _ = select.select([process.stdout], [], [], 0.2)
            if ready:
                line = process.stdout.readline()
            elif process.poll() is not None:
                break
        if not line.startswith("scanstream web: http://"):
            process.kill()
            _, err = process.communicate(timeout=5)
            raise AssertionError(f"scanstream web did not start: {line!r} {err}")
        return WebServer(line.split()[2], process)

    try:
        yield start
    finally:
        for process in started:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    stream.close()
