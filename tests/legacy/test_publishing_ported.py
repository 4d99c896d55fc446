"""Walk counts and order on session, scan, master and channel nodes (BLISS's publishing tests).

The behaviour BLISS 1.x's ``tests/scans/test_publishing.py`` checks, on our own scans: for
each node a walk starts from, with and without filters, started before the scan runs or
after it ended (``wait`` True or False), the events counted by kind and their order checked
(a node's NEW_NODE first, never after PREPARED_SCAN; PREPARED_SCAN before any NEW_DATA;
END_SCAN last). Then stop handlers, indexing and block sizes.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict

import numpy as np
import pytest

from scanstream import EventType, StopHandler, get_session_node

CONTROLLERS = ("diode_ctrl", "thermo_ctrl", "gauss_ctrl")
NMASTERS = 2  # timer:elapsed_time, timer:epoch
NCHANNELS = len(CONTROLLERS)


def _create(session):
    """An ``sct``-like scan: one timer, its two channels, one channel per controller."""
    scan = session.create_scan("sct", {"npoints": 1})
    timer = scan.create_container("timer")
    channels = [timer.create_channel("timer:elapsed_time"), timer.create_channel("timer:epoch")]
    for ctrl in CONTROLLERS:
        channels.append(timer.create_container(ctrl).create_channel(f"{ctrl}:{ctrl[:-5]}"))
    return scan, channels


def _run(scan, channels):
    scan.prepared()
    for i, channel in enumerate(channels):
        channel.emit(float(i))
    scan.end()


def _epoch(node):
    return node.name == "timer:epoch"


def _walk_root(store, session, scan, where):
    session_node = get_session_node(session.name, store=store)
    if where == "session":
        return session_node
    scan_node = session_node.get_scan(scan.number)
    if where == "scan":
        return scan_node
    nodes = {n.name: n for n in scan_node.load_nodes()}
    return nodes["timer"] if where == "master" else nodes["timer:epoch"]


def _count(walk, started_scan=None):
    """Events by kind (in order of first appearance), checking BLISS's order rules."""
    result: OrderedDict[str, list[str]] = OrderedDict()
    nodes, with_event = [], set()
    prepared = ended = False
    for event_type, node, _ in walk:
        name = node.db_name
        assert not ended, f"{event_type.name} of {name} after END_SCAN"
        if event_type == EventType.NEW_NODE:
            assert name not in with_event, f"NEW_NODE not the first event of {name}"
            assert not prepared, f"NEW_NODE of {name} after PREPARED_SCAN"
            assert name not in nodes
            nodes.append(name)
        elif event_type == EventType.PREPARED_SCAN:
            assert "NEW_DATA" not in result, "PREPARED_SCAN after NEW_DATA"
            prepared = True
        elif event_type == EventType.END_SCAN:
            ended = True
        with_event.add(name)
        result.setdefault(event_type.name, []).append(name)
        if ended and started_scan is not None:
            break
    return result


_PARAMS = [
    (before, wait, flt)
    for before, wait, flt in itertools.product(
        [True, False], [True, False], [None, "scan", "channel", _epoch]
    )
    if not before or wait
]


#: The timeout of the walks that end only by it (a session's): the scan has ended before the
#: walk is read, so every event is stored already and comes at once; the walk then returns
#: after this long without any, and _count checks that none came after END_SCAN.
_IDLE = 0.3


def _events(store, session, where, before, wait, include_filter):
    if where == "session" or not before:
        scan, channels = (None, None)
        if before:
            session_node = get_session_node(session.name, store=store)
            started = threading.Event()
            walk = session_node.walk_events(
                include_filter=include_filter, started_event=started, timeout=_IDLE
            )
            assert started.is_set()
            scan, channels = _create(session)
            _run(scan, channels)
            return _count(walk)
        scan, channels = _create(session)
        _run(scan, channels)
        root = _walk_root(store, session, scan, where)
        return _count(root.walk_events(include_filter=include_filter, wait=wait, timeout=_IDLE))
    # A node below the scan exists only once created: walk it before the scan runs.
    scan, channels = _create(session)
    scan.flush()
    root = _walk_root(store, session, scan, where)
    walk = root.walk_events(include_filter=include_filter, timeout=2)
    thread = threading.Thread(target=_run, args=(scan, channels))
    thread.start()
    try:
        return _count(walk)
    finally:
        thread.join(5)


@pytest.mark.parametrize(("before", "wait", "include_filter"), _PARAMS)
@pytest.mark.parametrize("where", ["session", "scan", "master", "channel"])
def test_walk_event_counts_and_order(store, session, where, before, wait, include_filter):
    events = _events(store, session, where, before, wait, include_filter)
    counts = {k: len(v) for k, v in events.items()}
    below_scan = where in ("master", "channel")
    if where == "channel":
        # Only the channel's own data, if the filter keeps it.
        assert counts == ({} if include_filter == "scan" else {"NEW_DATA": 1})
        return
    if include_filter == "scan":
        expected = {} if below_scan else {"PREPARED_SCAN": 1, "END_SCAN": 1}
        if where == "session":
            expected = {"NEW_NODE": 1, **expected}
        assert counts == expected and list(events) == list(expected)
    elif include_filter == "channel":
        assert counts == {"NEW_NODE": NMASTERS + NCHANNELS, "NEW_DATA": NMASTERS + NCHANNELS}
    elif callable(include_filter):
        assert counts == {"NEW_NODE": 1, "NEW_DATA": 1}
    else:
        # Nodes: [scan], [timer], its two channels, per controller a container and a channel.
        nodes = NMASTERS + 2 * NCHANNELS + {"session": 2, "scan": 1, "master": 0}[where]
        expected = {"NEW_NODE": nodes, "PREPARED_SCAN": 1, "NEW_DATA": NMASTERS + NCHANNELS}
        expected["END_SCAN"] = 1
        if below_scan:
            del expected["PREPARED_SCAN"], expected["END_SCAN"]
        assert counts == expected and list(events) == list(expected)


@pytest.mark.parametrize("where", ["session", "scan"])
def test_walk_of_nodes_counts(store, session, where):
    scan, channels = _create(session)
    _run(scan, channels)
    root = _walk_root(store, session, scan, where)
    extra = 1 if where == "session" else 0
    assert len(list(root.walk(wait=False))) == extra + 1 + NMASTERS + 2 * NCHANNELS
    assert len(list(root.walk(filter="channel", wait=False))) == NMASTERS + NCHANNELS
    assert [n.name for n in root.walk(include_filter=_epoch, wait=False)] == ["timer:epoch"]


def test_walk_on_a_wrong_session_yields_nothing(store, session):
    scan, channels = _create(session)
    _run(scan, channels)
    other = get_session_node(session.name[:-1], store=store)
    assert list(other.walk_events(timeout=0.3)) == []


def test_stop_before_any_event_and_after_the_first(store, session):
    node = get_session_node(session.name, store=store)
    stop = StopHandler()
    stop.stop()
    assert list(node.walk_on_new_events(stop_handler=stop, timeout=2)) == []
    stop = StopHandler()
    got = []
    first = threading.Event()

    def walk():
        for event in node.walk_on_new_events(stop_handler=stop, timeout=5):
            got.append(event)
            first.set()

    thread = threading.Thread(target=walk)
    thread.start()
    try:
        scan, channels = _create(session)
        assert first.wait(5)
        stop.stop()
        thread.join(2)
        assert not thread.is_alive()
    finally:
        stop.stop()
        thread.join(2)
    _run(scan, channels)
    assert got[0][0] == EventType.NEW_NODE


def test_indexing_and_block_size(store, session):
    with session.create_scan("idx") as scan:
        ch = scan.create_container("timer").create_channel("timer:c", "int32")
        scan.prepared()
        ch.emit(np.arange(10, dtype="int32"))
        ch.emit(np.arange(10, 15, dtype="int32"))
    node = _walk_root(store, session, scan, "scan")
    channel = next(n for n in node.load_nodes() if n.name == "timer:c")
    expected = np.arange(15, dtype="int32")
    assert channel.shape == () and channel.dtype == np.int32 and len(channel) == 15
    np.testing.assert_array_equal(channel.get(0, -1), expected)
    np.testing.assert_array_equal(channel.get_as_array(0, -1), expected)
    assert channel.get(0) == 0 and channel[2].dtype == np.int32
    assert channel[2] == 2 and channel[-2] == 13
    for key in (
        slice(None),
        slice(0, 15),
        slice(0, 16),
        slice(1, None),
        slice(None, -1),
        slice(-1, None),
        slice(1, 3),
        slice(-3, -1),
        slice(1, 1),
        slice(15, None),
        slice(16, 17),
    ):
        np.testing.assert_array_equal(channel[key], expected[key], err_msg=str(key))
    data = [e for e in node.walk_events(timeout=2) if e[0] == EventType.NEW_DATA]
    assert sum(e[2].block_size for e in data) == 15
    firsts = [e[2].first_index for e in data]
    assert firsts == sorted(firsts) and firsts[0] == 0
