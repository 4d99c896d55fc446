"""The user's shared embedded server, and the choice of the server to use.

When no server URL is given (argument, ``--redis-url`` or ``SCANSTREAM_REDIS_URL``), scanstream
starts one embedded server per user, reachable only through a unix socket in a private (0700)
runtime directory, and shares it between that user's processes (DESIGN.md section 3).

It persists what it accepts (docs/server.md): an append-only file (AOF, ``appendfsync
everysec``) in a private (0700) data directory that survives a reboot,
``$SCANSTREAM_SERVER_DATA_DIR``, else ``$XDG_STATE_HOME/scanstream/server``, else
``~/.local/state/scanstream/server`` (the runtime directory holding its socket and pidfile is
often a tmpfs, emptied at reboot). A stop/start, a crash or a reboot loses no scan it had
accepted; a power cut loses at most the last second. ``$SCANSTREAM_SERVER_PERSISTENCE``:
``everysec`` (default), ``always`` (fsync every write) or ``off`` (nothing on disk). Its memory
limit is :func:`~.server.default_maxmemory`'s.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

from ..exceptions import InvalidArgumentError, ServerError
from .server import (
    DEFAULT_PERSISTENCE,
    MAX_SOCKET_PATH,
    SOCKET_NAME,
    EmbeddedServer,
    default_maxmemory,
)

ENV_URL = "SCANSTREAM_REDIS_URL"
ENV_DATA_DIR = "SCANSTREAM_SERVER_DATA_DIR"
ENV_PERSISTENCE = "SCANSTREAM_SERVER_PERSISTENCE"
#: Values of $SCANSTREAM_SERVER_PERSISTENCE: Redis ``appendfsync`` policies, or off.
PERSISTENCE_MODES = ("everysec", "always", "off")
_LOCKFILE = "server.lock"
# Servers started detached by this process, keyed by directory: holding the Popen object lets a
# later stop_server() in the same process reap the child (no zombie) and keeps Popen.__del__
# from warning "subprocess is still running" while the server is meant to outlive us.
_DETACHED: dict[Path, EmbeddedServer] = {}


def _private_dir(path: Path) -> Path:
    """Create a 0700 directory, or check that an existing one is ours and private."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
        os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask
    info = os.lstat(path)  # lstat: a symlink planted in /tmp by another user must not be followed
    if not stat.S_ISDIR(info.st_mode):
        raise ServerError(f"{path} exists and is not a directory")
    if info.st_uid != os.getuid():
        raise ServerError(
            f"{path} is owned by uid {info.st_uid}, not by you (uid {os.getuid()}): "
            "refusing to use it, remove it or set XDG_RUNTIME_DIR"
        )
    if info.st_mode & 0o077:
        # The socket's directory is the only protection of a password-less server.
        raise ServerError(
            f"{path} is accessible by group or others (mode "
            f"{stat.S_IMODE(info.st_mode):o}): refusing; run `chmod 700 {path}`"
        )
    return path


def runtime_dir() -> Path:
    """Return the user's private runtime directory, creating it with mode 0700.

    ``$XDG_RUNTIME_DIR/scanstream`` when that variable names a writable directory and the socket
    path stays short enough, else ``/tmp/scanstream-<uid>``.

    Raises
    ------
    ServerError
        If the directory exists but is not a directory, is owned by another user, or is
        accessible by group or others.
    """
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg) and os.access(xdg, os.W_OK | os.X_OK):
        candidate = Path(xdg).absolute() / "scanstream"
        if len(str(candidate / SOCKET_NAME)) < MAX_SOCKET_PATH:
            return _private_dir(candidate)
    return _private_dir(Path(f"/tmp/scanstream-{os.getuid()}"))


@contextlib.contextmanager
def _locked(directory: Path, timeout: float) -> Iterator[None]:
    """Hold an exclusive flock on the directory's lock file (released by the kernel if we die)."""
    # Python opens files non-inheritable, so the server we spawn does not keep the lock.
    with open(directory / _LOCKFILE, "a") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ServerError(
                        f"timeout waiting for {lock.name} held by another process"
                    ) from None
                time.sleep(0.02)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def persistence_mode() -> str:
    """The shared server's persistence: ``$SCANSTREAM_SERVER_PERSISTENCE``, default everysec.

    Raises
    ------
    InvalidArgumentError
        If the variable is set to something else than everysec, always or off.
    """
    mode = os.environ.get(ENV_PERSISTENCE, "").strip().lower() or DEFAULT_PERSISTENCE
    if mode not in PERSISTENCE_MODES:
        raise InvalidArgumentError(
            f"{ENV_PERSISTENCE}={os.environ.get(ENV_PERSISTENCE)!r} is not one of "
            f"{', '.join(PERSISTENCE_MODES)}"
        )
    return mode


def data_dir() -> Path:
    """The shared server's data directory (not created here).

    ``$SCANSTREAM_SERVER_DATA_DIR``, else ``$XDG_STATE_HOME/scanstream/server``, else
    ``~/.local/state/scanstream/server``: on a disk that survives a reboot, unlike the runtime
    directory.
    """
    explicit = os.environ.get(ENV_DATA_DIR, "").strip()
    if explicit:
        return Path(explicit).expanduser().absolute()
    state = os.environ.get("XDG_STATE_HOME", "").strip()
    base = Path(state) if state and os.path.isabs(state) else Path.home() / ".local" / "state"
    return base / "scanstream" / "server"


def _shared_server(
    directory: Path, maxmemory: int | None = None, *, starting: bool = False
) -> EmbeddedServer:
    """Return the EmbeddedServer object for the shared server in ``directory``.

    Its persistence settings are read only when ``starting`` it: stopping or describing a
    running server never depends on them (the server reports its own).
    """
    known = _DETACHED.get(directory)
    if known is not None:
        return known
    mode = persistence_mode() if starting else "off"
    return EmbeddedServer(
        directory,
        maxmemory=None if maxmemory is None else str(maxmemory),
        data_dir=None if mode == "off" else data_dir(),
        appendfsync=DEFAULT_PERSISTENCE if mode == "off" else mode,
    )


def ensure_server(timeout: float = 10.0) -> str:
    """Return the URL of the user's shared embedded server, starting it if it is not running.

    Processes of the same user share one server, found through the pidfile and socket in
    :func:`runtime_dir`; a lock file makes concurrent callers start only one. The server
    outlives the process that started it; stop it with :func:`stop_server`. ``timeout`` bounds
    the wait for the lock, then the wait for the server to answer. Returns a ``unix://`` URL.

    A server it starts gets the memory limit of :func:`default_maxmemory` and the persistence
    of :func:`persistence_mode` in :func:`data_dir` (read when it starts: a running server
    keeps them until it is stopped and started again). It reads back the data it persisted.

    Raises
    ------
    ServerError
        If the runtime directory is unsafe, no binary is found, or the server does not start.
    InvalidArgumentError
        If ``$SCANSTREAM_MAXMEMORY`` or ``$SCANSTREAM_SERVER_PERSISTENCE`` is not valid.
    """
    maxmemory = default_maxmemory()
    directory = runtime_dir()
    with _locked(directory, timeout):
        server = _shared_server(directory, maxmemory, starting=True)
        if not server.is_running():
            server.stop()  # only cleans the stale pidfile and socket of a dead server
            server.start(timeout)
            _DETACHED[directory] = server
        return server.url


def stop_server(timeout: float = 5.0) -> bool:
    """Stop the user's shared embedded server (SIGKILL if still alive ``timeout`` s after SIGTERM).

    Returns
    -------
    bool
        True if a running server was stopped, False if none was running.

    Raises
    ------
    ServerError
        If the runtime directory is unsafe or its lock is held for more than ``timeout``.
    """
    directory = runtime_dir()
    with _locked(directory, timeout):
        stopped = _shared_server(directory).stop(timeout)
        _DETACHED.pop(directory, None)
        return stopped


def server_status() -> dict[str, Any]:
    """Describe the user's shared embedded server without starting it.

    Returns
    -------
    dict
        ``running`` (bool), ``pid``, ``url``, ``version``, ``used_memory_human``,
        ``maxmemory_human`` (``0B``: no limit), ``maxmemory_policy``, ``uptime`` (seconds),
        ``directory``, ``persistence`` (``aof everysec``, ``aof always`` or ``off``),
        ``data_directory`` and ``clients`` (connected, not counting this call); the server
        fields are None when it does not run.
    """
    server = _shared_server(runtime_dir())
    status: dict[str, Any] = {
        "running": False,
        "pid": None,
        "url": server.url,
        "version": None,
        "used_memory_human": None,
        "maxmemory_human": None,
        "maxmemory_policy": None,
        "uptime": None,
        "directory": str(server.directory),
        # Not running: what a start would use; running: what the server reports (below).
        "persistence": _next_persistence(),
        "data_directory": str(data_dir()),
        "clients": None,
    }
    if server.is_running():
        client = redis.Redis.from_url(server.url, socket_timeout=2, socket_connect_timeout=2)
        with contextlib.closing(client):
            info = client.info()
            reply: dict[Any, Any] = client.config_get("appendonly", "appendfsync", "dir")
        config = {_text(k): _text(v) for k, v in reply.items()}  # bytes: no decode_responses
        if config.get("appendonly") == "yes":
            status.update(
                persistence=f"aof {config.get('appendfsync')}",
                data_directory=config.get("dir"),
            )
        else:
            status.update(persistence="off", data_directory=None)
        status.update(
            running=True,
            pid=server.pid,
            uptime=info.get("uptime_in_seconds"),
            used_memory_human=info.get("used_memory_human"),
            clients=max(0, int(info.get("connected_clients", 1)) - 1),  # without this one
            maxmemory_human=info.get("maxmemory_human"),
            maxmemory_policy=info.get("maxmemory_policy"),
            version=info.get("valkey_version") or info.get("redis_version"),
        )
    return status


def _next_persistence() -> str:
    """The persistence a start of the shared server would use, in words."""
    try:
        mode = persistence_mode()
    except InvalidArgumentError as exc:
        return f"invalid ({exc})"
    return "off" if mode == "off" else f"aof {mode}"


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def resolve_url(url: str | None = None) -> str:
    """Choose the Redis server: ``url`` > ``$SCANSTREAM_REDIS_URL`` > the shared embedded server.

    Parameters
    ----------
    url : str or None
        An explicit ``redis://``, ``rediss://``, ``unix://`` or ``redis+cluster://`` URL;
        empty means none.

    Raises
    ------
    ServerError
        If the embedded server is needed and cannot be started.
    """
    return url or os.environ.get(ENV_URL) or ensure_server()
