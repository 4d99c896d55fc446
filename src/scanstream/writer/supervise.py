"""One retry loop for the writer's long-running work: stoppable, with pauses from a backoff.

The session listeners and the scan writers both run work that a lost connection interrupts
and that is safe to run again from the start (a replay is idempotent by point index). redis-py
has already retried each command by then (its ``Retry`` policy), so what is left is to wait
and start the work over, until it completes or the writer stops.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import redis
from redis.backoff import AbstractBackoff, ConstantBackoff

from ..exceptions import ServerResetError
from ..subscribe.events import StopHandler

if TYPE_CHECKING:
    from .._transport.connection import DataStore

__all__ = ["RETRY_PERIOD", "UNREACHABLE", "supervise"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds between attempts by default (redis-py's own retries came first).
RETRY_PERIOD = 1.0
#: Errors meaning "Redis cannot be reached": logged without a traceback (see
#: :func:`said_by_store`).
UNREACHABLE: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError)
#: Failures in a row of a reset server (ServerResetError, once a second) between two lines.
_RESET_LOG_EVERY = 60


def said_by_store(exc: BaseException, store: DataStore) -> bool:
    """True when ``exc`` is an outage that ``store`` logs itself, once at its start and once
    at its end (its :class:`~scanstream._transport.retry.OutageNotice`): a line for it
    at each attempt would repeat the outage every budget, for ever. Without a notice (a
    ``settings.retry`` of the user's, a cluster), nothing else says it."""
    return isinstance(exc, UNREACHABLE) and store.outage_notice is not None


def supervise(
    attempt: Callable[[], T],
    *,
    store: DataStore,
    stop: StopHandler,
    what: str,
    restart_on: tuple[type[Exception], ...] = UNREACHABLE,
    wait_on: tuple[type[Exception], ...] = (),
    backoff: AbstractBackoff | None = None,
) -> T | None:
    """Call ``attempt`` until it returns, starting it over after the errors ``restart_on``.

    Parameters
    ----------
    attempt : callable
        The work; it must be safe to call again after it failed half way.
    store : DataStore
        The store the work talks to (its outages are logged by it: :func:`said_by_store`).
    stop : StopHandler
        Once stopped, no new attempt is made and the pause between two ends at once.
    what : str
        Names the work in the log (``"scan test_session:3"``).
    restart_on : tuple of exception types
        Errors after which the work is started over; any other error is raised. Errors of
        :data:`UNREACHABLE` are logged as warnings without a traceback (at the debug level
        when the store says the outage itself), those of ``wait_on`` as below, the others
        with their traceback.
    wait_on : tuple of exception types
        Errors (among ``restart_on``) that mean "wait for something else" (a file another
        writer holds until it stops): logged once per run of failures, as a warning without
        a traceback, not at every attempt.
    backoff : redis.backoff.AbstractBackoff, optional
        Gives the pause after the n-th failure in a row (``compute(n)``). Default: a constant
        :data:`RETRY_PERIOD`.

    Returns
    -------
    The result of the attempt that completed, or None when ``stop`` came first.
    """
    backoff = backoff or ConstantBackoff(RETRY_PERIOD)
    failures = 0
    while not stop.stopped:
        try:
            return attempt()
        except restart_on as exc:
            failures += 1
            pause = backoff.compute(failures)
            if isinstance(exc, wait_on):
                if failures == 1:
                    logger.warning("%s: %s; trying again every %.1f s", what, exc, pause)
                else:
                    logger.debug("%s: still waiting: %s", what, exc)
            elif isinstance(exc, ServerResetError):  # for good: no traceback, no flood
                if failures == 1 or failures % _RESET_LOG_EVERY == 0:
                    logger.error(
                        "%s: %s (failed %d times in a row; trying again every %.1f s); "
                        "restart the writer to follow the server's new database",
                        what,
                        exc,
                        failures,
                        pause,
                    )
            elif isinstance(exc, UNREACHABLE):
                log = logger.debug if said_by_store(exc, store) else logger.warning
                log("%s: Redis unreachable (%s); starting again in %.1f s", what, exc, pause)
            else:
                logger.exception("%s failed; starting again in %.1f s", what, pause)
        stop.wait(pause)
    return None
