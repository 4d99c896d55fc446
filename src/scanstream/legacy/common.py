"""``bliss.common.counter``, ``bliss.common.axis``, ``bliss.common.utils``: what subscriber
modules import from them (BLISS's own ``bliss/data/scan.py`` imports these three).

A subscriber process has no BLISS counters or axes: :class:`Counter` and :class:`Axis`
exist so that ``isinstance`` checks and imports work, and nothing is ever one of them.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["Axis", "Counter", "get_matching_names"]


class Counter:
    """Stands for BLISS's counter class; a subscriber meets none (names are strings)."""


class Axis:
    """Stands for BLISS's axis class; a subscriber meets none (names are strings)."""


def get_matching_names(
    patterns: str | Sequence[Any], names: Iterable[str], strict_pattern_as_short_name: bool = False
) -> dict[str, list[str]]:
    """The names matching each Unix-style pattern (``*``, ``?``, ``[seq]``, ``[!seq]``).

    Parameters
    ----------
    patterns : str or sequence
        One pattern or several (non-strings are matched as ``str(pattern)``).
    names : iterable of str
        The names searched, full names such as ``"simulation_diode_sampling_controller:diode"``.
    strict_pattern_as_short_name : bool
        A pattern without ``*`` nor ``:`` is a short name: it matches the last part of a
        full name (``*:p``), else a middle part (``*:p:*``), else the first (``p:*``).

    Returns
    -------
    dict
        pattern -> the matching names, in the order of ``names``.
    """
    names = list(names)
    wanted = [patterns] if not isinstance(patterns, (list, tuple)) else list(patterns)
    matches: dict[str, list[str]] = {}
    for pattern in wanted:
        text = pattern if isinstance(pattern, str) else str(pattern)
        tries = [text]
        if strict_pattern_as_short_name and "*" not in text and ":" not in text:
            tries = [f"*:{text}", f"*:{text}:*", f"{text}:*"]
        found: list[str] = []
        for attempt in tries:
            found = [name for name in names if fnmatch.fnmatchcase(name, attempt)]
            if found:
                break
        matches[text] = found
    return matches
