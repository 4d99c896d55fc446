"""The base node classes of the subscriber's tree, and the walks every node has.

:class:`DataNode` is the base of every node (session, scan, container, channel...);
:class:`ScanMemberNode` the base of the nodes below a scan, :class:`ContainerNode` a master or
device node. The session and scan nodes are in :mod:`.tree`, the nodes holding data in
:mod:`.data_nodes`.

Nodes are read-only views on what is stored in Redis. Their ``walk*`` methods follow events
live (through :class:`~.walker.Walker`, below this module in the layers).
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .._transport.connection import DataStore
from ..exceptions import InvalidArgumentError, ScanNotFoundError
from ..models import NodeDescription, NodeType
from .info import NodeInfo
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
    def info(self) -> NodeInfo:
        """Metadata of the node (a dict; ``info.get_all()`` re-reads it, as BLISS's settings)."""
        return NodeInfo({})

    @property
    def fullname(self) -> str:
        """BLISS's full name: ``<controller>:<name>`` for data nodes, the name otherwise."""
        return self.name

    @property
    def scan(self) -> ScanNode | None:
        """The scan this node belongs to (the node itself for a scan; None for a session)."""
        return None

    @property
    def node_type(self) -> str:
        """The node kind, as :attr:`type` (BLISS's nodes had both; the Nexus writer reads this one)."""
        return self.type

    @property
    def bliss_mode(self) -> bool:
        """True for nodes reached through BLISS 1.x's module names (:mod:`scanstream.legacy`).

        Such nodes give what BLISS gave where scanstream's own API differs: the scan_info
        times ``start_time`` and ``end_time`` as ``datetime.datetime`` (local time, no
        timezone) instead of ISO 8601 strings, and lima views numbering images from the
        acquisition's first (``get(5).get_image(0)`` is image 0). Set on a session node, it
        holds for every node reached from it.
        """
        return self.parent.bliss_mode if self.parent is not None else False

    @property
    def iterator(self) -> DataNode:
        """The node itself (BLISS's deprecated ``node.iterator``, still in beamline scripts)."""
        return self

    def children(self) -> list[DataNode]:
        """Direct children as stored now."""
        return []

    def walk(
        self,
        filter: NodeFilter = None,  # BLISS's deprecated name of include_filter
        include_filter: NodeFilter = None,
        exclude_children: NodeFilter = None,
        exclude_existing_children: NodeFilter = None,
        wait: bool = True,
        stop_handler: StopHandler | None = None,
        active_streams: Any = None,
        excluded_stream_names: Any = None,
        first_index: int | None = 0,
        started_event: Any = None,
        *,
        timeout: float | None = None,
    ) -> Iterator[DataNode]:
        """Yield the nodes below this one (as NEW_NODE events would), live.

        The arguments are BLISS's, in its positional order; see :meth:`walk_events`. With
        ``wait=False`` it returns once the stored nodes have been yielded.
        """
        for event in self._walker(
            filter,
            include_filter,
            exclude_children,
            exclude_existing_children,
            active_streams,
            excluded_stream_names,
            first_index=first_index,
            from_next=False,
            wait=wait,
            timeout=timeout,
            stop_handler=stop_handler,
            started_event=started_event,
            nodes_only=True,
        ):
            yield event.node

    def walk_from_last(
        self,
        filter: NodeFilter = None,  # BLISS's deprecated name of include_filter
        include_filter: NodeFilter = None,
        exclude_children: NodeFilter = None,
        exclude_existing_children: NodeFilter = None,
        wait: bool = True,
        include_last: bool = True,
        stop_handler: StopHandler | None = None,
        started_event: Any = None,
        *,
        timeout: float | None = None,
    ) -> Iterator[DataNode]:
        """Like :meth:`walk`, starting from the last child (``include_last``) or from now.

        On a session, ``include_last=True`` yields the latest scan first, then every scan
        created after it; ``include_last=False`` only the scans created from now on. On a
        node of a scan, the last node stored now (``include_last``), then the new ones. The
        arguments are BLISS's, in its positional order.
        """
        start_id = self._last_child_start() if include_last else None
        if include_last and start_id is None and self.scan is not None:
            # A node of a scan (BLISS walked it from its last child): the last node stored
            # now, then the new ones. The nodes of a scan come in their stored order, so the
            # second walk yields the same ones first.
            args = (filter, include_filter, exclude_children, exclude_existing_children)
            skip = max(len(list(self.walk(*args, wait=False))) - 1, 0)
            walk = self.walk(
                *args,
                wait=wait,
                stop_handler=stop_handler,
                started_event=started_event,
                timeout=timeout,
            )
            yield from itertools.islice(walk, skip, None)
            return
        for event in self._walker(
            filter,
            include_filter,
            exclude_children,
            exclude_existing_children,
            first_index=0,
            from_next=not include_last or start_id is None,
            wait=wait,
            timeout=timeout,
            stop_handler=stop_handler,
            started_event=started_event,
            nodes_only=True,
            start_id=start_id,
        ):
            yield event.node

    def _get_last_child(
        self,
        filter: NodeFilter = None,  # BLISS's deprecated name of include_filter
        include_filter: NodeFilter = None,
        exclude_children: NodeFilter = None,
        exclude_existing_children: NodeFilter = None,
    ) -> tuple[DataNode | None, dict[str, Any], set[str]]:
        """BLISS's helper of :meth:`walk_from_last`: ``(node, {}, set())``, ``node`` the last
        one :meth:`walk_from_last` yields now (None if none).

        On a session with ``include_filter="scan"``: the latest scan; on a node of a scan, the
        last node a walk on it yields now. The two other items were BLISS's stream-reader
        state; they are empty here.
        """
        nodes = self.walk_from_last(
            filter, include_filter, exclude_children, exclude_existing_children, wait=False
        )
        last = collections.deque(nodes, maxlen=1)
        return (last[0] if last else None), {}, set()

    def _last_child_start(self) -> bytes | None:
        """Stream position just before this node's last child (None: replay everything)."""
        return None

    def walk_events(
        self,
        filter: NodeFilter = None,  # BLISS's deprecated name of include_filter
        include_filter: NodeFilter = None,
        exclude_children: NodeFilter = None,
        exclude_existing_children: NodeFilter = None,
        wait: bool = True,
        first_index: int | None = 0,
        active_streams: Any = None,
        excluded_stream_names: Any = None,
        stop_handler: StopHandler | None = None,
        started_event: Any = None,
        *,
        from_next: bool = False,
        timeout: float | None = None,
    ) -> Iterator[Event]:
        """Yield ``(event_type, node, event_data)`` for everything below this node.

        The stored history is replayed first, then events are yielded live as they are
        published. A walk on a scan (or a node of a scan) returns after that scan's
        end; a walk on a session goes on until stopped. END_SCAN is yielded by walks on a
        scan or a session only (it belongs to the scan node, as in BLISS).

        The arguments up to ``started_event`` are BLISS's, in its positional order (its first
        one is the deprecated ``filter``); give the others by keyword.

        Parameters
        ----------
        filter : str, sequence of str or callable, optional
            BLISS's deprecated name of ``include_filter`` (give one of them): ``walk_events("scan")``
            filters as ``walk_events(include_filter="scan")``.
        include_filter : str, sequence of str or callable, optional
            Which nodes to yield events of: a node type (``"scan"``, ``"channel"``...), a
            sequence of types, or ``f(node) -> bool``. Data streams of nodes that are not
            included are not read at all.
        exclude_children : str, sequence of str or callable, optional
            Nodes whose children are not walked (nor read). Excluded scans still yield
            their PREPARED_SCAN and END_SCAN.
        exclude_existing_children : str, sequence of str or callable, optional
            The same, for the nodes that existed when the walk started (default:
            ``exclude_children``, as in BLISS).
        wait : bool
            False: return once the stored history is exhausted instead of waiting.
        first_index : int or None
            Start of the walk as an epoch time in milliseconds (0: from the beginning;
            None: from now, as ``from_next``). The name is BLISS's; it is not a point index.
        active_streams, excluded_stream_names : None
            BLISS's stream-reader state: scanstream's walks keep none, so only None (or an
            empty container) is accepted.
        stop_handler : StopHandler, optional
            Stops the walk from another thread.
        started_event : threading.Event or gevent.event.Event, optional
            Set once the walk's start position is fixed: anything published after it is seen.
        from_next : bool
            Start from now: only scans (or nodes) created after this call.
        timeout : float, optional
            Return when no event came for ``timeout`` seconds.

        Raises
        ------
        InvalidArgumentError
            Both ``filter`` and ``include_filter`` given; ``active_streams`` or
            ``excluded_stream_names`` given.
        IndexNoMoreThereError
            Data of a scan being walked expired during the walk (a session walk instead
            ends that scan with ``ScanState.EXPIRED``).
        DecodingError
            A corrupt entry was read.
        redis.exceptions.ConnectionError
            Redis cannot be reached (not wrapped).
        """
        return self._walker(
            filter,
            include_filter,
            exclude_children,
            exclude_existing_children,
            active_streams,
            excluded_stream_names,
            first_index=first_index,
            from_next=from_next,
            wait=wait,
            timeout=timeout,
            stop_handler=stop_handler,
            started_event=started_event,
        )

    def walk_on_new_events(
        self,
        filter: NodeFilter = None,  # BLISS's deprecated name of include_filter
        include_filter: NodeFilter = None,
        exclude_children: NodeFilter = None,
        exclude_existing_children: NodeFilter = None,
        wait: bool = True,
        first_index: int | None = 0,
        active_streams: Any = None,
        excluded_stream_names: Any = None,
        stop_handler: StopHandler | None = None,
        started_event: Any = None,
        *,
        from_next: bool = True,
        timeout: float | None = None,
    ) -> Iterator[Event]:
        """Like :meth:`walk_events`, starting from now (``from_next=True``) by default.

        BLISS took keywords only here; positional arguments are in :meth:`walk_events`'s order.
        """
        return self.walk_events(
            filter,
            include_filter,
            exclude_children,
            exclude_existing_children,
            wait,
            first_index,
            active_streams,
            excluded_stream_names,
            stop_handler,
            started_event,
            from_next=from_next,
            timeout=timeout,
        )

    def _walker(
        self,
        filter: NodeFilter,
        include_filter: NodeFilter,
        exclude_children: NodeFilter,
        exclude_existing_children: NodeFilter,
        active_streams: Any = None,
        excluded_stream_names: Any = None,
        *,
        first_index: int | None,
        from_next: bool,
        **kwargs: Any,
    ) -> Walker:
        for name, value in (
            ("active_streams", active_streams),
            ("excluded_stream_names", excluded_stream_names),
        ):
            # BLISS's walk_from_last handed its stream reader's state to walk(); scanstream's
            # walks keep no such state, so a value given there cannot be honoured.
            if value is not None and (not hasattr(value, "__len__") or len(value)):
                raise InvalidArgumentError(
                    f"{name}={value!r}: scanstream's walks keep no stream-reader state; "
                    f"leave {name} out (or None)"
                )
        if filter is not None:
            if include_filter is not None:
                raise InvalidArgumentError(
                    f"give include_filter ({include_filter!r}) or its alias filter "
                    f"({filter!r}), not both"
                )
            include_filter = filter
        return Walker(
            self,
            include_filter=include_filter,
            exclude_children=exclude_children,
            exclude_existing_children=exclude_existing_children,
            since_ms=first_index or 0,
            from_next=from_next or first_index is None,
            **kwargs,
        )


class ScanMemberNode(DataNode):
    """Base of the nodes below a scan: their scan, their index and their metadata."""

    def __init__(self, scan: ScanNode, parent: DataNode, desc: NodeDescription) -> None:
        # BLISS's db_name ends in the parent and the short name: a channel "axis:roby" under
        # the master "axis" is "...:axis:roby", not "...:axis:axis:roby".
        prefix = f"{parent.name}:"
        tail = desc.name[len(prefix) :] if desc.name.startswith(prefix) else desc.name
        super().__init__(scan.store, desc.name, f"{parent.db_name}:{tail}", parent, desc.index)
        self._scan = scan
        self._info = desc.info

    @property
    def scan(self) -> ScanNode:
        """The scan this node belongs to."""
        return self._scan

    @property
    def info(self) -> NodeInfo:
        """The node's info with the updates its publisher made so far (re-read from Redis
        until the scan has ended; ``get_all()`` re-reads)."""
        try:
            updates = self._scan.node_info_updates(self.index, fresh=False)
        except ScanNotFoundError:  # the scan is gone: what was read last
            updates = self._scan.node_info_updates(self.index, cached=True)
        return NodeInfo({**self._info, **updates}, self._fresh_info)

    def _fresh_info(self) -> dict[str, Any]:
        return {**self._info, **self._scan.node_info_updates(self.index, fresh=True)}

    def children(self) -> list[DataNode]:
        return [n for n in self._scan.load_nodes() if n.parent is self]


class ContainerNode(ScanMemberNode):
    """A master or device node of a scan (``type`` "container")."""

    type = NodeType.CONTAINER.value
