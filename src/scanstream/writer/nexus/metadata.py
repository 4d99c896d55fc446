"""NeXus metadata helpers of the scanstream writer: groups, attributes, scan_info categories.

Pure h5py: no Redis knowledge. :mod:`scanstream.writer.nexus` re-exports the public names, so
the writer service only needs to import that module.

Mapping of a metadata dict (for example ``scan_info["instrument"]``) to HDF5, following the
silx ``dicttonx`` conventions that BLISS uses:

======================================  ===================================================
mapping value                           written as
======================================  ===================================================
``dict``                                sub-group; ``NX_class`` from its ``"@NX_class"`` key,
                                        else ``NXcollection``
key ``"@name"``                         attribute ``name`` of the group being written
key ``"child@name"``                    attribute ``name`` of the member ``child``
``None``                                skipped (nothing written, an existing member is left)
``str`` / ``bytes``                     scalar variable-length string dataset
``bool``, ``int``, ``float``, numpy     scalar or array dataset of the numpy dtype
scalars and arrays
list/tuple of ``str``                   1-D variable-length string dataset
list/tuple of numbers (rectangular)     numeric array dataset (``None`` items: NaN, as
                                        scan_info stores NaN and infinities as null)
any other list (mixed, ragged, dicts,   JSON text in a scalar string dataset
empty)
anything else (datetime, objects)       ``str(value)`` (``isoformat()`` for datetimes)
======================================  ===================================================

Every write is idempotent: a member that already holds the same value (same dtype, shape and
contents) is left alone, one with a different value is replaced. A ``'/'`` in a key is
replaced by ``'_'`` (HDF5 uses it as the path separator); keys ``""``, ``"."`` and ``".."``
cannot be HDF5 names and are skipped with a warning.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import h5py
import numpy as np

from ..._protocol.metadata import json_safe
from ...exceptions import EncodingError, NexusLayoutError

__all__ = [
    "NX_COLLECTION",
    "hdf5_name",
    "require_nx_group",
    "write_metadata",
    "write_positioners",
    "write_scan_info_positioners",
    "write_value",
]

logger = logging.getLogger(__name__)

NX_COLLECTION = "NXcollection"

#: h5py dtype of every string dataset and attribute we write: variable-length UTF-8.
STR_DTYPE = h5py.string_dtype("utf-8")


def hdf5_name(name: str) -> str:
    """Return the HDF5 link name used for ``name`` (a channel or metadata key).

    The name is kept as it is (``':'``, ``'.'``, spaces are valid in HDF5 names, and keeping
    the BLISS full channel name, e.g. ``"axis:roby"``, lets users find their data) except
    that ``'/'``, the HDF5 path separator, becomes ``'_'``.

    Raises
    ------
    NexusLayoutError
        For ``""``, ``"."`` and ``".."``, which HDF5 cannot use as a link name.
    """
    if not isinstance(name, str):
        raise NexusLayoutError(f"an HDF5 name must be a str, got {name!r}; pass str(name)")
    mapped = name.replace("/", "_")
    if mapped in ("", ".", ".."):
        raise NexusLayoutError(
            f"{name!r} cannot be used as an HDF5 name (empty, '.' or '..'); rename it"
        )
    return mapped


def require_nx_group(parent: h5py.Group, name: str, nx_class: str | None = None) -> h5py.Group:
    """Return the group ``parent[name]``, creating it with ``@NX_class`` if it does not exist.

    Parameters
    ----------
    parent : h5py.Group
        Parent group (an ``h5py.File`` is a group too).
    name : str
        Link name, used as is (call :func:`hdf5_name` first for user-given names).
    nx_class : str, optional
        NeXus class. It is set on a new group, and on an existing group that has no
        ``NX_class`` yet. ``None`` means ``NXcollection`` for a new group.

    Raises
    ------
    NexusLayoutError
        If ``parent[name]`` exists and is not a group, or is a group of another NeXus class
        than the ``nx_class`` asked for.
    """
    obj = parent.get(name)
    if obj is None:
        # Creation order is tracked so that viewers list members (channels, entries) in the
        # order they were written rather than alphabetically ("10.1" before "2.1").
        group = parent.create_group(name, track_order=True)
        group.attrs["NX_class"] = nx_class or NX_COLLECTION
        return group
    if not isinstance(obj, h5py.Group):
        raise NexusLayoutError(
            f"{obj.name!r} in {parent.file.filename!r} exists and is not a group"
            f" (a {type(obj).__name__}); cannot use it as {nx_class or 'a group'}: delete it"
            " or write to another entry"
        )
    existing = _attr_str(obj, "NX_class")
    if existing is None:
        if nx_class:
            obj.attrs["NX_class"] = nx_class
    elif nx_class and existing != nx_class:
        raise NexusLayoutError(
            f"{obj.name!r} in {obj.file.filename!r} is a {existing} group, not {nx_class}:"
            " delete it or write to another entry"
        )
    return obj


def write_metadata(group: h5py.Group, mapping: Mapping[str, Any]) -> None:
    """Write a nested metadata dict into ``group`` (see the module docstring for the mapping).

    Parameters
    ----------
    group : h5py.Group
        The group the mapping describes: its ``"@..."`` keys become attributes of ``group``
        itself. It gets ``NX_class = NXcollection`` if neither it nor the mapping gives one.
    mapping : Mapping
        For example ``scan_info["instrument"]`` or ``scan_info["technique"]``.

    Notes
    -----
    Values that cannot be converted are written as their ``str()`` rather than raised: a
    strange metadata value must not cost the scan its data.
    """
    if not isinstance(mapping, Mapping):
        raise NexusLayoutError(
            f"metadata for {group.name!r} must be a mapping, got {type(mapping).__name__}"
            f" {mapping!r}; pass a dict"
        )
    group_attrs: dict[str, Any] = {}
    member_attrs: list[tuple[str, str, Any]] = []
    for key, value in mapping.items():
        key = str(key)
        if key.startswith("@"):
            group_attrs[key[1:]] = value
        elif "@" in key:
            member, attr = key.split("@", 1)
            member_attrs.append((member, attr, value))
        else:
            _write_member(group, key, value)
    if "NX_class" not in group_attrs and "NX_class" not in group.attrs:
        group_attrs["NX_class"] = NX_COLLECTION
    for attr, value in group_attrs.items():
        if attr == "NX_class" and _is_device_group(group, str(value)):
            continue
        _set_attr(group, attr, value)
    for member, attr, value in member_attrs:
        try:
            target = group.get(hdf5_name(member))
        except ValueError:
            target = None
        if target is None:
            logger.warning(
                "metadata attribute %r of missing member %r in %s: skipped",
                attr,
                member,
                group.name,
            )
            continue
        _set_attr(target, attr, value)


def write_value(group: h5py.Group, name: str, value: Any) -> h5py.Dataset | None:
    """Write one value as dataset ``group[hdf5_name(name)]``, idempotently.

    The value is converted as described in the module docstring. An existing dataset with
    the same dtype, shape and contents is left alone (and returned); anything else under
    that name is replaced. ``None`` writes nothing and returns None; so does a dict, which
    is written as a sub-group with :func:`write_metadata`.
    """
    return _write_member(group, name, value)


def write_positioners(
    instrument: h5py.Group,
    start: Mapping[str, Any] | None,
    end: Mapping[str, Any] | None = None,
    *,
    units: Mapping[str, Any] | None = None,
    dial_start: Mapping[str, Any] | None = None,
    dial_end: Mapping[str, Any] | None = None,
) -> None:
    """Write motor positions at scan start/end into ``instrument`` as BLISS does.

    Creates (NXcollection each, one scalar dataset per motor with ``@units`` when known):

    * ``positioners_start``, ``positioners_end``: user positions;
    * ``positioners_dial_start``, ``positioners_dial_end``: dial positions;
    * ``positioners`` (NXcollection): per motor, a soft link to its scanned values
      (``instrument/<motor>/value``) when the motor is scanned, else to its start position,
      as BLISS writes it. (``positioners_dial``, a group link of earlier versions, is no
      longer written: nxvalidate rejects a linked NXcollection.)

    Parameters
    ----------
    instrument : h5py.Group
        The entry's NXinstrument group.
    start, end, dial_start, dial_end : Mapping[str, float | None], optional
        Motor name -> position. ``None`` groups are not written (``end`` is only known at
        the end of the scan: call again then). A ``None`` position (motor disabled) is
        written as NaN so that the motor is still listed.
    units : Mapping[str, str | None], optional
        Motor name -> unit.
    """
    units = units or {}
    for group_name, positions in (
        ("positioners_start", start),
        ("positioners_end", end),
        ("positioners_dial_start", dial_start),
        ("positioners_dial_end", dial_end),
    ):
        if positions is None:
            continue
        group = require_nx_group(instrument, group_name, NX_COLLECTION)
        for motor, position in positions.items():
            name = hdf5_name(str(motor))
            value = math.nan if position is None else position
            dset = _write_member(group, name, value)
            unit = units.get(motor)
            if dset is not None and unit:
                _set_attr(dset, "units", str(unit))
    if start is not None:
        _write_positioners_links(instrument, [str(m) for m in start])


def _write_positioners_links(instrument: h5py.Group, motors: Sequence[str]) -> None:
    """``positioners/<motor>``: the scanned values of a scanned motor, else its start value.

    As BLISS does: a reader (PyMca) finds the scanned motor as the one positioner whose
    value is an array of the scan's length. Soft links: nothing is copied.
    """
    link = instrument.get("positioners", getlink=True)
    if link is not None and not isinstance(link, h5py.HardLink):
        del instrument["positioners"]  # the group-wide alias written by earlier versions
    group = require_nx_group(instrument, "positioners", NX_COLLECTION)
    for motor in motors:
        name = hdf5_name(motor)
        device = instrument.get(name)
        if (
            isinstance(device, h5py.Group)
            and _attr_str(device, "NX_class") == "NXpositioner"
            and isinstance(device.get("value"), h5py.Dataset)
        ):
            target = f"{device.name}/value"
        else:
            target = f"{instrument.name}/positioners_start/{name}"
        existing = group.get(name, getlink=True)
        if isinstance(existing, h5py.SoftLink) and existing.path == target:
            continue
        if existing is not None:
            del group[name]
        group[name] = h5py.SoftLink(target)


def write_scan_info_positioners(instrument: h5py.Group, positioners: Mapping[str, Any]) -> None:
    """:func:`write_positioners` from ``scan_info["positioners"]`` (BLISS key names).

    Keys used: ``positioners_start``, ``positioners_end``, ``positioners_dial_start``,
    ``positioners_dial_end``, ``positioners_units``; missing keys are skipped.
    """
    write_positioners(
        instrument,
        positioners.get("positioners_start"),
        positioners.get("positioners_end"),
        units=positioners.get("positioners_units"),
        dial_start=positioners.get("positioners_dial_start"),
        dial_end=positioners.get("positioners_dial_end"),
    )


# --------------------------------------------------------------------------- internals


def _attr_str(obj: h5py.HLObject, name: str) -> str | None:
    """Attribute ``name`` of ``obj`` as a str (h5py may return bytes), or None."""
    value = obj.attrs.get(name)
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _json_default(value: Any) -> Any:
    """``json.dumps`` fallback: the conversion of :func:`~scanstream._protocol.metadata.json_safe`,
    else a lenient one.

    This is the one place where the file is more lenient than Redis: metadata that
    ``json_safe`` refuses (complex numbers, object arrays, sets, other objects) still goes
    into the file, as the list of its items or as ``str(value)``, because the value as text
    is more useful than a scan whose metadata is missing.
    """
    try:
        return json_safe(value, "metadata")
    except EncodingError:
        pass
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def to_json(value: Any) -> str:
    """JSON text of ``value``: converted as for Redis where possible, else leniently (never raises
    for odd leaf values; see ``_json_default``)."""
    return json.dumps(value, default=_json_default)


def _is_number(value: Any) -> bool:
    return isinstance(value, (numbers.Number, np.bool_)) and not isinstance(value, np.ndarray)


def to_hdf5_value(value: Any) -> np.ndarray:
    """Convert a metadata value into the numpy array h5py will store.

    See the module docstring for the rules. Never raises for odd values (falls back to
    JSON or ``str``); ``None`` must be handled by the caller.
    """
    if isinstance(value, str):
        return np.array(value, dtype=STR_DTYPE)
    if isinstance(value, bytes):
        return np.array(value.decode("utf-8", "replace"), dtype=STR_DTYPE)
    if isinstance(value, (bool, np.bool_)):
        return np.array(value, dtype=bool)
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "US" or value.dtype == object:
            if value.dtype.kind in "US" or all(isinstance(v, str) for v in value.flat):
                return np.array(value.astype(str).tolist(), dtype=STR_DTYPE)
            return np.array(to_json(value), dtype=STR_DTYPE)
        return value
    if isinstance(value, np.generic):
        return np.asarray(value)
    if isinstance(value, numbers.Number):
        arr = np.asarray(value)
        if arr.dtype == object:  # an int beyond 64 bits
            return np.array(str(value), dtype=STR_DTYPE)
        return arr
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, str) for v in value):
            return np.array(list(value), dtype=STR_DTYPE)
        if value and _all_numbers(value, nulls=True):
            try:
                # A None among numbers is a NaN or an infinity, which scan_info stores as JSON
                # null (decision 0005): written as NaN, the list stays a numeric dataset.
                arr = np.asarray(value) if _all_numbers(value) else np.array(value, dtype=float)
            except ValueError:  # ragged nested lists
                arr = np.asarray(None)
            if arr.dtype.kind in "biufc":
                return arr
        return np.array(to_json(value), dtype=STR_DTYPE)
    if isinstance(value, (datetime.datetime, datetime.date)):
        return np.array(value.isoformat(), dtype=STR_DTYPE)
    logger.debug("metadata value %r of type %s stored as str", value, type(value).__name__)
    return np.array(str(value), dtype=STR_DTYPE)


def _all_numbers(seq: Sequence[Any], nulls: bool = False) -> bool:
    """True when ``seq`` (possibly nested lists) holds only numbers (or None, with ``nulls``)."""
    for item in seq:
        if isinstance(item, (list, tuple)):
            if not _all_numbers(item, nulls):
                return False
        elif not (_is_number(item) or (nulls and item is None)):
            return False
    return True


def _same_value(dset: h5py.Dataset, new: np.ndarray) -> bool:
    """True when dataset ``dset`` already holds exactly ``new`` (dtype, shape and values)."""
    if dset.shape != new.shape or dset.is_virtual:
        return False
    new_is_str = h5py.check_string_dtype(new.dtype) is not None
    old_is_str = h5py.check_string_dtype(dset.dtype) is not None
    if new_is_str or old_is_str:
        if not (new_is_str and old_is_str):
            return False
        old = dset.asstr()[()]
        return bool(np.array_equal(np.asarray(old, dtype=object), np.asarray(new, dtype=object)))
    if dset.dtype != new.dtype:
        return False
    old = dset[()]
    equal_nan = new.dtype.kind in "fc"
    return bool(np.array_equal(old, new, equal_nan=equal_nan))


def _write_member(group: h5py.Group, key: str, value: Any) -> h5py.Dataset | None:
    """Write one mapping item as a sub-group or a dataset of ``group`` (idempotent)."""
    if value is None:
        return None
    try:
        name = hdf5_name(key)
    except ValueError:
        logger.warning("metadata key %r in %s cannot be an HDF5 name: skipped", key, group.name)
        return None
    if isinstance(value, Mapping):
        nx_class = value.get("@NX_class")
        existing = group.get(name, getlink=True)
        if existing is not None and not isinstance(group.get(name), h5py.Group):
            del group[name]
        sub = group.get(name)
        if sub is None:
            sub = group.create_group(name, track_order=True)
        if nx_class is not None and not _is_device_group(sub, str(nx_class)):
            _set_attr(sub, "NX_class", str(nx_class))
        write_metadata(sub, value)
        return None
    new = to_hdf5_value(value)
    existing_obj = group.get(name)
    if isinstance(existing_obj, h5py.Dataset):
        if _same_value(existing_obj, new):
            return existing_obj
        logger.debug("metadata %s/%s changed: replaced", group.name, name)
        del group[name]
    elif existing_obj is not None or group.get(name, getlink=True) is not None:
        # A group, or a dangling link, where a value is now expected: the new value wins.
        del group[name]
    return group.create_dataset(name, data=new)


def _is_device_group(group: h5py.Group, nx_class: str) -> bool:
    """True for a device group holding a channel's data, which generic metadata
    (``NXcollection``) must not demote: ESRF's counters are NXdetector groups."""
    return nx_class == NX_COLLECTION and _attr_str(group, "NX_class") in (
        "NXdetector",
        "NXpositioner",
    )


def _set_attr(obj: h5py.HLObject, name: str, value: Any) -> None:
    """Set attribute ``name`` unless it already has that value (no needless metadata writes)."""
    if value is None:
        return
    if isinstance(value, Mapping):
        value = to_json(value)
    new = to_hdf5_value(value)
    if name in obj.attrs:
        old = obj.attrs[name]
        try:
            if isinstance(old, bytes):
                old = old.decode("utf-8", "replace")
            old_arr = np.asarray(old, dtype=object if h5py.check_string_dtype(new.dtype) else None)
            new_cmp = np.asarray(new, dtype=object) if h5py.check_string_dtype(new.dtype) else new
            if old_arr.shape == new_cmp.shape and np.array_equal(old_arr, new_cmp):
                return
        except (TypeError, ValueError):
            pass
    obj.attrs[name] = new
