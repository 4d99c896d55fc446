"""A soak subscriber process: follows every soak session, one thread per session.

``python -m soak.subscriber URL OUTPUT SESSION...``

Each thread walks its session from the start (``walk_on_new_events(from_next=False)``, scans
only) and, for each new scan, walks that scan's events (``walk_events``) until its END_SCAN,
counting the points of every data node and checking that batches are contiguous
(``first_index`` equals the count so far: no hole, no duplicate). One JSON line per scan is
appended to OUTPUT, and one per END_SCAN seen by the session walk; nothing accumulates in
memory. SIGTERM stops the walks.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import traceback
from typing import Any, TextIO

from scanstream import DataStore, EventType, Settings, StopHandler, get_session_node


def follow_scan(scan: Any, stop: StopHandler) -> dict[str, Any]:
    """Walk one scan to its END_SCAN; return the counts."""
    points: dict[str, int] = {}
    errors: list[str] = []
    end = None
    events = 0
    for event_type, node, data in scan.walk_events(stop_handler=stop):
        events += 1
        if event_type == EventType.NEW_DATA and node.type in ("channel", "lima"):
            have = points.get(node.name, 0)
            if data.first_index != have:
                errors.append(f"{node.name}: batch at {data.first_index}, expected {have}")
            size = len(data.data) if node.type == "channel" else data.block_size
            if size != data.block_size:
                errors.append(
                    f"{node.name}: {size} points in a batch of block_size {data.block_size}"
                )
            points[node.name] = have + data.block_size
        elif event_type == EventType.END_SCAN and node is scan:
            end = data.data.name
    return {"points": points, "walk_end": end, "events": events, "errors": errors}


def follow_session(
    url_store: DataStore, session: str, stop: StopHandler, out: TextIO, lock: threading.Lock
) -> None:
    def write(record: dict[str, Any]) -> None:
        with lock:
            out.write(json.dumps(record) + "\n")
            out.flush()

    try:
        node = get_session_node(session, store=url_store)
        for event_type, scan, data in node.walk_on_new_events(
            from_next=False,
            include_filter=("scan", "scan_group"),
            exclude_children=("scan", "scan_group"),
            stop_handler=stop,
        ):
            if event_type == EventType.NEW_NODE:
                try:
                    record = follow_scan(scan, stop)
                except Exception as exc:
                    record = {"errors": [f"{type(exc).__name__}: {exc}"]}
                if stop.stopped:
                    return
                write({"session": session, "number": scan.number, "scan": record})
            elif event_type == EventType.END_SCAN:
                write({"session": session, "number": scan.number, "end": data.data.name})
    except Exception:
        write({"session": session, "fatal": traceback.format_exc()})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m soak.subscriber")
    parser.add_argument("url")
    parser.add_argument("output")
    parser.add_argument("sessions", nargs="+")
    args = parser.parse_args(argv)
    stop = StopHandler()
    signal.signal(signal.SIGTERM, lambda *_: stop.stop())
    signal.signal(signal.SIGINT, lambda *_: stop.stop())
    store = DataStore(settings=Settings.from_env(redis_url=args.url))
    lock = threading.Lock()
    with open(args.output, "a", encoding="utf-8") as out:
        threads = [
            threading.Thread(
                target=follow_session,
                args=(store, s, stop, out, lock),
                name=f"follow-{s}",
                daemon=True,
            )
            for s in args.sessions
        ]
        for thread in threads:
            thread.start()
        while not stop.wait(0.5):
            pass
        for thread in threads:
            thread.join(10)
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
