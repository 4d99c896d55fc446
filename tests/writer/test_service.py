"""The writer service against a real server and real files: content, isolation, ownership."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

from scanstream import create_session, get_session_node
from scanstream.models import SavingState
from scanstream.sim import SavingConfig
from scanstream.sim.catalogue import run_catalogue
from scanstream.writer import WriterService, saved_scans, writer_status
from scanstream.writer.service import HEARTBEAT_PERIOD

from .conftest import assert_file_matches_redis, wait_for, wait_saved


def _all_scans(store, session="test_session"):
    return get_session_node(session, store=store).children()


def test_catalogue_files_equal_redis_bit_for_bit(writer, session, store, tmp_path):
    run_catalogue(session, SavingConfig(tmp_path / "data", "test_session"))
    scans = _all_scans(store)
    assert len(scans) >= 20
    wait_saved(store, "test_session", {s.number for s in scans}, timeout=30)
    files = set()
    for scan in scans:
        info = scan.info
        if info.get("save") is False:
            continue
        with assert_file_matches_redis(scan, tmp_path / "data") as file:
            files.add(file.filename)
            entry = file[f"{scan.number}.1"]
            assert entry["title"].asstr()[()] == info["title"]
            assert entry["end_reason"].asstr()[()] == scan.state.name
            start = entry["start_time"].asstr()[()]
            assert start == info["start_time"] and start[-6] in "+-"  # ISO 8601 with offset
            if scan.type == "scan_group":
                assert set(entry["scans"]) >= {"14.1", "15.1"} or len(entry["scans"]) >= 2
                for sub in entry["scans"].values():
                    assert sub.attrs["NX_class"] == "NXentry"
    assert len(files) == 1
    with h5py.File(files.pop(), "r") as file:
        # NX_class on every group; a default plot chain from the root to an NXdata.
        missing = []
        file.visititems(
            lambda name, obj: (
                missing.append(name)
                if isinstance(obj, h5py.Group) and "NX_class" not in obj.attrs
                else None
            )
        )
        assert missing == []
        entry = file[file.attrs["default"]]
        nxdata = entry[entry.attrs["default"]]
        assert nxdata.attrs["NX_class"] == "NXdata"
        assert nxdata.attrs["signal"] in nxdata
        killed = [s for s in scans if s.state.name == "KILLED"]
        assert killed and file[f"{killed[0].number}.1/end_reason"].asstr()[()] == "KILLED"
        aborted = [s for s in scans if s.state.name == "USER_ABORTED"]
        assert aborted and file[f"{aborted[0].number}.1/end_reason"].asstr()[()] == "USER_ABORTED"
        two_masters = [s for s in scans if len(s.children()) == 2]
        assert two_masters and f"{two_masters[0].number}.2" in file


def test_aborted_scan_keeps_exactly_the_emitted_points(writer, session, store, tmp_path):
    with pytest.raises(KeyboardInterrupt), session.create_scan("loop") as scan:
        channel = scan.create_container("timer").create_channel("timer:t", "float32")
        channel.emit(np.arange(7, dtype=np.float32))
        raise KeyboardInterrupt
    wait_saved(store, "test_session", {scan.number})
    with h5py.File(tmp_path / "data/test_session/test_session.h5", "r") as file:
        assert file["1.1/measurement/t"][()].tolist() == list(range(7))
        assert file["1.1/end_reason"].asstr()[()] == "USER_ABORTED"


def test_a_reader_process_sees_the_data_grow_during_the_scan(writer, session, store, tmp_path):
    path = tmp_path / "data/test_session/test_session.h5"
    reader = textwrap.dedent(f"""
        import h5py
        with h5py.File({str(path)!r}, "r") as f:
            print(f["1.1/measurement/c"].shape[0])
            plot = f["1.1"][f["1.1"].attrs["default"]]  # a plot from the first point on
            print(plot.name, plot[plot.attrs["signal"]].shape[0])
    """)
    seen: list[str] = []

    def points_seen_by_reader() -> int:
        out = subprocess.run(
            [sys.executable, "-c", reader], capture_output=True, text=True, timeout=20, check=False
        )
        seen[:] = out.stdout.split()
        return int(seen[0]) if out.returncode == 0 else -1

    with session.create_scan("loop") as scan:
        channel = scan.create_container("timer").create_channel("timer:c", "int64")
        scan.prepared()
        channel.emit(np.arange(100))
        wait_for(lambda: points_seen_by_reader() == 100, 10, "the reader to see 100 points")
        assert seen[1:] == ["/1.1/plotselect", "100"]
        channel.emit(np.arange(100, 250))
        wait_for(lambda: points_seen_by_reader() == 250, 10, "the reader to see 250 points")
        assert scan.number not in saved_scans("test_session", store=store)  # still running
    wait_saved(store, "test_session", {scan.number})


# A blank filename (" ") is refused by the publisher now (tests/test_publish_refusals.py).
@pytest.mark.parametrize("filename", ["not/a/dir/under/a/file"])
def test_a_bad_scan_is_reported_and_the_others_are_written(
    writer, session, store, tmp_path, filename
):
    (tmp_path / "blocker").write_text("a file where a directory should be")
    bad_name = str(tmp_path / "blocker" / "x.h5") if filename.strip() else filename
    with session.create_scan("bad", {"filename": bad_name}) as bad:
        bad.create_container("timer").create_channel("timer:c").emit([1.0, 2.0])
    with session.create_scan("good") as good:
        good.create_container("timer").create_channel("timer:c").emit([3.0, 4.0])

    def reported() -> bool:
        status = writer_status("test_session", store=store) or {}
        return bool(status.get("errors")) and good.number in saved_scans(
            "test_session", store=store
        )

    wait_for(reported, 10, "the bad scan to be reported and the good one saved")
    error = writer_status("test_session", store=store)["errors"][0]
    assert (error["scan"], error["number"]) == (f"{bad.number}_bad", bad.number)
    assert (str(tmp_path / "blocker") if filename.strip() else "' '") in error["error"]
    assert bad.number not in saved_scans("test_session", store=store)
    with h5py.File(tmp_path / "data/test_session/test_session.h5", "r") as file:
        assert file[f"{good.number}.1/measurement/c"][()].tolist() == [3.0, 4.0]


def test_an_hdf5_file_scanstream_did_not_create_is_never_written(writer, session, store, tmp_path):
    # Before issue 11 the writer added its entries beside those of any HDF5 file; now a file
    # without scanstream's root marker (creator="scanstream") refuses the scan, untouched.
    path = tmp_path / "data/test_session/test_session.h5"
    path.parent.mkdir(parents=True)
    with h5py.File(path, "w") as file:
        file.create_group("1.1").create_dataset("title", data="an older scan")
    with session.create_scan("s") as scan:
        scan.create_container("timer").create_channel("timer:c").emit([1.0])
    wait_for(
        lambda: (writer_status("test_session", store=store) or {}).get("errors"),
        10,
        "the refusal to be reported",
    )
    assert (
        "scanstream did not create"
        in writer_status("test_session", store=store)["errors"][0]["error"]
    )
    with h5py.File(path, "r") as file:
        assert list(file) == ["1.1"]
        assert file["1.1/title"].asstr()[()] == "an older scan"
        assert "measurement" not in file["1.1"]


def test_scans_run_while_no_writer_runs_are_written_when_it_starts(session, store, tmp_path):
    with session.create_scan("early") as scan:
        scan.create_container("timer").create_channel("timer:c", "uint16").emit(np.arange(5))
    with WriterService(["test_session"], root=tmp_path, store=store):
        wait_saved(store, "test_session", {scan.number})
    with h5py.File(tmp_path / "test_session/test_session.h5", "r") as file:
        assert file["1.1/measurement/c"].dtype == np.uint16
        assert file["1.1/measurement/c"][()].tolist() == [0, 1, 2, 3, 4]


def test_one_writer_per_session_the_second_takes_over_when_the_first_stops(
    session, store, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="scanstream.writer.service")
    first = WriterService(["test_session"], root=tmp_path / "a", store=store).start()
    second = WriterService(["test_session"], root=tmp_path / "b", store=store).start()

    def said(text: str) -> int:
        return sum(text in r.getMessage() for r in caplog.records)

    try:
        wait_for(
            lambda: (writer_status("test_session", store=store) or {}).get("owner") == first.owner,
            5,
            "the first writer to own the session",
        )
        with session.create_scan("one") as scan:
            scan.create_container("timer").create_channel("timer:c").emit([1.0])
        wait_saved(store, "test_session", {scan.number})
        assert not second.status("test_session")["writing"]
        # The standby renews every second: it says so once, and warns once of the other root.
        time.sleep(2.5 * HEARTBEAT_PERIOD)
        assert said("standby: taking over when it stops") == 1, caplog.text
        assert said(f"writes under {tmp_path / 'a'}, this writer under {tmp_path / 'b'}") == 1
        first.stop()
        wait_for(
            lambda: (writer_status("test_session", store=store) or {}).get("owner") == second.owner,
            5,
            "the second writer to take over",
        )
        with session.create_scan("two") as scan2:
            scan2.create_container("timer").create_channel("timer:c").emit([2.0])
        wait_saved(store, "test_session", {scan2.number})
        time.sleep(1.5 * HEARTBEAT_PERIOD)
        assert said(f"taking over from writer {first.owner}") == 1, caplog.text
        assert said("standby") == 1
    finally:
        first.stop()
        second.stop()
    assert (tmp_path / "a/test_session/test_session.h5").exists()
    with h5py.File(tmp_path / "b/test_session/test_session.h5", "r") as file:
        assert list(file) == ["2.1"]


def test_several_sessions_in_one_writer(store, tmp_path):
    sessions = [create_session(name, store=store) for name in ("alpha", "beta")]
    with WriterService(["alpha", "beta"], root=tmp_path, store=store):
        scans = []
        for k, publishing in enumerate(sessions):
            with publishing.create_scan("s") as scan:
                scan.create_container("timer").create_channel("timer:c").emit([float(k)] * 3)
            scans.append(scan)
        for publishing, scan in zip(sessions, scans):
            wait_saved(store, publishing.name, {scan.number})
    for k, name in enumerate(("alpha", "beta")):
        with h5py.File(tmp_path / name / f"{name}.h5", "r") as file:
            assert file["1.1/measurement/c"][()].tolist() == [float(k)] * 3


def test_connections_killed_mid_scan_lose_nothing(writer, session, store, redis_url, tmp_path):
    import redis

    killer = redis.Redis.from_url(redis_url)
    with session.create_scan("loop") as scan:
        channel = scan.create_container("timer").create_channel("timer:c", "int32")
        for k in range(20):
            channel.emit(np.arange(k * 50, (k + 1) * 50, dtype=np.int32))
            if k % 5 == 4:
                scan.flush()
                killer.client_kill_filter(_type="normal", skipme=True)  # every other client
    killer.close()
    wait_saved(store, "test_session", {scan.number})
    scan_node = get_session_node("test_session", store=store).get_scan(scan.number)
    with assert_file_matches_redis(scan_node, tmp_path / "data") as file:
        assert file["1.1/measurement/c"][()].tolist() == list(range(1000))


def test_a_file_written_by_another_program_is_not_touched(writer, session, store, tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as other:  # another HDF5 writer, with HDF5's default locking
        other.create_dataset("mine", data=[1, 2, 3])
        with session.create_scan("s", {"filename": str(path)}) as scan:
            scan.create_container("timer").create_channel("timer:c").emit([1.0])
        wait_for(
            lambda: (writer_status("test_session", store=store) or {}).get("errors"),
            10,
            "the locked file to be reported",
        )
        error = writer_status("test_session", store=store)["errors"][0]["error"]
        assert "being written by another program" in error and str(path) in error
    with h5py.File(path, "r") as file:
        assert list(file) == ["mine"]
    assert scan.number not in saved_scans("test_session", store=store)


def test_a_full_disk_fails_that_scan_only(writer, session, store, tmp_path, tiny_disk):
    with session.create_scan("big", {"filename": str(tiny_disk / "big.h5")}) as big:
        big.create_container("timer").create_channel("timer:c").emit(np.zeros(400_000))
    with session.create_scan("small") as small:
        small.create_container("timer").create_channel("timer:c").emit([5.0])
    wait_for(
        lambda: (
            (writer_status("test_session", store=store) or {}).get("errors")
            and small.number in saved_scans("test_session", store=store)
        ),
        15,
        "the full disk to be reported and the other scan saved",
    )
    error = writer_status("test_session", store=store)["errors"][0]
    assert error["scan"] == f"{big.number}_big"
    assert "No space left on device" in error["error"] or "no space left" in error["error"]
    assert big.number not in saved_scans("test_session", store=store)
    with h5py.File(tmp_path / "data/test_session/test_session.h5", "r") as file:
        assert file[f"{small.number}.1/measurement/c"][()].tolist() == [5.0]


def test_a_full_disk_when_the_session_file_is_created_gives_a_clear_reason(
    writer, session, store, tiny_disk
):
    """No room for a new session file: FAILED with the file, the cause and what to do (not
    HDF5's page of C detail), and no temporary file left beside it."""
    with open(tiny_disk / "filler", "wb") as filler:
        with pytest.raises(OSError):
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
    with session.create_scan("full", {"filename": str(tiny_disk / "full.h5")}) as scan:
        scan.create_container("timer").create_channel("timer:c").emit([1.0])
    wait_for(
        lambda: (writer_status("test_session", store=store) or {}).get("errors"),
        15,
        "the scan to fail",
    )
    verdict = get_session_node("test_session", store=store).get_scan(scan.number).saving
    assert verdict.state is SavingState.FAILED
    reason = verdict.reason or ""
    assert f"cannot create the session file {str(tiny_disk / 'full.h5')!r}" in reason, reason
    assert "no space left on the device; free some space" in reason, reason
    assert "\n" not in reason and "sub-write" not in reason, reason
    assert not list(tiny_disk.glob(".full.h5.new-*"))


def test_a_read_only_file_system_fails_that_scan_with_a_clear_reason(
    writer, session, store, tmp_path, tiny_disk
):
    """An output directory that cannot be written (here a file system remounted read-only,
    which root cannot bypass as it does permissions): FAILED with the lock file's path, the
    cause and what to do, not a bare OSError."""
    done = subprocess.run(
        ["mount", "-o", "remount,ro", str(tiny_disk)], capture_output=True, timeout=10
    )
    assert done.returncode == 0, done.stderr
    try:
        with session.create_scan("ro", {"filename": str(tiny_disk / "ro.h5")}) as scan:
            scan.create_container("timer").create_channel("timer:c").emit([1.0])
        wait_for(
            lambda: (writer_status("test_session", store=store) or {}).get("errors"),
            15,
            "the scan to fail",
        )
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(tiny_disk)], timeout=10, check=False)
    verdict = get_session_node("test_session", store=store).get_scan(scan.number).saving
    assert verdict.state is SavingState.FAILED
    reason = verdict.reason or ""
    assert "cannot create the lock file" in reason and str(tiny_disk / ".ro.h5.lock") in reason
    assert "Read-only file system" in reason and "make" in reason and "writable" in reason


def test_scan_info_metadata_instrument_and_default_plot(writer, session, store, tmp_path):
    info = {
        "title": "ascan roby 0 1 2 0.1",
        "npoints": 3,
        "sample": {
            "@NX_class": "NXsample",
            "name": "Si wafer",
            "temperature": 300.0,
            "temperature@units": "K",
        },
        "technique": {"xrf": {"@NX_class": "NXcollection", "energy": 17.0}},
        "instrument": {"source": {"@NX_class": "NXsource", "current": 200.0}},
        "positioners": {"positioners_start": {"roby": 0.0}, "positioners_units": {"roby": "mm"}},
        "plots": [
            {
                "kind": "curve-plot",
                "items": [{"kind": "curve", "x": "axis:roby", "y": "diode:diode"}],
            }
        ],
    }
    with session.create_scan("ascan", info) as scan:
        timer = scan.create_container("axis")
        roby = timer.create_channel("axis:roby", unit="mm")
        diode = timer.create_channel("diode:diode")
        scan.prepared()
        roby.emit([0.0, 0.5, 1.0])
        diode.emit([1.0, 3.0, 2.0])
        scan.end(
            info_update={"positioners": {**info["positioners"], "positioners_end": {"roby": 1.0}}}
        )
    wait_saved(store, "test_session", {scan.number})
    with h5py.File(tmp_path / "data/test_session/test_session.h5", "r") as file:
        entry = file["1.1"]
        assert entry["sample"].attrs["NX_class"] == "NXsample"
        assert entry["sample/name"].asstr()[()] == "Si wafer"
        assert entry["sample/temperature"][()] == 300.0
        assert entry["sample/temperature"].attrs["units"] == "K"
        assert entry["technique/xrf/energy"][()] == 17.0
        assert entry["instrument/source"].attrs["NX_class"] == "NXsource"
        assert entry["instrument/positioners_start/roby"][()] == 0.0
        assert entry["instrument/positioners_end/roby"][()] == 1.0
        assert entry["instrument/roby"].attrs["NX_class"] == "NXpositioner"
        assert entry["instrument/roby/value"][()].tolist() == [0.0, 0.5, 1.0]
        assert entry["instrument/diode/data"][()].tolist() == [1.0, 3.0, 2.0]
        assert entry["measurement/roby"].attrs["units"] == "mm"
        # The default plot chain: root -> entry -> NXdata, signal against the axis.
        assert file.attrs["default"] == "1.1"
        nxdata = entry[entry.attrs["default"]]
        assert nxdata.attrs["NX_class"] == "NXdata"
        assert nxdata[nxdata.attrs["signal"]][()].tolist() == [1.0, 3.0, 2.0]
        axes = nxdata.attrs["axes"]
        axis = axes if isinstance(axes, str) else axes[0]
        assert nxdata[axis][()].tolist() == [0.0, 0.5, 1.0]
        assert entry["end_time"].asstr()[()] > entry["start_time"].asstr()[()]


def test_legacy_layout_and_compression_on_request(session, store, tmp_path):
    from scanstream.exceptions import NexusLayoutError

    with pytest.raises(NexusLayoutError, match="unknown compression 'brotli'"):
        WriterService(["test_session"], root=tmp_path, store=store, compression="brotli")
    service = WriterService(
        ["test_session"],
        root=tmp_path / "data",
        store=store,
        flush_period=0.05,
        compression="gzip",
        layout="legacy",
    )
    service.start()
    try:
        with session.create_scan("ascan") as scan:
            top = scan.create_container("axis")
            roby = top.create_channel("axis:roby")
            mca = top.create_channel("mca:spectrum", shape=(8192,))
            scan.prepared()
            roby.emit(np.arange(10.0))
            mca.emit(np.ones((10, 8192)))
        wait_saved(store, "test_session", {scan.number})
    finally:
        service.stop()
    with h5py.File(tmp_path / "data/test_session/test_session.h5", "r") as file:
        entry = file["1.1"]
        assert entry.attrs["scanstream_layout"] == "legacy"
        assert entry["measurement/axis:roby"][()].tolist() == list(range(10))
        assert entry["measurement/mca:spectrum"].compression == "gzip"
        assert entry["instrument/roby/value"][()].tolist() == list(range(10))
