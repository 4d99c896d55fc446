"""The producer API: sessions, scans, containers and the data publishers of their nodes.

Import the public names from :mod:`scanstream`. Inside, ``session`` -> ``scan`` ->
``channels`` -> ``sender``: the session numbers and announces scans, a scan owns its node tree
and its end, the data publishers validate and queue, and the sender sends what is queued.
"""

from .channels import ChannelPublisher, LimaPublisher, ScanRefPublisher
from .scan import ContainerPublisher, ScanPublisher
from .session import PublishingSession, create_session

__all__ = [
    "ChannelPublisher",
    "ContainerPublisher",
    "LimaPublisher",
    "PublishingSession",
    "ScanPublisher",
    "ScanRefPublisher",
    "create_session",
]
