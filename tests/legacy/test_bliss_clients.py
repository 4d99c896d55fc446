"""What BLISS 1.x's own clients read, beyond the external saving example.

Each test stands for a usage pattern of a BLISS client that was run against scanstream (see
docs/bliss_compatibility.md): the scan display of a separate terminal (``ScanDataListener``:
a ScansObserver printing a header from scan_info), Flint's scan manager (lima views, frames,
``scan_info["group"]``), BLISS's ScansWatcher tests (an observer read back by keyword), and
the documentation's examples (printing event types).
"""

from __future__ import annotations

import datetime
import textwrap
import time

import h5py
import numpy as np
import pytest

from scanstream import (
    EventType,
    ImageReference,
    IndexNotYetThereError,
    IndexWontBeThereError,
    ScansObserver,
    ScansWatcher,
    get_session_node,
)
from scanstream._protocol.entries import saving_fields
from scanstream.models import SavingState, SavingVerdict
from scanstream.sim import SavingConfig
from scanstream.sim.catalogue import run_catalogue
from scanstream.subscribe.images import Frame

from .test_hook import _run

# The header of BLISS's scan display (bliss/shell/data/display.py formats it from scan_info).
HEADER_KEYS = ("scan_nb", "title", "start_time_str", "filename", "user_name", "session_name")


class KeywordOnly(ScansObserver):
    """An observer that can only be called as BLISS called it: data by keyword."""

    def __init__(self) -> None:
        self.created: dict[str, dict] = {}
        self.finished: dict[str, dict] = {}
        self.scalars: dict[str, list[float]] = {}
        self.ndim: list[tuple[str, int, int]] = []
        self.lima: list[tuple[str, int, int]] = []

    def on_scan_created(self, scan_db_name, scan_info):
        self.created[scan_db_name] = scan_info

    def on_scan_finished(self, scan_db_name, scan_info):
        self.finished[scan_db_name] = scan_info

    def on_scalar_data_received(self, *, data_bunch, index, channel_name, scan_db_name):
        values = self.scalars.setdefault(channel_name, [])
        assert index == len(values)
        values.extend(np.asarray(data_bunch).tolist())

    def on_ndim_data_received(self, *, scan_db_name, channel_name, dim, index, data_bunch):
        self.ndim.append((channel_name, dim, len(data_bunch)))

    def on_lima_ref_received(self, *, event_data, dim, source_node, channel_name, scan_db_name):
        self.lima.append((channel_name, dim, len(event_data.data)))


class OtherNames(ScansObserver):
    """An observer naming the parameters its own way: called by position."""

    def __init__(self) -> None:
        self.points = 0

    def on_scalar_data_received(self, db, channel, first, values):
        self.points += len(values)


def _frames(tmp_path, n=3):
    frames = np.arange(n * 4 * 2, dtype="uint16").reshape(n, 4, 2)
    path = tmp_path / "frames.h5"
    with h5py.File(path, "w") as f:
        f["data"] = frames
    return frames, [ImageReference(str(path), "/data", i, "HDF5") for i in range(n)]


def _publish(session, refs):
    with session.create_scan("loopscan", {"npoints": 3, "save": False}) as scan:
        timer = scan.create_container("timer")
        elapsed = timer.create_channel("timer:elapsed_time")
        ctrl = timer.create_container("ctrl")
        diode = ctrl.create_channel("ctrl:diode")
        spectrum = timer.create_container("mca").create_channel("mca:spectrum", "int32", (5,))
        lima = timer.create_container("lima").create_lima("lima:image", "uint16", (4, 2))
        scan.prepared()
        for i in range(3):
            elapsed.emit(0.1 * i)
            diode.emit(float(i))
            spectrum.emit(np.full(5, i, dtype="int32"))
            lima.emit([refs[i]])
    return scan


def test_watcher_passes_data_by_keyword_and_scan_info_has_bliss_keys(store, session, tmp_path):
    _, refs = _frames(tmp_path)
    keyword, other = KeywordOnly(), OtherNames()
    watchers = [ScansWatcher(session.name, store=store) for _ in (keyword, other)]
    for watcher, observer in zip(watchers, (keyword, other)):
        watcher.set_observer(observer)
    with watchers[0].watch(), watchers[1].watch():
        assert watchers[0].wait_ready(2) and watchers[1].wait_ready(2)
        scan = _publish(session, refs)
        assert watchers[0].wait_no_more_running_scans(5)
        assert watchers[1].wait_no_more_running_scans(5)
    assert keyword.scalars == {"timer:elapsed_time": [0.0, 0.1, 0.2], "ctrl:diode": [0.0, 1.0, 2.0]}
    assert sum(n for name, dim, n in keyword.ndim if (name, dim) == ("mca:spectrum", 1)) == 3
    assert sum(n for name, dim, n in keyword.lima if (name, dim) == ("lima:image", 2)) == 3
    assert other.points == 6
    # ScanDataListener matches scan_info["node_name"] to the callbacks' scan_db_name and
    # prints a header of these keys.
    for info in (keyword.created[scan.db_name], keyword.finished[scan.db_name]):
        assert info["node_name"] == scan.db_name
        assert all(key in info for key in HEADER_KEYS), [k for k in HEADER_KEYS if k not in info]
        stamp = datetime.datetime.fromtimestamp(info["start_timestamp"])
        assert info["start_time_str"] == stamp.strftime("%a %b %d %H:%M:%S %Y")
    node = get_session_node(session.name, store=store).get_scan(scan.number)
    assert node.info["node_name"] == scan.db_name
    # Masters are told from the other devices by the devices they trigger.
    devices = keyword.finished[scan.db_name]["devices"]  # derived at prepared()
    assert devices["timer"]["triggered_devices"] == ["ctrl", "mca", "lima"]
    assert "triggered_devices" not in devices["ctrl"]


def test_simulated_scans_name_triggered_devices_and_their_group(store, session, tmp_path):
    results = run_catalogue(
        session, SavingConfig(tmp_path, session.name), names=["mca_ascan", "sequence"]
    )
    mca = results[0]
    (group,) = [r for r in results if r.scan_info["type"] == "sequence"]
    node = get_session_node(session.name, store=store)
    info = node.get_scan(mca.number).info.get_all()
    chain = info["acquisition_chain"]["axis"]["devices"]
    devices = info["devices"]
    assert devices["axis"]["triggered_devices"] == ["timer"]
    assert set(devices["timer"]["triggered_devices"]) == set(chain) - {"axis", "timer"}
    assert "group" not in info
    subs = results[results.index(group) + 1 :]
    assert [r.scan_info["type"] for r in subs] == ["loopscan", "ascan"]
    for sub in subs:  # the sequence's scans name it, as BLISS's Sequence marked them
        assert node.get_scan(sub.number).info["group"] == group.db_name


def test_lima_view_has_bliss_progress_and_frames(store, session, tmp_path):
    frames, refs = _frames(tmp_path)
    with session.create_scan("lima", {"save": False}) as scan:
        lima = scan.create_container("timer").create_lima(
            "lima:image", "uint16", (4, 2), info={"saving_frame_per_file": 3}
        )
        quiet = scan.create_container("t2").create_lima(
            "quiet:image", "uint16", (4, 2), saving_mode="NOSAVING"
        )
        scan.prepared()
        scan_node = get_session_node(session.name, store=store).get_scan(scan.number)
        nodes = {n.name: n for n in scan_node.load_nodes()}
        node, quiet_node = nodes["lima:image"], nodes["quiet:image"]
        view = node.get(0, -1)
        assert (view.last_image_ready, view.to_index, view.last_index, len(view)) == (-1, -1, 0, 0)
        with pytest.raises(IndexError):  # BLISS: IndexError("No image has been taken yet")
            view.get_last_image()
        assert not view.get_last_live_image()
        lima.emit(refs)
        quiet.emit_unsaved(2)
    assert (view.last_image_ready, view.to_index, view.last_index) == (2, 2, 3)
    assert node.get(1).to_index == 1 and node.get(5).to_index == 2  # BLISS's min(to, last)
    frame = view.get_last_image()
    assert isinstance(frame, Frame) and frame and (frame.frame_number, frame.source) == (2, "file")
    np.testing.assert_array_equal(frame.data, frames[2])
    data, number = frame  # BLISS frames unpack as (data, frame_number)
    assert number == 2
    assert view.is_video_frame_have_meaning() is True
    assert not view.get_last_live_image()  # as BLISS: empty unless the node streams
    node.from_stream = True  # what Flint sets before get(-1)
    live = node.get(-1)
    assert live.from_stream and len(live) == 1
    assert live.get_last_live_image().frame_number == 2
    np.testing.assert_array_equal(live.get_last_live_image().data, frames[2])
    assert view.image_references([0, 2]) == [refs[0], refs[2]]
    assert list(view.iter_image_references([1, 2, 3, 4])) == [refs[1], refs[2]]
    assert list(view.iter_image_references()) == refs
    assert view.image_reference(1, saved=True) == refs[1]
    assert view.first_ref_data["shape"] == [4, 2] and view.all_ref_data == [view.first_ref_data]
    assert node.images_per_file == 3 and quiet_node.images_per_file is None
    assert view.saving_frame_per_file == 3 and quiet_node.get(0, -1).saving_mode == "NOSAVING"
    with pytest.raises(AttributeError, match="no 'server_url'"):
        view.server_url  # noqa: B018 (a detector server scanstream has not)
    quiet_view = quiet_node.get(0, -1)
    assert (quiet_view.last_image_ready, quiet_view.last_image_saved) == (1, -1)
    assert quiet_view.is_video_frame_have_meaning() is False
    quiet_node.from_stream = True
    assert not quiet_node.get(-1).get_last_live_image()
    assert Frame(None, None, None).__bool__() is False
    with pytest.raises(IndexWontBeThereError):  # the scan ended with 3 images
        node.get(0, -1).image_references([3])


def test_event_types_print_as_bliss():
    assert str(EventType.NEW_NODE) == "EventType.NEW_NODE"
    assert f"{EventType.END_SCAN}" == "EventType.END_SCAN"
    assert EventType.NEW_DATA == 2 and EventType["PREPARED_SCAN"] is EventType.PREPARED_SCAN


CLIENT = textwrap.dedent(
    """
    import sys
    from bliss.data.lima_image import Frame, ImageFormatNotSupported, image_from_file
    from bliss.data.events import ImageNotSaved
    from bliss.data.node import get_session_node

    for scan in get_session_node(sys.argv[1]).walk(include_filter="scan", wait=False):
        for node in scan.walk(include_filter="lima", wait=False):
            view = node.get(-1)
            try:
                frame = view.get_last_image()
            except ImageNotSaved:
                print(node.name, "not saved")
                continue
            if not frame:
                raise ImageFormatNotSupported("empty")
            # BLISS numbers a view's images from the acquisition's first: the last frame's
            # reference is the one of its number, whatever the view.
            ref = view.image_reference(frame.frame_number)
            same = (image_from_file(*ref) == frame.data).all()
            print(node.name, frame.frame_number, frame.source, frame.data.shape, same)
    """
)


def test_a_flint_like_script_reads_frames_through_bliss_names(redis_url, session, tmp_path):
    _, refs = _frames(tmp_path)
    with session.create_scan("lima", {"save": False}) as scan:
        timer = scan.create_container("timer")
        timer.create_lima("lima:image", "uint16", (4, 2)).emit(refs)
        timer.create_lima("quiet:image", "uint16", (4, 2), saving_mode="NOSAVING").emit_unsaved(1)
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    done = _run([str(script), session.name], redis_url, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["lima:image 2 file (4, 2) True", "quiet:image not saved"]


NODE_FUNCTIONS = textwrap.dedent(
    """
    import sys
    from bliss.data import node
    from bliss.data.node import datanode_factory, get_last_saved_scan, get_last_scan_filename

    print([s.name for s in node.sessions_list()])
    session = datanode_factory(sys.argv[1], node_type="session", state="exists",
                               on_not_state="instantiate")
    print(get_last_saved_scan(session).name, get_last_scan_filename(session))
    print(datanode_factory("nothing_yet", node_type="session").name)
    print(datanode_factory("1_saved:timer", parent=session).db_name)
    it = node.get_node(sys.argv[1] + ":1_saved").iterator  # deprecated in BLISS, still used
    for event in it.walk_events(wait=False):
        if event.type == event.type.END_SCAN:
            print(event.type, event.node.name)
        elif event.type == event.type.NEW_DATA:
            print(event.type, event.node.name, event.data.data.tolist())
    """
)


def test_bliss_node_functions_of_beamline_scripts(redis_url, session, tmp_path):
    with session.create_scan("saved", {"save": True, "filename": "/data/f.h5"}) as scan:
        scan.create_container("timer").create_channel("timer:t").emit([1.0, 2.0])
    with session.create_scan("quick", {"save": False}) as scan:
        scan.create_container("timer").create_channel("timer:t").emit(1.0)
    script = tmp_path / "nodes.py"
    script.write_text(NODE_FUNCTIONS)
    done = _run([str(script), session.name], redis_url, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "['test_session']",
        "1_saved /data/f.h5",
        "nothing_yet",
        "test_session:1_saved:timer",
        "EventType.NEW_DATA timer:t [1.0, 2.0]",
        "EventType.END_SCAN 1_saved",
    ]


def test_last_point_of_a_channel_without_points_is_not_there_yet(store, session):
    # BLISS's documented walk_events example prints node.get(-1) at each NEW_NODE (BLISS
    # gave None): the channel has no point yet there.
    with session.create_scan("s") as scan:
        channel = scan.create_container("timer").create_channel("timer:t")
        scan.prepared()
        node = get_session_node(session.name, store=store).get_scan(scan.number).load_nodes()[-1]
        with pytest.raises(IndexNotYetThereError, match="index -1, but only 0 points"):
            node.get(-1)
        channel.emit([1.0, 2.0])
        scan.flush()  # the points are sent by a background sender
        assert node.get(-1) == 2.0 and node.get(-2) == 1.0
        with pytest.raises(IndexNotYetThereError):
            node.get(-3)
    with pytest.raises(IndexWontBeThereError):
        node.get(-3)


def test_watcher_scan_info_always_names_a_filename(store, session):
    # BLISS's scan display formats scan_info["filename"] in every header: a scan saved in the
    # writer's default file (no filename published) names the file the writer recorded.
    observer = KeywordOnly()
    watcher = ScansWatcher(session.name, store=store)
    watcher.set_observer(observer)
    with watcher.watch():
        assert watcher.wait_ready(2)
        with session.create_scan("default_file", warn_no_writer=False) as scan:
            scan.create_container("timer").create_channel("timer:t").emit(1.0)
            scan.prepared()
            node = get_session_node(session.name, store=store).get_scan(scan.number)
            # The watcher reads scan_info in its own thread: record the verdict only once
            # on_scan_created has been called, or it may already see the file.
            deadline = time.monotonic() + 5
            while node.db_name not in observer.created and time.monotonic() < deadline:
                time.sleep(0.01)
            verdict = SavingVerdict(SavingState.WRITING, file="/data/default.h5")
            store.redis.hset(node.key, mapping=saving_fields(verdict))
        with session.create_scan("given", {"filename": "/data/given.h5"}, warn_no_writer=False):
            pass
        assert watcher.wait_no_more_running_scans(5)
    first, second = (f"{session.name}:{n}" for n in ("1_default_file", "2_given"))
    assert observer.created[first]["filename"] == ""  # nothing recorded yet
    assert observer.finished[first]["filename"] == "/data/default.h5"
    assert observer.created[second]["filename"] == "/data/given.h5"
    assert "filename" not in node.info  # the node's own scan_info is left as published
