"""The subscriber's node tree: session -> scans -> containers -> channels / lima nodes.

Nodes are read-only views on what is stored in Redis. Their ``walk*`` methods follow
events live; their data methods read any range of points at random.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Union, cast

from .._protocol import codecs, metadata
from .._protocol.keys import check_session_name
from .._protocol.scripts import end_scan
from .._transport.connection import DataStore, default_store, stream_entries
from ..exceptions import (
    DecodingError,
    ScanNotFoundError,
)
from ..models import FINAL_STATES, NodeDescription, ScanEnd, ScanState

if TYPE_CHECKING:
    from .events import Event, StopHandler

logger = logging.getLogger(__name__)

NodeFilter = Union[str, Sequence[str], Callable[["DataNode"], bool], None]


def get_session_node(
    name: str, *, redis_url: str | None = None, store: DataStore | None = None
) -> SessionNode:
    """Return the node of session ``name``, the root to walk its scans.

    The session need not exist yet: a walk waits for its first scan. Reads that need it
    (``children()``, ``walk(wait=False)``...) raise :class:`SessionNotFoundError`.

    Parameters
    ----------
    name : str
        Session name.
    redis_url : str, optional
        Redis URL; default ``SCANSTREAM_REDIS_URL``, else the embedded server.
    store : DataStore, optional
        An existing connection (takes precedence over ``redis_url``).

    Raises
    ------
    InvalidArgumentError
        Invalid session name.
    ProtocolVersionError
        The database holds another protocol version.
    """
    check_session_name(name)
    return SessionNode(store or default_store(redis_url), name)


class DataNode:
    """Base of all nodes: ``type``, ``name``, ``db_name``, ``info``, ``parent``, walks."""

    type = "node"

    def __init__(self, store: DataStore, name: str, db_name: str, parent: DataNode | None) -> None:
        self.store = store
        self.name = name
        self.db_name = db_name
        self.parent = parent

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.db_name!r}>"

    @property
    def info(self) -> dict[str, Any]:
        """Metadata of the node."""
        return {}

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
        from .walker import Walker

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
        from .walker import Walker

        return Walker(
            self,
            include_filter=include_filter,
            exclude_children=exclude_children,
            first_index=first_index,
            from_next=from_next,
            wait=wait,
            timeout=timeout,
            stop_handler=stop_handler,
        )

    def walk_on_new_events(self, *, from_next: bool = True, **kwargs: Any) -> Iterator[Event]:
        """Like :meth:`walk_events`, starting from now (``from_next=True``) by default."""
        return self.walk_events(from_next=from_next, **kwargs)


class SessionNode(DataNode):
    """A session: its children are its scans. Use :func:`get_session_node`."""

    type = "session"

    def __init__(self, store: DataStore, name: str) -> None:
        super().__init__(store, name, name, None)
        self.session_name = name

    @property
    def info(self) -> dict[str, Any]:
        return {"name": self.name}

    def children(self) -> list[DataNode]:
        """The scans of the session still stored, in order.

        Raises
        ------
        SessionNotFoundError
            No scan was ever published in this session.
        """
        self.store.require_session(self.name)
        entries = stream_entries(self.store.redis.xrange(self.store.keys.session_scans(self.name)))
        numbers = [int(fields[b"scan"]) for _, fields in entries if b"scan" in fields]
        return [scan for scan in self._load_scans(numbers) if scan is not None]

    def get_scan(self, number: int) -> ScanNode:
        """The scan numbered ``number``.

        Raises
        ------
        ScanNotFoundError
            No such scan (never created, or expired).
        """
        scan = self._load_scans([number])[0]
        if scan is None:
            raise ScanNotFoundError(
                f"no scan number {number} in session {self.name!r}: never created or expired"
            )
        return scan

    def _load_scans(self, numbers: list[int]) -> list[ScanNode | None]:
        pipe = self.store.redis.pipeline(transaction=False)
        for n in numbers:
            pipe.hgetall(self.store.keys.scan(self.name, n))
        return [ScanNode(self, fields) if fields else None for fields in pipe.execute()]


class ScanNode(DataNode):
    """A scan (``type`` is ``scan`` or ``scan_group``); ``info`` is its scan_info."""

    def __init__(self, session: SessionNode, fields: dict[bytes, bytes]) -> None:
        self.number = int(fields[b"number"])
        self.scan_name = fields[b"name"].decode()
        self.type = fields[b"node_type"].decode()
        super().__init__(
            session.store, f"{self.number}_{self.scan_name}", f"{session.name}:{self.number}_{self.scan_name}", session
        )
        self.session_name = session.name
        keys = self.store.keys
        self.key = keys.scan(session.name, self.number)
        self.events_key = keys.scan_events(session.name, self.number)
        self.lease_key = keys.scan_lease(session.name, self.number)
        self._fields = fields
        self._nodes: dict[int, DataNode] = {}
        self._lock = threading.Lock()
        self.end: ScanEnd | None = None

    def _reload(self) -> dict[bytes, bytes]:
        if self._state_of(self._fields) not in FINAL_STATES:
            # bytes, never str: the client is created without decode_responses.
            fields = cast("dict[bytes, bytes]", self.store.redis.hgetall(self.key))
            if not fields:
                raise ScanNotFoundError(f"scan {self.db_name} is gone from Redis (expired or deleted)")
            self._fields = fields
        return self._fields

    @staticmethod
    def _state_of(fields: dict[bytes, bytes]) -> ScanState:
        return ScanState[fields[b"state"].decode()]

    @property
    def info(self) -> dict[str, Any]:
        """The scan_info (re-read from Redis until the scan has ended)."""
        info = metadata.loads(self._reload()[b"info"])
        return info if isinstance(info, dict) else {}

    @property
    def state(self) -> ScanState:
        """Current state; a running scan whose publisher's lease expired becomes KILLED."""
        state = self._state_of(self._reload())
        if not state.is_final and not self.store.redis.exists(self.lease_key):
            self.declare_killed_if_lease_expired()
            state = self._state_of(self._reload())
        return state

    def declare_killed_if_lease_expired(self) -> bool:
        """End the scan as KILLED if its publisher's lease has expired. True if it did.

        Needs write access; a read-only user gets ``redis.exceptions.NoPermissionError``.
        """
        outcome, _ = end_scan(
            self.store.redis, self.store.keys, self.session_name,
            self.number,
            ScanState.KILLED.name,
            "the publisher stopped renewing its lease (process killed or frozen)",
            _now(),
            retention_time=self.store.settings.retention_time, only_if_lease_expired=True,
        )
        return outcome == "ok"

    def children(self) -> list[DataNode]:
        """The top-master containers of the scan."""
        self.load_nodes()
        return [n for n in self._nodes.values() if n.parent is self]

    def load_nodes(self) -> list[DataNode]:
        """All nodes of the scan as stored now, parents before children."""
        for _, fields in stream_entries(self.store.redis.xrange(self.events_key)):
            if fields.get(b"event") == b"NEW_NODE":
                self.node_from_entry(fields)
        return list(self._nodes.values())

    def node_from_entry(self, fields: dict[bytes, bytes]) -> DataNode:
        """Return the node described by a NEW_NODE entry (one object per node index)."""
        try:
            desc = NodeDescription(
                index=int(fields[b"node"]),
                parent=int(fields[b"parent"]),
                type=fields[b"type"].decode(),
                name=fields[b"name"].decode(),
                info=metadata.loads(fields[b"info"]) or {},
            )
        except (KeyError, ValueError) as exc:
            raise DecodingError(f"scan {self.db_name}: corrupt NEW_NODE entry ({exc})") from None
        with self._lock:
            node = self._nodes.get(desc.index)
            if node is None:
                parent = self if desc.parent == 0 else self._nodes.get(desc.parent)
                if parent is None:
                    raise DecodingError(f"scan {self.db_name}: node {desc.name!r} has an unknown parent")
                from .data_nodes import NODE_CLASSES

                cls = NODE_CLASSES.get(desc.type, ContainerNode)
                node = cls(self, parent, desc)
                self._nodes[desc.index] = node
        return node


def _now() -> float:
    import time

    return time.time()


class ContainerNode(DataNode):
    """A master or device node of a scan (``type`` "container")."""

    type = "container"

    def __init__(self, scan: ScanNode, parent: DataNode, desc: NodeDescription) -> None:
        super().__init__(scan.store, desc.name, f"{parent.db_name}:{desc.name}", parent)
        self.scan = scan
        self.index = desc.index
        self._info = desc.info

    @property
    def info(self) -> dict[str, Any]:
        return dict(self._info)

    def children(self) -> list[DataNode]:
        return [n for n in self.scan.load_nodes() if n.parent is self]
