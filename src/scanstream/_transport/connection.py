"""Connection to Redis: the connection pool, the protocol check, the store cache.

Its settings are in :mod:`.settings`. The domain's server-side steps (ending a scan, deleting one) are in
:mod:`scanstream._protocol.scripts`; this module only connects.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import threading
import weakref
from typing import Any, TypeVar, cast

import redis

from .._protocol.keys import PROTOCOL_VERSION, Keys, check_session_name
from ..exceptions import (
    InvalidArgumentError,
    ProtocolVersionError,
    RedisUnreachableError,
    SessionNotFoundError,
)
from .cluster import BudgetedCluster, cluster_seeds, is_cluster_url, node_connection_class
from .identity import EPOCH_FIELD, ID_FIELD, IdentityCheckingSSLConnection, ServerIdentity
from .retry import STOPPING_GRACE, OutageNotice, default_retry
from .settings import ENV_MAX_UNREACHABLE_TIME, Settings
from .shared_server import resolve_url
from .urls import mask_url
from .vectored import ScatterPacker, VectoredConnection, vectored_connection_class

logger = logging.getLogger(__name__)

T = TypeVar("T")


#: Seconds a new DataStore tries to reach its server before it gives up (at most the budget).
FIRST_CONTACT_TIME = 5.0


# redis-py packs commands with hiredis when it is installed, which copies every large data
# payload into one string holding the GIL: a publisher loses a quarter of its throughput
# (docs/performance.md). Its pure-Python packer sends large values as separate buffers, and
# ours sends the parts of a Scattered value without joining them; the reply parser stays
# hiredis'. Stateless, so one instance serves every connection.
_COMMAND_PACKER = ScatterPacker(6000)


def _driver_info_option() -> dict[str, Any]:
    """redis-py 8's driver metadata, its version resolved once for every connection.

    Left to itself, redis-py 8 looks its version up in the package metadata at each new
    connection (0.5 ms of CPU: a tenth of the setup of a short scan's connections); 7.x
    resolved it once already and has no ``driver_info`` option.
    """
    try:
        from redis.driver_info import DriverInfo
    except ImportError:  # redis-py 7.x
        return {}
    return {"driver_info": DriverInfo(lib_version=redis.__version__)}


_DRIVER_INFO = _driver_info_option()


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


def _cluster_scatters(url: str) -> bool:
    """Whether a cluster's node connections write many buffers per system call (not TLS)."""
    return not url.lower().startswith("rediss+")


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
        Redis URL (``redis+cluster://`` for a cluster: then :attr:`redis` is a
        ``redis.cluster.RedisCluster``, with the same commands). It overrides
        ``settings.redis_url`` (only that field). Default:
        ``settings.redis_url``, else ``SCANSTREAM_REDIS_URL``, else the user's embedded
        server, started on demand.
    settings : Settings, optional
        Prefix, lease, retention and retry settings, used as given (the environment is not
        read for them). Default: :meth:`Settings.from_env`.

    Attributes
    ----------
    url : str
        The server's URL, as given (it may hold a password: never print it).
    display_url : str
        The same with its password masked (:func:`~scanstream._transport.urls.mask_url`):
        the one to put in messages, logs and reprs.

    Raises
    ------
    ProtocolVersionError
        The database holds scanstream data of another protocol version.
    ServerResetError
        A connection, opened or reopened, found that the server lost or rolled back its data
        since this store first saw it (see :meth:`check_server_identity`).
    RedisUnreachableError
        Redis stayed unreachable for ``settings.max_unreachable_time`` (every command).
    redis.exceptions.ConnectionError
        Redis cannot be reached, with a ``settings.retry`` of your own (not wrapped).
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
        self.display_url = mask_url(self.url)
        self.keys = Keys(self.settings.prefix)
        #: What this store knows of the server's identity (:meth:`check_server_identity`).
        self.identity = ServerIdentity(self.keys, self.display_url)
        #: True when the server is a Redis Cluster (a ``redis+cluster://`` URL).
        self.is_cluster = is_cluster_url(self.url)
        #: What this store says of its server's outages, shared by its connections
        #: (:class:`OutageNotice`); None with a ``settings.retry`` of your own, or a cluster.
        self.outage_notice: OutageNotice | None = None
        if self.is_cluster:
            self.redis = self._cluster_client()
            self.scatter_writes = _cluster_scatters(self.url)
        else:
            vectored = vectored_connection_class(self.url)
            #: True when the connections write many buffers per system call: publishers
            #: then send batches without joining them (resp.Scattered); over TLS they join.
            self.scatter_writes = vectored is not None
            budget = self.settings.max_unreachable_time
            if self.settings.retry is None:
                self.outage_notice = OutageNotice(f"Redis at {self.display_url}", budget)
            self.redis = redis.Redis.from_url(
                self.url,
                socket_connect_timeout=10,
                # Blocking reads are sliced to <= 1 s, so this only fires on a dead or frozen
                # server; kept near the outage budget so that a frozen one is given up in time.
                socket_timeout=max(10.0, min(30.0, budget)),
                retry=self.settings.retry or default_retry(budget, self.url, self.outage_notice),
                health_check_interval=30,
                command_packer=_COMMAND_PACKER,
                # TLS sockets have no sendmsg: redis-py's writes, with the same identity check.
                connection_class=vectored or IdentityCheckingSSLConnection,
                server_identity=self.identity,  # passed by the pool to each connection
                **_DRIVER_INFO,
            )
            _refuse_reply_options(self.display_url, self.redis.connection_pool.connection_kwargs)
        self._protocol_checked = False
        self._finalizer = weakref.finalize(self, self.redis.close)
        if not self.is_cluster:  # a cluster client reached its seeds when it was created
            self._first_contact(min(self.settings.max_unreachable_time, FIRST_CONTACT_TIME))
        self.check_protocol()

    def _cluster_client(self) -> redis.Redis:
        """The cluster client of a ``redis+cluster://`` URL (:mod:`.cluster`).

        Same timeouts, packer and identity check as a single server's client; the outage
        budget is applied around each command and pipeline by the client itself (redis-py's
        cluster client takes no time-bounded Retry). A ``settings.retry`` is refused: it
        cannot be applied to a cluster. Typed as :class:`redis.Redis`, whose commands it has.
        """
        if self.settings.retry is not None:
            raise InvalidArgumentError(
                f"Settings.retry cannot be used with the cluster at {self.display_url}: "
                "redis-py's cluster client retries by its own rules; set "
                f"max_unreachable_time ({ENV_MAX_UNREACHABLE_TIME}) instead"
            )
        node_url, others, options = cluster_seeds(self.url)
        _refuse_reply_options(self.display_url, options)
        extra: dict[str, Any] = {}
        if options.get("connection_class") is None:
            # The nodes' pools get only the options redis-py knows: the rest go by the class.
            # (rediss+cluster://: redis-py's TLS class, without identity check, joined writes.)
            extra["connection_class"] = node_connection_class(
                VectoredConnection, command_packer=_COMMAND_PACKER, server_identity=self.identity
            )
        budget = self.settings.max_unreachable_time
        client = BudgetedCluster.from_url_and_seeds(
            node_url,
            others,
            budget=budget,
            where=f"Redis Cluster at {self.display_url}",
            first_contact=min(budget, FIRST_CONTACT_TIME),
            socket_connect_timeout=min(10.0, budget),
            socket_timeout=max(10.0, min(30.0, budget)),
            health_check_interval=30,
            **extra,
        )
        return cast(redis.Redis, client)

    def _first_contact(self, budget: float) -> None:
        """Reach the server once, giving up after ``budget`` seconds.

        The outage budget is for a server that was there and went away (a restart, a network
        glitch): every command rides it out. A server never reached is more likely a wrong
        URL or a server not started, which the user should hear about in seconds, not after
        the whole budget.
        """
        probe = redis.Redis.from_url(
            self.url, socket_connect_timeout=budget, retry=default_retry(budget, self.url)
        )
        try:
            probe.ping()
        except RedisUnreachableError as exc:
            raise RedisUnreachableError(
                f"Redis at {self.display_url} unreachable: no answer within {budget:g} s "
                f"({exc.__cause__ or exc}); check the URL and that the server runs"
            ) from exc.__cause__
        finally:
            probe.close()

    def __repr__(self) -> str:
        return f"<DataStore {self.display_url!r} prefix={self.keys.prefix!r}>"

    def __enter__(self) -> DataStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._finalizer()

    def stop_riding_out(self, grace: float = STOPPING_GRACE) -> None:
        """From now on, a command rides out an outage for ``grace`` seconds at most, not the
        whole budget, then raises :class:`~scanstream.RedisUnreachableError`.

        For a program that is stopping (SIGTERM, Ctrl-C): its threads, blocked in commands
        retried against a server that went away, end within about ``grace`` seconds instead
        of the budget, while a connection merely dropped (the server up) is still made
        again. For good; without effect with a ``settings.retry`` of your own, or on a
        cluster. Safe to call from a signal handler (it takes no lock).
        """
        if self.outage_notice is not None:
            self.outage_notice.grace = grace

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
                f"the database at {self.display_url} (prefix {self.keys.prefix!r}) holds "
                f"scanstream protocol version {version.decode()!r}, this scanstream speaks "
                f"{PROTOCOL_VERSION!r}; use a matching scanstream or another prefix/database"
            )
        if initialize:
            # The identity comes with the protocol key (and is added to a database initialized
            # before identities existed). A store that saw another id raises here: the
            # database was reset under it, and re-initializing must not hide that.
            self.redis.hsetnx(self.keys.server_identity, ID_FIELD, secrets.token_hex(16))
            self.advance_server_epoch()
        self._protocol_checked = version is not None

    def check_server_identity(self) -> None:
        """Check that the server still holds the data this store has seen: one HMGET.

        The first call (or connection) remembers the database's id; later ones compare. Call
        it where losing data matters (before announcing a scan, before sealing or marking one
        saved, when a scan's keys are unexpectedly missing): a command that ran on a reset
        server may have recreated keys the reset removed. Every new connection (a reconnection
        after an outage too) runs the same check before its first command.

        Raises
        ------
        ServerResetError
            The identity key is gone or changed, or its epoch is lower than one seen: the
            server was restarted without persistence, restored from an older snapshot, or
            flushed. The message names the (masked) URL.
        RedisUnreachableError
            Redis stayed unreachable for the outage budget.
        """
        seen = self.identity.seen()
        reply = cast(
            "list[bytes | None]",
            self.redis.hmget(self.keys.server_identity, [ID_FIELD, EPOCH_FIELD]),
        )
        self.identity.observe(reply[0], reply[1], seen)

    def advance_server_epoch(self) -> int:
        """Advance the database's epoch (HINCRBY) and check the identity; return the epoch.

        A server later restored from a snapshot taken before this call is then detected by
        every store that saw the new epoch. Publishers call it when a session starts; it is
        one write, skipped (with a debug log) when the server refuses writes (full, read-only).

        Raises
        ------
        ServerResetError
            As :meth:`check_server_identity`.
        """
        seen = self.identity.seen()
        pipe = self.redis.pipeline(transaction=True)
        pipe.hincrby(self.keys.server_identity, EPOCH_FIELD, 1)
        pipe.hget(self.keys.server_identity, ID_FIELD)
        try:
            epoch, server_id = pipe.execute()
        except redis.exceptions.ResponseError as exc:  # OOM, READONLY, NOPERM
            logger.debug("server epoch not advanced on %s: %s", self.display_url, exc)
            self.check_server_identity()
            return self.identity.epoch
        self.identity.observe(server_id, epoch, seen)
        return int(epoch)

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
                f"no session named {name!r} in {self.display_url} (prefix "
                f"{self.keys.prefix!r}); "
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
