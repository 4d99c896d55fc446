"""The NeXus layout layer on real HDF5 files: written with scanstream.writer.nexus, read back
with plain h5py (and, for concurrent reading, by another process)."""

from __future__ import annotations

import datetime
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from scanstream.exceptions import NexusLayoutError
from scanstream.writer import nexus

from .scan_files import LIMA_DATA_PATH, build_scan_file, frames, write_lima_files

UTC = datetime.timezone.utc


def _ts(*args: int) -> float:
    return datetime.datetime(*args, tzinfo=UTC).timestamp()


@pytest.fixture
def h5(tmp_path: Path):
    """A fresh master file opened the writer's way; closed after the test."""
    f = nexus.open_nexus_file(tmp_path / "master.h5", "w")
    yield f
    f.close()


@pytest.fixture
def entry(h5: h5py.File) -> h5py.Group:
    return nexus.require_entry(
        h5,
        "1.1",
        title="ascan roby 0 1 4 0.1",
        start_time=_ts(2024, 7, 1),
        scan_info={"scan_nb": 1, "title": "ascan"},
    )


@pytest.fixture
def set_tz(monkeypatch: pytest.MonkeyPatch):
    """Set the local time zone for the test; the process's zone is restored afterwards."""

    def set_(name: str) -> None:
        monkeypatch.setenv("TZ", name)
        time.tzset()

    yield set_
    monkeypatch.undo()
    time.tzset()


# ------------------------------------------------------------------------------ entries


def test_entry_fields_and_root_attrs(tmp_path: Path, set_tz) -> None:
    set_tz("UTC")
    path = tmp_path / "m.h5"
    info = {"scan_nb": 7, "title": "ct 0.1", "npoints": 1}
    with nexus.open_nexus_file(path, "w") as f:
        e = nexus.require_entry(
            f,
            nexus.entry_name(7),
            title="ct 0.1",
            start_time=_ts(2024, 1, 2, 3, 4, 5),
            scan_info=info,
        )
        nexus.finalize_entry(
            e, end_time=_ts(2024, 1, 2, 3, 4, 17), state="USER_ABORTED", error="stopped by user"
        )
        nexus.finalize_entry(e, end_time=_ts(2024, 1, 2, 3, 4, 17), state="DONE")
    with h5py.File(path, "r") as f:
        assert f.attrs["NX_class"] == "NXroot"
        assert f.attrs["creator"] == "scanstream"
        assert f.attrs["file_name"] == str(path)
        assert "file_update_time" in f.attrs and "file_update_time" not in f
        e = f["7.1"]
        assert e.attrs["NX_class"] == "NXentry"
        assert e["title"].asstr()[()] == "ct 0.1"
        assert e["start_time"].asstr()[()] == "2024-01-02T03:04:05+00:00"
        assert e["end_time"].asstr()[()] == "2024-01-02T03:04:17+00:00"
        assert e["duration"][()] == 12 and e["duration"].attrs["units"] == "s"
        assert e["duration"].dtype.kind == "i"  # NXentry/duration is NX_INT
        assert e["end_reason"].asstr()[()] == "DONE"
        assert "error" not in e  # the stale error of the first finalize is gone
        assert e["entry_identifier"].asstr()[()] == "7"
        assert e["program_name"].asstr()[()] == "scanstream"
        assert json.loads(e["scan_info/data"].asstr()[()]) == info
        assert e["scan_info"].attrs["NX_class"] == "NXnote"
        assert e["measurement"].attrs["NX_class"] == "NXcollection"
        assert e["instrument"].attrs["NX_class"] == "NXinstrument"


def test_every_group_has_nx_class(tmp_path: Path) -> None:
    path = build_scan_file(tmp_path)
    groups: list[str] = []
    missing: list[str] = []

    def visit(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Group):
            groups.append(name)
            if "NX_class" not in obj.attrs:
                missing.append(name)

    with h5py.File(path, "r") as f:
        assert f.attrs["NX_class"] == "NXroot"
        assert list(f) == ["1.1", "2.1", "3.1"]  # creation order, not alphabetical
        f.visititems(visit)
        assert f["1.1/sample"].attrs["NX_class"] == "NXsample"
        assert f["1.1/instrument/source"].attrs["NX_class"] == "NXsource"
        assert f["1.1/instrument/lima_simulator"].attrs["NX_class"] == "NXdetector"
    assert len(groups) > 20
    assert missing == []


def test_entry_name() -> None:
    assert nexus.entry_name(12) == "12.1"
    assert nexus.entry_name(12, 3) == "12.3"
    assert nexus.entry_name(12, 3, strict_names=True) == "scan12_3"
    for bad in ((-1, 1), (1, 0), (1.5, 1), (True, 1)):
        with pytest.raises(NexusLayoutError, match="entry_name"):
            nexus.entry_name(*bad)


def test_libver_latest_refused(tmp_path: Path) -> None:
    with pytest.raises(NexusLayoutError, match="libver"):
        nexus.open_nexus_file(tmp_path / "x.h5", "w", libver="latest")
    assert not (tmp_path / "x.h5").exists()


def test_require_nx_group_clash(entry: h5py.Group) -> None:
    with pytest.raises(NexusLayoutError, match="NXcollection group, not NXdata"):
        nexus.require_nx_group(entry, "measurement", "NXdata")
    with pytest.raises(NexusLayoutError, match="not a group"):
        nexus.require_nx_group(entry, "title", "NXnote")


# ------------------------------------------------------------------------------ iso8601


@pytest.mark.parametrize(
    ("zone", "utc", "expected"),
    [
        ("Europe/Paris", (2024, 7, 1, 12), "2024-07-01T14:00:00+02:00"),
        ("Europe/Paris", (2024, 1, 15, 12), "2024-01-15T13:00:00+01:00"),
        ("America/New_York", (2024, 1, 15, 12), "2024-01-15T07:00:00-05:00"),
        ("America/New_York", (2024, 7, 1, 12), "2024-07-01T08:00:00-04:00"),
        # The hour repeated at the end of summer time gets the offset of its instant.
        ("Europe/Paris", (2024, 10, 27, 0, 30), "2024-10-27T02:30:00+02:00"),
        ("Europe/Paris", (2024, 10, 27, 1, 30), "2024-10-27T02:30:00+01:00"),
    ],
)
def test_iso8601_offset(set_tz, zone: str, utc: tuple[int, ...], expected: str) -> None:
    set_tz(zone)
    ts = _ts(*utc)
    text = nexus.iso8601(ts)
    assert text == expected
    assert datetime.datetime.fromisoformat(text).timestamp() == ts


def test_duration_across_dst_change(h5: h5py.File, set_tz) -> None:
    set_tz("Europe/Paris")
    e = nexus.require_entry(h5, "1.1", title="t", start_time=_ts(2024, 10, 27, 0, 30))
    nexus.finalize_entry(e, end_time=_ts(2024, 10, 27, 1, 30), state="DONE")
    assert e["start_time"].asstr()[()] == "2024-10-27T02:30:00+02:00"
    assert e["end_time"].asstr()[()] == "2024-10-27T02:30:00+01:00"
    assert e["duration"][()] == 3600.0


# ------------------------------------------------------------------------------ channels

_DTYPES = [
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float32",
    "float64",
    "bool",
]


def _extremes(dtype: str) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt.kind == "b":
        return np.array([True, False, False, True, True])
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return np.array([info.min, info.max, 0, 1, info.max - 1], dtype=dt)
    info = np.finfo(dt)
    return np.array(
        [info.min, info.max, info.tiny / 2, -0.0, np.inf, -np.inf, np.nan, 1 / 3], dtype=dt
    )


@pytest.mark.parametrize("dtype", _DTYPES)
def test_write_points_dtypes_bit_exact(tmp_path: Path, dtype: str) -> None:
    data = _extremes(dtype)
    path = tmp_path / "d.h5"
    with nexus.open_nexus_file(path, "w") as f:
        e = nexus.require_entry(f, "1.1", title="t", start_time=0.0)
        dset = nexus.require_channel_dataset(e["measurement"], "c:chan", dtype)
        assert nexus.write_points(dset, 0, data[:3]) == 3
        assert nexus.write_points(dset, 3, data[3:]) == len(data)
    with h5py.File(path, "r") as f:
        back = f["1.1/measurement/chan"][()]
        assert back.dtype == np.dtype(dtype)
        assert back.tobytes() == data.tobytes()
        link = f["1.1/measurement"].get("chan", getlink=True)
        assert isinstance(link, h5py.SoftLink) and link.path == "/1.1/instrument/chan/data"
        assert f["1.1/instrument/chan"].attrs["NX_class"] == "NXdetector"
        assert f["1.1/instrument/chan/data"].attrs["scanstream_channel"] == "c:chan"
        assert "long_name" not in f["1.1/instrument/chan/data"].attrs  # it hides @units


def test_write_points_idempotent_and_gap(entry: h5py.Group) -> None:
    dset = nexus.require_channel_dataset(
        entry["measurement"], "axis:roby", "float64", expected_points=10, units="mm"
    )
    assert nexus.write_points(dset, 0, [0.0, 1.0, 2.0]) == 3
    assert nexus.write_points(dset, 1, [1.0, 2.0]) == 3  # replay after a restart
    assert nexus.write_points(dset, 0, [0.0, 1.0, 2.0, 3.0]) == 4  # replay + one new point
    assert dset[()].tolist() == [0.0, 1.0, 2.0, 3.0]
    with pytest.raises(NexusLayoutError, match="from index 6: it has 4 points"):
        nexus.write_points(dset, 6, [6.0])
    with pytest.raises(NexusLayoutError, match="does not fit"):
        nexus.write_points(dset, 4, [[4.0, 5.0]])
    assert dset.shape == (4,)
    assert dset.chunks == (10,)
    assert dset.attrs["units"] == "mm"
    # require again (writer restart): same dataset, contents kept
    again = nexus.require_channel_dataset(entry["measurement"], "axis:roby", "float64")
    assert again == dset and again[()].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_short_names_and_collision_rule(entry: h5py.Group) -> None:
    meas = entry["measurement"]
    names = ["axis:roby", "timer:elapsed_time", "timer2:elapsed_time", "x:elapsed_time"]
    for name in names:
        nexus.require_channel_dataset(meas, name, "float64")
    nexus.require_channel_dataset(meas, "simu1:spectrum", "float64", (8,))
    nexus.require_channel_dataset(meas, "simu1:spectrum2", "float64", (8,))
    nexus.require_channel_dataset(meas, "a b:c:d", "float64")
    assert list(meas) == [
        "roby",
        "elapsed_time",
        "timer2_elapsed_time",  # collision: the controller name as prefix
        "x_elapsed_time",
        "simu1",  # spectra and images: named after their controller
        "simu1_spectrum2",
        "d",
    ]
    assert entry["instrument/roby"].attrs["NX_class"] == "NXpositioner"
    assert entry["instrument/roby/value"].attrs["scanstream_channel"] == "axis:roby"
    assert entry["instrument/simu1/data"].shape == (0, 8)
    assert nexus.channel_path(entry, "timer2:elapsed_time") == (
        "/1.1/measurement/timer2_elapsed_time"
    )
    # a restarted writer creating the channels again (any order) finds the same names
    for name in reversed(names):
        nexus.require_channel_dataset(meas, name, "float64")
    assert len(meas) == 7
    assert nexus.nexus_name("a b:c/d.") == "a_b_c_d_"


def test_legacy_layout_keeps_full_names(h5: h5py.File) -> None:
    entry = nexus.require_entry(h5, "1.1", title="t", start_time=0.0, layout="legacy")
    dset = nexus.require_channel_dataset(entry["measurement"], "axis:roby", "float64")
    assert dset.name == "/1.1/measurement/axis:roby"
    assert dset.attrs["long_name"] == "axis:roby"
    assert nexus.channel_paths(entry) == {"axis:roby": "/1.1/measurement/axis:roby"}
    with pytest.raises(NexusLayoutError, match="unknown layout"):
        nexus.require_entry(h5, "2.1", title="t", start_time=0.0, layout="bliss")


def test_channel_dataset_clashes(h5: h5py.File) -> None:
    entry = nexus.require_entry(h5, "1.1", title="t", start_time=0.0, layout="legacy")
    meas = entry["measurement"]
    nexus.require_channel_dataset(meas, "a/b", "int32")
    with pytest.raises(NexusLayoutError, match="has dtype int32"):
        nexus.require_channel_dataset(meas, "a/b", "float64")
    with pytest.raises(NexusLayoutError, match="belongs to channel 'a/b'"):
        nexus.require_channel_dataset(meas, "a_b", "int32")
    with pytest.raises(NexusLayoutError, match="max shape"):
        nexus.require_channel_dataset(meas, "a/b", "int32", (3,))
    with pytest.raises(NexusLayoutError, match="not supported"):
        nexus.require_channel_dataset(meas, "s", "int32", (-1, 3))
    with pytest.raises(NexusLayoutError, match="numbers or bool"):
        nexus.require_channel_dataset(meas, "s", "U4")


def test_spectrum_and_image_channels(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    spectra = np.arange(5 * 8, dtype=np.uint32).reshape(5, 8)
    images = frames(3)
    with nexus.open_nexus_file(path, "w") as f:
        meas = nexus.require_entry(f, "1.1", title="t", start_time=0.0)["measurement"]
        s = nexus.require_channel_dataset(meas, "mca:spectrum", np.uint32, (8,))
        nexus.write_points(s, 0, spectra[:2])
        nexus.write_points(s, 2, spectra[2:])
        i = nexus.require_channel_dataset(meas, "cam:image", np.uint16, (3, 4))
        nexus.write_points(i, 0, images)
    with h5py.File(path, "r") as f:
        s, i = f["1.1/measurement/mca"], f["1.1/measurement/cam"]
        assert s.name == "/1.1/measurement/mca"
        assert f["1.1/instrument/mca/data"] == s and f["1.1/instrument/cam/data"] == i
        np.testing.assert_array_equal(s[()], spectra)
        assert s.attrs["interpretation"] == "spectrum" and s.maxshape == (None, 8)
        np.testing.assert_array_equal(i[()], images)
        assert i.attrs["interpretation"] == "image"
        assert i.chunks == (nexus.CHUNK_MAX_ROWS, 3, 4)  # small frames share a chunk


def test_chunk_rows(entry: h5py.Group) -> None:
    meas = entry["measurement"]
    big = nexus.require_channel_dataset(meas, "big", np.uint16, (1024, 1024))
    assert big.chunks == (1, 1024, 1024)  # frames of 1 MiB or more: one frame per chunk
    mid = nexus.require_channel_dataset(meas, "mid", np.float64, (1024,))
    assert mid.chunks == (nexus.CHUNK_TARGET_BYTES // 8192, 1024)
    few = nexus.require_channel_dataset(meas, "few", np.float64, expected_points=7)
    assert few.chunks == (7,)


def test_ragged_channel(tmp_path: Path) -> None:
    path = tmp_path / "r.h5"
    points = [
        np.array([1.5]),
        np.array([1.0, 2.0, 3.0]),
        np.array([], dtype=float),
        np.array([4.0, 5.0]),
    ]
    with nexus.open_nexus_file(path, "w") as f:
        meas = nexus.require_entry(f, "1.1", title="t", start_time=0.0)["measurement"]
        dset = nexus.require_channel_dataset(meas, "sim:ragged", np.float64, (-1,))
        assert nexus.write_points(dset, 0, points[:1]) == 1
        assert nexus.write_points(dset, 1, points[1:]) == 4
        assert nexus.write_points(dset, 1, points[1:3]) == 3  # replay: no duplicate
        with pytest.raises(NexusLayoutError, match="point 4 has shape"):
            nexus.write_points(dset, 4, [np.zeros((2, 2))])
        with pytest.raises(NexusLayoutError, match="from index 5"):
            nexus.write_points(dset, 5, [np.zeros(2)])
    with h5py.File(path, "r") as f:
        dset = f["1.1/measurement/sim"]
        lengths = f["1.1/instrument/sim/data_lengths"]
        assert dset.attrs["lengths_dataset"] == "/1.1/instrument/sim/data_lengths"
        assert dset.parent[dset.attrs["lengths_dataset"]] == lengths
        assert dset.shape == (4, 3)
        assert lengths[()].tolist() == [1, 3, 0, 2]
        assert lengths.dtype == np.int64
        for row, n, p in zip(dset[()], lengths[()], points):
            np.testing.assert_array_equal(row[:n], p)
            assert np.isnan(row[n:]).all()  # padding is the documented fill value


def test_ragged_integer_padding(entry: h5py.Group) -> None:
    dset = nexus.require_channel_dataset(entry["measurement"], "r", np.int16, (-1,))
    nexus.write_points(dset, 0, np.array([[1, 2], [3, 4]], dtype=np.int16))
    nexus.write_points(dset, 2, [np.array([5, 6, 7], dtype=np.int16)])
    assert dset[()].tolist() == [[1, 2, 0], [3, 4, 0], [5, 6, 7]]
    assert entry["instrument/r/data_lengths"][()].tolist() == [2, 2, 3]


# ------------------------------------------------------------------------------ images (VDS)


def test_image_vds_grows_and_reads_back(tmp_path: Path) -> None:
    data = frames(5)
    scan_dir = tmp_path / "data"
    refs = write_lima_files(scan_dir / "scan0001", "lima_simulator", data, per_file=2)
    assert len({r[0] for r in refs}) == 3
    master = scan_dir / "master.h5"
    with nexus.open_nexus_file(master, "w") as f:
        meas = nexus.require_entry(f, "1.1", title="t", start_time=0.0)["measurement"]
        for first, stop in ((0, 1), (1, 3), (3, 5)):
            vds = nexus.require_image_vds(
                meas,
                "lima_simulator:image",
                refs[first:stop],
                dtype=np.uint16,
                frame_shape=(3, 4),
                first_index=first,
            )
            assert vds is not None and vds.shape == (stop, 3, 4)
        # The whole list again: nothing changes.
        again = nexus.require_image_vds(
            meas, "lima_simulator:image", refs, dtype=np.uint16, frame_shape=(3, 4)
        )
        assert again is not None and again.shape == (5, 3, 4)
        with pytest.raises(NexusLayoutError, match="first_index <= 5"):
            nexus.require_image_vds(
                meas,
                "lima_simulator:image",
                refs[:1],
                dtype=np.uint16,
                frame_shape=(3, 4),
                first_index=7,
            )
        with pytest.raises(NexusLayoutError, match="frame_shape"):
            nexus.require_image_vds(
                meas, "lima_simulator:image", refs, dtype=np.uint16, frame_shape=(4, 4)
            )

    with h5py.File(master, "r") as f:
        vds = f["1.1/measurement/lima_simulator"]
        assert vds.name == "/1.1/measurement/lima_simulator"
        assert f["1.1/instrument/lima_simulator"].attrs["NX_class"] == "NXdetector"
        assert vds.is_virtual and vds.attrs["interpretation"] == "image"
        assert "data_building" not in f["1.1/instrument/lima_simulator"]
        np.testing.assert_array_equal(vds[()], data)
        sources = sorted((s.file_name, s.dset_name) for s in vds.virtual_sources())
        # one source block per file (consecutive frames merged), stored relative
        assert sources == [
            (f"scan0001/lima_simulator_{k:04d}.h5", LIMA_DATA_PATH.format(det="lima_simulator"))
            for k in range(3)
        ]
        table_dset = f["1.1/instrument/lima_simulator/data_references"]
        # fixed-length strings: no global heap for a reader to find half written
        assert table_dset.dtype.kind == "S"
        table = table_dset.asstr()[()]
        assert table.tolist() == [
            [
                f"scan0001/lima_simulator_{i // 2:04d}.h5",
                LIMA_DATA_PATH.format(det="lima_simulator"),
                str(i % 2),
                "HDF5",
            ]
            for i in range(5)
        ]


def test_image_vds_survives_moving_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = frames(5)
    old = tmp_path / "old"
    refs = write_lima_files(old / "scan0001", "det", data)
    with nexus.open_nexus_file(old / "master.h5", "w") as f:
        meas = nexus.require_entry(f, "1.1", title="t", start_time=0.0)["measurement"]
        nexus.require_image_vds(meas, "det:image", refs, dtype=np.uint16, frame_shape=(3, 4))
    new = tmp_path / "elsewhere" / "moved"
    new.parent.mkdir()
    shutil.move(str(old), str(new))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # sources must resolve against the master file, not the cwd
    with h5py.File(new / "master.h5", "r") as f:
        np.testing.assert_array_equal(f["1.1/measurement/det"][()], data)


def test_image_vds_missing_frames_read_as_fill(tmp_path: Path) -> None:
    data = frames(2)
    refs = write_lima_files(tmp_path / "scan", "det", data)
    refs.append((str(tmp_path / "scan" / "det_0001.h5"), refs[0][1], 0, "HDF5"))  # not written
    with nexus.open_nexus_file(tmp_path / "m.h5", "w") as f:
        meas = nexus.require_entry(f, "1.1", title="t", start_time=0.0)["measurement"]
        vds = nexus.require_image_vds(meas, "det:image", refs, dtype=np.uint16, frame_shape=(3, 4))
        assert vds is not None
        back = vds[()]
    np.testing.assert_array_equal(back[:2], data)
    assert (back[2] == 0).all()


def test_image_non_hdf5_format_writes_only_table(entry: h5py.Group) -> None:
    refs = [("/data/img_0000.edf", "", 0, "EDF")]
    assert (
        nexus.require_image_vds(
            entry["measurement"], "det:image", refs, dtype=np.uint16, frame_shape=(3, 4)
        )
        is None
    )
    assert "det" not in entry["measurement"]
    table = entry["instrument/det/data_references"].asstr()[()]
    assert table.tolist() == [["/data/img_0000.edf", "", "0", "EDF"]]


# ------------------------------------------------------------------------------ scan groups


def test_scan_group_links(tmp_path: Path) -> None:
    path = build_scan_file(tmp_path)
    other = tmp_path / "sub" / "other.h5"
    other.parent.mkdir()
    with nexus.open_nexus_file(other, "w") as f:
        nexus.require_entry(f, "9.1", title="elsewhere", start_time=0.0)
    with nexus.open_nexus_file(path, "a") as f:
        group = f["3.1"]
        nexus.link_subscan_entries(group, ["4.1", (other, "9.1")])  # 4.1 not written yet
        nexus.require_entry(f, "4.1", title="late sub-scan", start_time=0.0)
        nexus.link_subscan_entries(group, ["1.1", "2.1", "4.1"])  # idempotent
    with h5py.File(path, "r") as f:
        scans = f["3.1/scans"]
        assert scans.attrs["NX_class"] == "NXcollection"
        assert list(scans) == ["1.1", "2.1", "4.1", "9.1"]
        for name in ("1.1", "2.1", "4.1"):
            link = scans.get(name, getlink=True)
            assert isinstance(link, h5py.SoftLink) and link.path == f"/{name}"
        assert scans["1.1/title"].asstr()[()] == "ascan roby 0 1 4 0.1"
        assert scans["4.1/title"].asstr()[()] == "late sub-scan"
        ext = scans.get("9.1", getlink=True)
        assert isinstance(ext, h5py.ExternalLink)
        assert (ext.filename, ext.path) == ("sub/other.h5", "/9.1")
        assert scans["9.1/title"].asstr()[()] == "elsewhere"


# ------------------------------------------------------------------------------ metadata


def test_metadata_attributes_and_values(entry: h5py.Group) -> None:
    sample = nexus.require_nx_group(entry, "sample", "NXsample")
    meta = {
        "@description": "group attribute",
        "name": "Si",
        "name@units": "none",
        "temperature": 293.5,
        "temperature@units": "K",
        "tags": ["a", "b"],
        "matrix": [[1, 2], [3, 4]],
        "mixed": [1, "two", {"three": 3}],
        "holes": [[1, None], [None, 2.5]],  # NaN and infinities, as scan_info stores them
        "skipped": None,
        "a/b": 1,
        "holder": {"@NX_class": "NXsample_component", "@mode": "fixed", "slot": 3},
        "when": datetime.datetime(2024, 1, 2, 3, 4, 5),
    }
    nexus.write_metadata(sample, meta)
    nexus.write_metadata(sample, meta)  # idempotent
    assert sample.attrs["NX_class"] == "NXsample"
    assert sample.attrs["description"] == "group attribute"
    assert sample["name"].asstr()[()] == "Si" and sample["name"].attrs["units"] == "none"
    assert sample["temperature"][()] == 293.5 and sample["temperature"].attrs["units"] == "K"
    assert sample["tags"].asstr()[()].tolist() == ["a", "b"]
    assert sample["matrix"][()].tolist() == [[1, 2], [3, 4]]
    assert json.loads(sample["mixed"].asstr()[()]) == [1, "two", {"three": 3}]
    assert sample["holes"].dtype == np.float64
    assert np.array_equal(sample["holes"][()], [[1, np.nan], [np.nan, 2.5]], equal_nan=True)
    assert "skipped" not in sample
    assert sample["a_b"][()] == 1
    assert sample["holder"].attrs["NX_class"] == "NXsample_component"
    assert sample["holder"].attrs["mode"] == "fixed"
    assert sample["holder/slot"][()] == 3
    assert sample["when"].asstr()[()] == "2024-01-02T03:04:05"
    tech = nexus.require_nx_group(entry, "technique")
    nexus.write_metadata(tech, {"energy": 12.0})
    assert tech.attrs["NX_class"] == "NXcollection"
    nexus.write_metadata(sample, {"temperature": 300.0})  # a changed value replaces the old one
    assert sample["temperature"][()] == 300.0
    with pytest.raises(NexusLayoutError, match="must be a mapping"):
        nexus.write_metadata(sample, [1, 2])  # type: ignore[arg-type]


def test_positioners(entry: h5py.Group) -> None:
    instrument = entry["instrument"]
    nexus.write_scan_info_positioners(
        instrument,
        {
            "positioners_start": {"roby": 0.5, "off": None},
            "positioners_dial_start": {"roby": 1.5, "off": None},
            "positioners_units": {"roby": "mm"},
        },
    )
    nexus.write_positioners(instrument, None, {"roby": 2.0, "off": None}, units={"roby": "mm"})
    assert instrument["positioners_start/roby"][()] == 0.5
    assert instrument["positioners_start/roby"].attrs["units"] == "mm"
    assert np.isnan(instrument["positioners_start/off"][()])
    assert instrument["positioners_dial_start/roby"][()] == 1.5
    assert instrument["positioners_end/roby"][()] == 2.0
    link = instrument["positioners"].get("roby", getlink=True)
    assert isinstance(link, h5py.SoftLink)
    assert link.path == "/1.1/instrument/positioners_start/roby"  # not scanned: start value
    assert instrument["positioners/roby"][()] == 0.5
    # a scanned motor: positioners/<motor> links to its scanned values (PyMca finds it so)
    roby = nexus.require_channel_dataset(entry["measurement"], "axis:roby", "f8")
    nexus.write_points(roby, 0, [0.5, 1.0, 1.5])
    nexus.write_scan_info_positioners(instrument, {"positioners_start": {"roby": 0.5}})
    assert instrument["positioners/roby"][()].tolist() == [0.5, 1.0, 1.5]
    assert "positioners_dial" not in instrument  # nxvalidate rejects a linked NXcollection
    for name in ("positioners_start", "positioners_end", "positioners_dial_start"):
        assert instrument[name].attrs["NX_class"] == "NXcollection"


# ------------------------------------------------------------------------------ concurrent read

_READER = """
import sys, h5py
with h5py.File(sys.argv[1], "r") as f:
    d = f["1.1/measurement/diode"]
    print(d.shape[0], ",".join(str(v) for v in d[()].tolist()), f["1.1/title"].asstr()[()])
"""


def _read_in_other_process(path: Path) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", _READER, str(path)],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_other_process_reads_while_file_is_open_for_writing(tmp_path: Path) -> None:
    path = tmp_path / "live.h5"
    with nexus.open_nexus_file(path, "a") as f:
        e = nexus.require_entry(f, "1.1", title="live scan", start_time=0.0)
        dset = nexus.require_channel_dataset(e["measurement"], "diode", "int32")
        nexus.write_points(dset, 0, [1, 2, 3])
        f.flush()
        assert _read_in_other_process(path) == "3 1,2,3 live scan"
        nexus.write_points(dset, 3, [4, 5])
        f.flush()
        assert _read_in_other_process(path) == "5 1,2,3,4,5 live scan"
        assert f.id.valid  # still open for writing the whole time
        nexus.write_points(dset, 5, [6])
    with h5py.File(path, "r") as f:
        assert f["1.1/measurement/diode"][()].tolist() == [1, 2, 3, 4, 5, 6]


# ------------------------------------------------------------------------------ compression


@pytest.mark.parametrize(
    ("compression", "filter_id"),
    [
        (None, None),
        ("none", None),
        ("gzip", "gzip"),
        ("lz4", "32004"),
        ("bitshuffle-lz4", "32008"),
        ("zstd", "32015"),
    ],
)
def test_compression_of_large_chunks_only(tmp_path: Path, compression, filter_id) -> None:
    import hdf5plugin  # noqa: F401  (readers of plugin filters need it)

    spectra = np.random.default_rng(0).poisson(100, size=(300, 1024)).astype(np.float64)
    path = tmp_path / "c.h5"
    with nexus.open_nexus_file(path, "w") as f:
        meas = nexus.require_entry(f, "1.1", title="t", start_time=0.0)["measurement"]
        s = nexus.require_channel_dataset(
            meas, "mca:spectrum", np.float64, (1024,), compression=compression
        )
        nexus.write_points(s, 0, spectra)
        small = nexus.require_channel_dataset(meas, "d:diode", np.float64, compression=compression)
        nexus.write_points(small, 0, spectra[:, 0])
    with h5py.File(path, "r") as f:
        s = f["1.1/measurement/mca"]
        np.testing.assert_array_equal(s[()], spectra)
        assert s.chunks == (128, 1024)  # 1 MiB along the scan axis
        found = list(
            s.id.get_create_plist().get_filter(k)[0]
            for k in range(s.id.get_create_plist().get_nfilters())
        )
        if filter_id is None:
            assert found == []
        elif filter_id == "gzip":
            assert s.compression == "gzip" and s.shuffle
        else:
            assert int(filter_id) in found
        assert f["1.1/measurement/diode"].compression is None  # 16 KiB chunks: not worth it


def test_default_compression_is_bitshuffle_lz4(entry: h5py.Group) -> None:
    s = nexus.require_channel_dataset(entry["measurement"], "mca:spectrum", np.float64, (1024,))
    plist = s.id.get_create_plist()
    assert [plist.get_filter(k)[0] for k in range(plist.get_nfilters())] == [32008]
    assert nexus.DEFAULT_COMPRESSION == "bitshuffle-lz4"
    with pytest.raises(NexusLayoutError, match="unknown compression 'brotli'"):
        nexus.require_channel_dataset(
            entry["measurement"], "x:spectrum", np.float64, (1024,), compression="brotli"
        )


def test_start_and_end_time_carry_the_same_offset(h5: h5py.File, set_tz) -> None:
    set_tz("Europe/Paris")
    e = nexus.require_entry(h5, "1.1", title="t", start_time="2024-07-01T10:00:00+05:00")
    nexus.finalize_entry(e, end_time="2024-07-01T05:30:00+00:00", state="DONE")
    assert e["start_time"].asstr()[()] == "2024-07-01T07:00:00+02:00"
    assert e["end_time"].asstr()[()] == "2024-07-01T07:30:00+02:00"
    assert e["duration"][()] == 1800


def test_a_file_written_again_at_the_same_path_gets_its_own_names(tmp_path: Path) -> None:
    path = tmp_path / "again.h5"
    for channel in ("a:x", "b:x"):  # same number of channels, another channel
        with nexus.open_nexus_file(path, "w") as f:
            e = nexus.require_entry(f, "1.1", title="t", start_time=0.0)
            dset = nexus.require_channel_dataset(e["measurement"], channel, "f8")
            assert dset.attrs["scanstream_channel"] == channel
            assert nexus.channel_paths(e) == {channel: "/1.1/measurement/x"}
