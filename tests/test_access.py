"""Access model: who can reach the embedded server, passwords and read-only ACL users, and no
code path that unpickles or evaluates what is read from Redis."""

from __future__ import annotations

import ast
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

import scanstream
from scanstream import (
    DataStore,
    EventType,
    ScanState,
    Settings,
    create_session,
    get_session_node,
)
from scanstream._transport.connection import clear_default_stores
from scanstream._transport.server import EmbeddedServer
from scanstream._transport.shared_server import ensure_server
from scanstream.admin import list_sessions, server_memory

PACKAGE_DIR = Path(scanstream.__file__).parent

# The rules of docs/access.md for a subscriber: read commands only, on scanstream's keys only.
READER_ACL = [
    "on",
    ">reader-pw",
    "resetkeys",
    "%R~scanstream:*",
    "resetchannels",
    "-@all",
    "+@read",
    "+@connection",
    "-@dangerous",
]


def _tcp_listeners(pid: int) -> list[tuple[str, int]]:
    """(address, port) of the TCP sockets in LISTEN state that process ``pid`` holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:  # closed since the listing: not a listener
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    out = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                address, port = local.split(":")
                if len(address) == 8:  # IPv4, little-endian hex
                    text = ".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0))
                else:
                    text = address
                out.append((text, int(port, 16)))
    return out


@pytest.fixture
def password_server(
    server_binary: Path, tmp_path: Path, free_tcp_port: int
) -> Iterator[EmbeddedServer]:
    """A private server on a loopback port with a password (``requirepass``)."""
    server = EmbeddedServer(tmp_path / "pw", port=free_tcp_port, password="pa:ss/word@1")
    server.start(timeout=10)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def clean_default_stores() -> Iterator[None]:
    """Close the process-wide stores that create_session(redis_url=...) opens."""
    clear_default_stores()
    try:
        yield
    finally:
        clear_default_stores()


# ----------------------------------------------------------------------------- embedded server


@pytest.mark.skipif(not Path("/proc/self/net/tcp").exists(), reason="needs Linux /proc")
def test_shared_server_is_private_to_the_user(private_runtime_dir: Path) -> None:
    url = ensure_server()
    directory = private_runtime_dir
    assert url == f"unix://{directory}/redis.sock"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert directory.stat().st_uid == os.getuid()
    assert stat.S_IMODE((directory / "redis.sock").stat().st_mode) & 0o077 == 0
    assert stat.S_IMODE((directory / "redis.conf").stat().st_mode) == 0o600
    with redis.Redis.from_url(url, socket_timeout=2) as client:
        assert client.config_get("port") == {"port": "0"}
        pid = int(client.info("server")["process_id"])
    assert _tcp_listeners(pid) == []  # no TCP listener at all, on any address


@pytest.mark.skipif(not Path("/proc/self/net/tcp").exists(), reason="needs Linux /proc")
def test_tcp_server_listens_on_loopback_only_and_requires_the_password(
    password_server: EmbeddedServer,
) -> None:
    assert _tcp_listeners(password_server.pid) == [("127.0.0.1", password_server.port)]
    plain = f"redis://127.0.0.1:{password_server.port}/0"
    with (
        redis.Redis.from_url(plain, socket_timeout=2) as anonymous,
        pytest.raises(redis.AuthenticationError),
    ):
        anonymous.ping()
    wrong = f"redis://:nope@127.0.0.1:{password_server.port}/0"
    with pytest.raises(redis.AuthenticationError):
        DataStore(wrong)


# ----------------------------------------------------------------------------- no pickle, no eval


_FORBIDDEN_MODULES = {
    "pickle",
    "cPickle",
    "_pickle",
    "marshal",
    "shelve",
    "dill",
    "cloudpickle",
    "jsonpickle",
    "yaml",
}
_FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__"}


def _source_files() -> list[Path]:
    return sorted(PACKAGE_DIR.rglob("*.py"))


def test_nothing_unpickles_or_evaluates_data() -> None:
    problems = []
    for path in _source_files():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            where = f"{path.relative_to(PACKAGE_DIR)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Import):
                problems += [
                    f"{where}: import {a.name}"
                    for a in node.names
                    if a.name.split(".")[0] in _FORBIDDEN_MODULES
                ]
            elif isinstance(node, ast.ImportFrom):
                if (node.module or "").split(".")[0] in _FORBIDDEN_MODULES:
                    problems.append(f"{where}: from {node.module} import ...")
            elif isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Name) and func.id in _FORBIDDEN_CALLS:
                    problems.append(f"{where}: {func.id}(...)")
                problems += [
                    f"{where}: allow_pickle=True"
                    for k in node.keywords
                    if k.arg == "allow_pickle"
                    and not (isinstance(k.value, ast.Constant) and k.value.value is False)
                ]
                if (
                    isinstance(func, ast.Attribute)
                    and func.attr in ("load", "loads")
                    and isinstance(func.value, ast.Name)
                    and func.value.id in ("np", "numpy")
                ):
                    problems.append(f"{where}: numpy.{func.attr} (may unpickle)")
    assert len(_source_files()) > 10
    assert problems == []


# ----------------------------------------------------------------------------- password URLs


def _publish_one(session_name: str, **where: object) -> int:
    session = create_session(session_name, **where)  # type: ignore[arg-type]
    with session.create_scan("ascan", {"npoints": 3}) as scan:
        channel = scan.create_container("timer").create_channel("diode", dtype="int32")
        scan.prepared()
        channel.emit(np.array([1, 2, 3], dtype="int32"))
    return scan.number


def test_password_in_the_url(password_server: EmbeddedServer, clean_default_stores: None) -> None:
    url = f"redis://:pa%3Ass%2Fword%401@127.0.0.1:{password_server.port}/0"
    number = _publish_one("secured", redis_url=url)
    scan = get_session_node("secured", redis_url=url).get_scan(number)
    assert scan.state is ScanState.DONE
    channel = scan.children()[0].children()[0]
    assert channel.get_as_array().tolist() == [1, 2, 3]


def test_password_through_the_environment(
    password_server: EmbeddedServer, clean_default_stores: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCANSTREAM_REDIS_URL", password_server.url)
    number = _publish_one("secured")
    assert get_session_node("secured").get_scan(number).state is ScanState.DONE


# ----------------------------------------------------------------------------- read-only ACL user


@pytest.fixture
def acl_server(password_server: EmbeddedServer) -> Iterator[tuple[str, str]]:
    """(URL of the publisher, URL of a read-only ``reader`` ACL user) on a private server."""
    with redis.Redis.from_url(password_server.url, socket_timeout=2) as admin:
        admin.execute_command("ACL", "SETUSER", "reader", *READER_ACL)
    yield password_server.url, f"redis://reader:reader-pw@127.0.0.1:{password_server.port}/0"


def test_read_only_acl_user_can_subscribe(acl_server: tuple[str, str]) -> None:
    writer_url, reader_url = acl_server
    publisher = DataStore(settings=Settings(redis_url=writer_url))
    reader = DataStore(settings=Settings(redis_url=reader_url))
    try:
        session = create_session("ro", store=publisher)
        with session.create_scan("loopscan", {"npoints": 4}) as done:
            channel = done.create_container("timer").create_channel("diode")
            done.prepared()
            channel.emit(np.arange(4.0))
        running = session.create_scan("timescan")
        live = running.create_container("timer").create_channel("diode")
        running.prepared()
        live.emit([7.0, 8.0])
        running.flush()

        node = get_session_node("ro", store=reader)
        events = list(node.walk_on_new_events(from_next=False, wait=False))
        scans = [(n.db_name, t) for t, n, _ in events if n.type == "scan"]
        assert ("ro:1_loopscan", EventType.NEW_NODE) in scans
        assert ("ro:1_loopscan", EventType.END_SCAN) in scans
        assert ("ro:2_timescan", EventType.NEW_NODE) in scans
        scan = node.get_scan(1)
        assert scan.state is ScanState.DONE and scan.info["npoints"] == 4
        data = [
            d.data
            for t, n, d in scan.walk_events()
            if t == EventType.NEW_DATA and n.name == "diode"
        ]
        assert np.concatenate(data).tolist() == [0.0, 1.0, 2.0, 3.0]
        diode = scan.children()[0].children()[0]
        assert diode.get(1, 2).tolist() == [1.0, 2.0] and len(diode) == 4
        assert node.get_scan(2).children()[0].children()[0].get(0, -1).tolist() == [7.0, 8.0]

        # scanstream ls works too, without the server memory totals (INFO is @dangerous).
        listing = list_sessions(reader)
        assert [(s.number, s.points, s.memory > 0) for s in listing[0].scans] == [
            (1, 4, True),
            (2, 2, True),
        ]
        assert server_memory(reader)["used_memory"] is None

        # Publishing is refused by the server, with the command named.
        with pytest.raises(redis.exceptions.NoPermissionError, match="(?i)permission"):
            create_session("ro", store=reader).create_scan("refused")
        with pytest.raises(redis.exceptions.NoPermissionError):
            create_session("other", store=reader)
        with reader.redis.pipeline() as pipe, pytest.raises(redis.exceptions.NoPermissionError):
            pipe.delete(reader.keys.scan("ro", 1)).execute()
        # Only scanstream's keys are readable.
        with pytest.raises(redis.exceptions.NoPermissionError):
            reader.redis.get("someone-elses-key")
        running.end()
        assert node.get_scan(2).state is ScanState.DONE
    finally:
        publisher.close()
        reader.close()
