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
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

from ...exceptions import NexusLayoutError
from ...models import is_hdf5_format  # the one rule, shared with read_image (F16)
from .channels import channel_dataset_name, fill_value_for
from .layout import CHANNEL_ATTR, link_placed, place_channel

__all__ = [
    "ImageReference",
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
        return (
            (other.file, other.dset) == (self.file, self.dset)
            and other.v0 == self.v1
            and other.s0 == self.s0 + self.v1 - self.v0
        )


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


@functools.lru_cache(maxsize=1024)
def _escaped(file: str, dset: str) -> tuple[str, str]:
    """Both names of a VDS source escaped (cached: a detector file holds many frames)."""
    return _vds_escape(file), _vds_escape(dset)


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
) -> h5py.Dataset | None:
    """Map detector frames into the virtual dataset ``group[name]`` (nframes, *frame_shape).

    Call it again as frames arrive, with all references (``first_index=0``) or with the new
    ones only (``first_index`` = index of the first of them): the mapping already in the file
    is kept for the frames before ``first_index`` (and after the new ones), so a call costs
    O(number of mapped blocks + new references), not O(all frames). The virtual dataset is
    deleted and recreated when its mapping changes (it is metadata only: HDF5 cannot add a
    mapping to an existing one); the same call twice leaves it untouched. Do not flush the
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
    measurement = group
    placement = place_channel(group, name, 2)
    if placement is None:
        dsname, identity = channel_dataset_name(name), "long_name"
    else:
        group, dsname, identity = placement.device, placement.member, CHANNEL_ATTR
    master_file = os.path.abspath(group.file.filename)
    master_dir = os.path.abspath(os.fspath(file_dir)) if file_dir else os.path.dirname(master_file)
    first = int(first_index)
    rows: list[tuple[str, str, int, str]] = []
    # A detector file holds many frames: its stored path is worked out once per call (it
    # was a third of the writer's time at 100 k references/s in files of 100 frames).
    stored: dict[Any, str] = {}
    for ref in references:
        if len(ref) != 4:
            raise NexusLayoutError(
                f"image reference {ref!r} of {name!r} is not (file_path, path_in_file,"
                " index_in_file, format); pass one 4-tuple per frame"
            )
        file_path, path_in_file, index, file_format = ref
        path = stored.get(file_path)
        if path is None:
            path = stored[file_path] = stored_path(file_path, master_dir, master_file)
        rows.append((path, str(path_in_file), int(index), str(file_format)))

    table_name = references_dataset_name(dsname)
    table_is_new = table_name not in group
    _write_reference_table(group, table_name, first, rows)
    bad = sorted({r[3] for r in rows if not is_hdf5_format(r[3])})
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

    existing = group.get(dsname)
    old_blocks: list[_Block] = []
    current = 0
    if existing is not None:
        where = f"{existing.name} in {group.file.filename!r}"
        if not isinstance(existing, h5py.Dataset) or not existing.is_virtual:
            raise NexusLayoutError(
                f"{where} exists and is not a virtual dataset; cannot map the frames of"
                f" {name!r} there: delete it or write the scan to another entry"
            )
        if existing.dtype != dt or existing.shape[1:] != fshape:
            raise NexusLayoutError(
                f"{where} is {existing.dtype} {existing.shape}; frames of {name!r} are {dt}"
                f" {fshape}: pass the dtype and frame_shape the dataset was created with"
            )
        current = existing.shape[0]
        old_blocks = _read_blocks(existing)
    if first < 0 or first > current:
        raise NexusLayoutError(
            f"cannot map frames of {name!r} from index {first}: {group.name}/{dsname} has"
            f" {current} frames and a gap would read as fill values; pass first_index <="
            f" {current}"
        )
    stop = first + len(rows)
    new_blocks = _merge(
        _Block(first + i, first + i + 1, file, dset, r[2])
        for i, r in enumerate(rows)
        for file, dset in [_escaped(r[0], r[1])]
    )
    blocks = _merge(
        [b for b in (blk.clip(0, first) for blk in old_blocks) if b]
        + new_blocks
        + [b for b in (blk.clip(stop, 1 << 62) for blk in old_blocks) if b]
    )
    nframes = max(current, stop)
    if existing is not None and nframes == current and blocks == _merge(old_blocks):
        return existing
    # Built under a temporary name with its attributes, then swapped in: the name never
    # points to a dataset without attributes, and is absent only between two link operations.
    tmp = f"{dsname}_building"
    if tmp in group:
        del group[tmp]
    vds = _create_vds(group, tmp, blocks, (nframes, *fshape), dt, fill_value_for(dt))
    vds.attrs[identity] = name
    vds.attrs["interpretation"] = "image"
    if existing is not None:
        del group[dsname]
    group.move(tmp, dsname)
    vds = group[dsname]
    if placement is not None:
        link_placed(measurement, placement, vds)
    logger.debug("%s: %d frames in %d virtual sources", vds.name, nframes, len(blocks))
    return vds


def _create_vds(
    group: h5py.Group,
    name: str,
    blocks: Sequence[_Block],
    shape: tuple[int, ...],
    dtype: np.dtype,
    fill: Any,
) -> h5py.Dataset:
    """A virtual dataset of ``shape`` mapping each block, made with h5py's low-level calls.

    What ``VirtualLayout`` and ``VirtualSource`` do, without their copies and selection
    objects per block: with frames in files of 100, 100 k references/s make 1000 new blocks
    a second, and the mapping is rebuilt at every batch.
    """
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_fill_value(np.array([fill], dtype=dtype))
    frame = tuple(shape[1:])
    origin = (0,) * len(frame)
    vspace = h5py.h5s.create_simple(shape)
    for blk in blocks:
        count = blk.v1 - blk.v0
        vspace.select_hyperslab((blk.v0, *origin), (count, *frame))
        source = h5py.h5s.create_simple((blk.s0 + count, *frame))
        source.select_hyperslab((blk.s0, *origin), (count, *frame))
        # set_virtual copies both selections: one vspace serves every block.
        dcpl.set_virtual(vspace, os.fsencode(blk.file), blk.dset.encode("utf-8"), source)
    tid = h5py.h5t.py_create(dtype, logical=True)
    space = h5py.h5s.create_simple(shape)
    return h5py.Dataset(h5py.h5d.create(group.id, name.encode(), tid, space, dcpl=dcpl))


def _read_blocks(vds: h5py.Dataset) -> list[_Block]:
    """The mapping of an existing virtual dataset, as blocks along axis 0."""
    dcpl = vds.id.get_create_plist()
    blocks = []
    for i in range(dcpl.get_virtual_count()):
        (v0, *_), (v1, *_) = dcpl.get_virtual_vspace(i).get_select_bounds()
        (s0, *_), _ = dcpl.get_virtual_srcspace(i).get_select_bounds()
        # Names come back as stored, i.e. still '%'-escaped.
        file, dset = dcpl.get_virtual_filename(i), dcpl.get_virtual_dsetname(i)
        blocks.append(_Block(int(v0), int(v1) + 1, file, dset, int(s0)))
    blocks.sort(key=lambda b: b.v0)
    return blocks


def _write_reference_table(
    group: h5py.Group,
    name: str,
    first: int,
    rows: Sequence[tuple[str, str, int, str]],
) -> None:
    cells = [[f, p, str(i), fmt] for f, p, i, fmt in rows]
    # Paths and formats repeat from frame to frame: each distinct one is encoded once.
    known: dict[str, bytes] = {}

    def encode(text: str) -> bytes:
        got = known.get(text)
        if got is None:
            got = known[text] = text.encode()
        return got

    encoded = [[encode(f), encode(p), i.encode(), encode(fmt)] for f, p, i, fmt in cells]
    longest = max(len(c) for row in encoded for c in row) if encoded else 1
    table = group.get(name)
    if table is None:
        # Uncompressed: a chunk being filled is rewritten in place, so a reader that opened
        # the file before a flush reads the rows it expects; a compressed chunk moves when it
        # grows and that reader follows a stale address (an error, or cells of another
        # chunk). The cells fit the paths instead of PATH_MAX, a few hundred bytes per frame.
        cell = _cell_bytes(longest)
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
    if not rows:
        return
    stop = first + len(rows)
    if table.dtype.kind == "S":
        if longest > REFERENCE_CELL_BYTES:
            too_long = next(c for row in encoded for c in row if len(c) == longest)
            raise NexusLayoutError(
                f"image reference {too_long[:80]!r}... is longer than the"
                f" {REFERENCE_CELL_BYTES} bytes of a cell of {table.name!r}; use shorter paths"
            )
        if longest > table.dtype.itemsize:
            table = _widen(group, name, table, _cell_bytes(longest))
        data = np.array(encoded, dtype=table.dtype)
    else:  # a table of an earlier version (variable-length strings): kept as it is
        data = np.array(cells, dtype=object)
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
