"""The identity of a Redis database, remembered by each client: a reset never goes unnoticed.

When a database is initialized (the protocol key is set, by the first publishing session),
it also gets an identity hash (key name from :class:`~scanstream._protocol.keys.Keys`; one
key, so that the check is one command on Redis Cluster too)::

    P:server_identity   HASH   id: a random id, set once (HSETNX) with the protocol key
                               epoch: a counter advanced (HINCRBY) by publishing sessions

A :class:`~scanstream.DataStore` remembers the id it first saw and the highest epoch. A server
restarted without persistence, or flushed, has lost its id (or, re-initialized since, holds
another); a server restored from an older snapshot has an epoch lower than one seen before
(seen when a publishing session advanced the epoch after the snapshot was taken). Either
raises :class:`~scanstream.ServerResetError`. The check runs on every new connection,
reconnections after an outage included (:class:`IdentityCheck`, mixed into the connection
classes, before the connection's first command), and on demand
(:meth:`DataStore.check_server_identity`): one HMGET each time.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis
from redis.connection import SSLConnection

from .._protocol.keys import Keys
from ..exceptions import ServerResetError

logger = logging.getLogger(__name__)

__all__ = [
    "EPOCH_FIELD",
    "ID_FIELD",
    "IdentityCheck",
    "IdentityCheckingSSLConnection",
    "ServerIdentity",
]

#: Fields of the identity hash.
ID_FIELD, EPOCH_FIELD = "id", "epoch"

_WHAT_HAPPENED = (
    "the server lost or rolled back its data (restarted without persistence, restored from "
    "an older snapshot, or flushed)"
)


class ServerIdentity:
    """The id and epoch of a database as first seen by one store (thread-safe).

    Parameters
    ----------
    keys : Keys
        Key names (the identity keys are under the store's prefix).
    url : str
        The server's URL as it may be shown (password masked).
    """

    def __init__(self, keys: Keys, url: str) -> None:
        self.key = keys.server_identity
        self.url = url
        self._lock = threading.Lock()
        #: The id first seen (None until the database has one).
        self.server_id: bytes | None = None
        #: The highest epoch seen (0: none yet).
        self.epoch = 0
        #: The message of the first reset seen (None: none). A store refuses a reset server
        #: for good; a long-running client (the writer) reads this to start again.
        self.reset: str | None = None

    def seen(self) -> tuple[bytes | None, int]:
        """What this store knows now: ``(id, highest epoch)``; take it before sending a read.

        :meth:`observe` compares a reply only with what was known when its request left:
        replies of concurrent requests (other threads, other connections) may arrive in any
        order, and a read sent before another thread saw a higher epoch may rightly return a
        lower one.
        """
        with self._lock:
            return self.server_id, self.epoch

    def observe(
        self,
        server_id: bytes | None,
        epoch: bytes | int | None,
        seen: tuple[bytes | None, int] | None = None,
    ) -> None:
        """Compare what the server holds now with what was seen before; remember it.

        Parameters
        ----------
        server_id, epoch
            The identity hash's fields as the server returned them.
        seen
            :meth:`seen` taken before the request was sent (None: what is known now, for a
            caller whose request cannot race another one).

        Raises
        ------
        ServerResetError
            The id is gone or changed, or the epoch is lower than one seen before the request.
        """
        try:
            now = int(epoch or 0)
        except (TypeError, ValueError):
            now = 0  # a garbage epoch: compared as absent
        with self._lock:
            known_id, known_epoch = (self.server_id, self.epoch) if seen is None else seen
            # An id never changes once set; a missing one is a reset only if it was known when
            # the request left (a read sent before the database was initialized finds none).
            if server_id is None and known_id is not None:
                raise self._reset("its identity key is gone")
            if server_id is not None and self.server_id not in (None, server_id):
                raise self._reset(
                    f"its identity changed from {self.server_id.decode(errors='replace')}"
                    f" to {server_id.decode(errors='replace')}"
                )
            if now < known_epoch:
                raise self._reset(f"its epoch went back from {known_epoch} to {now}")
            if self.server_id is None and server_id is not None:
                self.server_id = server_id
            self.epoch = max(self.epoch, now)

    def _reset(self, detail: str) -> ServerResetError:
        """The error to raise for a reset (``_lock`` held); the first one is remembered."""
        message = self._message(detail)
        if self.reset is None:
            self.reset = message
        return ServerResetError(message)

    def _message(self, detail: str) -> str:
        return (
            f"Redis at {self.url} (key {self.key}): {_WHAT_HAPPENED}: {detail}. Scans "
            "published, followed or written through this connection may have lost data; "
            "check them (`scanstream ls`) and reconnect to go on"
        )


class IdentityCheck:
    """Connection mixin: check a :class:`ServerIdentity` on every connect.

    Takes a ``server_identity`` keyword (the pool passes its connection kwargs to each
    connection; None: no check). The check is a connect callback (redis-py's public hook, run
    after AUTH and SELECT on every connection, reconnections included): one HMGET of the
    identity key before the connection's first command, so a command never runs on a reset
    server unnoticed. A client not allowed to read that key (ACL) skips the check.
    """

    def __init__(
        self, *args: Any, server_identity: ServerIdentity | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._server_identity = server_identity
        if server_identity is not None:
            conn: Any = self  # a redis-py connection (this class is only mixed into those)
            # redis-py keeps a weak reference to the bound method: it lives with the connection.
            conn.register_connect_callback(self._check_server_identity)

    def _check_server_identity(self, connection: Any) -> None:
        identity = self._server_identity
        if identity is None:
            return
        conn: Any = self
        seen = identity.seen()
        try:
            conn.send_command("HMGET", identity.key, ID_FIELD, EPOCH_FIELD)
            reply = conn.read_response()
        except redis.exceptions.ResponseError as exc:  # NOPERM: a restricted ACL user
            logger.debug("server identity not checked on %s: %s", identity.url, exc)
            return
        try:
            identity.observe(reply[0], reply[1], seen)
        except ServerResetError:
            conn.disconnect()  # never hand this connection out
            raise


class IdentityCheckingSSLConnection(IdentityCheck, SSLConnection):
    """TLS connection (``rediss://``) checking the server identity on connect."""
