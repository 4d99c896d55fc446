"""Publishing sessions: they number the scans and announce them.

A scan is announced in two steps: its keys first (hash, event stream, lease: one slot, one
script that refuses a number still taken), then a NEW_SCAN entry in the session's stream, so that a reader never finds a
NEW_SCAN whose scan is not there yet. On a single server the script makes both steps, in that
order (decision 0016): one round trip less.

On a cluster the two steps are in two slots, often on two masters, and replication is
asynchronous: a failover of the session's master to a replica that had not received the
entry yet (or a restart of a server without persistence) loses the NEW_SCAN while the scan
goes on; no session walk, writer or listing would find it. So the publisher checks that its
entry is still there when the scan is prepared, every 1.5 s while it stores points
(:mod:`.announcement`) and when it ends, and announces the scan again when it is gone (:meth:`PublishingSession.ensure_announced`). A walk that saw both
entries reports the scan once (walks skip a scan number they were already given). On a single
server the prepare and end scripts make the checks of ``prepared()`` and ``end()``.

Before that, the session reads whether a writer follows it (:mod:`.saving`): by default a scan
that no writer will save starts with a :class:`~scanstream.exceptions.NoWriterWarning`;
``require_writer=True`` refuses it.

Scan numbers come from the session's counter, but never at or below the session's numbering
floor (``keys.session_number_floor``, the highest number a writer knows from its files): a
server that restarted empty, or was flushed, does not number scans again from 1 into entries
that already hold saved scans.
"""

from __future__ import annotations

import getpass
import logging
import time
import weakref
from collections.abc import Mapping
from typing import Any

import redis

from .._protocol import metadata
from .._protocol.entries import CREATED, new_scan_fields, scan_hash_fields, state_entry_fields
from .._protocol.keys import check_item_name, check_session_name
from .._protocol.metadata import check_scan_info, iso_time
from .._protocol.scripts import create_scan
from .._transport.connection import DataStore, default_store
from ..exceptions import InvalidArgumentError, ScanstreamError
from ..models import SCAN_NODE_TYPES, ScanState
from .saving import UNREAD, check_retention, check_writer, saving_off, writer_in
from .scan import ScanPublisher

__all__ = ["PublishingSession", "create_session"]

logger = logging.getLogger(__name__)

# Scan numbers tried in a row before giving up on a counter that went back.
_MAX_TAKEN_NUMBERS = 1000

# The next scan number: INCR the counter, but go above the numbering floor a writer recorded
# (the counter restarts at 1 on a server that lost its data; the floor is rewritten by the
# writer from its files). One script, so that two publishers never get the same number.
# KEYS: counter, floor (same hash tag: one slot).
_NEXT_NUMBER = """
local n = redis.call('INCR', KEYS[1])
local floor = tonumber(redis.call('GET', KEYS[2])) or 0
if n <= floor then
  n = math.floor(floor) + 1
  redis.call('SET', KEYS[1], n)
end
return n
"""


def create_session(
    name: str,
    *,
    redis_url: str | None = None,
    store: DataStore | None = None,
    require_writer: bool = False,
    warn_no_writer: bool = True,
) -> PublishingSession:
    """Open a session to publish scans into.

    Parameters
    ----------
    name : str
        Session name (letters, digits, ``_``, ``.``, ``-``).
    redis_url : str, optional
        Redis URL; default ``SCANSTREAM_REDIS_URL``, else the embedded server.
    store : DataStore, optional
        An existing connection (takes precedence over ``redis_url``).
    require_writer : bool
        Default of :meth:`PublishingSession.create_scan`: refuse to start a scan (raise
        :class:`~scanstream.exceptions.NoWriterError`) while no writer follows the session.
    warn_no_writer : bool
        Default of :meth:`PublishingSession.create_scan`: warn
        (:class:`~scanstream.exceptions.NoWriterWarning` and a log line) when a scan starts
        while no writer follows the session. False: silent.

    Raises
    ------
    InvalidArgumentError
        Invalid session name.
    ProtocolVersionError
        The database holds another protocol version.
    """
    check_session_name(name)
    store = store or default_store(redis_url)
    store.check_protocol(initialize=True)
    store.redis.hsetnx(store.keys.sessions, name, repr(time.time()))
    return PublishingSession(
        name, store, require_writer=require_writer, warn_no_writer=warn_no_writer
    )


def _user_name() -> str | None:
    """The login name of this process's user, or None where there is none (no passwd entry)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError, ImportError):
        return None


class PublishingSession:
    """A session: allocates scan numbers and announces scans. Use :func:`create_session`.

    ``require_writer`` and ``warn_no_writer`` are the defaults of :meth:`create_scan`.
    """

    def __init__(
        self,
        name: str,
        store: DataStore,
        *,
        require_writer: bool = False,
        warn_no_writer: bool = True,
    ) -> None:
        self.name = name
        self.store = store
        self.require_writer = require_writer
        self.warn_no_writer = warn_no_writer
        self._scans: weakref.WeakSet[ScanPublisher] = weakref.WeakSet()
        self._next_number = store.redis.register_script(_NEXT_NUMBER)

    def __repr__(self) -> str:
        return f"<PublishingSession {self.name!r} on {self.store.display_url!r}>"

    def __enter__(self) -> PublishingSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """End the scans of this session still running, as FAILED ("session closed")."""
        for scan in list(self._scans):
            if not scan.state.is_final and not scan.ending:
                scan.end(ScanState.FAILED, error="the publishing session was closed")

    def create_scan(
        self,
        name: str,
        scan_info: Mapping[str, Any] | None = None,
        *,
        node_type: str = "scan",
        require_writer: bool | None = None,
        warn_no_writer: bool | None = None,
    ) -> ScanPublisher:
        """Create and announce a new scan numbered ``N`` (its db_name is ``session:N_name``).

        ``scan_info`` gets ``scan_nb``, ``session_name``, ``name``, ``start_time`` (ISO 8601)
        and ``start_timestamp``; ``title`` defaults to ``name``, ``user_name`` to the user
        running the publisher. ``N`` is above every number the session's counter gave and
        above the numbering floor its writer recorded.

        Parameters
        ----------
        name : str
            Scan name.
        scan_info : Mapping, optional
            The scan's metadata (JSON-safe; see :func:`~scanstream._protocol.metadata.check_scan_info`).
            ``save=False`` turns saving off: no writer is expected then, and ``filename``
            is published as ``""`` unless given (BLISS clients read it on every scan).
        node_type : {"scan", "scan_group"}
            The kind of scan node.
        require_writer : bool, optional
            Raise :class:`~scanstream.exceptions.NoWriterError`, creating nothing, when no
            writer follows the session. Default: the session's ``require_writer``.
        warn_no_writer : bool, optional
            Warn (:class:`~scanstream.exceptions.NoWriterWarning` and a log line) when no
            writer follows the session; False: silent (``ScanPublisher.no_writer`` still
            says so). Default: the session's ``warn_no_writer``.

        Raises
        ------
        EncodingError
            ``scan_info`` is malformed (the message names the key).
        InvalidArgumentError
            Invalid name or node type, or the store's ``retention_time`` is not a finite
            number >= 0.
        NoWriterError
            ``require_writer`` and no writer follows the session.
        """
        check_item_name(name, "scan", ":")
        if node_type not in SCAN_NODE_TYPES:
            raise InvalidArgumentError(
                f"node_type must be 'scan' or 'scan_group', got {node_type!r}"
            )
        info = check_scan_info(scan_info)
        if saving_off(info) and info.get("filename") is None:
            info["filename"] = ""  # as BLISS: a scan not saved names the empty file
        check_retention(self.store.settings.retention_time)
        require = self.require_writer if require_writer is None else require_writer
        status: dict[str, Any] | None = UNREAD
        number: int | None = None
        if not require and not saving_off(info) and not self.store.is_cluster:
            # The writer's status and the scan's number in one round trip. Not when a
            # scan without a writer is refused: it would take a number for nothing.
            status, number = self._writer_and_number()
        writer, no_writer = check_writer(
            self.store,
            self.name,
            info,
            require=require,
            warn=self.warn_no_writer if warn_no_writer is None else warn_no_writer,
            stacklevel=2,
            status=status,
        )
        keys = self.store.keys
        info.setdefault("title", name)
        user = _user_name()
        if user is not None:
            info.setdefault("user_name", user)  # BLISS's scans name their user; clients print it
        for _ in range(_MAX_TAKEN_NUMBERS):
            if number is None:
                number = int(
                    self._next_number(
                        keys=[keys.session_counter(self.name), keys.session_number_floor(self.name)]
                    )
                )
            now = time.time()
            info.update(
                scan_nb=number,
                session_name=self.name,
                name=name,
                node_type=node_type,
                start_time=iso_time(now),
                start_timestamp=now,
            )
            announced = self._announce(number, name, node_type, info, now)
            if announced is not None:
                break
            taken, number = number, None
            # The counter went back (a failover lost its latest increments, a restore): the
            # scan of that number is still there. Never write into it: take the next one.
            logger.warning(
                "session %s: scan number %d is taken by a scan still in %s (the session "
                "counter went back: a failover or a restore?); taking the next one",
                self.name,
                taken,
                self.store.display_url,
            )
        else:
            raise ScanstreamError(
                f"session {self.name}: {_MAX_TAKEN_NUMBERS} scan numbers in a row are taken in "
                f"{self.store.display_url}: its counter {keys.session_counter(self.name)} went "
                "back; set it above the highest scan number (`scanstream ls`)"
            )
        # Starts renewing the lease.
        scan = ScanPublisher(
            self,
            number,
            name,
            node_type,
            info,
            writer=writer,
            no_writer=no_writer,
            announced=announced,
        )
        self._scans.add(scan)
        return scan

    def _writer_and_number(self) -> tuple[dict[str, Any] | None, int | None]:
        """The writer's status (:func:`.saving.writer_in`) and the next scan number, read in
        one pipeline (two slots, so not one script); the number is None when the server did
        not have the number script yet (it was not run: the caller runs it)."""
        keys = self.store.keys
        pipe = self.store.redis.pipeline(transaction=False)
        pipe.hgetall(keys.writer_health(self.name))
        pipe.evalsha(
            self._next_number.sha,
            2,
            keys.session_counter(self.name),
            keys.session_number_floor(self.name),
        )
        health, number = pipe.execute(raise_on_error=False)
        status = writer_in(self.store, self.name, health)
        if isinstance(number, redis.exceptions.NoScriptError):
            return status, None
        if isinstance(number, Exception):
            raise number
        return status, int(number)

    def _announce(
        self, number: int, name: str, node_type: str, info: dict[str, Any], now: float
    ) -> bytes | None:
        """Write the scan's keys, then its NEW_SCAN entry (a reader finds the keys first).

        On a single server both are written by the one script; on a cluster the session's
        stream is in another slot, and the entry is written after the script.

        The ID of the NEW_SCAN entry; None, with nothing written, when the number is taken
        (:func:`create_scan`).
        """
        store, keys = self.store, self.store.keys
        lease_ms = int(store.settings.lease_time * 1000)
        hash_fields = scan_hash_fields(
            self.name, number, name, node_type, metadata.dumps(info), now
        )
        fields = new_scan_fields(number, name, node_type, store.settings.retention_time)
        created = create_scan(
            store.redis,
            keys,
            self.name,
            number,
            hash_fields,
            state_entry_fields(CREATED, now),
            lease_ms,
            None if store.is_cluster else fields,
        )
        if not created:
            return None
        if isinstance(created, bytes):  # announced by the script
            return created
        entry_id = store.redis.xadd(keys.session_scans(self.name), fields)
        return _as_bytes(entry_id)

    def ensure_announced(self, scan: ScanPublisher, entry_id: bytes) -> bytes:
        """Check that the NEW_SCAN entry ``entry_id`` of ``scan`` is in the session's stream.

        Called by the scan's publisher at ``prepared()``, periodically while it stores points
        (:mod:`.announcement`), and at ``end()`` (on a single server, at ``prepared()`` and
        ``end()`` only when their script did not find the entry).

        When it is gone (a failover to a replica that had not received it, a restart without
        persistence, an XDEL) while the scan is still in Redis, the scan is announced again,
        with a warning: under its former ID when the stream's last entry is older (the order
        of the scans is kept), else as the stream's latest entry (readers take scans by
        number, so a scan announced after later scans is still found). One XRANGE when the
        entry is there.

        Parameters
        ----------
        scan : ScanPublisher
            A scan of this session.
        entry_id : bytes
            The ID its NEW_SCAN entry was given.

        Returns
        -------
        bytes
            The ID of the scan's NEW_SCAN entry now (``entry_id`` unless announced again).

        Raises
        ------
        redis.exceptions.ConnectionError
            Redis cannot be reached (after the retries): the check is not done.
        """
        client, keys = self.store.redis, self.store.keys
        stream = keys.session_scans(self.name)
        if client.xrange(stream, entry_id, entry_id):
            return entry_id
        if not client.exists(keys.scan(self.name, scan.number)):
            return entry_id  # the scan is gone too: an entry would announce nothing
        retention = self.store.settings.retention_time
        fields = new_scan_fields(scan.number, scan.name, scan.node_type, retention)
        try:
            new_id = _as_bytes(client.xadd(stream, fields, id=entry_id))
        except redis.exceptions.ResponseError:  # later entries are there (or it was deleted)
            new_id = _as_bytes(client.xadd(stream, fields))
        logger.warning(
            "session %s: the NEW_SCAN entry %s of scan %s was gone from %s (a failover to a "
            "replica that lagged, or a restart without persistence?); announced it again as %s",
            self.name,
            entry_id.decode(),
            scan.db_name,
            stream,
            new_id.decode(),
        )
        return new_id


def _as_bytes(entry_id: bytes | str) -> bytes:
    return entry_id if isinstance(entry_id, bytes) else entry_id.encode()
