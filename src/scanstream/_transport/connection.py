"""Connection to Redis: settings, the retry policy, the connection pool, the protocol check.

The domain's server-side steps (ending a scan, deleting one) are in
:mod:`scanstream._protocol.scripts`; this module only connects.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import redis
from redis._parsers import Encoder
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from .._protocol.keys import DEFAULT_PREFIX, PROTOCOL_VERSION, Keys, check_session_name
from ..exceptions import InvalidArgumentError, ProtocolVersionError, SessionNotFoundError
from .server import resolve_url
from .vectored import ScatterPacker, vectored_connection_class

logger = logging.getLogger(__name__)

T = TypeVar("T")


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return float(value)
    except ValueError:
        raise InvalidArgumentError(
            f"environment variable {name}={value!r} is not a number"
        ) from None


@dataclass(frozen=True)
class Settings:
    """Settings of a connection, from arguments or the environment.

    Attributes
    ----------
    redis_url : str or None
        ``redis://``, ``rediss://`` or ``unix://`` URL. None: ``SCANSTREAM_REDIS_URL``, else
        the user's embedded server (started on demand).
    prefix : str
        Prefix of every key (``SCANSTREAM_PREFIX``, default ``scanstream``).
    lease_time : float
        Seconds after which a running scan whose publisher stopped renewing its lease is
        declared KILLED (``SCANSTREAM_LEASE_TIME``, default 10).
    retention_time : float
        Seconds an ended scan stays in Redis (``SCANSTREAM_RETENTION_TIME``, default one
        day). 0 keeps it until deleted.
    max_unreachable_time : float
        Seconds a publisher keeps queuing points while Redis cannot be reached
        (``SCANSTREAM_MAX_UNREACHABLE_TIME``, default 30). Past it, the scan fails: ``emit``
        raises ``redis.exceptions.ConnectionError`` naming the scan, and the queued points
        are dropped instead of buffered without bound.
    retry : redis.retry.Retry or None
        redis-py retry policy of the connection pool, applied to every command on
        ``ConnectionError`` and ``TimeoutError``. None: :func:`default_retry` (exponential
        backoff with jitter, 10 ms to 1 s, 6 retries: about 2 s of outage hidden per command).
    """

    redis_url: str | None = None
    prefix: str = DEFAULT_PREFIX
    lease_time: float = 10.0
    retention_time: float = 86400.0
    retry: Retry | None = field(default=None, compare=False)
    max_unreachable_time: float = 30.0

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Settings from ``SCANSTREAM_*`` environment variables, then ``overrides``."""
        values: dict[str, Any] = {
            "redis_url": os.environ.get("SCANSTREAM_REDIS_URL") or None,
            "prefix": os.environ.get("SCANSTREAM_PREFIX") or DEFAULT_PREFIX,
            "lease_time": _env_float("SCANSTREAM_LEASE_TIME", 10.0),
            "retention_time": _env_float("SCANSTREAM_RETENTION_TIME", 86400.0),
            "max_unreachable_time": _env_float("SCANSTREAM_MAX_UNREACHABLE_TIME", 30.0),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        if settings.lease_time <= 0:
            raise InvalidArgumentError(f"lease_time must be positive, got {settings.lease_time!r}")
        if settings.retention_time < 0:
            raise InvalidArgumentError(
                f"retention_time must be >= 0, got {settings.retention_time!r}"
            )
        if settings.max_unreachable_time <= 0:
            raise InvalidArgumentError(
                f"max_unreachable_time must be positive, got {settings.max_unreachable_time!r}"
            )
        return settings


def default_retry() -> Retry:
    """The redis-py retry policy used when :class:`Settings` gives none.

    Retries network errors only (``ConnectionError``, ``TimeoutError``), never a refusal by
    the server. A retried write may have been applied before its reply was lost: the
    publisher makes its writes idempotent (data entry IDs are point indices, and a replayed
    entry is recognised as a duplicate), and readers ignore replayed lifecycle entries.
    """
    return _NetworkRetry(
        ExponentialWithJitterBackoff(base=0.01, cap=1.0),
        retries=6,
        supported_errors=(redis.exceptions.ConnectionError, redis.exceptions.TimeoutError),
    )


# redis-py packs commands with hiredis when it is installed, which copies every large data
# payload into one string holding the GIL: a publisher loses a quarter of its throughput
# (docs/performance.md). Its pure-Python packer sends large values as separate buffers, and
# ours sends the parts of a Scattered value without joining them; the reply parser stays
# hiredis'. Stateless, so one instance serves every connection. (redis-py's Encoder is untyped:
# called through Any, so that mypy's strict and default modes both accept it.)
_COMMAND_PACKER = ScatterPacker(6000, cast(Any, Encoder)("utf-8", "strict", False).encode)


def _refuse_reply_options(url: str, options: dict[str, Any]) -> None:
    """Raise InvalidArgumentError if the URL's query string changes the form of replies.

    Every reader here expects RESP2 replies of bytes, the client's defaults. redis-py passes
    ``?decode_responses=...`` (as a string, so even ``false`` turns decoding on) and
    ``?protocol=3`` from the URL to the connections, and they would break every read.
    """
    decode, protocol = options.get("decode_responses"), options.get("protocol")
    if decode or protocol not in (None, 2, "2"):
        option = f"decode_responses={decode!r}" if decode else f"protocol={protocol!r}"
        raise InvalidArgumentError(
            f"Redis URL {url!r}: option {option} is not supported (scanstream reads RESP2 "
            "replies as bytes); remove it from the URL's query string"
        )


class _NetworkRetry(Retry):
    """A Retry that never retries a refused authentication.

    redis-py's AuthenticationError is a ConnectionError: retried, a wrong or missing password
    would take seconds of back-off before the user sees the error.

    ``call_with_retry`` passes its arguments through unchanged: its signature changed across
    redis-py versions (``is_retryable`` came in 7.0, ``with_failure_count`` in 7.2), and
    naming them here broke every command on the versions without them. The policy
    goes into ``fail``, the callback every version calls with the error (and, when asked, the
    failure count) before deciding to retry: raising there ends the loop with that error.
    """

    def call_with_retry(
        self, do: Callable[[], T], fail: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> T:
        def fail_unless_refused(error: Exception, *rest: Any) -> None:
            fail(error, *rest)  # redis-py's own clean-up (it disconnects)
            if isinstance(error, redis.exceptions.AuthenticationError):
                raise error

        return super().call_with_retry(do, fail_unless_refused, *args, **kwargs)


#: Entries of a stream as XRANGE and XREVRANGE return them here: ``(ID, fields)`` pairs.
StreamEntries = list[tuple[bytes, dict[bytes, bytes]]]


def stream_entries(reply: object) -> StreamEntries:
    """An XRANGE or XREVRANGE reply, typed as what it is (no check, no copy).

    redis-py types these replies for every client: IDs and fields may be str (with
    ``decode_responses``), an entry may be ``(None, None)`` (XCLAIM of a deleted entry) and
    the reply None. Our client is created without ``decode_responses``, so everything is
    bytes, and XRANGE/XREVRANGE always reply with a list of complete entries.
    """
    return cast(StreamEntries, reply)


class DataStore:
    """A connection to the Redis database holding scans.

    Owns its connection pool: close it with :meth:`close` or use it as a context manager.

    Parameters
    ----------
    url : str, optional
        Redis URL. It overrides ``settings.redis_url`` (only that field). Default:
        ``settings.redis_url``, else ``SCANSTREAM_REDIS_URL``, else the user's embedded
        server, started on demand.
    settings : Settings, optional
        Prefix, lease, retention and retry settings, used as given (the environment is not
        read for them). Default: :meth:`Settings.from_env`.

    Raises
    ------
    ProtocolVersionError
        The database holds scanstream data of another protocol version.
    redis.exceptions.ConnectionError
        Redis cannot be reached (not wrapped; configure retries with ``settings.retry``).
    """

    def __init__(self, url: str | None = None, settings: Settings | None = None) -> None:
        # ``url`` overrides ``settings.redis_url`` and nothing else: the other settings are
        # kept as given (they used to be replaced by the environment's).
        if settings is None:
            settings = Settings.from_env(redis_url=url)
        elif url is not None:
            settings = dataclasses.replace(settings, redis_url=url)
        self.settings = settings
        self.url = resolve_url(self.settings.redis_url)
        self.keys = Keys(self.settings.prefix)
        vectored = vectored_connection_class(self.url)
        connection_class = {"connection_class": vectored} if vectored else {}
        #: True when the connections write many buffers per system call: publishers then
        #: send batches without joining them (resp.Scattered); over TLS they join them.
        self.scatter_writes = vectored is not None
        self.redis: redis.Redis = redis.Redis.from_url(
            self.url,
            socket_connect_timeout=10,
            # Blocking reads are sliced to <= 1 s, so a 30 s timeout only fires on a dead server.
            socket_timeout=30,
            retry=self.settings.retry or default_retry(),
            health_check_interval=30,
            command_packer=_COMMAND_PACKER,
            **connection_class,
        )
        _refuse_reply_options(self.url, self.redis.connection_pool.connection_kwargs)
        self._protocol_checked = False
        self._finalizer = weakref.finalize(self, self.redis.close)
        self.check_protocol()

    def __repr__(self) -> str:
        return f"<DataStore {self.url!r} prefix={self.keys.prefix!r}>"

    def __enter__(self) -> DataStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._finalizer()

    def check_protocol(self, *, initialize: bool = False) -> None:
        """Check the protocol version key; with ``initialize``, set it when absent.

        Raises
        ------
        ProtocolVersionError
            The key holds another version.
        """
        if self._protocol_checked and not initialize:
            return
        # bytes, never str: the client is created without decode_responses.
        version = cast("bytes | None", self.redis.get(self.keys.protocol))
        if version is None and initialize:
            self.redis.set(self.keys.protocol, PROTOCOL_VERSION, nx=True)
            version = cast("bytes | None", self.redis.get(self.keys.protocol))
        if version is not None and version.decode() != PROTOCOL_VERSION:
            raise ProtocolVersionError(
                f"the database at {self.url} (prefix {self.keys.prefix!r}) holds scanstream "
                f"protocol version {version.decode()!r}, this scanstream speaks "
                f"{PROTOCOL_VERSION!r}; use a matching scanstream or another prefix/database"
            )
        self._protocol_checked = version is not None

    def sessions(self) -> list[str]:
        """Names of the sessions that have published at least one scan."""
        # bytes, never str: the client is created without decode_responses.
        names = cast("list[bytes]", self.redis.hkeys(self.keys.sessions))
        return sorted(k.decode() for k in names)

    def require_session(self, name: str) -> None:
        """Raise :class:`SessionNotFoundError` if ``name`` never published a scan."""
        check_session_name(name)
        if not self.redis.hexists(self.keys.sessions, name):
            known = ", ".join(self.sessions()) or "none"
            raise SessionNotFoundError(
                f"no session named {name!r} in {self.url} (prefix {self.keys.prefix!r}); "
                f"known sessions: {known}"
            )


class StoreCache:
    """Shared :class:`DataStore` objects, one per ``(url, prefix)``, created on first use.

    The entry points that take a ``redis_url`` and no ``store`` (``create_session``,
    ``get_session_node``, ``WriterService``...) share the stores of :data:`DEFAULT_STORES`,
    so that a process opens one connection pool per server and not one per call.
    """

    def __init__(self) -> None:
        self._stores: dict[tuple[str | None, str | None], DataStore] = {}
        self._lock = threading.Lock()

    def get(self, url: str | None = None, prefix: str | None = None) -> DataStore:
        """The store of ``url`` and ``prefix`` (None: from the environment), created if needed."""
        with self._lock:
            store = self._stores.get((url, prefix))
        if store is not None:
            return store
        # Connect without the lock held: connecting blocks (and yields to other greenlets
        # under gevent), and a lock held across it deadlocked greenlets whose first call
        # was get_session_node(). Two racing callers may connect twice; one store is kept.
        new = DataStore(settings=Settings.from_env(redis_url=url, prefix=prefix))
        with self._lock:
            store = self._stores.setdefault((url, prefix), new)
        if store is not new:
            new.close()
        return store

    def clear(self) -> None:
        """Close every cached store and forget them: the next :meth:`get` connects anew.

        For a process that changes its ``SCANSTREAM_*`` environment, and for tests. Objects
        still holding a cleared store (a session, a node) must not be used afterwards.
        """
        with self._lock:
            stores = list(self._stores.values())
            self._stores.clear()
        for store in stores:
            store.close()

    def __len__(self) -> int:
        return len(self._stores)


#: The process-wide cache behind :func:`default_store`.
DEFAULT_STORES = StoreCache()


def default_store(url: str | None = None, prefix: str | None = None) -> DataStore:
    """Return the process-wide shared :class:`DataStore` for ``url`` (created on first use).

    See :class:`StoreCache`; :func:`clear_default_stores` closes and forgets them.
    """
    return DEFAULT_STORES.get(url, prefix)


def clear_default_stores() -> None:
    """Close and forget every store :func:`default_store` handed out (:meth:`StoreCache.clear`)."""
    DEFAULT_STORES.clear()
