"""A soak publisher process: scans back to back into one session until a deadline.

``python -m soak.publisher URL SESSION SESSION_INDEX ROOT MANIFEST --until EPOCH``

Each scan follows :func:`soak.workload.plan` (of the kinds ``--kinds``). After each scan one JSON line is appended to
MANIFEST (scan number, index, final state, points per node); nothing accumulates in memory.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from scanstream import DataStore, ScanState, ServerResetError, Settings, create_session

from . import workload


def _info(p: workload.ScanPlan, name: str, point_time: float) -> dict[str, Any]:
    info: dict[str, Any] = {
        "title": f"soak {p.kind} {p.npoints}",
        "npoints": p.npoints,
        "count_time": point_time,
        "filename": p.filename(name),
        "soak": {"index": p.index, "kind": p.kind, "sub": p.sub},
    }
    if p.kind == "sequence":
        info.update({"type": "sequence", "is-scan-sequence": True})
        info["npoints"] = workload.SEQUENCE_LENGTH
    return info


def publish_scan(
    session: Any,
    name: str,
    p: workload.ScanPlan,
    root: Path,
    point_time: float,
    on_ended: Callable[[workload.ScanPlan, int, str], None] | None = None,
    on_created: Callable[[Any], None] | None = None,
) -> tuple[int, str]:
    """Publish scan ``p`` (a sequence: with its sub-scans); return its number and final state.

    ``on_ended(plan, number, state)`` is called after each sub-scan of a sequence ends;
    ``on_created(scan_publisher)`` right after the scan is created (a sequence references its
    sub-scans there, as BLISS does).
    """
    if p.kind == "sequence":
        return _publish_sequence(session, name, p, root, point_time, on_ended)
    scan = session.create_scan(f"soak_{p.kind}", _info(p, name, point_time))
    if on_created is not None:
        on_created(scan)
    try:
        channels: dict[str, Any] = {}
        lima = acquisition = None
        for master, names in p.masters().items():
            container = scan.create_container(master)
            types = p.channels()
            for cname in names:
                dtype, shape = types[cname]
                channels[cname] = container.create_channel(cname, dtype=dtype, shape=shape)
            if p.has_lima() and master != "timer1":
                det = workload.detector(p)
                acquisition = det.start(
                    p.npoints,
                    directory=workload.lima_directory(root, name, p),
                    count_time=point_time,
                )
                lima = container.create_lima(
                    det.fullname, det.dtype, det.shape, info=acquisition.description()
                )
        scan.prepared()
        for j in range(p.acquired):
            for cname, channel in channels.items():
                if p.emits(cname, j):
                    channel.emit(workload.point_value(p, cname, j))
            if lima is not None and acquisition is not None:
                lima.emit([acquisition.acquire(j)])
            if point_time:
                time.sleep(point_time)
        if acquisition is not None:
            acquisition.close()
        if p.abort_at is None:
            scan.end(ScanState.DONE)
        else:
            scan.end(ScanState.USER_ABORTED, error="soak: aborted on purpose")
    except BaseException:
        if not scan.state.is_final:
            scan.end(ScanState.FAILED, error="soak publisher error")
        raise
    return scan.number, scan.state.name


def _publish_sequence(
    session: Any,
    name: str,
    p: workload.ScanPlan,
    root: Path,
    point_time: float,
    on_ended: Callable[[workload.ScanPlan, int, str], None] | None,
) -> tuple[int, str]:
    """A scan group referencing its sub-scans, each referenced as soon as it is created."""
    group = session.create_scan("soak_sequence", _info(p, name, point_time), node_type="scan_group")
    try:
        master = group.create_container("GroupingMaster")
        refs = master.create_scan_ref_channel("scans")
        numbers = master.create_channel("scan_numbers", "int64")
        group.prepared()

        def reference(scan: Any) -> None:
            refs.emit((scan.session_name, int(scan.number)))
            numbers.emit(int(scan.number))

        for sub in p.subscans():
            sub_number, state = publish_scan(
                session, name, sub, root, point_time, on_created=reference
            )
            if on_ended is not None:
                on_ended(sub, sub_number, state)
        group.end(ScanState.DONE)
    except BaseException:
        if not group.state.is_final:
            group.end(ScanState.FAILED, error="soak publisher error")
        raise
    return group.number, group.state.name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m soak.publisher")
    parser.add_argument("url")
    parser.add_argument("session")
    parser.add_argument("session_index", type=int)
    parser.add_argument("root", type=Path)
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--until", type=float, required=True, help="epoch: start no scan after it")
    parser.add_argument("--point-time", type=float, default=0.01)
    parser.add_argument("--retention", type=float, default=30.0)
    parser.add_argument(
        "--kinds", default=",".join(workload.KINDS), help="comma-separated kinds of scans"
    )
    parser.add_argument("--first-index", type=int, default=0, help="plan index of the first scan")
    parser.add_argument(
        "--keep-going",
        action="store_true",
        help="a scan that fails (garbage over its keys, the server away) is recorded as an "
        "error and the next one is published, instead of ending the process",
    )
    args = parser.parse_args(argv)
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    store = DataStore(settings=Settings.from_env(redis_url=args.url, retention_time=args.retention))
    session = create_session(args.session, store=store)
    index = 0
    kinds = tuple(args.kinds.split(","))
    with open(args.manifest, "a", encoding="utf-8") as manifest:

        def record(p: workload.ScanPlan, number: int, state: str, **extra: Any) -> None:
            line = {
                "session": args.session,
                "session_index": args.session_index,
                "number": number,
                "index": p.index,
                "sub": p.sub,
                "kind": p.kind,
                "state": state,
                "points": p.expected_points(),
                "file": p.filename(args.session),
                "end": time.time(),
                **extra,
            }
            manifest.write(json.dumps(line) + "\n")
            manifest.flush()

        def sub_ended(subs: list[int], sub: workload.ScanPlan, number: int, state: str) -> None:
            subs.append(number)
            record(sub, number, state)

        index = args.first_index
        while not stop and time.time() < args.until:
            p = workload.plan(args.session_index, index, kinds)
            subs: list[int] = []
            try:
                number, state = publish_scan(
                    session, args.session, p, args.root, args.point_time, partial(sub_ended, subs)
                )
            except Exception as exc:
                if not args.keep_going or isinstance(exc, ServerResetError):
                    raise  # a reset server is refused for good: a new process goes on
                # The chaos run damages keys under the publisher: its scan fails, not the run.
                error = {"session": args.session, "index": p.index, "kind": p.kind}
                manifest.write(json.dumps(error | {"error": f"{type(exc).__name__}: {exc}"}))
                manifest.write("\n")
                manifest.flush()
                index += 1
                time.sleep(0.2)
                continue
            record(p, number, state, **({"subs": subs} if p.kind == "sequence" else {}))
            index += 1
        manifest.write(
            json.dumps({"session": args.session, "finished": True, "scans": index}) + "\n"
        )
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
