"""The view of a lima node between two indices: its images, their references, its progress.

What ``LimaNode.get(from_index, to_index)`` returns, as BLISS's ``LimaDataView``; in
:mod:`.data_nodes` beside the node it views, split out for length.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..exceptions import IndexNotYetThereError, IndexWontBeThereError
from ..models import ImageReference, SavingMode
from .images import Frame, read_image

if TYPE_CHECKING:
    from .data_nodes import LimaNode

__all__ = ["LimaDataView"]


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
        """The lima node's ``first_ref_data`` (BLISS's views have it too)."""
        return self.node.first_ref_data

    @property
    def all_ref_data(self) -> list[dict[str, Any]]:
        """The lima node's ``all_ref_data``; ``ref_data`` before BLISS 1.5."""
        return self.node.all_ref_data

    ref_data = all_ref_data

    @property
    def ref_status(self) -> dict[str, Any]:
        """BLISS's acquisition status (``last_image_ready``, ``last_image_saved``...; see
        :meth:`LimaNode.acquisition_status`), deprecated there for ``status_event.status``."""
        return self.node.acquisition_status(self.last_image_ready)

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

    def get_filenames(self) -> list[ImageReference]:
        """:meth:`all_image_references` (BLISS's deprecated name, in clients older than 1.4)."""
        return self.all_image_references()

    def _get_filenames(self, ref_data: Any, *image_nbs: int) -> list[ImageReference]:
        """:meth:`image_references` of ``image_nbs`` (BLISS's deprecated private name;
        ``ref_data``, the detector description BLISS passed, is not needed)."""
        return self.image_references(list(image_nbs))

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

    def __getitem__(self, index: int | slice | list[int] | np.ndarray) -> np.ndarray:
        """Image ``index`` of the view (negative counts from the end), or a stack for a slice
        or a list of indices (``view[[0, 2]]``, as BLISS)."""
        if isinstance(index, slice):
            return np.asarray(
                [read_image(self._view_reference(i)) for i in range(*index.indices(len(self)))]
            )
        if isinstance(index, (list, np.ndarray)):
            return np.asarray([read_image(self._view_reference(int(i))) for i in index])
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
