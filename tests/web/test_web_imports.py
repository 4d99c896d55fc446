"""The web server's dependencies load only when ``scanstream web`` serves."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["scanstream", "scanstream.cli"])
def test_the_core_and_the_command_line_do_not_load_the_web_server(module: str) -> None:
    code = (
        f"import sys, {module}; "
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('starlette', 'uvicorn')"
        " or m == 'scanstream.web.app'); print(loaded); sys.exit(1 if loaded else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"import {module} loaded {done.stdout.strip()} {done.stderr}"


def test_the_page_and_its_assets_are_package_data() -> None:
    from scanstream.web.app import STATIC

    names = {p.relative_to(STATIC).as_posix() for p in STATIC.rglob("*") if p.is_file()}
    assert {"index.html", "app.js", "style.css"} <= names
    assert {"vendor/uPlot.iife.min.js", "vendor/uPlot.min.css", "vendor/uPlot.LICENSE"} <= names
    # No asset is fetched from elsewhere: the page references only its own files.
    page = (STATIC / "index.html").read_text()
    assert "http://" not in page and "https://" not in page
