"""The base node classes of the subscriber's tree, and the walks every node has.

:class:`DataNode` is the base of every node (session, scan, container, channel...);
:class:`ScanMemberNode` the base of the nodes below a scan, :class:`ContainerNode` a master or
device node. The session and scan nodes are in :mod:`.tree`, the nodes holding data in
:mod:`.data_nodes`.

Nodes are read-only views on what is stored in Redis. Their ``walk*`` methods follow events
live (through :class:`~.walker.Walker`, below this module in the layers).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .._transport.connection import DataStore
from ..models import NodeDescription, NodeType
from .walker import NodeFilter, Walker

if TYPE_CHECKING:
    from .events import Event, StopHandler
    from .tree import ScanNode


class DataNode:
    """Base of all nodes: ``type``, ``name``, ``db_name``, ``info``, ``parent``, walks.

    Attributes
    ----------
    type : str
        The node kind, one of the :class:`~scanstream.NodeType` values.
    name, db_name : str
        Name, and full name from the session (``"session:3_loopscan:timer:diode"``).
    parent : DataNode or None
        The parent node (None for a session).
    index : int
        Number of the node inside its scan (1, 2...); 0 for a scan and for a session.
    store : DataStore
        The connection the node reads through.
    """

    type: str = "node"

    def __init__(
        self, store: DataStore, name: str, db_name: str, parent: DataNode | None, index: int = 0
    ) -> None:
        self.store = store
        self.name = name
        self.db_name = db_name
        self.parent = parent
        self.index = index

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.db_name!r}>"

    @property
    def info(self) -> dict[str, Any]:
        """Metadata of the node."""
        return {}

    @property
    def scan(self) -> ScanNode | None:
        """The scan this node belongs to (the node itself for a scan; None for a session)."""
        return None

    def children(self) -> list[DataNode]:
        """Direct children as stored now."""
        return []

    def walk(
        self,
        include_filter: NodeFilter = None,
        exclude_children: NodeFilter = None,
        *,
        wait: bool = True,
        timeout: float | None = None,
        stop_handler: StopHandler | None = None,
    ) -> Iterator[DataNode]:
        """Yield the nodes below this one (as NEW_NODE events would), live.

        See :meth:`walk_events` for the arguments. With ``wait=False`` it returns once the
        stored nodes have been yielded.
        """
        for event in Walker(
            self,
            include_filter=include_filter,
            exclude_children=exclude_children,
            wait=wait,
            timeout=timeout,
            stop_handler=stop_handler,
            nodes_only=True,
        ):
            yield event.node

    def walk_events(
        self,
        include_filter: NodeFilter = None,
        exclude_children: NodeFilter = None,
        *,
        first_index: int = 0,
        from_next: bool = False,
        wait: bool = True,
        timeout: float | None = None,
        stop_handler: StopHandler | None = None,
    ) -> Iterator[Event]:
        """Yield ``(event_type, node, event_data)`` for everything below this node.

        The stored history is replayed first, then events are yielded live as they are
        published. A walk on a scan (or a node of a scan) returns after that scan's
        END_SCAN; a walk on a session goes on until stopped.

        Parameters
        ----------
        include_filter : str, sequence of str or callable, optional
            Which nodes to yield events of: a node type (``"scan"``, ``"channel"``...), a
            sequence of types, or ``f(node) -> bool``. Data streams of nodes that are not
            included are not read at all.
        exclude_children : str, sequence of str or callable, optional
            Nodes whose children are not walked (nor read). Excluded scans still yield
            their PREPARED_SCAN and END_SCAN.
        first_index : int
            Start of the walk as an epoch time in milliseconds (0: from the beginning).
            The name is BLISS's; it is not a point index (the walker calls it ``since_ms``).
        from_next : bool
            Start from now: only scans (or nodes) created after this call.
        wait : bool
            False: return once the stored history is exhausted instead of waiting.
        timeout : float, optional
            Return when no event came for ``timeout`` seconds.
        stop_handler : StopHandler, optional
            Stops the walk from another thread.

        Raises
        ------
        IndexNoMoreThereError
            Data of a scan being walked expired during the walk.
        DecodingError
            A corrupt entry was read.
        redis.exceptions.ConnectionError
            Redis cannot be reached (not wrapped).
        """
        return Walker(
            self,
            include_filter=include_filter,
            exclude_children=exclude_children,
            since_ms=first_index,
            from_next=from_next,
            wait=wait,
            timeout=timeout,
            stop_handler=stop_handler,
        )

    def walk_on_new_events(
        self,
        include_filter: NodeFilter = None,
        exclude_children: NodeFilter = None,
        *,
        first_index: int = 0,
        from_next: bool = True,
        wait: bool = True,
        timeout: float | None = None,
        stop_handler: StopHandler | None = None,
    ) -> Iterator[Event]:
        """Like :meth:`walk_events`, starting from now (``from_next=True``) by default."""
        return self.walk_events(
            include_filter,
            exclude_children,
            first_index=first_index,
            from_next=from_next,
            wait=wait,
            timeout=timeout,
            stop_handler=stop_handler,
        )


class ScanMemberNode(DataNode):
    """Base of the nodes below a scan: their scan, their index and their metadata."""

    def __init__(self, scan: ScanNode, parent: DataNode, desc: NodeDescription) -> None:
        super().__init__(scan.store, desc.name, f"{parent.db_name}:{desc.name}", parent, desc.index)
        self._scan = scan
        self._info = desc.info

    @property
    def scan(self) -> ScanNode:
        """The scan this node belongs to."""
        return self._scan

    @property
    def info(self) -> dict[str, Any]:
        return dict(self._info)

    def children(self) -> list[DataNode]:
        return [n for n in self._scan.load_nodes() if n.parent is self]


class ContainerNode(ScanMemberNode):
    """A master or device node of a scan (``type`` "container")."""

    type = NodeType.CONTAINER.value
