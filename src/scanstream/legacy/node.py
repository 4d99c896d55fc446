"""``bliss.data.node``: session lookup and the node base classes under their BLISS names.

The lookups are scanstream's, and the nodes they give are in BLISS mode
(:attr:`scanstream.DataNode.bliss_mode`): scan_info times as ``datetime.datetime``, lima view
image numbers from the acquisition's first image, as BLISS 1.x gave them.
"""

from __future__ import annotations

from typing import Any, TypeVar

from .._transport.connection import DataStore, default_store
from ..exceptions import SessionNotFoundError
from ..subscribe import lookup, tree
from ..subscribe.nodes import ContainerNode, DataNode
from ..subscribe.tree import ScanNode, SessionNode

#: BLISS's container class (masters and devices).
DataNodeContainer = ContainerNode

_Node = TypeVar("_Node", bound=DataNode)


def _in_bliss_mode(node: _Node) -> _Node:
    """``node`` with its session (hence every node reached from it) in BLISS mode."""
    root: DataNode = node
    while root.parent is not None:
        root = root.parent
    if isinstance(root, SessionNode):
        root.bliss_mode = True
    return node


class DataNodeIterator:
    """BLISS's deprecated iterator of a node (``DataNodeIterator(node).walk(...)``): every
    attribute is the node's, as BLISS's proxy (``iterator.node`` is the node)."""

    def __init__(self, node: DataNode) -> None:
        self.node = node

    def __getattr__(self, name: str) -> Any:
        return getattr(self.node, name)


def get_session_node(
    name: str, *, redis_url: str | None = None, store: DataStore | None = None
) -> SessionNode:
    """:func:`scanstream.get_session_node`, the node in BLISS mode."""
    return _in_bliss_mode(tree.get_session_node(name, redis_url=redis_url, store=store))


def get_node(
    db_name: str, *, redis_url: str | None = None, store: DataStore | None = None, **kwargs: Any
) -> DataNode | None:
    """:func:`scanstream.get_node`, the node in BLISS mode (BLISS's other keywords, such as
    ``state`` or ``connection``, are accepted and ignored)."""
    node = lookup.get_node(db_name, redis_url=redis_url, store=store)
    return None if node is None else _in_bliss_mode(node)


def get_or_create_node(
    name: str,
    node_type: str | None = None,
    *,
    redis_url: str | None = None,
    store: DataStore | None = None,
    **kwargs: Any,
) -> DataNode | None:
    """:func:`scanstream.get_or_create_node`, the node in BLISS mode."""
    node = lookup.get_or_create_node(name, node_type, redis_url=redis_url, store=store, **kwargs)
    return None if node is None else _in_bliss_mode(node)


def get_nodes(*db_names: str, **kwargs: Any) -> list[DataNode | None]:
    """The nodes of several db_names (None for each one that does not exist)."""
    return [get_node(name, **kwargs) for name in db_names]


def datanode_factory(
    name: str,
    node_type: str | None = None,
    parent: DataNode | None = None,
    connection: Any = None,
    state: str | None = None,
    create_not_state: bool = False,
    **kwargs: Any,
) -> DataNode | None:
    """The node ``name`` (relative to ``parent`` when given), as BLISS's factory found it.

    A session node is given even before its first scan (BLISS instantiated it; the Nexus
    writer's subscribers start so). Subscribers create nothing: any other node that does
    not exist (yet) is None. ``connection``, ``state``, ``create_not_state`` and other
    keywords of BLISS's are ignored (``redis_url`` and ``store`` are scanstream's).
    """
    # BLISS's other keywords (on_not_state="instantiate"...) have no meaning here.
    where = {k: kwargs[k] for k in ("redis_url", "store") if k in kwargs}
    db_name = f"{parent.db_name}:{name}" if parent is not None else name
    node = get_node(db_name, **where)
    if node is None and ":" not in db_name and node_type in (None, "session", "container"):
        return get_session_node(db_name, **where)
    return node


def sessions_list(
    *, redis_url: str | None = None, store: DataStore | None = None
) -> list[SessionNode]:
    """The session nodes of the sessions with scans in Redis (BLISS's ``sessions_list()``)."""
    store = store if store is not None else default_store(redis_url)
    return [get_session_node(name, store=store) for name in store.sessions()]  # BLISS mode


def get_last_saved_scan(parent: DataNode) -> ScanNode | None:
    """The session's latest scan whose saving is on (``scan_info["save"]``), or None.

    ``parent`` is a session node (BLISS took any container; a scan's parent is its session).
    """
    if isinstance(parent, SessionNode):
        session: DataNode | None = parent
    else:
        own = parent.scan
        session = own.parent if own is not None else None
    if not isinstance(session, SessionNode):
        return None
    try:
        scans = session.children()
    except SessionNotFoundError:  # no scan published yet
        return None
    for child in reversed(scans):
        if isinstance(child, ScanNode) and child.type == "scan" and child.info.get("save"):
            return child
    return None


def get_last_scan_filename(parent: DataNode) -> str | None:
    """``scan_info["filename"]`` of :func:`get_last_saved_scan`, or None."""
    scan = get_last_saved_scan(parent)
    return None if scan is None else scan.info.get("filename")


__all__ = [
    "DataNode",
    "DataNodeIterator",
    "DataNodeContainer",
    "datanode_factory",
    "get_last_saved_scan",
    "get_last_scan_filename",
    "get_node",
    "get_nodes",
    "get_or_create_node",
    "get_session_node",
    "sessions_list",
]
