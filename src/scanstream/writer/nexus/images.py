"""Detector images of the NeXus layout: a virtual dataset over the detector's own files.

Pure h5py, no Redis knowledge; :mod:`scanstream.writer.nexus` re-exports the public names.
Frames stay in the files the detector (Lima) wrote; the master file maps them into one
virtual dataset per image channel (:func:`require_image_vds`), which grows as frame
references arrive, plus a plain reference table for tools that do not follow virtual
datasets.
"""

from __future__ import annotations

import functools
import logging
import operator
import os
import time
from collections.abc import Callable, Sequence, Sized
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt

from ...exceptions import NexusLayoutError
from ...models import is_hdf5_format  # the one rule, shared with read_image (F16)
from . import vds_mapping
from .channels import channel_dataset_name, fill_value_for
from .layout import CHANNEL_ATTR, Placement, link_placed, place_channel
from .vds_mapping import Block, VdsMapping, escaped

__all__ = [
    "ImageReference",
    "complete_image_vds",
    "is_hdf5_format",
    "references_dataset_name",
    "require_image_vds",
    "stored_path",
]

logger = logging.getLogger(__name__)

#: ``(file_path, path_in_file, index_in_file, format)`` of one detector frame.
ImageReference = tuple[str, str, int, str]

#: Upper bound of the bytes of one cell of a reference table (PATH_MAX on Linux).
#: Fixed-length strings rather than variable-length ones: a variable-length string lives in a
#: global heap that a reader opening the file while the table grows can find half written
#: ("bad heap index"); a fixed-length cell is plain chunk data.
REFERENCE_CELL_BYTES = 4096
#: Smallest cell of a new table; cells are the longest cell so far rounded up to a power of
#: two, so a table is widened (rebuilt) at most a few times, usually never.
REFERENCE_CELL_MIN_BYTES = 64
#: Bytes of one chunk of a new reference table.
REFERENCE_CHUNK_BYTES = 64 << 10


def _cell_bytes(longest: int) -> int:
    size = REFERENCE_CELL_MIN_BYTES
    while size < longest:
        size *= 2
    return min(size, REFERENCE_CELL_BYTES)


def references_dataset_name(dataset_name: str) -> str:
    """Name of the sibling table listing the frame references of an image channel."""
    return f"{dataset_name}_references"


def stored_path(file_path: str, master_dir: str, master_file: str) -> str:
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
    file_dir: str | os.PathLike[str] | None = None,
    first_index: int = 0,
    rebuild_interval: float | None = None,
) -> h5py.Dataset | None:
    """Map detector frames into the virtual dataset ``group[name]`` (nframes, *frame_shape).

    Call it again as frames arrive, with all references (``first_index=0``) or with the new
    ones only (``first_index`` = index of the first of them): the mapping already in the file
    is kept for the frames before ``first_index`` (and after the new ones). The mapping is
    kept in memory between calls (:mod:`.vds_mapping`), so Python's part of a call is
    O(new references + blocks they change); HDF5's is O(mapped blocks), in C. The virtual
    dataset is deleted and recreated when its mapping changes (it is metadata only: HDF5
    cannot add a mapping to an existing one); the same call twice leaves it untouched.
    The VDS in place stays open in this process until the file is closed (h5py's
    ``File.close`` closes it; close files explicitly). Do not flush the
    file during the call: the writer calls it inside a batch (docs/nexus_layout.md,
    "Reading a file while it is written"), so readers see the old or the new one.

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
        Frame index of ``references[0]``; must be <= the current number of frames (those
        mapped, also those not yet in the VDS).
    rebuild_interval : float, optional
        None (default): the VDS holds the new frames when the call returns. A number of
        seconds: the VDS may be left as it is (the new frames mapped in memory, the table
        written) when its last rebuild ended less than ``rebuild_interval`` seconds ago, or
        less than :data:`~.vds_mapping.REBUILD_FACTOR` times that rebuild's duration, so
        that rebuilding a large mapping takes a bounded share of the time. A VDS is always
        created with its first frames. Bring it up to date with
        :func:`complete_image_vds` (or a call without ``rebuild_interval``) before the file
        is closed: otherwise it lacks the frames of the last calls.

    Returns
    -------
    h5py.Dataset or None
        The virtual dataset, fill value :func:`fill_value_for` (what readers get for frames
        whose file is missing or not yet written); with ``rebuild_interval``, maybe without
        the new frames yet. None when a reference is not in an HDF5 format (EDF, CBF...):
        then only the table is written (warning logged once).

    Notes
    -----
    The sibling dataset ``<name>_references`` (shape (nframes, 4), str, columns in
    ``@columns``: file, path_in_file, index_in_file, format) lists every frame for tools that
    do not follow virtual datasets; ``file`` is the stored path (relative to the master
    file's directory when below it).
    """
    dt = np.dtype(dtype)
    fshape = tuple(int(n) for n in frame_shape)
    measurement = group
    placement, group, dsname, identity = _image_dataset_place(group, name)
    master_file = os.path.abspath(group.file.filename)
    master_dir = os.path.abspath(os.fspath(file_dir)) if file_dir else os.path.dirname(master_file)
    first = int(first_index)
    rows = _Rows.of(
        name,
        references,
        functools.partial(stored_path, master_dir=master_dir, master_file=master_file),
    )

    table_name = references_dataset_name(dsname)
    table_is_new = table_name not in group
    _write_reference_table(group, table_name, first, rows)
    bad = sorted(f for f in rows.formats.texts if not is_hdf5_format(f))
    if bad:
        if table_is_new:
            logger.warning(
                "%s/%s: frames in format %s cannot be mapped into a virtual dataset;"
                " only the reference table is written",
                group.name,
                dsname,
                bad,
            )
        return None

    mapping = vds_mapping.take(group, dsname) or _read_mapping(group, dsname, name, dt, fshape)
    where = f"{group.name}/{dsname} in {group.file.filename!r}"
    if mapping.dtype != dt or mapping.frame_shape != fshape:
        raise NexusLayoutError(
            f"{where} is {mapping.dtype} {(mapping.nframes, *mapping.frame_shape)}; frames of"
            f" {name!r} are {dt} {fshape}: pass the dtype and frame_shape the dataset was"
            " created with"
        )
    current = mapping.nframes
    if first < 0 or first > current:
        raise NexusLayoutError(
            f"cannot map frames of {name!r} from index {first}: {where} has {current} frames"
            f" and a gap would read as fill values; pass first_index <= {current}"
        )
    existing = mapping.vds
    mapping.replace(first, rows.blocks(first))
    if existing is not None and (
        not mapping.pending
        or (rebuild_interval is not None and mapping.wait(time.monotonic(), rebuild_interval) > 0)
    ):
        vds_mapping.keep(group, dsname, mapping, existing)
        return existing
    return _build(measurement, placement, group, dsname, identity, name, mapping)


def complete_image_vds(
    group: h5py.Group, name: str, *, rebuild_interval: float | None = None
) -> float | None:
    """Bring the image VDS of channel ``name`` in ``group`` up to date: rebuild it when
    :func:`require_image_vds` (with ``rebuild_interval``) mapped frames it lacks.

    Parameters
    ----------
    group : h5py.Group
        The group given to :func:`require_image_vds` (usually ``measurement``).
    name : str
        Full channel name.
    rebuild_interval : float, optional
        None (default): rebuild now. Else only if the rebuild is due (as in
        :func:`require_image_vds`).

    Returns
    -------
    float or None
        None when the VDS holds every frame mapped (or there is none); else the seconds
        until its rebuild is due (call again then).
    """
    measurement = group
    placement, group, dsname, identity = _image_dataset_place(group, name)
    mapping = vds_mapping.take(group, dsname)
    if mapping is None:
        return None
    assert mapping.vds is not None  # take() checks it
    if mapping.pending and rebuild_interval is not None:
        wait = mapping.wait(time.monotonic(), rebuild_interval)
        if wait > 0:
            vds_mapping.keep(group, dsname, mapping, mapping.vds)
            return wait
    if not mapping.pending:
        vds_mapping.keep(group, dsname, mapping, mapping.vds)
        return None
    _build(measurement, placement, group, dsname, identity, name, mapping)
    return None


def _build(
    measurement: h5py.Group,
    placement: Placement | None,
    group: h5py.Group,
    dsname: str,
    identity: str,
    name: str,
    mapping: VdsMapping,
) -> h5py.Dataset:
    """Create ``group[dsname]`` from ``mapping``, in place of the VDS there if any."""
    start = time.monotonic()
    existing = mapping.vds
    # Built under a temporary name with its attributes, then swapped in: the name never
    # points to a dataset without attributes, and is absent only between two link operations.
    tmp = f"{dsname}_building"
    if tmp in group:
        del group[tmp]
    vds = mapping.create(group, tmp)
    vds.attrs[identity] = name
    vds.attrs["interpretation"] = "image"
    if existing is not None:
        del group[dsname]
    group.move(tmp, dsname)  # vds, open, follows (HDF5 renames open objects)
    # The replaced VDS is freed once closed: the mapping no longer holds it open.
    vds_mapping.keep(group, dsname, mapping, vds)
    if placement is not None:
        link_placed(measurement, placement, vds)
    mapping.built(start, time.monotonic())
    logger.debug(
        "%s: %d frames in %d virtual sources", vds.name, mapping.nframes, len(mapping.blocks)
    )
    return vds


def _read_mapping(
    group: h5py.Group, dsname: str, name: str, dtype: np.dtype[Any], frame_shape: tuple[int, ...]
) -> VdsMapping:
    """The mapping of ``group[dsname]`` read from the file (an empty one when absent)."""
    fill = fill_value_for(dtype)
    existing = group.get(dsname)
    if existing is None:
        return VdsMapping([], 0, frame_shape, dtype, fill)
    dcpl = existing.id.get_create_plist() if isinstance(existing, h5py.Dataset) else None
    if dcpl is None or dcpl.get_layout() != h5py.h5d.VIRTUAL:
        raise NexusLayoutError(
            f"{existing.name} in {group.file.filename!r} exists and is not a virtual dataset;"
            f" cannot map the frames of {name!r} there: delete it or write the scan to"
            " another entry"
        )
    mapping = VdsMapping.of_dataset(existing, dcpl, fill)
    mapping.vds = existing
    return mapping


_FIELDS = tuple(operator.itemgetter(k) for k in range(4))


@dataclass(frozen=True)
class _Column:
    """A column of references: its distinct texts, and each row's number among them."""

    texts: list[str]
    codes: npt.NDArray[np.intp]

    @classmethod
    def of(cls, values: Sequence[Any], text: Callable[[Any], str]) -> _Column:
        # Paths and formats repeat from frame to frame: each distinct one is converted once,
        # and the rows get its number without a Python loop over them.
        number: dict[Any, int] = {}
        texts: dict[str, int] = {}
        for value in dict.fromkeys(values):
            number[value] = texts.setdefault(text(value), len(texts))
        codes = np.fromiter(map(number.__getitem__, values), dtype=np.intp, count=len(values))
        return cls(list(texts), codes)


@dataclass(frozen=True)
class _Rows:
    """Frame references as columns: stored file path, path in file, index, format."""

    files: _Column
    dsets: _Column
    indices: npt.NDArray[np.int64]
    formats: _Column

    @classmethod
    def of(
        cls, name: str, references: Sequence[Sequence[Any]], stored: Callable[[Any], str]
    ) -> _Rows:
        refs = references if isinstance(references, list) else list(references)
        try:
            well_formed = all(n == 4 for n in set(map(len, refs)))
        except TypeError:
            well_formed = False
        if not well_formed:
            ref = next(r for r in refs if not isinstance(r, Sized) or len(r) != 4)
            raise NexusLayoutError(
                f"image reference {ref!r} of {name!r} is not (file_path, path_in_file,"
                " index_in_file, format); pass one 4-tuple per frame"
            )
        # One list per field: zip(*refs) was twice as slow (an iterator per reference).
        files, dsets, indices, formats = (list(map(field, refs)) for field in _FIELDS)
        return cls(
            _Column.of(files, stored),
            _Column.of(dsets, str),
            np.fromiter(map(int, indices), dtype=np.int64, count=len(indices)),
            _Column.of(formats, str),
        )

    def __len__(self) -> int:
        return len(self.indices)

    def blocks(self, first: int) -> list[Block]:
        """The rows as VDS blocks from frame ``first`` on: one per run of consecutive frames
        of one source dataset (HDF5 slows down above ~1000 sources)."""
        n = len(self)
        if not n:
            return []
        source = self.files.codes * len(self.dsets.texts) + self.dsets.codes
        idx = self.indices
        starts = np.flatnonzero((source[1:] != source[:-1]) | (idx[1:] != idx[:-1] + 1)) + 1
        bounds = [0, *starts.tolist(), n]
        blocks = []
        for a, b in zip(bounds[:-1], bounds[1:]):
            file, dset = escaped(
                self.files.texts[self.files.codes[a]], self.dsets.texts[self.dsets.codes[a]]
            )
            blocks.append(Block(first + a, first + b, file, dset, int(idx[a])))
        return blocks

    def cells(self, dtype: np.dtype[Any]) -> npt.NDArray[Any]:
        """The (n, 4) cells of a reference table of ``dtype`` (fixed-length or object)."""
        out = np.empty((len(self), 4), dtype=dtype)
        if dtype.kind == "S":
            for j, column in ((0, self.files), (1, self.dsets), (3, self.formats)):
                out[:, j] = np.array([t.encode() for t in column.texts], dtype=dtype)[column.codes]
            out[:, 2] = self.indices.astype(dtype)
        else:  # a table of an earlier version (variable-length strings)
            for j, column in ((0, self.files), (1, self.dsets), (3, self.formats)):
                out[:, j] = np.array(column.texts, dtype=object)[column.codes]
            out[:, 2] = [str(i) for i in self.indices.tolist()]
        return out

    def longest_cell(self) -> bytes:
        """The longest cell, encoded."""
        cells = [t.encode() for c in (self.files, self.dsets, self.formats) for t in c.texts]
        if len(self):
            cells += [b"%d" % self.indices.min(), b"%d" % self.indices.max()]
        return max(cells, key=len, default=b"")


def _write_reference_table(group: h5py.Group, name: str, first: int, rows: _Rows) -> None:
    longest = rows.longest_cell()
    table = group.get(name)
    if table is None:
        # Uncompressed: a chunk being filled is rewritten in place, so a reader that opened
        # the file before a flush reads the rows it expects; a compressed chunk moves when it
        # grows and that reader follows a stale address (an error, or cells of another
        # chunk). The cells fit the paths instead of PATH_MAX, a few hundred bytes per frame.
        cell = _cell_bytes(max(1, len(longest)))
        table = group.create_dataset(
            name,
            shape=(0, 4),
            maxshape=(None, 4),
            dtype=h5py.string_dtype("utf-8", cell),
            chunks=(max(1, REFERENCE_CHUNK_BYTES // (4 * cell)), 4),
        )
        table.attrs["columns"] = ["file", "path_in_file", "index_in_file", "format"]
    elif not isinstance(table, h5py.Dataset) or table.shape[1:] != (4,):
        raise NexusLayoutError(
            f"{group.name}/{name} exists and is not an (n, 4) reference table; delete it or"
            " write the scan to another entry"
        )
    if first > table.shape[0]:
        raise NexusLayoutError(
            f"cannot write references into {table.name!r} from index {first}: it has"
            f" {table.shape[0]} rows; pass first_index <= {table.shape[0]}"
        )
    if not len(rows):
        return
    stop = first + len(rows)
    if table.dtype.kind == "S":
        if len(longest) > REFERENCE_CELL_BYTES:
            raise NexusLayoutError(
                f"image reference {longest[:80]!r}... is longer than the"
                f" {REFERENCE_CELL_BYTES} bytes of a cell of {table.name!r}; use shorter paths"
            )
        if len(longest) > table.dtype.itemsize:
            table = _widen(group, name, table, _cell_bytes(len(longest)))
    data = rows.cells(table.dtype)
    if stop > table.shape[0]:
        table.resize(stop, axis=0)
    table[first:stop] = data


def _widen(group: h5py.Group, name: str, table: h5py.Dataset, cell: int) -> h5py.Dataset:
    """Rebuild ``table`` with cells of ``cell`` bytes (HDF5 cannot change a dataset's type).

    Built under a temporary name, then swapped in, within the writer's batch (as the image
    virtual dataset): readers see the old table or the new one.
    """
    tmp = f"{name}_widening"
    if tmp in group:
        del group[tmp]
    dtype = h5py.string_dtype("utf-8", cell)
    wide = group.create_dataset(
        tmp,
        shape=table.shape,
        maxshape=(None, 4),
        dtype=dtype,
        chunks=(max(1, REFERENCE_CHUNK_BYTES // (4 * cell)), 4),
    )
    for key, value in table.attrs.items():
        wide.attrs[key] = value
    step = wide.chunks[0] * 16
    for start in range(0, table.shape[0], step):
        wide[start : start + step] = table[start : start + step].astype(dtype)
    logger.debug("%s: cells widened to %d bytes", table.name, cell)
    del group[name]
    group.move(tmp, name)
    return group[name]


def _image_dataset_place(
    group: h5py.Group, name: str
) -> tuple[Placement | None, h5py.Group, str, str]:
    """Where image channel ``name``'s VDS goes: the layout's placement (None: ``group``
    itself), the group, the dataset's name and its identity attribute."""
    placement = place_channel(group, name, 2)
    if placement is None:
        return None, group, channel_dataset_name(name), "long_name"
    return placement, placement.device, placement.member, CHANNEL_ATTR
