"""A server restarted empty mid-scan: the writer reports the scan it could not save as failed."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scanstream import DataStore, ServerResetError, Settings, create_session
from scanstream._transport.server import EmbeddedServer
from scanstream.writer import writer_status

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
