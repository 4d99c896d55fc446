"""``node.info``: a dict of a node's metadata that can also re-read it (BLISS's settings API).

BLISS 1.x handed out ``node.info`` as a Redis settings object: ``info.get_all()`` read the
current content, ``info["key"]``, ``info.get(...)`` and ``info.keys()`` worked on it. Ours is
a plain ``dict`` snapshot (so code comparing or copying it keeps working) that also offers
``get_all()``, which reads the node's metadata again from Redis: a scan_info completed at the
end of the scan is seen through it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class NodeInfo(dict[str, Any]):
    """The metadata of a node as read when ``node.info`` was accessed; :meth:`get_all` re-reads.

    Parameters
    ----------
    data : dict
        The content read now.
    loader : callable, optional
        Returns the current content from Redis (None: the content never changes).
    """

    def __init__(
        self, data: dict[str, Any], loader: Callable[[], dict[str, Any]] | None = None
    ) -> None:
        super().__init__(data)
        self._loader = loader

    def get_all(self) -> dict[str, Any]:
        """The current metadata, read again from Redis (a new plain dict).

        Raises
        ------
        ScanNotFoundError
            The scan expired or was deleted.
        redis.exceptions.ConnectionError
            Redis cannot be reached (not wrapped).
        """
        if self._loader is None:
            return dict(self)
        fresh = self._loader()
        self.clear()
        self.update(fresh)
        return dict(fresh)
