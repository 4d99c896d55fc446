"""The background thread that sends the queued points of scans and renews their leases.

On a single server, one :class:`SendLoop` serves every scan published through a
``DataStore``: scans published at once by the threads of one process share one thread, not
one each. Each scan keeps its own transaction, pauses, lease and failures
(:class:`~scanstream.publish.sender.Sender`); the loop only decides whose turn it is. A
thread per scan cost 16 concurrent scans of 10 channels 3 to 4 times the CPU of one scan of
160 channels (their small transactions and the wake-ups of 32 threads contending for the
GIL; docs/performance.md, 1f); with one loop, the scans' transactions grow as one scan's do.

On a cluster each scan has a loop of its own: a send waiting on one node (a failover, for
seconds) must not hold up the sends and lease renewals of scans on the other nodes. On a
single server every scan shares the server's fate, so a send waiting on it holds up nothing
that could be done meanwhile.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .._transport.connection import DataStore

__all__ = ["SendLoop", "Served"]

logger = logging.getLogger(__name__)

# Longest wait of a loop between two looks at its scans (their lease renewals are due every
# lease_time / 3, seconds at least; a wake-up comes with the first new point after a send).
_IDLE_WAIT = 1.0
# Pause before a sender whose turn raised is served again.
_FAULT_PAUSE = 0.2
# How long the thread outlives its last scan: a program publishing one scan after another
# starts one thread, not one per scan.
_LINGER = 1.0

_shared: weakref.WeakKeyDictionary[DataStore, SendLoop] = weakref.WeakKeyDictionary()
_shared_lock = threading.Lock()


def _forget_after_fork() -> None:
    """A forked child has none of its parent's threads: the scans it creates get loops of
    their own (scans inherited from the parent are not served in the child)."""
    global _shared_lock
    _shared_lock = threading.Lock()
    _shared.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


class Served(Protocol):
    """What a loop serves: one scan's sender."""

    def serve(self) -> float:
        """Do the work that is due (a send, a lease renewal); return when more is due
        (``time.monotonic()``), or ``math.inf`` for never (the sender stopped or failed).

        A sender with points waiting for the end of its pause says when it ends, and does not
        set :attr:`SendLoop.wake` again before it has sent them: the wake-ups of a loop come
        from senders that had nothing to send, one per send of theirs at most, not one per
        point.
        """
        ...


class SendLoop:
    """One thread serving one or many senders, started with the first, ended a second after
    the last.

    Parameters
    ----------
    name : str
        The thread's name.

    Attributes
    ----------
    wake : threading.Event
        Set when a sender that had nothing to send gets points, when a sender is added or
        removed, and when an action of a sender is due (``Sender.call_after``): the loop
        looks at its senders at once.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.wake = threading.Event()
        self._lock = threading.Lock()
        self._served: list[Served] = []
        self._thread: threading.Thread | None = None
        #: A sender's outage, as ``(since, last failure, error)`` (``time.monotonic()``):
        #: set by a send or lease renewal of a sender that failed for want of the server
        #: (from any thread: the loop's, a flush, an end), None again once
        #: the server answers one of them (or the record is a round old). The other senders
        #: count their outage from ``since`` (``Sender._joins_outage``).
        self.outage: tuple[float, float, BaseException] | None = None

    @classmethod
    def for_store(cls, store: DataStore, name: str) -> SendLoop:
        """The loop for a new sender of ``store``: the store's shared one on a single server,
        a new one (named ``name``) on a cluster."""
        if store.is_cluster:
            return cls(f"scanstream-send-{name}")
        with _shared_lock:
            loop = _shared.get(store)
            if loop is None:
                loop = _shared[store] = cls("scanstream-send")
            return loop

    def __repr__(self) -> str:
        return f"<SendLoop {self.name!r} serving {len(self._served)}>"

    @property
    def thread(self) -> threading.Thread | None:
        """The loop's thread while it runs (serving senders, or a second after the last),
        else None."""
        return self._thread

    def add(self, served: Served) -> None:
        """Serve ``served`` too; start the thread if it is not running."""
        with self._lock:
            self._served.append(served)
            if self._thread is None or not self._thread.is_alive():  # (or a forked child's)
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
        self.wake.set()

    def remove(self, served: Served) -> None:
        """Stop serving ``served`` (after a service of it under way, which the sender waits
        for itself); the thread ends when it serves nobody."""
        with self._lock:
            if served in self._served:
                self._served.remove(served)
        self.wake.set()

    def _run(self) -> None:
        wake = self.wake
        idle_since: float | None = None
        while True:
            # Cleared before the senders are looked at: a point queued (or a sender added)
            # during the round sets it again, and the next wait returns at once.
            wake.clear()
            with self._lock:
                served = list(self._served)
                now = time.monotonic()
                if served:
                    idle_since = None
                elif idle_since is None:
                    idle_since = now
                elif now - idle_since >= _LINGER:
                    self._thread = None  # under the lock: add() starts a new thread
                    return
            if idle_since is not None:
                wake.wait(idle_since + _LINGER - now)
                continue
            due = now + _IDLE_WAIT
            for sender in served:
                try:
                    due = min(due, sender.serve())
                except Exception:  # one scan's fault must not stop the others' sends and leases
                    logger.exception("the send loop %s: a turn of %r failed", self.name, sender)
                    due = min(due, time.monotonic() + _FAULT_PAUSE)
            wait = due - time.monotonic()
            if wait > 0:
                wake.wait(wait)
