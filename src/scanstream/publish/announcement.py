"""The periodic check, while a scan runs, that its NEW_SCAN entry is still in the session stream.

A scan is announced by a NEW_SCAN entry in its session's stream, in the session's cluster slot,
often on another master than the scan's keys. A failover of that master to a replica that had
not received the entry (or a restart of it without persistence) loses the announcement while
the scan goes on: no session walk, writer or listing would find the running scan. The
publisher checks at ``prepared()`` and ``end()``; in between, an :class:`AnnouncementWatch`
checks about every :data:`CHECK_PERIOD` seconds.

The check runs in a thread of its own, not in the sender's: during a failover of the session's
master it waits as any command does (redis-py's retries, the outage budget), and the data,
usually on another master, must go on flowing meanwhile; ``emit`` never waits on it. It is
skipped while the scan stored no new point since the last check: an idle scan costs nothing,
and a scan that sends costs one ``XRANGE`` of one ID per period. The scan starts the thread
only when the first check is due (from the send loop, after a send): a scan that ends
within a period starts none.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis

from ..exceptions import ServerResetError

logger = logging.getLogger(__name__)

__all__ = ["CHECK_PERIOD", "AnnouncementWatch"]

#: Seconds between two checks of a running scan's NEW_SCAN entry.
CHECK_PERIOD = 1.5


class AnnouncementWatch:
    """Calls ``check`` every ``period`` seconds while ``progress()`` changes and ``running()``.

    Parameters
    ----------
    name : str
        The scan's db_name (thread name, log messages).
    check : callable
        Checks the announcement and announces again when it is gone (best effort itself:
        :meth:`ScanPublisher._ensure_announced`). A Redis error it raises is logged and the
        check is done again at the next period.
    progress : callable
        A number that changes when the scan stored new points (points acknowledged by Redis).
    running : callable
        False once the scan ended or was lost: the thread stops by itself.
    period : float, optional
        Seconds between two checks (default :data:`CHECK_PERIOD`).
    """

    def __init__(
        self,
        name: str,
        check: Callable[[], None],
        progress: Callable[[], int],
        running: Callable[[], bool],
        period: float | None = None,
    ) -> None:
        self.name = name
        self._check = check
        self._progress = progress
        self._running = running
        self._period = CHECK_PERIOD if period is None else period
        self._checked = progress()  # what was just checked (at prepared())
        self._at_once = False
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"scanstream-announce-{name}", daemon=True
        )

    @property
    def period(self) -> float:
        """Seconds between two checks."""
        return self._period

    def start(self, *, at_once: bool = False) -> None:
        """Start the checks; the first one after a period, or at once with ``at_once``."""
        self._at_once = at_once
        self._thread.start()

    def stop(self) -> None:
        """Stop the checks; waits for one under way (bounded by the store's outage budget)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        checked = self._checked
        pause = 0.0 if self._at_once else self._period
        while not self._stop.wait(pause) and self._running():
            pause = self._period
            progress = self._progress()
            if progress == checked:
                continue
            try:
                self._check()
            except redis.exceptions.RedisError as exc:  # unreachable: try again next period
                logger.info("scan %s: NEW_SCAN entry not checked: %s", self.name, exc)
                continue
            except ServerResetError as exc:  # the scan is lost: its sender says so, once
                logger.debug("scan %s: NEW_SCAN entry not checked: %s", self.name, exc)
                return
            except Exception:  # best effort: the scan goes on; end() checks again
                logger.exception("scan %s: NEW_SCAN entry not checked", self.name)
                continue
            checked = progress
