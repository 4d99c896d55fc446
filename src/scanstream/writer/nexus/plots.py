"""Plots of the NeXus layout: NXdata groups and ``@default``.

Pure h5py, no Redis knowledge; :mod:`scanstream.writer.nexus` re-exports the public names.
:func:`write_default_plot` turns ``scan_info["plots"]`` into NXdata groups of soft links to
the measurement datasets and points the ``@default`` chain at the first one, so standard
viewers open the scan's plot. Which groups (:mod:`.plot_specs`), one group written
(:mod:`.nxdata`), a mesh's live map (:mod:`.grids`); a scan group's links to its sub-scans:
:mod:`.sequences`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import h5py

from .grids import write_live_grid
from .nxdata import set_default_chain, write_nxdata
from .plot_specs import (
    Plot,
    fallback_axes,
    fallback_plot,
    grid_plot,
    known,
    plots_from_scan_info,
    split_by_rank,
)

__all__ = ["write_default_plot"]

logger = logging.getLogger(__name__)


def write_default_plot(
    entry: h5py.Group,
    plots: Sequence[Mapping[str, Any]] | None,
    channels: Mapping[str, str],
    *,
    scan_info: Mapping[str, Any] | None = None,
    live: bool = False,
) -> h5py.Group | None:
    """Create NXdata groups for the scan's plots and point ``@default`` at the first one.

    Never raises: a plot naming an unknown channel is skipped with a warning, and any other
    problem is logged, because a plot is not worth failing a scan for.

    Parameters
    ----------
    entry : h5py.Group
        The NXentry.
    plots : list of dict or None
        ``scan_info["plots"]`` (BLISS format): ``{"kind": "curve-plot", "name"?, "items":
        [{"kind": "curve", "x", "y"}]}``, ``"scatter-plot"`` with ``{"kind": "scatter", "x",
        "y", "value"}`` items, ``"image-plot"`` with ``{"kind": "image", "image"}`` items.
        None: use ``scan_info["plots"]``, and when that is absent too, the fallback (first
        axis vs first counter; for ``data_dim == 2`` a scatter of the first counter over the
        first two axes; else the first image, else the first spectrum). An empty list means
        "no plot" (BLISS convention): nothing is written. A plot list that yields nothing
        usable also falls back.
    channels : Mapping[str, str]
        Channel full name -> dataset path (absolute, or relative to ``entry``). Order
        matters for the fallback. Datasets that do not exist yet are skipped.
    scan_info : Mapping, optional
        For ``plots``, ``data_dim``, ``acquisition_chain`` (which channels are masters),
        ``_display_extra["plotselect"]`` (the user's selected counters, plotted first as
        ``plotselect``) and ``title``.
    live : bool
        The plot of a scan being written: every member is a soft link to its growing
        dataset, whatever the lengths now (the writer keeps the members of each NXdata at
        one length whenever the file is flushed); a mesh gets its map as copies of its
        complete rows, grown in place by :func:`grow_live_grids` (its scatter is the
        default plot until the first row is complete).

    Returns
    -------
    h5py.Group or None
        The default NXdata group.

    Notes
    -----
    Each NXdata group is named after its plot (``plotselect`` for the first one and the
    fallback, the plot's ``name`` for the others). Signals of another rank than the first
    go to ``<name>_<rank>d`` (one NXdata per rank: silx refuses auxiliary signals of another
    rank). Members are named after the basename of their dataset path (the short names of
    ``measurement/``, made valid for NeXus) and are *soft links*, except where the members
    have different lengths (an aborted scan): all are then cut to the common length, 1-D
    members as copies and N-D ones as virtual datasets, while ``measurement/`` keeps all
    the points. A mesh (``data_dim`` 2, ``npoints1`` fast x ``npoints2`` slow, not
    back-and-forth) with at least one complete row becomes a 2-D map (signal
    ``(rows, npoints1)``, ``@axes = [slow, fast]``, ``@<axis>_indices``) and its scatter goes
    to ``<name>_scatter``. The title is a ``title`` field. ``@default`` is set on the entry
    and on every parent up to the root, except that the root keeps naming the newest scan
    (highest scan number) when an older one is plotted later.
    """
    try:
        return _write_default_plot(entry, plots, channels, scan_info or {}, live)
    except Exception:
        logger.exception("%s: default plot not written", entry.name)
        return None


def _write_default_plot(
    entry: h5py.Group,
    plots: Sequence[Mapping[str, Any]] | None,
    channels: Mapping[str, str],
    scan_info: Mapping[str, Any],
    live: bool = False,
) -> h5py.Group | None:
    if plots is None:
        plots = scan_info.get("plots")
    if plots is not None and len(plots) == 0:
        logger.debug("%s: scan_info asks for no plot", entry.name)
        return None
    datasets: dict[str, h5py.Dataset] = {}
    for channel, path in channels.items():
        obj = entry.get(path)
        if isinstance(obj, h5py.Dataset):
            datasets[channel] = obj
        else:
            logger.warning(
                "%s: channel %r has no dataset at %r; not plotted", entry.name, channel, path
            )
    specs = plots_from_scan_info(entry, plots or [], datasets)
    plotselect = (scan_info.get("_display_extra") or {}).get("plotselect")
    if plotselect:
        ys = [y for y in plotselect if known(entry, y, datasets)]
        if ys:
            axes = (
                specs[0].axes
                if specs and not specs[0].scatter
                else fallback_axes(datasets, scan_info)[:1]
            )
            specs.insert(0, Plot("plotselect", ys, axes))
    if not specs:
        specs = fallback_plot(datasets, scan_info)
    if not specs:
        logger.info("%s: no channel to plot", entry.name)
        return None
    default: h5py.Group | None = None
    used: set[str] = set()
    for spec in split_by_rank(specs, datasets):
        if spec.scatter:
            grid = grid_plot(spec, datasets, scan_info, live)
            if grid is not None:
                title = scan_info.get("title")
                if live:
                    group = write_live_grid(entry, grid, datasets, used, title)
                    if group.attrs.get("signal") is not None:
                        default = default or group
                else:
                    group = write_nxdata(entry, grid, datasets, used, title)
                    default = default or group
                spec = Plot(f"{spec.name}_scatter", spec.signals, spec.axes, True, spec.title)
        group = write_nxdata(entry, spec, datasets, used, scan_info.get("title"), live)
        if default is None:
            default = group
    if default is not None:
        set_default_chain(default)
    return default
