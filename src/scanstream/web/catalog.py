"""What the web view reads from Redis: the scan list, one scan's description, spectra, maps, images.

Everything goes through the subscriber API (:mod:`scanstream.subscribe`) and the admin
listing; nothing here writes to Redis (the view works with a read-only Redis user). The
functions are synchronous (redis-py): the routes run them in worker threads.
"""

from __future__ import annotations

import base64
import datetime
import math
from typing import Any

import numpy as np

from .._transport.connection import DataStore
from ..admin.listing import ScanSummary, list_scans
from ..analysis import curve_stats
from ..exceptions import IndexNotYetThereError, ScanstreamError
from ..subscribe.data_nodes import ChannelNode, LimaNode
from ..subscribe.tree import ScanNode, get_session_node

__all__ = [
    "MAX_ANALYSED_POINTS",
    "MAX_IMAGE_SIDE",
    "MAX_SPECTRUM_BINS",
    "WATERFALL_ROWS",
    "analyse",
    "channel",
    "data_nodes",
    "describe_scan",
    "image_frame",
    "list_all_scans",
    "mesh_map",
    "scalar_channels",
    "spectrum",
    "waterfall",
]

#: Points read for peak/cen/com/fwhm (a longer curve is analysed on its first ones).
MAX_ANALYSED_POINTS = 5_000_000
#: Longest side of an image sent to the browser (larger ones are strided down).
MAX_IMAGE_SIDE = 1024
#: Bins of a spectrum sent to the browser (larger ones keep the maximum of each group).
MAX_SPECTRUM_BINS = 2048
#: Spectra of a waterfall: the latest ones.
WATERFALL_ROWS = 200


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as None (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")


def _motors(info: dict[str, Any]) -> list[str]:
    """The scanned motors: the master channels of the acquisition chain that are not timers."""
    out: list[str] = []
    chain = info.get("acquisition_chain")
    if isinstance(chain, dict):
        for entry in chain.values():
            scalars = (entry.get("master") or {}).get("scalars") or []
            for name in scalars:
                if isinstance(name, str) and not name.endswith(("elapsed_time", "epoch")):
                    out.append(name.rsplit(":", 1)[-1])
    return list(dict.fromkeys(out))


def _summary_json(summary: ScanSummary, scan: ScanNode | None) -> dict[str, Any]:
    info: dict[str, Any] = dict(scan.info) if scan is not None else {}
    return {
        "session": summary.session,
        "number": summary.number,
        "name": summary.name,
        "title": info.get("title", summary.name),
        "type": info.get("type", summary.name),
        "motors": _motors(info),
        "state": summary.status,
        "running": summary.running,
        "points": summary.points,
        "npoints": info.get("npoints"),
        "start_time": summary.start_time,
        "start": _iso(summary.start_time),
        "end_time": summary.end_time,
        "saving": summary.saving.state.value,
        "file": summary.saving.file,
    }


def list_all_scans(store: DataStore, sessions: list[str] | None) -> dict[str, Any]:
    """Every stored scan of ``sessions`` (all sessions when None), newest first.

    Returns
    -------
    dict
        ``{"sessions": [names], "scans": [one dict per scan]}``.
    """
    names = sessions if sessions else store.sessions()
    scans: list[dict[str, Any]] = []
    listed = []
    for name in names:
        try:
            summary = list_scans(store, name)
        except ScanstreamError:  # a session given on the command line with no scan yet
            continue
        listed.append(name)
        nodes: dict[int, ScanNode] = {}
        node = get_session_node(name, store=store)
        for scan in node.children():
            if isinstance(scan, ScanNode):
                nodes[scan.number] = scan
        scans += [_summary_json(s, nodes.get(s.number)) for s in summary.scans]
    scans.sort(key=lambda s: (s["start_time"] or 0, s["number"]), reverse=True)
    return {"sessions": listed, "scans": scans}


def data_nodes(scan: ScanNode) -> dict[str, ChannelNode | LimaNode]:
    """The data nodes of ``scan`` by the name the view gives them, in publishing order.

    That name is the node's own, unless two data nodes of the scan share it (the plain API
    allows one name under two containers: each timer's ``elapsed_time``); those get their
    full name (``timer1:elapsed_time``), or their path in the scan if that collides too.
    The page, its live feed and its routes all use these names, so each curve is its own.
    """
    nodes = [n for n in scan.load_nodes() if isinstance(n, ChannelNode | LimaNode)]
    names = [n.name for n in nodes]
    full = [n.fullname if names.count(n.name) > 1 else n.name for n in nodes]
    prefix = scan.db_name + ":"
    keys = [
        n.db_name.removeprefix(prefix) if full.count(key) > 1 else key
        for n, key in zip(nodes, full, strict=True)
    ]
    return dict(zip(keys, nodes, strict=True))


def scalar_channels(scan: ScanNode) -> dict[str, ChannelNode]:
    """The 0D numeric channels of ``scan`` by their names in the view (:func:`data_nodes`)."""
    return {
        key: node
        for key, node in data_nodes(scan).items()
        if isinstance(node, ChannelNode) and node.point_shape == ()
    }


def channel(scan: ScanNode, name: str) -> ChannelNode | LimaNode:
    """The data node of ``scan`` named ``name`` in the view, or of that short or full name.

    Raises
    ------
    KeyError
        No such node.
    """
    nodes = data_nodes(scan)
    if name in nodes:
        return nodes[name]
    for node in nodes.values():
        if name in (node.name, node.fullname):
            return node
    raise KeyError(name)


def _node_json(name: str, node: ChannelNode | LimaNode) -> dict[str, Any]:
    if isinstance(node, ChannelNode):
        dim = len(node.point_shape)
        return {
            "name": name,
            "kind": ("scalar", "spectrum", "image")[min(dim, 2)],
            "dtype": str(node.dtype),
            "shape": list(node.point_shape),
            "unit": node.unit,
            "points": len(node),
        }
    return {
        "name": name,
        "kind": "lima",
        "dtype": str(node.dtype),
        "shape": list(node.shape),
        "unit": None,
        "points": len(node),
        "saving_mode": node.saving_mode,
    }


def describe_scan(store: DataStore, session: str, number: int) -> dict[str, Any]:
    """One scan for the scan page: identity, state, saving verdict, data nodes, scan_info.

    Raises
    ------
    SessionNotFoundError, ScanNotFoundError
        No such session or scan (expired, deleted).
    """
    scan = get_session_node(session, store=store).get_scan(number)
    info = dict(scan.info)
    saving = scan.saving
    nodes = [_node_json(name, node) for name, node in data_nodes(scan).items()]
    mesh = None
    if info.get("npoints1") and info.get("npoints2"):
        motors = _motors(info)
        kinds = {
            name.rsplit(":", 1)[-1]: (meta or {}).get("axis-kind")
            for name, meta in (info.get("channels") or {}).items()
            if isinstance(meta, dict)
        }
        mesh = {
            "npoints1": int(info["npoints1"]),
            "npoints2": int(info["npoints2"]),
            "motors": motors[:2],
            "backnforth": bool(motors) and kinds.get(motors[0]) == "backnforth",
        }
    return {
        "session": session,
        "number": number,
        "name": scan.scan_name,
        "title": info.get("title", scan.scan_name),
        "type": info.get("type"),
        "state": scan.state.name,
        "motors": _motors(info),
        "npoints": info.get("npoints"),
        "start": info.get("start_time"),
        "end": info.get("end_time"),
        "saving": {
            "state": saving.state.value,
            "file": saving.file,
            "entries": list(saving.entries),
            "points": saving.points,
            "reason": saving.reason,
        },
        "nodes": nodes,
        "mesh": mesh,
        "plots": info.get("plots"),
        "scan_info": info,
    }


def _scan(store: DataStore, session: str, number: int) -> ScanNode:
    return get_session_node(session, store=store).get_scan(number)


def _reduce_bins(values: np.ndarray, max_bins: int) -> np.ndarray:
    """``values`` (last axis) shortened to at most ``max_bins`` by the maximum of each group."""
    n = values.shape[-1]
    if n <= max_bins:
        return values
    group = math.ceil(n / max_bins)
    pad = group * math.ceil(n / group) - n
    if pad:
        widths = [(0, 0)] * (values.ndim - 1) + [(0, pad)]
        values = np.pad(values.astype(float), widths, constant_values=np.nan)
    shaped = values.reshape(*values.shape[:-1], -1, group)
    return np.asarray(np.nanmax(shaped, axis=-1))


def _list(values: np.ndarray) -> list[Any]:
    data = np.asarray(values, dtype=float)
    out: list[Any] = data.tolist()
    if not np.isfinite(data).all():
        out = [[_finite(v) for v in row] if isinstance(row, list) else _finite(row) for row in out]
    return out


def spectrum(store: DataStore, session: str, number: int, name: str, index: int) -> dict[str, Any]:
    """Spectrum ``index`` (negative: from the end) of the 1D channel ``name``.

    Raises
    ------
    KeyError
        No such channel.
    IndexNotYetThereError
        No spectrum yet.
    """
    node = channel(_scan(store, session, number), name)
    if not isinstance(node, ChannelNode):
        raise KeyError(name)
    count = len(node)
    if count == 0:
        raise IndexNotYetThereError(f"{name}: no spectrum yet")
    index = count + index if index < 0 else min(index, count - 1)
    values = np.asarray(node.get(index), dtype=float).reshape(-1)
    nbins = values.size
    return {
        "index": index,
        "count": count,
        "bins": nbins,
        "values": _list(_reduce_bins(values, MAX_SPECTRUM_BINS)),
    }


def waterfall(store: DataStore, session: str, number: int, name: str) -> dict[str, Any]:
    """The latest :data:`WATERFALL_ROWS` spectra of the 1D channel ``name``, bins reduced.

    Raises
    ------
    KeyError
        No such channel.
    """
    node = channel(_scan(store, session, number), name)
    if not isinstance(node, ChannelNode):
        raise KeyError(name)
    count = len(node)
    first = max(0, count - WATERFALL_ROWS)
    rows: list[Any] = []
    if count:
        data = node.get(first, count - 1)
        width = max((len(np.ravel(r)) for r in data), default=0)
        table = np.full((len(data), width), np.nan)
        for i, row in enumerate(data):  # variable-length spectra come as an object array
            flat = np.asarray(row, dtype=float).ravel()
            table[i, : flat.size] = flat
        rows = _list(_reduce_bins(table, 512))
    return {"first": first, "count": count, "rows": rows}


def mesh_map(store: DataStore, session: str, number: int, name: str) -> dict[str, Any]:
    """The values of the 0D channel ``name`` of a mesh scan, in point order, and its shape.

    Raises
    ------
    KeyError
        No such channel, or the scan is not a mesh (no ``npoints1``/``npoints2``).
    """
    scan = _scan(store, session, number)
    info = dict(scan.info)
    n1, n2 = int(info.get("npoints1") or 0), int(info.get("npoints2") or 0)
    node = channel(scan, name)
    if not n1 or not n2 or not isinstance(node, ChannelNode):
        raise KeyError(name)
    count = min(len(node), n1 * n2)
    values = np.asarray(node.get(0, count - 1), dtype=float) if count else np.empty(0)
    finite = values[np.isfinite(values)]
    return {
        "npoints1": n1,
        "npoints2": n2,
        "count": count,
        "min": float(finite.min()) if finite.size else None,
        "max": float(finite.max()) if finite.size else None,
        "values": _list(values),
    }


def image_frame(
    store: DataStore, session: str, number: int, name: str, index: int
) -> dict[str, Any]:
    """Image ``index`` (negative: from the end) of detector ``name``, as 8-bit grey levels.

    The frame is read through its reference (:func:`scanstream.read_image`: from the
    detector's file). Larger frames are strided down to :data:`MAX_IMAGE_SIDE`.

    Raises
    ------
    KeyError
        No such detector.
    IndexNotYetThereError
        No image yet.
    DecodingError, ImageNotSavedError
        The image cannot be read (file missing, format, NOSAVING).
    """
    node = channel(_scan(store, session, number), name)
    count = len(node)
    if count == 0:
        raise IndexNotYetThereError(f"{name}: no image yet")
    index = count + index if index < 0 else min(index, count - 1)
    frame = np.asarray(node[index] if isinstance(node, LimaNode) else node.get(index), dtype=float)
    if frame.ndim != 2:
        frame = frame.reshape(frame.shape[0], -1) if frame.ndim > 2 else frame.reshape(1, -1)
    step = max(1, math.ceil(max(frame.shape) / MAX_IMAGE_SIDE))
    shown = frame[::step, ::step]
    finite = shown[np.isfinite(shown)]
    lo = float(finite.min()) if finite.size else 0.0
    hi = float(finite.max()) if finite.size else 0.0
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    grey = np.clip(np.nan_to_num((shown - lo) * scale), 0, 255).astype(np.uint8)
    return {
        "index": index,
        "count": count,
        "height": int(grey.shape[0]),
        "width": int(grey.shape[1]),
        "shape": list(frame.shape),
        "min": lo,
        "max": hi,
        "data": base64.b64encode(np.ascontiguousarray(grey).tobytes()).decode(),
    }


def analyse(store: DataStore, session: str, number: int, x: str, ys: list[str]) -> dict[str, Any]:
    """peak, its value, cen, fwhm and com of each ``y`` against ``x`` (:mod:`scanstream.analysis`).

    ``x`` is a 0D channel's name, or ``#`` for the point index. The full curves are read
    (not the decimated view), so the numbers are those a Python user gets.

    Raises
    ------
    KeyError
        No such channel.
    """
    scan = _scan(store, session, number)
    nodes = scalar_channels(scan)
    wanted = [nodes[name] for name in ([x] if x != "#" else []) + ys]  # KeyError if unknown
    count = min(min((len(n) for n in wanted), default=0), MAX_ANALYSED_POINTS)
    out: dict[str, Any] = {"x": x, "count": count, "curves": {}}
    if not count:
        return out
    xs = np.arange(count, dtype=float) if x == "#" else nodes[x].get(0, count - 1)
    for name in ys:
        stats = curve_stats(xs, nodes[name].get(0, count - 1))
        out["curves"][name] = {k: _finite(v) for k, v in stats._asdict().items()}
    return out
