#!/usr/bin/env python
"""Print every scan of a session as it starts and ends, with the number of points per channel.

The seed's listening loop, on scanstream's subscriber API. Run it, then publish scans from
another terminal (for example ``scanstream scan --session test_session ascan roby 0 1 10 0.1
diode`` or ``python examples/some_scans.py``)::

    python examples/listen_session.py --session test_session

Without ``--redis-url`` or ``$SCANSTREAM_REDIS_URL`` it uses your embedded server (started if
needed). Stop it with Ctrl-C, or give ``--timeout`` to stop after that many idle seconds.
"""

from __future__ import annotations

import argparse
import sys
import threading

from scanstream import EventType, ScanNode, get_session_node

# Scan workers and the session loop print from several threads: one lock, one write per line,
# so that lines never mix (print() writes the text and the newline separately).
_PRINT_LOCK = threading.Lock()


def say(text: str) -> None:
    """Print one whole line, at once."""
    with _PRINT_LOCK:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def count_points(scan_node: ScanNode, done: threading.Event) -> None:
    """Walk one scan's events and print, at its END_SCAN, how many points each channel got."""
    counts: dict[str, int] = {}
    for event_type, node, event_data in scan_node.walk_events():
        if event_type == EventType.NEW_DATA and node.type in ("channel", "lima"):
            counts[node.name] = counts.get(node.name, 0) + len(event_data.data)
        elif event_type == EventType.END_SCAN:
            break
    summary = ", ".join(f"{name}={count}" for name, count in counts.items()) or "no data"
    say(f"  data of {scan_node.name}: {summary}")
    done.set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--session", default="test_session", help="session (default: test_session)")
    parser.add_argument("--redis-url", default=None, help="Redis URL (default: embedded server)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="stop after this many seconds without any event (default: never)",
    )
    parser.add_argument(
        "--history",
        action="store_true",
        help="also list the scans already stored, not only the new ones",
    )
    args = parser.parse_args(argv)

    session_node = get_session_node(args.session, redis_url=args.redis_url)
    say(f"listening to session {args.session!r} (Ctrl-C to stop)")
    workers: list[threading.Thread] = []
    try:
        # The seed's loop: scans only, so no data stream is read here.
        for event_type, node, event_data in session_node.walk_on_new_events(
            include_filter="scan", from_next=not args.history, timeout=args.timeout
        ):
            if event_type == EventType.NEW_NODE:
                say(f"scan started: {node.name}  {node.info.get('title', '')}")
                # One worker per scan, as the seed's writer does: scans may run at once.
                worker = threading.Thread(
                    target=count_points, args=(node, threading.Event()), daemon=True
                )
                worker.start()
                workers.append(worker)
            elif event_type == EventType.END_SCAN:
                # END_SCAN carries the final state, and the error text when it failed.
                error = event_data.description["error"]
                say(
                    f"scan ended:   {node.name}  {event_data.data.name}"
                    f"{'  ' + error if error else ''}"
                )
    except KeyboardInterrupt:
        pass
    for worker in workers:
        worker.join(timeout=5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
