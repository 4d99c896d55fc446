"""Scan life cycle: transitions, crashed publishers (lease), lima nodes, scan groups."""

from __future__ import annotations

import os
import signal
import time

import h5py
import numpy as np
import pytest
from leased_publisher import start_leased_publisher

from scanstream import (
    EncodingError,
    EventType,
    ImageNotSavedError,
    ImageReference,
    IndexNotYetThereError,
    IndexWontBeThereError,
    InvalidTransitionError,
    NodeExistsError,
    ScanEndedError,
    ScanState,
    get_session_node,
)


def test_a_killed_publisher_scan_ends_killed_with_its_points(redis_url, store):
    proc, number = start_leased_publisher(redis_url)
    try:
        scan_node = get_session_node("test_session", store=store).get_scan(number)
        walk = scan_node.walk_events(timeout=10)
        first = next(walk)
        assert first[0] == EventType.NEW_NODE
        killed_at = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        events = [first, *walk]
        elapsed = time.monotonic() - killed_at
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()
    assert events[-1][0] == EventType.END_SCAN
    assert events[-1][2].description["state"] is ScanState.KILLED
    assert "lease" in events[-1][2].description["error"]
    assert elapsed < 1.0 + 1.0 + 0.5  # lease time + reader's check period + margin
    data = np.concatenate([e[2].data for e in events if e[0] == EventType.NEW_DATA])
    np.testing.assert_array_equal(data, np.arange(10.0))
    assert scan_node.state is ScanState.KILLED
    assert len(scan_node.load_nodes()[1]) == 10


def test_state_transitions_are_checked(session):
    scan = session.create_scan("s")
    scan.prepared()
    with pytest.raises(InvalidTransitionError, match="the scan is already PREPARED") as info:
        scan.prepared()
    assert info.value.from_state is ScanState.PREPARED and info.value.to_state is ScanState.PREPARED
    scan.end(ScanState.DONE)
    with pytest.raises(
        InvalidTransitionError, match="the scan has already ended DONE: it cannot end FAILED"
    ):
        scan.end(ScanState.FAILED)
    with pytest.raises(ValueError, match="end state must be"):
        session.create_scan("t").end(ScanState.PREPARED)


def test_end_after_being_declared_killed_is_refused(session, store):
    scan = session.create_scan("s")
    channel = scan.create_container("t").create_channel("c")
    channel.emit(1.0)
    scan.flush()
    store.redis.delete(store.keys.scan_lease(session.name, scan.number))
    scan_node = get_session_node(session.name, store=store).get_scan(scan.number)
    scan_node.check_lease()  # what a walk does; reading .state alone never writes
    assert scan_node.state is ScanState.KILLED  # the reader declared it
    with pytest.raises(InvalidTransitionError, match="already ended KILLED: it cannot end DONE"):
        scan.end()
    assert scan_node.load_nodes()[1].get(0, -1).tolist() == [1.0]


def test_emit_after_end_and_duplicate_names_are_refused(session):
    scan = session.create_scan("s")
    timer = scan.create_container("timer")
    channel = timer.create_channel("c")
    with pytest.raises(NodeExistsError, match="already has a child named 'c'"):
        timer.create_channel("c")
    scan.end()
    with pytest.raises(ScanEndedError, match="has ended"):
        channel.emit(1.0)
    with pytest.raises(ScanEndedError):
        timer.create_channel("d")


def test_a_bad_emit_loses_nothing_else(session, store):
    with session.create_scan("s") as scan:
        timer = scan.create_container("timer")
        good = timer.create_channel("good")
        spectrum = timer.create_channel("spectrum", "int32", (4,))
        good.emit(1.0)
        spectrum.emit([1, 2, 3, 4])
        with pytest.raises(EncodingError, match="shape"):
            spectrum.emit([1, 2, 3])
        with pytest.raises(EncodingError, match="float64"):
            spectrum.emit([1.5, 2, 3, 4])
        good.emit(2.0)
        spectrum.emit([5, 6, 7, 8])
    nodes = {
        n.name: n
        for n in get_session_node(session.name, store=store).get_scan(scan.number).load_nodes()
    }
    assert nodes["good"].get(0, -1).tolist() == [1.0, 2.0]
    assert nodes["spectrum"].get(0, -1).tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]


def test_index_errors_say_why(session, store):
    scan = session.create_scan("s")
    channel = scan.create_container("t").create_channel("c")
    channel.emit([1.0, 2.0])
    scan.flush()
    node = get_session_node(session.name, store=store).get_scan(scan.number).load_nodes()[1]
    with pytest.raises(IndexNotYetThereError, match="only 2 points"):
        node.get(5)
    scan.end()
    with pytest.raises(IndexWontBeThereError, match="ended with 2 points"):
        node.get(0, 2)
    assert len(node) == 2 and node[-2] == 1.0


def write_frames(path, n, frame_shape=(4, 6)):
    frames = np.arange(n * frame_shape[0] * frame_shape[1], dtype="uint16").reshape(
        (n,) + frame_shape
    )
    with h5py.File(path, "w") as f:
        f.create_dataset("/entry_0000/instrument/lima/data", data=frames)
    return frames


def test_lima_references_views_and_images(tmp_path, session, store):
    frames_a = write_frames(tmp_path / "img_0000.h5", 2)
    frames_b = write_frames(tmp_path / "img_0001.h5", 1) + 1000
    with h5py.File(tmp_path / "img_0001.h5", "r+") as f:
        f["/entry_0000/instrument/lima/data"][...] = frames_b
    path = "/entry_0000/instrument/lima/data"
    refs = [
        ImageReference(str(tmp_path / "img_0000.h5"), path, 0, "HDF5"),
        ImageReference(str(tmp_path / "img_0000.h5"), path, 1, "HDF5"),
        (str(tmp_path / "img_0001.h5"), path, 0, "HDF5"),
    ]
    walk = get_session_node(session.name, store=store).walk_on_new_events(
        include_filter="lima", timeout=5
    )
    with session.create_scan("loopscan") as scan:
        lima = scan.create_container("timer").create_lima(
            "lima:image", "uint16", (4, 6), info={"user_detector_name": "lima"}
        )
        lima.emit(refs[:2])
        lima.emit(refs[2])
        with pytest.raises(
            EncodingError, match=r"saves its images: publish their references with emit\(\)"
        ):
            lima.emit_unsaved(1)
    events = []
    for event in walk:
        events.append(event)
        if event[0] == EventType.NEW_DATA and event[2].first_index + event[2].block_size == 3:
            break
    got = [r for e in events if e[0] == EventType.NEW_DATA for r in e[2].data]
    assert got == [ImageReference(*r) for r in refs]
    node = next(
        n
        for n in get_session_node(session.name, store=store).get_scan(scan.number).load_nodes()
        if n.type == "lima"
    )
    assert (
        node.shape == (4, 6)
        and node.dtype == np.uint16
        and node.info["user_detector_name"] == "lima"
    )
    view = node.get(0, -1)
    assert len(view) == 3
    assert view.all_image_references() == [ImageReference(*r) for r in refs]
    np.testing.assert_array_equal(view.get_image(0), frames_a[0])
    np.testing.assert_array_equal(view.get_image(-1), frames_b[0])
    np.testing.assert_array_equal(node.get(1, 1).get_image(0), frames_a[1])
    with pytest.raises(IndexWontBeThereError):
        view.get_image(3)


def test_lima_nosaving_counts_images_without_references(session, store):
    with session.create_scan("ct") as scan:
        lima = scan.create_container("timer").create_lima(
            "lima:image", "uint32", (2, 2), saving_mode="NOSAVING"
        )
        lima.emit_unsaved(4)
        with pytest.raises(EncodingError, match="NOSAVING"):
            lima.emit([("/f", "/d", 0, "HDF5")])
    scan_node = get_session_node(session.name, store=store).get_scan(scan.number)
    events = list(scan_node.walk_events(include_filter="lima", timeout=5))
    (data,) = [e[2] for e in events if e[0] == EventType.NEW_DATA]
    assert data.block_size == 4 and data.data == []
    node = scan_node.load_nodes()[1]
    assert len(node.get(0, -1)) == 4
    with pytest.raises(ImageNotSavedError, match="NOSAVING"):
        node.get(0, -1).all_image_references()


def test_scan_group_references_its_sub_scans(session, store):
    group = session.create_scan("sequence", node_type="scan_group")
    refs = group.create_container("GroupingMaster").create_scan_ref_channel("scans")
    subs = []
    for i in range(2):
        with session.create_scan("loopscan") as sub:
            sub.create_container("timer").create_channel("diode").emit(float(i))
        refs.emit(sub)
        subs.append(sub)
    group.end()
    session_node = get_session_node(session.name, store=store)
    group_node = session_node.get_scan(group.number)
    assert group_node.type == "scan_group"
    events = list(group_node.walk_events(timeout=5))
    scans = [s for e in events if e[0] == EventType.NEW_DATA for s in e[2].data]
    assert [s.db_name for s in scans] == [s.db_name for s in subs]
    assert [s.type for s in session_node.walk(include_filter="scan_group", wait=False)] == [
        "scan_group"
    ]
