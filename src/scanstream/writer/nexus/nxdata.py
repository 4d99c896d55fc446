"""Writing one NXdata group: members as soft links, cut copies or views; the ``@default``
chain.

Pure h5py; :mod:`.plots` calls :func:`write_nxdata` for each plot :mod:`.plot_specs` chose.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import h5py

from .layout import nexus_name
from .metadata import require_nx_group
from .plot_specs import Grid, Plot, common_length

__all__ = [
    "VIEW_MAX_MAPPINGS",
    "copy_attrs",
    "entry_order",
    "is_nxdata",
    "member_name",
    "set_default_chain",
    "write_nxdata",
]


def is_nxdata(obj: Any) -> bool:
    """True for an NXdata group."""
    return isinstance(obj, h5py.Group) and obj.attrs.get("NX_class") == "NXdata"


def member_name(path: str, used: set[str]) -> str:
    base = nexus_name(path.rsplit("/", 1)[-1]) or "data"
    name, k = base, 1
    while name in used:
        k += 1
        name = f"{base}_{k}"
    used.add(name)
    return name


#: Above this many points, a cut N-D member is one virtual mapping instead of one per point.
VIEW_MAX_MAPPINGS = 4096


def _view(
    group: h5py.Group, member: str, source: h5py.Dataset, shape: tuple[int, ...], parts: list[Any]
) -> None:
    """``group[member]``: a virtual dataset over parts of ``source`` (same file, no copy).

    ``parts``: ``(layout_selection, source_selection)`` pairs. nexusformat (nxvalidate) reads
    the length of a virtual dataset as its number of mappings, so callers map one point (or
    row) per mapping where they can.
    """
    layout = h5py.VirtualLayout(shape=shape, dtype=source.dtype)
    vsource = h5py.VirtualSource(".", source.name, shape=source.shape, dtype=source.dtype)
    for target, selection in parts:
        layout[target] = vsource[selection]
    view = group.create_virtual_dataset(member, layout, fillvalue=source.fillvalue)
    copy_attrs(source, view)


def _copy(group: h5py.Group, member: str, source: h5py.Dataset, selection: Any) -> None:
    """``group[member]``: a copy of part of a 1-D ``source`` (final data: a few bytes/point)."""
    copy_attrs(source, group.create_dataset(member, data=source[selection]))


def copy_attrs(source: h5py.Dataset, target: h5py.Dataset) -> None:
    for key in ("units", "interpretation"):
        if key in source.attrs:
            target.attrs[key] = source.attrs[key]


def _cut(group: h5py.Group, member: str, source: h5py.Dataset, length: int) -> None:
    """``group[member]``: the first ``length`` points of ``source``."""
    if source.ndim == 1:
        _copy(group, member, source, slice(0, length))
        return
    shape = (length, *source.shape[1:])
    parts: list[Any]
    if length <= VIEW_MAX_MAPPINGS:
        parts = [(i, i) for i in range(length)]
    else:
        parts = [(slice(0, length), slice(0, length))]
    _view(group, member, source, shape, parts)


def write_nxdata(
    entry: h5py.Group,
    spec: Plot,
    datasets: Mapping[str, h5py.Dataset],
    used_groups: set[str],
    scan_title: Any,
    live: bool = False,
) -> h5py.Group:
    gname = nexus_name(spec.name)
    existing = entry.get(gname)
    while gname in used_groups or (
        existing is not None
        and not (isinstance(existing, h5py.Group) and existing.attrs.get("NX_class") == "NXdata")
    ):
        gname = f"plot_{gname}"
        existing = entry.get(gname)
    used_groups.add(gname)
    group = require_nx_group(entry, gname, "NXdata")
    for member in list(group):  # rebuilt at each call: links and trimmed views alike
        del group[member]
    members: set[str] = set()
    signal_names = [member_name(datasets[c].name, members) for c in spec.signals]
    axis_names = [member_name(datasets[c].name, members) for c in spec.axes]
    names = dict(zip([*spec.signals, *spec.axes], [*signal_names, *axis_names]))
    # Equal lengths inside the NXdata: every member is cut to the points all of them have
    # (an aborted scan whose channels stopped at different points); measurement/ keeps all.
    length = common_length(datasets, names)
    if isinstance(spec, Grid):
        rows = length // spec.fast
        signal = datasets[spec.signals[0]]
        slow, fast = (datasets[c] for c in spec.axes)
        n = spec.fast
        grid = [((r, slice(None)), slice(r * n, (r + 1) * n)) for r in range(rows)]
        _view(group, signal_names[0], signal, (rows, n), grid)
        _copy(group, axis_names[0], slow, slice(0, rows * n, n))
        _copy(group, axis_names[1], fast, slice(0, n))
    else:
        for channel, member in names.items():
            dset = datasets[channel]
            if live or dset.shape[0] == length:
                group[member] = h5py.SoftLink(dset.name)
            else:
                _cut(group, member, dset, length)
    signal_ndim = 2 if isinstance(spec, Grid) else datasets[spec.signals[0]].ndim
    attrs: dict[str, Any] = {"signal": signal_names[0]}
    if len(signal_names) > 1:
        attrs["auxiliary_signals"] = signal_names[1:]
    if isinstance(spec, Grid):
        attrs["axes"] = axis_names
        attrs[f"{axis_names[0]}_indices"] = 0
        attrs[f"{axis_names[1]}_indices"] = 1
    elif spec.scatter:
        # 1-D signal with one 1-D coordinate per axis, all along the point index: the
        # convention silx shows as a scatter plot (also right for an aborted mesh).
        attrs["axes"] = axis_names
        for name in axis_names:
            attrs[f"{name}_indices"] = 0
    elif axis_names:
        # '.' marks the dimensions without an axis (NeXus NXdata@axes).
        attrs["axes"] = axis_names[:1] + ["."] * (signal_ndim - 1)
        attrs[f"{axis_names[0]}_indices"] = 0
    # No axis at all: no @axes (it is optional), rather than a list of '.' only, which
    # viewers read the same way and some validators (punx 0.3) reject.
    for key in list(group.attrs):
        if key not in attrs and key != "NX_class":
            del group.attrs[key]
    for key, value in attrs.items():
        group.attrs[key] = value
    title = spec.title or scan_title
    if title:
        # A field, not an attribute: NXdata defines ``title`` as a field (h5web reads it).
        group["title"] = str(title)
    return group


def entry_order(name: Any) -> tuple[int, int]:
    """(scan number, top master) of an entry name (``"12.1"``, ``"scan12_1"``), else (-1, -1)."""
    if isinstance(name, bytes):
        name = name.decode()
    match = re.fullmatch(r"(?:scan)?(\d+)[._](\d+)", str(name))
    return (int(match[1]), int(match[2])) if match else (-1, -1)


def set_default_chain(nxdata: h5py.Group) -> None:
    """``@default`` on every ancestor of ``nxdata``, naming the child on the way down."""
    child = nxdata
    while child.name != "/":
        parent = child.parent
        basename = child.name.rsplit("/", 1)[-1]
        if parent.name == "/" and entry_order(parent.attrs.get("default")) > entry_order(basename):
            break  # the root's default is the newest scan, not the last one finished
        if parent.attrs.get("default") != basename:
            parent.attrs["default"] = basename
        child = parent
