"""The HDF5 files a writer has open: shared by the scans that write into them, flushed often.

Several scans of a session usually write into one dataset file at the same time, so a file is
opened once, counted by its users, and closed when the last scan writing into it has ended
(then other programs see a complete, closed file). A background thread flushes every file
that received data at least every ``flush_period`` seconds, so that a reader opening the file
during the scan sees data at most that old.

A flush makes the file's state on disk the one readers see, so it must never fall between
two writes that belong together (a dataset grown and its values written, one channel of a
read batch written and not the next, a virtual dataset swapped): a scan writer holds the
file's *batch lock* (:meth:`OpenFiles.batch`) while it writes the events it has at hand and
releases it at a consistent point, and the flusher flushes a file only while holding that
lock (docs/nexus_layout.md, "Reading a file while it is written").

A full disk is checked before each write (:meth:`OpenFiles.check_space`). HDF5 handles a
full disk badly: after a failed flush, closing the file fails and any later use of it, even
HDF5's own clean-up at process exit, crashes the process. So the writer refuses to write well
before the disk is full, and a file is closed only after a successful flush; a file whose
flush fails is kept open and flushed again until space is freed, then closed.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py

from ..exceptions import WriterError
from .nexus import open_nexus_file
from .retry import WriterEnvironmentError

logger = logging.getLogger(__name__)

#: Default flush period (s): the design asks for data visible within 250 ms.
FLUSH_PERIOD = 0.2
#: Free bytes that must remain on the file's disk after a write: room for HDF5's metadata
#: and partially filled chunks, so that the file can always be flushed and closed.
SPACE_MARGIN = 16 << 20
#: Seconds between two looks at a disk's free space (:meth:`OpenFiles.check_space`).
SPACE_CHECK_PERIOD = 0.5


class FileBusyError(WriterError):
    """Another writer holds the file's lock: it is written there (retried until released)."""


def lock_path(path: Path) -> Path:
    """The sibling lock file of ``path`` (``.<name>.lock``), created next to it."""
    return path.with_name(f".{path.name}.lock")


class FileLock:
    """An exclusive ``flock`` on the sibling lock file of ``path``, held until :meth:`release`.

    HDF5's own locking is off (viewers must never block the writer, see
    :mod:`scanstream.writer.nexus`), so this is what keeps two writers, on one host or on
    hosts sharing a file system with working ``flock``, from having one file open for writing
    at once. The lock belongs to the open file description, so it lasts exactly as long as
    the process has the file open: a SIGKILLed writer loses it at once, a SIGSTOPped one keeps
    it (and the standby waits) until it resumes, finds its claim lapsed and closes the file.
    The lock file is never deleted: deleting it would let two writers lock two different files.
    """

    def __init__(self, path: Path, *, timeout: float = 0.0) -> None:
        self.path = lock_path(path)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise WriterError(
                f"cannot create the lock file {str(self.path)!r} of {path.name!r}: "
                f"{exc.strerror or exc}; make {str(path.parent)!r} writable (or free space on "
                "its disk), or choose another place (scan_info 'filename' or --root); the "
                "scan stays in Redis"
            ) from exc
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise FileBusyError(
                        f"{str(path)!r} is being written by another writer (it holds "
                        f"{str(self.path)!r}); waiting until it stops"
                    ) from None
                time.sleep(0.02)
            except OSError:
                break  # a file system without flock: the Redis claim is the only fence
        self._fd: int | None = fd

    def release(self) -> None:
        """Release the lock (closing the descriptor releases it)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


class _OpenFile:
    def __init__(self, file: h5py.File, lock: FileLock) -> None:
        self.file = file
        self.lock = lock
        self.users = 0
        self.dirty = False
        # Held by a scan writer between two consistent states of the file; the flusher takes
        # it, so that it never flushes a state half written.
        self.batch = threading.RLock()
        self.flushed = time.monotonic()


class OpenFiles:
    """Open HDF5 files shared between scan writers, with a periodic flush.

    Parameters
    ----------
    flush_period : float
        Seconds between two flushes of a file that received data.
    """

    def __init__(self, flush_period: float = FLUSH_PERIOD) -> None:
        self.flush_period = flush_period
        #: Directory -> (when its free space was read, free bytes counted down since).
        self._space: dict[str, tuple[float, int]] = {}
        self._files: dict[Path, _OpenFile] = {}
        # Files HDF5 failed to close (disk full): kept referenced, closed once possible.
        self._unclosed: dict[Path, _OpenFile] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._flusher = threading.Thread(
            target=self._flush_loop, name="scanstream-flush", daemon=True
        )
        self._flusher.start()

    def acquire(self, path: Path, *, fresh: bool = False) -> h5py.File:
        """Open ``path`` (creating it and its directory) for one more user, and return it.

        With ``fresh``, a file left at ``path`` (by a writer killed while writing it) is
        deleted once the lock is held, and a new one is created: a file a killed process was
        writing is never extended (its HDF5 metadata may be half updated).

        Raises
        ------
        WriterError
            The directory cannot be created or the file cannot be opened for writing (no
            permission, not an HDF5 file, disk full); the message names the path and the cause.
        """
        path = path.resolve()
        with self._lock:
            if path in self._unclosed:
                raise WriterEnvironmentError(
                    f"{str(path)!r} could not be flushed (no space left on the device?); "
                    "scans writing into it wait until space is freed"
                )
            entry = self._files.get(path)
            if entry is None:
                _make_parent(path)
                lock = FileLock(path)
                try:
                    if fresh:
                        path.unlink(missing_ok=True)
                    file = _open(path)
                except BaseException:
                    lock.release()
                    raise
                entry = _OpenFile(file, lock)
                self._files[path] = entry
            entry.users += 1
            return entry.file

    def check_space(self, file: h5py.File, nbytes: int) -> None:
        """Raise WriterError unless ``nbytes`` more fit on the file's disk with a margin.

        Raises
        ------
        WriterError
            "no space left on device": writing would leave less than :data:`SPACE_MARGIN`.
        """
        directory = os.path.dirname(file.filename)
        now = time.monotonic()
        checked = self._space.get(directory)
        # statvfs costs 10-70 us, once per write of every channel: between two looks at the
        # disk (at most SPACE_CHECK_PERIOD apart) the free space is counted down by what this
        # writer writes. Others filling the disk meanwhile are seen at the next look.
        if checked is not None and now - checked[0] < SPACE_CHECK_PERIOD:
            if checked[1] - nbytes >= SPACE_MARGIN:
                self._space[directory] = (checked[0], checked[1] - nbytes)
                return
        try:
            stats = os.statvfs(directory)
        except OSError:
            return
        free = stats.f_bavail * stats.f_frsize
        self._space[directory] = (now, free - nbytes)
        if free < nbytes + SPACE_MARGIN:
            raise WriterEnvironmentError(
                f"no space left on device for {file.filename!r}: {free >> 20} MiB free, "
                f"{(nbytes + SPACE_MARGIN) >> 20} MiB needed (data and a "
                f"{SPACE_MARGIN >> 20} MiB margin); free some space, the scan stays in Redis"
            )

    @contextmanager
    def batch(self, file: h5py.File) -> Iterator[None]:
        """Hold ``file``'s batch lock: the periodic flush waits until the block is left.

        Write everything that belongs together inside one block and leave it only when the
        file is in a state a reader may see (the flusher flushes between two blocks).
        """
        entry = self._files.get(Path(file.filename))
        if entry is None:
            yield
            return
        with entry.batch:
            yield

    def flush_if_due(self, file: h5py.File) -> None:
        """Flush ``file`` if its last flush is a flush period old (call it between batches).

        A writer always busy would otherwise keep the flusher out (the batch lock is not
        fair), and HDF5 would write its caches to disk at random points instead.
        """
        entry = self._files.get(Path(file.filename))
        if entry is None or time.monotonic() - entry.flushed < self.flush_period:
            return
        with entry.batch:
            entry.dirty = False
            entry.flushed = time.monotonic()
            file.flush()

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
            if entry.users <= 0:
                del self._files[path]
            try:
                with entry.batch:  # another scan of the file may be between two states
                    entry.file.flush()
                entry.dirty = False
            except (OSError, RuntimeError) as exc:
                if entry.users <= 0:
                    self._unclosed[path] = entry  # never close an unflushed file: see above
                raise WriterError(f"cannot write {str(path)!r}: {exc}") from exc
            if entry.users <= 0:
                entry.file.close()
                try:
                    sync_to_disk(path)
                finally:
                    entry.lock.release()

    @property
    def unclosed(self) -> list[Path]:
        """Files that could not be closed (disk full); their last data may be missing."""
        return list(self._unclosed)

    def close(self) -> None:
        """Stop the flusher and close every file (flushing it)."""
        self._stop.set()
        self._flusher.join(timeout=5)
        with self._lock:
            for path, entry in list(self._files.items()):
                self._unclosed[path] = entry
            self._files.clear()
            self._retry_unclosed()
            for path in self._unclosed:
                logger.error(
                    "%s could not be flushed (no space left on the device?) and stays "
                    "unclosed; its last data is missing: the scans concerned are not "
                    "marked saved",
                    path,
                )

    def _retry_unclosed(self) -> None:
        """Flush, then close, the files whose flush failed; leave those that still fail."""
        for path, entry in list(self._unclosed.items()):
            try:
                entry.file.flush()
            except (OSError, RuntimeError):
                continue  # its lock is kept: released with the process at the latest
            entry.file.close()
            entry.lock.release()
            del self._unclosed[path]
            logger.info("%s flushed and closed", path)

    def _flush_loop(self) -> None:
        while not self._stop.wait(self.flush_period):
            with self._lock:
                self._retry_unclosed()
                entries = [(p, e) for p, e in self._files.items() if e.dirty]
            # The batch locks are taken without self._lock: a scan writer holding its batch
            # lock may need self._lock (acquire, release) before it leaves the batch.
            for path, entry in entries:
                # Busy: a scan writer is inside a batch and flushes at its end when due.
                if not entry.batch.acquire(blocking=False):
                    continue
                try:
                    if not entry.file.id.valid:
                        continue  # closed meanwhile (release flushed it)
                    entry.dirty = False
                    entry.flushed = time.monotonic()
                    entry.file.flush()
                except (OSError, RuntimeError) as exc:
                    # The scan writing it reports the error at its next write or its end.
                    logger.warning("flushing %s failed: %s", path, exc)
                finally:
                    entry.batch.release()


def refuse_if_written_elsewhere(path: Path) -> None:
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


def sync_to_disk(path: Path) -> None:
    """``fsync`` the closed file ``path`` and its directory: on the disk before it is "saved".

    A process kill leaves written data in the page cache, which the kernel writes back; a power
    cut or a host crash loses what was not written back yet. Syncing each scan file once, when
    its scan is complete and before the verdict SAVED is recorded (after which
    ``scanstream delete`` may remove the only other copy, in Redis), bounds that loss to the
    scans not yet saved. The directory is synced too, so that a new file's name is on disk.

    Raises
    ------
    WriterError
        The file or its directory could not be synced (the scan is then not marked saved).
    """
    try:
        for target, flags in ((path, os.O_RDONLY), (path.parent, os.O_RDONLY | os.O_DIRECTORY)):
            fd = os.open(target, flags)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    except OSError as exc:
        raise WriterError(f"cannot sync {str(path)!r} to disk: {exc}") from exc


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriterError(
            f"cannot create the directory {str(path.parent)!r} for {path.name!r}: "
            f"{exc.strerror or exc}; choose a writable place (scan_info 'filename' or --root)"
        ) from exc


def _create_whole(path: Path) -> None:
    """Create the empty HDF5 file ``path`` under a temporary name, then rename it into place.

    A file HDF5 is creating holds its superblock only until the first flush (96 bytes that
    announce a longer file): a reader opening it then fails ("truncated file"). Renamed
    closed, the file is complete from the moment it has its name. Called under the file's
    lock (one writer), which also makes the temporary files of a killed writer safe to remove.
    """
    for stale in path.parent.glob(f".{path.name}.new-*"):
        stale.unlink(missing_ok=True)
    building = path.with_name(f".{path.name}.new-{os.getpid()}")
    open_nexus_file(building, "w").close()
    os.replace(building, path)


def _open(path: Path) -> h5py.File:
    if not path.exists() and not os.access(path.parent, os.W_OK):
        raise WriterEnvironmentError(
            f"cannot create {str(path)!r}: directory {str(path.parent)!r} is not writable; "
            "fix its permissions or choose another place (scan_info 'filename' or --root)"
        )
    refuse_if_written_elsewhere(path)
    try:
        if not path.exists():
            _create_whole(path)
        return open_nexus_file(path, "a")
    except OSError as exc:
        why = (
            "no space left on the device"
            if getattr(exc, "errno", None) == errno.ENOSPC
            else str(exc)
        )
        raise WriterError(
            f"cannot open {str(path)!r} for writing: {why}. Is it an HDF5 file, writable by this "
            "user, and not being written by another program?"
        ) from exc
