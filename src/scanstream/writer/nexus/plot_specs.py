"""Which NXdata groups a scan gets: its plots read from ``scan_info``, or the fallback.

Pure logic over the channels' datasets (nothing is written here): :mod:`.plots` writes what
these functions choose. One :class:`Plot` per NXdata; a regular mesh also gets a
:class:`Grid` (its 2-D map).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import h5py

from .layout import nexus_name

__all__ = [
    "Grid",
    "Plot",
    "common_length",
    "default_plot_name",
    "fallback_axes",
    "fallback_plot",
    "grid_plot",
    "known",
    "plots_from_scan_info",
    "split_by_rank",
]

logger = logging.getLogger(__name__)


@dataclass
class Plot:
    """One NXdata to write: its signals, its axes (channel names), scatter or not."""

    name: str
    signals: list[str]
    axes: list[str]  # channel names; empty = plot against the point index
    scatter: bool = False
    title: str | None = None


def split_by_rank(specs: list[Plot], datasets: Mapping[str, h5py.Dataset]) -> list[Plot]:
    """One NXdata per data rank: viewers (silx) refuse auxiliary signals of another rank."""
    out: list[Plot] = []
    for spec in specs:
        by_rank: dict[int, list[str]] = {}
        for name in spec.signals:
            by_rank.setdefault(datasets[name].ndim, []).append(name)
        for k, (ndim, signals) in enumerate(by_rank.items()):
            name = spec.name if k == 0 else f"{spec.name}_{ndim - 1}d"
            out.append(Plot(name, signals, spec.axes, spec.scatter, spec.title))
    return out


@dataclass
class Grid(Plot):
    """A mesh: signal reshaped (slow, fast); axes = [slow, fast] channels."""

    fast: int = 0
    slow: int = 0


def grid_plot(
    spec: Plot,
    datasets: Mapping[str, h5py.Dataset],
    scan_info: Mapping[str, Any],
    live: bool = False,
) -> Grid | None:
    """The 2-D map of a regular mesh (``npoints1`` fast x ``npoints2`` slow), or None.

    Not live, the mesh needs one complete row (else the scatter is its plot).
    """
    n1, n2 = scan_info.get("npoints1"), scan_info.get("npoints2")
    if scan_info.get("data_dim") != 2 or not isinstance(n1, int) or not isinstance(n2, int):
        return None
    if n1 < 1 or n2 < 1 or len(spec.axes) != 2 or datasets[spec.signals[0]].ndim != 1:
        return None
    kinds = {
        str(c.get("axis-kind"))
        for c in (scan_info.get("channels") or {}).values()
        if isinstance(c, Mapping) and c.get("axis-kind") is not None
    }
    if kinds - {"forth"}:
        return None  # back-and-forth rows cannot be mapped without copying: scatter only
    if not live and common_length(datasets, [*spec.signals, *spec.axes]) < n1:
        return None  # not one full row yet: the scatter is the plot
    fast, slow = spec.axes
    return Grid(spec.name, spec.signals[:1], [slow, fast], False, spec.title, fast=n1, slow=n2)


def common_length(datasets: Mapping[str, h5py.Dataset], names: Iterable[str]) -> int:
    return min(int(datasets[n].shape[0]) for n in names)


def known(entry: h5py.Group, channel: Any, datasets: Mapping[str, h5py.Dataset]) -> bool:
    if channel in datasets:
        return True
    logger.warning("%s: plot names unknown channel %r; item skipped", entry.name, channel)
    return False


def plots_from_scan_info(
    entry: h5py.Group, plots: Sequence[Mapping[str, Any]], datasets: Mapping[str, h5py.Dataset]
) -> list[Plot]:
    specs: list[Plot] = []
    for index, plot in enumerate(plots):
        if not isinstance(plot, Mapping):
            continue
        kind = plot.get("kind")
        base = str(plot.get("name") or ("plotselect" if index == 0 else f"plot{index}"))
        items = [it for it in plot.get("items") or () if isinstance(it, Mapping)]
        if kind in ("curve-plot", "1d-plot"):
            by_x: dict[str, list[str]] = {}  # insertion ordered: first x is the main one
            for item in items:
                x, y = item.get("x"), item.get("y")
                if y is None or not known(entry, y, datasets):
                    continue
                if x is not None and not known(entry, x, datasets):
                    continue
                by_x.setdefault(x or "", []).append(y)
            for k, (x, ys) in enumerate(by_x.items()):
                specs.append(
                    Plot(
                        base if k == 0 else f"{base}_{k}",
                        ys,
                        [x] if x else [],
                        title=plot.get("name"),
                    )
                )
        elif kind == "scatter-plot":
            for k, item in enumerate(items):
                found = [item.get("value"), item.get("x"), item.get("y")]
                if None in found or not all(known(entry, n, datasets) for n in found):
                    continue
                names = [str(n) for n in found]
                specs.append(
                    Plot(
                        base if k == 0 else f"{base}_{k}",
                        [names[0]],
                        names[1:],
                        scatter=True,
                        title=plot.get("name"),
                    )
                )
        elif kind == "image-plot":
            for k, item in enumerate(items):
                image = item.get("image")
                if image is not None and known(entry, image, datasets):
                    specs.append(
                        Plot(base if k == 0 else f"{base}_{k}", [image], [], title=plot.get("name"))
                    )
        else:
            logger.debug("%s: plot kind %r not written as NXdata", entry.name, kind)
    return specs


def _master_channels(scan_info: Mapping[str, Any]) -> list[str]:
    names: list[str] = []
    chain = scan_info.get("acquisition_chain") or {}
    if isinstance(chain, Mapping):
        for top in chain.values():
            master = (top or {}).get("master") or {}
            names.extend(master.get("scalars") or ())
    return names


def fallback_axes(datasets: Mapping[str, h5py.Dataset], scan_info: Mapping[str, Any]) -> list[str]:
    scalars = [n for n, d in datasets.items() if d.ndim == 1]
    axes = [n for n in scalars if n.startswith("axis:")]
    if not axes:
        masters = set(_master_channels(scan_info))
        axes = [n for n in scalars if n in masters and not n.endswith("epoch")]
    return axes


def fallback_plot(datasets: Mapping[str, h5py.Dataset], scan_info: Mapping[str, Any]) -> list[Plot]:
    axes = fallback_axes(datasets, scan_info)
    masters = set(_master_channels(scan_info)) | set(axes)
    counters = [
        n
        for n, d in datasets.items()
        if d.ndim == 1 and n not in masters and not n.endswith(("epoch", "elapsed_time"))
    ]
    if counters:
        if scan_info.get("data_dim") == 2 and len(axes) >= 2:
            return [Plot("plotselect", counters[:1], axes[:2], scatter=True)]
        return [Plot("plotselect", counters[:1], axes[:1])]
    for ndim in (3, 2):  # images, then spectra
        for n, d in datasets.items():
            if d.ndim == ndim:
                return [Plot("plotselect", [n], [])]
    # Only master channels (a scan whose channels all hang on its top master): plot the
    # first of them against the point index, so that every entry with data has a plot.
    scalars = [n for n, d in datasets.items() if d.ndim == 1 and not n.endswith("epoch")]
    return [Plot("plotselect", scalars[:1], [])] if scalars else []


def default_plot_name(scan_info: Mapping[str, Any]) -> str | None:
    """The name :func:`write_default_plot` gives a scan's default NXdata, from its
    ``scan_info`` alone (for a link made before the plot exists); None: no plot asked for."""
    if (scan_info.get("_display_extra") or {}).get("plotselect"):
        return "plotselect"
    plots = scan_info.get("plots")
    if plots is not None and len(plots) == 0:
        return None
    first = plots[0] if plots else None
    if isinstance(first, Mapping) and first.get("name"):
        return nexus_name(str(first["name"]))
    return "plotselect"
