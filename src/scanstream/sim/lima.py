"""A Lima-like 2D detector that writes real HDF5 frame files.

File layout (Lima >= 1.9.1 HDF5 saving)::

    <saving_directory>/<prefix><index_format % file_number><suffix>
        /entry_0000                          NXentry
            /instrument/<name>/data          NXdetector; frames stacked along axis 0
            /measurement/data                soft link to the above

``frames_per_file`` frames go into each file; the last file may hold fewer. A frame's
:class:`~scanstream.ImageReference` is published only once the frame is written and the
file flushed, so a subscriber can always read what a reference names.

How files stay readable while they are written (no SWMR needed): a file's ``data``
dataset is created with its final number of frames, contiguous and allocated at creation
(``H5D_ALLOC_TIME_EARLY``). Writing a frame then only writes raw bytes at a fixed offset and
never touches HDF5 metadata, so a reader that opens the file at any moment after the
creation flush sees a consistent file. When a scan stops early (abort, unbounded timescan)
the last file is rewritten with the exact frame count and atomically renamed over the
partial one: readers that had it open keep reading the old inode.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt

from ..exceptions import InvalidArgumentError, ScanstreamError
from ..models import ImageReference, SavingMode
from .devices import seeded_rng

__all__ = [
    "LimaAcquisition",
    "LimaDetector",
    "LimaFileExistsError",
    "LimaSavingError",
    "unclosed_files",
]

logger = logging.getLogger(__name__)


class LimaFileExistsError(ScanstreamError, FileExistsError):
    """A frame file to create already exists (Lima's overwrite policy ABORT)."""


class LimaSavingError(ScanstreamError, OSError):
    """A frame file cannot be written: its disk is full (or too full for the file), or it
    refuses the write."""


#: Frame files HDF5 could not close (a flush failed: disk full). HDF5 closes them again at
#: the interpreter's exit and crashes the process there (SIGSEGV): a program that ends after
#: a scan checks :func:`unclosed_files` and ends with ``os._exit``, as the writer does.
_UNCLOSED: list[str] = []
_ABANDONED: list[tuple[h5py.File, h5py.Dataset | None]] = []

#: Free space a new frame file leaves on its disk, beyond its frames (its metadata, others').
SPACE_MARGIN = 1 << 20


def unclosed_files() -> list[str]:
    """The frame files of this process HDF5 could not close (see :class:`LimaSavingError`)."""
    return list(_UNCLOSED)


def _reason(exc: BaseException) -> str:
    """The OS's words in an HDF5 error (``No space left on device``), else the error's text."""
    match = re.search(r"error message = '([^']+)'", str(exc))
    return match.group(1) if match else str(exc).splitlines()[0]


class LimaDetector:
    """A simulated Lima detector: deterministic frames, real HDF5 files.

    Parameters
    ----------
    name : str
        Detector name (``lima_simulator``); its image channel is ``<name>:image``.
    shape : (int, int)
        Frame (height, width).
    dtype : numpy dtype
        Pixel type (``uint16`` by default, like a Lima simulator).
    saving_directory : str or Path, optional
        Directory of the frame files. None: the per-scan directory of the scan's
        :class:`~scanstream.sim.saving.SavingConfig`.
    prefix : str, optional
        File name prefix; default ``"<name>_"``.
    suffix : str
        File name suffix.
    index_format : str
        printf format of the file number.
    frames_per_file : int
        Frames per file; -1 puts all frames of a (bounded) scan into one file.
    saving_mode : {"MANUAL", "NOSAVING"}
        NOSAVING acquires frames without writing them (no references are published).
    next_number : int
        Number of the first file.
    seed : int
        Seed of the Poisson noise.
    """

    def __init__(
        self,
        name: str = "lima_simulator",
        shape: tuple[int, int] = (64, 80),
        dtype: npt.DTypeLike = "uint16",
        *,
        saving_directory: str | os.PathLike[str] | None = None,
        prefix: str | None = None,
        suffix: str = ".h5",
        index_format: str = "%04d",
        frames_per_file: int = 100,
        saving_mode: str = "MANUAL",
        next_number: int = 0,
        seed: int = 0,
    ) -> None:
        if not name or ":" in name or "/" in name:
            raise InvalidArgumentError(
                f"invalid detector name {name!r}: non-empty, without ':' or '/'"
            )
        if len(shape) != 2 or min(shape) < 1:
            raise InvalidArgumentError(
                f"detector {name!r}: shape must be (height, width) >= 1, got {shape!r}"
            )
        if frames_per_file == 0 or frames_per_file < -1:
            raise InvalidArgumentError(
                f"detector {name!r}: frames_per_file must be >= 1 or -1, got {frames_per_file!r}"
            )
        try:
            index_format % 0
        except (TypeError, ValueError):
            raise InvalidArgumentError(
                f"detector {name!r}: bad index_format {index_format!r} (like '%04d')"
            ) from None
        self.name = name
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(dtype)
        self.saving_directory = None if saving_directory is None else Path(saving_directory)
        self.prefix = f"{name}_" if prefix is None else prefix
        self.suffix = suffix
        self.index_format = index_format
        self.frames_per_file = int(frames_per_file)
        self.saving_mode = SavingMode(saving_mode)
        self.next_number = int(next_number)
        self.seed = seed

    def __repr__(self) -> str:
        return f"<LimaDetector {self.name!r} {self.shape} {self.dtype} {self.saving_mode.value}>"

    @property
    def fullname(self) -> str:
        """Full name of the image channel."""
        return f"{self.name}:image"

    @property
    def path_in_file(self) -> str:
        """HDF5 path of the frames in each file."""
        return f"/entry_0000/instrument/{self.name}/data"

    def file_name(self, file_number: int) -> str:
        """Base name of file number ``file_number``."""
        return f"{self.prefix}{self.index_format % file_number}{self.suffix}"

    def image(self, index: int) -> npt.NDArray[Any]:
        """Frame ``index``: a gaussian spot moving with the index, plus seeded Poisson noise."""
        h, w = self.shape
        # The spot turns on an ellipse: every frame differs, and a frame tells its index.
        angle = 2 * math.pi * index / 16
        cy, cx = h / 2 + 0.3 * h * math.sin(angle), w / 2 + 0.3 * w * math.cos(angle)
        sigma = max(1.0, min(h, w) / 10)
        y, x = np.ogrid[:h, :w]
        rate = 5.0 + 1000.0 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma**2))
        frame = seeded_rng(self.seed, self.fullname, index).poisson(rate)
        if self.dtype.kind in "ui":
            frame = np.clip(frame, 0, np.iinfo(self.dtype).max)
        return frame.astype(self.dtype)

    def start(
        self, npoints: int, *, directory: Path | None, count_time: float = 0.0
    ) -> LimaAcquisition:
        """Begin the acquisition of one scan (one frame per point).

        Parameters
        ----------
        npoints : int
            Frames to acquire; 0 for an unbounded scan.
        directory : Path or None
            Per-scan directory of the scan's saving configuration. Used when the detector
            has no ``saving_directory``; when both are None a MANUAL detector saves nothing
            (like a BLISS scan with ``save=False``).
        count_time : float
            Exposure time recorded in the description.

        Raises
        ------
        InvalidArgumentError
            ``frames_per_file=-1`` in an unbounded scan.
        LimaFileExistsError
            The first file to write exists already.
        """
        saving_dir = self.saving_directory or directory
        mode = self.saving_mode if saving_dir is not None else SavingMode.NOSAVING
        return LimaAcquisition(self, npoints, mode, saving_dir, count_time)


class LimaAcquisition:
    """The frames of one scan of a :class:`LimaDetector`. Use :meth:`LimaDetector.start`."""

    def __init__(
        self,
        detector: LimaDetector,
        npoints: int,
        mode: SavingMode,
        directory: Path | None,
        count_time: float,
    ) -> None:
        self.detector = detector
        self.npoints = int(npoints)
        self.saving_mode = mode
        self.directory = None if mode is SavingMode.NOSAVING else directory
        self.count_time = count_time
        fpf = detector.frames_per_file
        if fpf == -1:
            if self.npoints == 0:
                raise InvalidArgumentError(
                    f"detector {detector.name!r}: frames_per_file=-1 (one file per scan) "
                    "needs a bounded number of points"
                )
            fpf = self.npoints
        self.frames_per_file = fpf
        self.files: list[str] = []  # absolute paths of the files created so far
        self.acquired = 0
        self._file: h5py.File | None = None
        self._dataset: h5py.Dataset | None = None
        self._in_file = 0  # frames written into the open file
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            first = self.directory / detector.file_name(detector.next_number)
            if first.exists():  # refuse before the scan acquires anything
                raise LimaFileExistsError(
                    f"detector {detector.name!r}: {first} exists already (overwrite policy ABORT)"
                )

    @property
    def saving(self) -> bool:
        """True when frames are written to files."""
        return self.directory is not None

    def description(self) -> dict[str, Any]:
        """Node info of the lima node: the Lima saving description (BLISS keys)."""
        det = self.detector
        info: dict[str, Any] = {
            "acq_trigger_mode": "INTERNAL_TRIGGER_MULTI",
            "acq_nb_frames": self.npoints,
            "acq_expo_time": self.count_time,
            "saving_mode": self.saving_mode.value,
            "user_detector_name": det.name,
            "user_instrument_name": "instrument",
            "lima_version": "scanstream.sim",
        }
        if self.saving:
            info.update(
                saving_format="HDF5",
                saving_directory=str(self.directory),
                saving_prefix=det.prefix,
                saving_suffix=det.suffix,
                saving_index_format=det.index_format,
                saving_frame_per_file=self.frames_per_file,
                saving_next_number=det.next_number,
            )
        return info

    def acquire(self, index: int) -> ImageReference | None:
        """Acquire frame ``index`` (the next one); write and flush it when saving.

        Returns
        -------
        ImageReference or None
            Where the frame is, once it is on disk; None when not saving.
        """
        if index != self.acquired:
            raise InvalidArgumentError(
                f"detector {self.detector.name!r}: frame {index} out of order "
                f"(expected {self.acquired})"
            )
        frame = self.detector.image(index)
        self.acquired += 1
        if not self.saving:
            return None
        if self._dataset is None:
            self._open(index)
        assert self._file is not None and self._dataset is not None
        position = self._in_file
        path = self.files[-1]
        try:
            self._dataset[position] = frame
            self._in_file += 1
            self._file.flush()  # on disk before its reference is published
        except (OSError, RuntimeError) as exc:  # h5py raises either for a failed write
            self._abandon_file()
            raise LimaSavingError(
                f"detector {self.detector.name!r}: cannot write frame {index} into {path}: "
                f"{_reason(exc)}; free some space, or save elsewhere (scanstream scan --root)"
            ) from None
        if self._in_file == self._dataset.shape[0]:
            self._close_file()
        return ImageReference(path, self.detector.path_in_file, position, "HDF5")

    def close(self) -> list[str]:
        """Finish the files (the last partial one shrunk to its frames); return their paths."""
        if self._file is not None:
            written, allocated = self._in_file, self._dataset.shape[0] if self._dataset else 0
            self._close_file()
            if written < allocated:
                _shrink(self.files[-1], self.detector.path_in_file, written)
        return list(self.files)

    # -- files ---------------------------------------------------------------------------
    def _open(self, index: int) -> None:
        det = self.detector
        assert self.directory is not None
        file_number = det.next_number + index // self.frames_per_file
        nframes = self.frames_per_file
        if self.npoints:  # the last file of a bounded scan holds the remainder only
            nframes = min(nframes, self.npoints - index)
        path = (self.directory / det.file_name(file_number)).absolute()
        if path.exists():
            raise LimaFileExistsError(
                f"detector {det.name!r}: {path} exists already (overwrite policy ABORT)"
            )
        # Its frames are allocated at creation but written later: a disk too full for them
        # would fail a frame's flush in the middle of the scan, and leave a file HDF5
        # cannot close. Refused now instead, before the file exists.
        needed = nframes * math.prod(det.shape) * det.dtype.itemsize + SPACE_MARGIN
        free = shutil.disk_usage(self.directory).free
        if free < needed:
            raise LimaSavingError(
                f"detector {det.name!r}: no space left on device for {path}: "
                f"{free / 2**20:.1f} MiB free, {needed / 2**20:.1f} MiB needed; free some "
                "space, or save elsewhere (scanstream scan --root)"
            )
        self._file, self._dataset = _create_file(path, det.name, det.dtype, (nframes,) + det.shape)
        self._in_file = 0
        self.files.append(str(path))

    def _close_file(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except (OSError, RuntimeError) as exc:
                self._abandon_file()
                raise LimaSavingError(
                    f"detector {self.detector.name!r}: cannot close {self.files[-1]}: "
                    f"{_reason(exc)}; free some space, or save elsewhere"
                ) from None
        self._file, self._dataset = None, None

    def _abandon_file(self) -> None:
        """Give up a file whose write failed. HDF5 can neither flush nor close it now: its
        objects are kept alive (their deallocation would fail too, with a traceback each)
        and the file noted in :func:`unclosed_files`."""
        if self._file is not None:
            _UNCLOSED.append(self.files[-1])
            _ABANDONED.append((self._file, self._dataset))
        self._file, self._dataset = None, None


def _create_file(
    path: Path, name: str, dtype: np.dtype[Any], shape: tuple[int, ...]
) -> tuple[h5py.File, h5py.Dataset]:
    """Create a Lima-layout file whose ``data`` is allocated now (see the module docstring)."""
    # locking=False: subscribers open the file while we write it; HDF5 file locks would
    # make one of the two fail.
    f = h5py.File(path, "x", locking=False)
    try:
        f.attrs["NX_class"] = "NXroot"
        f.attrs["creator"] = "scanstream.sim"
        entry = f.create_group("entry_0000")
        entry.attrs["NX_class"] = "NXentry"
        instrument = entry.create_group("instrument")
        instrument.attrs["NX_class"] = "NXinstrument"
        detector = instrument.create_group(name)
        detector.attrs["NX_class"] = "NXdetector"
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_layout(h5py.h5d.CONTIGUOUS)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        dataset = detector.create_dataset(
            "data", shape=shape, dtype=dtype, dcpl=dcpl, fill_time="never"
        )
        dataset.attrs["interpretation"] = "image"
        measurement = entry.create_group("measurement")
        measurement.attrs["NX_class"] = "NXcollection"
        measurement["data"] = h5py.SoftLink(f"/entry_0000/instrument/{name}/data")
        f.flush()
    except BaseException:
        f.close()
        raise
    return f, dataset


def _shrink(path_str: str, path_in_file: str, nframes: int) -> None:
    """Rewrite ``path`` with only its first ``nframes`` frames, then rename it over the old one."""
    path = Path(path_str)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with h5py.File(path, "r", locking=False) as old:
            data = old[path_in_file]
            name = path_in_file.strip("/").split("/")[2]
            new, dataset = _create_file(tmp, name, data.dtype, (nframes,) + data.shape[1:])
            with new:
                for i in range(nframes):  # frame by frame: bounded memory for big frames
                    dataset[i] = data[i]
        os.replace(tmp, path)  # atomic: a reader sees the old or the new file, never half
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
