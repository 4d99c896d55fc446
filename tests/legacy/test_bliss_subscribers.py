"""A subscriber shaped as BLISS's Nexus writer service, run with ``scanstream legacy``.

The script below is ours; it stands for what ``nexus_writer_service/subscribers``
(``session_writer``, ``base_subscriber``, ``scan_writer_base``) do with the subscriber API,
which was run against scanstream with their HDF5 layer replaced: a session walk with
``include_filter`` and ``exclude_children`` set to the scan types, a writer per scan that finds
its node through ``datanode_factory(..., state="exists", on_not_state="instantiate")``, keeps
``node.node_type``, walks the scan with a stop handler and a started event, makes up the scan's
own NEW_NODE, stops at END_SCAN, then fetches what is left (``get_as_array(n, -1)``,
``get(n, -1).all_image_references(saved=True)``) and reports its delays from
``scan_info["start_time"]`` and ``["end_time"]`` (datetimes). It failed on ``node.node_type``
and on those datetimes before.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap

from child_output import readline

from scanstream import get_session_node
from scanstream.sim import SavingConfig
from scanstream.sim.catalogue import run_catalogue

from .test_hook import SRC

NEXUS_LIKE_WRITER = textwrap.dedent(
    """
    import datetime, sys, threading
    from bliss.config.streaming import DataStreamReaderStopHandler
    from bliss.data.node import datanode_factory

    SCAN_TYPES = ("scan", "scan_group")

    def get_node(node_type, db_name):
        return datanode_factory(db_name, node_type=node_type, state="exists",
                                on_not_state="instantiate")

    class ScanWriter:
        def __init__(self, db_name, node_type):
            self.db_name, self.node_type = db_name, node_type
            self.init_time = datetime.datetime.now()
            self.points, self.images, self.subscans, self.nodes = {}, {}, [], []
            self.started = threading.Event()
            self.thread = threading.Thread(target=self.run)
            self.thread.start()
            self.started.wait(10)

        def run(self):
            self.node = get_node(self.node_type, self.db_name)
            first = True
            for event_type, node, event_data in self.node.walk_events(
                stop_handler=DataStreamReaderStopHandler(), started_event=self.started
            ):
                if event_type == event_type.END_SCAN:
                    break
                if first:  # the scan's own NEW_NODE is not emitted on the scan node
                    self.new_node(self.node)
                    first = False
                if event_type == event_type.NEW_NODE:
                    self.new_node(node)
                elif event_type == event_type.NEW_DATA:
                    self.fetch(node, event_data)
            for node in self.nodes:  # the last data
                self.fetch(node, None)

        def new_node(self, node):
            if node.type in ("channel", "lima"):
                self.nodes.append(node)
            elif node.type not in SCAN_TYPES and node.parent.type in SCAN_TYPES:
                self.subscans.append((node.name, node.node_type))

        def fetch(self, node, event_data):
            if node.type == "channel":
                done = self.points.setdefault(node.fullname, [])
                new = event_data.data if event_data else node.get_as_array(len(done), -1)
                done.extend(new.tolist())
            elif node.type == "lima" and node.info.get("saving_mode") != "NOSAVING":
                done = self.images.setdefault(node.fullname, [])
                if event_data:
                    new = event_data.data
                else:
                    view = node.get(len(done), -1)
                    # BLISS: a view's references are the acquisition's, from its first image
                    new = view.all_image_references(saved=True)[len(done):] if len(view) else []
                done.extend(tuple(ref) for ref in new)

        def report(self):
            info = self.node.info.get_all()
            start, end = info["start_time"], info["end_time"]
            delays_ok = start <= self.init_time and end <= datetime.datetime.now()
            lengths = {k: len(v) for k, v in self.points.items()}
            images = {k: len(v) for k, v in self.images.items()}
            return [self.node.name, self.node_type, self.subscans, lengths, images, delays_ok]

    writers = {}
    session = get_node("session", sys.argv[1])
    expected = int(sys.argv[2])
    stop, started = DataStreamReaderStopHandler(), threading.Event()
    threading.Timer(0.1, lambda: started.wait(10) and print("READY", flush=True)).start()
    for event_type, node, event_data in session.walk_on_new_events(
        include_filter=SCAN_TYPES, exclude_children=SCAN_TYPES,
        stop_handler=stop, started_event=started,
    ):
        if event_type == event_type.NEW_NODE and node.type in SCAN_TYPES:
            writers[node.name] = ScanWriter(node.db_name, node.node_type)
        elif event_type == event_type.END_SCAN and len(writers) == expected:
            for writer in writers.values():
                writer.thread.join(10)
            break
    # sorted by start time, as the session writer sorts its scan writers
    for writer in sorted(writers.values(), key=lambda w: w.node.info["start_time"]):
        print(writer.report(), flush=True)
    """
)


def test_a_nexus_writer_shaped_subscriber_gets_every_point_and_image(
    redis_url, store, session, tmp_path
):
    script = tmp_path / "nexus_like.py"
    script.write_text(NEXUS_LIKE_WRITER)
    names = ["lima_loopscan", "two_top_masters", "sequence", "ct"]
    env = dict(os.environ, PYTHONPATH=SRC, SCANSTREAM_REDIS_URL=redis_url)
    child = subprocess.Popen(
        [sys.executable, "-m", "scanstream", "legacy", str(script), session.name, "6"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert readline(child, 30) == "READY"
        results = run_catalogue(session, SavingConfig(tmp_path, session.name), names=names)
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == 0, err
    reports = [ast.literal_eval(line) for line in out.splitlines()]
    node = get_session_node(session.name, store=store)
    assert [r[0] for r in reports] == [node.get_scan(r.number).name for r in results]
    for report, result in zip(reports, results):
        scan = node.get_scan(result.number)
        name, node_type, subscans, lengths, images, delays_ok = report
        assert (name, node_type, delays_ok) == (scan.name, scan.type, True)
        assert subscans == [(c.name, "container") for c in scan.children()]
        nodes = scan.load_nodes()
        assert lengths == {n.fullname: len(n) for n in nodes if n.type == "channel"}
        assert images == {n.fullname: len(n) for n in nodes if n.type == "lima"}
    assert sum(sum(r[4].values()) for r in reports) > 0  # images were there to fetch
