"""Where BLISS 1.x's subscriber API and scanstream's own differ, BLISS code gets BLISS's.

The walk methods take BLISS's positional order (the deprecated ``filter`` first); through the
``bliss.data.*`` names (BLISS mode) scan_info's ``start_time`` / ``end_time`` are naive local
``datetime`` objects and lima views number images from the acquisition's first, while
scanstream's own names keep ISO 8601 text and view-relative numbers.
"""

from __future__ import annotations

import datetime
import inspect
import textwrap
import threading
import time

import numpy as np
import pytest

from scanstream import (
    DataNode,
    IndexNotYetThereError,
    IndexWontBeThereError,
    ScansObserver,
    ScansWatcher,
    StopHandler,
    get_session_node,
)
from scanstream.legacy import node as bliss_node
from scanstream.legacy import scan as bliss_scan
from scanstream.sim import SavingConfig
from scanstream.sim.catalogue import run_catalogue

from .test_bliss_clients import _frames
from .test_hook import _run

# The parameters of BLISS 1.x's DataNode walk methods, in their order (bliss/data/node.py).
BLISS_WALK_PARAMETERS = {
    "walk": [
        "filter",
        "include_filter",
        "exclude_children",
        "exclude_existing_children",
        "wait",
        "stop_handler",
        "active_streams",
        "excluded_stream_names",
        "first_index",
        "started_event",
    ],
    "walk_from_last": [
        "filter",
        "include_filter",
        "exclude_children",
        "exclude_existing_children",
        "wait",
        "include_last",
        "stop_handler",
        "started_event",
    ],
    "walk_events": [
        "filter",
        "include_filter",
        "exclude_children",
        "exclude_existing_children",
        "wait",
        "first_index",
        "active_streams",
        "excluded_stream_names",
        "stop_handler",
        "started_event",
    ],
}
BLISS_TIME_FORMAT = "%a %b %d %H:%M:%S %Y"


@pytest.mark.parametrize("method", sorted(BLISS_WALK_PARAMETERS))
def test_walk_methods_have_bliss_positional_order(method):
    parameters = list(inspect.signature(getattr(DataNode, method)).parameters.values())[1:]
    positional = [p.name for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional == BLISS_WALK_PARAMETERS[method]
    # walk_on_new_events took keywords only in BLISS: ours takes walk_events's order.
    if method == "walk_events":
        new = inspect.signature(DataNode.walk_on_new_events).parameters
        assert [p for p in new if new[p].kind is new[p].POSITIONAL_OR_KEYWORD][1:] == positional


POSITIONAL_WALKS = textwrap.dedent(
    """
    import sys
    from bliss.data.node import get_node, get_session_node

    session = get_session_node(sys.argv[1])
    print([n.name for n in session.walk(None, "scan", None, None, False)])
    print([n.name for n in session.walk("scan", wait=False)])  # the deprecated filter
    print([n.name for n in session.walk_from_last(None, "scan", None, None, False, True)])
    print([n.name for n in session.walk_from_last(None, "scan", None, None, False, False)])
    scan = get_node(sys.argv[1] + ":2_second")
    events = scan.walk_events(None, ("channel",), None, None, False, 0)
    print(sorted({(e.type.name, e.node.name) for e in events}))
    events = list(session.walk_events(None, ("scan",), ("scan",), None, False))
    print(sorted({e.node.type for e in events}), sorted({e.type.name for e in events}))
    ends = scan.iterator.walk_events(None, None, None, None, False)
    print([e.node.name for e in ends if e.type == e.type.END_SCAN])
    print(len(list(scan.walk(include_filter="channel", wait=False))))  # keywords still work
    try:
        session.walk_events("scan", "channel")
    except ValueError as exc:
        print("ValueError", "include_filter" in str(exc))
    try:
        list(session.walk(None, None, None, None, False, None, {"s_data": {}}))
    except ValueError as exc:
        print("ValueError", "active_streams" in str(exc))
    """
)


def test_walks_take_bliss_positional_arguments(redis_url, session, tmp_path):
    for name in ("first", "second"):
        with session.create_scan(name, {"save": False}) as scan:
            timer = scan.create_container("timer")
            timer.create_channel("timer:t").emit([1.0, 2.0])
            timer.create_channel("timer:u").emit([3.0])
    script = tmp_path / "positional.py"
    script.write_text(POSITIONAL_WALKS)
    done = _run([str(script), session.name], redis_url, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "['1_first', '2_second']",
        "['1_first', '2_second']",
        "['2_second']",
        "[]",
        "[('NEW_DATA', 'timer:t'), ('NEW_DATA', 'timer:u'), ('NEW_NODE', 'timer:t'), "
        "('NEW_NODE', 'timer:u')]",
        "['scan'] ['END_SCAN', 'NEW_NODE']",
        "['2_second']",
        "2",
        "ValueError True",
        "ValueError True",
    ]


class _Infos(ScansObserver):
    def __init__(self) -> None:
        self.created: list[dict] = []
        self.finished: list[dict] = []

    def on_scan_created(self, scan_db_name, scan_info):
        self.created.append(scan_info)

    def on_scan_finished(self, scan_db_name, scan_info):
        self.finished.append(scan_info)


def _assert_bliss_times(info, *, ended):
    start = info["start_time"]
    assert type(start) is datetime.datetime and start.tzinfo is None
    assert start == datetime.datetime.fromtimestamp(info["start_timestamp"])
    assert info["start_time_str"] == start.strftime(BLISS_TIME_FORMAT)
    if not ended:
        assert "end_time" not in info and "end_time_str" not in info
        return
    end = info["end_time"]
    assert type(end) is datetime.datetime and end.tzinfo is None
    assert end == datetime.datetime.fromtimestamp(info["end_timestamp"])
    assert info["end_time_str"] == end.strftime(BLISS_TIME_FORMAT)
    assert end >= start  # the Nexus writer subtracts them


def test_scan_info_times_are_datetimes_through_bliss_names_only(store, session):
    observers = {"bliss": _Infos(), "own": _Infos()}
    watchers = {
        "bliss": bliss_scan.ScansWatcher(session.name, store=store),
        "own": ScansWatcher(session.name, store=store),
    }
    for key, watcher in watchers.items():
        watcher.set_observer(observers[key])
    with watchers["bliss"].watch(), watchers["own"].watch():
        assert watchers["bliss"].wait_ready(2) and watchers["own"].wait_ready(2)
        with session.create_scan("s", {"save": False}) as scan:
            scan.create_container("timer").create_channel("timer:t").emit(1.0)
            scan.prepared()
            db_name = f"{scan.db_name}:timer:t"
            channel = bliss_node.get_node(db_name, store=store)
            assert channel is not None and channel.bliss_mode
            _assert_bliss_times(channel.scan.info, ended=False)
            # A watcher reads a new scan's info when it meets the scan (as BLISS's does): one
            # that meets it only after its end sees the end times too. Running until both
            # met it, the info they got is that of a running scan.
            deadline = time.monotonic() + 10
            while not all(o.created for o in observers.values()):
                assert time.monotonic() < deadline, "a watcher did not report the new scan"
                time.sleep(0.01)
        assert watchers["bliss"].wait_no_more_running_scans(5)
        assert watchers["own"].wait_no_more_running_scans(5)
    _assert_bliss_times(channel.scan.info.get_all(), ended=True)
    _assert_bliss_times(observers["bliss"].created[0], ended=False)
    _assert_bliss_times(observers["bliss"].finished[0], ended=True)
    bliss_scan_node = bliss_node.get_session_node(session.name, store=store).get_scan(1)
    _assert_bliss_times(bliss_scan_node.info, ended=True)
    # scanstream's own names keep what its docs say: ISO 8601 text with the UTC offset.
    own = get_session_node(session.name, store=store).get_scan(1).info
    for info in (own, observers["own"].created[0], observers["own"].finished[0]):
        start = datetime.datetime.fromisoformat(info["start_time"])
        assert start.tzinfo is not None
        assert start.timestamp() == pytest.approx(info["start_timestamp"], abs=1e-6)
    assert isinstance(own["end_time"], str) and "end_time_str" not in own


def test_scans_a_sequence_refers_to_are_in_bliss_mode_too(store, session, tmp_path):
    results = run_catalogue(session, SavingConfig(tmp_path, session.name), names=["sequence"])
    group = next(r for r in results if r.scan_info["type"] == "sequence")
    node = bliss_node.get_session_node(session.name, store=store).get_scan(group.number)
    refs = next(n for n in node.load_nodes() if n.type == "node_ref_channel")
    subs = refs.get(0, -1)
    assert [s.info["type"] for s in subs] == ["loopscan", "ascan"]
    for sub in subs:
        _assert_bliss_times(sub.info, ended=True)


BLISS_LOCAL_TIME = textwrap.dedent(
    """
    import datetime, sys
    from bliss.data.node import get_node, get_session_node

    # Flint's scan history: the scans of a session by start_time, then a scan's 0D data.
    session = get_session_node(sys.argv[1])
    scans = list(session.walk(wait=False, include_filter=("scan",), exclude_children=("scan",)))
    infos = sorted((s.info for s in scans), key=lambda info: info["start_time"])
    for info in infos:
        start = info["start_time"]
        delay = datetime.datetime.now() - start  # the Nexus writer's start delay
        print(info["node_name"], start.tzinfo, start == datetime.datetime.fromtimestamp(
            info["start_timestamp"]), datetime.timedelta(0) <= delay < datetime.timedelta(hours=1))
    last = get_node(infos[-1]["node_name"])
    print({n.name: n.get_as_array(0, -1).tolist() for n in last.walk(wait=False)
           if n.type == "channel"})
    """
)


@pytest.mark.parametrize("zone", ["America/New_York", "Asia/Kolkata"])
def test_bliss_times_are_in_the_subscriber_local_time(
    redis_url, session, tmp_path, monkeypatch, zone
):
    for name in ("a", "b"):
        with session.create_scan(name, {"save": False}) as scan:
            scan.create_container("timer").create_channel("timer:t").emit([1.0, 2.0])
    script = tmp_path / "history.py"
    script.write_text(BLISS_LOCAL_TIME)
    monkeypatch.setenv("TZ", zone)  # the subscriber's zone, not the publisher's
    done = _run([str(script), session.name], redis_url, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"{session.name}:1_a None True True",
        f"{session.name}:2_b None True True",
        "{'timer:t': [1.0, 2.0]}",
    ]


def test_lima_views_number_images_from_the_acquisition_first_in_bliss_mode(
    store, session, tmp_path
):
    frames, refs = _frames(tmp_path, 4)
    with session.create_scan("lima", {"save": False}) as scan:
        lima = scan.create_container("timer").create_lima("lima:image", "uint16", (4, 2))
        scan.prepared()
        bliss_lima = next(
            n
            for n in bliss_node.get_session_node(session.name, store=store)
            .get_scan(scan.number)
            .load_nodes()
            if n.type == "lima"
        )
        lima.emit(refs[:3])
        scan.flush()
        with pytest.raises(IndexNotYetThereError, match="only 3 images yet"):
            bliss_lima.get(1, -1).get_image(3)
        lima.emit(refs[3:])
    own_lima = next(
        n
        for n in get_session_node(session.name, store=store).get_scan(scan.number).load_nodes()
        if n.type == "lima"
    )
    bliss_view, own_view = bliss_lima.get(1, 2), own_lima.get(1, 2)
    # BLISS: the numbers given are the acquisition's, whatever the view.
    np.testing.assert_array_equal(bliss_view.get_image(0), frames[0])
    np.testing.assert_array_equal(bliss_lima.get(5).get_image(0), frames[0])
    assert bliss_view.image_reference(3) == refs[3]
    assert bliss_view.image_references([0, 3]) == [refs[0], refs[3]]
    assert list(bliss_view.iter_image_references([2, 3, 4])) == [refs[2], refs[3]]
    assert bliss_view.all_image_references() == refs  # the acquisition's
    assert list(bliss_view.iter_image_references()) == refs
    np.testing.assert_array_equal(bliss_view.get_image(-1), frames[3])
    with pytest.raises(IndexWontBeThereError, match="has 4 images"):
        bliss_view.get_image(4)
    # Indexing, iteration and length are the view's, in BLISS as here.
    assert len(bliss_view) == 2 and bliss_view.to_index == 2
    np.testing.assert_array_equal(bliss_view[0], frames[1])
    np.testing.assert_array_equal(bliss_view[-1], frames[2])
    np.testing.assert_array_equal(np.asarray(list(bliss_view)), frames[1:3])
    np.testing.assert_array_equal(bliss_view.as_array(), frames[1:3])
    # scanstream's own views count from the view's first image.
    np.testing.assert_array_equal(own_view.get_image(0), frames[1])
    assert own_view.all_image_references() == refs[1:3]
    assert own_view.image_reference(-1) == refs[2]
    with pytest.raises(IndexWontBeThereError):
        own_view.image_reference(2)
    # Views from 0 are the same in both.
    assert bliss_lima.get(0, -1).image_reference(2) == own_lima.get(0, -1).image_reference(2)
    assert bliss_lima.all_image_references() == own_lima.all_image_references() == refs


def test_watch_session_scans_and_bliss_lookups_are_in_bliss_mode(store, session):
    # BLISS's own bliss/data/scan.py finds its session with get_or_create_node.
    assert bliss_node.get_or_create_node(session.name, node_type="session", store=store).bliss_mode
    assert not get_session_node(session.name, store=store).bliss_mode
    ended: list[dict] = []
    ready, stop = threading.Event(), StopHandler()
    watch = threading.Thread(
        target=bliss_scan.watch_session_scans,
        args=(session.name, None, None, None, ended.append),
        kwargs={"ready_event": ready, "stop_handler": stop, "store": store},
    )
    watch.start()
    try:
        assert ready.wait(5)
        with session.create_scan("s", {"save": False}) as scan:
            scan.create_container("timer").create_channel("timer:t").emit(1.0)
        deadline = time.monotonic() + 5
        while not ended and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.stop()
        watch.join(5)
    assert not watch.is_alive() and len(ended) == 1
    _assert_bliss_times(ended[0], ended=True)
    assert (
        bliss_node.sessions_list(store=store)[0].get_scan(1).info["end_time"]
        == (ended[0]["end_time"])
    )
