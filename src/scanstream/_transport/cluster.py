"""Redis Cluster (and Valkey cluster) as the store's server: the URL form and the client.

A cluster is selected by the scheme ``redis+cluster://`` (``rediss+cluster://`` over TLS),
followed by one or more seed nodes separated by commas::

    redis+cluster://[user:password@]host:port[,host:port...][?option=value...]

The seeds are only where the client starts: it asks them for the slot map and then talks to
every master directly. Credentials and query options apply to every node; the database must be
0 (a cluster has no other).

The client is redis-py's :class:`~redis.cluster.RedisCluster`, with two things added here:

- the outage budget (``max_unreachable_time``): redis-py's cluster client retries a command a
  fixed number of times without pausing, which a failover (seconds without a master for some
  slots) outlasts; :class:`BudgetedCluster` retries every command and pipeline, with back-off,
  for as long as the budget, then raises :class:`~scanstream.RedisUnreachableError`;
- the store's connection class (vectored writes, identity check) for every node's connections.

Every command scanstream sends names keys of one slot (``_protocol/keys.py``); the only
multi-slot read, a walk's XREAD of a session stream and of scan streams, is split by
:func:`group_by_slot` in the walker.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import AbstractConnection, parse_url
from redis.crc import key_slot
from redis.exceptions import (
    AuthenticationError,
    ClusterDownError,
    RedisClusterException,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.retry import Retry

from ..exceptions import InvalidArgumentError, RedisUnreachableError
from .urls import mask_url

__all__ = [
    "CLUSTER_SCHEMES",
    "BudgetedCluster",
    "cluster_seeds",
    "group_by_slot",
    "is_cluster_url",
    "key_slot",
    "node_connection_class",
]

T = TypeVar("T")

# Untyped in redis-py: called through Any (mypy's strict mode refuses untyped calls).
_PARSE_URL: Any = parse_url
_CLUSTER_NODE: Any = ClusterNode

#: Cluster URL scheme -> the scheme of each node's connections.
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}

# Errors of a cluster in transition (a master down, a failover, slots moving): worth waiting
# for, within the budget. A refusal (CROSSSLOT, OOM, NOPERM) is not among them.
_TRANSIENT = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    ClusterDownError,
    SlotNotCoveredError,
    TryAgainError,
)
# What NodesManager.initialize raises when no seed answers (a RedisClusterException, like the
# client-side CROSSSLOT refusal, which must not be retried: told apart by its message).
_NO_NODE_REACHED = "Redis Cluster cannot be connected"


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` selects a cluster (``redis+cluster://`` or ``rediss+cluster://``)."""
    return url.split("://", 1)[0].lower() in CLUSTER_SCHEMES


def cluster_seeds(url: str) -> tuple[str, list[tuple[str, int]], dict[str, Any]]:
    """Take a cluster URL apart: the first seed's URL, the other seeds, the common options.

    Returns
    -------
    node_url : str
        A ``redis://`` (``rediss://``) URL of the first seed, with the credentials and query
        options of the cluster URL: redis-py's cluster client reads them from it for every
        node.
    others : list of (host, port)
        The other seeds, in the URL's order.
    options : dict
        What redis-py's ``parse_url`` reads from ``node_url`` (to check the options).

    Raises
    ------
    InvalidArgumentError
        Not a cluster URL, a seed without a valid port, or a database other than 0.
    """
    shown = mask_url(url)
    scheme, _, rest = url.partition("://")
    node_scheme = CLUSTER_SCHEMES.get(scheme.lower())
    if node_scheme is None:
        raise InvalidArgumentError(f"{shown!r} is not a cluster URL: use redis+cluster://")
    parts = urlsplit(f"{node_scheme}://{rest}")
    userinfo, at, hosts = parts.netloc.rpartition("@")
    seeds: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidArgumentError(
                f"cluster URL {shown!r}: seed {item!r} is not host:port; write "
                "redis+cluster://host:port[,host:port...]"
            )
        seeds.append((unquote(host.strip("[]")), int(port)))
    first_host, first_port = seeds[0]
    if ":" in first_host:  # IPv6
        first_host = f"[{first_host}]"
    netloc = f"{userinfo}{at}{first_host}:{first_port}"
    node_url = urlunsplit((node_scheme, netloc, parts.path, parts.query, parts.fragment))
    options: dict[str, Any] = _PARSE_URL(node_url)
    if int(options.get("db", 0) or 0) != 0:
        raise InvalidArgumentError(
            f"cluster URL {shown!r}: a cluster has only database 0; remove the database "
            "from the URL"
        )
    options.pop("db", None)  # redis-py's cluster client refuses even db=0 as an option
    return node_url, seeds[1:], options


def node_connection_class(
    base: type[AbstractConnection], **defaults: Any
) -> type[AbstractConnection]:
    """``base`` with keyword defaults for every connection the cluster client creates.

    redis-py's cluster client passes only the connection options it knows to each node's
    pool; the store's command packer and server identity go through the class instead.
    """

    class NodeConnection(base):  # type: ignore[valid-type,misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            for name, value in defaults.items():
                kwargs.setdefault(name, value)
            super().__init__(*args, **kwargs)

    NodeConnection.__name__ = NodeConnection.__qualname__ = f"Cluster{base.__name__}"
    return NodeConnection


class _Budget:
    """Runs a call again after a transient cluster error, for at most ``budget`` seconds."""

    def __init__(self, budget: float, where: str) -> None:
        self.budget = budget
        self.where = where

    def call(self, do: Callable[[], T], again: Callable[[], None] | None = None) -> T:
        started = time.monotonic()
        delay = 0.01
        while True:
            try:
                return do()
            except AuthenticationError:
                raise
            except (*_TRANSIENT, RedisClusterException) as exc:
                # A refused password at the first contact comes wrapped in "cannot be
                # connected": never an outage to wait out, the same error as on one server.
                if isinstance(exc.__cause__, AuthenticationError):
                    raise exc.__cause__ from None
                if isinstance(exc, RedisClusterException) and not isinstance(exc, _TRANSIENT):
                    if not str(exc).startswith(_NO_NODE_REACHED):
                        raise
                elapsed = time.monotonic() - started
                if elapsed >= self.budget:
                    raise RedisUnreachableError(
                        f"{self.where} unreachable for {elapsed:.1f} s, longer than "
                        f"max_unreachable_time = {self.budget:g} s ({exc}); check that "
                        "every master of the cluster (or its replica) runs, or raise "
                        "SCANSTREAM_MAX_UNREACHABLE_TIME"
                    ) from exc
                time.sleep(min(delay, self.budget - elapsed))
                delay = min(delay * 2, 1.0)
                if again is not None:
                    again()


class BudgetedCluster(RedisCluster):
    """redis-py's cluster client, every command and pipeline retried within the outage budget.

    Parameters
    ----------
    budget : float
        Seconds a command may wait for the cluster (``Settings.max_unreachable_time``).
    where : str
        The cluster as messages name it (password masked).
    **kwargs
        Passed to :class:`~redis.cluster.RedisCluster` (``startup_nodes``...). Its own retry
        is a few immediate attempts (which refresh the slot map); the budget is around them.
    """

    def __init__(self, *, budget: float, where: str, first_contact: float, **kwargs: Any) -> None:
        kwargs.setdefault("retry", Retry(NoBackoff(), 3))
        self._budget = _Budget(first_contact, where)  # RedisCluster.__init__ sends commands
        # A cluster never reached is more likely a wrong URL than an outage: told in seconds.
        _Budget(first_contact, where).call(lambda: super(BudgetedCluster, self).__init__(**kwargs))
        self._budget = _Budget(budget, where)

    @classmethod
    def from_url_and_seeds(
        cls,
        node_url: str,
        others: Iterable[tuple[str, int]],
        *,
        budget: float,
        where: str,
        first_contact: float,
        **kwargs: Any,
    ) -> BudgetedCluster:
        """A client starting from ``node_url`` (options included) and the ``others`` seeds.

        The URL form matters: only then does redis-py give each node's pool the
        ``connection_class`` passed here.
        """
        nodes = [_CLUSTER_NODE(host, port) for host, port in others]
        return cls(
            budget=budget,
            where=where,
            first_contact=first_contact,
            url=node_url,
            startup_nodes=nodes,
            **kwargs,
        )

    def determine_slot(self, *args: Any) -> Any:
        """The slot of a command; XREAD's without asking a node.

        redis-py finds the keys of a command whose keys move (XREAD) with a COMMAND GETKEYS
        round trip to a node, before every XREAD of every walk. Its keys are the first half
        of what follows STREAMS. A set of keys of several slots goes to redis-py's check,
        which refuses it.
        """
        if args and isinstance(args[0], str) and args[0].upper() == "XREAD":
            slots = {key_slot(_encoded(key)) for key in _xread_keys(args)}
            if len(slots) == 1:
                return slots.pop()
        base: Any = super()
        return base.determine_slot(*args)

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        base: Any = super()
        return self._budget.call(lambda: base.execute_command(*args, **kwargs))

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
        base: Any = super()
        return _BudgetedPipeline(lambda: base.pipeline(transaction, shard_hint), self._budget)


class _BudgetedPipeline:
    """A cluster pipeline whose ``execute`` is retried within the budget.

    redis-py empties a pipeline when ``execute`` fails, so the queued commands are recorded
    here and queued again into a new pipeline before each new attempt. Every pipeline
    scanstream retries is either a transaction of one slot (applied whole or not at all) or
    reads and idempotent writes (docs/reliability.md), so sending it again is safe.
    """

    def __init__(self, make: Callable[[], Any], budget: _Budget) -> None:
        self._make = make
        self._budget = budget
        self._pipe = make()
        self._queued: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._pipe, name)
        if not callable(method) or name.startswith("_"):
            return method

        def queue(*args: Any, **kwargs: Any) -> Any:
            self._queued.append((name, args, kwargs))
            getattr(self._pipe, name)(*args, **kwargs)
            return self

        return queue

    def __len__(self) -> int:
        return len(self._queued)

    def __enter__(self) -> _BudgetedPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.reset()

    def reset(self) -> None:
        self._queued.clear()
        self._pipe.reset()

    def _requeue(self) -> None:
        self._pipe = self._make()
        for name, args, kwargs in self._queued:
            getattr(self._pipe, name)(*args, **kwargs)

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        try:
            result: list[Any] = self._budget.call(
                lambda: self._pipe.execute(raise_on_error=raise_on_error), self._requeue
            )
            return result
        finally:
            self._queued.clear()


def _xread_keys(args: tuple[Any, ...]) -> list[Any]:
    """The stream keys of ``XREAD [COUNT n] [BLOCK ms] STREAMS key... id...``."""
    for i, arg in enumerate(args):
        if isinstance(arg, (str, bytes)) and _encoded(arg).upper() == b"STREAMS":
            rest = args[i + 1 :]
            return list(rest[: len(rest) // 2])
    return []


def _encoded(key: Any) -> bytes:
    return key.encode() if isinstance(key, str) else bytes(key)


def group_by_slot(keys: Iterable[Any]) -> list[list[Any]]:
    """``keys`` (str or bytes) grouped by cluster slot, each group in the order given.

    The groups come in the order of their first key.
    """
    groups: dict[int, list[Any]] = {}
    for key in keys:
        groups.setdefault(key_slot(_encoded(key)), []).append(key)
    return list(groups.values())
