"""``bliss.data.nodes.channel``: numeric channel nodes."""

from ..subscribe.data_nodes import ChannelNode

ChannelDataNode = ChannelNode
ChannelDataNodeBase = ChannelNode

__all__ = ["ChannelDataNode", "ChannelDataNodeBase"]
