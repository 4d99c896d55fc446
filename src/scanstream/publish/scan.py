"""The publishing API: sessions, scans, their node tree and data.

A scan is published as::

    session = create_session("test_session")
    with session.create_scan("ascan", scan_info) as scan:      # ends DONE / USER_ABORTED / FAILED
        timer = scan.create_container("timer")                # a top master
        diode = timer.create_channel("diode", dtype="float64")
        scan.prepared()
        diode.emit(1.5)                                       # one point, or a batch

``emit`` never waits on Redis: points are queued and a background thread per scan sends
whatever has accumulated as one entry per channel, in one MULTI/EXEC, as soon as the
previous send is done (and at most every few milliseconds). Latency stays bounded; batching
grows by itself with the rate. The data publishers and the sender are in
:mod:`scanstream.publish.channels`.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
import weakref
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

import redis

from .._protocol import codecs, metadata
from .._protocol.keys import check_item_name, check_session_name
from .._protocol.metadata import check_scan_info, iso_time
from .._protocol.scripts import end_scan
from .._transport.connection import DataStore, default_store
from ..exceptions import (
    EncodingError,
    InvalidArgumentError,
    InvalidTransitionError,
    NodeExistsError,
    ScanEndedError,
)
from ..models import SavingMode, ScanState
from .channels import (
    ChannelPublisher,
    LimaPublisher,
    ScanRefPublisher,
    _DataPublisher,
    _NodePublisher,
    _Sender,
)

if TYPE_CHECKING:
    import numpy.typing as npt

logger = logging.getLogger(__name__)

__all__ = [
    "ChannelPublisher",
    "ContainerPublisher",
    "LimaPublisher",
    "PublishingSession",
    "ScanPublisher",
    "ScanRefPublisher",
    "create_session",
]


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
        return f"<PublishingSession {self.name!r} on {self.store.url!r}>"

    def __enter__(self) -> PublishingSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """End the scans of this session still running, as FAILED ("session closed")."""
        for scan in list(self._scans):
            if not scan.state.is_final and not scan._closing:
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
        if node_type not in ("scan", "scan_group"):
            raise InvalidArgumentError(f"node_type must be 'scan' or 'scan_group', got {node_type!r}")
        info = check_scan_info(scan_info)
        store, keys = self.store, self.store.keys
        number = int(store.redis.incr(keys.session_counter(self.name)))
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
        scan = ScanPublisher(self, number, name, node_type, info)
        lease_ms = int(store.settings.lease_time * 1000)
        # Scan keys first (one slot, one transaction), then the announcement in the session
        # stream: a reader never finds a NEW_SCAN whose scan is not there yet.
        pipe = store.redis.pipeline(transaction=True)
        pipe.hset(
            keys.scan(self.name, number),
            mapping={
                "session": self.name,
                "number": number,
                "name": name,
                "node_type": node_type,
                "state": ScanState.CREATED.name,
                "info": metadata.dumps(info),
                "start_time": repr(now),
            },
        )
        pipe.xadd(keys.scan_events(self.name, number), {"event": "CREATED", "time": repr(now)})
        pipe.set(keys.scan_lease(self.name, number), b"1", px=lease_ms)
        pipe.execute()
        store.redis.xadd(
            keys.session_scans(self.name),
            {"event": "NEW_SCAN", "scan": number, "name": name, "node_type": node_type},
        )
        scan._sender.start()
        self._scans.add(scan)
        return scan


class ContainerPublisher(_NodePublisher):
    """A master or device node; creates children. Use :meth:`ScanPublisher.create_container`."""

    def create_container(self, name: str, info: Mapping[str, Any] | None = None) -> ContainerPublisher:
        """Create a sub-master/device container under this one."""
        return self.scan._create_node(ContainerPublisher, self, name, "container", info, ())

    def create_channel(
        self,
        name: str,
        dtype: npt.DTypeLike = "float64",
        shape: tuple[int, ...] = (),
        *,
        unit: str | None = None,
        info: Mapping[str, Any] | None = None,
    ) -> ChannelPublisher:
        """Create a numeric channel.

        Parameters
        ----------
        name : str
            Full channel name, for example ``"axis:roby"`` or ``"diode"``.
        dtype : numpy dtype
            bool, integer, float or complex.
        shape : tuple of int
            Shape of one point: ``()`` scalar, ``(1024,)`` a spectrum, ``(-1,)`` a 1D
            point whose length varies.
        unit : str, optional
            Physical unit.

        Raises
        ------
        EncodingError
            Unsupported dtype or shape.
        NodeExistsError
            A sibling has that name.
        """
        codec = codecs.NumericCodec(dtype, shape, name)
        node_info = dict(info or {})
        node_info.update(dtype=codec.dtype.str, shape=list(codec.shape), unit=unit)
        return self.scan._create_node(ChannelPublisher, self, name, "channel", node_info, (codec,))

    def create_lima(
        self,
        name: str,
        dtype: npt.DTypeLike,
        shape: tuple[int, int],
        *,
        saving_mode: str = "MANUAL",
        info: Mapping[str, Any] | None = None,
    ) -> LimaPublisher:
        """Create a 2D detector node whose images are stored in files (references only).

        Parameters
        ----------
        dtype, shape
            dtype and (height, width) of the images.
        saving_mode : {"MANUAL", "NOSAVING"}
            With NOSAVING, images are counted but have no file references.
        info : Mapping, optional
            Further description (``user_detector_name``, ``saving_format``...).
        """
        mode = SavingMode(saving_mode)
        check_dtype = codecs.check_dtype(dtype, name)
        frame_shape = codecs.check_shape(shape, name)
        if len(frame_shape) != 2 or -1 in frame_shape:
            raise EncodingError(f"lima node {name!r}: shape must be (height, width), got {shape!r}")
        node_info = dict(info or {})
        node_info.update(dtype=check_dtype.str, shape=list(frame_shape), saving_mode=mode.value)
        codec = codecs.ImageRefCodec(name, saved=mode is SavingMode.MANUAL)
        return self.scan._create_node(LimaPublisher, self, name, "lima", node_info, (codec,))

    def create_scan_ref_channel(
        self, name: str = "scans", info: Mapping[str, Any] | None = None
    ) -> ScanRefPublisher:
        """Create a channel whose values are references to other scans (scan groups)."""
        codec = codecs.ScanRefCodec(name)
        return self.scan._create_node(
            ScanRefPublisher, self, name, "node_ref_channel", dict(info or {}), (codec,)
        )


class ScanPublisher:
    """A scan being published. Use :meth:`PublishingSession.create_scan`.

    As a context manager it ends as DONE, or USER_ABORTED (KeyboardInterrupt) or FAILED
    (any other exception, whose text is recorded); the exception is not suppressed.
    """

    def __init__(
        self, session: PublishingSession, number: int, name: str, node_type: str, info: dict[str, Any]
    ) -> None:
        self.session = session
        self.store = session.store
        self.number = number
        self.name = name
        self.node_type = node_type
        self.db_name = f"{session.name}:{number}_{name}"
        self._info = info
        self._state = ScanState.CREATED
        self._nodes: list[_NodePublisher] = []
        self._data_nodes: list[_DataPublisher] = []
        self._names: set[tuple[int, str]] = set()
        self._tree_lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        # Set when the scan failed (Redis full, or unreachable for too long): every emit raises it.
        self._send_error: BaseException | None = None
        self._sender = _Sender(self)

    @property
    def session_name(self) -> str:
        """Name of the session."""
        return self.session.name

    @property
    def state(self) -> ScanState:
        """Current state as known by this publisher."""
        return self._state

    @property
    def info(self) -> dict[str, Any]:
        """A copy of the scan_info as published."""
        return dict(self._info)

    def __repr__(self) -> str:
        return f"<ScanPublisher {self.db_name!r} {self._state.name}>"

    def __enter__(self) -> ScanPublisher:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._state.is_final:
            return
        if exc_type is None:
            self.end(ScanState.DONE)
            return
        state = ScanState.USER_ABORTED if issubclass(exc_type, KeyboardInterrupt) else ScanState.FAILED
        error = "".join(traceback.format_exception_only(exc_type, exc)).strip()
        try:
            self.end(state, error=error)
        except Exception:  # the original exception matters more; this one is logged
            logger.exception("could not end scan %s as %s", self.db_name, state.name)

    # -- tree -------------------------------------------------------------------------
    def create_container(self, name: str, info: Mapping[str, Any] | None = None) -> ContainerPublisher:
        """Create a top-master container (channels and sub-masters go under it)."""
        return self._create_node(ContainerPublisher, None, name, "container", info, ())

    def _create_node(
        self,
        cls: type[Any],
        parent: _NodePublisher | None,
        name: str,
        node_type: str,
        info: Mapping[str, Any] | None,
        extra: tuple[Any, ...],
    ) -> Any:
        if self._state.is_final or self._closing:
            raise ScanEndedError(f"scan {self.db_name} has ended: no new node {name!r}")
        check_item_name(name, "node", "/")
        node_info = check_scan_info(info, f"info of node {name!r}")
        parent_index = parent.index if parent is not None else 0
        parent_db_name = parent.db_name if parent is not None else self.db_name
        with self._tree_lock:
            if (parent_index, name) in self._names:
                raise NodeExistsError(f"{parent_db_name} already has a child named {name!r}")
            index = len(self._nodes) + 1
            node = cls(self, index, name, parent_db_name, *extra)
            self.store.redis.xadd(
                self.store.keys.scan_events(self.session.name, self.number),
                {
                    "event": "NEW_NODE",
                    "node": index,
                    "parent": parent_index,
                    "type": node_type,
                    "name": name,
                    "info": metadata.dumps(node_info),
                },
            )
            self._names.add((parent_index, name))
            self._nodes.append(node)
            if isinstance(node, _DataPublisher):
                self._data_nodes.append(node)
        return node

    # -- life cycle -------------------------------------------------------------------
    def prepared(self, info_update: Mapping[str, Any] | None = None) -> None:
        """Mark the scan PREPARED (all nodes created), optionally updating scan_info.

        Raises
        ------
        InvalidTransitionError
            The scan is not in state CREATED.
        """
        if self._state is not ScanState.CREATED:
            raise InvalidTransitionError(self._state, ScanState.PREPARED)
        self._info.update(check_scan_info(info_update))
        keys = self.store.keys
        info_json = metadata.dumps(self._info)
        pipe = self.store.redis.pipeline(transaction=True)
        pipe.hset(keys.scan(self.session.name, self.number), mapping={"state": "PREPARED", "info": info_json})
        pipe.xadd(
            keys.scan_events(self.session.name, self.number),
            {"event": "PREPARED", "time": repr(time.time())},
        )
        pipe.execute()
        self._state = ScanState.PREPARED

    def flush(self) -> None:
        """Send every queued point now and wait until Redis has them.

        Raises
        ------
        redis.exceptions.ConnectionError
            Redis cannot be reached (after redis-py's retries); the points stay queued.
        RedisUnreachableError
            Redis has been unreachable for ``max_unreachable_time``: the scan failed.
        RedisFullError
            Redis is full and refuses the points; they stay queued.
        """
        if self._send_error is not None:
            raise self._send_error
        self._sender.send(raise_errors=True)

    def end(
        self,
        state: ScanState | str = ScanState.DONE,
        *,
        error: str | None = None,
        info_update: Mapping[str, Any] | None = None,
    ) -> None:
        """End the scan: send every queued point, then seal the data and publish END.

        END and the seals are written in one server-side step after the last data, so
        readers get every point before END_SCAN and END_SCAN carries the final state.

        Parameters
        ----------
        state : ScanState or str
            DONE, USER_ABORTED, KILLED or FAILED.
        error : str, optional
            The error text for states other than DONE.
        info_update : Mapping, optional
            scan_info keys to add at the end (``end_time`` is added by scanstream).

        Raises
        ------
        InvalidTransitionError
            The scan had already ended (for example declared KILLED after its lease
            expired while this process was frozen).
        redis.exceptions.OutOfMemoryError
            Ending DONE while Redis is full: the queued points stay queued, call ``end``
            again once memory is freed. Ending in another state drops the points Redis
            refuses (their number goes into the error text) and ends the scan anyway.
        redis.exceptions.ConnectionError
            Redis cannot be reached (after the retries).
        """
        state = ScanState[state] if isinstance(state, str) else ScanState(state)
        if not state.is_final:
            raise InvalidArgumentError(f"end state must be DONE, USER_ABORTED, KILLED or FAILED, got {state.name}")
        if self._state.is_final:
            raise InvalidTransitionError(self._state, state)
        update = check_scan_info(info_update)
        self._closing = True
        self._sender.stop()
        if not self._sender.fatal:
            try:
                self._sender.send(raise_errors=True)
            except redis.exceptions.ResponseError as exc:
                if state is ScanState.DONE:
                    raise  # the points stay queued: end() again once Redis accepts them
                # Ending FAILED/ABORTED/KILLED must not depend on a full Redis taking the rest.
                dropped = sum(node._drop() for node in self._data_nodes)
                note = f"{dropped} points could not be stored: {exc.__cause__ or exc}"
                error = f"{error}; {note}" if error else note
        now = time.time()
        self._info.update(update)
        self._info.update(end_time=iso_time(now), end_timestamp=now, state=state.name)
        if error is not None:
            self._info["error"] = error
        outcome, final = end_scan(
            self.store.redis, self.store.keys, self.session.name,
            self.number,
            state.name,
            error or "",
            now,
            retention_time=self.store.settings.retention_time,
            info_json=metadata.dumps(self._info),
        )
        if outcome == "ended" and final == state.name and state is not ScanState.KILLED:
            # Only this publisher ends a scan in a state other than KILLED: this is our own
            # END, replayed by redis-py after its reply was lost.
            outcome = "ok"
        if outcome == "ended":
            self._state = ScanState[final]
            raise InvalidTransitionError(
                ScanState[final], state, "it was ended by another process (lease expired?)"
            )
        if outcome == "missing":
            raise ScanEndedError(f"scan {self.db_name} is gone from Redis (expired or deleted)")
        self._state = state

    def _raise_if_cannot_emit(self) -> None:
        if self._send_error is not None:
            raise self._send_error
        if self._closing or self._state.is_final:
            raise ScanEndedError(f"scan {self.db_name} has ended ({self._state.name}): emit refused")
