"""Channel datasets of the NeXus layout: one growing dataset per channel, written by index.

Pure h5py, no Redis knowledge; :mod:`scanstream.writer.nexus` re-exports the public names.
A channel dataset starts empty, grows along axis 0 as points arrive and is written by point
index (:func:`write_points`), so replaying points after a writer restart never duplicates
them. Variable-length 1-D channels grow along axis 1 too and keep their true lengths in a
sibling ``<name>_lengths`` dataset.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import h5py
import numpy as np

from ..._protocol import codecs
from ...exceptions import EncodingError, NexusLayoutError
from .compression import DEFAULT_COMPRESSION, compression_options
from .layout import CHANNEL_ATTR, link_placed, place_channel
from .metadata import hdf5_name

__all__ = [
    "CHUNK_MAX_ROWS",
    "CHUNK_RAGGED_WIDTH",
    "CHUNK_TARGET_BYTES",
    "channel_dataset_name",
    "fill_value_for",
    "lengths_dataset_name",
    "require_channel_dataset",
    "write_points",
]

logger = logging.getLogger(__name__)

#: Upper bound of the bytes of a multi-point chunk. Points larger than this get one point
#: per chunk (a full frame, which is how images are read back).
CHUNK_TARGET_BYTES = 1 << 20
#: Upper bound of the points per chunk. HDF5 writes a partially filled chunk in full at each
#: flush, so with a 250 ms flush period a slow scalar channel costs one chunk write per flush:
#: 2048 float64 points = 16 KiB, i.e. 64 KiB/s per channel, instead of 4 MiB/s with 1 MiB
#: chunks. Fast channels fill their chunks between flushes anyway.
CHUNK_MAX_ROWS = 2048
#: Chunk width (elements) along axis 1 of variable-length 1-D channels.
CHUNK_RAGGED_WIDTH = 1024


def lengths_dataset_name(dataset_name: str) -> str:
    """Name of the sibling dataset holding the true lengths of a variable-length channel."""
    return f"{dataset_name}_lengths"


def channel_dataset_name(channel_name: str) -> str:
    """Dataset name of a channel in the legacy layout (and in groups that are not an entry's
    ``measurement``): its full name (``"axis:roby"``) with ``'/'`` -> ``'_'``.

    The original name is kept in the dataset's ``@long_name`` attribute, which is also how a
    clash between two channels that map to the same name (``"a/b"`` and ``"a_b"``) is
    detected (:func:`require_channel_dataset` raises).
    """
    return hdf5_name(channel_name)


def fill_value_for(dtype: Any) -> Any:
    """Fill (padding) value of a dtype: NaN for floats/complex, 0 for integers, False for bool.

    The data model's one padding rule (:func:`scanstream._protocol.codecs.fill_value`, which
    the subscriber pads variable-length points with too), for a dataset's fill value.

    Raises
    ------
    NexusLayoutError
        ``dtype`` is not one a channel can hold.
    """
    try:
        return codecs.fill_value(dtype)
    except EncodingError as exc:
        raise NexusLayoutError(str(exc)) from None


def _chunk_rows(point_bytes: int, expected_points: int | None) -> int:
    rows = max(1, min(CHUNK_TARGET_BYTES // max(point_bytes, 1), CHUNK_MAX_ROWS))
    if expected_points is not None and expected_points > 0:
        # A 10-point scan must not allocate 2048-point chunks in every channel.
        rows = min(rows, int(expected_points))
    return rows


def require_channel_dataset(
    group: h5py.Group,
    name: str,
    dtype: Any,
    point_shape: Sequence[int] = (),
    *,
    expected_points: int | None = None,
    units: str | None = None,
    compression: str | None = DEFAULT_COMPRESSION,
) -> h5py.Dataset:
    """Create (or check and return) the dataset of one channel, empty and growing.

    Parameters
    ----------
    group : h5py.Group
        Usually the entry's ``measurement`` group. In an entry of the esrf layout
        (:mod:`~scanstream.writer.nexus.layout`) the dataset is created in the channel's
        device group (``instrument/<device>/data``, or ``value`` for a motor) and
        ``measurement/<short name>`` links to it; ``@scanstream_channel`` holds ``name``.
        In any other group (or the legacy layout) the dataset is ``group[<full name>]``
        (:func:`channel_dataset_name`) and ``@long_name`` holds ``name``.
    name : str
        Full channel name.
    dtype : numpy dtype
        Numbers or bool.
    point_shape : tuple of int
        Shape of one point: ``()`` scalar, ``(n,)`` spectrum, ``(h, w)`` image, or ``(-1,)``
        for a variable-length 1-D channel (each point a 1-D array of its own length).
    expected_points : int, optional
        ``scan_info["npoints"]`` when known (> 0). Only used to keep chunks no larger than
        the scan; the dataset never gets preallocated.
    units : str, optional
        Stored as ``@units``.
    compression : str, optional
        One of :data:`~scanstream.writer.nexus.compression.COMPRESSIONS` (None = none);
        applied only to datasets whose chunks are large enough to gain
        (:func:`~scanstream.writer.nexus.compression.compression_options`). Default
        bitshuffle-LZ4.

    Returns
    -------
    h5py.Dataset
        Shape ``(0,) + point_shape`` when new, ``maxshape = (None,) + point_shape``.
        Variable-length 1-D: shape ``(0, 0)``, ``maxshape = (None, None)``; rows are padded
        with :func:`fill_value_for` and the sibling dataset ``<name>_lengths`` (int64, one
        entry per point) gives each point's true length; ``@lengths_dataset`` names it.

    Notes
    -----
    Chunks: ``rows = clamp(CHUNK_TARGET_BYTES // point_bytes, 1, CHUNK_MAX_ROWS)``, further
    capped by ``expected_points``; points of ``CHUNK_TARGET_BYTES`` or more (large frames)
    get one point per chunk. The fill value (only ever visible as ragged padding: rows are
    written as soon as the dataset grows) is :func:`fill_value_for`.

    Raises
    ------
    NexusLayoutError
        Unsupported dtype or shape, or an existing object under that name that is not a
        compatible dataset (other dtype, point shape, fixed size, other channel).
    """
    dt = np.dtype(dtype)
    fill = fill_value_for(dt)
    shape = tuple(int(n) for n in point_shape)
    ragged = shape == (-1,)
    if not ragged and any(n < 0 for n in shape):
        raise NexusLayoutError(
            f"channel {name!r}: point_shape {shape} not supported; give fixed sizes, or (-1,)"
            " for a variable-length 1-D channel (the only variable axis supported)"
        )
    placement = place_channel(group, name, len(shape))
    if placement is None:
        where, dsname, identity = group, channel_dataset_name(name), "long_name"
    else:
        where, dsname, identity = placement.device, placement.member, CHANNEL_ATTR
    if ragged:
        lengths_name = lengths_dataset_name(dsname)
        rows = _chunk_rows(CHUNK_RAGGED_WIDTH * dt.itemsize, expected_points)
        lengths = _require_growing(
            where,
            lengths_name,
            np.dtype(np.int64),
            (),
            (rows,),
            0,
            None,
            identity=(identity, f"{name} lengths"),
        )
        chunks: tuple[int, ...] = (rows, CHUNK_RAGGED_WIDTH)
        dset = _require_growing(
            where, dsname, dt, (0,), chunks, fill, compression, identity=(identity, name)
        )
        if lengths.shape[0] < dset.shape[0]:
            raise NexusLayoutError(
                f"{lengths.name!r} has {lengths.shape[0]} entries for {dset.shape[0]} points"
                f" of {dset.name!r}: the lengths of some points are unknown; delete both"
                " datasets and write the channel again"
            )
        # Absolute in the esrf layout: readers open the dataset through measurement/, whose
        # group is not the one that holds the lengths.
        ref = lengths.name if placement is not None else lengths_name
        if dset.attrs.get("lengths_dataset") != ref:
            dset.attrs["lengths_dataset"] = ref
        interpretation: str | None = "spectrum"
    else:
        point_bytes = dt.itemsize * int(np.prod(shape, dtype=np.int64))
        rows = _chunk_rows(point_bytes, expected_points)
        dset = _require_growing(
            where, dsname, dt, shape, (rows,) + shape, fill, compression, identity=(identity, name)
        )
        interpretation = {0: "scalar", 1: "spectrum", 2: "image"}.get(len(shape))
    if interpretation and dset.attrs.get("interpretation") != interpretation:
        dset.attrs["interpretation"] = interpretation
    if units and dset.attrs.get("units") != units:
        dset.attrs["units"] = units
    if placement is not None:
        link_placed(group, placement, dset)
    return dset


def _require_growing(
    group: h5py.Group,
    name: str,
    dtype: np.dtype,
    point_shape: tuple[int, ...],
    chunks: tuple[int, ...],
    fill: Any,
    compression: str | None,
    *,
    identity: tuple[str, str],
) -> h5py.Dataset:
    """Create a 0-length dataset growing on axis 0 (and axis 1 when ragged), or check it.

    ``point_shape == (0,)`` means ragged: shape ``(0, 0)`` and both axes unlimited.
    """
    ragged = point_shape == (0,)
    maxshape = (None, None) if ragged else (None,) + point_shape
    cache = _chunk_cache_bytes(dtype, chunks)
    attr, long_name = identity
    obj = group.get(name)
    if obj is None:
        chunk_bytes = int(np.prod(chunks, dtype=np.int64)) * dtype.itemsize
        dset = group.create_dataset(
            name,
            shape=(0,) + point_shape,
            maxshape=maxshape,
            dtype=dtype,
            chunks=chunks,
            fillvalue=fill,
            rdcc_nbytes=cache,
            **compression_options(compression, chunk_bytes),
        )
        dset.attrs[attr] = long_name
        return dset
    where = f"{group.name}/{name} in {group.file.filename!r}"
    if not isinstance(obj, h5py.Dataset) or obj.is_virtual:
        raise NexusLayoutError(
            f"{where} exists and is not a plain dataset; cannot store channel {long_name!r}"
            " there: delete it or write the scan to another entry"
        )
    if obj.dtype != dtype:
        raise NexusLayoutError(
            f"{where} has dtype {obj.dtype}, channel {long_name!r} has {dtype}: the entry was"
            " written by another scan; write this scan to another entry"
        )
    if obj.maxshape != maxshape or (not ragged and obj.shape[1:] != point_shape):
        raise NexusLayoutError(
            f"{where} has shape {obj.shape} (max {obj.maxshape}); channel {long_name!r} needs"
            f" max shape {maxshape}: the entry was written by another scan; write this scan"
            " to another entry"
        )
    existing = obj.attrs.get(attr)
    if isinstance(existing, bytes):
        existing = existing.decode()
    if existing is not None and existing != long_name:
        raise NexusLayoutError(
            f"{where} belongs to channel {existing!r}, not {long_name!r} (both map to the same"
            " dataset name); rename one of the channels"
        )
    return obj


def _chunk_cache_bytes(dtype: np.dtype, chunks: tuple[int, ...]) -> int:
    """Chunk cache of a growing dataset: room for the chunk being filled and the one before.

    Points are appended, so older chunks are never needed again; HDF5's default (1 MiB per
    dataset, kept full of written chunks) made a 100-channel writer grow by ~200 MiB over a
    30 s scan. Two chunks keep a chunk being filled by small batches in memory until full.
    Only set when the dataset is created (an existing one, after a restart, keeps the default).
    """
    return max(2 * int(np.prod(chunks, dtype=np.int64)) * dtype.itemsize, 64 << 10)


def write_points(dset: h5py.Dataset, first_index: int, data: Any) -> int:
    """Write points ``[first_index, first_index + n)`` of a channel dataset, growing it.

    Idempotent by index: writing rows that are already there overwrites them (with the same
    values, for a writer that replays data after a restart), so no point is ever duplicated.

    Parameters
    ----------
    dset : h5py.Dataset
        From :func:`require_channel_dataset`.
    first_index : int
        Index of the first point of ``data``. Must be <= ``len(dset)``: a gap would leave
        fill values that look like data.
    data : array_like
        Shape ``(n,) + point_shape``. For a variable-length 1-D channel, a sequence of n 1-D
        arrays of any lengths (or an ``(n, m)`` array): axis 1 is widened to the longest
        point, shorter rows are padded with the fill value, the lengths go to
        ``<name>_lengths``.

    Returns
    -------
    int
        ``first_index + n``, the next index to write.
    """
    if isinstance(first_index, bool) or not isinstance(first_index, (int, np.integer)):
        raise NexusLayoutError(
            f"write_points({dset.name!r}): first_index must be an int, got {first_index!r}"
        )
    first = int(first_index)
    current = dset.shape[0]
    if first < 0 or first > current:
        raise NexusLayoutError(
            f"cannot write {dset.name!r} from index {first}: it has {current} points, and a"
            f" gap would leave fill values that look like data; write from index <= {current}"
        )
    lengths_name = dset.attrs.get("lengths_dataset")
    if lengths_name is not None:
        return _write_ragged(dset, dset.parent[lengths_name], first, data)
    arr = np.asarray(data)
    if arr.shape[1:] != dset.shape[1:] or arr.ndim != dset.ndim:
        raise NexusLayoutError(
            f"data of shape {arr.shape} does not fit {dset.name!r}: points have shape"
            f" {dset.shape[1:]}; pass an array of shape (n,) + {dset.shape[1:]}"
        )
    end = first + int(arr.shape[0])
    if arr.shape[0] == 0:
        return end
    if end > current:
        dset.resize(end, axis=0)
    dset[first:end] = arr
    return end


def _write_ragged(dset: h5py.Dataset, lengths: h5py.Dataset, first: int, data: Any) -> int:
    if isinstance(data, np.ndarray) and data.dtype != object:
        if data.ndim != 2:
            raise NexusLayoutError(
                f"{dset.name!r} is variable-length 1-D: pass n 1-D points (a list of arrays or"
                f" an (n, m) array), got shape {data.shape}"
            )
        points: list[np.ndarray] = list(data)
    else:
        points = [np.asarray(p) for p in data]
        for i, p in enumerate(points):
            if p.ndim != 1:
                raise NexusLayoutError(
                    f"{dset.name!r} is variable-length 1-D: point {first + i} has shape"
                    f" {p.shape}; pass 1-D points"
                )
    n = len(points)
    end = first + n
    if n == 0:
        return end
    sizes = np.array([p.shape[0] for p in points], dtype=np.int64)
    width = max(int(sizes.max()), dset.shape[1])
    if width > dset.shape[1]:
        # Old rows read the dataset fill value in the new columns.
        dset.resize(width, axis=1)
    # Rows are written whole up to the current width, so the padding never depends on what
    # HDF5 left in a chunk.
    buf = np.full((n, width), dset.fillvalue, dtype=dset.dtype)
    for i, p in enumerate(points):
        buf[i, : p.shape[0]] = p
    if end > dset.shape[0]:
        dset.resize(end, axis=0)
    if end > lengths.shape[0]:
        lengths.resize(end, axis=0)
    dset[first:end] = buf
    lengths[first:end] = sizes
    return end
