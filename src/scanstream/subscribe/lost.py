"""Scans gone from Redis before they could have expired: recorded FAILED, never skipped silently.

A scan's keys expire only after its end, ``retention`` seconds later (the publisher states its
retention time in the NEW_SCAN entry, :func:`~scanstream._protocol.entries.new_scan_fields`).
A session walk that finds the keys of an announced scan gone used to take the scan as expired
and skip it. On Redis Cluster they can be gone for another reason: the master serving the
scan's slot restarted without its data and without a replica to take over (the server
identity check, one key on one master, does not see it). Such a scan must not vanish without a
word: its points are lost, and no writer saved it.

So a scan whose keys are gone is **lost** when none of the usual reasons apply:

- a writer saved it (its number is in the saved set): its data is in a file, nothing is lost;
- it may have expired: its NEW_SCAN entry is older than the retention time it states, or
  states none (older publishers);
- it was deleted (``scanstream delete`` takes the NEW_SCAN entry of a scan it deletes unsaved
  out of the session stream, so it is not found here).

A lost scan is then recorded as ended FAILED, with an error saying what happened: a scan hash
(its ``lost`` field holds the error, its saving verdict is FAILED) and an END entry are written
again in its slot (``create_scan.lua``, then ``end_scan.lua``), expiring when the scan would
have. Every reader then reports it as a failed scan: walks yield its END_SCAN with the error,
``ls`` lists it FAILED and not saved, a writer records it FAILED without writing a file entry.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

from .._protocol import entries, metadata
from .._protocol.entries import CREATED, scan_hash_fields, state_entry_fields
from .._protocol.metadata import iso_time
from .._protocol.scripts import create_scan, end_scan
from .._transport.connection import DataStore, stream_entries
from ..exceptions import DecodingError
from ..models import SavingState, SavingVerdict, ScanState

logger = logging.getLogger(__name__)

__all__ = ["record_corrupt", "record_if_lost", "record_if_lost_by_number"]

# NEW_SCAN entries read back from the end of the session stream to find a scan's (a writer
# whose scan vanished while it wrote it: the entry is among the latest).
_SEARCHED_ENTRIES = 1000


def _entry_time(entry_id: bytes) -> float:
    """Epoch time of a stream entry ID (its milliseconds part, the server's clock)."""
    return int(entry_id.split(b"-", 1)[0]) / 1000


def record_if_lost(
    store: DataStore, session: str, number: int, entry_id: bytes, fields: entries.Fields
) -> str | None:
    """Record scan ``number``, whose keys are gone, as FAILED if it was lost (see above).

    Parameters
    ----------
    store : DataStore
        The connection.
    session, number : str, int
        The scan.
    entry_id, fields : bytes, dict
        Its NEW_SCAN entry in the session stream.

    Returns
    -------
    str or None
        The error recorded (also logged), or None when the scan may have expired, was saved,
        or its keys are back (announced again, or recorded by another reader meanwhile).
        Best effort: a server that refuses the writes (read-only user, full) gets the error
        logged only.
    """
    retention = entries.new_scan_retention(fields)
    created = _entry_time(entry_id)
    now = time.time()
    if retention is None or (retention > 0 and now >= created + retention):
        return None  # may have expired
    keys = store.keys
    client = store.redis
    if client.sismember(keys.writer_saved(session), str(number)):
        return None
    name = fields.get(b"name", b"").decode(errors="replace") or "scan"
    node_type = fields.get(b"node_type", b"scan").decode(errors="replace")
    db_name = f"{session}:{number}_{name}"
    kept = "until deleted" if retention == 0 else f"until {iso_time(created + retention)}"
    error = (
        f"scan {db_name} is gone from Redis although it was to be kept {kept} and no writer "
        f"saved it: the server at {store.display_url} lost its data (on a cluster: the master "
        "of its slot restarted without persistence and without a replica to take over), or "
        "its keys were deleted outside scanstream; its points are lost"
    )
    info = {"name": name, "error": error}
    hash_fields = scan_hash_fields(session, number, name, node_type, metadata.dumps(info), created)
    hash_fields[entries.LOST_FIELD] = error
    # Not saved, and never to be: the verdict too, for a listing made before any writer looks.
    hash_fields.update(
        entries.saving_fields(SavingVerdict(SavingState.FAILED, reason=error, time=now))
    )
    try:
        if not create_scan(
            client,
            keys,
            session,
            number,
            hash_fields,
            state_entry_fields(CREATED, created),
            10_000,  # the lease (ms), dropped by END just after
        ):
            return None  # its keys are back: nothing was lost, or another reader recorded it
        remaining = 0.0 if retention == 0 else max(1.0, created + retention - now)
        end_scan(
            client,
            keys,
            session,
            number,
            ScanState.FAILED.name,
            error,
            now,
            retention_time=remaining,
        )
    except redis.exceptions.ResponseError as exc:  # NOPERM, READONLY, OOM
        logger.error("%s (not recorded in Redis: %s)", error, exc)
        return error
    logger.error("%s; recorded as ended FAILED", error)
    return error


# The verdict fields (ARGV) into a scan hash (KEYS[1]) whose verdict is not final, in one step
# (a script: a writer recording SAVED meanwhile is never overwritten; one key: cluster-safe).
_RECORD_UNLESS_FINAL = """
if redis.call('TYPE', KEYS[1])['ok'] ~= 'hash' then return 0 end
local saving = redis.call('HGET', KEYS[1], 'saving')
if saving == 'SAVED' or saving == 'FAILED' or saving == 'NOT_SAVED' then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""


def record_corrupt(
    store: DataStore, session: str, fields: entries.Fields, error: DecodingError
) -> str | None:
    """Record FAILED, with ``error``, as the verdict of a scan whose hash is corrupt.

    A walk skips an announced scan whose hash fields cannot be read (garbage over its number,
    name, type or state): no reader can follow it, so no writer will ever save it. Its verdict
    used to stay WAITING ("waiting for a writer") for good while writers ran, and a publisher
    waiting for the verdict timed out instead of hearing why. Only a hash whose verdict is
    not final is changed (a scan SAVED before the damage stays SAVED: its file is whole), and
    nothing else in it.

    Returns
    -------
    str or None
        The reason recorded, or None when nothing was (``fields`` is no NEW_SCAN entry, the
        key is not a hash, its verdict is final, or the server refused: logged).
    """
    try:
        number = entries.parse_new_scan(fields)
    except DecodingError:
        return None
    if number is None:
        return None
    key = store.keys.scan(session, number)
    reason = (
        f"{error}; no reader can follow this scan, so no writer can save it: repair its "
        f"hash {key} or delete the scan"
    )
    verdict = entries.saving_fields(
        SavingVerdict(SavingState.FAILED, reason=reason, time=time.time())
    )

    args: list[Any] = []
    for name, value in verdict.items():
        args.extend((name, value))
    try:
        done = store.redis.register_script(_RECORD_UNLESS_FINAL)(keys=[key], args=args)
    except redis.exceptions.ResponseError as exc:  # NOPERM, READONLY, OOM
        logger.warning("%s: verdict FAILED not recorded in Redis: %s", key, exc)
        return None
    return reason if done else None


def record_if_lost_by_number(store: DataStore, session: str, number: int) -> str | None:
    """:func:`record_if_lost` for a scan whose NEW_SCAN entry is among the session's latest.

    For a reader that saw the scan and then lost it (a writer writing it). None also when its
    entry is not among the last 1000 of the session stream.
    """
    stream = store.keys.session_scans(session)
    latest = stream_entries(store.redis.xrevrange(stream, count=_SEARCHED_ENTRIES))
    for entry_id, fields in latest:
        try:
            found = entries.parse_new_scan(fields)
        except DecodingError:
            continue
        if found == number:
            return record_if_lost(store, session, number, entry_id, fields)
    return None
