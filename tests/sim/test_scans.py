"""Simulated scans end to end: what is published matches what scan_info announces."""

from __future__ import annotations

import _thread
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scanstream import (
    DataStore,
    EventType,
    ImageNotSavedError,
    InvalidArgumentError,
    ScanState,
    get_session_node,
    read_image,
)
from scanstream.sim import (
    Counter,
    DiodeCounter,
    LimaDetector,
    Motor,
    MotorLimitError,
    PointContext,
    SavingConfig,
    ScanResult,
    TopMaster,
    a2scan,
    amesh,
    ascan,
    ct,
    default_beamline,
    dscan,
    loopscan,
    parallel,
    run_chain,
    scan_result_of,
    sequence,
    timescan,
)
from scanstream.sim.catalogue import CATALOGUE, run_catalogue
from scanstream.subscribe.tree import ScanNode

SRC = Path(__file__).resolve().parents[2] / "src"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "some_scans.py"
TIMER_CHANNELS = ("elapsed_time", "epoch")


# ------------------------------------------------------------------------------------ helpers


def scan_node(store: DataStore, result: ScanResult) -> ScanNode:
    return get_session_node(result.session_name, store=store).get_scan(result.number)


def data_nodes(node: ScanNode) -> dict[str, Any]:
    return {
        n.name: n for n in node.load_nodes() if n.type in ("channel", "lima", "node_ref_channel")
    }


def check_announced(store: DataStore, result: ScanResult) -> dict[str, Any]:
    """Every channel of acquisition_chain is published with the announced count, dim, master."""
    node = scan_node(store, result)
    assert node.state is result.state
    info = node.info
    nodes = data_nodes(node)
    chain = info["acquisition_chain"]
    announced = {"scans"} if node.type == "scan_group" else set()
    for top, entry in chain.items():
        count = result.acquired[top]
        if result.state is ScanState.DONE and len(chain) == 1 and info.get("npoints"):
            assert count == info["npoints"], (result.label, top)
        names = [
            n
            for part in (entry["master"], entry)
            for k in ("scalars", "spectra", "images")
            for n in part[k]
        ]
        for name in names:
            announced.add(name)
            dn = nodes[name]
            assert len(dn) == count, (result.label, name)
            assert dn.db_name.startswith(f"{node.db_name}:{top}:"), dn.db_name
            dim = info["channels"][name]["dim"]
            if dn.type == "channel":
                assert len(dn.shape) == dim, name
                if count:
                    assert len(dn.get(0, -1)) == count
            else:
                assert dn.type == "lima" and dim == 2
    assert announced == set(nodes), (result.label, set(nodes) ^ announced)
    # a walk replays exactly these points and ends with the final state
    counts: dict[str, int] = {}
    events = list(node.walk_events(timeout=5))
    for event_type, n, data in events:
        if event_type is EventType.NEW_DATA:
            counts[n.name] = counts.get(n.name, 0) + data.block_size
    assert events[-1].type is EventType.END_SCAN and events[-1].data.data is result.state
    assert all(counts.get(name, 0) == len(dn) for name, dn in nodes.items())
    return nodes


def check_images(nodes: dict[str, Any], seed: int = 0) -> int:
    """Every saved image reference opens and holds exactly the frame that was written."""
    checked = 0
    for node in nodes.values():
        if node.type != "lima" or node.saving_mode == "NOSAVING":
            continue
        det = LimaDetector(node.name.split(":")[0], node.shape, node.dtype, seed=seed)
        view = node.get(0, -1)
        for i, ref in enumerate(view.all_image_references()):
            assert np.array_equal(read_image(ref), det.image(i))
            checked += 1
    return checked


def values(store: DataStore, result: ScanResult) -> dict[str, Any]:
    """Deterministic data of a scan: channels except timers, and images."""
    out: dict[str, Any] = {}
    for name, node in data_nodes(scan_node(store, result)).items():
        if node.type == "channel" and not name.endswith(TIMER_CHANNELS):
            out[name] = node.get_as_array()
        elif node.type == "lima" and node.saving_mode != "NOSAVING":
            out[name] = [read_image(r) for r in node.get(0, -1).all_image_references()]
    return out


# ---------------------------------------------------------------------------------- catalogue


def test_catalogue_publishes_what_scan_info_announces(session, store, tmp_path: Path) -> None:
    saving = SavingConfig(tmp_path, "test_session")
    results = run_catalogue(session, saving, fast=True)
    labels = [r.label for r in results]
    assert set(labels) == set(CATALOGUE)
    states = {r.label: r.state for r in results}
    assert states.pop("stopped_timescan") is ScanState.USER_ABORTED
    assert states.pop("killed_loopscan") is ScanState.KILLED
    assert set(states.values()) == {ScanState.DONE}
    images = 0
    for result in results:
        nodes = check_announced(store, result)
        images += check_images(nodes)
        info = result.scan_info
        assert info["filename"] == ("" if result.label == "saving_off" else saving.filename)
    assert images == 5 + 50
    by_label = {r.label: r for r in results}
    assert by_label["d2scan"].scan_info["title"] == "d2scan roby -0.1 0.1 robz -0.2 0.2 15 0.1"
    assert by_label["two_top_masters"].acquired == {"timer1": 2, "timer2": 50}
    assert by_label["stopped_timescan"].scan_info["npoints"] == 0
    assert 3 <= by_label["stopped_timescan"].npoints <= 11  # 0.05 s points during 0.5 s
    assert by_label["killed_loopscan"].npoints == 3
    off = get_session_node(session.name, store=store).get_scan(by_label["saving_off"].number)
    assert off.info["filename"] == "" and off.info["save"] is False  # as BLISS publishes it
    assert labels[-1] == "saving_off"  # after every saved scan (see the catalogue)
    lima_scan = get_session_node(session.name, store=store).get_scan(
        by_label["lima_loopscan"].number
    )
    device = next(n for n in lima_scan.load_nodes() if n.name == "lima_simulator")
    assert device.info.get_all() == {  # added when prepared and at the end, as BLISS devices
        "acq_nb_frames": 5,
        "acq_expo_time": 0.1,
        "acq_trigger_mode": "INTERNAL_TRIGGER",
        "acq_frames_acquired": 5,
    }
    lima_files = by_label["lima_loopscan"].files
    assert [Path(f).name for f in lima_files] == [f"lima_simulator_000{k}.h5" for k in range(3)]
    assert Path(lima_files[0]).parent == saving.scan_directory(by_label["lima_loopscan"].number)


def test_catalogue_is_deterministic(store, tmp_path: Path) -> None:
    from scanstream import create_session

    names = [n for n in CATALOGUE if n != "stopped_timescan"]  # its length depends on time
    runs = []
    for session_name in ("run_a", "run_b"):
        with create_session(session_name, store=store) as session:
            saving = SavingConfig(tmp_path / session_name, session_name)
            results = run_catalogue(session, saving, names=names, seed=7)
            runs.append([(r.label, values(store, r)) for r in results])
    assert [label for label, _ in runs[0]] == [label for label, _ in runs[1]]
    for (label, a), (_, b) in zip(*runs):
        assert a.keys() == b.keys(), label
        for name in a:
            if isinstance(a[name], list):
                assert all(np.array_equal(x, y) for x, y in zip(a[name], b[name], strict=True)), (
                    name
                )
            else:
                np.testing.assert_array_equal(a[name], b[name], err_msg=f"{label} {name}")


# ------------------------------------------------------------------------ data per device


def test_lima_references_name_the_frames_written(session, store, tmp_path: Path) -> None:
    det = LimaDetector("lima_simulator", (16, 24), "uint16", frames_per_file=2, seed=3)
    result = loopscan(session, 5, 0.1, det, saving=SavingConfig(tmp_path, "test_session"))
    nodes = check_announced(store, result)
    node = nodes["lima_simulator:image"]
    assert (node.dtype, node.shape) == (np.dtype("uint16"), (16, 24))
    view = node.get(0, -1)
    refs = view.all_image_references()
    assert [(Path(r.file_path).name, r.index_in_file) for r in refs] == [
        ("lima_simulator_0000.h5", 0),
        ("lima_simulator_0000.h5", 1),
        ("lima_simulator_0001.h5", 0),
        ("lima_simulator_0001.h5", 1),
        ("lima_simulator_0002.h5", 0),
    ]
    for i in range(5):
        assert np.array_equal(view.get_image(i), det.image(i))
    assert np.array_equal(view.get_image(-1), det.image(4))
    assert node.info["saving_frame_per_file"] == 2 and node.info["saving_format"] == "HDF5"
    assert node.info["saving_directory"] == str(Path(refs[0].file_path).parent)


def test_lima_nosaving_and_saving_off(session, store, tmp_path: Path) -> None:
    det = LimaDetector("lima_simulator", (8, 8), saving_mode="NOSAVING")
    result = loopscan(session, 4, 0.1, det, saving=SavingConfig(tmp_path, "test_session"))
    node = check_announced(store, result)["lima_simulator:image"]
    assert len(node.get(0, -1)) == 4
    with pytest.raises(ImageNotSavedError):
        node.get(0, -1).all_image_references()
    # MANUAL detector in a scan that does not save: frames are not written (BLISS save=False)
    off = loopscan(session, 2, 0.1, LimaDetector("lima_simulator", (8, 8)), DiodeCounter("diode"))
    assert "filename" not in off.scan_info and "save" not in off.scan_info
    assert check_announced(store, off)["lima_simulator:image"].saving_mode == "NOSAVING"
    assert not list(tmp_path.rglob("*.h5"))


def test_mca_and_sampling_counters(session, store) -> None:
    bl = default_beamline(seed=1)
    result = ascan(
        session,
        bl.motor("robu"),
        0,
        1,
        6,
        0.1,
        bl.counter("simu1"),
        bl.counter("diode9"),
        bl.counter("var_samples"),
    )
    nodes = check_announced(store, result)
    spectrum = nodes["simu1:spectrum"]
    assert (spectrum.dtype, spectrum.shape) == (np.dtype("uint32"), (1024,))
    assert spectrum.get(0, -1).shape == (7, 1024)
    samples = nodes["simulation_diode_sampling_controller:diode9_samples"]
    assert samples.shape == (10,) and samples.get(0, -1).shape == (7, 10)
    ragged = nodes["simulation_diode_sampling_controller:var_samples_samples"]
    assert ragged.point_shape == (-1,)
    assert [len(p) for p in ragged.get(0, -1)] == [3 + i % 7 for i in range(7)]
    means = nodes["simulation_diode_sampling_controller:var_samples"].get(0, -1)
    np.testing.assert_allclose(means, [p.mean() for p in ragged.get(0, -1)])
    assert result.scan_info["acquisition_chain"]["axis"]["spectra"] == [
        "simu1:spectrum",
        "simulation_diode_sampling_controller:diode9_samples",
        "simulation_diode_sampling_controller:var_samples_samples",
    ]


def test_step_scans_info_and_positions(session, store) -> None:
    bl = default_beamline()
    roby, robz = bl.motor("roby"), bl.motor("robz")
    gauss = bl.counter("sim_ct_gauss")
    r = a2scan(session, roby, 0, 1, robz, 0, 2, 4, 0.1, gauss, positioners=bl.positioners)
    nodes = check_announced(store, r)
    np.testing.assert_allclose(nodes["axis:robz"].get(0, -1), np.linspace(0, 2, 5))
    np.testing.assert_allclose(
        nodes["simulation_counter_controller:sim_ct_gauss"].get(0, -1),
        [
            gauss.read(PointContext(i, 0.1, {"roby": x}))[0]
            for i, x in enumerate(np.linspace(0, 1, 5))
        ],
    )
    info = scan_node(store, r).info
    assert info["title"] == "a2scan roby 0 1 robz 0 2 4 0.1" and info["type"] == "a2scan"
    assert (info["start"], info["stop"], info["npoints"], info["count_time"]) == (
        [0.0, 0.0],
        [1.0, 2.0],
        5,
        0.1,
    )
    assert info["positioners"]["positioners_end"]["robz"] == 2.0
    assert set(info["positioners"]["positioners_start"]) == {"robx", "roby", "robz", "robu"}

    roby.move(0.5)
    d = dscan(session, roby, -0.25, 0.25, 2, 0.1, bl.counter("diode"))
    assert roby.position == 0.5  # back to the start
    np.testing.assert_allclose(check_announced(store, d)["axis:roby"].get(0, -1), [0.25, 0.5, 0.75])
    d_info = scan_node(store, d).info
    assert d_info["title"] == "dscan roby -0.25 0.25 2 0.1" and d_info["start"] == [0.25]
    assert d_info["positioners"]["positioners_end"]["roby"] == 0.75  # where the scan ended

    c = ct(session, 0.1, bl.counter("diode"))
    assert check_announced(store, c)["simulation_diode_sampling_controller:diode"].get(
        0, -1
    ).shape == (1,)
    assert (c.scan_info["title"], c.scan_info["npoints"], c.scan_info["type"]) == (
        "ct 0.1",
        1,
        "ct",
    )


def test_amesh_is_a_2d_scan(session, store) -> None:
    bl = default_beamline()
    r = amesh(
        session,
        bl.motor("robx"),
        0,
        1,
        2,
        bl.motor("roby"),
        0,
        2,
        1,
        0.1,
        bl.counter("diode"),
        backnforth=True,
    )
    nodes = check_announced(store, r)
    info = scan_node(store, r).info
    assert (info["data_dim"], info["npoints1"], info["npoints2"], info["npoints"]) == (2, 3, 2, 6)
    np.testing.assert_allclose(nodes["axis:robx"].get(0, -1), [0, 0.5, 1, 1, 0.5, 0])
    np.testing.assert_allclose(nodes["axis:roby"].get(0, -1), [0, 0, 0, 2, 2, 2])
    assert info["plots"][0]["kind"] == "scatter-plot"
    assert info["plots"][0]["items"][0] == {
        "kind": "scatter",
        "x": "axis:robx",
        "y": "axis:roby",
        "value": "simulation_diode_sampling_controller:diode",
    }
    assert info["channels"]["axis:robx"]["axis-kind"] == "backnforth"
    assert info["channels"]["axis:roby"]["axis-points"] == 2


def test_two_top_masters_of_different_lengths(session, store, tmp_path: Path) -> None:
    d1, d2 = DiodeCounter("diode", seed=1), DiodeCounter("diode2", seed=2)
    lima = LimaDetector("lima_simulator", (8, 8), frames_per_file=7)
    masters = [TopMaster("timer1", 2, 1.0, [d1]), TopMaster("timer2", 50, 0.001, [lima, d2])]
    r = run_chain(session, masters, name="test", saving=SavingConfig(tmp_path, "test_session"))
    nodes = check_announced(store, r)
    assert check_images(nodes) == 50
    assert len(r.files) == 8  # 7 frames per file, the last one holds 1
    # BLISS db_names end in the parent and the short name (issue 13 item 11).
    assert nodes["timer2:epoch"].db_name == f"{r.db_name}:timer2:epoch"
    np.testing.assert_array_equal(
        nodes["simulation_diode_sampling_controller:diode2"].get(0, -1),
        [d2.value(i, 0.001) for i in range(50)],
    )


def test_non_terminator_master_is_stopped_with_the_scan(session, store) -> None:
    masters = [
        TopMaster("timer1", 0, 0.01, [DiodeCounter("diode")], terminator=False),
        TopMaster("timer2", 5, 0.01, [DiodeCounter("diode2")]),
    ]
    r = run_chain(session, masters, name="test", sleep=1.0)
    assert r.state is ScanState.DONE and r.acquired["timer2"] == 5 and r.acquired["timer1"] >= 1
    check_announced(store, r)


# ----------------------------------------------------------------- concurrency and stopping


def test_parallel_scans_do_not_mix_data(session, store) -> None:
    diodes = [DiodeCounter(f"pdiode{k}", 10.0 * k, seed=k) for k in (1, 2, 3)]
    counts = (7, 13, 21)
    results = parallel(
        [lambda d=d, n=n: loopscan(session, n, 0.1, d, sleep=0.02) for d, n in zip(diodes, counts)],
        timeout=20,
    )
    assert len({r.number for r in results}) == 3
    for diode, n, r in zip(diodes, counts, results):
        nodes = check_announced(store, r)
        own = {name for name in nodes if not name.endswith(TIMER_CHANNELS)}
        assert own == {diode.fullname}
        np.testing.assert_array_equal(
            nodes[diode.fullname].get(0, -1), [diode.value(i, 0.1) for i in range(n)]
        )


class _Interrupting(Counter):
    """A counter whose read of point ``at`` raises ``exc`` (a Ctrl-C or a device error)."""

    def __init__(self, at: int, exc: BaseException) -> None:
        super().__init__("flaky")
        self.at, self.exc = at, exc

    def read(self, ctx: PointContext) -> list[Any]:
        if ctx.index == self.at:
            raise self.exc
        return [float(ctx.index)]


def test_ctrl_c_keeps_exactly_the_acquired_points(session, store, tmp_path: Path) -> None:
    bl = default_beamline()
    lima = LimaDetector("lima_simulator", (8, 8), frames_per_file=10)
    # Ctrl-C while reading point 4: points 0..3 are published on every channel, none of point 4
    with pytest.raises(KeyboardInterrupt) as info:
        ascan(
            session,
            bl.motor("roby"),
            0,
            1,
            9,
            0.1,
            bl.counter("diode"),
            bl.counter("simu1"),
            lima,
            _Interrupting(4, KeyboardInterrupt()),
            saving=SavingConfig(tmp_path, "test_session"),
        )
    result = info.value.scan_result
    assert result.state is ScanState.USER_ABORTED and result.acquired == {"axis": 4}
    nodes = check_announced(store, result)
    assert check_images(nodes) == 4
    assert scan_node(store, result).info["error"] == "KeyboardInterrupt"
    import h5py

    with h5py.File(result.files[0], "r") as f:  # the file was shrunk to the frames acquired
        assert f[lima.path_in_file].shape[0] == 4

    # Ctrl-C right after point 2 was published (from a callback)
    def on_point(master: str, done: int) -> None:
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as info:
        loopscan(session, 10, 0.1, bl.counter("diode"), on_point=on_point)
    assert info.value.scan_result.acquired == {"timer": 3}
    check_announced(store, info.value.scan_result)


@pytest.mark.skipif(
    signal.getsignal(signal.SIGINT) is not signal.default_int_handler,
    reason="SIGINT has a custom handler in this process",
)
def test_ctrl_c_during_a_multi_master_scan(session, store) -> None:
    # Ctrl-C reaches the main thread while it waits for the master threads: they stop after
    # their current point and the scan ends USER_ABORTED with what each master acquired.
    def on_point(master: str, done: int) -> None:
        if master == "timer2" and done == 5:
            _thread.interrupt_main()

    masters = [
        TopMaster("timer1", 200, 0.01, [DiodeCounter("diode")]),
        TopMaster("timer2", 200, 0.01, [DiodeCounter("diode2")]),
    ]
    with pytest.raises(KeyboardInterrupt) as info:
        run_chain(session, masters, name="test", sleep=0.2, on_point=on_point)
        pytest.fail("the scan returned: the interrupt did not reach it")
    result = info.value.scan_result
    assert result.state is ScanState.USER_ABORTED
    assert 5 <= result.acquired["timer2"] < 200 and 1 <= result.acquired["timer1"] < 200
    check_announced(store, result)
    assert not [t for t in threading.enumerate() if t.name.startswith("sim-timer")]


def test_device_error_fails_the_scan(session, store) -> None:
    with pytest.raises(RuntimeError, match="detector on fire") as info:
        loopscan(
            session,
            5,
            0.1,
            DiodeCounter("diode"),
            _Interrupting(2, RuntimeError("detector on fire")),
        )
    result = info.value.scan_result
    assert scan_result_of(info.value) is result
    assert result.state is ScanState.FAILED and result.acquired == {"timer": 2}
    check_announced(store, result)
    assert "detector on fire" in scan_node(store, result).info["error"]


def test_stop_and_kill_events(session, store) -> None:
    # Another thread stops the scan once its first point is published, while the scan waits
    # out a 30 s sleep_time: the wait must end early and the scan keep exactly that point.
    stop = threading.Event()
    first_point = threading.Event()
    stopper = threading.Thread(target=lambda: first_point.wait(10) and stop.set(), daemon=True)
    stopper.start()
    t0 = time.monotonic()
    try:
        r = timescan(
            session,
            0.01,
            DiodeCounter("diode"),
            sleep_time=30.0,
            sleep=1.0,
            stop_event=stop,
            on_point=lambda master, done: first_point.set(),
        )
    finally:
        first_point.set()
        stopper.join(5)
    assert time.monotonic() - t0 < 10
    assert r.state is ScanState.USER_ABORTED and r.npoints >= 1 and r.scan_info["npoints"] == 0
    assert r.npoints == 1
    check_announced(store, r)

    kill = threading.Event()
    k = loopscan(
        session,
        10,
        0.1,
        DiodeCounter("diode"),
        kill_event=kill,
        on_point=lambda master, done: kill.set() if done == 6 else None,
    )
    assert (k.state, k.npoints) == (ScanState.KILLED, 6)
    check_announced(store, k)

    # a stop request after the last point does not make a complete scan aborted
    late = threading.Event()
    done = loopscan(
        session,
        3,
        0.1,
        DiodeCounter("diode"),
        stop_event=late,
        on_point=lambda master, n: late.set() if n == 3 else None,
    )
    assert done.state is ScanState.DONE


def test_killed_publisher_process_ends_killed(redis_url: str, store) -> None:
    script = (
        "from scanstream import DataStore, Settings, create_session\n"
        "from scanstream.sim import timescan, DiodeCounter\n"
        f"store = DataStore(settings=Settings(redis_url={redis_url!r}, lease_time=0.5))\n"
        "session = create_session('test_session', store=store)\n"
        "def on_point(master, n):\n"
        "    if n == 3: print('running', flush=True)\n"
        "timescan(session, 0.01, DiodeCounter('diode'), sleep=1.0, on_point=on_point)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 15)
        assert ready and proc.stdout is not None and proc.stdout.readline().strip() == "running"
    finally:
        proc.kill()
        proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()
    node = get_session_node("test_session", store=store).get_scan(1)
    deadline = time.monotonic() + 5
    while node.check_lease() is not ScanState.KILLED and time.monotonic() < deadline:
        time.sleep(0.05)
    assert node.state is ScanState.KILLED
    # Points still queued in the killed process are lost; those sent are consistent across
    # channels (one transaction per send) and readable.
    lengths = {len(n) for n in data_nodes(node).values()}
    assert len(lengths) == 1 and lengths.pop() >= 1


def test_sequence_references_sub_scans_as_they_run(session, store, tmp_path: Path) -> None:
    saving = SavingConfig(tmp_path, "test_session")
    seen: list[int] = []

    def check_reference(master: str, done: int) -> None:
        # while the second sub-scan runs, the group already references it
        if done == 1:
            group = next(
                s
                for s in get_session_node("test_session", store=store).children()
                if s.type == "scan_group"
            )
            refs = next(n for n in group.load_nodes() if n.type == "node_ref_channel")
            deadline = time.monotonic() + 2
            while len(refs) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            seen.append(len(refs))

    steps = [
        lambda: loopscan(session, 2, 0.1, DiodeCounter("diode"), saving=saving),
        lambda: ct(session, 0.1, DiodeCounter("diode"), saving=saving, on_point=check_reference),
    ]
    g = sequence(session, steps, title="two scans", saving=saving)
    assert seen == [2]
    assert g.state is ScanState.DONE and [s.number for s in g.scans] == [g.number + 1, g.number + 2]
    node = scan_node(store, g)
    assert node.type == "scan_group"
    info = node.info
    assert info["is-scan-sequence"] is True and info["sequence-info"] == {"scan-count": 2}
    assert info["filename"] == saving.filename
    nodes = check_announced(store, g)
    assert [s.db_name for s in nodes["scans"].get(0, -1)] == [s.db_name for s in g.scans]
    np.testing.assert_array_equal(nodes["scan_numbers"].get(0, -1), [s.number for s in g.scans])
    # END of the group comes after its references
    events = list(node.walk_events(timeout=5))
    last_ref = max(
        i for i, e in enumerate(events) if e.type is EventType.NEW_DATA and e.node.name == "scans"
    )
    assert events[-1].type is EventType.END_SCAN and last_ref < len(events) - 1


def test_sequence_interrupted_ends_user_aborted(session, store) -> None:
    def interrupted() -> None:
        loopscan(session, 3, 0.1, _Interrupting(1, KeyboardInterrupt()))

    with pytest.raises(KeyboardInterrupt):
        sequence(session, [lambda: ct(session, 0.1, DiodeCounter("d")), interrupted])
    group = get_session_node("test_session", store=store).get_scan(1)
    assert group.type == "scan_group" and group.state is ScanState.USER_ABORTED
    assert len(data_nodes(group)["scans"]) == 2


# --------------------------------------------------------------------------- bad arguments


def test_limits_are_checked_before_the_scan_starts(session, store) -> None:
    roby = Motor("roby", 0.0, "mm", -1.0, 1.0)
    with pytest.raises(MotorLimitError, match=r"roby.*2.*\[-1, 1\]"):
        ascan(session, roby, 0, 2, 4, 0.1, DiodeCounter("diode"))
    robx = Motor("robx", 0.9, "mm", -1.0, 1.0)
    with pytest.raises(MotorLimitError, match="1.4"):
        dscan(session, robx, -0.5, 0.5, 4, 0.1, DiodeCounter("diode"))
    assert (roby.position, robx.position) == (0.0, 0.9)
    with pytest.raises(MotorLimitError):
        amesh(session, roby, 0, 1, 2, robx, 0, 2, 2, 0.1)
    assert get_session_node("test_session", store=store).children() == []  # no scan created


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda s, d: ascan(s, Motor("m"), 0, 1, 0, 0.1, d), "intervals"),
        (lambda s, d: ascan(s, Motor("m"), 0, 1, 2.5, 0.1, d), "intervals"),
        (lambda s, d: loopscan(s, 0, 0.1, d), "npoints"),
        (lambda s, d: loopscan(s, 3, -1, d), "count_time"),
        (lambda s, d: timescan(s, 0.1, d, npoints=-2), "npoints"),
        (lambda s, d: loopscan(s, 3, 0.1, d, d), "used twice"),
        (lambda s, d: a2scan(s, Motor("m"), 0, 1, Motor("m"), 0, 1, 2, 0.1, d), "twice"),
        (lambda s, d: run_chain(s, []), "at least one top master"),
        (lambda s, d: loopscan(s, 3, 0.1, d, sleep=-1), "sleep"),
        (lambda s, d: loopscan(s, 3, 0.1, d, max_duration=-1), "max_duration"),
    ],
)
def test_bad_arguments_are_refused_before_the_scan(session, store, call, match) -> None:
    with pytest.raises(ValueError, match=match):
        call(session, DiodeCounter("diode"))
    assert get_session_node("test_session", store=store).children() == []


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda s: loopscan(s, True, 0.1, DiodeCounter("d")),
            "npoints must be an int >= 1, got True",
        ),
        (lambda s: ct(s, float("nan"), DiodeCounter("d")), "count_time must be a number >= 0"),
        (lambda s: amesh(s, Motor("a"), 0, 1, 2, Motor("b"), 0, 1, 0, 0.1), "intervals2"),
        (lambda s: run_chain(s, [TopMaster("timer", 2, 0.1, sleep_time=-1)]), "sleep_time"),
        (lambda s: run_catalogue(s, names=["ct", "nope"]), "unknown catalogue entries"),
    ],
)
def test_argument_errors_are_invalid_argument_errors(session, store, call, match) -> None:
    # One error class for every bad argument of the simulator, raised before publishing.
    with pytest.raises(InvalidArgumentError, match=match):
        call(session)
    assert get_session_node("test_session", store=store).children() == []
    assert scan_result_of(InvalidArgumentError("no scan")) is None


def test_example_script_runs(redis_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.run(
        [
            sys.executable,
            str(EXAMPLE),
            "--redis-url",
            redis_url,
            "--root",
            str(tmp_path),
            "--session",
            "example_session",
            "--only",
            "ct",
            "lima_loopscan",
        ],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert "example_session:1_ct" in proc.stdout and "example_session:2_loopscan" in proc.stdout
    assert len(list(tmp_path.rglob("lima_simulator_*.h5"))) == 3
