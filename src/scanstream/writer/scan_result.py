"""What a scan writer wrote (:class:`WriteResult`), and where a scan's file goes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..exceptions import WriterError


@dataclass
class WriteResult:
    """What a :class:`ScanWriter` wrote (``ScanResult`` is the former name).

    Attributes
    ----------
    path : Path
        The HDF5 file users open (the session file: it links to ``scan_file``).
    entries : list of str
        The NXentry names (``"3.1"``, ``"3.2"``...).
    scan_file : Path or None
        The file holding the scan's entries.
    problems : list of str
        Why the file does not hold every sealed point (a channel and its counts, a corrupt
        entry): a scan with problems is FAILED, never saved.
    points : dict
        Number of points (or frames) written per data node (its ``db_name``).
    state : str
        End state of the scan (``DONE``...); empty when the writer stopped before its end.
    warnings : list of str
        Metadata that could not be written (the data was).
    """

    path: Path
    entries: list[str] = field(default_factory=list)
    points: dict[str, int] = field(default_factory=dict)
    state: str = ""
    warnings: list[str] = field(default_factory=list)
    scan_file: Path | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when the scan's END_SCAN was written."""
        return bool(self.state)


#: The former name of :class:`WriteResult`, kept for compatibility.
ScanResult = WriteResult


def scan_file_path(scan_info: Mapping[str, Any], session: str, root: Path) -> Path:
    """The file of a scan: ``scan_info["filename"]`` (relative: below ``root``), else
    ``<root>/<session>/<session>.h5``.

    Raises
    ------
    WriterError
        ``filename`` is not a non-empty string.
    """
    filename = scan_info.get("filename")
    if filename is None:
        return root / session / f"{session}.h5"
    if not isinstance(filename, str) or not filename.strip():
        raise WriterError(f"scan_info['filename'] must be a file path string, got {filename!r}")
    path = Path(filename).expanduser()
    return path if path.is_absolute() else root / path
