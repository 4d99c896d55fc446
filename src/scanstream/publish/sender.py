"""The background sender of a scan: batching, the lease, and what to do when Redis fails.

``emit`` only queues. One sender per scan sends what has accumulated on every data node as one
entry per node, all in one MULTI/EXEC, as soon as the previous send is done, unless entries
would come faster than readers can take them: after a send of ``E`` entries the next one waits
until ``E / _ENTRY_RATE`` seconds have passed (at most ``_MAX_SEND_INTERVAL``). A point
emitted after a pause goes out at once; a fast scan gets bigger entries instead of more of
them (readers pay per entry, not per point). See docs/performance.md.

The sender sees the data nodes only through
:class:`~scanstream.publish.send_transaction.DataQueue`: it takes their queued batches,
has them encoded, gives them back when a send fails and drops them when the scan fails. It
knows nothing of scans or node trees. A queue that gets points while it had none says so
(:meth:`Sender.ready`): a send touches only those queues, so its cost follows the channels
with data, not the channels of the scan.

The background work (sends as points come, lease renewals, retries) is done by a
:class:`~scanstream.publish.send_loop.SendLoop` thread, shared by every scan of the store on
a single server; ``flush`` and ``end`` send from the caller's thread.

What one send writes, and how its replies are read, is :mod:`.send_transaction`.

Faults (docs/performance.md, "Connection faults"): network errors are retried by redis-py's
``Retry`` of the connection pool; a send that still fails keeps its points queued and is tried
again, until Redis has been unreachable for ``Settings.max_unreachable_time``, when the scan
fails. The entries of a transaction whose reply was lost are resent alone, as they were: a
duplicate ID holding the same entry counts as sent (:mod:`.send_transaction`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import redis
from redis.backoff import AbstractBackoff, ExponentialBackoff

from .._transport.errors import is_out_of_memory, restate
from .._transport.transaction import CommandHeads
from ..exceptions import (
    RedisFullError,
    RedisUnreachableError,
    ScanLostError,
    ServerResetError,
)
from .send_loop import SendLoop
from .send_transaction import DataQueue, NodeEntries, SendTransaction

if TYPE_CHECKING:
    from .._transport.connection import DataStore

logger = logging.getLogger(__name__)

__all__ = ["Sender"]

# Entries per second the background sender makes at most. Readers pay per entry (reply
# parsing, a few microseconds each): at 100 channels x 1 kHz, sending every millisecond
# would make 100 k entries/s, more than a subscriber can parse; 25 k is one send every 4 ms
# there. With 11 channels that is one send every 0.44 ms: each point of a 1 kHz scan goes
# out at once. The pause after a send is in proportion to its entries, so coalescing starts
# only when the entry rate would exceed this.
_ENTRY_RATE = 25_000.0
# Longest pause between two background sends: bounds the latency coalescing adds. (A
# longer pause whenever the last send carried several points per entry was tried: no
# measurable gain in bulk throughput, and a 1 kHz scan delayed once stayed coalesced.)
_MAX_SEND_INTERVAL = 0.004
# Seconds after a scan of a send loop found the server gone during which another scan of the
# loop, due to talk to it, joins that outage instead of riding it out anew (about a round of
# the loop: the scans after the failed one are served at once).
_OUTAGE_FRESH = 1.0
# Pauses between attempts while a send fails (redis-py's Retry has already backed off within
# each attempt): 40 ms doubling up to 0.2 s. Stateless, so one instance serves every sender.
_FAILED_SEND_BACKOFF = ExponentialBackoff(cap=0.2, base=0.02)
_MAX_COUNTED_FAILURES = 64

_TRANSIENT = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)

# Renew the lease only while the scan exists: a plain SET would create a lease without its
# scan on a server that lost it. A hash with a 'lost' field (entries.LOST_FIELD) is the record
# a reader made of the scan once gone (subscribe/lost.py), not the scan. SET replaces garbage
# over the lease key whatever its type; what was there is returned, to be logged (readers
# count garbage as an expired lease: entries.lease_status).
# KEYS: scan hash, lease. ARGV: lease time (ms).
# Returns 0 (no scan), 1 (renewed) or the text of the garbage replaced.
_RENEW_IF_PRESENT = """
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HEXISTS', KEYS[1], 'lost') == 1 then
  return 0
end
local kind = redis.call('TYPE', KEYS[2])['ok']
local ttl = redis.call('PTTL', KEYS[2])
local old = false
if kind == 'string' then old = redis.call('GET', KEYS[2]) end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])
if kind == 'none' or (old == '1' and ttl >= 0) then return 1 end
if kind ~= 'string' then return 'it was a ' .. kind end
if old ~= '1' then return 'its value was ' .. string.sub(old, 1, 40) end
return 'it had no expiry'
"""


def _as_text(raw: bytes | str) -> str:
    return raw.decode(errors="replace") if isinstance(raw, bytes) else raw


class Sender:
    """Sends the queued points of a scan's data nodes; renews the scan's lease meanwhile.

    Parameters
    ----------
    store : DataStore
        The connection (and its settings: lease time, max_unreachable_time).
    lease_key : str
        The key renewed every third of ``lease_time`` while the sender runs.
    name : str
        What the errors and log messages name (the scan's db_name).
    backoff : redis.backoff.AbstractBackoff, optional
        Pauses of the background work between failed sends (``compute(failures)``); they
        do not delay :meth:`stop`. Default: 40 ms doubling up to 0.2 s.
    scan_key : str, optional
        The scan's hash. When given, the lease is renewed only while it exists, and a send
        that creates a data stream checks it in the same transaction: on a server that lost
        the scan (flushed, restarted empty) the sender stops with :class:`ScanLostError`
        instead of creating keys that would never expire.

    Attributes
    ----------
    wake : threading.Event
        The event of the loop that serves this sender (:class:`SendLoop`), set when a queue
        gets points while the sender had none: the loop sends them.
    error : BaseException or None
        Why points cannot be accepted now (Redis full, or unreachable for too long); None
        once a send succeeds again (except after a fatal error).
    refusing : bool
        True when emits must be refused: the sender was stopped, or ``error`` is set. One
        attribute, so that the emit path tests one thing.
    fatal : bool
        Redis was unreachable for longer than ``max_unreachable_time``: the queues were
        dropped and nothing more is sent.
    """

    def __init__(
        self,
        store: DataStore,
        lease_key: str,
        name: str,
        backoff: AbstractBackoff | None = None,
        *,
        scan_key: str | None = None,
    ) -> None:
        self.store = store
        self.lease_key = lease_key
        self.scan_key = scan_key
        self.name = name
        self._loop = SendLoop.for_store(store, name)
        self.wake = self._loop.wake
        self.error: BaseException | None = None
        self.refusing = False
        self.stopped = False
        self.fatal = False
        self._queues: list[DataQueue] = []
        # Queues that got points since the sender last took from them. A deque: its append
        # and popleft are atomic, so the emitting threads need no lock of the sender's.
        self._ready: deque[DataQueue] = deque()
        # True from the first ready() after a send took the ready queues until the next
        # one: the loop is woken once per send at most, not once per queue or point.
        self._notified = False
        # One send at a time (the send loop, flush, end); held by prepared() too.
        self.send_lock = threading.Lock()
        #: NEW_NODE entries written before the data of a send (the scan's node tree), if any.
        self.nodes: NodeEntries | None = None
        # Held by the loop while it serves this sender; stop() waits for it.
        self._serving = threading.RLock()
        # The loop's service of this sender (see serve), touched by the loop's thread only.
        self._next_renewal = 0.0
        self._last_send = 0.0
        self._failures = 0
        self._retry_at = 0.0
        self._sent_at = -math.inf  # when the last successful send started (any thread's)
        self._backoff = backoff or _FAILED_SEND_BACKOFF
        self._unreachable_since: float | None = None
        # The batches of a transaction that failed on a network error: it may have been
        # applied (its reply lost), so the next send resends exactly these entries, alone,
        # before any new point (a resend with more points under the same first ID would be
        # taken for another process's entry). None when the last send was answered.
        self._unconfirmed: list[tuple[DataQueue, list[Any]]] | None = None
        self._last_entries = 0  # entries of the last send: the pause after it
        self._renew_if_present = store.redis.register_script(_RENEW_IF_PRESENT)
        self._lease_garbage_logged = False
        self._heads = CommandHeads()  # the RESP heads of this scan's XADDs, built once
        self._later: tuple[float, Callable[[], None]] | None = None  # see call_after

    def __repr__(self) -> str:
        return f"<Sender {self.name!r}{' stopped' if self.stopped else ''}>"

    def add(self, queue: DataQueue) -> None:
        """Send the points of ``queue`` too (a new data node)."""
        self._queues.append(queue)

    def ready(self, queue: DataQueue) -> None:
        """``queue`` (added before) has points to send: the next send takes them."""
        self._ready.append(queue)
        if not self._notified:  # reset by a send before it takes the queues
            self._notified = True
            self.wake.set()

    @property
    def queued(self) -> int:
        """Points accepted and not yet acknowledged by Redis, over all queues."""
        return sum(q.emitted - q.sent for q in self._queues)

    def drop(self) -> int:
        """Forget every queued point; return how many there were."""
        self._unconfirmed = None  # counted by the queues (emitted - sent)
        return sum(q.drop() for q in self._queues)

    def call_after(self, delay: float, action: Callable[[], None]) -> None:
        """Have the send loop call ``action`` once, after its first successful send
        at least ``delay`` seconds from now (never if the sender stops before).

        For work that matters only once the scan has run a while and stored points: a scan
        that ends sooner never pays for it (the announcement watch's thread). A send of
        ``flush`` counts too: it wakes the loop, which calls ``action``.
        """
        self._later = (time.monotonic() + delay, action)

    # -- background work ----------------------------------------------------------------
    def start(self) -> None:
        """Have the loop send the points as they come and renew the lease."""
        self._next_renewal = time.monotonic() + self.store.settings.lease_time / 3
        self._loop.add(self)

    def stop(self) -> None:
        """Refuse further points and end the background work (a send under way ends first).

        What is still queued stays queued: :meth:`send` sends it.
        """
        self.stopped = self.refusing = True
        self._loop.remove(self)
        with self._serving:  # the loop's service of this sender, if one is under way
            pass

    def _joins_outage(self) -> bool:
        """Count an outage another scan of the loop has just met as this scan's, from its start.

        The loop sends for one scan at a time, and a send rides out the outage budget: the
        16th scan would otherwise only start riding it out when the 15 before it had failed.
        Every scan of a single server shares its fate, so a scan due to talk to the server
        within a round of another's failure (``_OUTAGE_FRESH``) is unreachable since that
        outage began too; once that is longer than ``max_unreachable_time`` it fails at
        once, as the others did (True). An older record is forgotten: the scan tries itself.
        """
        outage = self._loop.outage
        if outage is None or self._unreachable_since is not None:
            return False
        since, failed_at, error = outage
        if time.monotonic() - failed_at > _OUTAGE_FRESH:
            self._loop.outage = None
            return False
        return self._unreachable(error, since, met=False) is not None

    def _answered(self) -> None:
        """The server answered this scan (a send or a lease renewal): no outage any more."""
        if self._unreachable_since is not None:
            self._back(time.monotonic() - self._unreachable_since)
        else:
            self._loop.outage = None

    def _pause_end(self) -> float:
        """When the pause after the last send ends: the points emitted until then go together,
        so that entries come no faster than ``_ENTRY_RATE``."""
        return self._last_send + min(_MAX_SEND_INTERVAL, self._last_entries / _ENTRY_RATE)

    def serve(self) -> float:
        """The loop's turn: send what is queued unless within the pause after the last send,
        renew the lease when due, and return when the next turn is due (``time.monotonic()``).
        """
        with self._serving:
            if self.stopped or self.fatal:
                return math.inf
            now = time.monotonic()
            if now < self._retry_at:  # after a failure: its backoff
                return self._retry_at
            ok = True
            again: float | None = None  # when the queued points want a turn, if they wait
            if self._ready or self._unconfirmed is not None:
                pause_end = self._pause_end()
                if now < pause_end:
                    again = pause_end
                elif not self.send_lock.acquire(blocking=False):
                    # Another thread sends for this scan (flush, end, back pressure,
                    # prepared): the other scans of the loop are not held up by it, and this
                    # one comes back soon (its lease is still renewed below).
                    again = now + _MAX_SEND_INTERVAL
                else:
                    try:
                        if self._joins_outage():
                            return math.inf
                        self._last_send = now
                        ok = self._send_holding_lock(raise_errors=False)
                    finally:
                        self.send_lock.release()
            later = self._later
            if later is not None and ok and self._sent_at >= later[0]:  # any thread's send
                self._later = None
                later[1]()
            if ok and time.monotonic() >= self._next_renewal:
                if self._joins_outage():
                    return math.inf
                settings = self.store.settings
                ok = self._renew_lease(int(settings.lease_time * 1000))
                if ok:
                    self._answered()
                    self._next_renewal = time.monotonic() + settings.lease_time / 3
            if ok:
                self._failures = 0
                if again is None:
                    # Reset before the queues are looked at, as ready() appends before it
                    # looks at the flag: a queue that told the sender during a send that took
                    # its points left the flag set with nothing queued, and its next point
                    # would have woken nobody.
                    self._notified = False
                    if self._ready or self._unconfirmed is not None:  # queued meanwhile
                        again = self._pause_end()
                return self._next_renewal if again is None else min(again, self._next_renewal)
            # Points are still queued (or the lease is due): try again after a pause.
            # Bounded: the pause reaches the backoff's cap long before, and 2**failures would
            # overflow a float after about 1000 failures (a server full for minutes).
            self._failures = min(self._failures + 1, _MAX_COUNTED_FAILURES)
            self._retry_at = time.monotonic() + self._backoff.compute(self._failures)
            return self._retry_at

    def _renew_lease(self, lease_ms: int) -> bool:
        started = time.monotonic()
        try:
            if self.scan_key is None:
                self.store.redis.set(self.lease_key, b"1", px=lease_ms)
            else:
                reply = self._renew_if_present(
                    keys=[self.scan_key, self.lease_key], args=[lease_ms]
                )
                if reply == 0:
                    self.lose(self.lost_error("its lease could not be renewed"))
                    return False
                if reply != 1 and not self._lease_garbage_logged:
                    self._lease_garbage_logged = True  # once: a loop rewriting it would flood
                    logger.error(
                        "scan %s: its lease key %s was not a lease (%s): replaced by the "
                        "lease; readers count such garbage as an expired lease",
                        self.name,
                        self.lease_key,
                        _as_text(reply),
                    )
        except _TRANSIENT as exc:
            self._unreachable(exc, started)
            return False
        except ServerResetError as exc:
            self.lose(self.reset_error(exc))
            return False
        except Exception as exc:  # reported to the emitting thread
            self._refused(exc)
            return False
        return True

    # -- sending ------------------------------------------------------------------------
    def send_from_emit(self) -> None:
        """Too many points queued: send now from the emitting thread (back pressure).

        Raises the sender's error when the send fails for a reason that refuses emits.
        """
        if not self.send(raise_errors=False) and self.error is not None:
            raise self.error

    def send(self, *, raise_errors: bool, nodes: bool = False) -> bool:
        """Send all queued points. True if done; False (or raise) if Redis refused or failed.

        The unwritten NEW_NODE entries (:attr:`nodes`) go ahead of the points, and with
        ``nodes`` even when no point is queued (the end of a scan never prepared).

        A network error (after redis-py's retries) keeps the points queued; once Redis has
        been unreachable for ``max_unreachable_time`` the scan fails. A refusal by Redis (it
        is full) keeps them queued too, and makes every emit raise until a send succeeds.
        """
        with self.send_lock:
            return self._send_holding_lock(raise_errors=raise_errors, nodes=nodes)

    def _send_holding_lock(self, *, raise_errors: bool, nodes: bool = False) -> bool:
        """:meth:`send`, the send lock held by the caller."""
        started = time.monotonic()
        try:
            self._send_pending(nodes)
        except _TRANSIENT as exc:
            fatal = self._unreachable(exc, started)
            if raise_errors:
                raise (fatal or exc) from None
            return False
        except ServerResetError as exc:
            lost = self.reset_error(exc)
            self.lose(lost)
            if raise_errors:
                raise lost from exc
            return False
        except ScanLostError as exc:
            self.lose(exc)
            if raise_errors:
                raise
            return False
        except Exception as exc:  # reported to the emitting thread
            error = self._refused(exc)
            if raise_errors:
                raise error from None
            return False
        if self._unreachable_since is not None or self._last_entries:  # the server answered
            self._answered()
        if not self.fatal and self.error is not None:
            self.error = None
            self.refusing = self.stopped
        self._sent_at = started
        later = self._later
        if later is not None and started >= later[0] and not self.stopped:
            self.wake.set()  # the loop calls it (this may be an emitting thread)
        return True

    def _send_pending(self, with_nodes: bool = False) -> None:
        """Send all queued batches in one transaction (caller holds the send lock)."""
        # Only the queues that said they got points. A queue taken and filled again during
        # this loop is listed twice: its later batches follow its earlier ones in the same
        # entries. A bounded loop, however fast the emits.
        ready = self._ready
        self._notified = False  # before the queues are taken: a later ready() wakes the loop
        by_queue: dict[DataQueue, list[Any]] = {}
        unconfirmed, self._unconfirmed = self._unconfirmed, None
        if unconfirmed is not None:  # the same entries again, alone (see __init__)
            by_queue.update(unconfirmed)
        else:
            for _ in range(len(ready)):
                queue = ready.popleft()
                batches = queue.take()
                if batches:
                    by_queue.setdefault(queue, []).extend(batches)
        nodes = self.nodes
        # NEW_NODE entries of nodes made before prepared() (rare: data or end() came first):
        # ahead of the data, in the same transaction.
        announced = (
            nodes.take_unwritten()
            if nodes is not None and nodes.pending and (by_queue or with_nodes)
            else []
        )
        if not by_queue and not announced:
            self._last_entries = 0
            return
        taken = list(by_queue.items())
        send = SendTransaction(
            self.store, self._heads, self.name, self.scan_key, self.lost_error, announced, taken
        )
        try:
            send.execute()
        except BaseException as exc:
            if isinstance(exc, _TRANSIENT):
                self._unconfirmed = taken  # perhaps applied: resent as they are
            else:
                for queue, batches in taken:
                    queue.give_back(batches)
            if nodes is not None:  # not applied: written by a later transaction
                nodes.give_back_unwritten(announced)
            raise
        try:
            send.check()
        except BaseException:
            for queue, batches in taken:  # resent: a replay of a stored entry counts as sent
                queue.give_back(batches)
            raise
        for queue, total in send.sent:
            queue.sent = total
        self._last_entries = send.entries
        if unconfirmed is not None:  # resent and answered: now the points queued since
            self._send_pending(with_nodes)

    def lost_error(self, what: str) -> ScanLostError:
        """The error of a scan gone from Redis while it runs, saying what could not be done."""
        return ScanLostError(
            f"scan {self.name} is gone from Redis while it was running, so {what}: the server "
            f"at {self.store.display_url} was flushed, restarted without its data or restored from an "
            "older snapshot, or the scan was deleted; the points it had stored are lost"
        )

    # -- faults -------------------------------------------------------------------------
    def _unreachable(
        self, exc: BaseException, started: float, *, met: bool = True
    ) -> BaseException | None:
        """Record a network failure of an attempt made at ``started``; fail the scan once Redis
        has been unreachable for longer than max_unreachable_time (return the error).

        The outage goes on the loop for the other scans (``SendLoop.outage``) when this
        scan ``met`` it, not when it only joins another's (:meth:`_joins_outage`).

        The outage is timed from the start of its first failed attempt: redis-py's Retry has
        already spent up to the budget inside that attempt, so timing it from the failure
        would let a publisher ride out twice the budget. One warning per outage, none when
        the first failure already ends the scan (the error says it all).
        """
        now = time.monotonic()
        first = self._unreachable_since is None
        if first:
            self._unreachable_since = started
        since = cast(float, self._unreachable_since)
        if met:
            self._loop.outage = (since, now, exc)
        limit = self.store.settings.max_unreachable_time
        cause = exc.__cause__ if isinstance(exc, RedisUnreachableError) and exc.__cause__ else exc
        if now - since <= limit:
            if first:
                logger.warning(
                    "scan %s: Redis at %s does not answer (%s); its %d queued points are kept "
                    "and sent when it answers again; the scan fails if it stays unreachable "
                    "for more than %g s (SCANSTREAM_MAX_UNREACHABLE_TIME)",
                    self.name,
                    self.store.display_url,
                    cause,
                    self.queued,
                    limit,
                )
            return None
        dropped = self.drop()
        error = RedisUnreachableError(
            f"scan {self.name} failed: Redis at {self.store.display_url} unreachable for "
            f"{now - since:.1f} s, longer than max_unreachable_time = {limit:g} s "
            f"(SCANSTREAM_MAX_UNREACHABLE_TIME); {dropped} queued points were dropped, the "
            f"points stored before are kept (readers end the scan KILLED when its lease "
            f"expires). Last error: {cause}"
        )
        error.__cause__ = exc
        logger.error("%s", error)
        self.fatal = True
        self._set_error(error)
        self.drop()  # points an emit queued before it saw the refusal
        return error

    def _back(self, outage: float) -> None:
        """A send succeeded after a network outage: say so, once."""
        self._unreachable_since = None
        self._loop.outage = None  # the server answers: the other scans need not wait for it
        if not self.fatal:
            logger.warning(
                "scan %s: Redis at %s answers again after %.1f s; no queued point was "
                "dropped (%d still queued)",
                self.name,
                self.store.display_url,
                outage,
                self.queued,
            )

    def reset_error(self, exc: ServerResetError) -> ScanLostError:
        """The error of a scan whose server lost or rolled back its data (``exc``)."""
        error = ScanLostError(
            f"scan {self.name} is lost: the server at {self.store.display_url} lost or rolled "
            "back its data while the scan ran (restarted without persistence, restored from "
            "an older snapshot, or flushed), and what the scan had stored there with it. "
            "Publish the next scans through a new DataStore (or restart this program): this "
            "one refuses the reset server"
        )
        error.__cause__ = exc
        return error

    def lose(self, error: ScanLostError) -> None:
        """The scan is gone from Redis: drop the queued points, refuse emits with ``error``."""
        if self.fatal:
            return
        dropped = self.drop()
        if dropped:
            error.args = (f"{error}; {dropped} queued points were dropped",)
        logger.error("%s", error)
        self.fatal = True
        self._set_error(error)
        self.drop()  # points an emit queued before it saw the refusal

    def _refused(self, exc: BaseException) -> BaseException:
        """Redis refused the data: keep it queued, make emit raise a clear error until a send works."""
        queued = self.queued
        error: BaseException
        if isinstance(exc, redis.exceptions.RedisError):
            self._loop.outage = None  # the server answered: the other scans need not wait
        if is_out_of_memory(exc):
            error = RedisFullError(
                f"scan {self.name}: Redis is full (maxmemory reached, no eviction) and refuses "
                f"its data; {queued} points are queued, none was dropped. Earlier scans are intact. "
                f"Free memory (delete saved scans, shorten SCANSTREAM_RETENTION_TIME) or raise "
                f"maxmemory; ending the scan FAILED or USER_ABORTED drops the queued points. "
                f"Redis said: {exc}"
            )
            error.__cause__ = exc
        elif isinstance(exc, redis.exceptions.RedisError):
            error = restate(
                exc, f"scan {self.name}: Redis refused its data ({queued} points queued): {exc}"
            )
        else:
            error = exc
        if self.error is None:
            logger.error("%s", error)
        self._set_error(error)
        return error

    def _set_error(self, error: BaseException) -> None:
        self.error = error
        self.refusing = True
