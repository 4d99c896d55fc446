"""The HDF5 files a writer has open: shared by the scans that write into them, flushed often.

Several scans of a session usually write into one dataset file at the same time, so a file is
opened once, counted by its users, and closed when the last scan writing into it has ended
(then other programs see a complete, closed file). A background thread flushes every file
that received data at least every ``flush_period`` seconds, so that a reader opening the file
during the scan sees data at most that old.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
from pathlib import Path

import h5py

from ..exceptions import WriterError
from .nexus import open_nexus_file

logger = logging.getLogger(__name__)

#: Default flush period (s): the design asks for data visible within 250 ms.
FLUSH_PERIOD = 0.2


class _OpenFile:
    def __init__(self, file: h5py.File) -> None:
        self.file = file
        self.users = 0
        self.dirty = False


class OpenFiles:
    """Open HDF5 files shared between scan writers, with a periodic flush.

    Parameters
    ----------
    flush_period : float
        Seconds between two flushes of a file that received data.
    """

    def __init__(self, flush_period: float = FLUSH_PERIOD) -> None:
        self.flush_period = flush_period
        self._files: dict[Path, _OpenFile] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name="scanstream-flush", daemon=True)
        self._flusher.start()

    def acquire(self, path: Path) -> h5py.File:
        """Open ``path`` (creating it and its directory) for one more user, and return it.

        Raises
        ------
        WriterError
            The directory cannot be created or the file cannot be opened for writing (no
            permission, not an HDF5 file, disk full); the message names the path and the cause.
        """
        path = path.resolve()
        with self._lock:
            entry = self._files.get(path)
            if entry is None:
                entry = _OpenFile(_open(path))
                self._files[path] = entry
            entry.users += 1
            return entry.file

    def mark_dirty(self, file: h5py.File) -> None:
        """Note that ``file`` received data: the flusher will flush it."""
        entry = self._files.get(Path(file.filename))
        if entry is not None:
            entry.dirty = True

    def release(self, file: h5py.File) -> None:
        """One user less: flush, and close the file when nobody writes into it any more."""
        path = Path(file.filename)
        with self._lock:
            entry = self._files.get(path)
            if entry is None:
                return
            entry.users -= 1
            try:
                if entry.users > 0:
                    entry.file.flush()
                    entry.dirty = False
                    return
                del self._files[path]
                entry.file.close()
            except (OSError, RuntimeError) as exc:
                raise WriterError(f"cannot write {str(path)!r}: {exc}") from exc

    def close(self) -> None:
        """Stop the flusher and close every file (flushing it)."""
        self._stop.set()
        self._flusher.join(timeout=5)
        with self._lock:
            for path, entry in list(self._files.items()):
                try:
                    entry.file.close()
                except (OSError, RuntimeError):
                    logger.exception("closing %s failed", path)
            self._files.clear()

    def _flush_loop(self) -> None:
        while not self._stop.wait(self.flush_period):
            with self._lock:
                entries = [(p, e) for p, e in self._files.items() if e.dirty]
                for path, entry in entries:
                    entry.dirty = False
                    try:
                        entry.file.flush()
                    except (OSError, RuntimeError):
                        # The scan writing it reports the error at its next write or its end.
                        logger.exception("flushing %s failed", path)


def _refuse_if_written_elsewhere(path: Path) -> None:
    """Raise WriterError if another program holds ``path`` open for writing.

    The writer opens files without HDF5 locking (so that viewers never block it), which means
    HDF5 would not stop it from writing a file that another HDF5 program is writing: both would
    corrupt it. HDF5 programs that write take an exclusive ``flock``, readers a shared one, so a
    shared lock that cannot be had means a writer: refuse, rather than write beside it.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # absent (created below) or unreadable (the open below says why)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise WriterError(
            f"{str(path)!r} is being written by another program (it holds the file's HDF5 "
            "write lock); close that program, or give the scans another filename"
        ) from None
    except OSError:
        pass  # a file system without flock: nothing to learn
    finally:
        os.close(fd)  # closing releases the lock taken


def _open(path: Path) -> h5py.File:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriterError(
            f"cannot create the directory {str(path.parent)!r} for {path.name!r}: "
            f"{exc.strerror or exc}; choose a writable place (scan_info 'filename' or --root)"
        ) from exc
    if not path.exists() and not os.access(path.parent, os.W_OK):
        raise WriterError(
                f"cannot create {str(path)!r}: directory {str(path.parent)!r} is not writable; "
                "fix its permissions or choose another place (scan_info 'filename' or --root)"
            )
    _refuse_if_written_elsewhere(path)
    try:
        return open_nexus_file(path, "a")
    except OSError as exc:
        why = "no space left on the device" if getattr(exc, "errno", None) == errno.ENOSPC else str(exc)
        raise WriterError(
            f"cannot open {str(path)!r} for writing: {why}. Is it an HDF5 file, writable by this "
            "user, and not being written by another program?"
        ) from exc
