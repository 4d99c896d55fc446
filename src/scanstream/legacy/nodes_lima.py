"""``bliss.data.nodes.lima``: lima (2D detector) nodes and their views."""

from ..subscribe.data_nodes import LimaNode
from ..subscribe.lima_view import LimaDataView

LimaImageChannelDataNode = LimaNode

__all__ = ["LimaDataView", "LimaImageChannelDataNode"]
