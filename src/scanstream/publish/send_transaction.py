"""The transaction of one send of a scan, and the check of its replies.

A :class:`~scanstream.publish.sender.Sender` decides when to send and what to do when a send
fails; this module does one send: the NEW_NODE entries of nodes made before ``prepared()``
and one data entry per queue with points, all in one MULTI/EXEC (packed by
:mod:`scanstream._transport.transaction`, redis-py's pipeline on a cluster; decision 0009),
then the replies read. What is to be sent is described by two protocols, :class:`DataQueue`
(a data node's queue of points) and :class:`NodeEntries` (the unwritten NEW_NODE entries).

A data entry's ID is the index of its first point, so a transaction replayed after its reply
was lost is recognised: a duplicate ID holding the same entry counts as sent, one holding
another entry is another process's and is named in the error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, cast

import redis

from .._protocol.entries import LOST_FIELD, DataEntry, data_entry_id
from .._transport.connection import stream_entries
from .._transport.errors import is_duplicate_id
from .._transport.transaction import CommandHeads, new_transaction
from ..exceptions import DecodingError, ScanLostError

if TYPE_CHECKING:
    from .._transport.connection import DataStore

logger = logging.getLogger(__name__)

__all__ = ["DataQueue", "NodeEntries", "SendTransaction"]


class DataQueue(Protocol):
    """What the sender needs of a data node: its stream key and its queue of points.

    ``emitted`` counts the points accepted so far, ``sent`` those Redis acknowledged; the
    sender advances ``sent`` after each successful send. The data entry of the points from
    ``sent`` on gets the ID ``data_entry_id(sent)``.

    A queue calls :meth:`Sender.ready <scanstream.publish.sender.Sender.ready>` when it gets
    points (or batches back) while it was empty, that is: at least once between its last
    :meth:`take` and its next one. The sender takes only from the queues that did.
    """

    sent: int

    @property
    def key(self) -> str:
        """The node's data stream."""

    @property
    def emitted(self) -> int:
        """Points accepted so far."""

    def take(self) -> list[Any]:
        """Remove and return the queued batches (in order)."""

    def give_back(self, batches: list[Any]) -> None:
        """Put batches taken by :meth:`take` back in front of the queue (a send failed)."""

    def drop(self) -> int:
        """Forget the queued points (the scan failed); return how many there were."""

    def encode(self, batches: list[Any]) -> list[tuple[Mapping[bytes, Any], int]]:
        """Encode taken batches as ``(fields, npoints)`` entries, in order."""


class NodeEntries(Protocol):
    """The NEW_NODE entries a sender writes at the head of its next transaction.

    ``pending`` is True while there are some (read without a lock on every send).
    """

    pending: bool

    def take_unwritten(self) -> list[tuple[str, dict[bytes, bytes]]]:
        """Remove and return the entries, as ``(events key, fields)``."""

    def give_back_unwritten(self, entries: list[tuple[str, dict[bytes, bytes]]]) -> None:
        """Entries taken for a transaction that was not applied: written by a later one."""


class SendTransaction:
    """One send: :meth:`execute` writes the entries, :meth:`check` reads the replies.

    Parameters
    ----------
    store : DataStore
        The connection.
    heads : CommandHeads
        The RESP heads of the scan's XADDs, built once per scan.
    name : str
        What the errors and log messages name (the scan's db_name).
    scan_key : str or None
        The scan's hash: a transaction that creates a data stream checks that it still
        exists (and is not only a reader's record of a lost scan).
    lost_error : callable
        Makes the error of a scan gone from Redis from what could not be done.
    announced : list of (str, dict)
        NEW_NODE entries written ahead of the data, as ``(events key, fields)``.
    taken : list of (DataQueue, list)
        The batches taken from each queue.

    Attributes
    ----------
    sent : list of (DataQueue, int)
        Each queue's ``sent`` count once the transaction is applied and checked.
    entries : int
        Data entries written.
    """

    def __init__(
        self,
        store: DataStore,
        heads: CommandHeads,
        name: str,
        scan_key: str | None,
        lost_error: Callable[[str], ScanLostError],
        announced: list[tuple[str, dict[bytes, bytes]]],
        taken: list[tuple[DataQueue, list[Any]]],
    ) -> None:
        self._store = store
        self._heads = heads
        self._name = name
        self._scan_key = scan_key
        self._lost_error = lost_error
        self._announced = announced
        self._taken = taken
        self.sent: list[tuple[DataQueue, int]] = []
        self._written: list[tuple[str, str, int]] = []
        self._created: list[str] = []
        self._results: list[Any] = []

    @property
    def entries(self) -> int:
        return len(self._written)

    def execute(self) -> None:
        """Write the entries in one MULTI/EXEC.

        Raises before the transaction is applied (an encoding error), or when its reply did
        not come (a network error: it may have been applied, and a resend of exactly these
        entries is recognised).
        """
        transaction = new_transaction(self._store.redis, self._heads)
        for events_key, node_fields in self._announced:
            # NOMKSTREAM: a server that lost the scan gets no event stream without expiry.
            transaction.xadd(events_key, node_fields, "*", nomkstream=True)
        for queue, batches in self._taken:
            first = queue.sent
            for fields, npoints in queue.encode(batches):
                # The entry ID is the index of the entry's first point: any range is
                # addressable with XRANGE/XREVRANGE, and a duplicate or a write after the
                # seal is refused by Redis (IDs must grow).
                entry_id = data_entry_id(first)
                # Only a stream's first entry may create it (NOMKSTREAM otherwise): a
                # server that lost the scan gets no stream without expiry.
                if first == 0 and self._scan_key is not None:
                    self._created.append(queue.key)
                transaction.xadd(queue.key, fields, entry_id, nomkstream=first != 0)
                self._written.append((queue.key, entry_id, npoints))
                first += npoints
            self.sent.append((queue, first))
        if self._created:  # rare (once per data node): is the scan still there?
            scan_key = cast(str, self._scan_key)
            transaction.exists(scan_key)
            transaction.hexists(scan_key, LOST_FIELD)  # or only its record
        self._results = transaction.execute()

    def check(self) -> None:
        """Read the replies of the applied transaction: raise when an entry was not stored.

        :class:`ScanLostError` when the scan is gone from Redis (the streams this transaction
        created are deleted again: they would have no expiry); a ``ResponseError`` naming
        another process's entry in the way; the error Redis replied with otherwise.
        """
        results = self._results
        if self._created:
            recorded_lost, scan_exists = results.pop(), results.pop()
            if scan_exists == 0 or recorded_lost:
                self._unmake(self._created)
                raise self._lost_error("its data could not be stored")
        announced = len(self._announced)
        for reply in results[:announced]:
            if reply is None:  # NOMKSTREAM on a missing event stream: the scan is gone
                raise self._lost_error("its nodes could not be announced")
            if isinstance(reply, Exception):
                raise reply
        for (key, entry_id, npoints), result in zip(self._written, results[announced:]):
            if result is None:  # NOMKSTREAM on a missing stream: the scan's keys are gone
                raise self._lost_error(f"its data could not be stored ({key} is gone)")
            if not isinstance(result, Exception):
                continue
            if not is_duplicate_id(result):
                raise result
            # A transaction resent after its reply was lost (the connection's retry policy):
            # it was applied.
            if not self._holds(key, entry_id, npoints):
                raise redis.exceptions.ResponseError(
                    f"scan {self._name}: {key} holds an entry this publisher did not write "
                    f"({self._foreign_entry(key, entry_id)}): another process wrote into "
                    "this scan's stream (a second publisher, or a manual write)"
                )
            logger.info(
                "scan %s: entry %s of %s was already stored (replay)", self._name, entry_id, key
            )

    def _unmake(self, keys: list[str]) -> None:
        """Delete the data streams just created for a scan that is gone (they have no expiry)."""
        try:
            self._store.redis.delete(*keys)
        except redis.exceptions.RedisError as exc:
            logger.error("scan %s: could not delete %s: %s", self._name, keys, exc)

    def _foreign_entry(self, key: str, entry_id: str) -> str:
        """Names the entry in the way of ``entry_id``: the one there, else the stream's last."""
        there = stream_entries(self._store.redis.xrange(key, min=entry_id, max=entry_id))
        if there:
            return f"entry {there[0][0].decode()}, the ID of its next entry"
        last = stream_entries(self._store.redis.xrevrange(key, count=1))
        if last:
            return f"entry {last[0][0].decode()}, ahead of its next entry {entry_id}"
        return f"an entry ahead of its next entry {entry_id}"

    def _holds(self, key: str, entry_id: str, npoints: int) -> bool:
        """True when the stream has, at ``entry_id``, a data entry of ``npoints`` points."""
        there = stream_entries(self._store.redis.xrange(key, min=entry_id, max=entry_id))
        if not there:
            return False
        try:
            entry = DataEntry.from_raw(*there[0])
        except DecodingError:
            return False
        return entry.sealed_length is None and entry.npoints == npoints
