"""Argument checks shared by the simulator's scans, top masters and devices.

One wording per kind of bad argument, always raised as
:class:`~scanstream.exceptions.InvalidArgumentError` (also a ``ValueError``) before anything
is published.
"""

from __future__ import annotations

import numbers

from ..exceptions import InvalidArgumentError

__all__ = ["check_count", "check_duration"]


def _prefix(owner: str) -> str:
    return f"{owner}: " if owner else ""


def check_count(name: str, value: object, minimum: int, owner: str = "") -> int:
    """Return ``value`` as an int, refusing anything but an integer ``>= minimum``.

    Parameters
    ----------
    name : str
        Argument name, for the message (``npoints``, ``intervals``...).
    value : object
        The argument; booleans are refused (``True`` is not a number of points).
    minimum : int
        Smallest accepted value.
    owner : str
        What the argument belongs to (``top master 'timer'``), for the message.

    Raises
    ------
    InvalidArgumentError
        Not an integer, or smaller than ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        raise InvalidArgumentError(
            f"{_prefix(owner)}{name} must be an int >= {minimum}, got {value!r}"
        )
    return int(value)


def check_duration(name: str, value: object, owner: str = "") -> float:
    """Return ``value`` as a float, refusing anything but a number ``>= 0`` (NaN included).

    Raises
    ------
    InvalidArgumentError
        Not a real number, negative or NaN.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value) >= 0:
        raise InvalidArgumentError(f"{_prefix(owner)}{name} must be a number >= 0, got {value!r}")
    return float(value)
