"""``bliss.data.nodes.lima``: lima (2D detector) nodes and their views."""

from ..subscribe.data_nodes import LimaDataView, LimaNode

LimaImageChannelDataNode = LimaNode

__all__ = ["LimaDataView", "LimaImageChannelDataNode"]
