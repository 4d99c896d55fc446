"""``bliss.data.nodes.node_ref_channel``: channels of references to other scans."""

from ..subscribe.data_nodes import ScanRefNode

NodeRefChannel = ScanRefNode

__all__ = ["NodeRefChannel"]
