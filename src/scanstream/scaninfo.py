"""Checks and defaults for ``scan_info``, the metadata dict of a scan (BLISS conventions)."""

from __future__ import annotations

import datetime
import numbers
from collections.abc import Mapping
from typing import Any

from .encoding import json_safe
from .exceptions import EncodingError

# Known keys and the Python types their values must have. Others are free.
_KEY_TYPES: dict[str, tuple[type, ...]] = {
    "title": (str,),
    "type": (str,),
    "npoints": (numbers.Integral,),
    "npoints1": (numbers.Integral,),
    "npoints2": (numbers.Integral,),
    "data_dim": (numbers.Integral,),
    "count_time": (numbers.Real,),
    "sleep_time": (numbers.Real,),
    "filename": (str,),
    "channels": (Mapping,),
    "acquisition_chain": (Mapping,),
    "devices": (Mapping,),
    "plots": (list, tuple),
    "instrument": (Mapping,),
    "positioners": (Mapping,),
    "sample": (Mapping,),
    "technique": (Mapping,),
}


def iso_time(timestamp: float) -> str:
    """ISO 8601 local time of ``timestamp`` with the UTC offset that applied at that instant."""
    return datetime.datetime.fromtimestamp(timestamp).astimezone().isoformat()


def check_scan_info(info: Any, path: str = "scan_info") -> dict[str, Any]:
    """Return ``info`` as a JSON-safe dict, or raise :class:`EncodingError` naming the key.

    Parameters
    ----------
    info : Mapping or None
        The scan metadata. Known keys (``title``, ``npoints``, ``channels``, ``plots``...)
        must have the types of the BLISS conventions; ``npoints`` must be >= 0.
    """
    if info is None:
        return {}
    if not isinstance(info, Mapping):
        raise EncodingError(f"{path} must be a dict, got {type(info).__name__}")
    for key, types in _KEY_TYPES.items():
        if key in info and info[key] is not None:
            value = info[key]
            if isinstance(value, bool) or not isinstance(value, types):
                expected = " or ".join(t.__name__ for t in types)
                raise EncodingError(
                    f"{path}[{key!r}] must be {expected}, got {value!r} ({type(value).__name__})"
                )
    for key in ("npoints", "npoints1", "npoints2"):
        if key in info and info[key] is not None and info[key] < 0:
            raise EncodingError(f"{path}[{key!r}] must be >= 0, got {info[key]!r}")
    safe = json_safe(info, path)
    assert isinstance(safe, dict)
    return safe
