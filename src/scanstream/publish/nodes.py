"""The node tree of a scan being published: containers, their data nodes, their NEW_NODE entries.

:class:`ContainerPublisher` makes the nodes (``create_container``, ``create_channel``...);
``_NodeTree`` numbers them, keeps their NEW_NODE entries until they are written (with
PREPARED, decision 0015, or at once after it) and updates their info. The scan itself, its
PREPARED and its end, are in :mod:`.scan`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from .._protocol import codecs, metadata
from .._protocol.entries import (
    new_node_fields,
    node_info_field,
)
from .._protocol.keys import check_item_name
from .._protocol.metadata import check_scan_info
from .._protocol.scripts import prepare_scan, set_node_info
from ..exceptions import (
    EncodingError,
    InvalidArgumentError,
    NodeExistsError,
    ScanEndedError,
)
from ..models import NodeDescription, SavingMode, ScanState
from .channels import (
    ChannelPublisher,
    LimaPublisher,
    ScanRefPublisher,
    _DataPublisher,
    _NodePublisher,
)
from .sender import Sender

if TYPE_CHECKING:
    import numpy.typing as npt

    from .scan import ScanPublisher


__all__ = ["ContainerPublisher"]


_Node = TypeVar("_Node", bound=_NodePublisher)

#: Keys scanstream sets in a data node's info at its creation: readers decode with them.
_CREATION_KEYS = frozenset({"dtype", "shape", "unit", "saving_mode"})


class _NodeTree:
    """The nodes of one scan: numbered in creation order, names unique under a parent.

    Every NEW_NODE entry precedes PREPARED and the node's first data, so that a reader knows
    every node before its data. The nodes created before ``prepared()`` are written with
    PREPARED, in one script call (``prepare_scan.lua``), or by the sender in the transaction
    of the first data sent before it (:meth:`take_unwritten`); a node created after it is
    written before it is handed out (decision 0015).
    """

    def __init__(self, scan: ScanPublisher, sender: Sender) -> None:
        self.scan = scan
        self.sender = sender
        self.events_key = scan.store.keys.scan_events(scan.session_name, scan.number)
        self.scan_key = scan.store.keys.scan(scan.session_name, scan.number)
        self._lock = threading.Lock()
        self._names: set[tuple[int, str]] = set()
        self._count = 0
        self.descriptions: list[NodeDescription] = []  # for complete_scan_info
        self._updates: dict[int, dict[str, Any]] = {}  # node index -> info keys added
        self.data_nodes: list[_DataPublisher] = []
        # NEW_NODE fields of the nodes made before prepared() and not written yet, in order,
        # encoded as the sender's transaction takes them (prepare_scan takes bytes too).
        self._unwritten: list[dict[bytes, bytes]] = []
        #: True while some NEW_NODE entries are not written (read by the sender, unlocked).
        self.pending = False

    def add(
        self,
        parent: ContainerPublisher | None,
        name: str,
        node_type: str,
        info: Mapping[str, Any] | None,
        make: Callable[..., _Node],
        *args: Any,
    ) -> _Node:
        """Announce a node and return ``make(scan, index, name, parent_db_name, *args)``.

        Raises
        ------
        ScanEndedError
            The scan has ended (or is ending).
        InvalidArgumentError
            Invalid name.
        EncodingError
            ``info`` is malformed.
        NodeExistsError
            The parent has a child of that name.
        """
        scan = self.scan
        if scan.state.is_final or self.sender.stopped:
            raise ScanEndedError(f"scan {scan.db_name} has ended: no new node {name!r}")
        check_item_name(name, "node", "/")
        node_info = check_scan_info(info, f"info of node {name!r}")
        parent_index = parent.index if parent is not None else 0
        parent_db_name = parent.db_name if parent is not None else scan.db_name
        with self._lock:
            if (parent_index, name) in self._names:
                raise NodeExistsError(f"{parent_db_name} already has a child named {name!r}")
            index = self._count + 1
            desc = NodeDescription(index, parent_index, node_type, name, node_info)
            fields = new_node_fields(desc)
            if scan.state is ScanState.CREATED:  # written with PREPARED or the first data
                self._unwritten.append(
                    {str(k).encode(): str(v).encode() for k, v in fields.items()}
                )
                self.pending = True
            # NOMKSTREAM: on a server that lost the scan, create no stream without expiry.
            elif scan.store.redis.xadd(self.events_key, fields, nomkstream=True) is None:
                raise scan.lost(f"no node {name!r} was created")
            self._names.add((parent_index, name))
            self._count = index
            self.descriptions.append(desc)
            # Made once announced: a data node's queue joins the sender only then.
            node = make(scan, index, name, parent_db_name, *args)
            if isinstance(node, _DataPublisher):
                self.data_nodes.append(node)
            return node

    def take_unwritten(self) -> list[tuple[str, dict[bytes, bytes]]]:
        """The NEW_NODE entries not written yet, as ``(events key, fields)``; forgotten here.

        For the sender, which writes them at the head of its transaction (it holds its send
        lock: :meth:`ScanPublisher.prepared` takes it too, so the two never both write them).
        """
        with self._lock:
            unwritten, self._unwritten, self.pending = self._unwritten, [], False
        return [(self.events_key, fields) for fields in unwritten]

    def give_back_unwritten(self, entries: list[tuple[str, dict[bytes, bytes]]]) -> None:
        """Entries of :meth:`take_unwritten` whose transaction failed: written later."""
        if not entries:
            return
        with self._lock:
            self._unwritten[:0] = [fields for _, fields in entries]
            self.pending = True

    def prepare(
        self,
        hash_fields: Mapping[Any, object],
        entry: Mapping[Any, object],
        written: Callable[[], None],
        new_scan_id: bytes | None = None,
    ) -> int:
        """Write the unwritten NEW_NODE entries and PREPARED (``prepare_scan``); 0 if lost.

        2 when the script also found the NEW_SCAN entry ``new_scan_id`` (a single server),
        else 1.

        Called with the sender's send lock held: no send writes NEW_NODE entries meanwhile.
        ``written`` (which makes the scan PREPARED) is called under the tree's lock, so that
        a node created concurrently is either in this call or written by itself.
        """
        scan = self.scan
        store = scan.store
        with self._lock:
            done = prepare_scan(
                store.redis,
                store.keys,
                scan.session_name,
                scan.number,
                hash_fields,
                entry,
                self._unwritten,
                new_scan_id,
            )
            if done:
                self._unwritten, self.pending = [], False
                written()
            return done

    def acknowledged(self) -> dict[int, int]:
        """Data node index -> points Redis acknowledged, for the end-of-scan check."""
        return {node.index: node.acknowledged for node in self.data_nodes}

    def update_info(self, index: int, info: Mapping[str, Any]) -> None:
        """Add ``info`` to the info of node ``index`` (see :meth:`ContainerPublisher.update_info`)."""
        desc = self.descriptions[index - 1]
        scan = self.scan
        where = f"info update of node {desc.name!r}"
        if not isinstance(info, Mapping):
            raise EncodingError(f"{where} must be a dict, got {type(info).__name__}")
        update = metadata.json_safe(info, where)
        fixed = sorted(_CREATION_KEYS & update.keys()) if desc.type != "container" else []
        if fixed:
            raise InvalidArgumentError(
                f"{where}: {', '.join(map(repr, fixed))} set at the node's creation cannot "
                "change (readers decode its data with them); use other keys"
            )
        with self._lock:
            if scan.state.is_final or self.sender.stopped:
                raise ScanEndedError(
                    f"scan {scan.db_name} has ended: the info of node {desc.name!r} can no "
                    "longer be updated; update it before end()"
                )
            merged = {**self._updates.get(index, {}), **update}
            outcome = set_node_info(
                scan.store.redis,
                scan.store.keys,
                scan.session_name,
                scan.number,
                node_info_field(index),
                metadata.dumps(merged, where),
            )
            if outcome == "missing":
                raise scan.lost(f"the info of node {desc.name!r} was not updated")
            if outcome:
                raise ScanEndedError(
                    f"scan {scan.db_name} was ended {outcome} by another process (lease "
                    f"expired?): the info of node {desc.name!r} was not updated"
                )
            self._updates[index] = merged


class ContainerPublisher(_NodePublisher):
    """A master or device node; creates children. Use :meth:`ScanPublisher.create_container`."""

    def __init__(
        self, scan: ScanPublisher, index: int, name: str, parent_db_name: str, tree: _NodeTree
    ) -> None:
        super().__init__(scan, index, name, parent_db_name)
        self._tree = tree

    def create_container(
        self, name: str, info: Mapping[str, Any] | None = None
    ) -> ContainerPublisher:
        """Create a sub-master/device container under this one."""
        return self._tree.add(self, name, "container", info, ContainerPublisher, self._tree)

    def create_channel(
        self,
        name: str,
        dtype: npt.DTypeLike = "float64",
        shape: tuple[int, ...] = (),
        *,
        unit: str | None = None,
        info: Mapping[str, Any] | None = None,
    ) -> ChannelPublisher:
        """Create a numeric channel.

        Parameters
        ----------
        name : str
            Full channel name, for example ``"axis:roby"`` or ``"diode"``.
        dtype : numpy dtype
            bool, integer, float or complex.
        shape : tuple of int
            Shape of one point: ``()`` scalar, ``(1024,)`` a spectrum, ``(-1,)`` a 1D
            point whose length varies.
        unit : str, optional
            Physical unit.

        Raises
        ------
        EncodingError
            Unsupported dtype or shape.
        NodeExistsError
            A sibling has that name.
        """
        codec = codecs.NumericCodec(dtype, shape, name)
        node_info = dict(info or {})
        node_info.update(dtype=codec.dtype.str, shape=list(codec.shape), unit=unit)
        return self._tree.add(
            self, name, "channel", node_info, ChannelPublisher, codec, self._tree.sender
        )

    def create_lima(
        self,
        name: str,
        dtype: npt.DTypeLike,
        shape: tuple[int, int],
        *,
        saving_mode: str = "MANUAL",
        info: Mapping[str, Any] | None = None,
    ) -> LimaPublisher:
        """Create a 2D detector node whose images are stored in files (references only).

        Parameters
        ----------
        dtype, shape
            dtype and (height, width) of the images.
        saving_mode : {"MANUAL", "NOSAVING"}
            With NOSAVING, images are counted but have no file references.
        info : Mapping, optional
            Further description (``user_detector_name``, ``saving_format``...).
        """
        mode = SavingMode(saving_mode)
        check_dtype = codecs.check_dtype(dtype, name)
        frame_shape = codecs.check_shape(shape, name, "lima node")
        if len(frame_shape) != 2 or -1 in frame_shape:
            raise EncodingError(f"lima node {name!r}: shape must be (height, width), got {shape!r}")
        node_info = dict(info or {})
        node_info.update(dtype=check_dtype.str, shape=list(frame_shape), saving_mode=mode.value)
        codec = codecs.ImageRefCodec(name, saved=mode is SavingMode.MANUAL)
        return self._tree.add(
            self, name, "lima", node_info, LimaPublisher, codec, self._tree.sender
        )

    def create_scan_ref_channel(
        self, name: str = "scans", info: Mapping[str, Any] | None = None
    ) -> ScanRefPublisher:
        """Create a channel whose values are references to other scans (scan groups)."""
        codec = codecs.ScanRefCodec(name)
        return self._tree.add(
            self, name, "node_ref_channel", info, ScanRefPublisher, codec, self._tree.sender
        )
