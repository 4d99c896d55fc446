"""The session (dataset) file users open: external links to one HDF5 file per scan.

HDF5 is not crash-safe: a process killed in the middle of a metadata update can leave the
whole file unreadable. So a scan's data never goes into the file users open. Each scan is
written into a file of its own, ``<dir>/<stem>_scans/scan<N>.h5`` (entries ``N.1``,
``N.2``...), and the session file ``<dir>/<stem>.h5`` holds only an external link per entry
(``N.1`` -> ``<stem>_scans/scan<N>.h5:/N.1``) and the NXroot attributes. h5py, silx, PyMca
and h5web follow external links, so users still see one file with one entry per scan.

The session file is changed in short steps (open, add a link, close) under its lock, each
idempotent; a kill during one can damage at most that file, which holds nothing that cannot
be made again: when it no longer opens, it is moved aside (``<name>.damaged-<time>``) and
rebuilt from the scan files. A new session file is created whole (built under a temporary
name, then renamed), so a kill during its creation leaves none rather than a truncated one. A kill while a scan file is written damages that scan only; it
is not marked saved, so the restarted writer deletes that file and writes the scan again
from Redis (:meth:`OpenFiles.acquire` with ``fresh``), never extending what a killed process
left. See docs/decisions/0011-crash-safe-files.md.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import h5py

from ..exceptions import WriterError
from . import nexus
from .files import FileBusyError, FileLock, refuse_if_written_elsewhere, sync_to_disk
from .nexus.nxdata import entry_order

__all__ = ["IDENTITY_ATTR", "SCANS_SUFFIX", "SessionFiles", "scan_file_of", "scans_dir_of"]

logger = logging.getLogger(__name__)

#: Suffix of the directory of scan files, next to the session file.
SCANS_SUFFIX = "_scans"
#: Attribute (scan file root and each entry) naming the scan written there.
IDENTITY_ATTR = "scanstream_scan"
#: How long a short step waits for the session file's lock (another writer's short step).
LOCK_WAIT = 10.0
_ENTRY_RE = re.compile(r"^(?:scan)?(\d+)[._](\d+)$")


def scans_dir_of(session_file: Path) -> Path:
    """The directory of the scan files of ``session_file``."""
    return session_file.with_name(session_file.stem + SCANS_SUFFIX)


def scan_file_of(session_file: Path, number: int) -> Path:
    """The file of the scan whose entries are numbered ``number`` (``N.1``, ``N.2``...)."""
    return scans_dir_of(session_file) / f"scan{number:04d}.h5"


def entry_number(name: str) -> int | None:
    """The scan number of an entry name (``"12.1"``, ``"scan12_1"``), or None."""
    match = _ENTRY_RE.match(name)
    return int(match.group(1)) if match else None


def read_identity(path: Path) -> str | None:
    """The scan written in scan file ``path``, or None when absent or unreadable (partial)."""
    try:
        with nexus.open_nexus_file(path, "r") as file:
            value = file.attrs.get(IDENTITY_ATTR)
    except (OSError, KeyError, RuntimeError):
        return None
    return value.decode() if isinstance(value, bytes) else None if value is None else str(value)


class SessionFiles:
    """Short, locked, idempotent changes of session files (one at a time in a process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def open(self, path: Path) -> Iterator[h5py.File]:
        """The session file, opened for one short step under its lock (rebuilt if damaged).

        Raises
        ------
        WriterError
            The file exists but scanstream did not create it, or cannot be opened.
        """
        with self._lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                lock = FileLock(path, timeout=LOCK_WAIT)
            except FileBusyError as exc:
                raise WriterError(f"session file: {exc}") from exc
            try:
                file = self._open_or_rebuild(path)
                try:
                    yield file
                finally:
                    file.close()
            finally:
                lock.release()

    def choose_number(self, path: Path, number: int, scan_id: str, *, strict: bool) -> int:
        """The entry number of scan ``scan_id`` (published as ``number``) in ``path``.

        ``number`` itself unless its entry holds another scan (numbering restarted after a
        server reset, or another session wrote this file): then the next number above the
        highest entry of the file, so a scan is never refused nor dropped for its number.
        """
        with self.open(path) as file:
            candidate = number
            while True:
                owner = self._owner(file, path, candidate, strict=strict)
                if owner is None or owner == scan_id:
                    return candidate
                highest = max(self._numbers(file, path), default=candidate)
                logger.warning(
                    "entry %s of %s holds another scan (%s): this scan is written as %s",
                    nexus.entry_name(candidate, 1, strict_names=strict),
                    path,
                    owner,
                    nexus.entry_name(max(highest, candidate) + 1, 1, strict_names=strict),
                )
                candidate = max(highest, candidate) + 1

    def link_entries(self, path: Path, scan_file: Path, names: Iterable[str]) -> None:
        """Make ``path``'s entries ``names`` external links to those of ``scan_file``."""
        with self.open(path) as file:
            _link(file, path, scan_file, names)
            file.flush()

    def set_default(self, path: Path, name: str) -> None:
        """Make entry ``name`` the default plot of the session file, unless a newer scan's
        entry is already the default (viewers open on the newest scan, not the last ended)."""
        with self.open(path) as file:
            if entry_order(file.attrs.get("default")) <= entry_order(name):
                file.attrs["default"] = name

    def highest_number(self, path: Path) -> int:
        """The highest entry number in the session file ``path`` and its scan files (0: none)."""
        if not path.exists() and not scans_dir_of(path).is_dir():
            return 0
        with self.open(path) as file:
            return max(self._numbers(file, path), default=0)

    # -- the steps ----------------------------------------------------------------------------
    def _open_or_rebuild(self, path: Path) -> h5py.File:
        scans = scans_dir_of(path)
        if path.exists():
            refuse_if_written_elsewhere(path)
            try:
                file = nexus.open_nexus_file(path, "a")
            except OSError as exc:
                if not scans.is_dir():
                    raise WriterError(
                        f"cannot open {str(path)!r} for writing ({exc}); it is not a file "
                        "scanstream wrote: move it away or give the scans another filename"
                    ) from exc
                aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
                os.replace(path, aside)
                logger.error(
                    "%s no longer opens (%s; a writer killed while changing it?): moved to "
                    "%s and rebuilt from the scan files in %s",
                    path,
                    exc,
                    aside,
                    scans,
                )
            else:
                if file.attrs.get("creator") != "scanstream":
                    file.close()
                    raise WriterError(
                        f"{str(path)!r} is an HDF5 file scanstream did not create: it is not "
                        "written into; give the scans another filename"
                    )
                return file
        # The scans directory first: a session file a kill left half created is then
        # recognized as ours (above) and rebuilt, instead of being refused for ever.
        scans.mkdir(exist_ok=True)
        self._create(path)
        return nexus.open_nexus_file(path, "a")

    def _create(self, path: Path) -> None:
        """Create the session file whole, or not at all: built under a temporary name in the
        same directory, closed and synced, then renamed into place (a kill during the build
        leaves only the temporary file, removed by the next creation; never a truncated
        session file). Called under the session file's lock."""
        for stale in path.parent.glob(f".{path.name}.new-*"):
            stale.unlink(missing_ok=True)
        building = path.with_name(f".{path.name}.new-{os.getpid()}")
        try:
            with nexus.open_nexus_file(building, "w") as file:
                _root_attrs(file, path)
                self._rebuild(file, path)
            sync_to_disk(building)
            os.replace(building, path)
        except OSError as exc:  # HDF5's own text is a page of C detail: say what and why
            building.unlink(missing_ok=True)
            full = exc.errno == errno.ENOSPC or "No space left" in str(exc)
            why = "no space left on the device" if full else (exc.strerror or str(exc))
            raise WriterError(
                f"cannot create the session file {str(path)!r}: {why}; "
                f"{'free some space' if full else 'fix the directory'} (the scan stays in "
                "Redis)"
            ) from exc

    def _rebuild(self, file: h5py.File, path: Path) -> None:
        """Link every entry of every readable scan file (partial ones are written again)."""
        scans = scans_dir_of(path)
        if not scans.is_dir():
            return
        for scan_file in sorted(scans.glob("scan*.h5")):
            try:
                with nexus.open_nexus_file(scan_file, "r") as source:
                    names = [n for n in source if entry_number(n) is not None]
            except OSError:
                continue
            _link(file, path, scan_file, names)

    def _owner(self, file: h5py.File, path: Path, number: int, *, strict: bool) -> str | None:
        """Who holds entry number ``number``: a scan id, or None when nobody (or unknown)."""
        name = nexus.entry_name(number, 1, strict_names=strict)
        link = file.get(name, getlink=True)
        target = scan_file_of(path, number)
        if isinstance(link, h5py.ExternalLink):
            target = path.parent / link.filename
        elif link is not None:  # an entry written in the file itself (former layout)
            value = file[name].attrs.get(IDENTITY_ATTR) if isinstance(link, h5py.HardLink) else None
            return str(value) if value is not None else "not written by scanstream"
        if not target.exists():
            return None
        # An unreadable scan file is a partial one (its writer was killed): not saved, so
        # written again by whoever it belongs to.
        return read_identity(target)

    def _numbers(self, file: h5py.File, path: Path) -> Iterator[int]:
        for name in file:
            number = entry_number(name)
            if number is not None:
                yield number
        scans = scans_dir_of(path)
        if scans.is_dir():
            for scan_file in scans.glob("scan*.h5"):
                stem = scan_file.stem[4:]
                if stem.isdigit():
                    yield int(stem)


def _link(file: h5py.File, path: Path, scan_file: Path, names: Iterable[str]) -> None:
    relative = os.path.relpath(scan_file, path.parent)
    for name in names:
        link = file.get(name, getlink=True)
        if isinstance(link, h5py.ExternalLink) and link.filename == relative:
            continue
        if link is not None:
            del file[name]
        file[name] = h5py.ExternalLink(relative, f"/{name}")


def _root_attrs(file: h5py.File, path: Path) -> None:
    file.attrs["NX_class"] = "NXroot"
    file.attrs["creator"] = "scanstream"
    file.attrs["file_name"] = os.path.abspath(path)
    file.attrs["file_time"] = nexus.iso8601(time.time())
    file.attrs["HDF5_Version"] = h5py.version.hdf5_version
    file.attrs["h5py_version"] = h5py.version.version
