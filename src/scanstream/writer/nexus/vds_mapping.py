"""The mapping of an image virtual dataset (VDS), kept in memory while frames arrive.

HDF5 fixes a VDS's mapping when it is created, so :func:`~.images.require_image_vds`
creates it again whenever frames arrive (docs/nexus_layout.md). Building the creation
property list (dcpl) from every block in Python at each batch made the rebuild cost
O(blocks) in Python: with frames in files of 100, 100 k references/s make 1000 new blocks
a second. A :class:`VdsMapping` holds a dcpl of every block but the last (the one new
frames may still extend): a rebuild copies it in C and adds the last block (or, when
batches end at block boundaries, adds the last block to it and copies nothing), so Python
touches only the blocks that change. One mapping is kept per image VDS of an open file
(:func:`take`, :func:`keep`), with that VDS open, checked against the file before each
use; a writer started again, another process's writes or another file: the mapping is
read from the file.

Even in C, creating the VDS encodes its whole mapping (7-20 us per block), so a rebuild at
every batch costs O(blocks^2) over a scan of many detector files. A caller may therefore
let the mapping run ahead of the file (:meth:`VdsMapping.wait`): the rebuilds are spaced by
at least :data:`REBUILD_FACTOR` times the duration of the last one, so they take at most
about 1 / (1 + REBUILD_FACTOR) of the writer, and the VDS is brought up to date at the end
(:func:`~.images.complete_image_vds`).
"""

from __future__ import annotations

import bisect
import functools
import logging
import math
import os
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

logger = logging.getLogger(__name__)

#: Image datasets whose mapping is kept (the least recently used one is dropped beyond).
MAPPINGS_KEPT = 64
#: Past any frame index: the end of a clip that keeps a block's tail.
_END = 1 << 62
#: A VDS whose rebuilds may be spaced (:meth:`VdsMapping.wait`) is rebuilt again only after
#: this many times the duration of its last rebuild: 4 bounds rebuilding to about a fifth of
#: the writer (docs/performance.md, "the VDS rebuilt less often").
REBUILD_FACTOR = 4.0


@dataclass(frozen=True)
class Block:
    """Frames ``[v0, v1)`` of the VDS = frames ``[s0, s0 + v1 - v0)`` of one source dataset."""

    v0: int
    v1: int
    file: str  # as stored in the VDS: "." (same file), relative or absolute, '%' escaped
    dset: str
    s0: int

    def clip(self, start: int, stop: int) -> Block | None:
        """The part of the block within frames ``[start, stop)`` of the VDS, or None."""
        a, b = max(self.v0, start), min(self.v1, stop)
        if a >= b:
            return None
        return Block(a, b, self.file, self.dset, self.s0 + a - self.v0)

    def continues(self, other: Block) -> bool:
        """True when ``other`` directly follows this block in both the VDS and the source."""
        return (
            (other.file, other.dset) == (self.file, self.dset)
            and other.v0 == self.v1
            and other.s0 == self.s0 + self.v1 - self.v0
        )


def merge(blocks: Iterable[Block]) -> list[Block]:
    """``blocks`` (in VDS order) with each run of blocks that continue each other joined."""
    merged: list[Block] = []
    for block in blocks:
        if merged and merged[-1].continues(block):
            last = merged[-1]
            merged[-1] = Block(last.v0, block.v1, last.file, last.dset, last.s0)
        else:
            merged.append(block)
    return merged


@functools.lru_cache(maxsize=1024)
def escaped(file: str, dset: str) -> tuple[str, str]:
    """Both names of a VDS source escaped (cached: a detector file holds many frames).

    HDF5 parses VDS source names as printf-like patterns ("%b" = block number).
    """
    return file.replace("%", "%%"), dset.replace("%", "%%")


def read_blocks(dcpl: h5py.h5p.PropDCID) -> list[Block]:
    """The mapping of an existing virtual dataset (its creation property list), as blocks
    along axis 0."""
    blocks = []
    for i in range(dcpl.get_virtual_count()):
        (v0, *_), (v1, *_) = dcpl.get_virtual_vspace(i).get_select_bounds()
        (s0, *_), _ = dcpl.get_virtual_srcspace(i).get_select_bounds()
        # Names come back as stored, i.e. still '%'-escaped.
        file, dset = dcpl.get_virtual_filename(i), dcpl.get_virtual_dsetname(i)
        blocks.append(Block(int(v0), int(v1) + 1, file, dset, int(s0)))
    blocks.sort(key=lambda b: b.v0)
    return blocks


def _stop_of(block: Block) -> int:
    return block.v1


def _common_prefix(a: Sequence[Block], b: Sequence[Block]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class VdsMapping:
    """The blocks of one image VDS, and a dcpl holding all of them but (usually) the last.

    Parameters
    ----------
    blocks : sequence of Block
        The mapping, in VDS order (merged: see :func:`merge`).
    nframes : int
        Frames of the VDS (its first dimension).
    frame_shape : sequence of int
        Shape of one frame.
    dtype : numpy.dtype
        Of one frame.
    fill : scalar
        The VDS's fill value (frames whose file is missing or not yet written).
    """

    def __init__(
        self,
        blocks: Sequence[Block],
        nframes: int,
        frame_shape: Sequence[int],
        dtype: np.dtype[Any],
        fill: Any,
    ) -> None:
        self.nframes = int(nframes)
        self.frame_shape = tuple(int(n) for n in frame_shape)
        self.dtype = np.dtype(dtype)
        self._fill = np.array([fill], dtype=self.dtype)
        self.blocks: list[Block] = list(blocks)
        #: The VDS of the file this mapping describes (open), and its address (see keep).
        self.vds: h5py.Dataset | None = None
        self.address: tuple[int, int] | None = None
        self._closed = self._empty_dcpl()
        self._in_closed = 0  # blocks[:_in_closed] are in _closed
        self._add_closed(self.blocks[:-1])
        # Whether the last replace left the block before it as it was: new frames then
        # started a block of their own (a batch of whole detector files), and likely will
        # again, so the last block goes into _closed too and create() copies nothing.
        self._last_kept = False
        #: True when the blocks changed since the VDS in the file was built from them.
        self.pending = False
        #: When the last build of the VDS ended (time.monotonic()) and how long it took.
        self.built_at = -math.inf
        self.build_seconds = 0.0

    def wait(self, now: float, interval: float) -> float:
        """Seconds from ``now`` (time.monotonic()) until a VDS whose rebuilds are spaced by
        ``interval`` seconds (at least) is due for one (<= 0: due): ``interval`` and
        :data:`REBUILD_FACTOR` times the last build's duration after it ended."""
        return self.built_at + max(interval, REBUILD_FACTOR * self.build_seconds) - now

    def built(self, start: float, end: float) -> None:
        """Note that the VDS in the file was built from the blocks, from ``start`` to ``end``."""
        self.pending = False
        self.built_at, self.build_seconds = end, end - start

    @classmethod
    def of_dataset(cls, vds: h5py.Dataset, dcpl: h5py.h5p.PropDCID, fill: Any) -> VdsMapping:
        """The mapping of a virtual dataset of a file, ``dcpl`` its creation property list
        (read once, O(blocks))."""
        return cls(merge(read_blocks(dcpl)), vds.shape[0], vds.shape[1:], vds.dtype, fill)

    def replace(self, first: int, new: Sequence[Block]) -> bool:
        """Map the frames from ``first`` on that ``new`` covers to ``new``; the others stay.

        Returns
        -------
        bool
            False when the mapping was already that (nothing to rebuild).
        """
        stop = new[-1].v1 if new else first
        blocks = self.blocks
        # The first block ending at or after ``first``: those before it stay as they are.
        j = bisect.bisect_left(blocks, first, key=_stop_of)
        old_tail = blocks[j:]
        kept_before = [b for b in (blk.clip(0, first) for blk in old_tail) if b]
        kept_after = [b for b in (blk.clip(stop, _END) for blk in old_tail) if b]
        new_tail = merge([*kept_before, *new, *kept_after])
        self.nframes = max(self.nframes, stop)
        if new_tail == old_tail:
            return False
        self.pending = True
        same = j + _common_prefix(old_tail, new_tail)
        self._last_kept = same >= len(blocks)
        if same < self._in_closed:
            # A block already in the dcpl changed (the last one grew, or frames mapped
            # again): start it again.
            self._closed = self._empty_dcpl()
            self._in_closed = 0
        self.blocks = blocks[:j] + new_tail
        self._add_closed(self.blocks[self._in_closed : len(self.blocks) - 1])
        return True

    def create(self, group: h5py.Group, name: str) -> h5py.Dataset:
        """Create ``group[name]``, a virtual dataset of this mapping (O(blocks), in C)."""
        shape = (self.nframes, *self.frame_shape)
        if self._last_kept:
            self._add_closed(self.blocks[self._in_closed :])
            dcpl = self._closed
        else:
            dcpl = self._closed.copy()
            if self.blocks:
                vspace = h5py.h5s.create_simple(shape)
                _set_virtual(dcpl, vspace, self.blocks[-1], self.frame_shape)
        tid = h5py.h5t.py_create(self.dtype, logical=True)
        space = h5py.h5s.create_simple(shape)
        return h5py.Dataset(h5py.h5d.create(group.id, name.encode(), tid, space, dcpl=dcpl))

    def _empty_dcpl(self) -> h5py.h5p.PropDCID:
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_fill_value(self._fill)
        return dcpl

    def _add_closed(self, blocks: Sequence[Block]) -> None:
        if not blocks:
            return
        # The virtual space's extent only bounds the selections: the largest index will do.
        vspace = h5py.h5s.create_simple((blocks[-1].v1, *self.frame_shape))
        for blk in blocks:
            _set_virtual(self._closed, vspace, blk, self.frame_shape)
        self._in_closed += len(blocks)


def _set_virtual(
    dcpl: h5py.h5p.PropDCID, vspace: h5py.h5s.SpaceID, blk: Block, frame: tuple[int, ...]
) -> None:
    """Add ``blk`` to ``dcpl`` (``vspace``: a space of the VDS, its selection is replaced)."""
    origin = (0,) * len(frame)
    count = blk.v1 - blk.v0
    vspace.select_hyperslab((blk.v0, *origin), (count, *frame))
    source = h5py.h5s.create_simple((blk.s0 + count, *frame))
    source.select_hyperslab((blk.s0, *origin), (count, *frame))
    # set_virtual copies both selections: one vspace serves every block.
    dcpl.set_virtual(vspace, os.fsencode(blk.file), blk.dset.encode("utf-8"), source)


# --------------------------------------------------------------- mappings of open files
# (file number, dataset path) -> the mapping of the VDS there, with the VDS kept open: HDF5
# decodes a VDS's whole mapping when it opens it (32 ms for 10 000 blocks), unless it is
# open already. Only the VDS in place is kept open, never one that was replaced (its space
# is freed when it is closed, as before), and closing the file closes it (h5py closes every
# object of a file it closes).
_mappings: OrderedDict[tuple[int, str], VdsMapping] = OrderedDict()


def _address(group: h5py.Group, name: str) -> tuple[int, int]:
    # H5Gget_objinfo: the object's address without opening it (H5Oget_info of a VDS takes
    # as long as decoding its mapping).
    fileno, objno = h5py.h5g.get_objinfo(group.id, name.encode()).objno
    return int(fileno), int(objno)


def _key(group: h5py.Group, name: str) -> tuple[int, str]:
    return group.id.fileno, f"{group.name.rstrip('/')}/{name}"


def take(group: h5py.Group, name: str) -> VdsMapping | None:
    """The mapping kept for the VDS ``group[name]`` if that is still the dataset it was
    made for, else None (read it with :meth:`VdsMapping.of_dataset`).

    The mapping is taken out of the kept ones: give it back with :func:`keep` once the
    file holds the VDS it describes (a failure in between leaves none, never a wrong one).
    """
    mapping = _mappings.pop(_key(group, name), None)
    if mapping is None:
        return None
    if (
        mapping.vds is None
        or not mapping.vds.id.valid
        or name not in group
        or _address(group, name) != mapping.address
    ):
        if mapping.pending:
            logger.warning(
                "%s/%s changed in the file before the frames mapped since its last rebuild"
                " were in it: it is read from the file without them (the reference table"
                " has them)",
                group.name,
                name,
            )
        return None
    return mapping


def keep(group: h5py.Group, name: str, mapping: VdsMapping, vds: h5py.Dataset) -> None:
    """Remember ``mapping`` as that of ``vds``, the VDS now at ``group[name]`` (built from
    it, or older when ``mapping.pending``)."""
    mapping.vds, mapping.address = vds, _address(group, name)
    key = _key(group, name)
    _mappings[key] = mapping
    _mappings.move_to_end(key)
    excess = len(_mappings) - MAPPINGS_KEPT
    for old in list(_mappings):
        if excess <= 0:
            break
        kept = _mappings[old]
        # A pending mapping holds frames the file's VDS lacks: dropped only with its file.
        if old != key and (not kept.pending or kept.vds is None or not kept.vds.id.valid):
            del _mappings[old]
            excess -= 1
