"""The consumer API of BLISS's "Subscribing" layer: nodes, walks and their events.

Import the public names from :mod:`scanstream`. Inside, the modules depend on one another in
one direction only: ``events`` <- ``walker`` <- ``nodes`` <- ``data_nodes`` <- ``tree``
(``images`` stands alone). The walker knows the node classes by their ``type`` only.
"""

from .data_nodes import ChannelNode, LimaNode, ScanRefNode, StreamNode
from .events import Event, EventData, EventType, StopHandler
from .images import read_image
from .lima_view import LimaDataView
from .nodes import ContainerNode, DataNode, ScanMemberNode
from .tree import ScanNode, SessionNode, get_session_node

__all__ = [
    "ChannelNode",
    "ContainerNode",
    "DataNode",
    "Event",
    "EventData",
    "EventType",
    "LimaDataView",
    "LimaNode",
    "ScanMemberNode",
    "ScanNode",
    "ScanRefNode",
    "SessionNode",
    "StopHandler",
    "StreamNode",
    "get_session_node",
    "read_image",
]
