"""Who may read the view: loopback only by default, a token on every request otherwise."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from .conftest import run_web

pytestmark = pytest.mark.timeout(60)


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, dict[str, str]]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode(), dict(exc.headers)


def test_listening_beyond_this_machine_without_a_token_is_refused(redis_url: str) -> None:
    done = run_web(redis_url, "--host", "0.0.0.0", "--port", "0")
    assert done.returncode == 2
    assert "refusing to listen on '0.0.0.0' without a token" in done.stderr
    assert "--token" in done.stderr and done.stdout == ""


def test_a_port_or_a_session_name_that_is_not_one_is_a_usage_error(redis_url: str) -> None:
    done = run_web(redis_url, "--port", "70000")
    assert done.returncode == 2 and "argument --port: 70000 is not a TCP port" in done.stderr
    done = run_web(redis_url, "bad/name")
    assert done.returncode == 2 and "invalid session name 'bad/name'" in done.stderr


def test_with_a_token_every_request_and_stream_needs_it(
    redis_url: str, start_web: Any, new_page: Any
) -> None:
    web = start_web("--token", "s3cret")
    assert web.url.endswith("/?token=s3cret")
    base = web.url.split("?", 1)[0]
    for path in ("", "static/app.js", "api/scans", "api/scan/any/1/live"):
        status, body, _ = _get(base + path)
        assert status == 401, path
        assert "a token is needed" in body
        assert _get(base + path, {"Authorization": "Bearer wrong"})[0] == 401
    status, body, _ = _get(base + "api/scans", {"Authorization": "Bearer s3cret"})
    assert status == 200 and json.loads(body)["scans"] == []
    status, _, headers = _get(base + "?token=s3cret")
    assert status == 200 and "scanstream_token=s3cret" in headers.get("set-cookie", "")
    # A browser opens the printed link once; its later requests carry the cookie.
    page = new_page()
    page.goto(web.url)
    page.locator("#summary").filter(has_text="0 of 0 scans").wait_for()
    assert page.evaluate("fetch('api/scans').then(r => r.status)") == 200


def test_a_token_on_a_public_address_is_accepted(redis_url: str, start_web: Any) -> None:
    web = start_web("--host", "0.0.0.0", "--token", "t0ken")
    port = web.url.split(":")[2].split("/")[0]
    assert _get(f"http://127.0.0.1:{port}/api/scans")[0] == 401
    assert _get(f"http://127.0.0.1:{port}/api/scans?token=t0ken")[0] == 200


def test_a_loopback_view_refuses_requests_naming_another_host(start_web: Any) -> None:
    # What a page of another site, resolved to 127.0.0.1 by its DNS, would send.
    web = start_web()
    assert _get(web.url + "api/scans")[0] == 200
    status, body, _ = _get(web.url + "api/scans", {"Host": "attacker.example:8000"})
    assert status == 400 and "Invalid host header" in body
    localhost = web.url.replace("127.0.0.1", "localhost")
    assert _get(localhost + "api/scans")[0] == 200
