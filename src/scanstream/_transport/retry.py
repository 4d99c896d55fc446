"""The retry policy of a store's connections: the outage budget, and the lines of an outage.

redis-py retries a command through a :class:`redis.retry.Retry`; :class:`NetworkRetry`
bounds it by time (``Settings.max_unreachable_time``), not by a count of attempts, retries
network errors only, and tells the store's :class:`OutageNotice`, which logs an outage once
and its end, however many commands and threads ride it out.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from ..exceptions import RedisUnreachableError
from .settings import DEFAULT_MAX_UNREACHABLE_TIME, ENV_MAX_UNREACHABLE_TIME
from .urls import mask_url

logger = logging.getLogger(__name__)

T = TypeVar("T")


def default_retry(
    max_unreachable_time: float = DEFAULT_MAX_UNREACHABLE_TIME,
    url: str | None = None,
    notice: OutageNotice | None = None,
) -> Retry:
    """The redis-py retry policy used when :class:`Settings` gives none: the outage budget.

    Retries network errors only (``ConnectionError``, ``TimeoutError``), never a refusal by
    the server, with exponential backoff and jitter (10 ms, doubling, at most 1 s between
    attempts) for as long as ``max_unreachable_time`` seconds from the start of the command;
    then raises :class:`~scanstream.RedisUnreachableError` naming ``url`` (password masked).
    The budget is time, not a count of retries, so a 3 s outage is ridden out the same way
    by every command, however its attempts fail (refused at once, or timing out).

    A retried write may have been applied before its reply was lost: the publisher makes its
    writes idempotent (data entry IDs are point indices, and a replayed entry is recognised
    as a duplicate), and readers ignore replayed lifecycle entries.

    ``notice`` (one per store) logs an outage once, when a command has been retried for
    :data:`OUTAGE_NOTICE_TIME`, and its end.
    """
    return NetworkRetry(
        ExponentialWithJitterBackoff(base=0.01, cap=1.0),
        budget=max_unreachable_time,
        url=url,
        notice=notice,
    )


#: Seconds a command of a stopping program rides out an outage (DataStore.stop_riding_out).
STOPPING_GRACE = 0.5

#: Seconds between two lines saying that the server still does not answer, for a program that
#: retries for as long as it runs (a writer, a watch: :attr:`OutageNotice.reminder`).
OUTAGE_REMINDER = 300.0

#: Seconds a command is retried before its store logs that Redis does not answer: a dropped
#: connection re-established at once is not an outage worth a line.
OUTAGE_NOTICE_TIME = 1.0


class OutageNotice:
    """Logs an outage of one store's server once, however many commands and threads retry
    through it, and its end (a WARNING each): an operator gets two lines, not one per
    command or per attempt; and, with :attr:`reminder`, a line at that interval while it
    lasts.

    The store's commands share it (:attr:`DataStore.outage_notice`): a program that rides
    out outages its own way (a writer or a watch retrying for as long as it runs) says so
    through :attr:`consequence`, and a program that is stopping shortens the outages its
    commands ride out with :attr:`grace` (:meth:`DataStore.stop_riding_out`).

    Parameters
    ----------
    where : str
        ``Redis at URL``, the password masked.
    budget : float
        The store's outage budget (s).
    """

    def __init__(self, where: str, budget: float) -> None:
        self.where = where
        self.budget = budget
        #: What the program does while the server does not answer, said in the outage's
        #: lines; None: "retrying for up to BUDGET s (SCANSTREAM_MAX_UNREACHABLE_TIME)".
        self.consequence: str | None = None
        #: Seconds between two lines saying that the server still does not answer (None:
        #: no such line; a program that retries for ever sets one).
        self.reminder: float | None = None
        #: Seconds a command rides out an outage at most, when shorter than the budget
        #: (:meth:`DataStore.stop_riding_out`). Set without a lock: from a signal handler too.
        self.grace: float | None = None
        self.down_since: float | None = None  # read unlocked on every command's success
        self._said = 0.0  # time.monotonic() of the last line of the outage
        self._lock = threading.Lock()

    def _doing(self) -> str:
        if self.consequence is not None:
            return self.consequence
        return f"retrying for up to {self.budget:g} s ({ENV_MAX_UNREACHABLE_TIME})"

    def failing(self, started: float, error: BaseException) -> None:
        """A command started at ``started`` failed an attempt with ``error``."""
        now = time.monotonic()
        if self.down_since is not None:
            self._remind(now, error)
            return
        if now - started < OUTAGE_NOTICE_TIME:
            return
        with self._lock:
            if self.down_since is not None:
                return
            self.down_since = started
            self._said = now
        logger.warning("%s does not answer (%s); %s", self.where, error, self._doing())

    def _remind(self, now: float, error: BaseException) -> None:
        if self.reminder is None or now - self._said < self.reminder:
            return
        with self._lock:
            since = self.down_since
            if since is None or now - self._said < self.reminder:
                return
            self._said = now
        logger.warning(
            "%s still does not answer after %.0f s (%s); %s",
            self.where,
            now - since,
            error,
            self._doing(),
        )

    def answered(self) -> None:
        """A command got its reply."""
        with self._lock:
            since, self.down_since = self.down_since, None
        if since is not None:
            logger.warning("%s answers again after %.1f s", self.where, time.monotonic() - since)


class NetworkRetry(Retry):
    """A Retry bounded by time (the outage budget) that never retries a refused authentication.

    redis-py's AuthenticationError is a ConnectionError: retried, a wrong or missing password
    would take seconds of back-off before the user sees the error.

    ``call_with_retry`` passes its arguments through unchanged: its signature changed across
    redis-py versions (``is_retryable`` came in 7.0, ``with_failure_count`` in 7.2), and
    naming them here broke every command on the versions without them. The policy goes into
    ``fail``, the callback every version calls with the error (and, when asked, the failure
    count) before deciding to retry: raising there ends the loop with that error. The count
    of retries is unlimited (-1); the deadline in ``fail`` ends the loop.

    redis-py deep-copies the policy into each connection (and uses it for connecting too):
    it holds no state but its settings; each call keeps its own start time.
    """

    def __init__(
        self,
        backoff: Any,
        *,
        budget: float,
        url: str | None = None,
        notice: OutageNotice | None = None,
    ) -> None:
        super().__init__(
            backoff,
            retries=-1,
            supported_errors=(redis.exceptions.ConnectionError, redis.exceptions.TimeoutError),
        )
        self.budget = budget
        self.where = f"Redis at {mask_url(url)}" if url else "Redis"
        self.notice = notice

    def __deepcopy__(self, memo: dict[int, Any]) -> NetworkRetry:
        # redis-py deep-copies the policy into each connection: they must share the notice
        # (the backoff is stateless).
        copy = NetworkRetry(self._backoff, budget=self.budget, notice=self.notice)
        copy.where = self.where
        return copy

    def call_with_retry(
        self, do: Callable[[], T], fail: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> T:
        started = time.monotonic()

        notice = self.notice
        failed = False

        def fail_within_budget(error: Exception, *rest: Any) -> None:
            nonlocal failed
            fail(error, *rest)  # redis-py's own clean-up (it disconnects)
            if isinstance(error, (redis.exceptions.AuthenticationError, RedisUnreachableError)):
                raise error  # refused, or an inner retry (connecting) already spent the budget
            failed = True
            if notice is not None:
                notice.failing(started, error)
            elapsed = time.monotonic() - started
            grace = notice.grace if notice is not None else None
            if grace is not None and elapsed >= grace:
                raise RedisUnreachableError(
                    f"{self.where} unreachable ({error}); not retried further: this program "
                    "is stopping"
                ) from error
            if elapsed >= self.budget:
                raise RedisUnreachableError(
                    f"{self.where} unreachable for {elapsed:.1f} s, longer than "
                    f"max_unreachable_time = {self.budget:g} s ({error}); check "
                    f"that the server runs, or raise {ENV_MAX_UNREACHABLE_TIME}"
                ) from error

        result = super().call_with_retry(do, fail_within_budget, *args, **kwargs)
        # A reply tells that the server is back, also to a command that did not have to retry
        # (the server came back between two commands: the line that it answers again was
        # missed, and the store took it for down until the next outage). A connection made
        # is no reply: redis-py connects through this policy too, and a frozen server still
        # accepts connections.
        if (
            notice is not None
            and notice.down_since is not None
            and (failed or not isinstance(result, socket.socket))
        ):
            notice.answered()
        return result
