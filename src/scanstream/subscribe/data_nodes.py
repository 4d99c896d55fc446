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
from types import EllipsisType
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
from .lima_view import LimaDataView
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

    def event_description(self, last: int) -> dict[str, Any]:
        """The ``description`` of a NEW_DATA event whose last point is ``last``: a copy of
        :attr:`description` (a consumer that edits it cannot change the next one's)."""
        return dict(self.description)

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

        In :attr:`~DataNode.bliss_mode` a range is BLISS's: it ends at the last point there
        is (``get(0, 99)`` of 3 points gives 3, of none an empty array) and a negative
        ``from_index`` starts it at the first point; single points are as above.

        Raises
        ------
        IndexNotYetThereError, IndexWontBeThereError, IndexNoMoreThereError
            Not published yet, past the end of an ended channel, expired.
        """
        if to_index is not None and self.bliss_mode:
            # BLISS: "The last index is ALWAYS allowed to be higher than the available data"
            # (clients ask for a scan's npoints and get what there is).
            length = len(self)
            stop = length if to_index < 0 else min(to_index + 1, length)
            start = min(max(from_index or 0, 0), stop)
            return self._read(start, stop)
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

    def __getitem__(self, key: int | slice | EllipsisType) -> Any:
        """``node[i]`` (negative allowed), ``node[a:b:c]`` (numpy semantics: slices clamp) or
        ``node[...]`` (every point)."""
        length = len(self)
        if key is Ellipsis:  # node[...]: every point, as BLISS
            return self._read(0, length)
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

    @property
    def first_ref_data(self) -> dict[str, Any]:
        """The detector's description (BLISS: its saving settings): the node's info."""
        return dict(self.info)

    @property
    def all_ref_data(self) -> list[dict[str, Any]]:
        """``[first_ref_data]`` (BLISS: one per acquisition; one acquisition per node here);
        ``ref_data`` before BLISS 1.5."""
        return [self.first_ref_data]

    ref_data = all_ref_data

    def acquisition_status(self, last: int) -> dict[str, Any]:
        """BLISS's status of a Lima acquisition whose last image is ``last`` (-1: none).

        A reference is published once its image is in its file, so acquired, ready and
        saved are the same image (saved is -1 for a detector not saving); there is no
        detector server (``server_url`` empty, ``lima_acq_nb`` and ``buffer_max_number`` -1).
        """
        saved = -1 if self.saving_mode == SavingMode.NOSAVING else last
        return {
            "server_url": "",
            "lima_acq_nb": -1,
            "buffer_max_number": -1,
            "last_image_acquired": last,
            "last_image_ready": last,
            "last_counter_ready": last,
            "last_image_saved": saved,
        }

    def event_description(self, last: int) -> dict[str, Any]:
        """The node's description; in :attr:`~DataNode.bliss_mode` with BLISS's acquisition
        status keys too (:meth:`acquisition_status`: BLISS's lima events described so)."""
        description = dict(self.description)
        if self.bliss_mode:
            description.update(self.acquisition_status(last))
        return description

    def get_file_references(self) -> list[str]:
        """The files of the images published so far, each once, in order (BLISS before 1.5).

        Raises
        ------
        ImageNotSavedError
            The detector does not save images (NOSAVING).
        """
        files = (ref.file_path for ref in self.all_image_references())
        return list(dict.fromkeys(files))

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
