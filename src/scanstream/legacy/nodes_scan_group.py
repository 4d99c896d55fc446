"""``bliss.data.nodes.scan_group``: the node class of scan groups and sequences."""

from __future__ import annotations

from typing import Any

from ..subscribe.tree import ScanNode


class _GroupScanNodeType(type):
    """``isinstance(node, GroupScanNode)`` is True for the scan nodes of type ``scan_group``.

    scanstream has one class for scans and scan groups (their ``type`` tells them apart);
    BLISS had a subclass, which clients test with ``isinstance``.
    """

    def __instancecheck__(cls, instance: Any) -> bool:
        return isinstance(instance, ScanNode) and instance.type == "scan_group"


class GroupScanNode(ScanNode, metaclass=_GroupScanNodeType):
    """A scan group or sequence node (BLISS's class); the nodes are :class:`ScanNode`\\ s
    whose ``type`` is ``"scan_group"``, which ``isinstance`` recognises."""


__all__ = ["GroupScanNode"]
