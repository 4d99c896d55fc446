"""Scans being published: their node tree, PREPARED, and the end.

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
grows by itself with the rate. Sessions are in :mod:`.session`, the data publishers in
:mod:`.channels`, the sender in :mod:`.sender`.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import redis

from .._protocol import codecs, metadata
from .._protocol.entries import (
    PREPARED,
    new_node_fields,
    prepared_hash_fields,
    state_entry_fields,
)
from .._protocol.keys import check_item_name
from .._protocol.metadata import check_scan_info, iso_time
from .._protocol.scripts import end_scan
from ..exceptions import (
    EncodingError,
    InvalidArgumentError,
    InvalidTransitionError,
    NodeExistsError,
    ScanEndedError,
)
from ..models import NodeDescription, SavingMode, ScanState
from .channels import ChannelPublisher, LimaPublisher, ScanRefPublisher, _NodePublisher
from .scan_info import complete_scan_info
from .sender import Sender

if TYPE_CHECKING:
    import numpy.typing as npt

    from .session import PublishingSession

logger = logging.getLogger(__name__)

__all__ = ["ContainerPublisher", "ScanPublisher"]

_Node = TypeVar("_Node", bound=_NodePublisher)


class _NodeTree:
    """The nodes of one scan: numbered in creation order, names unique under a parent.

    Each node is announced by a NEW_NODE entry before it is handed out, so that a reader
    knows every node before its first data.
    """

    def __init__(self, scan: ScanPublisher, sender: Sender) -> None:
        self.scan = scan
        self.sender = sender
        self.events_key = scan.store.keys.scan_events(scan.session_name, scan.number)
        self._lock = threading.Lock()
        self._names: set[tuple[int, str]] = set()
        self._count = 0
        self.descriptions: list[NodeDescription] = []  # for complete_scan_info

    def add(
        self,
        parent: ContainerPublisher | None,
        name: str,
        node_type: str,
        info: Mapping[str, Any] | None,
        make: Callable[..., _Node],
        *args: Any,
    ) -> _Node:
        """Announce a node and return ``make(scan, index, name, parent_db_name, *args)``.

        Raises
        ------
        ScanEndedError
            The scan has ended (or is ending).
        InvalidArgumentError
            Invalid name.
        EncodingError
            ``info`` is malformed.
        NodeExistsError
            The parent has a child of that name.
        """
        scan = self.scan
        if scan.state.is_final or self.sender.stopped:
            raise ScanEndedError(f"scan {scan.db_name} has ended: no new node {name!r}")
        check_item_name(name, "node", "/")
        node_info = check_scan_info(info, f"info of node {name!r}")
        parent_index = parent.index if parent is not None else 0
        parent_db_name = parent.db_name if parent is not None else scan.db_name
        with self._lock:
            if (parent_index, name) in self._names:
                raise NodeExistsError(f"{parent_db_name} already has a child named {name!r}")
            index = self._count + 1
            desc = NodeDescription(index, parent_index, node_type, name, node_info)
            scan.store.redis.xadd(self.events_key, new_node_fields(desc))
            self._names.add((parent_index, name))
            self._count = index
            self.descriptions.append(desc)
            # Made once announced: a data node's queue joins the sender only then.
            return make(scan, index, name, parent_db_name, *args)


class ContainerPublisher(_NodePublisher):
    """A master or device node; creates children. Use :meth:`ScanPublisher.create_container`."""

    def __init__(
        self, scan: ScanPublisher, index: int, name: str, parent_db_name: str, tree: _NodeTree
    ) -> None:
        super().__init__(scan, index, name, parent_db_name)
        self._tree = tree

    def create_container(
        self, name: str, info: Mapping[str, Any] | None = None
    ) -> ContainerPublisher:
        """Create a sub-master/device container under this one."""
        return self._tree.add(self, name, "container", info, ContainerPublisher, self._tree)

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
        return self._tree.add(
            self, name, "channel", node_info, ChannelPublisher, codec, self._tree.sender
        )

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
        return self._tree.add(
            self, name, "lima", node_info, LimaPublisher, codec, self._tree.sender
        )

    def create_scan_ref_channel(
        self, name: str = "scans", info: Mapping[str, Any] | None = None
    ) -> ScanRefPublisher:
        """Create a channel whose values are references to other scans (scan groups)."""
        codec = codecs.ScanRefCodec(name)
        return self._tree.add(
            self, name, "node_ref_channel", info, ScanRefPublisher, codec, self._tree.sender
        )


class ScanPublisher:
    """A scan being published. Use :meth:`PublishingSession.create_scan`.

    As a context manager it ends as DONE, or USER_ABORTED (KeyboardInterrupt) or FAILED
    (any other exception, whose text is recorded); the exception is not suppressed.
    """

    def __init__(
        self,
        session: PublishingSession,
        number: int,
        name: str,
        node_type: str,
        info: dict[str, Any],
    ) -> None:
        self.session = session
        self.store = session.store
        self.number = number
        self.name = name
        self.node_type = node_type
        self.db_name = f"{session.name}:{number}_{name}"
        self._info = info
        self._state = ScanState.CREATED
        lease_key = self.store.keys.scan_lease(session.name, number)
        self._sender = Sender(self.store, lease_key, self.db_name)
        self._tree = _NodeTree(self, self._sender)
        self._sender.start()

    @property
    def session_name(self) -> str:
        """Name of the session."""
        return self.session.name

    @property
    def state(self) -> ScanState:
        """Current state as known by this publisher."""
        return self._state

    @property
    def ending(self) -> bool:
        """True from the first call of :meth:`end`: emits and new nodes are refused."""
        return self._sender.stopped

    @property
    def info(self) -> dict[str, Any]:
        """A copy of the scan_info as published."""
        return dict(self._info)

    def __repr__(self) -> str:
        return f"<ScanPublisher {self.db_name!r} {self._state.name}>"

    def __enter__(self) -> ScanPublisher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._state.is_final:
            return
        if exc_type is None:
            self.end(ScanState.DONE)
            return
        state = (
            ScanState.USER_ABORTED if issubclass(exc_type, KeyboardInterrupt) else ScanState.FAILED
        )
        error = "".join(traceback.format_exception_only(exc_type, exc)).strip()
        try:
            self.end(state, error=error)
        except Exception:  # the original exception matters more; this one is logged
            logger.exception("could not end scan %s as %s", self.db_name, state.name)

    # -- tree -------------------------------------------------------------------------
    def create_container(
        self, name: str, info: Mapping[str, Any] | None = None
    ) -> ContainerPublisher:
        """Create a top-master container (channels and sub-masters go under it)."""
        return self._tree.add(None, name, "container", info, ContainerPublisher, self._tree)

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
        self._info = complete_scan_info(self._info, self._tree.descriptions)
        keys = self.store.keys
        pipe = self.store.redis.pipeline(transaction=True)
        pipe.hset(
            keys.scan(self.session_name, self.number),
            mapping=prepared_hash_fields(metadata.dumps(self._info)),
        )
        pipe.xadd(
            keys.scan_events(self.session_name, self.number),
            state_entry_fields(PREPARED, time.time()),
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
        if self._sender.error is not None:
            raise self._sender.error
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
        state, update = self._check_end(state, info_update)
        self._sender.stop()
        error = self._send_the_rest(state, error)
        now = time.time()
        self._info.update(update)
        self._info.update(end_time=iso_time(now), end_timestamp=now, state=state.name)
        if error is not None:
            self._info["error"] = error
        self._info = complete_scan_info(self._info, self._tree.descriptions)
        session, info = self.session_name, metadata.dumps(self._info)
        outcome, final = end_scan(
            self.store.redis,
            self.store.keys,
            session,
            self.number,
            state.name,
            error or "",
            now,
            retention_time=self.store.settings.retention_time,
            info_json=info,
        )
        self._state = self._end_outcome(state, outcome, final)

    def _check_end(
        self, state: ScanState | str, info_update: Mapping[str, Any] | None
    ) -> tuple[ScanState, dict[str, Any]]:
        """The end state and the scan_info update, validated (nothing changed yet)."""
        state = ScanState[state] if isinstance(state, str) else ScanState(state)
        if not state.is_final:
            raise InvalidArgumentError(
                f"end state must be DONE, USER_ABORTED, KILLED or FAILED, got {state.name}"
            )
        if self._state.is_final:
            raise InvalidTransitionError(self._state, state)
        return state, check_scan_info(info_update)

    def _send_the_rest(self, state: ScanState, error: str | None) -> str | None:
        """Send the queued points; return the error text, with what was dropped if anything.

        Ending DONE must keep every point: a refusal propagates and the points stay queued
        (end again once Redis accepts them). Ending FAILED, USER_ABORTED or KILLED must not
        depend on a full Redis taking the rest: what it refuses is dropped and counted.
        """
        if self._sender.fatal:  # already dropped, and said so by the error emit raised
            return error
        try:
            self._sender.send(raise_errors=True)
        except redis.exceptions.ResponseError as exc:
            if state is ScanState.DONE:
                raise
            note = f"{self._sender.drop()} points could not be stored: {exc.__cause__ or exc}"
            return f"{error}; {note}" if error else note
        return error

    def _end_outcome(self, state: ScanState, outcome: str, final: str) -> ScanState:
        """The state after the end-of-scan script said ``outcome``; raise if it was not ours."""
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
        return state
