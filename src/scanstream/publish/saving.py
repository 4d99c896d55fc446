"""Whether a scan will be saved: the writer that follows its session, and its saving verdict.

At scan start the publisher reads the session's writer health hash (``keys.writer_health``,
renewed with a TTL of a few seconds by the writer that owns the session): without one, no
writer will save the scan. At the end it reads the verdict that writer recorded in the scan
hash (``entries.SAVING_FIELDS``). Both are one Redis call, never on the emit path.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from typing import TYPE_CHECKING, Any, cast

import redis

from .._protocol.entries import (
    SAVING_FIELDS,
    SAVING_OFF_REASON,
    Fields,
    parse_saving,
    parse_writer_health,
)
from .._protocol.metadata import iso_time
from .._transport.errors import is_wrong_type
from ..exceptions import InvalidArgumentError, NoWriterError, NoWriterWarning
from ..models import SavingState, SavingVerdict

if TYPE_CHECKING:
    from .._transport.connection import DataStore

logger = logging.getLogger(__name__)

__all__ = [
    "check_retention",
    "no_writer_message",
    "read_verdict",
    "saving_off",
    "writer_in",
    "writer_of",
]


def saving_off(info: dict[str, Any]) -> bool:
    """True when the scan_info turns saving off (``save=False``, as BLISS and the writer say)."""
    return info.get("save") is False


def writer_of(store: DataStore, session: str) -> dict[str, Any] | None:
    """The status of the live writer that owns ``session``, or None when no writer does.

    A health key of another type (garbage written over it) names no writer, as a malformed
    hash does; a writer following the session replaces it within a second.
    """
    try:
        reply: object = store.redis.hgetall(store.keys.writer_health(session))
    except redis.exceptions.ResponseError as exc:
        reply = exc
    return writer_in(store, session, reply)


def writer_in(store: DataStore, session: str, reply: object) -> dict[str, Any] | None:
    """:func:`writer_of` from the reply of the HGETALL of the health key (read by the caller,
    for example in a pipeline); a reply that is an error other than WRONGTYPE is raised."""
    if isinstance(reply, redis.exceptions.ResponseError):
        if not is_wrong_type(reply):
            raise reply
        key = store.keys.writer_health(session)
        logger.warning("%s, the writer claim of session %s, is not a hash (garbage)", key, session)
        return None
    if isinstance(reply, Exception):
        raise reply
    return parse_writer_health(cast("Fields", reply))


#: The writer's status is not known yet: :func:`check_writer` reads it.
UNREAD: Any = object()


def check_retention(value: float) -> float:
    """``value`` if it is a valid retention time (finite, >= 0), else InvalidArgumentError.

    ``inf`` or NaN would make the end-of-scan script compute a nonsense expiry.
    """
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise InvalidArgumentError(
            f"retention_time must be a finite number of seconds >= 0 (0: keep until "
            f"deleted), got {value!r}; fix SCANSTREAM_RETENTION_TIME or the Settings given"
        )
    return float(value)


def kept_until_text(retention: float, now: float) -> str:
    """How long an unsaved scan ending about ``now`` stays in Redis, for messages."""
    if retention <= 0:
        return "until it is deleted (retention_time = 0)"
    return f"until {iso_time(float(int(now + retention)))} (retention_time = {retention:g} s after its end)"


def no_writer_message(session: str, retention: float, now: float) -> str:
    """The warning of a scan that starts while no writer follows its session."""
    return (
        f"no writer follows session {session}: this scan will not be saved; it is kept in "
        f"Redis {kept_until_text(retention, now)}; run `scanstream writer {session}` to save it"
    )


def check_writer(
    store: DataStore,
    session: str,
    info: dict[str, Any],
    *,
    require: bool,
    warn: bool,
    stacklevel: int,
    status: dict[str, Any] | None = UNREAD,
) -> tuple[dict[str, Any] | None, str | None]:
    """Before a scan is created: the status of the writer that follows ``session``, and the
    warning text when none does (None for scans whose saving is off).

    ``status``: the writer's status when the caller read it already (:func:`writer_in`).

    Raises
    ------
    NoWriterError
        ``require`` and no writer follows the session (nothing was created).
    """
    if saving_off(info):
        return None, None
    if status is UNREAD:
        status = writer_of(store, session)
    if status is not None:
        return status, None
    message = no_writer_message(session, store.settings.retention_time, time.time())
    if require:
        raise NoWriterError(
            f"no writer follows session {session}: the scan was not started "
            f"(require_writer=True); start one with `scanstream writer {session}`"
        )
    if warn:
        logger.warning("%s", message)
        warnings.warn(message, NoWriterWarning, stacklevel=stacklevel + 1)
    return None, message


def read_verdict(store: DataStore, scan_key: str, info: dict[str, Any]) -> SavingVerdict | None:
    """The saving verdict in the scan hash ``scan_key`` (one HMGET); None if the scan is gone.

    A scan whose saving is off and that no writer has judged reads as NOT_SAVED.
    """
    names = [b"state", *SAVING_FIELDS]
    values = store.redis.hmget(scan_key, names)
    if values[0] is None:  # every scan hash has a state: the scan is gone
        return None
    fields = cast("Fields", {k: v for k, v in zip(names, values) if v is not None})
    verdict = parse_saving(fields)
    if verdict.state is SavingState.WAITING and saving_off(info):
        return SavingVerdict(SavingState.NOT_SAVED, reason=SAVING_OFF_REASON)
    return verdict
