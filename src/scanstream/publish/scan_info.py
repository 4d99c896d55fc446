"""scan_info keys BLISS clients rely on, derived from the node tree when the publisher gave none.

BLISS subscribers (the external saving example, ``ScansWatcher``, Flint) read
``scan_info["acquisition_chain"]`` (top masters, their channels and devices),
``scan_info["devices"]`` (the channels of each device named in the chain) and
``scan_info["channels"]``. A scan published with the plain API names none of them, so
:func:`complete_scan_info` fills in what is missing from the nodes the scan created (at
``prepared()`` and at ``end()``), and never changes what the publisher gave.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..models import NodeDescription, NodeType

_CHANNEL = NodeType.CHANNEL.value
_LIMA = NodeType.LIMA.value
_CONTAINER = NodeType.CONTAINER.value


def _fullname(node: NodeDescription, parents: Mapping[int, NodeDescription]) -> str:
    parent = parents.get(node.parent)
    if ":" in node.name or parent is None:
        return node.name
    return f"{parent.name}:{node.name}"


def _kind(node: NodeDescription) -> str:
    if node.type == _LIMA:
        return "images"
    shape = node.info.get("shape") or []
    return "scalars" if len(shape) == 0 else "spectra" if len(shape) == 1 else "images"


def _derive(
    nodes: Sequence[NodeDescription],
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(acquisition_chain, devices, channels) of a node tree."""
    by_index = {n.index: n for n in nodes}
    top_of: dict[int, int] = {}
    for n in nodes:  # parents come before children
        top_of[n.index] = n.index if n.parent == 0 else top_of.get(n.parent, n.index)
    chain: dict[str, Any] = {}
    devices: dict[str, Any] = {}
    channels: dict[str, Any] = {}
    # A device key per (top master, container name): a controller under two top masters is
    # a device of each (its first key is its name, the next "<top master>:<name>").
    device_keys: dict[tuple[int, str], str] = {}

    def device_key(container: NodeDescription) -> str:
        top = by_index[top_of[container.index]]
        key = device_keys.get((top.index, container.name))
        if key is None:
            taken = container.name in device_keys.values()
            key = f"{top.name}:{container.name}" if taken else container.name
            device_keys[(top.index, container.name)] = key
        return key

    for n in nodes:
        top = by_index[top_of[n.index]]
        if n.parent == 0 and n.type == _CONTAINER:
            chain[n.name] = {
                "master": {"scalars": [], "spectra": [], "images": []},
                "scalars": [],
                "spectra": [],
                "images": [],
                "devices": [device_key(n)],
            }
            devices.setdefault(device_key(n), {"channels": []})
            continue
        entry = chain.get(top.name)
        if n.type == _CONTAINER:
            key = device_key(n)
            devices.setdefault(key, {"channels": []})
            if entry is not None and key not in entry["devices"]:
                entry["devices"].append(key)
            parent = by_index.get(n.parent)
            if parent is not None and parent.type == _CONTAINER:
                # A container triggers those below it (BLISS clients tell masters by it).
                triggered = devices[device_key(parent)].setdefault("triggered_devices", [])
                if key not in triggered:
                    triggered.append(key)
            continue
        if n.type not in (_CHANNEL, _LIMA):
            continue
        name = _fullname(n, by_index)
        parent = by_index.get(n.parent)
        if parent is not None:
            device = devices.setdefault(device_key(parent), {"channels": []})
            device["channels"].append(name)
            if n.type == _LIMA:
                device.setdefault("type", "lima")
        if entry is not None:
            where = entry["master"] if n.parent == top.index else entry
            where[_kind(n)].append(name)
        shape = n.info.get("shape") or []
        channels[name] = {
            "display_name": name.rsplit(":", 1)[-1],
            "dim": 2 if n.type == _LIMA else len(shape),
            "unit": n.info.get("unit"),
        }
    return chain, devices, channels


def complete_scan_info(info: Mapping[str, Any], nodes: Sequence[NodeDescription]) -> dict[str, Any]:
    """``info`` with the BLISS keys it lacks derived from ``nodes`` (a new dict).

    Adds ``acquisition_chain``, ``devices`` and ``channels`` when absent; adds the
    ``devices`` list of a chain entry that has none, and every device a chain entry names
    that ``devices`` does not hold; adds an empty ``instrument`` and ``scan_meta_categories``
    (the categories present) when absent; ``filename: ""`` to a scan whose saving is off.
    Keys the publisher gave are kept as they are.
    """
    out = dict(info)
    if not nodes:
        return out
    chain, devices, channels = _derive(nodes)
    given_chain = out.get("acquisition_chain")
    if not isinstance(given_chain, Mapping) or not given_chain:
        out["acquisition_chain"] = chain
    else:
        completed = {}
        for master, entry in given_chain.items():
            if isinstance(entry, Mapping) and "devices" not in entry:
                entry = {**entry, "devices": list(chain.get(master, {}).get("devices", [master]))}
            completed[master] = entry
        out["acquisition_chain"] = completed
    given_devices = out.get("devices")
    all_devices = dict(given_devices) if isinstance(given_devices, Mapping) else {}
    for entry in out["acquisition_chain"].values():
        names = entry.get("devices", []) if isinstance(entry, Mapping) else []
        for name in names if isinstance(names, list) else []:
            if isinstance(name, str) and name not in all_devices:
                all_devices[name] = devices.get(name, {"channels": []})
    out["devices"] = all_devices
    if not isinstance(out.get("channels"), Mapping):
        out["channels"] = channels
    # BLISS clients read scan_info["instrument"] of every scan, groups and sequences included.
    if not isinstance(out.get("instrument"), Mapping):
        out["instrument"] = {}
    if out.get("save") is False and out.get("filename") is None:
        out["filename"] = ""  # BLISS clients read the filename of every scan
    if "scan_meta_categories" not in out:
        out["scan_meta_categories"] = [
            k
            for k in ("instrument", "positioners", "sample", "technique")
            if isinstance(out.get(k), Mapping)
        ]
    return out
