"""Nodes holding data: numeric channels, lima (2D detector) nodes, scan references.

They read any range of points at random: a data entry's stream ID is the index of its
first point (:mod:`scanstream._protocol.entries`), so the entry holding point ``i`` is one
XREVRANGE away.
"""

from __future__ import annotations

import contextlib
import logging
import operator
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import redis

from .._protocol import codecs
from .._protocol.entries import DataEntry, Fields, data_entry_id, stream_length
from .._transport.connection import stream_entries
from .._transport.errors import is_wrong_type
from ..exceptions import (
    DecodingError,
    ImageNotSavedError,
    IndexNoMoreThereError,
    IndexNotYetThereError,
    IndexWontBeThereError,
)
from ..models import ImageReference, NodeDescription, NodeType, SavingMode
from .images import Frame, read_image
from .nodes import DataNode, ScanMemberNode

if TYPE_CHECKING:
    from .tree import ScanNode

logger = logging.getLogger(__name__)


class StreamNode(ScanMemberNode):
    """A node with a data stream: length and random access by point index.

    Attributes
    ----------
    key : str
        Key of the data stream.
    description : dict
        The node metadata of its NEW_NODE entry (dtype, shape, unit...).
    codec
        Decodes the stream's entries.
    """

    codec: codecs.NumericCodec | codecs.ImageRefCodec | codecs.ScanRefCodec

    def __init__(self, scan: ScanNode, parent: DataNode, desc: NodeDescription) -> None:
        super().__init__(scan, parent, desc)
        self.key = scan.store.keys.scan_data(scan.session_name, scan.number, desc.index)
        self.description = dict(desc.info)

    def __len__(self) -> int:
        return self._length()[0]

    @property
    def fullname(self) -> str:
        """``<controller>:<name>`` (``"axis:roby"``), as BLISS's data nodes have it."""
        if ":" in self.name or self.parent is None:
            return self.name
        return f"{self.parent.name}:{self.name}"

    @property
    def short_name(self) -> str:
        """Last part of the full name (``"roby"`` for ``"axis:roby"``)."""
        return self.name.rsplit(":", 1)[-1]

    @property
    def sealed(self) -> bool:
        """True once the scan has ended and the stream holds its final length."""
        return self._length()[1]

    def decode(self, fields: Sequence[Fields]) -> Any:
        """The points of consecutive entries (their fields), decoded as one batch.

        Raises
        ------
        DecodingError
            A corrupt entry.
        """
        return self.codec.decode(fields)

    def event_data(self, decoded: Any) -> Any:
        """The ``data`` of a NEW_DATA event carrying ``decoded`` (see :meth:`decode`)."""
        return decoded

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """Redis reads of the node's stream: a key of another type gives a DecodingError."""
        try:
            yield
        except redis.exceptions.ResponseError as exc:
            if not is_wrong_type(exc):
                raise
            raise DecodingError(
                f"{self.db_name}: its data key {self.key} is not a stream"
            ) from None

    def _length(self) -> tuple[int, bool]:
        """(number of points stored, sealed)."""
        with self._reading():
            last = stream_entries(self.store.redis.xrevrange(self.key, count=1))
        if not last and not self.store.redis.exists(self.scan.key):
            raise IndexNoMoreThereError(f"{self.db_name}: the scan expired from Redis")
        return stream_length(last)

    def _check_range(self, start: int, stop: int) -> tuple[int, int]:
        length, sealed = self._length()
        if start < 0 or stop < start:
            raise IndexError(f"{self.db_name}: invalid range [{start}, {stop})")
        if stop > length:
            cls = IndexWontBeThereError if sealed else IndexNotYetThereError
            raise cls(
                f"{self.db_name}: asked for indices up to {stop - 1}, but "
                + (
                    f"the channel ended with {length} points"
                    if sealed
                    else f"only {length} points are there yet"
                )
            )
        return start, stop

    def _entries(self, start: int, stop: int) -> tuple[int, list[Fields]]:
        """Entries covering points [start, stop): (index of the first entry's first point, entries)."""
        if stop <= start:
            return start, []
        pipe = self.store.redis.pipeline(transaction=False)
        pipe.xrevrange(self.key, max=data_entry_id(start), min="-", count=1)
        pipe.xrange(self.key, min="(" + data_entry_id(start), max=data_entry_id(stop - 1))
        with self._reading():
            before, after = pipe.execute()
        parsed = [DataEntry.from_raw(entry_id, fields) for entry_id, fields in before + after]
        found = [entry for entry in parsed if entry.sealed_length is None]
        if not found or found[0].first_index > start:
            raise IndexNoMoreThereError(f"{self.db_name}: points from {start} are gone from Redis")
        expected = base = found[0].first_index
        for entry in found:  # a hole would shift every later index: refuse it
            if entry.first_index != expected:
                raise IndexNoMoreThereError(
                    f"{self.db_name}: points {expected} to {entry.first_index - 1} are gone"
                )
            expected = entry.end_index
        return base, [entry.fields for entry in found]

    def _resolve(self, from_index: int, to_index: int | None) -> tuple[int, int]:
        """[start, stop) for the BLISS-style inclusive ``get(from_index, to_index)``."""
        length = len(self) if from_index < 0 or (to_index is not None and to_index < 0) else 0
        if from_index < 0:
            if from_index + length < 0:  # get(-1) of a channel without points (yet)
                cls = IndexWontBeThereError if self.sealed else IndexNotYetThereError
                raise cls(
                    f"{self.db_name}: asked for index {from_index}, but only {length} points "
                    + ("were published" if cls is IndexWontBeThereError else "are there yet")
                )
            from_index += length
        if to_index is None:
            stop = from_index + 1
        elif to_index < 0:
            stop = length + to_index + 1
        else:
            stop = to_index + 1
        return self._check_range(from_index, stop)


class ChannelNode(StreamNode):
    """A numeric channel: ``dtype``, ``shape``, ``unit``, ``len()``, ``get()``, indexing.

    ``point_shape`` is the shape of one point as published: ``(-1,)`` for a variable-length
    1D channel (``variable`` is True). ``shape`` is BLISS's: the same for fixed shapes, and
    for a variable-length channel a concrete ``(n,)``, ``n`` the longest point this node
    object has read so far (0 before any), so that ``(npoints,) + node.shape`` is a valid
    dataset shape that a client grows as the data comes.
    """

    type = NodeType.CHANNEL.value
    codec: codecs.NumericCodec

    def __init__(self, scan: ScanNode, parent: DataNode, desc: NodeDescription) -> None:
        super().__init__(scan, parent, desc)
        self.codec = codecs.NumericCodec(desc.info["dtype"], desc.info["shape"], desc.name)
        self.dtype = self.codec.dtype
        self.point_shape: tuple[int, ...] = self.codec.shape
        self.variable: bool = self.codec.variable
        self._width = 0  # longest variable-length point read so far
        self.unit: str | None = desc.info.get("unit")

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one point; concrete (the longest read so far) for variable-length ones."""
        return (self._width,) if self.variable else self.point_shape

    def get(self, from_index: int | None, to_index: int | None = None) -> np.ndarray:
        """Points ``from_index`` to ``to_index`` *inclusive* (BLISS convention).

        ``to_index=None`` gives the single point ``from_index``; ``to_index=-1`` goes to the
        last point. Negative ``from_index`` counts from the end; None is the first point.

        Raises
        ------
        IndexNotYetThereError, IndexWontBeThereError, IndexNoMoreThereError
            Not published yet, past the end of an ended channel, expired.
        """
        start, stop = self._resolve(0 if from_index is None else from_index, to_index)
        data = self._read(start, stop)
        return data[0] if to_index is None else data

    def decode(self, fields: Sequence[Fields]) -> np.ndarray:
        points = self.codec.decode(fields)
        if self.variable and len(points):
            self._width = max(self._width, max(len(p) for p in points))
        return points

    def _read(self, start: int, stop: int) -> np.ndarray:
        base, entries = self._entries(start, stop)
        if not entries:
            if self.codec.variable:
                return np.empty(0, dtype=object)
            return np.empty((0,) + self.point_shape, dtype=self.dtype)
        points: np.ndarray = self.decode(entries)[start - base : stop - base]
        return points

    def __getitem__(self, key: int | slice) -> Any:
        """``node[i]`` (negative allowed) or ``node[a:b:c]``, numpy semantics (slices clamp)."""
        length = len(self)
        if isinstance(key, slice):
            start, stop, step = key.indices(length)
            if step == 1:
                return self._read(start, max(start, stop))
            return self._read(0, length)[key]
        index = operator.index(key)
        index = index + length if index < 0 else index
        return self._read(*self._check_range(index, index + 1))[0]

    def get_as_array(
        self,
        from_index: int | None = None,
        to_index: int | None = None,
        fill_value: Any = None,
    ) -> np.ndarray:
        """Like :meth:`get`, always as a regular numpy array.

        With no argument: the whole channel. ``get_as_array(i)`` is the one point ``i``
        (BLISS's meaning); ``get_as_array(i, j)`` points ``i`` to ``j`` inclusive (-1: the
        last). Variable-length 1D points are padded to the longest one with ``fill_value``
        (default NaN for floats, 0 for integers, False for bool).
        """
        if from_index is None and to_index is None:
            from_index, to_index = 0, -1
        data = self.get(from_index, to_index)
        if not self.codec.variable or data.ndim == 0:
            return np.asarray(data)
        return pad_ragged(list(data), self.dtype, fill_value)


def pad_ragged(
    points: list[np.ndarray], dtype: np.dtype[Any], fill_value: Any = None
) -> np.ndarray:
    """Stack 1D arrays of different lengths into a 2D array, padding with ``fill_value``."""
    if fill_value is None:
        fill_value = codecs.fill_value(dtype)  # the data model's one padding rule
    width = max((len(p) for p in points), default=0)
    out = np.full((len(points), width), fill_value, dtype=dtype)
    for i, p in enumerate(points):
        out[i, : len(p)] = p
    return out


class LimaNode(StreamNode):
    """A 2D detector: images stay in files, Redis holds their references.

    ``saving_mode`` is a :class:`~scanstream.SavingMode` value (``"MANUAL"`` or
    ``"NOSAVING"``); with NOSAVING the events carry no references.
    """

    type = NodeType.LIMA.value
    codec: codecs.ImageRefCodec

    def __init__(self, scan: ScanNode, parent: DataNode, desc: NodeDescription) -> None:
        super().__init__(scan, parent, desc)
        self.dtype = np.dtype(desc.info["dtype"])
        self.shape = tuple(desc.info["shape"])
        self.saving_mode: str = desc.info.get("saving_mode", SavingMode.MANUAL.value)
        self.codec = codecs.ImageRefCodec(desc.name, saved=self.saving_mode != SavingMode.NOSAVING)
        #: BLISS's flag (Flint sets it): views made by :meth:`get` then give the last image
        #: from :meth:`LimaDataView.get_last_live_image`; otherwise it returns an empty Frame.
        self.from_stream = False

    def get(self, from_index: int | None = None, to_index: int | None = None) -> LimaDataView:
        """A view on images ``from_index`` to ``to_index`` inclusive (BLISS convention).

        ``get(i)`` is a view of the one image ``i``; ``get(i, -1)`` from ``i`` to the last
        image (its length follows acquisition); ``get()`` every image.
        """
        stream = self.from_stream
        if from_index is None:
            return LimaDataView(self, 0, None, from_stream=stream)
        if to_index is None:
            return LimaDataView(self, from_index, from_index, from_stream=stream)
        return LimaDataView(
            self, from_index, None if to_index < 0 else to_index, from_stream=stream
        )

    @property
    def images_per_file(self) -> int | None:
        """``saving_frame_per_file`` of the detector's description (BLISS's name), or None."""
        value = self.info.get("saving_frame_per_file")  # with the publisher's later updates
        return value if isinstance(value, int) else None

    def get_as_array(self, from_index: int | None = None, to_index: int | None = None) -> Any:
        """The images of :meth:`get` read from their files (one image: a 2D array)."""
        return self.get(from_index, to_index).as_array()

    def __getitem__(self, index: int) -> np.ndarray:
        """Image ``index`` (negative counts from the end), read from its detector file."""
        return self.get().get_image(index)

    def all_image_references(self, saved: bool = False) -> list[ImageReference]:
        """References of every image published so far (see :meth:`LimaDataView.all_image_references`)."""
        return self.get().all_image_references(saved)

    def get_last_image(self) -> np.ndarray:
        """The latest image, read from its file (BLISS returned it with its frame number).

        Raises
        ------
        IndexNotYetThereError
            No image yet.
        """
        return self.get().get_image(-1)

    def get_last_live_image(self) -> np.ndarray:
        """The latest image (scanstream has no live detector server: from its file)."""
        return self.get_last_image()

    def decode(self, fields: Sequence[Fields]) -> list[ImageReference]:
        return self.codec.decode(fields)

    def image_references(self, start: int, stop: int) -> list[ImageReference]:
        """References of images ``start`` to ``stop`` (exclusive), read from Redis.

        Raises
        ------
        ImageNotSavedError
            The detector does not save images (NOSAVING).
        IndexNoMoreThereError
            Some of them expired from Redis.
        """
        if self.saving_mode == SavingMode.NOSAVING:
            raise ImageNotSavedError(f"{self.db_name}: images are not saved (saving mode NOSAVING)")
        base, entries = self._entries(start, stop)
        return self.decode(entries)[start - base : stop - base]


class LimaDataView:
    """Images of a lima node between two indices; its length follows acquisition when open-ended.

    Image numbers given to its methods (``get_image(i)``, ``image_reference(i)``...) count
    from the view's first image; negative ones from its last; ``all_image_references()`` is
    the view's. BLISS's counted from the acquisition's first image whatever the view, and
    ``all_image_references()`` gave the acquisition's: so do the views of a node in
    :attr:`~DataNode.bliss_mode` (reached through ``bliss.data.*``; negative numbers count
    from the acquisition's last image there). Both are the same for views from 0
    (``get(0, -1)``, ``get()``). Indexing, iteration, ``len`` and ``as_array()`` are the
    view's in both, as BLISS's. The progress attributes are the acquisition's, as BLISS's
    (``last_image_ready``...).
    """

    def __init__(
        self, node: LimaNode, from_index: int, to_index: int | None, *, from_stream: bool = False
    ) -> None:
        self.node = node
        self.from_index = from_index
        self._to_index = to_index
        self.from_stream = from_stream

    def __repr__(self) -> str:
        return f"<LimaDataView {self.node.db_name!r} [{self.from_index}:{self._to_index}] len={len(self)}>"

    def __getattr__(self, name: str) -> Any:
        # BLISS's views answered the detector's settings as attributes (view.saving_mode,
        # view.acq_trigger_mode...): the keys of the lima node's info.
        if name.startswith("_") or name == "node":
            raise AttributeError(name)
        info = self.node.info
        if name in info:
            return info[name]
        raise AttributeError(f"{type(self).__name__} {self.node.db_name!r} has no {name!r}")

    def _bounds(self) -> tuple[int, int]:
        length = len(self.node)
        start = self.from_index + length if self.from_index < 0 else self.from_index
        stop = (
            length
            if self._to_index is None or self._to_index < 0
            else min(length, self._to_index + 1)
        )
        return start, max(start, stop)

    # -- BLISS's progress attributes (acquisition status) -------------------------------
    @property
    def to_index(self) -> int:
        """Number of the view's last image published so far (BLISS: -1 before any)."""
        start, stop = self._bounds()
        return stop - 1 if stop > start else min(start, len(self.node)) - 1

    @property
    def last_index(self) -> int:
        """``to_index + 1`` (BLISS's name: one past the last image of the view)."""
        return self.to_index + 1

    @property
    def last_image_ready(self) -> int:
        """Number of the acquisition's last image published so far, -1 before any.

        A reference is published once its image is in its file: ready, acquired and saved
        are the same image here (``last_image_saved`` is -1 for a detector not saving).
        """
        return len(self.node) - 1

    @property
    def last_image_acquired(self) -> int:
        """As :attr:`last_image_ready`."""
        return self.last_image_ready

    @property
    def last_image_saved(self) -> int:
        """As :attr:`last_image_ready`; -1 for a detector that saves nothing (NOSAVING)."""
        if self.node.saving_mode == SavingMode.NOSAVING:
            return -1
        return self.last_image_ready

    @property
    def first_ref_data(self) -> dict[str, Any]:
        """The detector's description (BLISS: its saving settings): the lima node's info."""
        return dict(self.node.info)

    @property
    def all_ref_data(self) -> list[dict[str, Any]]:
        """``[first_ref_data]`` (one acquisition per node)."""
        return [self.first_ref_data]

    def update(self) -> None:
        """BLISS re-read the status here; every attribute of this view is read when asked."""

    def is_video_frame_have_meaning(self) -> bool:
        """True: the image :meth:`get_last_live_image` gives carries its true number.

        False for a detector saving nothing (NOSAVING): no image can be read.
        """
        return self.node.saving_mode != SavingMode.NOSAVING

    def get_last_live_image(self) -> Frame:
        """The last image with its number (BLISS read the detector's live buffer).

        scanstream has no detector server: the image is read from its file. As BLISS, an
        empty ``Frame(None, None, None)`` unless the node's ``from_stream`` was set, and
        when there is no image (none yet, or NOSAVING).
        """
        if not self.from_stream or not self.is_video_frame_have_meaning():
            return Frame(None, None, None)
        last = self.last_image_ready
        if last < 0:
            return Frame(None, None, None)
        return self._frame(last)

    def _frame(self, index: int) -> Frame:
        """Image ``index`` of the acquisition, read from its file, with its number."""
        return Frame(read_image(self.node.image_references(index, index + 1)[0]), index, "file")

    def get_last_image(self) -> Frame:
        """The acquisition's last image with its number, ``Frame(data, frame_number, "file")``.

        Raises
        ------
        IndexNotYetThereError
            No image yet (an IndexError, as BLISS's).
        ImageNotSavedError
            The detector does not save images (NOSAVING).
        """
        last = self.last_image_ready
        if last < 0:
            raise IndexNotYetThereError(f"{self.node.db_name}: no image has been taken yet")
        return self._frame(last)

    def __len__(self) -> int:
        start, stop = self._bounds()
        return stop - start

    def all_image_references(self, saved: bool = False) -> list[ImageReference]:
        """References ``(file_path, path_in_file, index_in_file, file_format)`` of the view
        (in :attr:`~DataNode.bliss_mode`: of every image of the acquisition, as BLISS).

        ``saved`` is BLISS's argument; references are published once the image is in its
        file, so every reference is of a saved image.

        Raises
        ------
        ImageNotSavedError
            The detector does not save images (NOSAVING).
        """
        if self.node.bliss_mode:
            return self.node.image_references(0, len(self.node))
        start, stop = self._bounds()
        return self.node.image_references(start, stop)

    def image_references(
        self, image_nbs: Sequence[int], saved: bool = False
    ) -> list[ImageReference]:
        """References of images ``image_nbs`` (see :meth:`image_reference`; BLISS's ``saved``
        is accepted).

        Raises
        ------
        IndexNotYetThereError, IndexWontBeThereError
            One of them is not published (yet).
        ImageNotSavedError
            The detector does not save images (NOSAVING).
        """
        return [self.image_reference(i) for i in image_nbs]

    def iter_image_references(
        self, image_nbs: Sequence[int] | None = None, saved: bool = False
    ) -> Iterator[ImageReference]:
        """References of images ``image_nbs`` (default: all) up to the first not published yet.

        Raises
        ------
        ImageNotSavedError
            The detector does not save images (NOSAVING).
        """
        if image_nbs is None:
            yield from self.all_image_references(saved)
            return
        for i in image_nbs:
            try:
                ref = self.image_reference(i)
            except (IndexNotYetThereError, IndexWontBeThereError):
                return
            yield ref

    def image_reference(self, index: int, saved: bool = False) -> ImageReference:
        """Reference of image ``index`` of the view (negative counts from the end).

        In :attr:`~DataNode.bliss_mode`, ``index`` is the image's number in the acquisition,
        as BLISS's (negative: from the acquisition's last image).

        Raises
        ------
        IndexNotYetThereError, IndexWontBeThereError
            No such image (yet).
        ImageNotSavedError
            The detector does not save images (NOSAVING).
        """
        if self.node.bliss_mode:
            return self._acquisition_reference(index)
        return self._view_reference(index)

    def _view_reference(self, index: int) -> ImageReference:
        """Reference of image ``index`` counted from the view's first (negative: its last)."""
        start, stop = self._bounds()
        i = index + (stop - start) if index < 0 else index
        if not 0 <= i < stop - start:
            cls = IndexWontBeThereError if self.node.sealed else IndexNotYetThereError
            raise cls(f"{self.node.db_name}: no image {index} in a view of {stop - start} images")
        return self.node.image_references(start + i, start + i + 1)[0]

    def _acquisition_reference(self, index: int) -> ImageReference:
        """Reference of image ``index`` of the acquisition (negative: from its last)."""
        length = len(self.node)
        i = index + length if index < 0 else index
        if not 0 <= i < length:
            sealed = self.node.sealed
            cls = IndexWontBeThereError if sealed else IndexNotYetThereError
            raise cls(
                f"{self.node.db_name}: no image {index}: the acquisition has "
                + (f"{length} images" if sealed else f"only {length} images yet")
            )
        return self.node.image_references(i, i + 1)[0]

    def get_image(self, index: int) -> np.ndarray:
        """Read image ``index`` (as :meth:`image_reference` numbers it) from its detector file."""
        return read_image(self.image_reference(index))

    def __getitem__(self, index: int | slice) -> np.ndarray:
        """Image ``index`` of the view (negative counts from the end), or a stack for a slice."""
        if isinstance(index, slice):
            return np.asarray(
                [read_image(self._view_reference(i)) for i in range(*index.indices(len(self)))]
            )
        return read_image(self._view_reference(index))

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield read_image(self._view_reference(i))

    def as_array(self) -> np.ndarray:
        """The images of the view as one array (a single image: its 2D array, as BLISS)."""
        images = list(self)
        if len(images) == 1:
            return images[0]
        return np.asarray(images)


class ScanRefNode(StreamNode):
    """A channel of references to other scans (the sub-scans of a scan group)."""

    type = NodeType.NODE_REF_CHANNEL.value
    codec: codecs.ScanRefCodec

    def __init__(self, scan: ScanNode, parent: DataNode, desc: NodeDescription) -> None:
        super().__init__(scan, parent, desc)
        self.codec = codecs.ScanRefCodec(desc.name)

    def decode(self, fields: Sequence[Fields]) -> list[tuple[str, int]]:
        return self.codec.decode(fields)

    def event_data(self, decoded: Any) -> list[ScanNode]:
        """The referenced scans (NEW_DATA carries scan nodes, not references)."""
        return self.resolve(decoded)

    def get(self, from_index: int = 0, to_index: int | None = -1) -> list[ScanNode]:
        """The referenced scans, ``from_index`` to ``to_index`` inclusive (-1: the last)."""
        start, stop = self._resolve(from_index, to_index)
        base, entries = self._entries(start, stop)
        return self.resolve(self.decode(entries)[start - base : stop - base])

    def resolve(self, refs: list[tuple[str, int]]) -> list[ScanNode]:
        """Scan nodes for ``(session, number)`` references (expired ones are skipped)."""
        return self.scan.resolve_scan_refs(refs, self.db_name)
