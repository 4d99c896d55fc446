"""What a scan writer writes at the end of a scan besides the data: the instrument's device
groups (links to the data, each device's node info), the scan_info metadata categories and
a sequence's links to its sub-scans.

:class:`EndOfScan` is a base of :class:`~scanstream.writer.scan_writer.ScanWriter`, which
holds the state it reads (the nodes, their entries, the write policy).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py

from ..exceptions import ScanstreamError
from ..models import SavingMode
from ..subscribe.data_nodes import ChannelNode, LimaNode, ScanRefNode
from ..subscribe.nodes import ScanMemberNode
from ..subscribe.tree import ScanNode
from . import nexus
from .paths import WritePolicy

logger = logging.getLogger(__name__)

#: Node info keys not recorded in the device groups: the creation keys (the dataset's dtype,
#: shape and ``@units`` hold them; decision 0013) and the saving mode (``saving_mode`` of a
#: Lima group that saves nothing).
DEVICE_INFO_SKIPPED = frozenset({"dtype", "shape", "unit", "saving_mode"})

#: scan_info keys written as NeXus groups at the end of the scan (besides those listed in
#: ``scan_info["scan_meta_categories"]``), with their NeXus class.
METADATA_CLASSES = {"sample": "NXsample", "technique": "NXcollection", "instrument": "NXinstrument"}


#: Classes of the device groups that hold a channel's data.
DEVICE_CLASSES = ("NXdetector", "NXpositioner")


def _attr(obj: h5py.HLObject, name: str) -> str | None:
    value = obj.attrs.get(name)
    return value.decode() if isinstance(value, bytes) else None if value is None else str(value)


def _write_info(group: h5py.Group, info: Mapping[str, Any]) -> None:
    """The keys of a node's ``info`` that the file does not hold yet, into ``group``."""
    kept = {
        k: v
        for k, v in info.items()
        if k not in DEVICE_INFO_SKIPPED and nexus.hdf5_name(k) not in group
    }
    if kept:
        nexus.write_metadata(group, kept)


class EndOfScan:
    """The end-of-scan metadata of a scan writer (see the module docstring)."""

    # Set by ScanWriter.
    policy: WritePolicy
    strict_names: bool
    _data_nodes: dict[int, ChannelNode | LimaNode | ScanRefNode]
    _entry_of: dict[int, h5py.Group]  # data node index -> NXentry
    _device_groups: dict[int, h5py.Group]  # data node index -> its device group
    _unsaved_frames: dict[int, int]
    _subscans: list[ScanNode]
    _containers: dict[int, tuple[ScanMemberNode, h5py.Group]]  # node index -> (node, entry)

    def _write_instrument(self, entry: h5py.Group, info: Mapping[str, Any]) -> None:
        instrument = entry["instrument"]
        positioners = info.get("positioners")
        if isinstance(positioners, Mapping):
            nexus.write_scan_info_positioners(instrument, positioners)
        used: set[str] = set(instrument)
        placed = nexus.channel_paths(entry) if nexus.entry_layout(entry) == "esrf" else {}
        for index, node in self._data_nodes.items():
            if self._entry_of[index] == entry and not isinstance(node, ScanRefNode):
                if node.name not in placed:  # the esrf layout put the data in its device
                    self._link_device(instrument, node, used)
        if isinstance(positioners, Mapping):  # again: positioners/<motor> -> scanned values
            nexus.write_scan_info_positioners(instrument, positioners)

    def _link_device(
        self, instrument: h5py.Group, node: ChannelNode | LimaNode, used: set[str]
    ) -> None:
        """``instrument/<device>``: NXpositioner (motors) or NXdetector linking to the data."""
        prefix, _, short = node.name.rpartition(":")
        is_motor = prefix == "axis"
        name = nexus.nexus_name(prefix if isinstance(node, LimaNode) and prefix else short)
        if name in used:
            name = nexus.nexus_name(node.name)
            if name in used:
                return
        used.add(name)
        group = nexus.require_nx_group(
            instrument, name, "NXpositioner" if is_motor else "NXdetector"
        )
        self._device_groups[node.index] = group
        measurement = f"{self._entry_of[node.index].name}/measurement/"
        dsname = nexus.channel_dataset_name(node.name)
        if isinstance(node, LimaNode) and node.saving_mode == SavingMode.NOSAVING:
            nexus.write_value(group, "saving_mode", "NOSAVING")
            nexus.write_value(group, "acquired_frames", self._unsaved_frames.get(node.index, 0))
            return
        if dsname in self._entry_of[node.index]["measurement"]:
            member = "value" if is_motor else "data"
            if member not in group:
                group[member] = h5py.SoftLink(measurement + dsname)

    def _write_device_info(self, entry: h5py.Group) -> None:
        """Each device's info (its publisher's ``update_info`` included) in its device group,
        as ESRF's writer records device metadata: the keys the file already has from
        elsewhere (creation keys, the data, members of the group) are left out.

        Channels and images first, then the containers (controllers) that have a device
        group of their name (``simu1`` -> ``instrument/simu1``, the group of its spectra).
        """
        file = entry.file
        instrument = entry["instrument"]
        paths: dict[str, str] | None = None  # read once: each read walks measurement/
        for index, node in self._data_nodes.items():
            if self._entry_of[index] != entry or isinstance(node, ScanRefNode):
                continue
            group = self._device_groups.get(index)
            if group is None:  # the esrf layout: measurement/<short> -> instrument/<dev>/data
                link = None
                if paths is None:
                    paths = nexus.channel_paths(entry)
                path = paths.get(node.name)
                if path is not None:
                    link = file.get(path, getlink=True)
                if isinstance(link, h5py.SoftLink):
                    parent = file.get(link.path.rpartition("/")[0])
                    if isinstance(parent, h5py.Group) and parent.name.startswith(
                        f"{instrument.name}/"
                    ):
                        group = parent
            if group is not None:
                _write_info(group, node.info)
        for container, container_entry in self._containers.values():
            if container_entry != entry:
                continue
            group = instrument.get(nexus.nexus_name(container.name))
            if isinstance(group, h5py.Group) and _attr(group, "NX_class") in DEVICE_CLASSES:
                _write_info(group, container.info)

    def _write_metadata(self, entry: h5py.Group, info: Mapping[str, Any]) -> None:
        categories = info.get("scan_meta_categories") or []
        names = [c for c in categories if isinstance(c, str)] + list(METADATA_CLASSES)
        for key in dict.fromkeys(names):
            value = info.get(key)
            if key == "positioners" or not isinstance(value, Mapping):
                continue
            group = nexus.require_nx_group(entry, nexus.hdf5_name(key), METADATA_CLASSES.get(key))
            nexus.write_metadata(group, value)

    def _link_subscans(self, entry: h5py.Group) -> None:
        """``scans/<N.k>``: every entry of every sub-scan (one per top master), and the
        sequence's default plot: the plot of its last sub-scan that asks for one."""
        links: list[str | tuple[Path, str]] = []
        plot: tuple[Path, str, str] | None = None
        for sub in self._subscans:
            # Through the sub-scan's session file (its entries may live in any scan file).
            path = self.policy.scan_file(sub.info, sub.session_name).resolve()
            names = [
                nexus.entry_name(sub.number, k, strict_names=self.strict_names)
                for k in range(1, self._top_masters(sub) + 1)
            ]
            links.extend((path, name) for name in names)
            # Its plot may not be written yet (its writer may still be at work): named from
            # its scan_info; the external link resolves once it is.
            nxdata = nexus.default_plot_name(sub.info)
            plot = (path, names[0], nxdata) if nxdata else plot
        nexus.link_subscan_entries(entry, links)
        if plot is not None:
            nexus.link_subscan_plot(entry, *plot)

    @staticmethod
    def _top_masters(sub: ScanNode) -> int:
        """Entries of a sub-scan: its top masters (the children of the scan), at least 1."""
        try:
            return max(1, len(sub.children()))
        except ScanstreamError as exc:  # expired from Redis: its first entry at least
            logger.info("sub-scan %s: top masters unknown (%s); linking N.1", sub.db_name, exc)
            return 1
