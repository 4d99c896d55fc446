"""A BLISS-1.x-style external writer, run by the tests through ``scanstream legacy``.

Written as subscriber code was written for BLISS 1.x: gevent monkey-patched, the
``bliss.data`` imports, one greenlet per scan walking its events, ``info.get_all()``,
``fullname``, datasets created as ``(npoints,) + node.shape`` and grown, lima references
read at the end. It stops once the scan named ``stop_marker`` has ended.

Usage: ``scanstream legacy bliss_style_writer.py SESSION FILE.h5``
"""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import h5py  # noqa: E402
import numpy  # noqa: E402
from bliss.data.events import EventType  # noqa: E402
from bliss.data.node import get_session_node  # noqa: E402
from bliss.data.nodes.channel import ChannelDataNode  # noqa: E402
from bliss.data.nodes.lima import LimaImageChannelDataNode  # noqa: E402


class ScanWriter:
    def __init__(self, scan_node, h5file):
        self.scan_node = scan_node
        self.file = h5file
        self.group = h5file.create_group(scan_node.name)
        self.indices = {}
        self.channels = []
        self.limas = []
        self.refs = []
        self.greenlet = gevent.spawn(self.run)

    def key(self, node):
        return node.db_name[len(self.scan_node.db_name) + 1 :]

    def run(self):
        npoints = self.scan_node.info.get("npoints") or 1
        for event_type, node, _ in self.scan_node.walk_events():
            if event_type == EventType.NEW_NODE and isinstance(node, ChannelDataNode):
                self.channels.append(node)
                self.indices[node.db_name] = 0
                shape = tuple([npoints] + list(node.shape))
                floats = numpy.dtype(node.dtype).kind == "f"
                self.group.create_dataset(
                    self.key(node),
                    shape=shape,
                    dtype=node.dtype,
                    maxshape=(None,) * len(shape),
                    fillvalue=numpy.nan if floats else 0,
                )
                self.group[self.key(node)].attrs["fullname"] = node.fullname
            elif event_type == EventType.NEW_NODE and isinstance(node, LimaImageChannelDataNode):
                self.limas.append(node)
            elif event_type == EventType.NEW_NODE and node.type == "node_ref_channel":
                self.refs.append(node)
            elif event_type == EventType.NEW_DATA and isinstance(node, ChannelDataNode):
                self.update(node)
        self.finalize()

    def update(self, node):
        start = self.indices[node.db_name]
        if start >= len(node):
            return
        data = node.get_as_array(start, -1)
        dataset = self.group[self.key(node)]
        stop = start + data.shape[0]
        if dataset.shape[0] < stop:
            dataset.resize(stop, axis=0)
        if dataset.ndim > 1 and dataset.shape[1] < data.shape[-1]:
            dataset.resize(data.shape[-1], axis=1)
        if dataset.ndim <= 1:
            dataset[start:stop] = data
        else:
            dataset[start:stop, 0 : data.shape[-1]] = data
        self.indices[node.db_name] = stop

    def finalize(self):
        for node in self.channels:
            self.update(node)
            # A writer that keeps exactly the acquired points (no NaN tail).
            self.group[self.key(node)].resize(self.indices[node.db_name], axis=0)
        for node in self.limas:
            if node.saving_mode == "NOSAVING":
                self.group.attrs[self.key(node) + "@images"] = len(node)
                continue
            refs = node.get(0, -1).all_image_references()
            rows = [[str(r[0]), str(r[1]), str(r[2]), str(r[3])] for r in refs]
            self.group.create_dataset(
                self.key(node), data=numpy.array(rows, dtype=h5py.special_dtype(vlen=str))
            )
        for node in self.refs:
            self.group.attrs[self.key(node)] = json.dumps([s.db_name for s in node.get(0, -1)])
        info = self.scan_node.info.get_all()
        self.group.attrs["scan_info"] = json.dumps(info, default=str)
        self.file.flush()


def main(session_name, path):
    session = get_session_node(session_name)
    writers = []
    started = gevent.event.Event()
    with h5py.File(path, "w") as h5file:
        walk = session.walk_on_new_events(
            exclude_children=("scan", "scan_group"), started_event=started
        )
        print("ready", flush=True)
        for event_type, node, _ in walk:
            if event_type == EventType.NEW_NODE and node.type in ("scan", "scan_group"):
                if node.name.endswith("_stop_marker"):
                    continue
                writers.append(ScanWriter(node, h5file))
            elif event_type == EventType.END_SCAN and node.name.endswith("_stop_marker"):
                break
        gevent.joinall([w.greenlet for w in writers], timeout=60, raise_error=True)
    print(json.dumps([w.scan_node.name for w in writers]), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
