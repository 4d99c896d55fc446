"""A soak publisher process: scans back to back into one session until a deadline.

``python -m soak.publisher URL SESSION SESSION_INDEX ROOT MANIFEST --until EPOCH``

Each scan follows :func:`soak.workload.plan`. After each scan one JSON line is appended to
MANIFEST (scan number, index, final state, points per node); nothing accumulates in memory.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from scanstream import DataStore, ScanState, Settings, create_session

from . import workload


def publish_scan(
    session: Any, name: str, p: workload.ScanPlan, root: Path, point_time: float
) -> tuple[int, str]:
    """Publish scan ``p``; return its number and final state name."""
    info = {
        "title": f"soak {p.kind} {p.npoints}",
        "npoints": p.npoints,
        "count_time": point_time,
        "filename": p.filename(name),
        "soak": {"index": p.index, "kind": p.kind},
    }
    scan = session.create_scan(f"soak_{p.kind}", info)
    try:
        timer = scan.create_container("timer")
        channels = {
            cname: timer.create_channel(cname, dtype=dtype, shape=shape)
            for cname, (dtype, shape) in p.channels().items()
        }
        lima = acquisition = None
        if p.has_lima():
            det = workload.detector(p)
            acquisition = det.start(
                p.npoints, directory=workload.lima_directory(root, name, p), count_time=point_time
            )
            lima = timer.create_lima(
                det.fullname, det.dtype, det.shape, info=acquisition.description()
            )
        scan.prepared()
        for j in range(p.acquired):
            for cname, channel in channels.items():
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
    args = parser.parse_args(argv)
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    store = DataStore(settings=Settings.from_env(redis_url=args.url, retention_time=args.retention))
    session = create_session(args.session, store=store)
    index = 0
    with open(args.manifest, "a", encoding="utf-8") as manifest:
        while not stop and time.time() < args.until:
            p = workload.plan(args.session_index, index)
            number, state = publish_scan(session, args.session, p, args.root, args.point_time)
            manifest.write(
                json.dumps(
                    {
                        "session": args.session,
                        "session_index": args.session_index,
                        "number": number,
                        "index": index,
                        "kind": p.kind,
                        "state": state,
                        "points": p.expected_points(),
                        "file": p.filename(args.session),
                        "end": time.time(),
                    }
                )
                + "\n"
            )
            manifest.flush()
            index += 1
        manifest.write(
            json.dumps({"session": args.session, "finished": True, "scans": index}) + "\n"
        )
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
