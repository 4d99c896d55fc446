"""Metadata as JSON: the conversion rules, ``scan_info`` checks (BLISS conventions), ISO 8601 times."""

from __future__ import annotations

import datetime
import enum
import json
import math
import numbers
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..exceptions import DecodingError, EncodingError

#: numpy dtype kinds stored as JSON numbers.
_NUMBER_KINDS = "biufc"

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


def json_safe(value: Any, path: str = "scan_info") -> Any:
    """Return ``value`` converted to plain JSON types, or raise :class:`EncodingError`.

    numpy scalars and arrays become numbers and lists, datetimes become ISO 8601 strings,
    enums their value, paths strings. NaN and infinities become None (JSON ``null``): standard
    JSON has no such numbers, and every JSON reader must read what is stored
    (docs/decisions/0005-scan-info-json.md). ``path`` names the value in error messages
    (``scan_info['a']['b']``).
    Refused: values of other types, text that is not UTF-8 (lone surrogates), non-string
    keys, and containers that contain themselves.
    """
    return _json_safe(value, path, set())


# Where a value is in the metadata, for error messages: the root's name, or (where its
# container is, key or index, True for an index). Written out only for an error: formatting
# the place of every value took a third of the time of checking a node's info.
_Place = str | tuple[Any, Any, bool]


def _place_text(place: _Place) -> str:
    keys = []
    while isinstance(place, tuple):
        place, key, is_index = place
        keys.append(f"[{key}]" if is_index else f"[{key!r}]")
    return place + "".join(reversed(keys))


def _json_safe(value: Any, path: _Place, active: set[int]) -> Any:
    """:func:`json_safe`, with ``active`` the ids of the containers being converted."""
    # The plain types first, without the isinstance chain (bool cannot be subclassed).
    kind = type(value)
    if kind is str:
        return _utf8_text(value, path)
    if kind is float:
        return _finite_or_none(value)
    if kind is int or value is None or kind is bool:
        return value
    if kind is dict or kind is list or kind is tuple:
        return _container(value, path, active)
    if isinstance(value, str):
        return _utf8_text(value, path)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return _finite_or_none(value)
    if isinstance(value, np.generic):
        if value.dtype.kind in _NUMBER_KINDS + "U":
            item = value.item()
            if isinstance(item, complex):
                raise EncodingError(
                    f"{_place_text(path)}: complex value {value!r} cannot be stored in JSON"
                )
            return _finite_or_none(item) if isinstance(item, float) else item
        raise EncodingError(
            f"{_place_text(path)}: numpy value of dtype {value.dtype} cannot be stored"
        )
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biufU":
            raise EncodingError(
                f"{_place_text(path)}: numpy array of dtype {value.dtype} cannot be stored"
            )
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            flagged = value.astype(object)
            flagged[~np.isfinite(value)] = None
            return flagged.tolist()
        return value.tolist()
    if isinstance(value, enum.Enum):
        return _json_safe(value.value, path, active)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if isinstance(value, (Mapping, list, tuple)):
        return _container(value, path, active)
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise EncodingError(
                f"{_place_text(path)}: bytes that are not UTF-8 text cannot be stored"
            ) from None
    raise EncodingError(
        f"{_place_text(path)}: value {value!r} of type {type(value).__name__} cannot be "
        "stored; use numbers, strings, lists, dicts, numpy arrays or datetimes"
    )


def _container(
    value: Mapping[Any, Any] | list[Any] | tuple[Any, ...], path: _Place, active: set[int]
) -> Any:
    """A dict or list of :func:`_json_safe` values; refused if it contains itself."""
    if id(value) in active:
        raise EncodingError(
            f"{_place_text(path)}: the value contains itself; metadata must be a tree"
        )
    active.add(id(value))
    try:
        return _json_container(value, path, active)
    finally:
        active.discard(id(value))


def _finite_or_none(value: float) -> float | None:
    """``value``, or None for NaN and infinities (no standard JSON number is one of them)."""
    return float(value) if math.isfinite(value) else None


def _json_container(
    value: Mapping[Any, Any] | list[Any] | tuple[Any, ...], path: _Place, active: set[int]
) -> Any:
    """A dict or list of :func:`_json_safe` values."""
    if not isinstance(value, Mapping):
        return [_json_safe(item, (path, i, True), active) for i, item in enumerate(value)]
    out = {}
    for key, item in value.items():
        if type(key) is str:
            text = _utf8_text(key, path, " key")
        elif isinstance(key, (bool, np.bool_)) or not isinstance(key, (str, int, np.integer)):
            raise EncodingError(
                f"{_place_text(path)}: key {key!r} of type {type(key).__name__} is not "
                "allowed; use strings as keys"
            )
        else:
            text = _utf8_text(str(key), path, " key")
        if text in out:
            raise EncodingError(
                f"{_place_text(path)}: keys {key!r} and {text!r} would both be stored as the "
                f"key {text!r}; keep one of them"
            )
        out[text] = _json_safe(item, (path, key, False), active)
    return out


def _utf8_text(text: str, path: _Place, what: str = "") -> str:
    """``text``, or :class:`EncodingError` when it cannot be stored as UTF-8."""
    if text.isascii():  # most metadata: no encoding to try
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EncodingError(
            f"{_place_text(path)}{what}: text {text!r} is not valid Unicode ({exc.reason} at "
            f"position {exc.start}); store text that encodes as UTF-8"
        ) from None
    return text


def dumps(value: Any, path: str = "scan_info") -> str:
    """Encode metadata as standard JSON text (after :func:`json_safe`: no NaN token)."""
    return json.dumps(json_safe(value, path), separators=(",", ":"), allow_nan=False)


def dumps_checked(value: Any, path: str = "scan_info") -> str:
    """:func:`dumps` of metadata already checked: made by :func:`json_safe` or
    :func:`check_scan_info`, or built of their results and of plain values.

    The check is not made again (at PREPARED and at the end, checking a scan_info already
    checked was a tenth of the CPU of a short scan). What standard JSON cannot hold still
    goes through :func:`dumps`, its conversions and its errors.
    """
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        return dumps(value, path)


def loads(text: bytes | str | None) -> Any:
    """Decode JSON text written by :func:`dumps` (or by an older version: NaN tokens read)."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise DecodingError(f"corrupt JSON metadata in Redis: {exc}") from None


def iso_time(timestamp: float) -> str:
    """ISO 8601 local time of ``timestamp`` with the UTC offset that applied at that instant."""
    return datetime.datetime.fromtimestamp(timestamp).astimezone().isoformat()


def check_scan_info(info: Any, path: str = "scan_info", *, update: bool = False) -> dict[str, Any]:
    """Return ``info`` as a JSON-safe dict, or raise :class:`EncodingError` naming the key.

    Parameters
    ----------
    info : Mapping or None
        The scan metadata. Known keys (``title``, ``npoints``, ``channels``, ``plots``...)
        must have the types of the BLISS conventions; ``npoints`` must be >= 0;
        ``filename``, when given, must be a path (no NUL); it may be empty (``""``) only
        when saving is off (``save=False``), as BLISS publishes scans it does not save.
    update : bool
        ``info`` updates a scan_info: whether an empty filename fits is for the caller to
        check on the merged one (:func:`check_filename`).
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
    if not update:
        check_filename(info, path)
    safe = json_safe(info, path)
    assert isinstance(safe, dict)
    return safe


def check_filename(info: Mapping[str, Any], path: str = "scan_info") -> None:
    """Raise :class:`EncodingError` unless ``info["filename"]`` suits the scan's saving.

    A filename holds no NUL; it may be empty or blank only when saving is off
    (``save=False``): BLISS publishes ``filename: ""`` for the scans it does not save, and
    the writer never writes those. Check the merged scan_info when an update may change
    either key.
    """
    filename = info.get("filename")
    if not isinstance(filename, str):
        return
    if "\0" in filename:
        raise EncodingError(
            f"{path}['filename'] must be a file path, got {filename!r} (it holds a NUL)"
        )
    if not filename.strip() and info.get("save") is not False:
        # A scan to be saved needs a path, and the writer would refuse it only at its end:
        # say so while it can be fixed.
        raise EncodingError(
            f"{path}['filename'] is {filename!r} but saving is on: give a file path, leave "
            "'filename' out to save into the writer's default file, or set save=False "
            "(a scan not saved publishes filename '')"
        )
