"""A server restarted empty mid-scan: the writer reports the scan it could not save as failed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scanstream import DataStore, ServerResetError, Settings, create_session
from scanstream._transport.server import EmbeddedServer
from scanstream.writer import saved_scans, writer_status

from .conftest import owning_writer, wait_for


@pytest.fixture
def server(private_server: EmbeddedServer) -> EmbeddedServer:
    """A private server without persistence (a restart empties it)."""
    return private_server


def _status(url: str) -> dict[str, Any]:
    """What ``scanstream writer --status`` reads: the status the writer stored in Redis."""
    with DataStore(settings=Settings(redis_url=url)) as fresh:
        return writer_status("test_session", store=fresh) or {}


@pytest.mark.parametrize("isolate", [False, True])
def test_a_scan_lost_by_a_server_reset_is_counted_failed(
    server: EmbeddedServer, tmp_path: Path, isolate: bool
) -> None:
    settings = {"redis_url": server.url, "lease_time": 2.0}
    with (
        DataStore(settings=Settings(**settings)) as writer_store,
        DataStore(settings=Settings(**settings)) as publisher_store,
        owning_writer(
            writer_store, tmp_path / "data", flush_period=0.05, allow=[tmp_path], isolate=isolate
        ) as service,
    ):
        scan = create_session("test_session", store=publisher_store).create_scan("s", {})
        channel = scan.create_container("timer").create_channel("x")
        scan.prepared()
        channel.emit(np.arange(5.0))
        scan.flush()
        wait_for(
            lambda: service.status("test_session")["running"], 10, "the writer to take the scan"
        )
        time.sleep(0.3)  # the scan writer is walking it
        assert server.pid is not None
        os.kill(server.pid, signal.SIGKILL)
        server.stop()  # reaps it
        server.start(timeout=10)  # the same port, nothing on disk: an empty database

        wait_for(
            lambda: (
                service.status("test_session")["failed"]
                and not service.status("test_session")["running"]
            ),
            20,
            "the writer to count the lost scan",
        )
        _check_errors(service.status("test_session"))
        # What `scanstream writer --status` shows is the status the writer stores. A writer
        # whose store had read the server's identity refuses the reset server (ServerResetError
        # at every command, logged each time) until it is restarted; one that had not stores
        # its status again, which must count the scan.
        try:
            writer_store.check_server_identity()
        except ServerResetError:
            return
        wait_for(lambda: _status(server.url).get("failed"), 10, "the stored status")
        _check_errors(_status(server.url))


def _check_errors(status: dict[str, Any]) -> None:
    assert status["failed"] == 1 and status["saved"] == 0, status
    (error,) = status["errors"]
    assert error["scan"] == "1_s" and error["number"] == 1
    assert "its data was gone from Redis before it was saved" in error["error"]


@pytest.mark.parametrize("pool", [False, True])
def test_a_fence_over_a_reset_server_stops_instead_of_raising(
    server: EmbeddedServer, pool: bool
) -> None:
    """Found by soak.chaos: a worker's fence (its claim check, asked by the read-ahead thread
    too) let the ServerResetError of a server restarted empty escape ("Exception in thread
    scanstream-read-...", a traceback in the writer's log) instead of stopping the scan."""
    from scanstream.writer.registry import WriterRegistry
    from scanstream.writer.scan_claims import ClaimFence, ScanClaims
    from scanstream.writer.worker import _Fence

    with DataStore(settings=Settings(redis_url=server.url)) as store:
        create_session("test_session", store=store).close()  # the server's identity, seen
        checker: WriterRegistry | ClaimFence = WriterRegistry(store, "me")
        if pool:
            checker = ClaimFence(ScanClaims(store, "me"), 1)
        fence = _Fence(checker, "test_session", "token", threading.Event())
        assert fence.stopped  # nobody holds the session: stopped, the plain way
        fence = _Fence(checker, "test_session", "token", threading.Event())
        assert server.pid is not None
        os.kill(server.pid, signal.SIGKILL)
        server.stop()  # reaps it
        server.start(timeout=10)  # an empty database: the store refuses it from now on
        with pytest.raises(ServerResetError):
            store.redis.ping()
        assert fence.stopped  # not a ServerResetError


@pytest.mark.timeout(120)
@pytest.mark.parametrize("pool", [False, True])
def test_the_writer_command_follows_a_server_restarted_empty(
    server: EmbeddedServer, tmp_path: Path, pool: bool
) -> None:
    """``scanstream writer``: the scans published after the reset are saved, no restart needed.

    A store refuses a reset server for good, so a writer left as it was would save nothing
    more (each member of a pool logging some 20 errors a second).
    """
    root = tmp_path / "data"
    command = [sys.executable, "-m", "scanstream", "--redis-url", server.url, "writer"]
    command += ["test_session", "--root", str(root), *(["--pool"] if pool else [])]
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    output = ""
    try:
        with DataStore(settings=Settings(redis_url=server.url)) as before:
            wait_for(lambda: writer_status("test_session", store=before), 20, "the writer")
            _publish_one(before)
            wait_for(lambda: 1 in saved_scans("test_session", store=before), 20, "scan 1 saved")
        time.sleep(1.5)  # the writer reads the server's identity once a second: it knows it now
        assert server.pid is not None
        os.kill(server.pid, signal.SIGKILL)
        server.stop()
        server.start(timeout=10)  # the same port, nothing on disk: an empty database
        with DataStore(settings=Settings(redis_url=server.url)) as after:
            wait_for(lambda: writer_status("test_session", store=after), 30, "the writer again")
            number = _publish_one(after)  # 1 again, or above (once the new service follows)
            wait_for(
                lambda: number in saved_scans("test_session", store=after), 30, "the new scan saved"
            )
        assert proc.poll() is None, "the writer exited"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            output = proc.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            output = proc.communicate(timeout=10)[0]
        print(output)
    assert proc.returncode == 0, output
    assert "starting again on the server's new database" in output
    assert "Traceback" not in output


def _publish_one(store: DataStore) -> int:
    """One short scan of ``test_session`` published through ``store``; its number."""
    session = create_session("test_session", store=store)
    try:
        with session.create_scan("s", {}) as scan:
            channel = scan.create_container("timer").create_channel("x")
            scan.prepared()
            channel.emit(np.arange(5.0))
        return scan.number
    finally:
        session.close()
