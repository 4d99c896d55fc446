"""``bliss.data.lima_image``: the image helpers Lima clients import (Flint imports this module).

``Frame`` is what ``LimaDataView.get_last_image()`` returns; ``ImageFormatNotSupported`` is
what BLISS raised for a live image it could not decode (scanstream reads images from their
files only, so it is never raised: clients import it to catch it);
``image_from_file(filename, path_in_file, image_index, file_format)`` reads one image a
reference names (HDF5 formats only: EDF and others raise :class:`~scanstream.DecodingError`).
"""

from __future__ import annotations

import numpy as np

from ..exceptions import ScanstreamError
from ..models import ImageReference
from ..subscribe.images import Frame, read_image


class ImageFormatNotSupported(ScanstreamError):
    """An image in a format that cannot be decoded (BLISS's name; scanstream never raises it)."""


def image_from_file(
    filename: str, path_in_file: str, image_index: int, file_format: str
) -> np.ndarray:
    """Read image ``image_index`` of ``filename`` (the four fields of an image reference).

    Raises
    ------
    DecodingError
        Not an HDF5 format, or the file, dataset or frame cannot be read.
    """
    return read_image(ImageReference(filename, path_in_file, int(image_index), file_format))


__all__ = ["Frame", "ImageFormatNotSupported", "image_from_file"]
