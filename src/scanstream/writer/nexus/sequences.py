"""Scan groups (sequences) of the NeXus layout: links to the sub-scans' entries and plot.

Pure h5py, no Redis knowledge; :mod:`scanstream.writer.nexus` re-exports the public names.
A sequence has no data of its own: :func:`link_subscan_entries` links every entry of its
sub-scans into ``scans/``, :func:`link_subscan_plot` makes a sub-scan's default plot its own.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

import h5py

from .images import stored_path
from .metadata import NX_COLLECTION, hdf5_name, require_nx_group
from .nxdata import entry_order, is_nxdata

__all__ = ["link_subscan_entries", "link_subscan_plot"]

logger = logging.getLogger(__name__)


def link_subscan_entries(
    group_entry: h5py.Group,
    subscan_entry_names: Iterable[str | tuple[str | os.PathLike[str], str]],
) -> h5py.Group:
    """Link the entries of the sub-scans of a scan group into ``<group_entry>/scans``.

    Parameters
    ----------
    group_entry : h5py.Group
        The NXentry of the scan group (sequence).
    subscan_entry_names : iterable of str or (file_path, entry_name)
        An entry name (``"13.1"``) of the same file gives a *soft link* ``scans/13.1`` ->
        ``/13.1``; a ``(file_path, entry_name)`` pair gives an external link (relative path
        when the file is below the master file's directory).

    Returns
    -------
    h5py.Group
        The NXcollection ``scans``.

    Notes
    -----
    Soft rather than hard links: a sub-scan entry that is not written yet (a restarted
    writer catching up scans in another order) is linked anyway and resolves as soon as it
    exists; viewers show the link for what it is, and a recursive walk does not see every
    sub-scan twice. Entries absent at call time are logged.
    """
    scans = require_nx_group(group_entry, "scans", NX_COLLECTION)
    master_file = os.path.abspath(group_entry.file.filename)
    master_dir = os.path.dirname(master_file)
    root = group_entry.file
    for item in subscan_entry_names:
        link: h5py.SoftLink | h5py.ExternalLink
        if isinstance(item, str):
            member = hdf5_name(item)
            link = h5py.SoftLink(f"/{member}")
            if member not in root:
                logger.info(
                    "%s: sub-scan entry %r not in the file yet; linked anyway",
                    group_entry.name,
                    item,
                )
        else:
            file_path, name = item
            member = hdf5_name(name)
            link = h5py.ExternalLink(
                stored_path(os.fspath(file_path), master_dir, master_file), f"/{member}"
            )
        existing = scans.get(member, getlink=True)
        if existing is not None:
            same = (
                type(existing) is type(link)
                and getattr(existing, "path", None) == link.path
                and getattr(existing, "filename", None) == getattr(link, "filename", None)
            )
            if same:
                continue
            del scans[member]
        scans[member] = link
    return scans


def link_subscan_plot(
    group_entry: h5py.Group,
    file_path: str | os.PathLike[str],
    entry_name: str,
    nxdata_name: str,
    *,
    name: str = "plotselect",
) -> None:
    """Make a sub-scan's default plot the default plot of a scan group (sequence).

    A sequence has no data of its own but its scan numbers: its plot is
    ``<group_entry>/<name>`` (replacing the NXdata of the scan numbers), an external link to
    the NXdata ``/<entry_name>/<nxdata_name>`` of ``file_path`` (relative when
    below the group's file), and ``@default`` names it, so viewers open a sequence on its
    sub-scan's plot. The root's ``@default`` moves to the group only if it is the newest
    scan, as for :func:`write_default_plot`.
    """
    master_file = os.path.abspath(group_entry.file.filename)
    target = f"/{hdf5_name(entry_name)}/{nxdata_name}"
    link = h5py.ExternalLink(
        stored_path(os.fspath(file_path), os.path.dirname(master_file), master_file), target
    )
    existing = group_entry.get(name, getlink=True)
    if existing is not None:
        if isinstance(existing, h5py.ExternalLink) and (existing.filename, existing.path) == (
            link.filename,
            link.path,
        ):
            return
        if not isinstance(existing, h5py.ExternalLink) and not is_nxdata(group_entry[name]):
            raise ValueError(
                f"{group_entry.name}/{name} exists and is not a plot; delete it or choose"
                " another name"
            )
        # The group's own plot (its scan numbers against their index) gives way.
        del group_entry[name]
    group_entry[name] = link
    group_entry.attrs["default"] = name
    root = group_entry.file
    basename = group_entry.name.rsplit("/", 1)[-1]
    if group_entry.parent.name == "/" and entry_order(root.attrs.get("default")) <= entry_order(
        basename
    ):
        root.attrs["default"] = basename
