"""The scan-level observer API of BLISS's ``bliss.data.scan``: ScansWatcher and friends.

:class:`ScansWatcher` walks a session and calls a :class:`ScansObserver`'s methods at each
step of each scan's life (created, started, data, finished). :func:`watch_session_scans` is
the older callback API built on it (Flint and beamline scripts use both). The semantics are
BLISS 1.x's, with two differences documented in ``docs/bliss_compatibility.md``: a scan's
children are matched by the scan they belong to (not by a db_name prefix), and a scan that
expires under the watcher is finished with ``scan_info["end_state"] == "EXPIRED"``.

Threads or gevent: the watcher uses ``threading`` primitives only, which become gevent's
under ``gevent.monkey.patch_all()``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np

from ..exceptions import ScanstreamError
from ..models import NodeType, ScanState
from .data_nodes import LimaNode
from .events import Event, EventData, EventType, StopHandler
from .nodes import DataNode
from .tree import get_session_node

logger = logging.getLogger(__name__)

_SCAN = NodeType.SCAN.value
_SCAN_GROUP = NodeType.SCAN_GROUP.value


class ScansObserver:
    """What a :class:`ScansWatcher` calls; override the methods you need (all no-ops)."""

    def on_event_received(self, event: Event) -> None:
        """Every event of the session walk, before its specific callback."""

    def on_scan_created(self, scan_db_name: str, scan_info: dict[str, Any]) -> None:
        """A scan was created (its devices are not prepared yet)."""

    def on_scan_started(self, scan_db_name: str, scan_info: dict[str, Any]) -> None:
        """The scan's devices were prepared (PREPARED_SCAN); ``scan_info`` read again."""

    def on_child_created(self, scan_db_name: str, node: DataNode) -> None:
        """A node of the scan was created (container, channel, lima...)."""

    def on_scalar_data_received(
        self, scan_db_name: str, channel_name: str, index: int, data_bunch: np.ndarray
    ) -> None:
        """Points of a 0D channel ``channel_name`` (its fullname) from index ``index``."""

    def on_ndim_data_received(
        self,
        scan_db_name: str,
        channel_name: str,
        dim: int,
        index: int,
        data_bunch: Any,
    ) -> None:
        """Points of a 1D or 2D numeric channel from index ``index``."""

    def on_lima_ref_received(
        self,
        scan_db_name: str,
        channel_name: str,
        dim: int,
        source_node: DataNode,
        event_data: EventData,
    ) -> None:
        """Image references of a lima node (``event_data.data``, from ``first_index``)."""

    def on_scan_finished(self, scan_db_name: str, scan_info: dict[str, Any]) -> None:
        """The scan ended; ``scan_info`` as completed at the end (``end_state`` added)."""


def _report(what: str) -> None:
    """An observer's exception never stops the watcher (BLISS: ``sys.excepthook``)."""
    logger.error("ScansWatcher: observer failed in %s", what, exc_info=True)
    exc_type, exc, tb = sys.exc_info()
    if exc_type is not None and exc is not None:
        sys.excepthook(exc_type, exc, tb)


class ScansWatcher:
    """Watch the scans of a session and call an observer (BLISS's ``ScansWatcher``).

    Parameters
    ----------
    session_name : str
        The session to watch.
    redis_url : str, optional
        Redis URL; default ``SCANSTREAM_REDIS_URL``, else the embedded server.
    store : DataStore, optional
        An existing connection.
    stop_handler : StopHandler, optional
        The handler :meth:`stop` uses (one is made when not given).
    ready_event : threading.Event or gevent.event.Event, optional
        The event :meth:`wait_ready` waits for (one is made when not given).
    bliss_mode : bool
        Hand over nodes and scan_info as BLISS 1.x did (:attr:`DataNode.bliss_mode`:
        ``start_time`` / ``end_time`` as datetimes); the default of ``bliss.data.scan``'s.
    """

    def __init__(
        self,
        session_name: str,
        *,
        redis_url: str | None = None,
        store: Any = None,
        stop_handler: Any = None,
        ready_event: Any = None,
        bliss_mode: bool = False,
    ) -> None:
        self._session_name = session_name
        self._bliss_mode = bliss_mode
        self._redis_url = redis_url
        self._store = store
        self._exclude_existing_scans = False
        self._watch_scan_group = False
        self._observer: ScansObserver | None = None
        self._running = False
        self._running_scans: set[str] = set()
        self._ready_event: Any = ready_event if ready_event is not None else threading.Event()
        self._terminated_event = threading.Event()
        self._no_scans_event = threading.Event()
        self._no_scans_event.set()
        self._stop_handler: Any = stop_handler if stop_handler is not None else StopHandler()

    # -- configuration (before run) -------------------------------------------------
    def _check_not_running(self, what: str) -> None:
        if self._running:
            raise RuntimeError(f"ScansWatcher of {self._session_name!r}: {what} before run()")

    def set_exclude_existing_scans(self, exclude: bool) -> None:
        """Do not watch the scans that exist when the watcher starts (default False)."""
        self._check_not_running("set_exclude_existing_scans")
        self._exclude_existing_scans = bool(exclude)

    def set_watch_scan_group(self, watch: bool) -> None:
        """Also report scan groups as scans (default False)."""
        self._check_not_running("set_watch_scan_group")
        self._watch_scan_group = bool(watch)

    def set_observer(self, observer: ScansObserver) -> None:
        """The observer :meth:`run` calls (required)."""
        self._check_not_running("set_observer")
        self._observer = observer

    def _set_stop_handler(self, stop_handler: Any) -> None:
        self._check_not_running("_set_stop_handler")
        self._stop_handler = stop_handler

    # -- waiting ---------------------------------------------------------------------
    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until the watcher listens (scans created after it are seen)."""
        return bool(self._ready_event.wait(timeout))

    def wait_no_more_running_scans(self, timeout: float | None = None) -> bool:
        """Block until no watched scan is running."""
        return self._no_scans_event.wait(timeout)

    def wait_terminated(self, timeout: float | None = None) -> bool:
        """Block until :meth:`run` has returned."""
        return self._terminated_event.wait(timeout)

    def running_scan_names(self) -> list[str]:
        """db_names of the watched scans that have not finished."""
        return list(self._running_scans)

    # -- running ---------------------------------------------------------------------
    @contextlib.contextmanager
    def watch(self) -> Iterator[threading.Thread]:
        """Run the watcher in a thread (a greenlet under gevent) for the ``with`` block."""
        thread = threading.Thread(target=self.run, name="scanstream-scans-watcher", daemon=True)
        thread.start()
        try:
            self.wait_ready(timeout=3)
            yield thread
        finally:
            self.wait_no_more_running_scans(timeout=2)
            self.stop()
            self.wait_terminated(timeout=1)
            thread.join(timeout=1)

    def stop(self) -> None:
        """Make :meth:`run` return (from another thread or greenlet)."""
        if self._running:
            self._stop_handler.stop()

    def run(self) -> None:
        """Walk the session and call the observer until :meth:`stop`. Blocking.

        Raises
        ------
        RuntimeError
            No observer was set, or the watcher already runs.
        """
        self._check_not_running("run() again")
        if self._observer is None:
            raise RuntimeError(f"ScansWatcher of {self._session_name!r}: no observer was set")
        self._terminated_event.clear()
        self._running = True
        try:
            session = get_session_node(
                self._session_name, redis_url=self._redis_url, store=self._store
            )
            session.bliss_mode = self._bliss_mode
            # As in BLISS, only the scans created from now on are reported (their NEW_NODE
            # is what registers them); exclude_existing_scans only spares the reading.
            exclude = (_SCAN, _SCAN_GROUP) if self._exclude_existing_scans else None
            walk = session.walk_events(
                from_next=True,
                exclude_existing_children=exclude,
                stop_handler=self._stop_handler,
                started_event=self._ready_event,
            )
            for event in walk:
                self._dispatch(self._observer, event)
        finally:
            self._running = False
            self._terminated_event.set()

    def _is_watched_scan(self, node: DataNode) -> bool:
        return node.type == _SCAN or (self._watch_scan_group and node.type == _SCAN_GROUP)

    def _dispatch(self, observer: ScansObserver, event: Event) -> None:
        event_type, node, data = event
        try:
            observer.on_event_received(event)
        except Exception:
            _report("on_event_received")
        scan = node.scan
        if scan is None:
            return
        scan_db_name = scan.db_name
        if node is scan:
            if not self._is_watched_scan(node):
                return
            if event_type == EventType.NEW_NODE:
                self._running_scans.add(scan_db_name)
                self._no_scans_event.clear()
                self._call(observer.on_scan_created, scan_db_name, _scan_info(scan))
            elif scan_db_name not in self._running_scans:
                return
            elif event_type == EventType.PREPARED_SCAN:
                self._call(observer.on_scan_started, scan_db_name, _scan_info(scan))
            elif event_type == EventType.END_SCAN:
                self._finish(observer, scan_db_name, scan, data)
            return
        if scan_db_name not in self._running_scans:
            return
        if event_type == EventType.NEW_NODE:
            self._call(observer.on_child_created, scan_db_name, node)
        elif event_type == EventType.NEW_DATA:
            self._on_data(observer, scan_db_name, node, data)

    def _finish(
        self, observer: ScansObserver, scan_db_name: str, scan: Any, data: EventData
    ) -> None:
        try:
            try:
                scan_info = _scan_info(scan)
            except Exception:  # expired: report its end with what was known
                scan_info = dict(scan.info)
            if data.data is ScanState.EXPIRED:
                scan_info["end_state"] = ScanState.EXPIRED.name
            self._call(observer.on_scan_finished, scan_db_name, scan_info)
        finally:
            self._running_scans.discard(scan_db_name)
            if not self._running_scans:
                self._no_scans_event.set()

    def _on_data(
        self, observer: ScansObserver, scan_db_name: str, node: DataNode, data: EventData
    ) -> None:
        fullname = node.fullname
        if isinstance(node, LimaNode):
            self._call(
                observer.on_lima_ref_received,
                scan_db_name=scan_db_name,
                channel_name=fullname,
                source_node=node,
                dim=2,
                event_data=data,
            )
            return
        if node.type != NodeType.CHANNEL:
            return
        dim = len(getattr(node, "shape", ()))
        if dim == 0:
            self._call(
                observer.on_scalar_data_received,
                scan_db_name=scan_db_name,
                channel_name=fullname,
                index=data.first_index,
                data_bunch=data.data,
            )
        else:
            self._call(
                observer.on_ndim_data_received,
                scan_db_name=scan_db_name,
                channel_name=fullname,
                dim=dim,
                index=data.first_index,
                data_bunch=data.data,
            )

    @staticmethod
    def _call(method: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        # The data callbacks get keyword arguments, as BLISS passed them: observers (and
        # BLISS's tests) read them by name, and may order their parameters differently. An
        # observer whose parameters have other names gets them by position, in the order
        # of ScansObserver's signature (the order of ``kwargs`` here).
        try:
            if kwargs and not _takes_keywords(method, tuple(kwargs)):
                args, kwargs = args + tuple(kwargs.values()), {}
            method(*args, **kwargs)
        except Exception:
            _report(getattr(method, "__name__", repr(method)))


@functools.lru_cache(maxsize=256)
def _keywords_of(function: Any, names: tuple[str, ...]) -> bool:
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # no signature to read: call it as BLISS did
        return True
    params = list(signature.parameters.values())
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return True
    accepted = {
        p.name
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    return set(names) <= accepted


def _takes_keywords(method: Callable[..., None], names: tuple[str, ...]) -> bool:
    """True when ``method`` accepts these keyword arguments (BLISS's parameter names)."""
    function = getattr(method, "__func__", None)  # a plain method: cache by its function
    if function is None:
        return _keywords_of.__wrapped__(method, names)
    return _keywords_of(function, names)


def _scan_info(scan: Any) -> dict[str, Any]:
    """The scan_info of ``scan`` read now, with the ``filename`` every BLISS scan had.

    A scan published with saving on but no filename (the writer picks its default file)
    names the file the writer recorded, ``""`` until it did: BLISS's observers format it
    (the scan display's header) and would fail on its absence.
    """
    info: dict[str, Any] = scan.info.get_all()
    if "filename" not in info:
        try:
            info["filename"] = scan.saving.file or ""
        except ScanstreamError:  # expired meanwhile: no file known
            info["filename"] = ""
    return info


class _ScanDescription(NamedTuple):
    scan_info: dict[str, Any]
    channels_to_master: dict[str, str]
    channels_data: dict[str, np.ndarray]


class DefaultScansObserver(ScansObserver):
    """The observer behind :func:`watch_session_scans` (BLISS <= 1.7 callbacks).

    Keeps each scan's scan_info and the whole data of its scalar channels, and calls
    ``scan_new_callback(scan_info)``, ``scan_new_child_callback(scan_info, node)``,
    ``scan_data_callback(kind, top_master, payload)`` and ``scan_end_callback(scan_info)``.
    """

    def __init__(self) -> None:
        self._scans: dict[str, _ScanDescription] = {}
        self.scan_new_callback: Callable[[dict[str, Any]], None] | None = None
        self.scan_new_child_callback: Callable[[dict[str, Any], DataNode], None] | None = None
        self.scan_data_callback: Callable[[str, str, dict[str, Any]], None] | None = None
        self.scan_end_callback: Callable[[dict[str, Any]], None] | None = None
        self._current: Event | None = None

    def on_event_received(self, event: Event) -> None:
        self._current = event

    def on_scan_created(self, scan_db_name: str, scan_info: dict[str, Any]) -> None:
        masters: dict[str, str] = {}
        devices = scan_info.get("devices", {})
        for top_master, meta in scan_info.get("acquisition_chain", {}).items():
            for device in meta.get("devices", []):
                for channel in devices.get(device, {}).get("channels", []):
                    masters[channel] = top_master
        self._scans[scan_db_name] = _ScanDescription(scan_info, masters, {})
        if self.scan_new_callback is not None:
            self.scan_new_callback(scan_info)

    def on_scan_finished(self, scan_db_name: str, scan_info: dict[str, Any]) -> None:
        self._scans.pop(scan_db_name, None)
        if self.scan_end_callback is not None:
            self.scan_end_callback(scan_info)

    def on_child_created(self, scan_db_name: str, node: DataNode) -> None:
        desc = self._scans.get(scan_db_name)
        if desc is not None and self.scan_new_child_callback is not None:
            self.scan_new_child_callback(desc.scan_info, node)

    def _master(self, desc: _ScanDescription, channel_name: str) -> str:
        master = desc.channels_to_master.get(channel_name)
        if master is None:  # a channel scan_info does not list: its top-level container
            node = self._current.node if self._current is not None else None
            while node is not None and node.parent is not None and node.parent is not node.scan:
                node = node.parent
            master = node.name if node is not None else ""
        return master

    def on_scalar_data_received(
        self, scan_db_name: str, channel_name: str, index: int, data_bunch: np.ndarray
    ) -> None:
        desc = self._scans.get(scan_db_name)
        if desc is None or self.scan_data_callback is None:
            return
        previous = desc.channels_data.get(channel_name)
        bunch = np.asarray(data_bunch)
        desc.channels_data[channel_name] = (
            bunch if previous is None else np.concatenate((previous, bunch))
        )
        self.scan_data_callback(
            "0d",
            self._master(desc, channel_name),
            {"data": desc.channels_data, "scan_info": desc.scan_info},
        )

    def on_ndim_data_received(
        self, scan_db_name: str, channel_name: str, dim: int, index: int, data_bunch: Any
    ) -> None:
        desc = self._scans.get(scan_db_name)
        if desc is None or self.scan_data_callback is None or self._current is None:
            return
        self.scan_data_callback(
            f"{dim}d",
            self._master(desc, channel_name),
            {
                "index": index,
                "data": data_bunch,
                "description": self._current.data.description,
                "channel_name": channel_name,
                "channel_data_node": self._current.node,
                "scan_info": desc.scan_info,
            },
        )

    def on_lima_ref_received(
        self,
        scan_db_name: str,
        channel_name: str,
        dim: int,
        source_node: DataNode,
        event_data: EventData,
    ) -> None:
        desc = self._scans.get(scan_db_name)
        if desc is None or self.scan_data_callback is None:
            return
        self.scan_data_callback(
            f"{dim}d",
            self._master(desc, channel_name),
            {
                "index": event_data.first_index,
                "data": event_data.data,
                "description": event_data.description,
                "channel_name": channel_name,
                "channel_data_node": source_node,
                "scan_info": desc.scan_info,
            },
        )


def watch_session_scans(
    session_name: str,
    scan_new_callback: Callable[[dict[str, Any]], None] | None,
    scan_new_child_callback: Callable[[dict[str, Any], DataNode], None] | None,
    scan_data_callback: Callable[[str, str, dict[str, Any]], None] | None,
    scan_end_callback: Callable[[dict[str, Any]], None] | None = None,
    ready_event: Any = None,
    stop_handler: Any = None,
    watch_scan_group: bool = False,
    exclude_existing_scans: bool | None = None,
    *,
    redis_url: str | None = None,
    store: Any = None,
    bliss_mode: bool = False,
) -> None:
    """Call the callbacks for every scan of the session until stopped (BLISS's API). Blocking.

    Parameters
    ----------
    session_name : str
        The session to watch.
    scan_new_callback, scan_new_child_callback, scan_data_callback, scan_end_callback
        See :class:`DefaultScansObserver`.
    ready_event : threading.Event or gevent.event.Event, optional
        Set once the watcher listens.
    stop_handler : StopHandler, optional
        Stops the watch from another thread or greenlet.
    watch_scan_group : bool
        Also report scan groups.
    exclude_existing_scans : bool, optional
        Skip the scans that exist at start (BLISS's default, False, when None).
    bliss_mode : bool
        As :class:`ScansWatcher`'s (``bliss.data.scan``'s default).
    """
    watcher = ScansWatcher(
        session_name,
        redis_url=redis_url,
        store=store,
        stop_handler=stop_handler,
        ready_event=ready_event,
        bliss_mode=bliss_mode,
    )
    watcher.set_exclude_existing_scans(bool(exclude_existing_scans))
    watcher.set_watch_scan_group(watch_scan_group)
    observer = DefaultScansObserver()
    observer.scan_new_callback = scan_new_callback
    observer.scan_new_child_callback = scan_new_child_callback
    observer.scan_data_callback = scan_data_callback
    observer.scan_end_callback = scan_end_callback
    watcher.set_observer(observer)
    watcher.run()
