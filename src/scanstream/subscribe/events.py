"""Event types of the subscriber API (the names of BLISS's data-node layer)."""

from __future__ import annotations

import enum
import threading
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from .nodes import DataNode


class EventType(enum.IntEnum):
    """Kinds of events yielded by ``walk_events`` and ``walk_on_new_events``."""

    NEW_NODE = 1
    NEW_DATA = 2
    END_SCAN = 3
    PREPARED_SCAN = 4

    # Printed as BLISS's (a plain Enum there): "EventType.NEW_NODE", not IntEnum's "1" of
    # Python >= 3.11. Subscribers log events with print(event_type, ...).
    __str__ = enum.Enum.__str__
    __format__ = enum.Enum.__format__


class EventData(NamedTuple):
    """Payload of an event.

    Attributes
    ----------
    first_index : int
        NEW_DATA: index of the first point (or image) of the batch; -1 otherwise.
    data : Any
        NEW_DATA of a channel: numpy array of shape ``(n,) + shape`` holding all points of the
        batch (for variable-length 1D channels, an object array of ``n`` 1D arrays). Of a
        lima node: list of :class:`~scanstream.ImageReference` (empty with NOSAVING). Of a
        scan-reference channel: list of :class:`~scanstream.ScanNode`.
        END_SCAN: the final :class:`~scanstream.ScanState`. Otherwise None.
    description : dict or None
        NEW_DATA: the node description (dtype, shape, unit...), a new dict per event (its
        values, such as the ``shape`` list, are shared: do not change them); a lima node's in
        BLISS mode has BLISS's acquisition status keys too (``last_image_ready``...). END_SCAN: ``state``,
        ``error`` (text or None), ``end_time`` (epoch), ``lengths`` (final length per
        data node db_name); when some data could not be read, ``decoding_errors`` (db_name ->
        error text); when acknowledged points are gone from Redis (a failover to a lagging
        replica, a restart), ``lost`` (db_name -> points acknowledged; the scan is FAILED).
    block_size : int
        NEW_DATA: number of points (or images) in the batch; 0 otherwise.
    """

    first_index: int = -1
    data: Any = None
    description: dict[str, Any] | None = None
    block_size: int = 0


class Event(NamedTuple):
    """One event: unpack it as ``event_type, node, event_data``."""

    type: EventType
    node: DataNode
    data: EventData


class StopHandler:
    """Stops walks from another thread.

    Pass it as ``stop_handler`` to a walk; :meth:`stop` makes the walk return within about
    0.1 s, after the event being processed. One handler may stop several walks.
    """

    def __init__(self) -> None:
        self._event = threading.Event()

    def stop(self) -> None:
        """Ask the walks using this handler to return."""
        self._event.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until :meth:`stop` is called; True if it was, False after ``timeout`` seconds."""
        return self._event.wait(timeout)

    @property
    def stopped(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._event.is_set()

    def __repr__(self) -> str:
        return f"<StopHandler stopped={self.stopped}>"
