"""``bliss.data.scan``: ScansWatcher, ScansObserver, watch_session_scans, get_data.

scanstream's, in BLISS mode (:attr:`scanstream.DataNode.bliss_mode`): the scan_info the
callbacks get has ``start_time`` / ``end_time`` as ``datetime.datetime``, as BLISS's had.
"""

from __future__ import annotations

import functools
from typing import Any

from ..subscribe import scans_watcher
from ..subscribe.lookup import get_data_from_nodes
from ..subscribe.nodes import DataNode
from ..subscribe.scans_watcher import DefaultScansObserver, ScansObserver
from .common import get_matching_names


class ScansWatcher(scans_watcher.ScansWatcher):
    """:class:`scanstream.ScansWatcher` with ``bliss_mode=True`` by default."""

    def __init__(self, session_name: str, *, bliss_mode: bool = True, **kwargs: Any) -> None:
        super().__init__(session_name, bliss_mode=bliss_mode, **kwargs)


@functools.wraps(scans_watcher.watch_session_scans)
def watch_session_scans(*args: Any, **kwargs: Any) -> None:
    """:func:`scanstream.watch_session_scans` with ``bliss_mode=True`` by default."""
    kwargs.setdefault("bliss_mode", True)
    scans_watcher.watch_session_scans(*args, **kwargs)


class DataContainer(dict[str, Any]):
    """What BLISS's ``scan.get_data()`` returns: channel fullname -> whole array (a
    :class:`~scanstream.LimaDataView` for a lima node), looked up as BLISS did.

    A key is a fullname (``"axis:roby"``), else an axis name (``"roby"``), else a
    short name or Unix pattern matching exactly one fullname; several matches raise
    ``KeyError("Ambiguous key ...")``, none ``KeyError("... not found ...")``.
    """

    def __info__(self) -> str:
        return (
            "DataContainer uses a key [counter], [motor] or [name_pattern] matching one of "
            f"these names:\n {list(self.keys())}"
        )

    def __getitem__(self, key: Any) -> Any:
        # BLISS also took its Counter and Axis objects as keys; a subscriber has none.
        try:
            return super().__getitem__(key)
        except KeyError:
            pass
        axname = f"axis:{key}"
        if axname in self.keys():
            return super().__getitem__(axname)
        matches = get_matching_names(key, self.keys(), strict_pattern_as_short_name=True)[key]
        if len(matches) > 1:
            raise KeyError(f"Ambiguous key '{key}', there are several matches -> {matches}")
        if len(matches) == 1:
            return super().__getitem__(matches[0])
        names = [x.split(":")[-1] for x in self.keys()]
        raise KeyError(f"{key} not found, try one of those {names}")


def get_data(scan: Any) -> DataContainer:
    """The data of a scan as BLISS's ``get_data(scan)`` (``scan.get_data()``) gave it.

    Parameters
    ----------
    scan : ScanNode or object with ``node``
        A scan node (what a subscriber has), or BLISS's scan object (its ``node``, and its
        ``nodes`` mapping when it has one).

    Raises
    ------
    IndexNoMoreThereError
        Data expired from Redis.
    """
    nodes = getattr(scan, "nodes", None)
    if nodes is not None:
        members = list(nodes.values())
    else:
        node: DataNode = getattr(scan, "node", scan)
        members = list(node.walk(wait=False))
    data = DataContainer()
    for channel_name, channel_data in get_data_from_nodes(None, *members):
        data[channel_name] = channel_data
    return data


__all__ = [
    "DataContainer",
    "DefaultScansObserver",
    "ScansObserver",
    "ScansWatcher",
    "get_data",
    "get_data_from_nodes",
    "watch_session_scans",
]
