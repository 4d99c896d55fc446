"""HDF5/NeXus layout of scanstream files: a pure h5py layer with no Redis knowledge.

The writer service opens a file with :func:`open_nexus_file` and calls these functions as
events arrive. Every function is *require*-style: calling it again with the same inputs (for
example after a writer restart) leaves the file as it is, calling it with more data extends
the file, and an existing object that cannot hold the request (another dtype, shape or kind)
raises :class:`~scanstream.exceptions.NexusLayoutError` (a :class:`ValueError`) naming the
object and what to do, rather than being silently reused.

Layout of one scan (``N`` = scan number, ``k`` = top-master index), in the default "esrf"
layout (docs/nexus_layout.md has the whole tree and the comparison with ESRF's writers)::

    /                               NXroot  @creator="scanstream" @default=<newest plotted>
      N.k/                          NXentry title, start_time, end_time, end_reason, [error],
                                            duration, entry_identifier, program_name
        scan_info/                  NXnote  type="application/json", data=<scan_info JSON>
        scan_parameters/            NXparameters: count_time, npoints... from scan_info
        instrument/                 NXinstrument
          <counter>/data            NXdetector, the channel's data, grows from 0
          <motor>/value             NXpositioner
          <controller>/data         NXdetector: spectra, image VDS (+ data_references)
          positioners/<motor>       link to the scanned values, else to the start value
        measurement/                NXcollection: soft links under short names (layout.py)
        plotselect/ ...             NXdata: one per rank, equal lengths, meshes as maps
        scans/                      NXcollection: soft links to sub-scan entries (groups)

With ``layout="legacy"`` (:func:`require_entry`) the channel datasets are in
``measurement/`` under their full names, as in scanstream 0.1.

Entry names follow BLISS (``"12.1"``). Strict NeXus naming rules reject the dot, so
:func:`entry_name` offers ``strict_names=True`` (``"scan12_1"``).

Reading while writing
---------------------
Files must be opened with HDF5 file locking disabled (:func:`open_nexus_file`): with locking
on, a viewer that has the file open in ``"r"`` mode makes the writer's open fail at once with
``BlockingIOError: unable to lock file (errno 11)`` and, the other way round, a writer holding
the file makes every reader with default settings fail the same way. With ``locking=False``
on the writer side, readers with *default* settings open the file and see everything written
up to the writer's last ``flush()``. This works because the file keeps the default (earliest)
format bounds: with ``libver="latest"`` (superblock v3) HDF5 marks the file "open for write"
and readers fail with ``file is already open for write``. SWMR is not used: it forbids
creating groups, datasets and attributes once it is on, which an incremental writer of many
scans in one file needs all the time. A reader that keeps the file open while it is written
may see stale or inconsistent metadata; readers should reopen (or retry) to see new data.
The writer flushes only between batches of writes (``OpenFiles.batch``), so each flushed
state is consistent; docs/nexus_layout.md, "Reading a file while it is written", has what a
reader may still meet (torn reads) and the measurements.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

from ..._protocol.metadata import iso_time
from ...exceptions import NexusLayoutError
from ...models import FINAL_STATES
from .channels import (
    CHUNK_MAX_ROWS,
    CHUNK_TARGET_BYTES,
    channel_dataset_name,
    fill_value_for,
    lengths_dataset_name,
    require_channel_dataset,
    write_points,
)
from .compression import COMPRESSIONS, DEFAULT_COMPRESSION, compression_options
from .grids import LIVE_GRID_ATTR, grow_live_grids
from .images import (
    ImageReference,
    complete_image_vds,
    is_hdf5_format,
    references_dataset_name,
    require_image_vds,
)
from .layout import (
    LAYOUT_ATTR,
    LAYOUTS,
    channel_path,
    channel_paths,
    entry_layout,
    forget_entry,
    nexus_name,
)
from .metadata import (
    NX_COLLECTION,
    hdf5_name,
    require_nx_group,
    to_json,
    write_metadata,
    write_positioners,
    write_scan_info_positioners,
    write_value,
)
from .plot_specs import default_plot_name
from .plots import write_default_plot
from .sequences import link_subscan_entries, link_subscan_plot

__all__ = [
    "CHUNK_MAX_ROWS",
    "CHUNK_TARGET_BYTES",
    "COMPRESSIONS",
    "DEFAULT_COMPRESSION",
    "END_STATES",
    "LAYOUTS",
    "LIVE_GRID_ATTR",
    "EntrySummary",
    "ImageReference",
    "channel_dataset_name",
    "channel_datasets",
    "channel_path",
    "channel_paths",
    "complete_image_vds",
    "compression_options",
    "default_plot_name",
    "entry_layout",
    "entry_name",
    "fill_value_for",
    "finalize_entry",
    "grow_live_grids",
    "hdf5_name",
    "is_hdf5_format",
    "iso8601",
    "lengths_dataset_name",
    "link_subscan_entries",
    "link_subscan_plot",
    "nexus_name",
    "open_nexus_file",
    "read_entry_summary",
    "read_scan_entries",
    "references_dataset_name",
    "require_channel_dataset",
    "require_entry",
    "require_image_vds",
    "require_nx_group",
    "scan_entry_names",
    "write_default_plot",
    "write_metadata",
    "write_points",
    "write_positioners",
    "write_scan_info_positioners",
    "write_value",
]

logger = logging.getLogger(__name__)

#: Usual end states (:class:`scanstream.models.ScanState` names). Others are accepted too.
END_STATES = tuple(state.name for state in FINAL_STATES)


# --------------------------------------------------------------------------- file and names


def open_nexus_file(path: str | os.PathLike[str], mode: str = "a", **kwargs: Any) -> h5py.File:
    """Open ``path`` the way the writer must: HDF5 file locking off, default format bounds.

    See "Reading while writing" in the module docstring for why: with locking on, a viewer
    that has the file open makes the writer fail, and the writer makes viewers fail.
    ``kwargs`` go to :class:`h5py.File` (``libver="latest"`` is refused: readers could not
    open the file while it is open for writing).
    """
    if kwargs.get("libver") in ("latest", ("latest", "latest")):
        raise NexusLayoutError(
            f"open_nexus_file({os.fspath(path)!r}): libver={kwargs['libver']!r} makes the file"
            " unreadable by other processes while it is being written; leave libver unset"
        )
    kwargs.setdefault("locking", False)
    # Entries listed in the order they were written ("2.1" before "10.1"), as blisswriter.
    kwargs.setdefault("track_order", True)
    file = h5py.File(path, mode, **kwargs)
    if mode != "r":
        _write_metadata_at_flushes_only(file)
    return file


def _write_metadata_at_flushes_only(file: h5py.File) -> None:
    """Keep HDF5 from writing metadata between two flushes of ``file``.

    A reader sees what is on disk. HDF5's metadata cache writes a dirty entry (a dataset's
    new shape, a chunk index node) whenever it evicts it to make room, at any time between
    two flushes, so the disk could hold a dataset's new shape with its chunk index of before:
    rows of fill values, even in a file that then stays unchanged. With evictions off, dirty
    metadata waits for the flush; the cache holds the file's metadata instead until the file
    is closed (0.3 MB for 200 000 points of 20 counters and 2 spectra).
    """
    config = file.id.get_mdc_config()
    config.incr_mode = 0  # H5C_incr__off: evictions can be disabled only with no resizing
    config.flash_incr_mode = 0
    config.decr_mode = 0
    config.evictions_enabled = False
    file.id.set_mdc_config(config)


def entry_name(scan_number: int, top_master_index: int = 1, *, strict_names: bool = False) -> str:
    """Name of the NXentry of a scan: ``"12.1"``, ``"12.2"``... (BLISS convention).

    Parameters
    ----------
    scan_number : int
        Scan number (>= 0).
    top_master_index : int
        1 for the first top master of the acquisition chain, 2, 3... for the next ones.
    strict_names : bool
        Give a name that follows the strict NeXus naming rule
        ``^[a-zA-Z0-9_]([a-zA-Z0-9_.]*[a-zA-Z0-9_])?$`` written for portability: ``"scan12_1"``
        (a name may not start with a digit). Default False: BLISS readers expect ``"12.1"``.
    """
    if isinstance(scan_number, bool) or not isinstance(scan_number, (int, np.integer)):
        raise NexusLayoutError(
            f"entry_name: scan_number must be an int, got {scan_number!r}; pass"
            " scan_info['scan_nb']"
        )
    if isinstance(top_master_index, bool) or not isinstance(top_master_index, (int, np.integer)):
        raise NexusLayoutError(
            f"entry_name: top_master_index must be an int, got {top_master_index!r}; pass 1 for"
            " the first top master, 2, 3... for the next ones"
        )
    if scan_number < 0:
        raise NexusLayoutError(
            f"entry_name: scan_number must be >= 0, got {scan_number}; pass the scan's number"
        )
    if top_master_index < 1:
        raise NexusLayoutError(
            f"entry_name: top_master_index starts at 1, got {top_master_index}; pass 1 for the"
            " first top master"
        )
    if strict_names:
        return f"scan{int(scan_number)}_{int(top_master_index)}"
    return f"{int(scan_number)}.{int(top_master_index)}"


#: The file's times are :func:`scanstream._protocol.metadata.iso_time`, the function that
#: also gives ``scan_info["start_time"]``: local time in ISO 8601 with the UTC offset in force
#: at that instant (ISO sign convention: Paris in summer is ``+02:00``; the legacy BLISS
#: example writer had the sign reversed), the hour repeated at the end of DST included.
#: ``iso8601`` is the name this layer used for it, kept for compatibility.
iso8601 = iso_time


def _as_iso(value: float | str | datetime.datetime) -> str:
    """ISO 8601 text (local time, writer's UTC offset) of a timestamp, ISO text or datetime.

    ISO text with an offset is converted to the writer's local time, so that ``start_time``
    (the publisher's text) and ``end_time`` carry the same offset; text without an offset
    (or not ISO) is kept as it is.
    """
    if isinstance(value, str):
        try:
            parsed = datetime.datetime.fromisoformat(value)
        except ValueError:
            return value
        if parsed.tzinfo is None:
            return value
        return iso_time(parsed.timestamp())
    if isinstance(value, datetime.datetime):
        return value.astimezone().isoformat()
    return iso_time(float(value))


# --------------------------------------------------------------------------- entries


def require_entry(
    file: h5py.Group,
    name: str,
    *,
    title: str,
    start_time: float | str | datetime.datetime,
    scan_info: Mapping[str, Any] | None = None,
    layout: str | None = None,
) -> h5py.Group:
    """Create (or return) the NXentry ``name`` with its ``measurement`` and ``instrument``.

    Parameters
    ----------
    file : h5py.File or h5py.Group
        Where the entry goes (normally the open file). On a file whose root has no
        ``NX_class`` yet, the NXroot attributes are written: ``NX_class``, ``creator``,
        ``file_name``, ``file_time``, ``HDF5_Version``, ``h5py_version``.
    name : str
        Entry name, from :func:`entry_name`.
    title : str
        Scan title (``scan_info["title"]``).
    start_time : float, str or datetime
        Epoch timestamp (converted with :func:`iso_time`) or ready ISO 8601 text.
    scan_info : Mapping, optional
        Stored whole as JSON in the NXnote ``scan_info`` (so the file alone is enough to
        rebuild the scan's metadata); ``scan_info["scan_nb"]`` also gives
        ``entry_identifier``. Pass it again to :func:`finalize_entry` to store the final one.
    layout : str, optional
        ``"esrf"`` (data in device groups, short names in ``measurement/``) or ``"legacy"``
        (full channel names in ``measurement/``), see :mod:`.layout`; stored as
        ``@scanstream_layout``. None: keep the entry's (a new entry gets ``"esrf"``).

    Returns
    -------
    h5py.Group
        The NXentry. It holds ``measurement`` (NXcollection) and ``instrument``
        (NXinstrument).
    """
    if layout is not None and layout not in LAYOUTS:
        raise NexusLayoutError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    _require_root_attrs(file.file)
    entry = require_nx_group(file, hdf5_name(name), "NXentry")
    if layout is not None or LAYOUT_ATTR not in entry.attrs:
        if entry.attrs.get(LAYOUT_ATTR) != (layout or "esrf"):
            entry.attrs[LAYOUT_ATTR] = layout or "esrf"
    write_value(entry, "title", str(title))
    write_value(entry, "start_time", _as_iso(start_time))
    write_value(entry, "program_name", "scanstream")
    require_nx_group(entry, "measurement", NX_COLLECTION)
    require_nx_group(entry, "instrument", "NXinstrument")
    if scan_info is not None:
        if scan_info.get("scan_nb") is not None:
            write_value(entry, "entry_identifier", str(scan_info["scan_nb"]))
        _write_scan_info_note(entry, scan_info)
    return entry


def finalize_entry(
    entry: h5py.Group,
    *,
    end_time: float | str | datetime.datetime,
    state: Any,
    error: str | None = None,
    scan_info: Mapping[str, Any] | None = None,
) -> None:
    """Record how the scan ended, idempotently (a later call with other values replaces them).

    Writes ``end_time`` (ISO 8601), ``end_reason`` (the state name: ``"DONE"``,
    ``"USER_ABORTED"``, ``"KILLED"``, ``"FAILED"``), ``error`` (the error text; removed when
    ``error`` is None, so a stale error from an earlier attempt does not survive),
    ``duration`` (seconds, when ``start_time`` can be parsed), the NXnote ``scan_info``
    when given, and the root attribute ``@file_update_time``.

    Parameters
    ----------
    state : str or enum
        An end state; an enum member (``ScanState.DONE``) is stored by its ``name``.
    """
    reason = getattr(state, "name", state)
    if not isinstance(reason, str) or not reason:
        raise NexusLayoutError(
            f"finalize_entry({entry.name!r}): end state must be a state name or enum member,"
            f" got {state!r}; pass a ScanState member or one of {END_STATES}"
        )
    if reason not in END_STATES:
        logger.warning("%s: unusual end state %r", entry.name, reason)
    end_iso = _as_iso(end_time)
    write_value(entry, "end_time", end_iso)
    write_value(entry, "end_reason", reason)
    if error:
        write_value(entry, "error", str(error))
    elif "error" in entry:
        del entry["error"]
    start = entry.get("start_time")
    if isinstance(start, h5py.Dataset):
        try:
            t0 = datetime.datetime.fromisoformat(start.asstr()[()])
            t1 = datetime.datetime.fromisoformat(end_iso)
            # NXentry/duration is NX_INT (seconds); start_time and end_time keep the precision.
            seconds = int(round((t1 - t0).total_seconds()))
            duration = write_value(entry, "duration", np.int64(seconds))
            if duration is not None and duration.attrs.get("units") != "s":
                duration.attrs["units"] = "s"
        except (TypeError, ValueError):
            logger.debug("%s: no duration (start or end time not ISO 8601)", entry.name)
    if scan_info is not None:
        _write_scan_info_note(entry, scan_info)
    forget_entry(entry)  # the channels are all there: nothing to place any more
    root = entry.file
    # NXroot defines file_update_time as an attribute; a dataset of that name (written by an
    # earlier version of this layer) would be a non-NeXus field of NXroot.
    if isinstance(root.get("file_update_time", getlink=True), h5py.HardLink) and isinstance(
        root.get("file_update_time"), h5py.Dataset
    ):
        del root["file_update_time"]
    root.attrs["file_update_time"] = iso_time(datetime.datetime.now().timestamp())


def _require_root_attrs(file: h5py.File) -> None:
    """Write the NXroot attributes once, when the file is new to NeXus."""
    if "NX_class" in file.attrs:
        return
    file.attrs["NX_class"] = "NXroot"
    file.attrs["creator"] = "scanstream"
    file.attrs["file_name"] = os.path.abspath(file.filename)
    file.attrs["file_time"] = iso_time(datetime.datetime.now().timestamp())
    file.attrs["HDF5_Version"] = h5py.version.hdf5_version
    file.attrs["h5py_version"] = h5py.version.version


#: scan_info keys copied into ``scan_parameters`` (NXparameters, as blisswriter 2), with units.
SCAN_PARAMETERS = {
    "count_time": "s",
    "npoints": None,
    "npoints1": None,
    "npoints2": None,
    "data_dim": None,
    "start": None,
    "stop": None,
    "type": None,
}


def _write_scan_info_note(entry: h5py.Group, scan_info: Mapping[str, Any]) -> None:
    note = require_nx_group(entry, "scan_info", "NXnote")
    write_value(note, "type", "application/json")
    write_value(note, "data", to_json(dict(scan_info)))
    found = {k: scan_info[k] for k in SCAN_PARAMETERS if scan_info.get(k) is not None}
    if found:
        parameters = require_nx_group(entry, "scan_parameters", "NXparameters")
        for key, value in found.items():
            dset = write_value(parameters, key, value)
            units = SCAN_PARAMETERS[key]
            if dset is not None and units and dset.attrs.get("units") != units:
                dset.attrs["units"] = units


# --------------------------------------------------------------------------- reading back


@dataclass(frozen=True)
class EntrySummary:
    """What an NXentry holds, read back from the file (:func:`read_entry_summary`).

    Attributes
    ----------
    name : str
        Entry name (``"3.1"``).
    title : str
        Scan title.
    end_reason : str or None
        End state name (``"DONE"``...); None while the scan is being written.
    points : dict
        Points (frames for image channels) per channel dataset of ``measurement``.
    """

    name: str
    title: str
    end_reason: str | None
    points: dict[str, int] = field(default_factory=dict)


def scan_entry_names(
    file: h5py.Group, scan_number: int, *, strict_names: bool = False
) -> list[str]:
    """Names of the NXentries of scan ``scan_number`` in ``file``, first top master first."""
    names: list[str] = []
    while (name := entry_name(scan_number, len(names) + 1, strict_names=strict_names)) in file:
        names.append(name)
    return names


def channel_datasets(measurement: h5py.Group) -> dict[str, h5py.Dataset]:
    """The channel datasets of a ``measurement`` group, without their sibling datasets.

    The true lengths of variable-length channels (:func:`lengths_dataset_name`) and the
    reference tables of image channels (:func:`references_dataset_name`) are left out.
    """
    datasets = {name: obj for name, obj in measurement.items() if isinstance(obj, h5py.Dataset)}
    siblings = {
        f(name) for name in datasets for f in (lengths_dataset_name, references_dataset_name)
    }
    return {name: dset for name, dset in datasets.items() if name not in siblings}


def read_entry_summary(entry: h5py.Group) -> EntrySummary:
    """Title, end state and points per channel of an NXentry written by this layer.

    Raises
    ------
    KeyError
        ``entry`` is not an entry of this layout (no ``title`` or ``measurement``).
    """
    reason = entry.get("end_reason")
    return EntrySummary(
        name=entry.name.rpartition("/")[2],
        title=entry["title"].asstr()[()],
        end_reason=reason.asstr()[()] if isinstance(reason, h5py.Dataset) else None,
        points={
            name: dset.shape[0] for name, dset in channel_datasets(entry["measurement"]).items()
        },
    )


def read_scan_entries(
    path: str | os.PathLike[str], scan_number: int, *, strict_names: bool = False
) -> list[EntrySummary]:
    """The summaries of the entries of scan ``scan_number`` in the file ``path``.

    The file is opened for reading with HDF5 file locking off, so that a file a writer still
    has open can be read (see "Reading while writing").

    Raises
    ------
    OSError
        The file cannot be opened.
    KeyError
        An entry of that scan is not an entry of this layout.
    """
    with h5py.File(path, "r", locking=False) as file:
        names = scan_entry_names(file, scan_number, strict_names=strict_names)
        return [read_entry_summary(file[name]) for name in names]
