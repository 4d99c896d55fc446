"""Shared fixtures (STYLE.md 7.8): one real Redis server per session, flushed before each test.

- ``redis_server_url`` (session): ``--redis-url`` if given, else a private ``EmbeddedServer``
  on a free 127.0.0.1 port, stopped at the end. Skipped without a server binary, except on CI.
- ``redis_url`` (function): the same URL, after FLUSHALL. Tests that need Redis request this.
- ``server_binary`` (session), ``free_tcp_port``: for tests that start servers themselves;
  ``redis70_binary`` (Debian's Redis 7.0) and ``any_server_binary`` (both, parametrized) for
  tests that must pass on every server. Skipped without the binary, except on CI.
- ``private_runtime_dir`` (function): the user's shared embedded server redirected to a tmp dir
  (its runtime directory, and its data directory through ``XDG_STATE_HOME``), stopped at the
  end, so tests never touch the real one or its persisted data.
- ``persistent_server`` (function): a private server on a free port that persists to a data
  directory (as the shared one does), for tests that stop, kill and restart it.
- ``private_server`` (function): the same without persistence (a restart empties it), for
  tests that kill, freeze or reset it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pytest
import redis

from scanstream._transport.connection import clear_default_stores
from scanstream._transport.server import EmbeddedServer, find_server_binary
from scanstream._transport.shared_server import runtime_dir, stop_server
from scanstream.exceptions import ServerError

if TYPE_CHECKING:
    from scanstream import DataStore, PublishingSession


def pytest_configure(config: pytest.Config) -> None:
    # Most tests publish with no writer following the session: the NoWriterWarning it gives
    # is what a user must see, not an error for them (tests of it use pytest.warns).
    config.addinivalue_line("filterwarnings", "ignore::scanstream.exceptions.NoWriterWarning")


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """Workers of ``-n auto`` (pyproject.toml's addopts): one more than the cores.

    Most tests wait on processes (servers started, killed and frozen, writers, command lines)
    more than they compute, so on 2 cores 3 workers take the suite from about 15 minutes to
    about 7. Against one server given with ``--redis-url`` (FLUSHALLed before each test) the
    tests run one after another.
    """
    if config.getoption("--redis-url"):
        return 0
    return min(8, (os.cpu_count() or 1) + 1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The slow system tests (a kill loop of more than two minutes, the soak runs) first: the
    # workers take them at once and share out the short tests meanwhile, instead of one
    # worker finishing alone with the longest test. A stable sort: every worker collects
    # the same order, as pytest-xdist requires.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--redis-url",
        default=None,
        metavar="URL",
        help="run the tests against this Redis server (it is FLUSHALLed before each "
        "test) instead of a private one started on a free port",
    )


def _free_port() -> int:
    """Return a TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _skip_or_fail_on_ci(reason: str) -> NoReturn:
    """Skip the test locally; fail it on CI (``$CI`` set), where nothing may go untested."""
    if os.environ.get("CI"):
        pytest.fail(f"CI must provide this: {reason}")
    pytest.skip(reason)


def _require_server_binary() -> Path:
    """Skip the test without a server binary; fail instead on CI, where one must be installed."""
    try:
        return find_server_binary()
    except ServerError as exc:
        _skip_or_fail_on_ci(f"no Redis server binary: {exc}")


@pytest.fixture(scope="session")
def server_binary() -> Path:
    """Path of the Redis server binary (skips the test without one, fails on CI)."""
    return _require_server_binary()


#: Debian bookworm's ``redis-server`` (7.0), the server STYLE.md targets; it refuses things the
#: bundled Valkey accepts (MULTI/EXEC past maxmemory). ``$SCANSTREAM_TEST_REDIS70`` overrides.
REDIS70_BINARY = os.environ.get("SCANSTREAM_TEST_REDIS70", "/usr/bin/redis-server")


@pytest.fixture(scope="session")
def redis70_binary() -> Path:
    """Path of a Redis 7.0 server (``apt-get install redis-server`` on Debian bookworm).

    Skips the test without one, fails it on CI.
    """
    path = shutil.which(REDIS70_BINARY)
    if path is None:
        _skip_or_fail_on_ci(
            f"no Redis 7.0 server at {REDIS70_BINARY} (apt-get install "
            "redis-server on Debian bookworm, or set SCANSTREAM_TEST_REDIS70)"
        )
    out = subprocess.run(
        [path, "--version"], capture_output=True, text=True, timeout=10, check=False
    ).stdout
    if " v=7.0." not in out:
        _skip_or_fail_on_ci(f"{path} is not Redis 7.0: {out.strip()!r}")
    return Path(path)


@pytest.fixture(params=["bundled", "redis-7.0"])
def any_server_binary(request: pytest.FixtureRequest) -> Path:
    """Each server binary a test must pass on: the bundled one (Valkey), then Redis 7.0."""
    name = "server_binary" if request.param == "bundled" else "redis70_binary"
    binary: Path = request.getfixturevalue(name)
    return binary


@pytest.fixture
def free_tcp_port() -> int:
    """A port of 127.0.0.1 that was free a moment ago (never 6379, which a local Redis uses)."""
    return _free_port()


@pytest.fixture(scope="session")
def redis_server_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """URL of the session's Redis server: ``--redis-url``, else a private embedded server."""
    url = request.config.getoption("--redis-url")
    if url:
        yield url
        return
    request.getfixturevalue("server_binary")
    server = EmbeddedServer(tmp_path_factory.mktemp("redis"), port=_free_port())
    try:
        try:
            server.start(timeout=10)
        except ServerError:
            # Another process may have taken the free port in between: one retry on a new one.
            server = EmbeddedServer(server.directory, port=_free_port())
            server.start(timeout=10)
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server_url: str) -> str:
    """URL of the session's Redis server, emptied (FLUSHALL) before the test, not after.

    Flushing before means a test that crashed cannot leak keys into the next one. The shared
    stores of :func:`~scanstream._transport.connection.default_store` are forgotten too.
    """
    client = redis.Redis.from_url(redis_server_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.flushall()
    finally:
        client.close()
    # A flush is a reset of the server: the process-wide stores an earlier test left (through
    # default_store) remember the identity of the flushed database and would rightly refuse it.
    clear_default_stores()
    return redis_server_url


@pytest.fixture
def private_runtime_dir(
    server_binary: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """Point ``XDG_RUNTIME_DIR`` at a tmp dir and yield the runtime dir of the shared server.

    The environment variables choosing a server or binary are removed, and the shared server,
    if a test started one, is stopped at the end.
    """
    xdg = tmp_path_factory.mktemp("xdg")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))
    for name in (
        "SCANSTREAM_REDIS_URL",
        "SCANSTREAM_REDIS_SERVER",
        "SCANSTREAM_SERVER_DATA_DIR",
        "SCANSTREAM_SERVER_PERSISTENCE",
    ):
        monkeypatch.delenv(name, raising=False)
    directory = runtime_dir()
    if directory.parent != xdg:  # a too long tmp path falls back to /tmp: never touch that one
        pytest.skip(f"tmp path too long for a unix socket: {xdg}")
    try:
        yield directory
    finally:
        stop_server()


@contextlib.contextmanager
def _started(server: EmbeddedServer) -> Iterator[EmbeddedServer]:
    """Start ``server``; at the end resume it (a frozen one ignores SIGTERM) and stop it."""
    server.start(timeout=10)
    try:
        yield server
    finally:
        pid = server.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        server.stop()


@pytest.fixture
def private_server(
    server_binary: Path, tmp_path: Path, free_tcp_port: int
) -> Iterator[EmbeddedServer]:
    """A private server on a free port, without persistence (a restart empties it).

    The test may kill, freeze (SIGSTOP) and ``start()`` it again; it is resumed and stopped at
    the end.
    """
    with _started(EmbeddedServer(tmp_path / "redis", port=free_tcp_port)) as server:
        yield server


@pytest.fixture
def persistent_server(
    server_binary: Path, tmp_path: Path, free_tcp_port: int
) -> Iterator[EmbeddedServer]:
    """A private server on a free port persisting to ``tmp_path/data`` (AOF, everysec).

    The test may stop, kill (SIGKILL, SIGSTOP) and ``start()`` it again on the same port and
    data; it is resumed and stopped at the end.
    """
    data = tmp_path / "data"
    with _started(EmbeddedServer(tmp_path / "redis", port=free_tcp_port, data_dir=data)) as server:
        yield server


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """``scanstream.cli.main()`` configures the 'scanstream' logger: undo it after each test."""
    logger = logging.getLogger("scanstream")
    level, handlers = logger.level, list(logger.handlers)
    try:
        yield
    finally:
        logger.setLevel(level)
        logger.handlers[:] = handlers


# ---------------------------------------------------------------- core library fixtures


@pytest.fixture
def store(redis_url: str) -> Iterator[DataStore]:
    """A connection to the flushed test server, with a short lease (2 s), closed at the end."""
    from scanstream import DataStore, Settings

    data_store = DataStore(settings=Settings(redis_url=redis_url, lease_time=2.0))
    try:
        yield data_store
    finally:
        data_store.close()


@pytest.fixture
def session(store: DataStore) -> Iterator[PublishingSession]:
    """The publishing session ``test_session``; scans a test left running end FAILED."""
    from scanstream import create_session

    publishing = create_session("test_session", store=store)
    try:
        yield publishing
    finally:
        publishing.close()


@pytest.fixture
def seed_env(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """``SCANSTREAM_REDIS_URL`` set to the test server, for code that takes no URL argument."""
    monkeypatch.setenv("SCANSTREAM_REDIS_URL", redis_url)
    clear_default_stores()
    try:
        yield redis_url
    finally:
        clear_default_stores()
