"""``bliss.data.scan``: ScansWatcher, ScansObserver, watch_session_scans."""

from ..subscribe.lookup import get_data_from_nodes
from ..subscribe.scans_watcher import (
    DefaultScansObserver,
    ScansObserver,
    ScansWatcher,
    watch_session_scans,
)

__all__ = [
    "DefaultScansObserver",
    "ScansObserver",
    "ScansWatcher",
    "get_data_from_nodes",
    "watch_session_scans",
]
