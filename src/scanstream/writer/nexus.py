"""HDF5/NeXus layout of scanstream files: a pure h5py layer with no Redis knowledge.

The writer service opens a file with :func:`open_nexus_file` and calls these functions as
events arrive. Every function is *require*-style: calling it again with the same inputs (for
example after a writer restart) leaves the file as it is, calling it with more data extends
the file, and an existing object that cannot hold the request (another dtype, shape or kind)
raises :class:`ValueError` naming the object, rather than being silently reused.

Layout of one scan (``N`` = scan number, ``k`` = top-master index)::

    /                               NXroot  @creator="scanstream" @default=<last plotted entry>
      N.k/                          NXentry title, start_time, end_time, end_reason, [error],
                                            duration, entry_identifier, program_name
        scan_info/                  NXnote  type="application/json", data=<scan_info JSON>
        measurement/                NXcollection: one dataset per channel, named after the
                                            full channel name ("axis:roby", '/' -> '_')
          <chan>                    (npoints, *point_shape), chunked, grows from 0
          <chan>_lengths            (variable-length 1-D channels only) true lengths
          <lima chan>               virtual dataset (nframes, h, w) over the detector files
          <lima chan>_references    (nframes, 4) str: file, path_in_file, index, format
        instrument/                 NXinstrument: scan_info["instrument"], positioners_*
        plotselect/ | <plot name>/  NXdata: soft links to measurement datasets
        scans/                      NXcollection: soft links to sub-scan entries (groups)

Entry names follow BLISS (``"12.1"``). Strict NeXus naming rules reject the dot, so
:func:`entry_name` offers ``strict_names=True`` (``"scan12_1"``).

Reading while writing
---------------------
Files must be opened with HDF5 file locking disabled (:func:`open_nexus_file`): with locking
on, a viewer that has the file open in ``"r"`` mode makes the writer's open fail at once with
``BlockingIOError: unable to lock file (errno 11)`` and, the other way round, a writer holding
the file makes every reader with default settings fail the same way. With ``locking=False``
on the writer side, readers with *default* settings open the file and see everything written
up to the writer's last ``flush()``. This works because the file keeps the default (earliest)
format bounds: with ``libver="latest"`` (superblock v3) HDF5 marks the file "open for write"
and readers fail with ``file is already open for write``. SWMR is not used: it forbids
creating groups, datasets and attributes once it is on, which an incremental writer of many
scans in one file needs all the time. A reader that keeps the file open while it is written
may see stale or inconsistent metadata; readers should reopen (or retry) to see new data.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import h5py
import numpy as np

from .nexus_metadata import (
    NX_COLLECTION,
    STR_DTYPE,
    hdf5_name,
    require_nx_group,
    to_json,
    write_metadata,
    write_positioners,
    write_scan_info_positioners,
    write_value,
)

__all__ = [
    "CHUNK_MAX_ROWS",
    "CHUNK_TARGET_BYTES",
    "END_STATES",
    "ImageReference",
    "channel_dataset_name",
    "entry_name",
    "fill_value_for",
    "finalize_entry",
    "hdf5_name",
    "is_hdf5_format",
    "iso8601",
    "link_subscan_entries",
    "open_nexus_file",
    "require_channel_dataset",
    "require_entry",
    "require_image_vds",
    "require_nx_group",
    "write_default_plot",
    "write_metadata",
    "write_points",
    "write_positioners",
    "write_scan_info_positioners",
    "write_value",
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
#: Usual end states (:class:`scanstream.models.ScanState` names). Others are accepted too.
END_STATES = ("DONE", "USER_ABORTED", "KILLED", "FAILED")

#: ``(file_path, path_in_file, index_in_file, format)`` of one detector frame.
ImageReference = tuple[str, str, int, str]
_PathLike = Union[str, "os.PathLike[str]"]


# --------------------------------------------------------------------------- file and names


def open_nexus_file(path: _PathLike, mode: str = "a", **kwargs: Any) -> h5py.File:
    """Open ``path`` the way the writer must: HDF5 file locking off, default format bounds.

    See "Reading while writing" in the module docstring for why: with locking on, a viewer
    that has the file open makes the writer fail, and the writer makes viewers fail.
    ``kwargs`` go to :class:`h5py.File` (``libver="latest"`` is refused: readers could not
    open the file while it is open for writing).
    """
    if kwargs.get("libver") in ("latest", ("latest", "latest")):
        raise ValueError("libver='latest' makes the file unreadable while it is being written")
    kwargs.setdefault("locking", False)
    return h5py.File(path, mode, **kwargs)


def entry_name(scan_number: int, top_master_index: int = 1, *, strict_names: bool = False) -> str:
    """Name of the NXentry of a scan: ``"12.1"``, ``"12.2"``... (BLISS convention).

    Parameters
    ----------
    scan_number : int
        Scan number (>= 0).
    top_master_index : int
        1 for the first top master of the acquisition chain, 2, 3... for the next ones.
    strict_names : bool
        Give a name that follows the strict NeXus naming rule
        ``^[a-zA-Z0-9_]([a-zA-Z0-9_.]*[a-zA-Z0-9_])?$`` written for portability: ``"scan12_1"``
        (a name may not start with a digit). Default False: BLISS readers expect ``"12.1"``.
    """
    if isinstance(scan_number, bool) or not isinstance(scan_number, (int, np.integer)):
        raise ValueError(f"scan_number must be an int, got {scan_number!r}")
    if isinstance(top_master_index, bool) or not isinstance(top_master_index, (int, np.integer)):
        raise ValueError(f"top_master_index must be an int, got {top_master_index!r}")
    if scan_number < 0:
        raise ValueError(f"scan_number must be >= 0, got {scan_number}")
    if top_master_index < 1:
        raise ValueError(f"top_master_index starts at 1, got {top_master_index}")
    if strict_names:
        return f"scan{int(scan_number)}_{int(top_master_index)}"
    return f"{int(scan_number)}.{int(top_master_index)}"


def iso8601(timestamp: float) -> str:
    """Local time of the epoch ``timestamp`` in ISO 8601, with the UTC offset of that instant.

    The offset is the one in force at ``timestamp`` (DST-aware), with the ISO sign
    convention: Paris in summer gives ``+02:00``, New York in winter ``-05:00``. (The legacy
    BLISS example writer had the sign reversed.) The instant is first made aware in UTC and
    then converted, so the repeated hour at the end of DST is also labelled right.
    """
    utc = datetime.datetime.fromtimestamp(float(timestamp), tz=datetime.timezone.utc)
    return utc.astimezone().isoformat()


def _as_iso(value: float | str | datetime.datetime) -> str:
    """ISO 8601 text of a timestamp, an ISO string (kept) or a datetime (naive = local)."""
    if isinstance(value, str):
        return value
    if isinstance(value, datetime.datetime):
        return value.astimezone().isoformat()
    return iso8601(float(value))


def channel_dataset_name(channel_name: str) -> str:
    """Dataset name of a channel: its full name (``"axis:roby"``) with ``'/'`` -> ``'_'``.

    The original name is kept in the dataset's ``@long_name`` attribute, which is also how a
    clash between two channels that map to the same name (``"a/b"`` and ``"a_b"``) is
    detected (:func:`require_channel_dataset` raises).
    """
    return hdf5_name(channel_name)


# --------------------------------------------------------------------------- entries


def require_entry(
    file: h5py.Group,
    name: str,
    *,
    title: str,
    start_time: float | str | datetime.datetime,
    scan_info: Mapping[str, Any] | None = None,
) -> h5py.Group:
    """Create (or return) the NXentry ``name`` with its ``measurement`` and ``instrument``.

    Parameters
    ----------
    file : h5py.File or h5py.Group
        Where the entry goes (normally the open file). On a file whose root has no
        ``NX_class`` yet, the NXroot attributes are written: ``NX_class``, ``creator``,
        ``file_name``, ``file_time``, ``HDF5_Version``, ``h5py_version``.
    name : str
        Entry name, from :func:`entry_name`.
    title : str
        Scan title (``scan_info["title"]``).
    start_time : float, str or datetime
        Epoch timestamp (converted with :func:`iso8601`) or ready ISO 8601 text.
    scan_info : Mapping, optional
        Stored whole as JSON in the NXnote ``scan_info`` (so the file alone is enough to
        rebuild the scan's metadata); ``scan_info["scan_nb"]`` also gives
        ``entry_identifier``. Pass it again to :func:`finalize_entry` to store the final one.

    Returns
    -------
    h5py.Group
        The NXentry. It holds ``measurement`` (NXcollection) and ``instrument``
        (NXinstrument).
    """
    _require_root_attrs(file.file)
    entry = require_nx_group(file, hdf5_name(name), "NXentry")
    write_value(entry, "title", str(title))
    write_value(entry, "start_time", _as_iso(start_time))
    write_value(entry, "program_name", "scanstream")
    require_nx_group(entry, "measurement", NX_COLLECTION)
    require_nx_group(entry, "instrument", "NXinstrument")
    if scan_info is not None:
        if scan_info.get("scan_nb") is not None:
            write_value(entry, "entry_identifier", str(scan_info["scan_nb"]))
        _write_scan_info_note(entry, scan_info)
    return entry


def finalize_entry(
    entry: h5py.Group,
    *,
    end_time: float | str | datetime.datetime,
    state: Any,
    error: str | None = None,
    scan_info: Mapping[str, Any] | None = None,
) -> None:
    """Record how the scan ended, idempotently (a later call with other values replaces them).

    Writes ``end_time`` (ISO 8601), ``end_reason`` (the state name: ``"DONE"``,
    ``"USER_ABORTED"``, ``"KILLED"``, ``"FAILED"``), ``error`` (the error text; removed when
    ``error`` is None, so a stale error from an earlier attempt does not survive),
    ``duration`` (seconds, when ``start_time`` can be parsed), the NXnote ``scan_info``
    when given, and the root ``file_update_time``.

    Parameters
    ----------
    state : str or enum
        An end state; an enum member (``ScanState.DONE``) is stored by its ``name``.
    """
    reason = getattr(state, "name", state)
    if not isinstance(reason, str) or not reason:
        raise ValueError(f"end state must be a state name or enum member, got {state!r}")
    if reason not in END_STATES:
        logger.warning("%s: unusual end state %r", entry.name, reason)
    end_iso = _as_iso(end_time)
    write_value(entry, "end_time", end_iso)
    write_value(entry, "end_reason", reason)
    if error:
        write_value(entry, "error", str(error))
    elif "error" in entry:
        del entry["error"]
    start = entry.get("start_time")
    if isinstance(start, h5py.Dataset):
        try:
            t0 = datetime.datetime.fromisoformat(start.asstr()[()])
            t1 = datetime.datetime.fromisoformat(end_iso)
            duration = write_value(entry, "duration", (t1 - t0).total_seconds())
            if duration is not None and duration.attrs.get("units") != "s":
                duration.attrs["units"] = "s"
        except (TypeError, ValueError):
            logger.debug("%s: no duration (start or end time not ISO 8601)", entry.name)
    if scan_info is not None:
        _write_scan_info_note(entry, scan_info)
    write_value(entry.file, "file_update_time", iso8601(datetime.datetime.now().timestamp()))


def _require_root_attrs(file: h5py.File) -> None:
    """Write the NXroot attributes once, when the file is new to NeXus."""
    if "NX_class" in file.attrs:
        return
    file.attrs["NX_class"] = "NXroot"
    file.attrs["creator"] = "scanstream"
    file.attrs["file_name"] = os.path.abspath(file.filename)
    file.attrs["file_time"] = iso8601(datetime.datetime.now().timestamp())
    file.attrs["HDF5_Version"] = h5py.version.hdf5_version
    file.attrs["h5py_version"] = h5py.version.version


def _write_scan_info_note(entry: h5py.Group, scan_info: Mapping[str, Any]) -> None:
    note = require_nx_group(entry, "scan_info", "NXnote")
    write_value(note, "type", "application/json")
    write_value(note, "data", to_json(dict(scan_info)))


# --------------------------------------------------------------------------- channels


def fill_value_for(dtype: Any) -> Any:
    """Fill (padding) value of a dtype: NaN for floats/complex, 0 for integers, False for bool."""
    dt = np.dtype(dtype)
    if dt.kind in "fc":
        return dt.type(np.nan)
    if dt.kind == "b":
        return False
    if dt.kind in "iu":
        return dt.type(0)
    raise ValueError(f"channel dtype {dt} is not supported (numbers and bool only)")


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
    compression: str | None = None,
) -> h5py.Dataset:
    """Create (or check and return) the dataset of one channel, empty and growing.

    Parameters
    ----------
    group : h5py.Group
        Usually the entry's ``measurement`` group.
    name : str
        Full channel name; the dataset is named :func:`channel_dataset_name` (``name`` with
        ``'/'`` -> ``'_'``) and ``@long_name`` holds ``name``.
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
        h5py compression filter (``"gzip"``, ``"lzf"``); none by default (fast, readable
        everywhere).

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
    capped by ``expected_points``; images get one frame per chunk. The fill value (only ever
    visible as ragged padding: rows are written as soon as the dataset grows) is
    :func:`fill_value_for`.

    Raises
    ------
    ValueError
        Unsupported dtype or shape, or an existing object under that name that is not a
        compatible dataset (other dtype, point shape, fixed size, other channel).
    """
    dt = np.dtype(dtype)
    fill = fill_value_for(dt)
    shape = tuple(int(n) for n in point_shape)
    ragged = shape == (-1,)
    if not ragged and any(n < 0 for n in shape):
        raise ValueError(
            f"channel {name!r}: point_shape {shape} not supported; only (-1,) (variable-length"
            " 1-D) may have a variable axis"
        )
    dsname = channel_dataset_name(name)
    if ragged:
        lengths_name = f"{dsname}_lengths"
        rows = _chunk_rows(CHUNK_RAGGED_WIDTH * dt.itemsize, expected_points)
        lengths = _require_growing(group, lengths_name, np.dtype(np.int64), (), (rows,), 0, None,
                                   long_name=f"{name} lengths")
        dset = _require_growing(group, dsname, dt, (0,), (rows, CHUNK_RAGGED_WIDTH), fill,
                                compression, long_name=name)
        if lengths.shape[0] < dset.shape[0]:
            raise ValueError(
                f"{lengths.name!r} has {lengths.shape[0]} entries for {dset.shape[0]} points"
                f" of {dset.name!r}: the lengths of some points are unknown"
            )
        if dset.attrs.get("lengths_dataset") != lengths_name:
            dset.attrs["lengths_dataset"] = lengths_name
        interpretation = "spectrum"
    else:
        point_bytes = dt.itemsize * int(np.prod(shape, dtype=np.int64))
        rows = _chunk_rows(point_bytes, expected_points)
        dset = _require_growing(group, dsname, dt, shape, (rows,) + shape, fill, compression,
                                long_name=name)
        interpretation = {1: "spectrum", 2: "image"}.get(len(shape))
    if interpretation and dset.attrs.get("interpretation") != interpretation:
        dset.attrs["interpretation"] = interpretation
    if units and dset.attrs.get("units") != units:
        dset.attrs["units"] = units
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
    long_name: str,
) -> h5py.Dataset:
    """Create a 0-length dataset growing on axis 0 (and axis 1 when ragged), or check it.

    ``point_shape == (0,)`` means ragged: shape ``(0, 0)`` and both axes unlimited.
    """
    ragged = point_shape == (0,)
    maxshape = (None, None) if ragged else (None,) + point_shape
    obj = group.get(name)
    if obj is None:
        dset = group.create_dataset(
            name,
            shape=(0,) + point_shape,
            maxshape=maxshape,
            dtype=dtype,
            chunks=chunks,
            fillvalue=fill,
            compression=compression,
        )
        dset.attrs["long_name"] = long_name
        return dset
    where = f"{group.name}/{name} in {group.file.filename!r}"
    if not isinstance(obj, h5py.Dataset) or obj.is_virtual:
        raise ValueError(f"{where} exists and is not a plain dataset; cannot store {long_name!r}")
    if obj.dtype != dtype:
        raise ValueError(f"{where} has dtype {obj.dtype}, channel {long_name!r} has {dtype}")
    if obj.maxshape != maxshape or (not ragged and obj.shape[1:] != point_shape):
        raise ValueError(
            f"{where} has shape {obj.shape} (max {obj.maxshape}); channel {long_name!r} needs"
            f" max shape {maxshape}"
        )
    existing = obj.attrs.get("long_name")
    if isinstance(existing, bytes):
        existing = existing.decode()
    if existing is not None and existing != long_name:
        raise ValueError(f"{where} belongs to channel {existing!r}, not {long_name!r}")
    return obj


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
        raise ValueError(f"first_index must be an int, got {first_index!r}")
    first = int(first_index)
    current = dset.shape[0]
    if first < 0 or first > current:
        raise ValueError(
            f"cannot write {dset.name!r} from index {first}: it has {current} points, and a"
            " gap would leave fill values that look like data"
        )
    lengths_name = dset.attrs.get("lengths_dataset")
    if lengths_name is not None:
        return _write_ragged(dset, dset.parent[lengths_name], first, data)
    arr = np.asarray(data)
    if arr.shape[1:] != dset.shape[1:] or arr.ndim != dset.ndim:
        raise ValueError(
            f"data of shape {arr.shape} does not fit {dset.name!r}: points have shape"
            f" {dset.shape[1:]}, expected (n,) + {dset.shape[1:]}"
        )
    end = first + arr.shape[0]
    if arr.shape[0] == 0:
        return end
    if end > current:
        dset.resize(end, axis=0)
    dset[first:end] = arr
    return end


def _write_ragged(dset: h5py.Dataset, lengths: h5py.Dataset, first: int, data: Any) -> int:
    if isinstance(data, np.ndarray) and data.dtype != object:
        if data.ndim != 2:
            raise ValueError(f"{dset.name!r}: expected n 1-D points, got shape {data.shape}")
        points: list[np.ndarray] = list(data)
    else:
        points = [np.asarray(p) for p in data]
        for i, p in enumerate(points):
            if p.ndim != 1:
                raise ValueError(f"{dset.name!r}: point {first + i} has shape {p.shape}, not 1-D")
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


# --------------------------------------------------------------------------- images


def is_hdf5_format(file_format: str) -> bool:
    """True for Lima file formats stored as HDF5 datasets (``HDF5``, ``HDF5GZ``, ``HDF5BS``).

    Compressed variants map into a VDS like plain ones; readers need the filter plugin.
    """
    return str(file_format).upper().startswith("HDF5")


@dataclass(frozen=True)
class _Block:
    """Frames ``[v0, v1)`` of the VDS = frames ``[s0, s0 + v1 - v0)`` of one source dataset."""

    v0: int
    v1: int
    file: str  # as stored in the VDS: "." (same file), relative or absolute, '%' escaped
    dset: str
    s0: int

    def clip(self, start: int, stop: int) -> _Block | None:
        a, b = max(self.v0, start), min(self.v1, stop)
        if a >= b:
            return None
        return _Block(a, b, self.file, self.dset, self.s0 + a - self.v0)

    def continues(self, other: _Block) -> bool:
        """True when ``other`` directly follows this block in both the VDS and the source."""
        return (other.file, other.dset) == (self.file, self.dset) and other.v0 == self.v1 \
            and other.s0 == self.s0 + self.v1 - self.v0


def _merge(blocks: Iterable[_Block]) -> list[_Block]:
    merged: list[_Block] = []
    for block in blocks:
        if merged and merged[-1].continues(block):
            last = merged[-1]
            merged[-1] = _Block(last.v0, block.v1, last.file, last.dset, last.s0)
        else:
            merged.append(block)
    return merged


def _vds_escape(name: str) -> str:
    # HDF5 parses VDS source names as printf-like patterns ("%b" = block number).
    return name.replace("%", "%%")


def _stored_path(file_path: str, master_dir: str, master_file: str) -> str:
    """Path of a detector file as the master file stores it (unescaped).

    Relative to the master's directory when the file is below it (the folder can then be
    moved or mounted elsewhere), absolute otherwise, ``"."`` for the master file itself.
    A relative ``file_path`` is taken relative to ``master_dir``.
    """
    path = os.path.normpath(os.path.join(master_dir, os.fspath(file_path)))
    if path == master_file:
        return "."
    try:
        below = os.path.commonpath([path, master_dir]) == master_dir
    except ValueError:  # different drives (Windows)
        below = False
    return os.path.relpath(path, master_dir) if below else path


def require_image_vds(
    group: h5py.Group,
    name: str,
    references: Sequence[Sequence[Any]],
    *,
    dtype: Any,
    frame_shape: Sequence[int],
    file_dir: _PathLike | None = None,
    first_index: int = 0,
) -> h5py.Dataset | None:
    """Map detector frames into the virtual dataset ``group[name]`` (nframes, *frame_shape).

    Call it again as frames arrive, with all references (``first_index=0``) or with the new
    ones only (``first_index`` = index of the first of them): the mapping already in the file
    is kept for the frames before ``first_index`` (and after the new ones), so a call costs
    O(number of mapped blocks + new references), not O(all frames). The virtual dataset is
    deleted and recreated when its mapping changes (it is metadata only); the same call
    twice leaves it untouched.

    Parameters
    ----------
    group : h5py.Group
        Usually the entry's ``measurement`` group.
    name : str
        Full channel name (mapped with :func:`channel_dataset_name`).
    references : sequence of (file_path, path_in_file, index_in_file, format)
        One per frame, in frame order. Consecutive frames of the same source dataset become
        ONE VirtualSource block (HDF5 slows down above ~1000 sources).
    dtype, frame_shape :
        Of one frame, e.g. ``uint16`` and ``(h, w)``.
    file_dir : path, optional
        Directory that relative paths are computed against; default the master file's.
        Detector files below it are stored with relative paths (HDF5 looks them up relative
        to the master file), others with absolute paths.
    first_index : int
        Frame index of ``references[0]``; must be <= the current number of frames.

    Returns
    -------
    h5py.Dataset or None
        The virtual dataset, fill value :func:`fill_value_for` (what readers get for frames
        whose file is missing or not yet written). None when a reference is not in an HDF5
        format (EDF, CBF...): then only the table is written (warning logged once).

    Notes
    -----
    The sibling dataset ``<name>_references`` (shape (nframes, 4), str, columns in
    ``@columns``: file, path_in_file, index_in_file, format) lists every frame for tools that
    do not follow virtual datasets; ``file`` is the stored path (relative to the master
    file's directory when below it).
    """
    dt = np.dtype(dtype)
    fshape = tuple(int(n) for n in frame_shape)
    dsname = channel_dataset_name(name)
    master_file = os.path.abspath(group.file.filename)
    master_dir = os.path.abspath(os.fspath(file_dir)) if file_dir else os.path.dirname(master_file)
    first = int(first_index)
    rows: list[tuple[str, str, int, str]] = []
    for ref in references:
        if len(ref) != 4:
            raise ValueError(f"image reference {ref!r} of {name!r} is not"
                             " (file_path, path_in_file, index_in_file, format)")
        file_path, path_in_file, index, file_format = ref
        rows.append((_stored_path(file_path, master_dir, master_file), str(path_in_file),
                     int(index), str(file_format)))

    table_is_new = f"{dsname}_references" not in group
    _write_reference_table(group, f"{dsname}_references", first, rows, long_name=name)
    bad = sorted({r[3] for r in rows if not is_hdf5_format(r[3])})
    if bad:
        if table_is_new:
            logger.warning("%s/%s: frames in format %s cannot be mapped into a virtual dataset;"
                           " only the reference table is written", group.name, dsname, bad)
        return None

    existing = group.get(dsname)
    old_blocks: list[_Block] = []
    current = 0
    if existing is not None:
        where = f"{existing.name} in {group.file.filename!r}"
        if not isinstance(existing, h5py.Dataset) or not existing.is_virtual:
            raise ValueError(f"{where} exists and is not a virtual dataset")
        if existing.dtype != dt or existing.shape[1:] != fshape:
            raise ValueError(f"{where} is {existing.dtype} {existing.shape}; frames are {dt}"
                             f" {fshape}")
        current = existing.shape[0]
        old_blocks = _read_blocks(existing)
    if first < 0 or first > current:
        raise ValueError(f"cannot map frames of {dsname!r} from index {first}: it has"
                         f" {current} frames, a gap would read as fill values")
    stop = first + len(rows)
    new_blocks = [
        _Block(first + i, first + i + 1, _vds_escape(r[0]), _vds_escape(r[1]), r[2])
        for i, r in enumerate(rows)
    ]
    blocks = _merge(
        [b for b in (blk.clip(0, first) for blk in old_blocks) if b]
        + new_blocks
        + [b for b in (blk.clip(stop, 1 << 62) for blk in old_blocks) if b]
    )
    nframes = max(current, stop)
    if existing is not None and nframes == current and blocks == _merge(old_blocks):
        return existing
    layout = h5py.VirtualLayout(shape=(nframes,) + fshape, dtype=dt)
    for blk in blocks:
        count = blk.v1 - blk.v0
        source = h5py.VirtualSource(blk.file, blk.dset, shape=(blk.s0 + count,) + fshape,
                                    dtype=dt)
        layout[blk.v0:blk.v1] = source[blk.s0:blk.s0 + count]
    if existing is not None:
        del group[dsname]
    vds = group.create_virtual_dataset(dsname, layout, fillvalue=fill_value_for(dt))
    vds.attrs["long_name"] = name
    vds.attrs["interpretation"] = "image"
    logger.debug("%s: %d frames in %d virtual sources", vds.name, nframes, len(blocks))
    return vds


def _read_blocks(vds: h5py.Dataset) -> list[_Block]:
    """The mapping of an existing virtual dataset, as blocks along axis 0."""
    blocks = []
    for vmap in vds.virtual_sources():
        (v0, *_), (v1, *_) = vmap.vspace.get_select_bounds()
        (s0, *_), _ = vmap.src_space.get_select_bounds()
        # Names come back as stored, i.e. still '%'-escaped.
        blocks.append(_Block(int(v0), int(v1) + 1, vmap.file_name, vmap.dset_name, int(s0)))
    blocks.sort(key=lambda b: b.v0)
    return blocks


def _write_reference_table(group: h5py.Group, name: str, first: int,
                           rows: Sequence[tuple[str, str, int, str]], *, long_name: str) -> None:
    table = group.get(name)
    if table is None:
        table = group.create_dataset(name, shape=(0, 4), maxshape=(None, 4), dtype=STR_DTYPE,
                                     chunks=(256, 4))
        table.attrs["columns"] = ["file", "path_in_file", "index_in_file", "format"]
        table.attrs["long_name"] = f"{long_name} image references"
    elif not isinstance(table, h5py.Dataset) or table.shape[1:] != (4,):
        raise ValueError(f"{table.name!r} exists and is not an (n, 4) reference table")
    if first > table.shape[0]:
        raise ValueError(f"cannot write references of {name!r} from index {first}: it has"
                         f" {table.shape[0]} rows")
    if not rows:
        return
    stop = first + len(rows)
    if stop > table.shape[0]:
        table.resize(stop, axis=0)
    table[first:stop] = np.array([[f, p, str(i), fmt] for f, p, i, fmt in rows], dtype=object)


# --------------------------------------------------------------------------- default plot


@dataclass
class _Plot:
    name: str
    signals: list[str]
    axes: list[str]  # channel names; empty = plot against the point index
    scatter: bool = False
    title: str | None = None


def write_default_plot(
    entry: h5py.Group,
    plots: Sequence[Mapping[str, Any]] | None,
    channels: Mapping[str, str],
    *,
    scan_info: Mapping[str, Any] | None = None,
) -> h5py.Group | None:
    """Create NXdata groups for the scan's plots and point ``@default`` at the first one.

    Never raises: a plot naming an unknown channel is skipped with a warning, and any other
    problem is logged, because a plot is not worth failing a scan for.

    Parameters
    ----------
    entry : h5py.Group
        The NXentry.
    plots : list of dict or None
        ``scan_info["plots"]`` (BLISS format): ``{"kind": "curve-plot", "name"?, "items":
        [{"kind": "curve", "x", "y"}]}``, ``"scatter-plot"`` with ``{"kind": "scatter", "x",
        "y", "value"}`` items, ``"image-plot"`` with ``{"kind": "image", "image"}`` items.
        None: use ``scan_info["plots"]``, and when that is absent too, the fallback (first
        axis vs first counter; for ``data_dim == 2`` a scatter of the first counter over the
        first two axes; else the first image, else the first spectrum). An empty list means
        "no plot" (BLISS convention): nothing is written. A plot list that yields nothing
        usable also falls back.
    channels : Mapping[str, str]
        Channel full name -> dataset path (absolute, or relative to ``entry``). Order
        matters for the fallback. Datasets that do not exist yet are skipped.
    scan_info : Mapping, optional
        For ``plots``, ``data_dim``, ``acquisition_chain`` (which channels are masters),
        ``_display_extra["plotselect"]`` (the user's selected counters, plotted first as
        ``plotselect``) and ``title``.

    Returns
    -------
    h5py.Group or None
        The default NXdata group.

    Notes
    -----
    Each NXdata group is named after its plot (``plotselect`` for the fallback, ``plot<i>``
    for an unnamed plot). Its members are *soft links* to the measurement datasets, so they
    follow a virtual dataset that is recreated as frames arrive. Member names are the channel
    names with characters outside ``[A-Za-z0-9_]`` replaced by ``'_'`` (``axis:roby`` ->
    ``axis_roby``: ``':'`` was the separator of the old NeXus ``@axes`` string form); the
    full name stays in the target's ``@long_name``, which viewers use as the axis label.
    ``@default`` is set on the entry and on every parent up to the root, so the last scan
    plotted is the one viewers open.
    """
    try:
        return _write_default_plot(entry, plots, channels, scan_info or {})
    except Exception:
        logger.exception("%s: default plot not written", entry.name)
        return None


def _write_default_plot(entry: h5py.Group, plots: Sequence[Mapping[str, Any]] | None,
                        channels: Mapping[str, str], scan_info: Mapping[str, Any]
                        ) -> h5py.Group | None:
    if plots is None:
        plots = scan_info.get("plots")
    if plots is not None and len(plots) == 0:
        logger.debug("%s: scan_info asks for no plot", entry.name)
        return None
    datasets: dict[str, h5py.Dataset] = {}
    for channel, path in channels.items():
        obj = entry.get(path)
        if isinstance(obj, h5py.Dataset):
            datasets[channel] = obj
        else:
            logger.warning("%s: channel %r has no dataset at %r; not plotted",
                           entry.name, channel, path)
    specs = _plots_from_scan_info(entry, plots or [], datasets)
    plotselect = (scan_info.get("_display_extra") or {}).get("plotselect")
    if plotselect:
        ys = [y for y in plotselect if _known(entry, y, datasets)]
        if ys:
            axes = specs[0].axes if specs and not specs[0].scatter else \
                _fallback_axes(datasets, scan_info)[:1]
            specs.insert(0, _Plot("plotselect", ys, axes))
    if not specs:
        specs = _fallback_plot(datasets, scan_info)
    if not specs:
        logger.info("%s: no channel to plot", entry.name)
        return None
    default: h5py.Group | None = None
    used: set[str] = set()
    for spec in specs:
        group = _write_nxdata(entry, spec, datasets, used, scan_info.get("title"))
        if default is None:
            default = group
    if default is not None:
        _set_default_chain(default)
    return default


def _known(entry: h5py.Group, channel: Any, datasets: Mapping[str, h5py.Dataset]) -> bool:
    if channel in datasets:
        return True
    logger.warning("%s: plot names unknown channel %r; item skipped", entry.name, channel)
    return False


def _plots_from_scan_info(entry: h5py.Group, plots: Sequence[Mapping[str, Any]],
                          datasets: Mapping[str, h5py.Dataset]) -> list[_Plot]:
    specs: list[_Plot] = []
    for index, plot in enumerate(plots):
        if not isinstance(plot, Mapping):
            continue
        kind = plot.get("kind")
        base = str(plot.get("name") or f"plot{index}")
        items = [it for it in plot.get("items") or () if isinstance(it, Mapping)]
        if kind in ("curve-plot", "1d-plot"):
            by_x: dict[str, list[str]] = {}  # insertion ordered: first x is the main one
            for item in items:
                x, y = item.get("x"), item.get("y")
                if y is None or not _known(entry, y, datasets):
                    continue
                if x is not None and not _known(entry, x, datasets):
                    continue
                by_x.setdefault(x or "", []).append(y)
            for k, (x, ys) in enumerate(by_x.items()):
                specs.append(_Plot(base if k == 0 else f"{base}_{k}", ys, [x] if x else [],
                                   title=plot.get("name")))
        elif kind == "scatter-plot":
            for k, item in enumerate(items):
                names = [item.get("value"), item.get("x"), item.get("y")]
                if None in names or not all(_known(entry, n, datasets) for n in names):
                    continue
                specs.append(_Plot(base if k == 0 else f"{base}_{k}", [names[0]], names[1:],
                                   scatter=True, title=plot.get("name")))
        elif kind == "image-plot":
            for k, item in enumerate(items):
                image = item.get("image")
                if image is not None and _known(entry, image, datasets):
                    specs.append(_Plot(base if k == 0 else f"{base}_{k}", [image], [],
                                       title=plot.get("name")))
        else:
            logger.debug("%s: plot kind %r not written as NXdata", entry.name, kind)
    return specs


def _master_channels(scan_info: Mapping[str, Any]) -> list[str]:
    names: list[str] = []
    chain = scan_info.get("acquisition_chain") or {}
    if isinstance(chain, Mapping):
        for top in chain.values():
            master = (top or {}).get("master") or {}
            names.extend(master.get("scalars") or ())
    return names


def _fallback_axes(datasets: Mapping[str, h5py.Dataset], scan_info: Mapping[str, Any]
                   ) -> list[str]:
    scalars = [n for n, d in datasets.items() if d.ndim == 1]
    axes = [n for n in scalars if n.startswith("axis:")]
    if not axes:
        masters = set(_master_channels(scan_info))
        axes = [n for n in scalars if n in masters and not n.endswith("epoch")]
    return axes


def _fallback_plot(datasets: Mapping[str, h5py.Dataset], scan_info: Mapping[str, Any]
                   ) -> list[_Plot]:
    axes = _fallback_axes(datasets, scan_info)
    masters = set(_master_channels(scan_info)) | set(axes)
    counters = [n for n, d in datasets.items() if d.ndim == 1 and n not in masters
                and not n.endswith(("epoch", "elapsed_time"))]
    if counters:
        if scan_info.get("data_dim") == 2 and len(axes) >= 2:
            return [_Plot("plotselect", counters[:1], axes[:2], scatter=True)]
        return [_Plot("plotselect", counters[:1], axes[:1])]
    for ndim in (3, 2):  # images, then spectra
        for n, d in datasets.items():
            if d.ndim == ndim:
                return [_Plot("plotselect", [n], [])]
    return []


def _member_name(channel: str, used: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_]", "_", channel) or "data"
    name, k = base, 1
    while name in used:
        k += 1
        name = f"{base}_{k}"
    used.add(name)
    return name


def _write_nxdata(entry: h5py.Group, spec: _Plot, datasets: Mapping[str, h5py.Dataset],
                  used_groups: set[str], scan_title: Any) -> h5py.Group:
    gname = hdf5_name(spec.name)
    existing = entry.get(gname)
    while gname in used_groups or (
        existing is not None
        and not (isinstance(existing, h5py.Group) and existing.attrs.get("NX_class") == "NXdata")
    ):
        gname = f"plot_{gname}"
        existing = entry.get(gname)
    used_groups.add(gname)
    group = require_nx_group(entry, gname, "NXdata")
    members: set[str] = set()
    links: dict[str, str] = {}
    signal_names = []
    for channel in spec.signals:
        member = _member_name(channel, members)
        links[member] = datasets[channel].name
        signal_names.append(member)
    axis_names = []
    for channel in spec.axes:
        member = _member_name(channel, members)
        links[member] = datasets[channel].name
        axis_names.append(member)
    for member in list(group):  # drop members of an earlier call that are no longer plotted
        if member not in links:
            del group[member]
    for member, target in links.items():
        link = group.get(member, getlink=True)
        if isinstance(link, h5py.SoftLink) and link.path == target:
            continue
        if link is not None:
            del group[member]
        group[member] = h5py.SoftLink(target)
    signal_ndim = datasets[spec.signals[0]].ndim
    attrs: dict[str, Any] = {"signal": signal_names[0]}
    if len(signal_names) > 1:
        attrs["auxiliary_signals"] = signal_names[1:]
    if spec.scatter:
        # 1-D signal with one 1-D coordinate per axis, all along the point index: the
        # convention silx shows as a scatter plot (also right for an aborted mesh).
        attrs["axes"] = axis_names
        for name in axis_names:
            attrs[f"{name}_indices"] = 0
    else:
        first = axis_names[:1] or ["."]
        attrs["axes"] = first + ["."] * (signal_ndim - 1)
        for name in axis_names[:1]:
            attrs[f"{name}_indices"] = 0
    title = spec.title or scan_title
    if title:
        attrs["title"] = str(title)
    for key in list(group.attrs):
        if key not in attrs and key != "NX_class":
            del group.attrs[key]
    for key, value in attrs.items():
        group.attrs[key] = value
    return group


def _set_default_chain(nxdata: h5py.Group) -> None:
    """``@default`` on every ancestor of ``nxdata``, naming the child on the way down."""
    child = nxdata
    while child.name != "/":
        parent = child.parent
        basename = child.name.rsplit("/", 1)[-1]
        if parent.attrs.get("default") != basename:
            parent.attrs["default"] = basename
        child = parent


# --------------------------------------------------------------------------- scan groups


def link_subscan_entries(
    group_entry: h5py.Group,
    subscan_entry_names: Iterable[str | tuple[_PathLike, str]],
) -> h5py.Group:
    """Link the entries of the sub-scans of a scan group into ``<group_entry>/scans``.

    Parameters
    ----------
    group_entry : h5py.Group
        The NXentry of the scan group (sequence).
    subscan_entry_names : iterable of str or (file_path, entry_name)
        An entry name (``"13.1"``) of the same file gives a *soft link* ``scans/13.1`` ->
        ``/13.1``; a ``(file_path, entry_name)`` pair gives an external link (relative path
        when the file is below the master file's directory).

    Returns
    -------
    h5py.Group
        The NXcollection ``scans``.

    Notes
    -----
    Soft rather than hard links: a sub-scan entry that is not written yet (a restarted
    writer catching up scans in another order) is linked anyway and resolves as soon as it
    exists; viewers show the link for what it is, and a recursive walk does not see every
    sub-scan twice. Entries absent at call time are logged.
    """
    scans = require_nx_group(group_entry, "scans", NX_COLLECTION)
    master_file = os.path.abspath(group_entry.file.filename)
    master_dir = os.path.dirname(master_file)
    root = group_entry.file
    for item in subscan_entry_names:
        link: h5py.SoftLink | h5py.ExternalLink
        if isinstance(item, str):
            member = hdf5_name(item)
            link = h5py.SoftLink(f"/{member}")
            if member not in root:
                logger.info("%s: sub-scan entry %r not in the file yet; linked anyway",
                            group_entry.name, item)
        else:
            file_path, name = item
            member = hdf5_name(name)
            link = h5py.ExternalLink(
                _stored_path(os.fspath(file_path), master_dir, master_file), f"/{member}")
        existing = scans.get(member, getlink=True)
        if existing is not None:
            same = type(existing) is type(link) and getattr(existing, "path", None) == link.path \
                and getattr(existing, "filename", None) == getattr(link, "filename", None)
            if same:
                continue
            del scans[member]
        scans[member] = link
    return scans
