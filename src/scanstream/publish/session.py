"""Publishing sessions: they number the scans and announce them.

A scan is announced in two steps: its keys first (hash, event stream, lease: one slot, one
transaction), then a NEW_SCAN entry in the session's stream, so that a reader never finds a
NEW_SCAN whose scan is not there yet.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Mapping
from typing import Any

from .._protocol import metadata
from .._protocol.entries import CREATED, new_scan_fields, scan_hash_fields, state_entry_fields
from .._protocol.keys import check_item_name, check_session_name
from .._protocol.metadata import check_scan_info, iso_time
from .._transport.connection import DataStore, default_store
from ..exceptions import InvalidArgumentError
from ..models import SCAN_NODE_TYPES, ScanState
from .scan import ScanPublisher

__all__ = ["PublishingSession", "create_session"]


def create_session(
    name: str, *, redis_url: str | None = None, store: DataStore | None = None
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
    return PublishingSession(name, store)


class PublishingSession:
    """A session: allocates scan numbers and announces scans. Use :func:`create_session`."""

    def __init__(self, name: str, store: DataStore) -> None:
        self.name = name
        self.store = store
        self._scans: weakref.WeakSet[ScanPublisher] = weakref.WeakSet()

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
    ) -> ScanPublisher:
        """Create and announce a new scan numbered ``N`` (its db_name is ``session:N_name``).

        ``scan_info`` gets ``scan_nb``, ``session_name``, ``name``, ``start_time`` (ISO 8601)
        and ``start_timestamp``; ``title`` defaults to ``name``.

        Raises
        ------
        EncodingError
            ``scan_info`` is malformed (the message names the key).
        InvalidArgumentError
            Invalid name or node type.
        """
        check_item_name(name, "scan", ":")
        if node_type not in SCAN_NODE_TYPES:
            raise InvalidArgumentError(
                f"node_type must be 'scan' or 'scan_group', got {node_type!r}"
            )
        info = check_scan_info(scan_info)
        number = int(self.store.redis.incr(self.store.keys.session_counter(self.name)))
        now = time.time()
        info.setdefault("title", name)
        info.update(
            scan_nb=number,
            session_name=self.name,
            name=name,
            node_type=node_type,
            start_time=iso_time(now),
            start_timestamp=now,
        )
        self._announce(number, name, node_type, info, now)
        scan = ScanPublisher(self, number, name, node_type, info)  # starts renewing the lease
        self._scans.add(scan)
        return scan

    def _announce(
        self, number: int, name: str, node_type: str, info: dict[str, Any], now: float
    ) -> None:
        """Write the scan's keys, then its NEW_SCAN entry (a reader finds the keys first)."""
        store, keys = self.store, self.store.keys
        lease_ms = int(store.settings.lease_time * 1000)
        hash_fields = scan_hash_fields(
            self.name, number, name, node_type, metadata.dumps(info), now
        )
        pipe = store.redis.pipeline(transaction=True)
        pipe.hset(keys.scan(self.name, number), mapping=hash_fields)
        pipe.xadd(keys.scan_events(self.name, number), state_entry_fields(CREATED, now))
        pipe.set(keys.scan_lease(self.name, number), b"1", px=lease_ms)
        pipe.execute()
        store.redis.xadd(keys.session_scans(self.name), new_scan_fields(number, name, node_type))
