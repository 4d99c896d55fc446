"""The batches of a scan writer: what a reader of the file being written may see.

Points are held in memory until the end of a read batch, then written so that the members
of each live NXdata (soft links to the growing datasets) have one length at every flush:
silx refuses a plot whose axis is one point longer than its signal. The live plots are
(re)written at the end of a batch too. :class:`LiveBatches` is a base of
:class:`~scanstream.writer.scan_writer.ScanWriter`, which holds the state it uses
(docs/nexus_layout.md, "Reading a file while it is written").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import h5py
import numpy as np

from ..subscribe.data_nodes import ChannelNode, LimaNode, ScanRefNode
from ..subscribe.tree import ScanNode
from . import nexus
from .files import OpenFiles

logger = logging.getLogger(__name__)

#: Bytes of points held back (to keep the members of a live plot at one length) above which
#: they are all written anyway: a plot member that stopped receiving points must not make
#: the writer hold the others in memory without bound.
HOLD_LIMIT = 64 << 20


class LiveBatches:
    """Held points, their commit at the end of a batch, the live plots (module docstring)."""

    # Set by ScanWriter.
    scan: ScanNode
    files: OpenFiles
    info: dict[str, Any]
    _file: h5py.File | None
    _entries: dict[int, h5py.Group]  # top-master node index -> NXentry
    _datasets: dict[int, h5py.Dataset]  # channel node index -> dataset
    _entry_of: dict[int, h5py.Group]  # data node index -> NXentry
    _data_nodes: dict[int, ChannelNode | LimaNode | ScanRefNode]
    _live_plot_pending: bool
    _plotted: dict[str, frozenset[str]]  # entry name -> channels plotted
    _plots_stale: bool
    _grids: set[str]  # entries with a live mesh map
    _held: dict[int, list[tuple[int, Any]]]  # node index -> (first index, values), in order
    _held_bytes: int
    _written: dict[int, int]  # data node index -> points in its dataset
    _plot_groups: dict[str, list[frozenset[int]]]  # entry name -> NXdata members
    _guarded: Callable[..., None]  # metadata: a warning on failure, never an error
    _images_wait: float | None  # seconds until an image VDS lacking frames is due, or None

    def _hold(self, index: int, first: int, values: Any) -> None:
        self._held.setdefault(index, []).append((first, values))
        self._held_bytes += int(getattr(values, "nbytes", 0))

    def _commit(self) -> None:
        """End of a batch: the live plots, then the held points each plot can show whole."""
        self._refresh_live_plots()
        if self._held_bytes > HOLD_LIMIT:
            logger.info("scan %s: live plot members far apart; all written", self.scan.db_name)
            targets: dict[int, int] = {}
        else:
            targets = self._targets()
        for index in list(self._held):
            self._write_held(index, targets.get(index))
        # Image VDS left behind by earlier batches, though no frames came in this one.
        self._complete_images(self.files.flush_period)
        for entry in self._entries.values():
            if entry.name in self._grids:
                nexus.grow_live_grids(entry)  # the mesh rows completed in this batch
        self._held_bytes = sum(
            int(getattr(v, "nbytes", 0)) for chunks in self._held.values() for _, v in chunks
        )

    def _write_all_held(self) -> None:
        """Every held point (the end of the scan), and every image VDS up to date."""
        for index in list(self._held):
            self._write_held(index, None)
        self._held_bytes = 0
        self._complete_images(None)

    def _complete_images(self, interval: float | None) -> float | None:
        """Rebuild the image VDS that lack frames (with ``interval``: those due); the
        seconds until the next one is due, None when all are complete."""
        waits = [
            nexus.complete_image_vds(
                self._entry_of[index]["measurement"], node.name, rebuild_interval=interval
            )
            for index, node in self._data_nodes.items()
            if isinstance(node, LimaNode) and index in self._written
        ]
        self._images_wait = min((w for w in waits if w is not None), default=None)
        return self._images_wait

    def _available(self, index: int) -> int:
        chunks = self._held.get(index)
        held = chunks[-1][0] + len(chunks[-1][1]) if chunks else 0
        return max(self._written.get(index, 0), held)

    def _targets(self) -> dict[int, int]:
        """Points each plotted node may show: the fewest of any node plotted with it."""
        groups = [g for gs in self._plot_groups.values() for g in gs]
        target = {i: self._available(i) for g in groups for i in g}
        changed = True
        while changed:  # nodes shared by two plots couple them: to a fixed point
            changed = False
            for group in groups:
                low = min(target[i] for i in group)
                for i in group:
                    if target[i] > low:
                        target[i] = low
                        changed = True
        return target

    def _write_held(self, index: int, upto: int | None) -> None:
        """Write the held values of node ``index`` before point ``upto`` (None: all)."""
        kept: list[tuple[int, Any]] = []
        for first, values in _contiguous(self._held.pop(index, [])):
            n = len(values)
            if upto is None or first + n <= upto:
                self._write_values(index, first, values)
            elif first < upto:
                self._write_values(index, first, values[: upto - first])
                kept.append((upto, values[upto - first :]))
            else:
                kept.append((first, values))
        if kept:
            self._held[index] = kept

    def _write_values(self, index: int, first: int, values: Any) -> None:
        node = self._data_nodes[index]
        assert self._file is not None
        if isinstance(node, ChannelNode):
            nbytes = (
                values.nbytes
                if isinstance(values, np.ndarray) and values.dtype != object
                else sum(np.asarray(p).nbytes for p in values)
            )
            self.files.check_space(self._file, nbytes)
            end: int = nexus.write_points(self._datasets[index], first, values)
        else:
            assert isinstance(node, LimaNode)  # only channels and images are held
            nexus.require_image_vds(
                self._entry_of[index]["measurement"],
                node.name,
                values,
                dtype=node.dtype,
                frame_shape=node.shape,
                first_index=first,
                # Rebuilt at most once per flush period (readers see flushes only) and
                # spaced by its duration: the mapping of a scan of many detector files is
                # re-encoded at every rebuild (docs/performance.md). Complete at the end.
                rebuild_interval=self.files.flush_period,
            )
            end = first + len(values)
        if index not in self._written:
            self._plots_stale = True  # an image dataset is made with its first frames
        self._written[index] = max(self._written.get(index, 0), end)

    def _refresh_live_plots(self) -> None:
        """(Re)write an entry's live plot when a channel got its dataset since the last one
        (an image dataset is made with its first frames), and note which nodes each of its
        NXdata groups links to."""
        if not self._live_plot_pending or not self._plots_stale:
            return
        self._plots_stale = False
        for entry in self._entries.values():
            paths = nexus.channel_paths(entry)
            nodes = {
                node.name: index
                for index, node in self._data_nodes.items()
                if self._entry_of[index] == entry and node.name in paths
            }
            present = frozenset(n for n in nodes if isinstance(entry.get(paths[n]), h5py.Dataset))
            if not present or self._plotted.get(entry.name) == present:
                continue
            self._plotted[entry.name] = present
            self._guarded(f"{entry.name}: live plot", self._write_plot, entry, self.info, True)
            by_dataset = {entry[paths[n]].name: nodes[n] for n in present}
            groups: list[frozenset[int]] = []
            for group in entry.values():
                if not isinstance(group, h5py.Group) or group.attrs.get("NX_class") != "NXdata":
                    continue
                if nexus.LIVE_GRID_ATTR in group.attrs:
                    self._grids.add(entry.name)
                members = {
                    by_dataset[link.path]
                    for name in group
                    if isinstance(link := group.get(name, getlink=True), h5py.SoftLink)
                    and link.path in by_dataset
                }
                if len(members) > 1:
                    groups.append(frozenset(members))
            self._plot_groups[entry.name] = groups

    def _write_plot(self, entry: h5py.Group, info: Mapping[str, Any], live: bool = False) -> None:
        paths = nexus.channel_paths(entry)
        channels = {
            node.name: paths[node.name]
            for index, node in self._data_nodes.items()
            if self._entry_of[index] == entry and node.name in paths
        }
        nexus.write_default_plot(entry, info.get("plots"), channels, scan_info=info, live=live)


def _contiguous(chunks: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
    """Held ``(first, values)`` chunks with each run of adjacent ones joined into one.

    One write per run instead of one per event: each h5py write costs ~0.1-0.2 ms whatever
    its size, and a fast scan delivers its points in many small events. Arrays are joined
    when they share dtype and point shape, lists (frame references, variable-length points)
    always; anything else stays as it came.
    """
    joined: list[tuple[int, Any]] = []
    run: list[Any] = []
    run_first = run_end = 0

    def close_run() -> None:
        if not run:
            return
        if len(run) == 1:
            joined.append((run_first, run[0]))
        elif all(isinstance(v, list) for v in run):
            joined.append((run_first, [p for v in run for p in v]))
        else:
            joined.append((run_first, np.concatenate(run)))
        run.clear()

    for first, values in chunks:
        if run and first == run_end and _joinable(run[-1], values):
            run.append(values)
        else:
            close_run()
            run.append(values)
            run_first = first
        run_end = first + len(values)
    close_run()
    return joined


def _joinable(a: Any, b: Any) -> bool:
    if isinstance(a, list) and isinstance(b, list):
        return True
    return (
        isinstance(a, np.ndarray)
        and isinstance(b, np.ndarray)
        and a.dtype == b.dtype
        and a.dtype != object
        and a.shape[1:] == b.shape[1:]
    )
