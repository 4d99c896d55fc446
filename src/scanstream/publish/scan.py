"""Scans being published: their node tree, PREPARED, and the end.

A scan is published as::

    session = create_session("test_session")
    with session.create_scan("ascan", scan_info) as scan:      # ends DONE / USER_ABORTED / FAILED
        timer = scan.create_container("timer")                # a top master
        diode = timer.create_channel("diode", dtype="float64")
        scan.prepared()
        diode.emit(1.5)                                       # one point, or a batch
    print(scan.wait_saved(10))                                # "saved in FILE::ENTRY", ...

``emit`` never waits on Redis: points are queued and a background send loop (one thread
for every scan of a store on a single server) sends a scan's accumulated points as one entry
per channel, in one MULTI/EXEC, as soon as its previous send is done (and at most every few
milliseconds). Latency stays bounded; batching grows by itself with the rate. Sessions are
in :mod:`.session`, the node tree in :mod:`.nodes`, the data publishers in :mod:`.channels`,
the sender in :mod:`.sender`, the writer presence and saving verdict in :mod:`.saving`.

A scan that disappears from Redis while it runs (a flushed server, one restarted without its
data) stops its publisher with :class:`~scanstream.exceptions.ScanLostError`: no key of a
running scan is written unless the scan hash exists (NOMKSTREAM, or a check in the same
transaction or script), so nothing is left behind without an expiry.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

import redis

from .._protocol import metadata
from .._protocol.entries import (
    PREPARED,
    prepared_hash_fields,
    state_entry_fields,
)
from .._protocol.metadata import check_filename, check_scan_info, iso_time
from .._protocol.scripts import end_scan
from ..exceptions import (
    InvalidArgumentError,
    InvalidTransitionError,
    RedisUnreachableError,
    ScanLostError,
    ScanstreamError,
    ServerResetError,
)
from ..models import SavingVerdict, ScanState
from .announcement import AnnouncementWatch
from .channels import (
    _NodePublisher,
)
from .nodes import ContainerPublisher, _NodeTree
from .saving import read_verdict, writer_of
from .scan_info import complete_scan_info
from .sender import Sender

if TYPE_CHECKING:
    from .session import PublishingSession

logger = logging.getLogger(__name__)

__all__ = ["ContainerPublisher", "ScanPublisher"]


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
        *,
        writer: dict[str, Any] | None = None,
        no_writer: str | None = None,
        announced: bytes | None = None,
    ) -> None:
        self.session = session
        self.store = session.store
        self.number = number
        self.name = name
        self.node_type = node_type
        self.db_name = f"{session.name}:{number}_{name}"
        #: Status of the writer that followed the session when the scan started (None: none
        #: did, or saving is off).
        self.writer = writer
        #: Why the scan will not be saved when no writer followed its session at its start
        #: (the text of the NoWriterWarning, also set when the warning was silenced); else None.
        self.no_writer = no_writer
        self._info = info
        self._state = ScanState.CREATED
        # The ID of the scan's NEW_SCAN entry, checked at prepared(), every CHECK_PERIOD s
        # while points are stored (self._watch), and at end(): a failover of the session's
        # slot may lose it (PublishingSession.ensure_announced).
        self._announced = announced
        self._watch: AnnouncementWatch | None = None
        keys = self.store.keys
        self._key = keys.scan(session.name, number)
        lease_key = keys.scan_lease(session.name, number)
        self._sender = Sender(self.store, lease_key, self.db_name, scan_key=self._key)
        self._tree = _NodeTree(self, self._sender)
        self._sender.nodes = self._tree  # NEW_NODE entries go before the first data
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
        except (ScanstreamError, redis.exceptions.ConnectionError) as end_error:
            # Expected after an outage or a reset (the message says what became of the scan):
            # one line, no traceback; the original exception matters more and propagates.
            if end_error is not exc:
                logger.error("could not end scan %s as %s: %s", self.db_name, state.name, end_error)
        except Exception:  # unexpected: the original exception matters more; this one is logged
            logger.exception("could not end scan %s as %s", self.db_name, state.name)

    # -- tree -------------------------------------------------------------------------
    def create_container(
        self, name: str, info: Mapping[str, Any] | None = None
    ) -> ContainerPublisher:
        """Create a top-master container (channels and sub-masters go under it)."""
        return self._tree.add(None, name, "container", info, ContainerPublisher, self._tree)

    def update_node_info(self, node: _NodePublisher, info: Mapping[str, Any]) -> None:
        """Add ``info`` to the info of ``node``, one of this scan's nodes.

        Same as ``node.update_info(info)``; see :meth:`ContainerPublisher.update_info`.
        """
        if node.scan is not self:
            raise InvalidArgumentError(f"{node!r} is not a node of scan {self.db_name}")
        self._tree.update_info(node.index, info)

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
        update = check_scan_info(info_update, update=True)
        check_filename({**self._info, **update})
        self._info.update(update)
        self._info = complete_scan_info(self._info, self._tree.descriptions)
        hash_fields = prepared_hash_fields(metadata.dumps_checked(self._info))
        entry = state_entry_fields(PREPARED, time.time())
        with self._sender.send_lock:  # no send writes the unwritten NEW_NODE entries meanwhile

            def written() -> None:
                self._state = ScanState.PREPARED

            # On a single server the script checks the NEW_SCAN entry too (2: it is there).
            done = self._tree.prepare(hash_fields, entry, written, self._new_scan_id())
            if not done:
                raise self.lost("it was not marked PREPARED")
        if done != 2:
            self._ensure_announced()
        if self._announced is not None:
            sender = self._sender
            self._watch = AnnouncementWatch(
                self.db_name,
                self._ensure_announced,
                lambda: sum(self._tree.acknowledged().values()),
                lambda: not (sender.stopped or sender.fatal),
            )
            # Its thread starts when the first check is due, from the send loop after
            # a send (the checks are skipped while no point is stored): a scan that ends
            # within a period starts no thread for it.
            watch = self._watch
            sender.call_after(watch.period, lambda: watch.start(at_once=True))

    def _new_scan_id(self) -> bytes | None:
        """The NEW_SCAN entry's ID for the scripts to check, on a single server only (on a
        cluster the session's stream is in another slot: :meth:`_ensure_announced` checks)."""
        return None if self.store.is_cluster else self._announced

    def _ensure_announced(self) -> None:
        """Announce the scan again if its NEW_SCAN entry is gone from the session stream.

        Best effort: a server that refuses the entry (full, read-only) must not keep the scan
        from ending; the scan then stays unlisted, which the warning says.
        """
        if self._announced is None:
            return
        try:
            self._announced = self.session.ensure_announced(self, self._announced)
        except redis.exceptions.ResponseError as exc:  # OOM, READONLY, NOPERM
            logger.warning(
                "scan %s: its NEW_SCAN entry could not be checked or written again (%s): if a "
                "failover lost it, session walks and writers do not see this scan",
                self.db_name,
                exc,
            )

    def flush(self) -> None:
        """Send every queued point now and wait until Redis has them.

        Nodes created before :meth:`prepared` are written with it (or with the first data
        sent); ``flush`` writes them now, for readers that look for them before.

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
        self._sender.send(raise_errors=True, nodes=True)
        # The send loop may have found the scan lost (and dropped the points) while
        # this call waited for the send lock: then there was nothing left to send here.
        if self._sender.fatal and self._sender.error is not None:
            raise self._sender.error

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
        ScanLostError
            The scan, or part of its data, disappeared from Redis while it ran (the server
            was flushed or restarted without its data, or keys were deleted). What is left
            of it is ended FAILED with that error.
        redis.exceptions.OutOfMemoryError
            Ending DONE while Redis is full: the queued points stay queued, call ``end``
            again once memory is freed. Ending in another state drops the points Redis
            refuses (their number goes into the error text) and ends the scan anyway.
        redis.exceptions.ConnectionError
            Redis cannot be reached (after the retries).
        """
        state, update = self._check_end(state, info_update)
        self._sender.stop()
        if self._watch is not None:
            self._watch.stop()
        error = self._send_the_rest(state, error)
        unreachable = self._sender.error if self._sender.fatal else None
        if isinstance(unreachable, RedisUnreachableError):
            # Redis did not answer for the whole budget just now: waiting for it as long
            # again would only delay the error. Nothing is recorded: the lease expires and
            # readers end the scan KILLED, with the points stored before (the error says so).
            self._state = ScanState.FAILED
            raise unreachable
        # Before END: a walk that finds the scan only now gets its events up to END_SCAN. On
        # a single server the end script checks it (outcome "unannounced": nothing written).
        new_scan_id = self._new_scan_id()
        if new_scan_id is None:
            self._ensure_announced()
        lost = self._sender.error if isinstance(self._sender.error, ScanLostError) else None
        if lost is not None:  # part of its data is gone (a stream was deleted): not DONE
            state, error = ScanState.FAILED, f"{error}; {lost}" if error else str(lost)
        now = time.time()
        self._info.update(update)
        self._info.update(end_time=iso_time(now), end_timestamp=now, state=state.name)
        if error is not None:
            self._info["error"] = error
        self._info = complete_scan_info(self._info, self._tree.descriptions)
        session, info = self.session_name, metadata.dumps_checked(self._info)
        outcome, final, detail = "unannounced", "", ""
        while outcome == "unannounced":
            outcome, final, detail = self._end_script(
                state,
                self.store.redis,
                self.store.keys,
                session,
                self.number,
                state.name,
                error or "",
                now,
                retention_time=self.store.settings.retention_time,
                info_json=info,
                # Points Redis acknowledged and lost since (a failover, a restart) end it FAILED.
                acknowledged=self._tree.acknowledged(),
                new_scan_id=new_scan_id,
            )
            if outcome == "unannounced":  # gone (or unreadable): announce again, then end
                self._ensure_announced()
                new_scan_id = None
        if outcome == "lost":  # ended FAILED by the script, the loss in its error
            self._state = ScanState.FAILED
            raise lost or ScanLostError(
                f"scan {self.db_name} ended FAILED: {detail}; check the server at "
                f"{self.store.display_url} (did a master fail over to a replica that lagged?)"
            )
        self._state = self._end_outcome(state, outcome, final)
        if lost is not None:
            raise lost

    def _end_script(self, state: ScanState, *args: Any, **kwargs: Any) -> tuple[str, str, str]:
        """``end_scan(*args, **kwargs)`` ending ``state``, its transport failures restated
        for this scan.

        The store's own errors name only the server: the user of ``end()`` is told which scan
        did not end, and what becomes of it.
        """
        try:
            return end_scan(*args, **kwargs)
        except ServerResetError as exc:  # the store refuses the server for good
            lost = self._sender.error
            if not isinstance(lost, ScanLostError):
                lost = self._sender.reset_error(exc)
                self._sender.lose(lost)
            self._state = ScanState.FAILED
            raise lost from exc
        except RedisUnreachableError as exc:
            error = RedisUnreachableError(
                f"scan {self.db_name} could not be ended {state.name}: {exc}. It stays running "
                "in Redis with the points stored before the outage; readers end it KILLED "
                "once its lease expires"
            )
            raise error from exc

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
        update = check_scan_info(info_update, update=True)
        check_filename({**self._info, **update})
        return state, update

    def _send_the_rest(self, state: ScanState, error: str | None) -> str | None:
        """Send the queued points; return the error text, with what was dropped if anything.

        Ending DONE must keep every point: a refusal propagates and the points stay queued
        (end again once Redis accepts them). Ending FAILED, USER_ABORTED or KILLED must not
        depend on a full Redis taking the rest: what it refuses is dropped and counted.
        """
        if self._sender.fatal:  # already dropped, and said so by the error emit raised
            return error
        try:
            self._sender.send(
                raise_errors=True, nodes=True
            )  # and the nodes of a scan never prepared
        except (RedisUnreachableError, ScanLostError):
            if not self._sender.fatal:
                raise
            return error  # the scan failed meanwhile: end() says how
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
            raise self.lost(f"it could not be ended {state.name}")
        return state

    def lost(self, what: str) -> ScanLostError:
        """The error of a scan gone from Redis while running; the scan counts as FAILED here.

        Its sender stops: emits raise the same error instead of sending points nowhere.
        """
        error = self._sender.lost_error(what)
        self._sender.lose(error)
        self._state = ScanState.FAILED
        return error

    # -- saving -----------------------------------------------------------------------
    @property
    def saving(self) -> SavingVerdict:
        """The saving verdict recorded by the writer that owns the scan (one Redis call).

        WAITING until a writer takes the scan; NOT_SAVED for a scan whose scan_info turns
        saving off (``save=False``) that no writer judged.

        Raises
        ------
        ScanLostError
            The scan is gone from Redis.
        """
        verdict = read_verdict(self.store, self._key, self._info)
        if verdict is None:
            raise ScanLostError(
                f"scan {self.db_name} is gone from Redis: its saving verdict is lost with it"
            )
        return verdict

    def wait_saved(self, timeout: float) -> SavingVerdict:
        """Wait until the saving verdict is final (SAVED, FAILED, NOT_SAVED), at most ``timeout`` s.

        Parameters
        ----------
        timeout : float
            Seconds to wait; 0 reads the verdict once. The verdict is read every 50 ms at
            first, then less often (at most every 0.5 s).

        Returns
        -------
        SavingVerdict
            The final verdict, or the current one (WAITING, WRITING) when ``timeout`` passed.

        Raises
        ------
        ScanLostError
            The scan is gone from Redis.
        redis.exceptions.ConnectionError
            Redis cannot be reached (after the retries).
        """
        deadline = time.monotonic() + max(0.0, timeout)
        pause = 0.05
        while True:
            verdict = self.saving
            remaining = deadline - time.monotonic()
            if verdict.state.is_final or remaining <= 0:
                return verdict
            time.sleep(min(pause, remaining))
            pause = min(pause * 1.5, 0.5)

    def writer_follows(self) -> bool:
        """True when a live writer follows the scan's session now (one Redis call)."""
        return writer_of(self.store, self.session_name) is not None

    def kept_until(self) -> float | None:
        """Epoch time at which Redis drops the scan (its retention), or None if no expiry is set.

        None while the scan runs (it expires only after its end) or with ``retention_time = 0``.
        """
        ms = int(self.store.redis.pttl(self._key))
        return time.time() + ms / 1000 if ms >= 0 else None
