"""Where simulated scans say their data goes: the BLISS-like saving configuration.

Layout (ESRF data policy, simplified)::

    <base_directory>/<session>/<sample>/<sample>_<dataset>/
        <sample>_<dataset>.h5          the dataset file: one NXentry per scan (the writer makes it)
        scan0001/                      per-scan directory of detector files (Lima frames)
        scan0002/ ...
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..exceptions import InvalidArgumentError

__all__ = ["SavingConfig"]


def _check_component(what: str, value: str) -> None:
    if not isinstance(value, str) or not value or "/" in value or value in (".", ".."):
        raise InvalidArgumentError(f"invalid {what} name {value!r}: a non-empty string without '/'")


@dataclass(frozen=True)
class SavingConfig:
    """Saving configuration of simulated scans.

    Parameters
    ----------
    base_directory : str or Path
        Root of the data (made absolute).
    session : str
        Session name (a directory level).
    sample : str
        Sample name.
    dataset : str
        Dataset name; the dataset directory is ``<sample>_<dataset>``.
    enabled : bool
        False: scans are not saved, their ``filename`` is ``""`` (as BLISS's null writer
        says) and Lima detectors
        without their own directory do not write frames (BLISS ``save=False``).

    Raises
    ------
    InvalidArgumentError
        A name is empty or holds a ``/``.
    """

    base_directory: str | os.PathLike[str]
    session: str
    sample: str = "sample"
    dataset: str = "0001"
    enabled: bool = True

    def __post_init__(self) -> None:
        _check_component("session", self.session)
        _check_component("sample", self.sample)
        _check_component("dataset", self.dataset)
        object.__setattr__(self, "base_directory", Path(self.base_directory).absolute())

    @property
    def dataset_name(self) -> str:
        """``<sample>_<dataset>``."""
        return f"{self.sample}_{self.dataset}"

    @property
    def dataset_directory(self) -> Path:
        """``<base>/<session>/<sample>/<sample>_<dataset>``."""
        return Path(self.base_directory) / self.session / self.sample / self.dataset_name

    @property
    def filename(self) -> str:
        """The dataset file, ``<dataset_directory>/<sample>_<dataset>.h5``."""
        return str(self.dataset_directory / f"{self.dataset_name}.h5")

    def scan_directory(self, scan_number: int) -> Path | None:
        """Directory of the detector files of scan ``scan_number`` (None when not saving)."""
        if not self.enabled:
            return None
        return self.dataset_directory / f"scan{scan_number:04d}"

    def scan_info(self) -> dict[str, Any]:
        """The ``scan_info`` keys of this configuration.

        ``filename``, ``sample`` (an NXsample category), ``dataset``, ``save``; when
        disabled ``save=False`` and ``filename`` ``""``.
        """
        return {
            "save": self.enabled,
            "filename": self.filename if self.enabled else "",
            "sample": {"@NX_class": "NXsample", "name": self.sample},
            "dataset": self.dataset_name,
        }

    def prepare(self) -> None:
        """Make the dataset directory (when saving), before a scan names a file in it.

        A BLISS session makes its data directories itself; subscribers that open
        ``scan_info["filename"]``'s directory at the scan's creation (the external saving
        example) rely on it.
        """
        if self.enabled:
            self.dataset_directory.mkdir(parents=True, exist_ok=True)
