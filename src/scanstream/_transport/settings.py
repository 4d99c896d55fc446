"""Settings of a connection: from arguments or ``SCANSTREAM_*`` environment variables, checked."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from redis.retry import Retry

from .._protocol.keys import DEFAULT_PREFIX
from ..exceptions import InvalidArgumentError


def _env_float(name: str, default: float) -> float:
    """The number of seconds in environment variable ``name``, checked; ``default`` when unset."""
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        number = float(value)
    except ValueError:
        raise InvalidArgumentError(
            f"environment variable {name}={value!r} is not a number of seconds"
        ) from None
    field_name = next(f for f, (env, _) in _DURATIONS.items() if env == name)
    _check_duration(field_name, number, f"environment variable {name}={value!r}")
    return number


#: Environment variables of :meth:`Settings.from_env`.
ENV_PREFIX = "SCANSTREAM_PREFIX"
ENV_LEASE_TIME = "SCANSTREAM_LEASE_TIME"
ENV_RETENTION_TIME = "SCANSTREAM_RETENTION_TIME"
ENV_MAX_UNREACHABLE_TIME = "SCANSTREAM_MAX_UNREACHABLE_TIME"
#: Default outage budget (seconds): as long as a publisher's ``emit`` always rode out.
DEFAULT_MAX_UNREACHABLE_TIME = 30.0

_MAX_DURATION = 1e9
# field -> (its environment variable, whether 0 is allowed)
_DURATIONS = {
    "lease_time": (ENV_LEASE_TIME, False),
    "retention_time": (ENV_RETENTION_TIME, True),
    "max_unreachable_time": (ENV_MAX_UNREACHABLE_TIME, False),
}


def _check_duration(name: str, value: object, where: str | None = None) -> None:
    """Raise InvalidArgumentError unless ``value`` is a finite number of seconds in range.

    ``where`` names the value's origin (an environment variable); default ``name=value``.
    """
    env, zero_ok = _DURATIONS[name]
    where = where or f"{name}={value!r}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgumentError(f"{where}: {name} must be a number of seconds")
    if math.isnan(value) or math.isinf(value):
        hint = " (0 keeps ended scans until deleted)" if name == "retention_time" else ""
        raise InvalidArgumentError(f"{where}: {name} must be a finite number of seconds{hint}")
    if value < 0 or (value == 0 and not zero_ok):
        rule = "must be >= 0 (0: kept until deleted)" if zero_ok else "must be positive"
        raise InvalidArgumentError(f"{where}: {name} {rule}; it is set by {env}")
    if value > _MAX_DURATION:  # Redis refuses an expiry past 2**63 ms at end(), too late
        hint = "; use 0 to keep ended scans until deleted" if zero_ok else ""
        raise InvalidArgumentError(
            f"{where}: {name} must be at most {_MAX_DURATION:.0e} seconds (31 years){hint}"
        )


@dataclass(frozen=True)
class Settings:
    """Settings of a connection, from arguments or the environment.

    Attributes
    ----------
    redis_url : str or None
        ``redis://``, ``rediss://`` or ``unix://`` URL, or ``redis+cluster://host:port[,...]``
        (``rediss+cluster://``) for a Redis Cluster (docs/cluster.md). None:
        ``SCANSTREAM_REDIS_URL``, else the user's embedded server (started on demand).
    prefix : str
        Prefix of every key (``SCANSTREAM_PREFIX``, default ``scanstream``).
    lease_time : float
        Seconds after which a running scan whose publisher stopped renewing its lease is
        declared KILLED (``SCANSTREAM_LEASE_TIME``, default 10).
    retention_time : float
        Seconds an ended scan stays in Redis (``SCANSTREAM_RETENTION_TIME``, default one
        day). 0 keeps it until deleted.
    max_unreachable_time : float
        The outage budget, in seconds (``SCANSTREAM_MAX_UNREACHABLE_TIME``, default 30): how
        long Redis may be unreachable before scanstream gives up. Every command of the store
        (the subscriber API, the writer, ``end()``, ``scanstream ls``...) is retried that long
        (:func:`~scanstream._transport.retry.default_retry`), then raises :class:`~scanstream.RedisUnreachableError`
        naming the URL; a publisher keeps queuing points that long, then its scan fails
        (``emit`` raises it, naming the scan, and the queued points are dropped instead of
        buffered without bound).
    retry : redis.retry.Retry or None
        redis-py retry policy of the connection pool, applied to every command on
        ``ConnectionError`` and ``TimeoutError``. None: :func:`~scanstream._transport.retry.default_retry` with
        ``max_unreachable_time`` (exponential backoff with jitter, 10 ms to 1 s, for as
        long as the budget). A Retry given here replaces that policy, budget included. Not with
        a cluster (refused: its client retries by its own rules, within the budget).

    Raises
    ------
    InvalidArgumentError
        A duration is not a finite number, or out of range (checked on creation, also when
        the value comes from the environment, whose variable the message names).
    """

    redis_url: str | None = None
    prefix: str = DEFAULT_PREFIX
    lease_time: float = 10.0
    retention_time: float = 86400.0
    retry: Retry | None = field(default=None, compare=False)
    max_unreachable_time: float = DEFAULT_MAX_UNREACHABLE_TIME

    def __post_init__(self) -> None:
        for name in _DURATIONS:
            _check_duration(name, getattr(self, name))

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Settings from ``SCANSTREAM_*`` environment variables, then ``overrides``."""
        values: dict[str, Any] = {
            "redis_url": os.environ.get("SCANSTREAM_REDIS_URL") or None,
            "prefix": os.environ.get(ENV_PREFIX) or DEFAULT_PREFIX,
        }
        defaults = {"lease_time": 10.0, "retention_time": 86400.0}
        defaults["max_unreachable_time"] = DEFAULT_MAX_UNREACHABLE_TIME
        for name, (env, _) in _DURATIONS.items():
            if overrides.get(name) is None:  # checked here: the message names the variable
                values[name] = _env_float(env, defaults[name])
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
