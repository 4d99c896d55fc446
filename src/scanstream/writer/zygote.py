"""Worker processes forked from a preloaded process, so that a worker starts without imports.

Starting ``python -m scanstream.writer.worker`` costs its imports (h5py, hdf5plugin, numpy,
redis, scanstream: about 0.3 s of CPU on an idle core, more on a busy host) for every worker
a service starts. A :class:`Zygote` is a process (:func:`main` of this module, one per
:class:`~scanstream.writer.isolation.WorkerProcesses`) that imports :data:`PRELOAD` once and
then forks each worker on request: a worker costs a fork.

Forking is safe there: the zygote is a fresh interpreter (not a fork of the multi-threaded
service), single-threaded (its BLAS is told to use one thread, and it starts none itself) and
holds no HDF5 file. The standard library's ``forkserver`` does the same, but runs the parent's
``__main__`` module again in every child: a service embedded in a script would run it per scan.

A forked worker is what ``python -m scanstream.writer.worker`` is: its stdin and stdout are
pipes to the service (JSON lines, :mod:`scanstream.writer.worker`), its stderr the service's
stderr; it takes the service's environment (``SCANSTREAM_WRITER_LOG_FILE``/``_LEVEL`` among
it), umask and working directory at the time it is forked; SIGTERM stops it the same way. The
zygote reaps it and passes its exit status to the service on a pipe of its own:
:attr:`ForkedWorker.returncode` is ``-N`` for a worker killed by signal N, as with
:class:`subprocess.Popen`. The zygote ignores SIGINT and SIGTERM (a ``systemctl stop``
signals every process of the service: the workers stop, the zygote still reports how) and
ends when the service closes its socket, or exits.

Protocol (a ``SOCK_SEQPACKET`` socket pair): the service sends one JSON message (``env``,
``umask``, ``cwd``) with four descriptors (the worker's stdin, stdout and stderr, and the write
end of its status pipe); the zygote forks and answers ``{"pid": N}``.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import traceback
import weakref
from pathlib import Path
from typing import Any

from ..exceptions import WriterError

__all__ = ["PRELOAD", "UNKNOWN_EXIT", "WORKER_MODULE", "ForkedWorker", "Zygote", "main"]

logger = logging.getLogger(__name__)

#: The module a forked worker runs (its ``main()``), as ``python -m`` would: named, not
#: imported here (it imports isolation.py, which starts zygotes).
WORKER_MODULE = "scanstream.writer.worker"
#: Imported once by the zygote, so that its workers start with them imported.
PRELOAD = ("hdf5plugin", WORKER_MODULE)
#: The exit code given when the zygote died before it reported a worker's (never a signal's).
UNKNOWN_EXIT = 255
#: Seconds the service waits for the zygote's answer (the first includes its imports).
START_TIMEOUT = 60.0
_STATUS = struct.Struct("i")
_ZYGOTE_MAIN = "import sys; from scanstream.writer.zygote import main; sys.exit(main())"
#: One thread for the BLAS libraries numpy may load, so that the zygote is single-threaded.
_ONE_THREAD = {name: "1" for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}


class ForkedWorker:
    """One worker forked by a :class:`Zygote`: the part of :class:`subprocess.Popen` the service uses.

    ``stdin`` and ``stdout`` are text pipes to the worker, ``pid`` its process id;
    :meth:`poll`, :meth:`wait`, :meth:`terminate` and :meth:`kill` are those of Popen.
    """

    def __init__(self, pid: int, stdin: int, stdout: int, status: int) -> None:
        self.pid = pid
        self.stdin = open(stdin, "w", encoding="utf-8")  # closed by the service
        self.stdout = open(stdout, encoding="utf-8")
        # The status pipe stays open as long as this object (closed by the finalizer), so that
        # a thread waiting on it never selects a descriptor number reused by another file.
        self._status = status
        weakref.finalize(self, os.close, status)
        self._code: int | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<ForkedWorker pid={self.pid} returncode={self._code}>"

    @property
    def returncode(self) -> int | None:
        """The exit code (``-N``: killed by signal N), None while it runs."""
        return self.poll()

    def poll(self) -> int | None:
        """The exit code if the worker has ended, else None (does not wait)."""
        with self._lock:
            if self._code is None and select.select([self._status], [], [], 0)[0]:
                data = os.read(self._status, _STATUS.size)
                if len(data) == _STATUS.size:
                    self._code = _STATUS.unpack(data)[0]
                else:
                    logger.warning("worker %s: exit code unknown (its zygote died)", self.pid)
                    self._code = UNKNOWN_EXIT
            return self._code

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the worker's end; return its exit code.

        Raises
        ------
        subprocess.TimeoutExpired
            It still runs after ``timeout`` seconds.
        """
        if self.poll() is None:
            select.select([self._status], [], [], timeout)
        code = self.poll()
        if code is None:
            raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0.0)
        return code

    def terminate(self) -> None:
        """SIGTERM (the worker stops before its next HDF5 call); nothing once it has ended."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL; nothing once it has ended."""
        self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)


class Zygote:
    """The process that forks the workers of one service (started at the first :meth:`fork`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None

    def __repr__(self) -> str:
        pid = self._proc.pid if self._proc is not None else None
        return f"<Zygote pid={pid}>"

    def _ensure(self) -> socket.socket:
        if self._proc is not None and self._sock is not None and self._proc.poll() is None:
            return self._sock
        self._shut()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            self._proc = subprocess.Popen(
                # -c, not -m: the package imports this module, -m would run a second copy
                [sys.executable, "-c", _ZYGOTE_MAIN, str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                env={**os.environ, **_ONE_THREAD},
            )
        ours.settimeout(START_TIMEOUT)
        self._sock = ours
        return ours

    def fork(self) -> ForkedWorker:
        """A new worker, forked with this process's environment, umask and directory.

        Raises
        ------
        WriterError
            The zygote did not start or did not answer (it is started again next time).
        """
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        status_r, status_w = os.pipe()
        theirs = [stdin_r, stdout_w, os.dup(2), status_w]
        request = {"env": dict(os.environ), "umask": _umask(), "cwd": os.getcwd()}
        try:
            with self._lock:
                try:
                    sock = self._ensure()
                    socket.send_fds(sock, [json.dumps(request).encode()], theirs)
                    answer = sock.recv(4096)
                except OSError as exc:  # also the timeout
                    self._shut()
                    raise WriterError(f"the worker zygote did not answer: {exc}") from exc
                if not answer:
                    code = self._shut()
                    raise WriterError(f"the worker zygote ended (exit code {code})")
        except BaseException:
            for fd in (stdin_w, stdout_r, status_r):
                os.close(fd)
            raise
        finally:
            for fd in theirs:
                os.close(fd)
        return ForkedWorker(int(json.loads(answer)["pid"]), stdin_w, stdout_r, status_r)

    def close(self, timeout: float = 5.0) -> None:
        """End the zygote (its workers go on until their stdin ends)."""
        with self._lock:
            self._shut(timeout)

    def _shut(self, timeout: float = 5.0) -> int | None:
        if self._sock is not None:
            self._sock.close()  # the zygote ends at this EOF
            self._sock = None
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()


def _umask() -> int | None:
    """This process's umask, read without changing it (``os.umask`` would, for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


# -- the zygote process -----------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Import :data:`PRELOAD`, then fork a worker per request on the socket ``argv[0]``."""
    args = sys.argv[1:] if argv is None else argv
    sock = socket.socket(fileno=int(args[0]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for name in PRELOAD:
        importlib.import_module(name)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the select below, via wake_w
    signal.set_wakeup_fd(wake_w)
    statuses: dict[int, int] = {}  # pid -> write end of its status pipe
    while True:
        ready = select.select([sock.fileno(), wake_r], [], [])[0]
        if wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(wake_r, 512):
                    pass
            _reap(statuses)
        if sock.fileno() in ready:
            message, fds, _, _ = socket.recv_fds(sock, 1 << 20, 4)
            if not message:
                return 0  # the service closed its end, or ended
            pid = os.fork()
            if pid == 0:
                _child(
                    json.loads(message), fds, [sock.fileno(), wake_r, wake_w, *statuses.values()]
                )
            for fd in fds[:3]:
                os.close(fd)
            statuses[pid] = fds[3]
            sock.send(json.dumps({"pid": pid}).encode())


def _reap(statuses: dict[int, int]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        fd = statuses.pop(pid, None)
        if fd is not None:
            with contextlib.suppress(OSError):  # the service is gone
                os.write(fd, _STATUS.pack(os.waitstatus_to_exitcode(status)))
            os.close(fd)


def _child(request: dict[str, Any], fds: list[int], inherited: list[int]) -> None:
    """In the forked process: become the worker; never returns."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for fd in (*inherited, fds[3]):
            os.close(fd)
        for target, fd in zip((0, 1, 2), fds[:3], strict=True):
            os.dup2(fd, target)
            os.close(fd)
        sys.stdin = open(0, encoding="utf-8", closefd=False)
        sys.stdout = open(1, "w", encoding="utf-8", closefd=False)
        sys.stderr = open(2, "w", encoding="utf-8", closefd=False, buffering=1)
        os.environ.clear()
        os.environ.update(request["env"])
        if request["umask"] is not None:
            os.umask(request["umask"])
        os.chdir(request["cwd"])
        code = importlib.import_module(WORKER_MODULE).main()  # imported already (PRELOAD)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)  # never back into the zygote's loop (nor its atexit handlers)
