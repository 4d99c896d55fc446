"""Reading a scan's events one step ahead of writing them.

A scan writer alternates between reading data from Redis (socket, reply parsing, decoding)
and writing it into HDF5. h5py lets other threads run while HDF5 writes, so a helper thread
that reads the next events while the current ones are written makes the two overlap: a
writer that has fallen behind (a burst faster than the disk) catches up in about the time of
the slower of the two instead of their sum.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

from ..subscribe.events import StopHandler

#: Events read ahead of the one being written. Each NEW_DATA event holds at most 16 MiB
#: (subscribe.follows._MAX_EVENT_BYTES), which bounds the memory held ahead.
DEPTH = 2
#: How often waiting threads look whether they should stop (s).
_POLL = 0.1

_DONE = object()


class ReadAhead:
    """Iterate over ``walk(stop_handler)`` while a helper thread reads up to ``DEPTH`` ahead.

    Parameters
    ----------
    walk : callable
        Called in the helper thread with a :class:`StopHandler`; returns the iterator of
        events (e.g. ``scan.walk_events``).
    stop_handler : StopHandler, optional
        The caller's: once stopped, iteration ends (as the walk itself would end).

    Errors raised by the walk are raised by the iteration, in order. Use as a context
    manager: leaving it stops the walk and joins the helper thread.
    """

    def __init__(
        self,
        walk: Callable[[StopHandler], Iterator[Any]],
        stop_handler: StopHandler | None = None,
        name: str = "scanstream-read",
    ) -> None:
        self._outer = stop_handler
        self._walk_stop = StopHandler()
        self._queue: queue.Queue[tuple[bool, Any]] = queue.Queue(DEPTH)
        #: An item taken off the queue by :meth:`ready` and not yet iterated over.
        self._next: tuple[bool, Any] | None = None
        self._thread = threading.Thread(target=self._pump, args=(walk,), name=name, daemon=True)
        self._thread.start()

    def _stopping(self) -> bool:
        return self._walk_stop.stopped or (self._outer is not None and self._outer.stopped)

    def _put(self, item: tuple[bool, Any]) -> bool:
        while not self._stopping():
            try:
                self._queue.put(item, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def _pump(self, walk: Callable[[StopHandler], Iterator[Any]]) -> None:
        try:
            for event in walk(self._walk_stop):
                if self._outer is not None and self._outer.stopped:
                    self._walk_stop.stop()
                if not self._put((True, event)):
                    return
        except BaseException as exc:
            self._put((False, exc))
            return
        self._put((False, _DONE))

    def __iter__(self) -> Iterator[Any]:
        while True:
            try:
                if self._next is not None:
                    (ok, item), self._next = self._next, None
                else:
                    ok, item = self._queue.get(timeout=_POLL)
            except queue.Empty:
                if self._stopping():
                    self._walk_stop.stop()
                    # The walk ends within _BLOCK_SLICE; what it still hands over is dropped.
                    if not self._thread.is_alive() and self._queue.empty():
                        return
                continue
            if ok:
                yield item
            elif item is _DONE:
                return
            else:
                raise item

    def ready(self, wait: float = 0.0) -> bool:
        """True when the next event is read, or is read within ``wait`` seconds.

        The helper thread hands events over one at a time, so a queue found empty for an
        instant does not mean that the read is over: a short ``wait`` tells a pause of the
        data from the helper thread being a few microseconds behind.
        """
        if self._next is not None or not self._queue.empty():
            return True
        if wait <= 0:
            return False
        try:
            self._next = self._queue.get(timeout=wait)
        except queue.Empty:
            return False
        return True

    def close(self) -> None:
        """Stop the walk and wait for the helper thread to end."""
        self._walk_stop.stop()
        # Make room, so that a helper thread waiting to hand over an event sees the stop now
        # rather than after its next poll (closing is on the path END -> file closed).
        while self._thread.is_alive():
            try:
                self._queue.get_nowait()
            except queue.Empty:
                self._thread.join(_POLL / 10)
        self._thread.join()

    def __enter__(self) -> ReadAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
