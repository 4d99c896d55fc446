"""Device info updates (``update_info``, decision 0013) are recorded in the device groups."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest

from scanstream import DataStore, create_session
from scanstream.writer import WriterService, writer_status
from scanstream.writer.session_file import scan_file_of

from .conftest import wait_for, wait_saved


@pytest.fixture(params=["esrf", "legacy"])
def layout_writer(
    request: pytest.FixtureRequest, store: DataStore, tmp_path: Path
) -> Iterator[tuple[str, WriterService]]:
    service = WriterService(
        ["test_session"],
        root=tmp_path / "data",
        store=store,
        flush_period=0.05,
        layout=request.param,
    )
    service.start()
    try:
        wait_for(
            lambda: (writer_status("test_session", store=store) or {}).get("writing"),
            2,
            "the writer to own the session",
        )
        yield request.param, service
    finally:
        service.stop()


def test_device_info_is_written_under_the_device_group_at_the_end(
    store: DataStore, layout_writer: tuple[str, WriterService], tmp_path: Path
) -> None:
    layout, _ = layout_writer
    session = create_session("test_session", store=store)
    scan = session.create_scan("ascan", {"npoints": 3, "title": "ascan roby 0 1 3 0.1"})
    top = scan.create_container("axis")
    roby = top.create_channel("axis:roby", unit="mm")
    diode = top.create_container("timer").create_channel(
        "simulation_diode_sampling_controller:diode", unit="cts"
    )
    simu1 = top.create_container("simu1")
    spectrum = simu1.create_channel("simu1:spectrum", shape=(4,))
    scan.prepared()
    spectrum.emit(np.ones((3, 4)))
    simu1.update_info({"preset_time": 0.5, "data": "not the data"})
    roby.emit(np.arange(3.0))
    diode.emit(np.ones(3))
    diode.update_info({"mode": "SINGLE", "acq_parameters": {"expo_time": 0.1}})
    diode.update_info({"mode": "MEAN", "data": "not the data"})  # "data" is the dataset's
    roby.update_info({"offset": 0.5})
    scan.end()
    wait_saved(store, "test_session", {scan.number})
    path = scan_file_of(tmp_path / "data" / "test_session" / "test_session.h5", scan.number)
    with h5py.File(path, "r") as f:
        instrument = f["1.1/instrument"]
        device = instrument["diode"]
        assert device.attrs["NX_class"] == "NXdetector"
        assert device["mode"][()] == b"MEAN"  # the last update wins
        assert device["acq_parameters/expo_time"][()] == 0.1
        assert device["acq_parameters"].attrs["NX_class"] == "NXcollection"
        assert isinstance(device["data"], h5py.Dataset) and device["data"].shape == (3,)
        assert not {"dtype", "shape", "unit"} & set(device)
        motor = instrument["roby"]
        assert motor.attrs["NX_class"] == "NXpositioner"
        assert motor["offset"][()] == 0.5
        assert np.array_equal(motor["value"][()], np.arange(3.0))
        if layout == "esrf":
            assert f["1.1/measurement/diode"].attrs["units"] == "cts"
            # A controller's info goes to the device group of its name, that of its spectra.
            controller = instrument["simu1"]
            assert controller["preset_time"][()] == 0.5
            assert controller["data"].shape == (3, 4)
        else:  # the legacy layout names the spectrum's group after the channel
            assert "preset_time" not in instrument["spectrum"]
