"""BLISS's module-level lookups: a node from its ``db_name``, data of several nodes at once.

``get_node("session:3_ascan:axis:roby")`` finds any node (session, scan or a node of a scan)
by the ``db_name`` the nodes carry; ``get_or_create_node(name, node_type="session")`` is how
BLISS clients get a session node; ``get_data_from_nodes`` reads the whole data of channels
in one round trip per channel (BLISS: module ``bliss.data.nodes.scan``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from .._transport.connection import DataStore
from ..exceptions import InvalidArgumentError, ScanNotFoundError, ScanstreamError
from ..models import NodeType
from .data_nodes import ChannelNode, LimaNode
from .nodes import DataNode
from .tree import get_session_node

logger = logging.getLogger(__name__)


def get_node(
    db_name: str, *, redis_url: str | None = None, store: DataStore | None = None
) -> DataNode | None:
    """The node whose ``db_name`` is ``db_name``, or None when there is none (BLISS's API).

    Parameters
    ----------
    db_name : str
        ``session``, ``session:<number>_<name>`` or the db_name of a node of that scan.
    redis_url : str, optional
        Redis URL; default ``SCANSTREAM_REDIS_URL``, else the embedded server.
    store : DataStore, optional
        An existing connection (takes precedence over ``redis_url``).

    Raises
    ------
    redis.exceptions.ConnectionError
        Redis cannot be reached (not wrapped).
    """
    session_name, _, rest = db_name.partition(":")
    try:
        session = get_session_node(session_name, redis_url=redis_url, store=store)
    except ScanstreamError:
        return None  # not a valid session name: no such node
    if not rest:
        return (
            session
            if session.store.redis.hexists(session.store.keys.sessions, session_name)
            else None
        )
    scan_part = rest.split(":", 1)[0]
    number, sep, _ = scan_part.partition("_")
    if not sep or not number.isdigit():
        return None
    try:
        scan = session.get_scan(int(number))
    except ScanNotFoundError:
        return None
    if scan.db_name == db_name:
        return scan
    if not db_name.startswith(scan.db_name + ":"):
        return None  # another scan with that number (the name differs)
    for node in scan.load_nodes():
        if node.db_name == db_name:
            return node
    return None


def get_or_create_node(
    name: str,
    node_type: str | None = None,
    *,
    redis_url: str | None = None,
    store: DataStore | None = None,
    **kwargs: Any,
) -> DataNode | None:
    """BLISS's ``get_or_create_node``: the session node for ``node_type="session"``.

    A subscriber never creates nodes: for a session it returns the node (which need not
    exist yet: a walk waits for the first scan); for any other type it looks the node up
    by db_name (None when absent). Other BLISS keywords are accepted and ignored.

    Raises
    ------
    InvalidArgumentError
        An invalid session name.
    """
    if node_type == NodeType.SESSION or (node_type is None and ":" not in name):
        return get_session_node(name, redis_url=redis_url, store=store or kwargs.get("connection"))
    if node_type not in (None, *(t.value for t in NodeType)):
        raise InvalidArgumentError(
            f"unknown node_type {node_type!r}; give one of 'session', 'scan', 'channel', ..."
        )
    return get_node(name, redis_url=redis_url, store=store)


def get_data_from_nodes(pipeline: Any, *nodes: DataNode) -> Iterator[tuple[str, Any]]:
    """``(fullname, data)`` for each channel (whole array) and lima node (a view) given.

    ``pipeline`` is BLISS's Redis pipeline argument; it is accepted and not used (each
    channel is read with its own range reads). Other node types are skipped, as in BLISS.

    Raises
    ------
    IndexNoMoreThereError
        Data expired from Redis.
    """
    del pipeline
    views = []
    for node in nodes:
        if isinstance(node, LimaNode):
            views.append((node.fullname, node.get(0, -1)))
        elif isinstance(node, ChannelNode):
            yield node.fullname, node.get(0, -1)
    yield from views
