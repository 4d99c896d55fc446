"""Publishing and reading back: data exactness, history replay, live walks, ordering."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from scanstream import (
    EventType,
    ScanState,
    StopHandler,
    get_session_node,
)


def collect(iterator, until_end=True, limit=100000):
    """Events of a walk as a list (stops after END_SCAN when asked)."""
    out = []
    for event in iterator:
        out.append(event)
        if (until_end and event[0] == EventType.END_SCAN) or len(out) >= limit:
            break
    return out


def data_of(events, name):
    """Concatenated NEW_DATA payloads of channel ``name``, checking indices are contiguous."""
    chunks, expected = [], 0
    for event_type, node, data in events:
        if event_type == EventType.NEW_DATA and node.name == name:
            assert data.first_index == expected
            assert data.block_size == len(data.data)
            expected += data.block_size
            chunks.append(data.data)
    return np.concatenate(chunks) if chunks else np.empty(0)


def test_seed_loop_verbatim(seed_env, session):
    """The seed's example, with only the import changed."""
    from scanstream import EventType, get_session_node

    session_node = get_session_node("test_session")
    walk = session_node.walk_on_new_events(include_filter="scan", from_next=True, timeout=10)
    seen = []

    def listen():
        for event_type, node, event_data in walk:
            if event_type == EventType.NEW_NODE:
                seen.append(("NEW_NODE", node.type, node.info["title"]))
            elif event_type == EventType.END_SCAN:
                seen.append(("END_SCAN", node.db_name, event_data.description["state"]))
                break

    thread = threading.Thread(target=listen)
    thread.start()
    with session.create_scan("loopscan", {"title": "loopscan 3 0.1", "npoints": 3}) as scan:
        ch = scan.create_container("timer").create_channel("diode")
        scan.prepared()
        for i in range(3):
            ch.emit(float(i))
    thread.join(10)
    assert not thread.is_alive()
    assert seen == [
        ("NEW_NODE", "scan", "loopscan 3 0.1"),
        ("END_SCAN", scan.db_name, ScanState.DONE),
    ]

    # ... and the per-scan worker of the seed, on the finished scan: ends by itself.
    scan_node = session_node.get_scan(scan.number)
    types = {}
    for event_type, node, _event_data in scan_node.walk_events():
        if node.type in ("channel", "lima"):
            types.setdefault(node.name, []).append(event_type)
    assert types == {"diode": [EventType.NEW_NODE, EventType.NEW_DATA]}


def test_late_subscriber_replays_the_whole_history_exactly(session, store):
    rng = np.random.default_rng(1)
    values = rng.normal(size=1000)
    spectra = rng.integers(0, 2**31, size=(50, 16)).astype("uint32")
    with session.create_scan("ascan", {"npoints": 1000}) as scan:
        timer = scan.create_container("timer")
        diode = timer.create_channel("diode", "float64")
        mca = timer.create_channel("simu1:spectrum", "uint32", (16,), unit="counts")
        scan.prepared()
        for v in values[:500]:
            diode.emit(v)  # single points...
        diode.emit(values[500:900])  # ... and batches, mixed
        for v in values[900:]:
            diode.emit(v)
        mca.emit(spectra[:10])
        for s in spectra[10:]:
            mca.emit(s)

    session_node = get_session_node(session.name, store=store)
    events = collect(session_node.walk_events(timeout=5))
    kinds = [(e[0], e[1].type) for e in events]
    assert kinds[0] == (EventType.NEW_NODE, "scan")
    assert kinds[-1] == (EventType.END_SCAN, "scan")
    np.testing.assert_array_equal(data_of(events, "diode"), values)
    got = data_of(events, "simu1:spectrum")
    assert got.dtype == np.uint32 and got.shape == (50, 16)
    np.testing.assert_array_equal(got, spectra)
    end = events[-1][2]
    assert end.data is ScanState.DONE
    assert end.description["lengths"] == {
        f"{scan.db_name}:timer:diode": 1000,
        f"{scan.db_name}:timer:simu1:spectrum": 50,
    }


def test_from_next_sees_only_scans_started_after_it_with_their_end(session, store):
    with session.create_scan("before") as old:
        old.create_container("t").create_channel("x").emit(1.0)
    walk = get_session_node(session.name, store=store).walk_on_new_events(timeout=10)
    with session.create_scan("after") as new:
        new.create_container("t").create_channel("x").emit([1.0, 2.0])
    events = collect(walk)
    scans = {e[1].db_name for e in events if e[1].type == "scan"}
    assert scans == {new.db_name}
    assert [e[0] for e in events if e[1].type == "scan"] == [EventType.NEW_NODE, EventType.END_SCAN]
    np.testing.assert_array_equal(data_of(events, "x"), [1.0, 2.0])


def test_two_scans_at_once_are_attributed_correctly(session, store):
    walk = get_session_node(session.name, store=store).walk_on_new_events(timeout=10)
    a = session.create_scan("a")
    b = session.create_scan("b")
    cha = a.create_container("timer").create_channel("diode")
    chb = b.create_container("timer").create_channel("diode")
    for i in range(200):
        cha.emit(float(i))
        chb.emit(float(-i))
    b.end()
    a.end()
    events = []
    ended = set()
    for event in walk:
        events.append(event)
        if event[0] == EventType.END_SCAN:
            ended.add(event[1].db_name)
            if len(ended) == 2:
                break
    for scan, sign in ((a, 1), (b, -1)):
        mine = [e for e in events if e[1].db_name.startswith(scan.db_name + ":")]
        np.testing.assert_array_equal(data_of(mine, "diode"), sign * np.arange(200.0))
        ends = [e for e in events if e[0] == EventType.END_SCAN and e[1].db_name == scan.db_name]
        assert len(ends) == 1
        last_data = max(i for i, e in enumerate(events) if e[0] == EventType.NEW_DATA and e in mine)
        assert events.index(ends[0]) > last_data


def test_ranges_across_batch_boundaries(session, store):
    with session.create_scan("s") as scan:
        ch = scan.create_container("t").create_channel("c", "int32", (2,))
        for start in range(0, 60, 7):  # batches of up to 7 points, one entry each...
            ch.emit(np.arange(start, min(start + 7, 60)).repeat(2).reshape(-1, 2))
            scan.flush()
        for i in range(60, 100):  # ... then single points
            ch.emit([i, i])
    node = (
        get_session_node(session.name, store=store)
        .get_scan(scan.number)
        .children()[0]
        .children()[0]
    )
    expected = np.arange(100).repeat(2).reshape(-1, 2)
    assert len(node) == 100
    np.testing.assert_array_equal(node.get(0, -1), expected)
    for a, b in [(0, 0), (3, 9), (6, 7), (13, 14), (55, 65), (59, 60), (99, 99), (20, 98)]:
        np.testing.assert_array_equal(node.get(a, b), expected[a : b + 1], err_msg=f"{a}..{b}")
    np.testing.assert_array_equal(node[5:50:3], expected[5:50:3])
    np.testing.assert_array_equal(node[-1], [99, 99])
    np.testing.assert_array_equal(node[90:], expected[90:])
    np.testing.assert_array_equal(node.get(-3), [97, 97])
    assert node.get(0, -1).dtype == np.int32


@pytest.mark.parametrize("dtype", ["int8", "uint64", "int64", "float32", "float64", "bool"])
def test_dtypes_round_trip_bit_exact(session, store, dtype):
    rng = np.random.default_rng(7)
    if dtype == "bool":
        values = rng.integers(0, 2, 64).astype(bool)
    elif np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        values = rng.integers(info.min, info.max, 64, dtype=dtype, endpoint=True)
    else:
        values = rng.normal(size=64).astype(dtype)
        values[:3] = [np.nan, np.inf, -0.0]
    with session.create_scan("s") as scan:
        ch = scan.create_container("t").create_channel("c", dtype)
        for v in values[:10]:
            ch.emit(v)
        ch.emit(values[10:])
    scan_node = get_session_node(session.name, store=store).get_scan(scan.number)
    events = collect(scan_node.walk_events(timeout=5))
    walked = data_of(events, "c")
    read = scan_node.load_nodes()[1].get(0, -1)
    for got in (walked, read):
        assert got.dtype == np.dtype(dtype)
        assert got.tobytes() == values.tobytes()


def test_one_d_channels_fixed_and_variable_length(session, store):
    fixed = np.arange(40, dtype="float32").reshape(5, 8)
    ragged = [np.arange(n, dtype="int16") for n in (3, 0, 5, 1)]
    with session.create_scan("s") as scan:
        t = scan.create_container("t")
        f = t.create_channel("spectrum", "float32", (8,))
        v = t.create_channel("samples", "int16", (-1,))
        for row in fixed:
            f.emit(row)
        v.emit(ragged[0])
        v.emit(ragged[1:])
    scan_node = get_session_node(session.name, store=store).get_scan(scan.number)
    events = collect(scan_node.walk_events(timeout=5))
    np.testing.assert_array_equal(data_of(events, "spectrum"), fixed)
    walked = [
        d
        for e in events
        if e[0] == EventType.NEW_DATA and e[1].name == "samples"
        for d in e[2].data
    ]
    assert [list(p) for p in walked] == [list(p) for p in ragged]
    node = next(n for n in scan_node.load_nodes() if n.name == "samples")
    assert node.point_shape == (-1,) and len(node) == 4
    padded = node.get_as_array()
    assert padded.shape == (4, 5) and padded.dtype == np.int16
    assert padded[0].tolist() == [0, 1, 2, 0, 0] and padded[1].tolist() == [0] * 5


def test_end_scan_comes_after_every_point_under_load(session, store):
    n_channels, n_points = 20, 2000
    walk = get_session_node(session.name, store=store).walk_on_new_events(timeout=20)
    scan = session.create_scan("load")
    timer = scan.create_container("timer")
    channels = [timer.create_channel(f"c{i}") for i in range(n_channels)]
    scan.prepared()
    for p in range(n_points):
        for ch in channels:
            ch.emit(float(p))
    scan.end()
    events = collect(walk)
    assert events[-1][0] == EventType.END_SCAN
    for i in range(n_channels):
        np.testing.assert_array_equal(data_of(events, f"c{i}"), np.arange(n_points, dtype=float))


def test_keyboard_interrupt_ends_user_aborted_with_exactly_the_emitted_points(session, store):
    with pytest.raises(KeyboardInterrupt):
        with session.create_scan("timescan", {"npoints": 0}) as scan:
            ch = scan.create_container("timer").create_channel("diode")
            scan.prepared()
            for i in range(37):
                ch.emit(float(i))
            raise KeyboardInterrupt
    assert scan.state is ScanState.USER_ABORTED
    scan_node = get_session_node(session.name, store=store).get_scan(scan.number)
    events = collect(scan_node.walk_events(timeout=5))
    np.testing.assert_array_equal(data_of(events, "diode"), np.arange(37.0))
    assert events[-1][2].description["state"] is ScanState.USER_ABORTED
    assert scan_node.state is ScanState.USER_ABORTED
    assert scan_node.info["state"] == "USER_ABORTED"


def test_exception_ends_failed_with_the_error_text(session, store):
    with pytest.raises(ZeroDivisionError), session.create_scan("s") as scan:
        scan.create_container("t").create_channel("c").emit(1.0)
        1 / 0  # noqa: B018
    scan_node = get_session_node(session.name, store=store).get_scan(scan.number)
    events = collect(scan_node.walk_events(timeout=5))
    assert events[-1][2].description["state"] is ScanState.FAILED
    assert "ZeroDivisionError: division by zero" in events[-1][2].description["error"]
    assert len(scan_node.load_nodes()[1]) == 1


def test_walk_on_a_finished_scan_ends_and_wait_false_returns(session, store):
    scan = session.create_scan("running")
    ch = scan.create_container("t").create_channel("c")
    ch.emit([1.0, 2.0])
    scan.flush()
    scan_node = get_session_node(session.name, store=store).get_scan(scan.number)
    events = list(scan_node.walk_events(wait=False))  # history only, returns though running
    np.testing.assert_array_equal(data_of(events, "c"), [1.0, 2.0])
    assert all(e[0] != EventType.END_SCAN for e in events)
    scan.end()
    events = list(scan_node.walk_events(timeout=5))
    assert events[-1][0] == EventType.END_SCAN


def test_stop_handler_stops_a_waiting_walk_from_another_thread(session, store):
    stop = StopHandler()
    walk = get_session_node(session.name, store=store).walk_on_new_events(stop_handler=stop)
    done = threading.Event()

    def run():
        for _ in walk:
            pass
        done.set()

    thread = threading.Thread(target=run)
    thread.start()
    assert not done.wait(0.3)  # waiting for scans
    stop.stop()
    assert done.wait(2)
    thread.join(2)


def test_walk_yields_nodes_and_children_match(session, store):
    with session.create_scan("s") as scan:
        t = scan.create_container("timer")
        t.create_channel("timer:elapsed_time", unit="s")
        sub = t.create_container("lima_simulator")
        sub.create_lima("lima_simulator:image", "uint16", (4, 5), saving_mode="NOSAVING")
    session_node = get_session_node(session.name, store=store)
    names = [n.db_name for n in session_node.walk(wait=False)]
    assert names == [
        scan.db_name,
        f"{scan.db_name}:timer",
        # BLISS's db_names: the parent, then the short name (issue 13 item 11).
        f"{scan.db_name}:timer:elapsed_time",
        f"{scan.db_name}:timer:lima_simulator",
        f"{scan.db_name}:timer:lima_simulator:image",
    ]
    scan_node = session_node.children()[0]
    (timer,) = scan_node.children()
    assert [c.name for c in timer.children()] == ["timer:elapsed_time", "lima_simulator"]
    assert timer.children()[0].unit == "s" and timer.children()[0].parent is timer
    assert [n.type for n in session_node.walk(include_filter="lima", wait=False)] == ["lima"]


def test_a_large_backlog_comes_in_events_of_bounded_size(session, store, monkeypatch):
    from scanstream.subscribe import follows

    monkeypatch.setattr(follows, "_MAX_EVENT_BYTES", 100_000)
    with session.create_scan("s") as scan:
        ch = scan.create_container("t").create_channel("c", "float64")
        for k in range(10):  # one entry of 40 kB per flush
            ch.emit(np.arange(k * 5000, (k + 1) * 5000, dtype="float64"))
            scan.flush()
    scan_node = get_session_node(session.name, store=store).get_scan(scan.number)
    events = collect(scan_node.walk_events(timeout=5))
    sizes = [e[2].data.nbytes for e in events if e[0] == EventType.NEW_DATA]
    assert sizes == [80_000] * 5  # two entries per event: a third would pass the bound
    np.testing.assert_array_equal(data_of(events, "c"), np.arange(50_000.0))
