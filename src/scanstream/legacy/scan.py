"""``bliss.data.scan``: ScansWatcher, ScansObserver, watch_session_scans.

scanstream's, in BLISS mode (:attr:`scanstream.DataNode.bliss_mode`): the scan_info the
callbacks get has ``start_time`` / ``end_time`` as ``datetime.datetime``, as BLISS's had.
"""

from __future__ import annotations

import functools
from typing import Any

from ..subscribe import scans_watcher
from ..subscribe.lookup import get_data_from_nodes
from ..subscribe.scans_watcher import DefaultScansObserver, ScansObserver


class ScansWatcher(scans_watcher.ScansWatcher):
    """:class:`scanstream.ScansWatcher` with ``bliss_mode=True`` by default."""

    def __init__(self, session_name: str, *, bliss_mode: bool = True, **kwargs: Any) -> None:
        super().__init__(session_name, bliss_mode=bliss_mode, **kwargs)


@functools.wraps(scans_watcher.watch_session_scans)
def watch_session_scans(*args: Any, **kwargs: Any) -> None:
    """:func:`scanstream.watch_session_scans` with ``bliss_mode=True`` by default."""
    kwargs.setdefault("bliss_mode", True)
    scans_watcher.watch_session_scans(*args, **kwargs)


__all__ = [
    "DefaultScansObserver",
    "ScansObserver",
    "ScansWatcher",
    "get_data_from_nodes",
    "watch_session_scans",
]
