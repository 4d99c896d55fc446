"""Where the writer may write: under its root and the directories it is explicitly allowed.

Whoever can publish a scan chooses its ``scan_info["filename"]``; the writer often runs as
another user, with other rights. So a filename is only a wish: it is resolved (symbolic links
followed) and refused unless the file lands inside the root or an allowed directory. A
filename with ``..`` components is refused even when it would land inside: such names are
how an escape is usually attempted, and a real scan never needs one.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..exceptions import WriterError

#: Suffixes of the files the writer writes (HDF5 / NeXus).
HDF5_SUFFIXES = (".h5", ".hdf5", ".nxs", ".hdf", ".nx5")


@dataclass(frozen=True)
class WritePolicy:
    """The directories a writer may write into, and the mode of the files it creates.

    Parameters
    ----------
    root : Path
        Base directory: scans without a ``filename`` go to ``<root>/<session>/<session>.h5``,
        relative filenames are taken below it.
    allowed : tuple of Path
        Further directories (``--allow DIR``) where absolute filenames may point.
    umask : int or None
        The umask the writer process applies to the files and directories it creates
        (``0o022``: readable by everyone, ``0o027``: by the group only). None keeps the
        umask the process was started with.
    """

    root: Path
    allowed: tuple[Path, ...] = ()
    umask: int | None = None
    _bases: tuple[Path, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.umask is not None and not 0 <= self.umask <= 0o777:
            raise WriterError(f"umask {self.umask!r} is not between 0 and 0o777")
        bases = tuple(_real(p) for p in (self.root, *self.allowed))
        object.__setattr__(self, "_bases", bases)

    @classmethod
    def create(
        cls,
        root: str | os.PathLike[str],
        allowed: Iterable[str | os.PathLike[str]] = (),
        umask: int | None = None,
    ) -> WritePolicy:
        """A policy from user input (``~`` expanded, paths made absolute)."""
        return cls(
            Path(root).expanduser().absolute(),
            tuple(Path(a).expanduser().absolute() for a in allowed),
            umask,
        )

    def scan_file(self, scan_info: Mapping[str, Any], session: str) -> Path:
        """The file a scan goes to, checked against this policy.

        Raises
        ------
        WriterError
            ``filename`` is not a non-empty path string, has ``..`` components, does not end
            like an HDF5 file, or lands (after following links) outside the root and the
            allowed directories; the message names the filename and what to do.
        """
        filename = scan_info.get("filename")
        if filename is None:
            return self.root / session / f"{session}.h5"
        if not isinstance(filename, str) or not filename.strip() or "\0" in filename:
            raise WriterError(f"scan_info['filename'] must be a file path, got {filename!r}")
        wished = Path(filename).expanduser()
        if ".." in wished.parts:
            raise WriterError(
                f"scan_info['filename'] {filename!r} has '..' components: refused; give a path "
                f"without them, below the writer's root {str(self.root)!r}"
            )
        if wished.suffix.lower() not in HDF5_SUFFIXES:
            raise WriterError(
                f"scan_info['filename'] {filename!r} does not end in one of "
                f"{', '.join(HDF5_SUFFIXES)}: the writer writes HDF5 files only"
            )
        path = wished if wished.is_absolute() else self.root / wished
        self.check(path, f"scan_info['filename'] {filename!r}")
        return path

    def check(self, path: Path, what: str) -> None:
        """Raise WriterError unless ``path`` (links followed) is inside an allowed directory."""
        real = _real(path)
        if not any(real == base or base in real.parents for base in self._bases):
            places = ", ".join(repr(str(b)) for b in self._bases)
            raise WriterError(
                f"{what} leads to {str(real)!r}, outside the directories this writer may write "
                f"({places}); start the writer with --allow DIR to allow another directory"
            )

    def apply_umask(self) -> None:
        """Set the process umask (when one was given): the files created from now on follow it."""
        if self.umask is not None:
            os.umask(self.umask)


def _real(path: Path) -> Path:
    """``path`` with every symbolic link of its existing part followed (strict=False)."""
    return Path(os.path.realpath(path))
