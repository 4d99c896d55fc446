"""``scanstream show SESSION [N]``: one stored scan described, for a person or (``--json``) a script.

It reads through the subscriber API only (never writes): the scan's identity and state, its
start and end, every data node with dtype, shape, unit and number of points, the image
references of detectors, the saving verdict (file and entries), and the entries of the scan's
event stream skipped as corrupt (each named with what is wrong).
"""

from __future__ import annotations

import argparse
import datetime
import json
from typing import Any, cast

from .._transport.connection import DataStore
from .._transport.shared_server import resolve_url
from ..admin.wording import noun
from ..exceptions import DecodingError, ScanNotFoundError, SessionNotFoundError
from ..subscribe.data_nodes import ChannelNode, LimaNode, ScanRefNode
from ..subscribe.nodes import DataNode
from ..subscribe.tree import ScanNode, get_session_node
from .errors import print_error
from .usage import scan_number, session_name


def configure_show(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``scanstream show``."""
    parser.add_argument("session", type=session_name, help="the session of the scan")
    parser.add_argument(
        "number",
        nargs="?",
        type=scan_number,
        default=None,
        help="scan number (default: the latest)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")


def run_show(args: argparse.Namespace) -> int:
    """Print the scan; exit 0, or 1 when the session or the scan is not in Redis."""
    with DataStore(resolve_url(args.redis_url)) as store:
        try:
            scan = _find_scan(store, args.session, args.number)
        except SessionNotFoundError as exc:  # the message lists the known sessions
            print_error("show", str(exc))
            return 1
        except ScanNotFoundError as exc:
            print_error("show", f"{exc}; `scanstream ls {args.session}` lists its stored scans")
            return 1
        description = describe_scan(scan)
    if args.json:
        print(json.dumps(description, indent=2, default=str))
    else:
        print(format_description(description))
    return 0


def _find_scan(store: DataStore, session: str, number: int | None) -> ScanNode:
    # As ls and delete: a session that does not exist is said so, with the known ones, not
    # as a scan missing from it.
    store.require_session(session)
    node = get_session_node(session, store=store)
    if number is not None:
        return node.get_scan(number)
    scans = node.children()
    if not scans:
        raise ScanNotFoundError(f"session {session!r} holds no stored scan")
    return cast(ScanNode, scans[-1])  # a session's children are its scans


def describe_scan(scan: ScanNode) -> dict[str, Any]:
    """A plain-data description of ``scan`` (what ``--json`` prints)."""
    nodes = [_describe_or_report(node) for node in scan.load_nodes()]
    # Garbage in the scan's event stream: its entry is named, the rest is shown all the same.
    corrupt = {entry: str(exc) for entry, exc in scan.corrupt_entries.items()}
    try:
        info = dict(scan.info)
    except DecodingError as exc:  # garbage over the scan_info: named as the entries are
        info = {}
        corrupt[scan.key] = str(exc)
    end = scan.scan_end
    saving = scan.saving
    return {
        "session": scan.session_name,
        "number": scan.number,
        "name": scan.scan_name,
        "title": info.get("title", scan.scan_name),
        "type": info.get("type", scan.type),
        "state": scan.state.name,
        "error": info.get("error") or (end.error if end else None),
        "start_time": info.get("start_time"),
        "end_time": info.get("end_time"),
        "npoints": info.get("npoints"),
        "nodes": [n for n in nodes if n is not None],
        "corrupt_entries": corrupt,
        "saving": {
            "state": saving.state.value,
            "file": saving.file,
            "entries": list(saving.entries),
            "points": saving.points,
            "reason": saving.reason,
        },
    }


def _describe_or_report(node: DataNode) -> dict[str, Any] | None:
    """The node's description; for one whose data is unreadable (garbage in Redis), what is
    wrong, so that the other nodes are shown."""
    try:
        return _describe_node(node)
    except DecodingError as exc:
        return {"kind": "corrupt", "name": node.name, "error": str(exc)}


def _describe_node(node: object) -> dict[str, Any] | None:
    if isinstance(node, ChannelNode):
        return {
            "kind": "channel",
            "name": node.name,
            "dtype": str(node.dtype),
            "shape": list(node.point_shape),
            "unit": node.unit,
            "points": len(node),
        }
    if isinstance(node, LimaNode):
        refs = node.all_image_references() if node.saving_mode != "NOSAVING" else []
        files = sorted({ref.file_path for ref in refs})
        return {
            "kind": "lima",
            "name": node.name,
            "dtype": str(node.dtype),
            "shape": list(node.shape),
            "points": len(node),
            "saving_mode": node.saving_mode,
            "image_files": files,
        }
    if isinstance(node, ScanRefNode):
        return {"kind": "scan references", "name": node.name, "points": len(node)}
    return None


def format_description(d: dict[str, Any]) -> str:
    """The text ``scanstream show`` prints for a description from :func:`describe_scan`."""
    saving = d["saving"]
    if saving["state"] == "SAVED":
        where = f"saved in {saving['file']}::{','.join(saving['entries'])}"
    elif saving["state"] == "WRITING":
        where = f"being written into {saving['file']}"
    elif saving["reason"]:
        where = f"{saving['state']}: {saving['reason']}"
    else:
        where = saving["state"]
    lines = [
        f"scan {d['number']} of session {d['session']}: {d['title']}",
        f"  type      {d['type']}",
        f"  state     {d['state']}" + (f" ({d['error']})" if d["error"] else ""),
        f"  started   {_time(d['start_time'])}",
        f"  ended     {_time(d['end_time'])}",
        f"  saving    {where}",
        "  data:",
    ]
    width = max((len(n["name"]) for n in d["nodes"]), default=4)
    for n in d["nodes"]:
        if n["kind"] == "channel":
            shape = (
                "scalar" if not n["shape"] else "x".join(map(str, n["shape"])).replace("-1", "n")
            )
            unit = f" [{n['unit']}]" if n["unit"] else ""
            lines.append(
                f"    {n['name']:<{width}}  {n['points']:>8} {noun(n['points'], 'point'):<6}  "
                f"{n['dtype']:<8} {shape}{unit}"
            )
        elif n["kind"] == "lima":
            files = ", ".join(n["image_files"]) or "(not saved)"
            lines.append(
                f"    {n['name']:<{width}}  {n['points']:>8} {noun(n['points'], 'image'):<6}  "
                f"{n['dtype']:<8} "
                f"{'x'.join(map(str, n['shape']))}  in {files}"
            )
        elif n["kind"] == "corrupt":
            lines.append(f"    {n['name']:<{width}}  unreadable: {n['error']}")
        else:
            lines.append(
                f"    {n['name']:<{width}}  {n['points']:>8} {noun(n['points'], 'scan')} referenced"
            )
    if d["corrupt_entries"]:
        lines.append("  corrupt entries (skipped):")
        lines += [f"    {entry}: {text}" for entry, text in d["corrupt_entries"].items()]
    return "\n".join(lines)


def _time(value: object) -> str:
    """An ISO time as stored, shortened to seconds for reading; '-' when absent."""
    if not isinstance(value, str) or not value:
        return "-"
    try:
        return datetime.datetime.fromisoformat(value).isoformat(timespec="seconds")
    except ValueError:
        return value
