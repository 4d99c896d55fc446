"""The only module that builds Redis key names.

Layout (``P`` is the configurable prefix, ``S`` a session name, ``N`` a scan number)::

    P:protocol                        STRING  protocol version, checked on connect
    P:server_identity                 HASH    id: random, set with protocol; epoch: HINCRBY counter
    P:sessions                        HASH    session name -> creation time (discovery without KEYS)
    P:session:{S}:scans               STREAM  one NEW_SCAN entry per scan of the session
    P:session:{S}:counter             STRING  INCR counter giving scan numbers
    P:session:{S}:number_floor        STRING  highest scan number a writer knows (numbering floor)
    P:session:{S}:saved               SET     numbers of the scans a writer saved completely
    P:writer:S:health                 HASH    the writer that owns session S, its status (TTL)
    P:session:{S}:claim:N             HASH    pool mode: the writer holding scan N, fencing token
    P:session:{S}:failed:N            SET     pool mode: ids of the writers that FAILED scan N
    P:session:{S}:pool                SET     pool mode: ids of the writers following session S
    P:session:{S}:member:<id>         STRING  pool mode: that writer's status and load (TTL)
    P:session:{S}:pool_settings       STRING  pool mode: root, --allow... all members share (TTL)
    P:scan:{S:N}                      HASH    scan identity, state, scan_info (JSON), saving verdict
    P:scan:{S:N}:events               STREAM  NEW_NODE / PREPARED / END entries of that scan
    P:scan:{S:N}:lease                STRING  present while the publisher is alive (PX TTL)
    P:scan:{S:N}:data:<i>             STREAM  data of node number ``i``; entry ID = first index

All keys of one scan share the hash tag ``{S:N}``, so every multi-key command of a scan stays
in one cluster slot; no command spans two scans or a scan and its session.
"""

from __future__ import annotations

import re
from typing import TypeGuard

from ..exceptions import InvalidArgumentError

PROTOCOL_VERSION = "1"
DEFAULT_PREFIX = "scanstream"

# Session names become part of key names and hash tags: keep them to a safe alphabet.
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")


def check_session_name(name: object) -> str:
    """Return ``name`` if it is a valid session name, else raise :class:`InvalidArgumentError`."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidArgumentError(
            f"invalid session name {name!r}: use 1 to 128 characters among letters, digits, "
            "'_', '.' and '-', not starting with '.' or '-'"
        )
    return name


def check_item_name(name: object, what: str, forbidden: str) -> str:
    """Return ``name`` if it is a valid scan or node name, else raise :class:`InvalidArgumentError`.

    A valid name is a non-empty string, encodable as UTF-8 (no lone surrogates), without a
    newline, a NUL or any character of ``forbidden``, and not ``.`` or ``..`` (the writer makes
    HDF5 names of them, where those two mean "this group" and "the parent group"). ``what``
    ("scan", "node") goes in the message.
    """
    if not _is_item_name(name, forbidden):
        shown = " or ".join(repr(c) for c in forbidden)
        raise InvalidArgumentError(
            f"invalid {what} name {name!r}: use a non-empty UTF-8 string, not '.' or '..', "
            f"without a newline, a NUL or {shown}"
        )
    return name


def _is_item_name(name: object, forbidden: str) -> TypeGuard[str]:
    if not isinstance(name, str) or not name or name in (".", ".."):
        return False
    if any(c in name for c in "\n\0" + forbidden):
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Keys:
    """Key names under one prefix."""

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        if not prefix or any(c in prefix for c in "{} \t\n"):
            raise InvalidArgumentError(f"invalid key prefix {prefix!r}: no braces or white space")
        self.prefix = prefix

    @property
    def protocol(self) -> str:
        return f"{self.prefix}:protocol"

    @property
    def server_identity(self) -> str:
        """Field ``id``: random, set with the protocol key (gone or changed after a reset or a
        flush); field ``epoch``: advanced by publishers (lower than seen after a rollback)."""
        return f"{self.prefix}:server_identity"

    @property
    def sessions(self) -> str:
        return f"{self.prefix}:sessions"

    def session_scans(self, session: str) -> str:
        return f"{self.prefix}:session:{{{session}}}:scans"

    def session_counter(self, session: str) -> str:
        return f"{self.prefix}:session:{{{session}}}:counter"

    def session_number_floor(self, session: str) -> str:
        """The highest scan number a writer knows for the session (from its files and registry).

        New scans are numbered above it, so that numbering restarted by a server reset never
        collides with saved data.
        """
        return f"{self.prefix}:session:{{{session}}}:number_floor"

    def scan(self, session: str, number: int) -> str:
        return f"{self.prefix}:scan:{{{session}:{number}}}"

    def scan_events(self, session: str, number: int) -> str:
        return self.scan(session, number) + ":events"

    def scan_lease(self, session: str, number: int) -> str:
        return self.scan(session, number) + ":lease"

    def scan_data(self, session: str, number: int, node_index: int) -> str:
        return self.scan(session, number) + f":data:{node_index}"

    def writer_health(self, name: str) -> str:
        return f"{self.prefix}:writer:{name}:health"

    def writer_saved(self, session: str) -> str:
        return f"{self.prefix}:session:{{{session}}}:saved"

    def scan_claim(self, session: str, number: int) -> str:
        """Pool mode: which writer holds scan ``number`` (in the slot of the saved set)."""
        return f"{self.prefix}:session:{{{session}}}:claim:{number}"

    def scan_failed_by(self, session: str, number: int) -> str:
        """Pool mode: the ids of the writers that FAILED scan ``number`` (each tries it once)."""
        return f"{self.prefix}:session:{{{session}}}:failed:{number}"

    def writer_pool(self, session: str) -> str:
        """Pool mode: the ids of the writers sharing the session's scans."""
        return f"{self.prefix}:session:{{{session}}}:pool"

    def writer_pool_settings(self, session: str) -> str:
        """Pool mode: the settings every writer of the session's pool must share (TTL)."""
        return f"{self.prefix}:session:{{{session}}}:pool_settings"

    def writer_member(self, session: str, owner: str) -> str:
        """Pool mode: the status (load, scans held) of writer ``owner`` of the session."""
        return f"{self.prefix}:session:{{{session}}}:member:{owner}"
