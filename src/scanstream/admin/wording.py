"""Counted nouns in messages: ``1 scan``, ``3 scans``, ``no scan``, never ``scan(s)``.

The one helper of the project's command line and administration messages for plurals, so
that every count reads as an English sentence.
"""

from __future__ import annotations

__all__ = ["counted", "noun"]


def counted(count: int, singular: str, plural: str | None = None, *, none: bool = False) -> str:
    """``count`` and the noun, singular for 1 and plural otherwise.

    Parameters
    ----------
    count : int
        How many.
    singular : str
        The noun for one (``"scan"``).
    plural : str, optional
        The noun for several, when it is not ``singular + "s"`` (``"entries"``).
    none : bool
        Say ``no scan`` rather than ``0 scans`` for a count of 0.

    Returns
    -------
    str
        ``"1 scan"``, ``"3 scans"``, ``"0 scans"`` (``"no scan"`` with ``none``).
    """
    if count == 0 and none:
        return f"no {singular}"
    return f"{count} {noun(count, singular, plural)}"


def noun(count: int, singular: str, plural: str | None = None) -> str:
    """The noun alone, for tables that align the counts: ``point`` for 1, else ``points``."""
    return singular if count == 1 else plural or singular + "s"
