"""ScansWatcher, ScansObserver and watch_session_scans with BLISS's semantics (threads)."""

from __future__ import annotations

import threading
import time

import numpy as np

from scanstream import (
    ScansObserver,
    ScansWatcher,
    StopHandler,
    get_session_node,
    watch_session_scans,
)
from scanstream.sim import SavingConfig
from scanstream.sim.catalogue import run_catalogue


class Recorder(ScansObserver):
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.scalars: dict[tuple[str, str], list[float]] = {}
        self.ndim: list[tuple[str, int]] = []
        self.lima: list[tuple[str, int]] = []
        self.children: list[str] = []
        self.finished_info: dict[str, dict] = {}

    def on_scan_created(self, scan_db_name, scan_info):
        self.calls.append(("created", scan_db_name))

    def on_scan_started(self, scan_db_name, scan_info):
        self.calls.append(("started", scan_db_name))

    def on_child_created(self, scan_db_name, node):
        self.children.append(node.db_name)

    def on_scalar_data_received(self, scan_db_name, channel_name, index, data_bunch):
        key = (scan_db_name, channel_name)
        values = self.scalars.setdefault(key, [])
        assert index == len(values)
        values.extend(np.asarray(data_bunch).tolist())

    def on_ndim_data_received(self, scan_db_name, channel_name, dim, index, data_bunch):
        self.ndim.append((channel_name, dim))

    def on_lima_ref_received(self, scan_db_name, channel_name, dim, source_node, event_data):
        self.lima.append((channel_name, len(event_data.data)))

    def on_scan_finished(self, scan_db_name, scan_info):
        self.calls.append(("finished", scan_db_name))
        self.finished_info[scan_db_name] = scan_info


def test_watcher_reports_every_scan_created_after_it_started(store, session, tmp_path):
    with session.create_scan("before") as scan:
        scan.create_container("timer").create_channel("timer:x").emit(1.0)
    observer = Recorder()
    watcher = ScansWatcher(session.name, store=store)
    watcher.set_observer(observer)
    watcher.set_exclude_existing_scans(True)
    with watcher.watch():
        assert watcher.wait_ready(1)
        results = run_catalogue(
            session,
            SavingConfig(tmp_path, session.name),
            names=["lima_loopscan", "mca_ascan", "sequence"],
        )
        scans = [r for r in results if r.scan_info.get("type") != "sequence"]
        # The watcher may still be reading the last scans, and "no running scan" holds too
        # between two scans it has read: wait for every END_SCAN before stopping it.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(
            ("finished", r.db_name) in observer.calls for r in scans
        ):
            time.sleep(0.02)
        assert watcher.wait_no_more_running_scans(10)
    assert watcher.wait_terminated(2)
    created = [db for what, db in observer.calls if what == "created"]
    assert created == [r.db_name for r in scans]  # no group (watch_scan_group False), no old scan
    for r in scans:
        mine = [what for what, db in observer.calls if db == r.db_name]
        assert mine == ["created", "started", "finished"]
        assert observer.finished_info[r.db_name]["end_time"]  # read at the end
    node = get_session_node(session.name, store=store)
    for r in scans:
        for n in node.get_scan(r.number).load_nodes():
            if n.type == "channel" and n.shape == ():
                assert observer.scalars[(r.db_name, n.fullname)] == n.get(0, -1).tolist()
    assert observer.ndim and all(d == 1 for _, d in observer.ndim)  # the MCA spectra
    assert sum(count for _, count in observer.lima) == 5
    assert watcher.running_scan_names() == []


def test_watch_session_scans_callbacks(store, session):
    stop = StopHandler()
    ready = threading.Event()
    seen: dict[str, list] = {"new": [], "child": [], "data": [], "end": []}

    def run() -> None:
        watch_session_scans(
            session.name,
            lambda info: seen["new"].append(info["title"]),
            lambda info, node: seen["child"].append(node.name),
            lambda kind, master, payload: seen["data"].append((kind, master)),
            lambda info: seen["end"].append(info["title"]),
            ready_event=ready,
            stop_handler=stop,
            store=store,
        )

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert ready.wait(5)
        with session.create_scan("s", {"title": "my scan"}) as scan:
            axis = scan.create_container("axis")
            roby = axis.create_channel("axis:roby")
            diode = axis.create_container("ctrl").create_channel("ctrl:diode")
            scan.prepared()
            roby.emit([0.0, 1.0])
            diode.emit([5.0, 6.0])
        for _ in range(100):
            if seen["end"]:
                break
            threading.Event().wait(0.05)
    finally:
        stop.stop()
        thread.join(5)
    assert not thread.is_alive()
    assert seen["new"] == ["my scan"] and seen["end"] == ["my scan"]
    assert seen["child"] == ["axis", "axis:roby", "ctrl", "ctrl:diode"]
    assert seen["data"] and all(d == ("0d", "axis") for d in seen["data"])
