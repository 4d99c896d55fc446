"""The live map of a mesh being scanned: copies of its complete rows, grown in place.

Pure h5py; :func:`.plots.write_default_plot` creates the map (``live=True``) and the writer
calls :func:`grow_live_grids` at the end of each batch.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import h5py

from .layout import nexus_name
from .metadata import require_nx_group
from .nxdata import copy_attrs, is_nxdata, member_name
from .plot_specs import Grid

__all__ = ["LIVE_GRID_ATTR", "grow_live_grids", "write_live_grid"]

#: Attribute of a live mesh map: the paths of its signal, slow and fast axis sources.
LIVE_GRID_ATTR = "scanstream_live_grid"

logger = logging.getLogger(__name__)


def write_live_grid(
    entry: h5py.Group,
    grid: Grid,
    datasets: Mapping[str, h5py.Dataset],
    used_groups: set[str],
    scan_title: Any,
) -> h5py.Group:
    """The map of a mesh being scanned: plain datasets holding copies of its complete rows.

    A virtual dataset cannot be grown in place here (its mappings are fixed at creation and
    HDF5 refuses an unlimited mapping that reshapes a 1-D source into rows), so the live
    map copies the rows (a few bytes per point: the signal of a map is 0-D) into chunked
    datasets that :func:`grow_live_grids` extends as rows complete. The final plot replaces
    them with views of ``measurement/`` at the end of the scan.
    """
    gname = nexus_name(grid.name)
    while gname in used_groups or (gname in entry and not is_nxdata(entry[gname])):
        gname = f"plot_{gname}"
    used_groups.add(gname)
    group = require_nx_group(entry, gname, "NXdata")
    for member in list(group):
        del group[member]
    for key in list(group.attrs):
        if key != "NX_class":
            del group.attrs[key]
    members: set[str] = set()
    signal, slow, fast = (datasets[c] for c in (grid.signals[0], *grid.axes))
    names = [member_name(d.name, members) for d in (signal, slow, fast)]
    n1, n2 = grid.fast, max(grid.slow, 1)
    row_chunk = max(1, min(n2, (1 << 16) // max(1, n1 * signal.dtype.itemsize)))
    made = group.create_dataset(
        names[0],
        shape=(0, n1),
        maxshape=(n2, n1),
        dtype=signal.dtype,
        chunks=(row_chunk, n1),
        fillvalue=signal.fillvalue,
    )
    copy_attrs(signal, made)
    for name, source, size in ((names[1], slow, n2), (names[2], fast, n1)):
        made = group.create_dataset(
            name, shape=(0,), maxshape=(size,), dtype=source.dtype, chunks=(min(size, 4096),)
        )
        copy_attrs(source, made)
    group.attrs[LIVE_GRID_ATTR] = [signal.name, slow.name, fast.name, *names]
    group.attrs["scanstream_fast_points"] = n1
    title = grid.title or scan_title
    if title:
        group["title"] = str(title)
    _grow_grid(group)
    return group


def _grow_grid(group: h5py.Group) -> bool:
    """Copy the rows completed since the last call; True when the map has a row."""
    file = group.file
    src_signal, src_slow, src_fast, signal_name, slow_name, fast_name = (
        str(v.decode() if isinstance(v, bytes) else v) for v in group.attrs[LIVE_GRID_ATTR]
    )
    n1 = int(group.attrs["scanstream_fast_points"])
    sources = [file.get(p) for p in (src_signal, src_slow, src_fast)]
    if not all(isinstance(d, h5py.Dataset) for d in sources):
        return False
    signal, slow, fast = group[signal_name], group[slow_name], group[fast_name]
    rows = min(min(int(d.shape[0]) for d in sources) // n1, int(signal.maxshape[0] or 0))
    done = int(signal.shape[0])
    if rows > done:
        values = sources[0][done * n1 : rows * n1].reshape(rows - done, n1)
        signal.resize(rows, axis=0)
        signal[done:rows] = values
        slow.resize(rows, axis=0)
        slow[done:rows] = sources[1][done * n1 : rows * n1 : n1]
        if fast.shape[0] == 0:
            fast.resize(n1, axis=0)
            fast[:] = sources[2][0:n1]
    if rows and group.attrs.get("signal") != signal_name:
        group.attrs["signal"] = signal_name
        group.attrs["axes"] = [slow_name, fast_name]
        group.attrs[f"{slow_name}_indices"] = 0
        group.attrs[f"{fast_name}_indices"] = 1
    return rows > 0


def grow_live_grids(entry: h5py.Group) -> None:
    """Extend the live mesh maps of ``entry`` with the rows completed since the last call.

    The map becomes the entry's default plot with its first complete row (the scatter is
    until then). Call it when the channels are in a state readers may see (the writer: at
    the end of each batch). Never raises: a plot is not worth failing a scan for.
    """
    try:
        for name, group in entry.items():
            if is_nxdata(group) and LIVE_GRID_ATTR in group.attrs:
                has_row = _grow_grid(group)
                default = entry.attrs.get("default")
                if has_row and default == f"{name}_scatter":
                    entry.attrs["default"] = name
    except Exception:
        logger.exception("%s: live mesh map not grown", entry.name)
