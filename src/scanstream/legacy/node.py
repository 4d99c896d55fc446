"""``bliss.data.node``: session lookup and the node base classes under their BLISS names."""

from __future__ import annotations

from typing import Any

from ..subscribe.lookup import get_node, get_or_create_node
from ..subscribe.nodes import ContainerNode, DataNode
from ..subscribe.tree import get_session_node

#: BLISS's container class (masters and devices).
DataNodeContainer = ContainerNode


def get_nodes(*db_names: str, **kwargs: Any) -> list[DataNode | None]:
    """The nodes of several db_names (None for each one that does not exist)."""
    return [get_node(name, **kwargs) for name in db_names]


__all__ = [
    "DataNode",
    "DataNodeContainer",
    "get_node",
    "get_nodes",
    "get_or_create_node",
    "get_session_node",
]
