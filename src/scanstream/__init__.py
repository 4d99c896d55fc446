"""scanstream: stream beamline scan data through Redis, subscribe live, write NeXus files.

Publishing::

    from scanstream import create_session
    session = create_session("test_session")
    with session.create_scan("loopscan", {"npoints": 10}) as scan:
        diode = scan.create_container("timer").create_channel("diode", dtype="float64")
        scan.prepared()
        for i in range(10):
            diode.emit(float(i))

Subscribing (the seed's API)::

    from scanstream import get_session_node, EventType
    for event_type, node, event_data in get_session_node("test_session").walk_on_new_events(
        include_filter="scan", from_next=True
    ):
        ...

The alignment numbers of a curve, as BLISS defines them (also shown by ``scanstream web``)::

    from scanstream import cen, com, curve_stats, fwhm, peak
    curve_stats(x, y)   # CurveStats(peak, peak_value, cen, fwhm, com)

Writing every scan of a session into NeXus files (what ``scanstream writer`` runs)::

    from scanstream.writer import WriterService
    WriterService(["test_session"], root="/data").run()   # until Ctrl-C or SIGTERM

The package root never imports the writer (nor h5py): ``WriterService``, ``saved_scans`` and
``writer_status`` are still reachable from here, loaded on first use.
"""

from ._transport.connection import DataStore
from ._transport.settings import Settings
from .analysis import CurveStats, cen, com, curve_stats, fwhm, peak
from .exceptions import (
    DecodingError,
    EncodingError,
    EndOfStream,
    ImageNotSavedError,
    IndexNoMoreThereError,
    IndexNotYetThereError,
    IndexWontBeThereError,
    InvalidArgumentError,
    InvalidTransitionError,
    NexusLayoutError,
    NodeExistsError,
    NoWriterError,
    NoWriterWarning,
    ProtocolVersionError,
    RedisFullError,
    RedisUnreachableError,
    ScanEndedError,
    ScanLostError,
    ScanNotFoundError,
    ScanstreamError,
    ServerError,
    ServerResetError,
    SessionNotFoundError,
    WriterError,
)
from .models import (
    ImageReference,
    NodeType,
    SavingMode,
    SavingState,
    SavingVerdict,
    ScanEnd,
    ScanState,
)
from .publish import (
    ChannelPublisher,
    ContainerPublisher,
    LimaPublisher,
    PublishingSession,
    ScanPublisher,
    ScanRefPublisher,
    create_session,
)
from .subscribe.data_nodes import ChannelNode, LimaNode, ScanRefNode
from .subscribe.events import Event, EventData, EventType, StopHandler
from .subscribe.images import read_image
from .subscribe.lima_view import LimaDataView
from .subscribe.lookup import get_data_from_nodes, get_node, get_or_create_node
from .subscribe.nodes import ContainerNode, DataNode
from .subscribe.scans_watcher import (
    DefaultScansObserver,
    ScansObserver,
    ScansWatcher,
    watch_session_scans,
)
from .subscribe.tree import ScanNode, SessionNode, get_session_node

__version__ = "0.1.0"

# The writer is an application on top of this library: loading it here would import h5py and
# the whole writer with every ``import scanstream``. These names stay reachable, resolved on
# first use (PEP 562).
_WRITER_NAMES = frozenset({"WriterService", "saved_scans", "writer_status"})


def __getattr__(name: str) -> object:
    if name in _WRITER_NAMES:
        from . import writer

        return getattr(writer, name)
    raise AttributeError(f"module 'scanstream' has no attribute {name!r}")


__all__ = [
    "ChannelNode",
    "ChannelPublisher",
    "CurveStats",
    "ContainerNode",
    "ContainerPublisher",
    "DataNode",
    "DataStore",
    "DecodingError",
    "EncodingError",
    "EndOfStream",
    "Event",
    "EventData",
    "EventType",
    "ImageNotSavedError",
    "ImageReference",
    "IndexNoMoreThereError",
    "IndexNotYetThereError",
    "IndexWontBeThereError",
    "InvalidArgumentError",
    "InvalidTransitionError",
    "LimaDataView",
    "LimaNode",
    "LimaPublisher",
    "NexusLayoutError",
    "NodeExistsError",
    "NodeType",
    "ProtocolVersionError",
    "PublishingSession",
    "RedisFullError",
    "RedisUnreachableError",
    "SavingMode",
    "SavingState",
    "SavingVerdict",
    "ScanEnd",
    "NoWriterError",
    "NoWriterWarning",
    "ScanEndedError",
    "ScanLostError",
    "ScanNode",
    "ScanNotFoundError",
    "ScanPublisher",
    "ScanRefNode",
    "ScanRefPublisher",
    "ScanState",
    "ScanstreamError",
    "ServerError",
    "ServerResetError",
    "SessionNode",
    "SessionNotFoundError",
    "Settings",
    "StopHandler",
    "WriterError",
    "WriterService",
    "__version__",
    "cen",
    "com",
    "create_session",
    "curve_stats",
    "fwhm",
    "get_session_node",
    "get_data_from_nodes",
    "get_node",
    "get_or_create_node",
    "peak",
    "watch_session_scans",
    "ScansObserver",
    "ScansWatcher",
    "DefaultScansObserver",
    "read_image",
    "saved_scans",
    "writer_status",
]
