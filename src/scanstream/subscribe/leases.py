"""The lease watch of a walk: which followed scans lost their publisher, and how they end.

A publisher renews its scan's lease every third of ``lease_time``; a walk checks the leases
of the scans it follows (one pipelined round trip for all of them) and ends those whose
lease stayed gone: KILLED, recorded in Redis by ``end_scan.lua`` so that every reader
agrees (or, for a read-only user, for this walk only). The walker turns the outcomes into
END_SCAN events (:mod:`.walker`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis

from .._protocol import entries
from ..exceptions import DecodingError, ScanNotFoundError
from ..models import ScanEnd, ScanState

if TYPE_CHECKING:
    from .tree import ScanNode

logger = logging.getLogger(__name__)

#: A lease this walk saw alive, then gone, ends its scan KILLED only once it stayed gone for
#: this fraction of ``lease_time`` (the publisher renews it every third of ``lease_time``).
LEASE_GRACE = 0.5


@dataclass
class LeaseState:
    """What one walk knows of one scan's lease."""

    seen: bool = False  # seen alive by this walk
    gone_since: float | None = None  # monotonic time it was first seen gone since
    garbage_logged: bool = False  # the garbage over it is logged once


@dataclass(frozen=True)
class LeaseOutcome:
    """A followed scan whose lease is gone for good.

    ``end``: how the walk ends it (None: its END is in its event stream, which the next read
    yields). ``error``: the garbage over its hash, to record as the scan's error. ``expired``:
    the scan itself is gone from Redis.
    """

    scan: ScanNode
    end: ScanEnd | None
    error: DecodingError | None = None
    expired: bool = False


class LeaseWatch:
    """Checks the leases of a walk's scans at most every quarter of ``lease_time`` (1 s at
    most), and at once when the walk is idle (``force``)."""

    def __init__(self, client: redis.Redis, lease_time: float) -> None:
        self.redis = client
        self.period = min(1.0, lease_time / 4)
        self.grace = LEASE_GRACE * lease_time
        self._next_check = 0.0

    def due(self, force: bool) -> bool:
        """True when the leases are to be checked now (the next check is then scheduled)."""
        now = time.monotonic()
        if not force and now < self._next_check:
            return False
        self._next_check = now + self.period
        return True

    def check(self, scans: Sequence[tuple[ScanNode, LeaseState]]) -> list[LeaseOutcome]:
        """The scans of ``scans`` whose lease is gone for good, each with how it ends."""
        now = time.monotonic()
        pipe: Any = self.redis.pipeline(transaction=False)  # Any: execute_command is untyped
        for scan, _ in scans:
            entries.queue_lease_reads(pipe, scan.lease_key)
        replies = pipe.execute()
        outcomes: list[LeaseOutcome] = []
        n = entries.LEASE_READS
        for i, (scan, lease) in enumerate(scans):
            kind, pttl, (value,) = replies[n * i : n * i + n]
            alive, problem = entries.lease_status(kind, pttl, value)
            if alive:
                lease.seen, lease.gone_since = True, None
                continue
            if problem is not None and not lease.garbage_logged:
                lease.garbage_logged = True
                logger.error(
                    "scan %s: its lease key %s is not a lease (%s): counted as an expired "
                    "lease (a live publisher overwrites it at its next renewal)",
                    scan.db_name,
                    scan.lease_key,
                    problem,
                )
            if lease.seen or problem is not None:
                # Gone after this walk saw it alive: wait LEASE_GRACE of lease periods before
                # ending the scan. A server paused past the lease (SIGSTOP, a stalled disk)
                # expires every lease at once when it resumes, and a live publisher renews
                # its lease at its first command after the pause; a reader checking first
                # killed running scans (their publishers then failed on the sealed streams).
                # Garbage over the lease always waits: a live publisher replaces it within a
                # third of a lease time, and when it was written is unknown.
                if lease.gone_since is None:
                    lease.gone_since = now
                if now - lease.gone_since < self.grace:
                    continue
            outcome = self._end(scan)
            if outcome is not None:
                outcomes.append(outcome)
        return outcomes

    @staticmethod
    def _end(scan: ScanNode) -> LeaseOutcome | None:
        """Declare ``scan`` KILLED; how the walk ends it (None: already ended in Redis)."""
        try:
            if scan.check_lease().is_final:
                return None  # END is in the scan's event stream: the next read yields it
        except ScanNotFoundError:
            end = ScanEnd(
                ScanState.EXPIRED,
                f"scan {scan.db_name} expired or was deleted from Redis before it ended",
                time.time(),
                {},
            )
            return LeaseOutcome(scan, end, expired=True)
        except DecodingError as exc:
            # Garbage over its hash: the scan cannot be followed; end it FAILED for this
            # walk (nothing is recorded in Redis), as for a corrupt END entry.
            return LeaseOutcome(scan, ScanEnd(ScanState.FAILED, str(exc), time.time(), {}), exc)
        except redis.exceptions.NoPermissionError:
            # Read-only user: cannot record KILLED, so end the scan for this walk only.
            end = ScanEnd(
                ScanState.KILLED, "the publisher stopped renewing its lease", time.time(), {}
            )
            return LeaseOutcome(scan, end)
        return None
