"""``bliss.data.nodes.scan``: scan nodes and ``get_data_from_nodes``."""

from ..subscribe.lookup import get_data_from_nodes
from ..subscribe.tree import ScanNode

Scan = ScanNode

__all__ = ["Scan", "ScanNode", "get_data_from_nodes"]
