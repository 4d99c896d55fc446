"""Reading one image from the detector file an :class:`~scanstream.ImageReference` names.

The only use of h5py in the core library. h5py is imported when the first image is read, not
with :mod:`scanstream`: it costs 40-60 ms (after numpy), which a subscriber that never reads
an image should not pay.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ..exceptions import DecodingError
from ..models import ImageReference


def read_image(ref: ImageReference) -> np.ndarray:
    """Read one image from the file a reference names (HDF5 only).

    Parameters
    ----------
    ref : ImageReference
        ``(file_path, path_in_file, index_in_file, file_format)``; ``file_format`` must be
        an HDF5 one (see :func:`scanstream.models.is_hdf5_format`).

    Raises
    ------
    DecodingError
        Another file format, or the file, dataset or frame cannot be read.
    """
    if not ref.is_hdf5:
        raise DecodingError(
            f"cannot read images of format {ref.file_format!r} (only HDF5): {ref.file_path}"
        )
    import h5py  # lazily: see the module docstring

    try:
        try:
            # No file lock: the detector may still be writing this file.
            file = h5py.File(ref.file_path, "r", locking=False)
        except OSError as exc:
            if "locking flag" not in str(exc):
                raise
            # This process has the file open already with HDF5's default locking (for
            # example through a virtual dataset): HDF5 refuses a second, different flag.
            file = h5py.File(ref.file_path, "r")
        with file:
            return np.asarray(file[ref.path_in_file][ref.index_in_file])
    except (OSError, KeyError) as exc:
        raise DecodingError(
            f"cannot read image {ref.index_in_file} of {ref.file_path}:{ref.path_in_file}: {exc}"
        ) from None


class Frame(NamedTuple):
    """An image with its number, as BLISS's ``LimaDataView.get_last_image()`` returned it.

    Attributes
    ----------
    data : numpy.ndarray or None
        The image (None: no image).
    frame_number : int or None
        Its index in the acquisition (0 is the first).
    source : str or None
        Where it was read: ``"file"`` (scanstream reads no detector server).
    """

    data: Any
    frame_number: int | None
    source: str | None

    def __bool__(self) -> bool:
        # BLISS's frames are false when they hold no image (clients test ``if not frame``).
        return self.data is not None

    def __iter__(self) -> Any:
        # BLISS's frames unpack as (data, frame_number), its previous 2-tuple.
        yield self.data
        yield self.frame_number
