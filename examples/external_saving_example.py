#!/usr/bin/env python
"""Save every scan of a session into an HDF5 file: the seed's external saving example.

A short script on the public subscriber API only, kept readable: one worker per scan started
on NEW_NODE, one dataset per channel filled on NEW_DATA, image references and scan_info
metadata written at END_SCAN. The production writer, with NeXus layout, restarts, default
plots and error isolation, is ``scanstream writer SESSION``.

    python examples/external_saving_example.py --session test_session --output /tmp/scans.h5

then publish scans from another terminal (``python examples/some_scans.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading

import h5py
import numpy as np

from scanstream import EventType, ScanNode, get_session_node

# Scan workers and the session loop print from several threads: one lock, one write per line,
# so that lines never mix (print() writes the text and the newline separately).
_PRINT_LOCK = threading.Lock()


def say(text: str) -> None:
    """Print one whole line, at once."""
    with _PRINT_LOCK:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


# One h5py file shared by the scan workers: h5py calls are serialized by this lock.
FILE_LOCK = threading.Lock()


class HDF5Writer:
    """Writes one scan into the group ``<scan number>.1`` of the output file."""

    def __init__(self, scan_node: ScanNode, file: h5py.File) -> None:
        self.scan_node = scan_node
        self.file = file
        with FILE_LOCK:
            self.entry = file.require_group(f"{scan_node.number}.1")
            self.entry.attrs["NX_class"] = "NXentry"
            self.measurement = self.entry.require_group("measurement")
            self.measurement.attrs["NX_class"] = "NXcollection"
        self.images: dict[str, list] = {}

    def run(self) -> None:
        for event_type, node, event_data in self.scan_node.walk_events():
            if event_type == EventType.NEW_NODE and node.type == "channel":
                self._create_dataset(node)
            elif event_type == EventType.NEW_DATA and node.type == "channel":
                self._append(node.name, event_data.first_index, event_data.data)
            elif event_type == EventType.NEW_DATA and node.type == "lima":
                self.images.setdefault(node.name, []).extend(event_data.data)
            elif event_type == EventType.END_SCAN:
                self.finalize(event_data)
                break

    def _create_dataset(self, node) -> None:
        name = node.name.replace("/", "_")
        if node.point_shape == (-1,):  # variable-length 1D points: one variable-length array each
            dtype, shape = h5py.vlen_dtype(node.dtype), ()
        else:
            dtype, shape = node.dtype, node.shape
        with FILE_LOCK:
            self.measurement.require_dataset(
                name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype, chunks=True
            )

    def _append(self, name: str, first_index: int, data: np.ndarray) -> None:
        with FILE_LOCK:
            dataset = self.measurement[name.replace("/", "_")]
            end = first_index + len(data)
            if dataset.shape[0] < end:
                dataset.resize(end, axis=0)
            dataset[first_index:end] = data  # written at its index: never shifted or doubled
            self.file.flush()

    def finalize(self, event_data) -> None:
        info = self.scan_node.info
        with FILE_LOCK:
            self.entry["title"] = info.get("title", self.scan_node.name)
            self.entry["start_time"] = info.get("start_time", "")
            self.entry["end_reason"] = event_data.data.name  # DONE, USER_ABORTED, KILLED, FAILED
            self.entry["scan_info"] = json.dumps(info, default=str)
            for name, references in self.images.items():
                # (file, path in file, index in file, format) of every frame.
                table = [[str(value) for value in reference] for reference in references]
                self.measurement[name.replace("/", "_") + "_references"] = table
            self.file.flush()
        say(f"saved {self.scan_node.name} ({event_data.data.name})")


def listen_to_session_wait_for_scans(
    session: str, output: str, redis_url: str | None, timeout: float | None
) -> None:
    session_node = get_session_node(session, redis_url=redis_url)
    workers: list[threading.Thread] = []
    say(f"saving the scans of session {session!r} into {output} (Ctrl-C to stop)")
    with h5py.File(output, "a") as file:
        for event_type, node, _ in session_node.walk_on_new_events(
            include_filter="scan", from_next=True, timeout=timeout
        ):
            if event_type == EventType.NEW_NODE:
                say(f"new scan {node.name}")
                worker = threading.Thread(target=HDF5Writer(node, file).run, daemon=True)
                worker.start()
                workers.append(worker)
        for worker in workers:
            worker.join(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--session", default="test_session", help="session (default: test_session)")
    parser.add_argument("--output", default="scans.h5", help="HDF5 file (default: scans.h5)")
    parser.add_argument("--redis-url", default=None, help="Redis URL (default: embedded server)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="stop after this many seconds without a new scan (default: never)",
    )
    args = parser.parse_args(argv)
    try:
        listen_to_session_wait_for_scans(args.session, args.output, args.redis_url, args.timeout)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
