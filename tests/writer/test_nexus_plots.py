"""Default plots of the NeXus layout: NXdata per rank, equal lengths, mesh maps, @default."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from scanstream.writer import nexus

from .scan_files import build_scan_file, frames


@pytest.fixture
def h5(tmp_path: Path):
    """A fresh master file opened the writer's way; closed after the test."""
    f = nexus.open_nexus_file(tmp_path / "master.h5", "w")
    yield f
    f.close()


# ------------------------------------------------------------------------------ default plot


def _check_default_chain(f: h5py.File) -> h5py.Group:
    entry = f[f.attrs["default"]]
    assert entry.attrs["NX_class"] == "NXentry"
    nxdata = entry[entry.attrs["default"]]
    assert nxdata.attrs["NX_class"] == "NXdata"
    signal = nxdata[nxdata.attrs["signal"]]
    assert isinstance(signal, h5py.Dataset)
    axes = list(nxdata.attrs.get("axes", ["."] * signal.ndim))
    assert len(axes) == signal.ndim
    for dim, axis in enumerate(axes):
        if axis != ".":
            assert nxdata[axis].shape[0] == signal.shape[dim]
            assert nxdata.attrs[f"{axis}_indices"] == dim
    return nxdata


def test_default_plot_chain(tmp_path: Path) -> None:
    path = build_scan_file(tmp_path)
    with h5py.File(path, "r") as f:
        assert f.attrs["default"] == "2.1"  # the newest scan
        nxdata = _check_default_chain(f)
        assert nxdata.name == "/2.1/plotselect"
        assert nxdata.attrs["signal"] == "diode"
        assert list(nxdata.attrs["axes"]) == ["roby"]
        link = nxdata.get("roby", getlink=True)
        assert isinstance(link, h5py.SoftLink) and link.path == "/2.1/measurement/roby"
        np.testing.assert_array_equal(nxdata["roby"][()], np.linspace(0, 1, 5))
        assert nxdata["title"].asstr()[()] == "ascan roby 0 1 4 0.1"  # a field, for h5web
        assert f["1.1"].attrs["default"] == "plotselect"
        assert f["2.1/mca"].attrs["signal"] == "mca" and f["2.1/mca/mca"].ndim == 2
        assert f["2.1/image"].attrs["signal"] == "lima_simulator"


def test_default_plot_fallback_and_image(h5: h5py.File) -> None:
    e = nexus.require_entry(h5, "1.1", title="ascan", start_time=0.0)
    meas = e["measurement"]
    for name, values in (
        ("axis:roby", np.arange(3.0)),
        ("timer:epoch", np.arange(3.0)),
        ("diode", np.arange(3.0) * 2),
    ):
        nexus.write_points(nexus.require_channel_dataset(meas, name, "f8"), 0, values)
    nxdata = nexus.write_default_plot(e, None, nexus.channel_paths(e))
    assert nxdata is not None and nxdata.name == "/1.1/plotselect"
    assert nxdata.attrs["signal"] == "diode" and list(nxdata.attrs["axes"]) == ["roby"]
    assert _check_default_chain(h5) == nxdata
    assert "title" not in nxdata.attrs  # no scan_info, no plot name: no title

    e2 = nexus.require_entry(h5, "2.1", title="ct", start_time=0.0)
    img = nexus.require_channel_dataset(e2["measurement"], "cam:image", np.uint16, (3, 4))
    nexus.write_points(img, 0, frames(2))
    nxdata = nexus.write_default_plot(
        e2,
        [{"kind": "image-plot", "name": "cam", "items": [{"kind": "image", "image": "cam:image"}]}],
        nexus.channel_paths(e2),
    )
    assert nxdata is not None and nxdata.name == "/2.1/cam"
    assert "axes" not in nxdata.attrs  # no axis: no @axes, rather than ['.', '.', '.']
    assert h5.attrs["default"] == "2.1"
    assert _check_default_chain(h5) == nxdata
    # an empty plot list means "no plot": nothing is written
    assert nexus.write_default_plot(e2, [], nexus.channel_paths(e2)) is None
    # an older scan finished later does not take the root's default from the newest
    nexus.write_default_plot(e, None, nexus.channel_paths(e))
    assert h5.attrs["default"] == "2.1"


def _scan(h5: h5py.File, name: str, channels: dict[str, np.ndarray]) -> h5py.Group:
    e = nexus.require_entry(h5, name, title="t", start_time=0.0)
    for channel, values in channels.items():
        dset = nexus.require_channel_dataset(
            e["measurement"], channel, values.dtype, values.shape[1:]
        )
        nexus.write_points(dset, 0, values)
    return e


def test_one_nxdata_per_rank(h5: h5py.File) -> None:
    e = _scan(
        h5,
        "1.1",
        {
            "axis:roby": np.arange(4.0),
            "d:diode": np.arange(4.0),
            "simu1:spectrum": np.ones((4, 8)),
        },
    )
    plots = [
        {
            "kind": "curve-plot",
            "items": [
                {"kind": "curve", "x": "axis:roby", "y": "d:diode"},
                {"kind": "curve", "x": "axis:roby", "y": "simu1:spectrum"},
            ],
        }
    ]
    nexus.write_default_plot(e, plots, nexus.channel_paths(e))
    assert e["plotselect"].attrs["signal"] == "diode"
    assert "auxiliary_signals" not in e["plotselect"].attrs
    assert e["plotselect_1d"].attrs["signal"] == "simu1"
    assert list(e["plotselect_1d"].attrs["axes"]) == ["roby", "."]


def test_plot_of_an_aborted_scan_has_equal_lengths(h5: h5py.File) -> None:
    e = _scan(h5, "1.1", {"axis:roby": np.arange(10.0), "d:diode": np.arange(7.0)})
    nxdata = nexus.write_default_plot(e, None, nexus.channel_paths(e))
    assert nxdata is not None
    assert nxdata["diode"].shape == nxdata["roby"].shape == (7,)
    assert nxdata["roby"][()].tolist() == list(range(7))
    assert e["measurement/roby"].shape == (10,)  # the full data stays in measurement/
    _check_default_chain(h5)


@pytest.mark.parametrize("npoints", [12, 7, 3])  # complete, aborted mid-row, not one row
def test_mesh_is_a_2d_map(h5: h5py.File, npoints: int) -> None:
    fast = np.tile([0.0, 1.0, 2.0, 3.0], 3)[:npoints]
    slow = np.repeat([10.0, 20.0, 30.0], 4)[:npoints]
    e = _scan(
        h5,
        "1.1",
        {"axis:robx": fast, "axis:roby": slow, "d:diode": np.arange(float(npoints))},
    )
    info = {"data_dim": 2, "npoints1": 4, "npoints2": 3}
    plots = [
        {
            "kind": "scatter-plot",
            "items": [{"kind": "scatter", "x": "axis:robx", "y": "axis:roby", "value": "d:diode"}],
        }
    ]
    nxdata = nexus.write_default_plot(e, plots, nexus.channel_paths(e), scan_info=info)
    assert nxdata is not None
    if npoints < 4:
        assert nxdata.name == "/1.1/plotselect" and nxdata["diode"].shape == (npoints,)
        assert list(nxdata.attrs["axes"]) == ["robx", "roby"]  # the scatter
        return
    rows = npoints // 4
    assert nxdata.name == "/1.1/plotselect"
    assert list(nxdata.attrs["axes"]) == ["roby", "robx"]
    assert nxdata.attrs["roby_indices"] == 0 and nxdata.attrs["robx_indices"] == 1
    assert nxdata["diode"][()].tolist() == np.arange(rows * 4.0).reshape(rows, 4).tolist()
    assert nxdata["robx"][()].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert nxdata["roby"][()].tolist() == [10.0, 20.0, 30.0][:rows]
    scatter = e["plotselect_scatter"]
    assert scatter["diode"].shape == (npoints,)
    _check_default_chain(h5)


def test_live_mesh_map_grows_in_place(h5: h5py.File) -> None:
    """While a mesh runs: the scatter until a row is complete, then the map of the complete
    rows, extended in place (the same datasets) as rows complete."""
    fast = np.tile([0.0, 1.0, 2.0, 3.0], 3)
    slow = np.repeat([10.0, 20.0, 30.0], 4)
    signal = np.arange(12.0)
    e = _scan(h5, "1.1", {"axis:robx": fast[:2], "axis:roby": slow[:2], "d:diode": signal[:2]})
    info = {"data_dim": 2, "npoints1": 4, "npoints2": 3}
    plots = [
        {
            "kind": "scatter-plot",
            "items": [{"kind": "scatter", "x": "axis:robx", "y": "axis:roby", "value": "d:diode"}],
        }
    ]
    default = nexus.write_default_plot(e, plots, nexus.channel_paths(e), scan_info=info, live=True)
    assert default is not None and default.name == "/1.1/plotselect_scatter"
    grid = e["plotselect"]
    assert "signal" not in grid.attrs  # no complete row: not a plot yet
    dataset_ids = {
        name: h5py.h5o.get_info(grid[name].id).addr for name in ("diode", "robx", "roby")
    }
    paths = nexus.channel_paths(e)
    for npoints, rows in ((4, 1), (7, 1), (12, 3)):
        for channel, values in (("axis:robx", fast), ("axis:roby", slow), ("d:diode", signal)):
            nexus.write_points(e[paths[channel]], 0, values[:npoints])
        nexus.grow_live_grids(e)
        assert e.attrs["default"] == "plotselect"
        assert grid.attrs["signal"] == "diode" and list(grid.attrs["axes"]) == ["roby", "robx"]
        assert grid["diode"][()].tolist() == signal[: rows * 4].reshape(rows, 4).tolist()
        assert grid["roby"][()].tolist() == [10.0, 20.0, 30.0][:rows]
        assert grid["robx"][()].tolist() == [0.0, 1.0, 2.0, 3.0]
        assert {n: h5py.h5o.get_info(grid[n].id).addr for n in dataset_ids} == dataset_ids
        _check_default_chain(h5)
    # The scatter is live too: soft links to the growing channels.
    assert e["plotselect_scatter"]["diode"].shape == (12,)


def test_a_sequence_links_every_entry_of_its_sub_scans_and_has_a_default_plot(
    writer, session, store, tmp_path: Path
) -> None:
    from silx.io.nxdata import get_default

    from scanstream.sim import SavingConfig, default_beamline, loopscan, run_chain, sequence
    from scanstream.sim.masters import TopMaster

    from .conftest import wait_saved

    beamline = default_beamline()
    saving = SavingConfig(tmp_path / "data", "test_session")
    diode, diode2 = beamline.counter("diode"), beamline.counter("diode2")
    two_masters = [TopMaster("timer1", 2, 0.1, [diode]), TopMaster("timer2", 3, 0.1, [diode2])]
    group = sequence(
        session,
        [
            lambda: run_chain(session, two_masters, saving=saving),
            lambda: loopscan(session, 3, 0.1, diode, saving=saving),
        ],
        saving=saving,
    )
    first, second = (sub.number for sub in group.scans)
    wait_saved(store, "test_session", {group.number, first, second}, timeout=30)
    with h5py.File(saving.filename, "r") as f:
        entry = f[f"{group.number}.1"]
        assert set(entry["scans"]) == {f"{first}.1", f"{first}.2", f"{second}.1"}
        for sub in entry["scans"].values():
            assert sub.attrs["NX_class"] == "NXentry"
        nxdata = get_default(entry)
        assert nxdata is not None and nxdata.is_valid
        # The last sub-scan's plot, through an external link.
        assert entry.get("plotselect", getlink=True).__class__ is h5py.ExternalLink
        assert nxdata.signal.shape == (3,)


def test_default_plot_name_follows_write_default_plot(h5: h5py.File) -> None:
    assert nexus.default_plot_name({}) == "plotselect"
    assert nexus.default_plot_name({"plots": []}) is None  # BLISS: no plot
    named = {"plots": [{"kind": "curve-plot", "name": "my plot", "items": []}]}
    assert nexus.default_plot_name(named) == nexus.nexus_name("my plot")
    assert nexus.default_plot_name(dict(named, _display_extra={"plotselect": ["d"]})) == (
        "plotselect"
    )
    e = _scan(h5, "1.1", {"axis:roby": np.arange(3.0), "d:diode": np.arange(3.0)})
    plots = [
        {"kind": "curve-plot", "name": "my plot", "items": [{"x": "axis:roby", "y": "d:diode"}]}
    ]
    nxdata = nexus.write_default_plot(e, plots, nexus.channel_paths(e))
    assert nxdata is not None and nxdata.name == f"/1.1/{nexus.default_plot_name(named)}"
