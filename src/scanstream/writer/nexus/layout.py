"""Where a channel's data goes inside an NXentry: device groups and short names, as ESRF does.

Pure h5py, no Redis knowledge; :mod:`scanstream.writer.nexus` re-exports the public names.

Two layouts (``@scanstream_layout`` of the entry, set by
:func:`~scanstream.writer.nexus.require_entry`):

``"esrf"`` (default)
    The data of a channel sits in its device group, ``instrument/<device>/data`` (NXdetector)
    or ``instrument/<motor>/value`` (NXpositioner, channels ``axis:<motor>``), and
    ``measurement/<name>`` is a soft link to it, under the channel's *short* name: the part
    after the last ``':'`` (``simulation_diode:diode`` -> ``diode``). Spectra and images are
    named after their controller (``simu1:spectrum`` -> ``simu1``, ``lima_simulator:image``
    -> ``lima_simulator``), as BLISS names ``mca1_det0`` or ``cam0``: the device group then
    holds the device's data and, at the end, its metadata.

    Collision rule, applied in channel creation order (so a restarted writer, which replays
    the channels in the same order, finds the same names): a channel whose name is already
    taken in ``measurement/`` or ``instrument/`` by another channel gets
    ``<controller>_<short>`` instead (``timer2:elapsed_time`` -> ``timer2_elapsed_time``),
    then ``<controller>_<short>_2``, ``_3``... Every name is made valid for NeXus
    (:func:`nexus_name`: characters outside ``[A-Za-z0-9_.]`` -> ``'_'``). The full channel
    name stays in the dataset's ``@scanstream_channel`` attribute.

``"legacy"``
    The layout of scanstream 0.1: every channel dataset directly in ``measurement/`` under its
    full name (``measurement/axis:roby``), for scripts written against it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

import h5py

from ...exceptions import NexusLayoutError

__all__ = [
    "CHANNEL_ATTR",
    "LAYOUTS",
    "LAYOUT_ATTR",
    "Placement",
    "channel_path",
    "channel_paths",
    "entry_layout",
    "forget_entry",
    "nexus_name",
    "place_channel",
]

#: Layout names accepted by :func:`~scanstream.writer.nexus.require_entry`.
LAYOUTS = ("esrf", "legacy")
#: Entry attribute naming its layout.
LAYOUT_ATTR = "scanstream_layout"
#: Dataset attribute holding the full channel name (identity for collisions and restarts).
CHANNEL_ATTR = "scanstream_channel"

_INVALID = re.compile(r"[^A-Za-z0-9_.]")


def nexus_name(name: str) -> str:
    """A NeXus-valid form of ``name``: characters outside ``[A-Za-z0-9_.]`` become ``'_'``.

    NeXus (and nxvalidate) accept ``^[a-zA-Z0-9_]([a-zA-Z0-9_.]*[a-zA-Z0-9_])?$``; a leading
    or trailing ``'.'`` is replaced too. ``""`` becomes ``"_"``.
    """
    out = _INVALID.sub("_", str(name))
    if out.startswith("."):
        out = "_" + out[1:]
    if out.endswith("."):
        out = out[:-1] + "_"
    return out or "_"


def entry_layout(entry: h5py.Group) -> str:
    """The layout of an NXentry (``"esrf"`` when the entry does not say: files of 0.1 did
    not say either, but they are read through :func:`channel_paths`, which copes)."""
    value = entry.attrs.get(LAYOUT_ATTR, "esrf")
    if isinstance(value, bytes):
        value = value.decode()
    return str(value)


def _measurement_entry(group: h5py.Group) -> h5py.Group | None:
    """The NXentry whose ``measurement`` group is ``group`` in the esrf layout, else None."""
    if group.name.rsplit("/", 1)[-1] != "measurement" or group.name == "/measurement":
        return None
    entry = group.parent
    if entry.attrs.get("NX_class") not in ("NXentry", b"NXentry"):
        return None
    return entry if entry_layout(entry) == "esrf" else None


@dataclass(frozen=True)
class Placement:
    """Where one channel's data goes: ``device`` group, ``member`` in it, ``link`` name."""

    device: h5py.Group
    member: str
    link: str
    is_new: bool


# Per open file and entry: channel -> measurement link name, with the number of links it was
# built from. Rebuilt from the file whenever ``measurement`` holds another number of links
# (another process or an earlier writer added some): O(channels) once, O(1) per call after.
_cache: dict[tuple[str, str], tuple[int, dict[str, str]]] = {}


def _known(entry: h5py.Group) -> dict[str, str]:
    measurement = entry["measurement"]
    key = (os.path.realpath(entry.file.filename), entry.name)
    count = len(measurement)
    cached = _cache.get(key)
    if cached is not None and cached[0] == count:
        return cached[1]
    known: dict[str, str] = {}
    for name in measurement:
        obj = measurement.get(name)
        if isinstance(obj, h5py.Dataset):
            channel = obj.attrs.get(CHANNEL_ATTR)
            if isinstance(channel, bytes):
                channel = channel.decode()
            if isinstance(channel, str):
                known[channel] = name
    _cache[key] = (count, known)
    return known


def _candidates(channel: str, by_controller: bool) -> Iterator[str]:
    controller, _, short = channel.rpartition(":")
    if controller == "axis":
        controller = ""
    first = controller if by_controller and controller else short
    yield nexus_name(first)
    prefixed = nexus_name(f"{controller}_{short}" if controller else channel)
    yield prefixed
    for k in range(2, 1 << 20):
        yield f"{prefixed}_{k}"


def place_channel(measurement: h5py.Group, channel: str, ndim: int) -> Placement | None:
    """Choose (or find again) the device group and names of ``channel``.

    Returns None when ``measurement`` is not the ``measurement`` group of an entry in the
    esrf layout (the caller then writes the dataset into ``measurement`` itself).

    Parameters
    ----------
    measurement : h5py.Group
        The entry's ``measurement`` group.
    channel : str
        Full channel name.
    ndim : int
        Dimensions of one point (0 scalar, 1 spectrum, 2 image): spectra and images are named
        after their controller.
    """
    entry = _measurement_entry(measurement)
    if entry is None:
        return None
    instrument = entry.require_group("instrument")
    is_motor = channel.startswith("axis:")
    member = "value" if is_motor else "data"
    found = _find(entry, measurement, channel)
    if found is False:
        forget_entry(entry)  # the cache described an earlier file of the same path
        found = _find(entry, measurement, channel)
    if isinstance(found, Placement):
        return found
    for name in _candidates(channel, ndim > 0):
        if name in measurement:
            continue
        existing = instrument.get(name)
        if existing is not None and (not isinstance(existing, h5py.Group) or member in existing):
            continue
        device = _require_device(instrument, name, "NXpositioner" if is_motor else "NXdetector")
        return Placement(device, member, name, True)
    raise NexusLayoutError(f"no free name for channel {channel!r} in {entry.name!r}")


def _find(entry: h5py.Group, measurement: h5py.Group, channel: str) -> Placement | bool:
    """The placement of a channel already in the entry, checked against the file; True when
    the channel is not there, False when the cache names a link that does not hold it."""
    link = _known(entry).get(channel)
    if link is None:
        return True
    target = measurement.get(link, getlink=True)
    if not isinstance(target, h5py.SoftLink):
        return False
    device_path, _, member = target.path.rpartition("/")
    device = entry.file.get(device_path)
    dset = device.get(member) if isinstance(device, h5py.Group) else None
    if not isinstance(dset, h5py.Dataset) or _attr(dset, CHANNEL_ATTR) != channel:
        return False
    return Placement(device, member, link, False)


def _attr(obj: h5py.HLObject, name: str) -> str | None:
    value = obj.attrs.get(name)
    if isinstance(value, bytes):
        value = value.decode()
    return value if isinstance(value, str) else None


def forget_entry(entry: h5py.Group) -> None:
    """Drop what this process remembers of an entry's channels (done when it is finalized)."""
    _cache.pop((os.path.realpath(entry.file.filename), entry.name), None)


def _require_device(instrument: h5py.Group, name: str, nx_class: str) -> h5py.Group:
    group = instrument.get(name)
    if group is None:
        group = instrument.create_group(name, track_order=True)
        group.attrs["NX_class"] = nx_class
    elif "NX_class" not in group.attrs or group.attrs["NX_class"] in (
        "NXcollection",
        b"NXcollection",
    ):
        # A metadata group of the same device, written first: it becomes the device group.
        group.attrs["NX_class"] = nx_class
    return group


def link_placed(measurement: h5py.Group, placement: Placement, dataset: h5py.Dataset) -> None:
    """``measurement/<link>`` -> the dataset, once the dataset exists; cache updated."""
    entry = measurement.parent
    key = (os.path.realpath(entry.file.filename), entry.name)
    existing = measurement.get(placement.link, getlink=True)
    if isinstance(existing, h5py.SoftLink) and existing.path == dataset.name:
        return
    if existing is not None:
        del measurement[placement.link]
    measurement[placement.link] = h5py.SoftLink(dataset.name)
    cached = _cache.get(key)
    channel = _attr(dataset, CHANNEL_ATTR)
    if cached is None or channel is None:
        _cache.pop(key, None)  # rebuilt from the file at the next need
        return
    count, known = cached
    known[channel] = placement.link
    _cache[key] = (count + (existing is None), known)


def channel_paths(entry: h5py.Group) -> dict[str, str]:
    """Full channel name -> path of its dataset (via ``measurement/``), in creation order.

    Works for both layouts: in the legacy one the full name is ``@long_name``.
    """
    measurement = entry.get("measurement")
    if not isinstance(measurement, h5py.Group):
        return {}
    paths: dict[str, str] = {}
    for name in measurement:
        obj = measurement.get(name)
        if not isinstance(obj, h5py.Dataset):
            continue
        channel = obj.attrs.get(CHANNEL_ATTR)
        if channel is None:
            channel = obj.attrs.get("long_name")
            if name.endswith(("_lengths", "_references")) or channel is None:
                continue
        if isinstance(channel, bytes):
            channel = channel.decode()
        paths[str(channel)] = f"{measurement.name}/{name}"
    return paths


def channel_path(entry: h5py.Group, channel: str) -> str | None:
    """Path (via ``measurement/``) of the dataset of ``channel`` in ``entry``, or None."""
    return channel_paths(entry).get(channel)
