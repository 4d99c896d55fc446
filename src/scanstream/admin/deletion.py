"""Deletion of stored scans, safe by default, and working when Redis is full.

A scan is never deleted while it runs (state not final and its publisher's lease alive), and,
unless ``force`` is given, not before deleting it loses nothing: its saving verdict (recorded
in the scan hash by its writer, :func:`scanstream._protocol.entries.parse_saving`) is SAVED or
NOT_SAVED (saving off by design), or, no verdict recorded, a writer put its number in the
saved set ``keys.writer_saved(session)``. A scan WAITING for a writer, being WRITTEN, or whose
saving FAILED is kept. The check and the deletion of one scan are one server-side script
(:func:`scanstream._protocol.scripts.delete_scan`): nothing can change in between, and it runs
past maxmemory, where Redis 7.0 refuses a MULTI/EXEC transaction even when it only deletes.
Deleting old scans is the documented way out of a full server (``docs/reliability.md``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import redis

from .._protocol import entries
from .._protocol.keys import check_session_name
from .._protocol.scripts import DeleteOutcome, delete_scan
from .._transport.connection import DataStore, stream_entries
from ..exceptions import DecodingError, InvalidArgumentError
from ..models import SavingState
from .listing import ScanSummary, format_age, saved_numbers, scan_numbers, summaries

logger = logging.getLogger(__name__)

_MISSING = "no such scan (never created, expired or deleted)"


@dataclass(frozen=True)
class Decision:
    """What :func:`delete_scans` did with one scan, and why.

    Attributes
    ----------
    number : int
        The scan number.
    deleted : bool
        True if it was deleted (in a dry run: would have been).
    reason : str
        Why, in words (``ended DONE, saved``, ``running (PREPARED, publisher alive)``...).
    scan : ScanSummary or None
        The scan as it was just before the decision; None if there was no such scan.
    """

    number: int
    deleted: bool
    reason: str
    scan: ScanSummary | None = None


@dataclass
class DeletionReport:
    """The outcome of :func:`delete_scans`: scans deleted and scans kept, with reasons.

    Attributes
    ----------
    session : str
        The session.
    dry_run : bool
        True if nothing was actually deleted (``deleted`` lists what would have been).
    deleted, kept : list of Decision
        By scan number.
    """

    session: str
    dry_run: bool = False
    deleted: list[Decision] = field(default_factory=list)
    kept: list[Decision] = field(default_factory=list)

    @property
    def freed(self) -> int:
        """Bytes freed (an estimate: the MEMORY USAGE of the deleted keys)."""
        return sum(d.scan.memory for d in self.deleted if d.scan is not None)


def delete_scans(
    store: DataStore,
    session: str,
    *,
    older_than: float | None = None,
    numbers: Sequence[int] | None = None,
    force: bool = False,
    dry_run: bool = False,
) -> DeletionReport:
    """Delete stored scans of a session, safely, and say what was deleted and what was kept.

    A scan is deleted only if all of these hold:

    - it is not running: it has ended, or its publisher's lease has expired (publisher gone);
    - with ``older_than``: it ended (or, publisher gone, started) more than that long ago;
    - deleting it loses nothing (:attr:`~scanstream.admin.listing.ScanSummary.safe_to_drop`:
      its saving verdict is SAVED or NOT_SAVED; with no verdict recorded, it is in the
      writers' saved set), or ``force`` is True. A scan WAITING, WRITING or FAILED is kept.

    Each scan is checked and deleted in one server-side script, so a scan that changes in
    between (lease renewed, node added, state changed) cannot be deleted on a stale check, and
    the deletion works on a full Redis (maxmemory reached), which refuses transactions.

    Parameters
    ----------
    store : DataStore
        The connection (it needs write access).
    session : str
        Session name.
    older_than : float, optional
        Minimum age in seconds (see :func:`~scanstream.admin.listing.parse_duration`).
        None: any age.
    numbers : sequence of int, optional
        Only these scans. None: every stored scan of the session.
    force : bool
        Delete scans no writer has saved, whatever their saving verdict (never running ones).
    dry_run : bool
        Decide but delete nothing.

    Returns
    -------
    DeletionReport
        The scans deleted and those kept, each with the reason.

    Raises
    ------
    SessionNotFoundError
        The session never published a scan.
    InvalidArgumentError
        ``older_than`` is negative or a scan number is not a positive int.
    redis.exceptions.ConnectionError
        Redis cannot be reached (not wrapped); scans already deleted stay deleted.
    """
    check_session_name(session)
    if older_than is not None and (not isinstance(older_than, (int, float)) or older_than < 0):
        raise InvalidArgumentError(
            f"older_than must be a number of seconds >= 0, got {older_than!r}"
        )
    if numbers is not None:
        for n in numbers:
            if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
                raise InvalidArgumentError(f"scan numbers are positive ints, got {n!r}")
    store.require_session(session)
    report = DeletionReport(session, dry_run=dry_run)
    wanted = sorted(set(numbers)) if numbers is not None else scan_numbers(store, session)
    now = time.time()
    cutoff = None if older_than is None else now - older_than
    saved = saved_numbers(store, session)
    # Read before deleting: the report says what each scan was and what it freed.
    found = summaries(store, session, wanted, saved)
    unsaved_deleted: set[int] = set()
    for number in wanted:
        summary = found.get(number)
        if summary is None:
            if numbers is not None:  # asked for by number: say why nothing was done
                report.kept.append(Decision(number, False, _MISSING))
            continue  # announced in the session's stream but expired or deleted since
        outcome = delete_scan(
            store.redis,
            store.keys,
            session,
            number,
            cutoff=cutoff,
            saved=summary.safe_to_drop,
            force=force,
            dry_run=dry_run,
        )
        decision = _decision(number, outcome, summary, now)
        if decision.scan is None and numbers is None:
            continue  # expired or deleted by another process since it was read
        (report.deleted if decision.deleted else report.kept).append(decision)
        if decision.deleted and not dry_run and number not in saved:
            unsaved_deleted.add(number)
        if decision.deleted:
            logger.info(
                "%s scan %s:%d (%s)",
                "would delete" if dry_run else "deleted",
                session,
                number,
                decision.reason,
            )
    if unsaved_deleted:
        _unannounce(store, session, unsaved_deleted)
    return report


def _unannounce(store: DataStore, session: str, numbers: set[int]) -> None:
    """Take the NEW_SCAN entries of deleted scans no writer saved out of the session stream.

    Readers take a scan gone before its retention time, that no writer saved, for a lost one
    (:mod:`scanstream.subscribe.lost`) and record it FAILED: a deleted one must not be.
    """
    stream = store.keys.session_scans(session)
    ids = []
    for entry_id, fields in stream_entries(store.redis.xrange(stream)):
        with contextlib.suppress(DecodingError):
            if entries.parse_new_scan(fields) in numbers:
                ids.append(entry_id)
    if ids:
        try:
            store.redis.xdel(stream, *ids)
        except redis.exceptions.ResponseError as exc:  # NOPERM: the scans are deleted anyway
            logger.warning(
                "session %s: NEW_SCAN entries of deleted scans %s not removed (%s): walks "
                "will report them as lost",
                session,
                sorted(numbers),
                exc,
            )


def _decision(number: int, outcome: DeleteOutcome, summary: ScanSummary, now: float) -> Decision:
    """The Decision, in words, for what the deletion script decided."""
    kind, state, detail = outcome
    if kind in ("deleted", "deletable"):
        why = f"ended {state}" if detail == "ended" else "publisher gone"
        if not summary.safe_to_drop:
            why += f", not saved (forced; saving {summary.saving.state.value})"
        elif summary.saving.state is SavingState.NOT_SAVED:
            why += ", not saved by design"
        else:
            why += ", saved"
        return Decision(number, True, why, summary)
    if kind == "running":
        return Decision(number, False, f"running ({state}, publisher alive)", summary)
    if kind == "recent":
        age = format_age(now - float(detail))
        return Decision(number, False, f"too recent ({state} {age} ago)", summary)
    if kind == "unsaved":
        verdict = summary.saving
        if summary.saving_recorded and verdict.state is not SavingState.WAITING:
            why = f"not saved by a writer (saving {verdict}; use --force to delete it anyway)"
        else:
            why = "not saved by a writer (use --force to delete it anyway)"
        return Decision(number, False, why, summary)
    return Decision(number, False, _MISSING)
