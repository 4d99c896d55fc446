"""Unit tests of the simulated devices, the saving layout and scan_info building (no Redis)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest

from scanstream.sim import (
    ConstantCounter,
    DiodeCounter,
    GaussianCounter,
    LimaDetector,
    LimaFileExistsError,
    Mca,
    Motor,
    MotorLimitError,
    PointContext,
    SamplingCounter,
    SavingConfig,
    TopMaster,
    default_beamline,
    time_scale,
)
from scanstream.sim.beamline import UnknownDeviceError
from scanstream.sim.control import sigint_deferred
from scanstream.sim.metadata import build_scan_info, default_plots, format_title

# ------------------------------------------------------------------------------------ motors


def test_motor_user_and_dial_positions() -> None:
    m = Motor("roby", 1.0, "mm", offset=0.5, sign=-1)
    assert m.fullname == "axis:roby"
    assert m.position == pytest.approx(1.0)
    assert m.dial == pytest.approx(-0.5)  # user = sign * dial + offset
    m.move(2.5)
    assert (m.position, m.dial) == (pytest.approx(2.5), pytest.approx(-2.0))


def test_motor_limit_error_names_motor_target_and_limits() -> None:
    m = Motor("robz", 0.0, "mm", -1.0, 2.0)
    with pytest.raises(MotorLimitError) as info:
        m.move(3.5)
    assert isinstance(info.value, ValueError)
    text = str(info.value)
    assert "robz" in text and "3.5" in text and "[-1, 2]" in text
    assert m.position == 0.0  # did not move
    with pytest.raises(MotorLimitError, match="robz"):
        m.check_limits([0.0, 1.0, -1.5])
    with pytest.raises(MotorLimitError):
        Motor("bad", 5.0, low_limit=0, high_limit=1)
    with pytest.raises(ValueError, match="low limit"):
        Motor("bad", 0.0, low_limit=1, high_limit=0)


# ---------------------------------------------------------------------------------- counters


def test_diode_is_deterministic_per_seed_and_point() -> None:
    a, b, c = (
        DiodeCounter("diode", seed=3),
        DiodeCounter("diode", seed=3),
        DiodeCounter("diode", seed=4),
    )
    ctx = PointContext(5, 0.1)
    assert a.read(ctx) == b.read(ctx)
    assert a.read(ctx) != c.read(ctx)
    assert a.read(ctx) != a.read(PointContext(6, 0.1))
    # independent of the read order: a fresh generator per point
    values = [a.read(PointContext(i, 0.1))[0] for i in (3, 1, 2)]
    assert values == [b.read(PointContext(i, 0.1))[0] for i in (3, 1, 2)]
    assert a.fullname == "simulation_diode_sampling_controller:diode"
    assert ConstantCounter("k", 2.0).read(ctx) == [2.0]


def test_gaussian_counter_follows_the_motor() -> None:
    roby = Motor("roby")
    g = GaussianCounter("sim_ct_gauss", roby, center=0.2, fwhm=0.1, height=1000, background=10)
    assert g.read(PointContext(0, 0.1, {"roby": 0.2}))[0] == pytest.approx(1010)
    assert g.read(PointContext(0, 0.1, {"roby": 0.25}))[0] == pytest.approx(
        510
    )  # half max at fwhm/2
    roby.move(0.2)
    assert g.read(PointContext(0, 0.1))[0] == pytest.approx(
        1010
    )  # falls back to the motor position
    noisy = GaussianCounter("g", roby, noise=5.0, seed=1)
    assert noisy.read(PointContext(2, 0.1)) == GaussianCounter("g", roby, noise=5.0, seed=1).read(
        PointContext(2, 0.1)
    )
    assert g.motors == (roby,)
    with pytest.raises(ValueError, match="fwhm"):
        GaussianCounter("g", roby, fwhm=0)


def test_sampling_counter_fixed_and_variable() -> None:
    fixed = SamplingCounter("diode9", 10, seed=1)
    specs = fixed.channels()
    assert [s.name for s in specs] == [
        "simulation_diode_sampling_controller:diode9",
        "simulation_diode_sampling_controller:diode9_samples",
    ]
    assert specs[1].shape == (10,) and specs[1].dim == 1 and specs[1].kind == "spectra"
    mean, samples = fixed.read(PointContext(0, 0.1))
    assert samples.shape == (10,) and mean == pytest.approx(samples.mean())

    var = SamplingCounter("var", lambda i: i + 1)
    assert var.channels()[1].shape == (-1,)
    assert [len(var.read(PointContext(i, 0.1))[1]) for i in range(4)] == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="samples"):
        SamplingCounter("bad", 0)
    with pytest.raises(ValueError, match="sample count"):
        SamplingCounter("bad", lambda i: 0).read(PointContext(0, 0.1))


def test_mca_spectra() -> None:
    mca = Mca("simu1", 256, peaks=[(100, 5, 1e5)], background=1.0, seed=2)
    assert mca.fullname == "simu1:spectrum" and mca.controller == "simu1"
    spec = mca.channels()[0]
    assert (spec.dtype, spec.shape) == ("uint32", (256,))
    (spectrum,) = mca.read(PointContext(0, 1.0))
    assert spectrum.dtype == np.uint32 and spectrum.shape == (256,)
    assert abs(int(np.argmax(spectrum)) - 100) <= 2
    assert np.array_equal(
        spectrum,
        Mca("simu1", 256, peaks=[(100, 5, 1e5)], background=1.0, seed=2).read(PointContext(0, 1.0))[
            0
        ],
    )
    assert not np.array_equal(spectrum, mca.read(PointContext(1, 1.0))[0])  # Poisson noise


# -------------------------------------------------------------------------------------- lima


def _read(ref: tuple[str, str, int, str]) -> np.ndarray:
    with h5py.File(ref[0], "r", locking=False) as f:
        return np.asarray(f[ref[1]][ref[2]])


def test_lima_writes_frames_per_file(tmp_path: Path) -> None:
    det = LimaDetector(
        "lima_simulator",
        (16, 20),
        "uint16",
        frames_per_file=2,
        prefix="img_",
        index_format="%03d",
        next_number=1,
    )
    acq = det.start(5, directory=tmp_path)
    refs = [acq.acquire(i) for i in range(5)]
    files = acq.close()
    assert [Path(f).name for f in files] == ["img_001.h5", "img_002.h5", "img_003.h5"]
    assert [(Path(r.file_path).name, r.index_in_file) for r in refs] == [
        ("img_001.h5", 0),
        ("img_001.h5", 1),
        ("img_002.h5", 0),
        ("img_002.h5", 1),
        ("img_003.h5", 0),
    ]
    assert all(Path(r.file_path).is_absolute() and r.file_format == "HDF5" for r in refs)
    assert refs[0].path_in_file == "/entry_0000/instrument/lima_simulator/data"
    for i, ref in enumerate(refs):
        assert np.array_equal(_read(ref), det.image(i))
    with h5py.File(files[-1], "r") as f:
        assert f["entry_0000/instrument/lima_simulator/data"].shape == (
            1,
            16,
            20,
        )  # the last holds fewer
        assert f["entry_0000"].attrs["NX_class"] == "NXentry"
        assert f["entry_0000/instrument/lima_simulator"].attrs["NX_class"] == "NXdetector"
        assert f["entry_0000/measurement/data"].shape == (1, 16, 20)
    desc = acq.description()
    assert desc["saving_frame_per_file"] == 2 and desc["saving_prefix"] == "img_"
    assert desc["saving_index_format"] == "%03d" and desc["saving_suffix"] == ".h5"
    # Lima's overwrite policy ABORT: the same files again are refused before any frame
    with pytest.raises(LimaFileExistsError, match="img_001.h5"):
        det.start(5, directory=tmp_path)


def test_lima_frames_are_deterministic_and_move() -> None:
    det = LimaDetector(shape=(32, 32), seed=5)
    assert np.array_equal(det.image(3), LimaDetector(shape=(32, 32), seed=5).image(3))
    assert not np.array_equal(det.image(3), det.image(4))
    peaks = {np.unravel_index(np.argmax(det.image(i)), (32, 32)) for i in range(4)}
    assert len(peaks) == 4  # the spot moves with the point index


def test_lima_unbounded_and_aborted_files_are_shrunk(tmp_path: Path) -> None:
    det = LimaDetector("det", (8, 8), frames_per_file=4)
    acq = det.start(0, directory=tmp_path)  # unbounded: 4 frames allocated per file
    refs = [acq.acquire(i) for i in range(6)]
    files = acq.close()
    shapes = []
    for name in files:
        with h5py.File(name, "r") as f:
            shapes.append(f[det.path_in_file].shape[0])
    assert shapes == [4, 2]
    assert np.array_equal(_read(refs[5]), det.image(5))
    assert not list(tmp_path.glob(".*tmp"))
    with pytest.raises(ValueError, match="bounded"):
        LimaDetector("one", frames_per_file=-1).start(0, directory=tmp_path)
    one = LimaDetector("one", (4, 4), frames_per_file=-1).start(3, directory=tmp_path)
    assert one.frames_per_file == 3


def test_lima_nosaving_and_no_directory(tmp_path: Path) -> None:
    det = LimaDetector("det", (8, 8), saving_mode="NOSAVING")
    acq = det.start(3, directory=tmp_path)
    assert [acq.acquire(i) for i in range(3)] == [None, None, None]
    assert acq.close() == [] and not any(tmp_path.iterdir())
    assert (
        acq.description()["saving_mode"] == "NOSAVING"
        and "saving_directory" not in acq.description()
    )
    # MANUAL without any directory: not saved, like BLISS save=False
    assert LimaDetector("det2").start(3, directory=None).saving_mode.value == "NOSAVING"
    with pytest.raises(ValueError, match="frames_per_file"):
        LimaDetector("det", frames_per_file=0)
    with pytest.raises(ValueError, match="index_format"):
        LimaDetector("det", index_format="%s%s")


# ------------------------------------------------------------------------------ saving, info


def test_saving_config_layout(tmp_path: Path) -> None:
    cfg = SavingConfig(tmp_path, "test_session", "s1", "0002")
    base = tmp_path / "test_session" / "s1" / "s1_0002"
    assert cfg.filename == str(base / "s1_0002.h5")
    assert cfg.scan_directory(7) == base / "scan0007"
    info = cfg.scan_info()
    assert info["filename"] == cfg.filename and info["save"] is True
    assert info["sample"]["name"] == "s1" and info["dataset"] == "s1_0002"
    off = SavingConfig(tmp_path, "test_session", enabled=False)
    assert off.scan_info()["filename"] == "" and off.scan_directory(1) is None
    off.prepare()
    assert not (tmp_path / "test_session").exists()  # nothing is made for a scan not saved
    cfg.prepare()
    assert base.is_dir()  # before a scan names its file (subscribers open it at once)
    with pytest.raises(ValueError, match="sample"):
        SavingConfig(tmp_path, "s", sample="a/b")


def test_titles_are_bliss_like() -> None:
    roby = Motor("roby")
    assert format_title("ascan", roby, 0, 1, 10, 0.1) == "ascan roby 0 1 10 0.1"
    assert format_title("d2scan", roby, -0.1, 0.1, 15, 0.1) == "d2scan roby -0.1 0.1 15 0.1"


def test_build_scan_info_for_a_step_scan() -> None:
    roby = Motor("roby", unit="mm")
    master = TopMaster(
        "axis",
        3,
        0.1,
        [DiodeCounter("diode"), Mca("simu1", 16), LimaDetector()],
        motors=[roby],
        positions=[0.0, 0.5, 1.0],
    )
    info = build_scan_info([master], "ascan", [roby], None)
    chain = info["acquisition_chain"]["axis"]
    assert chain["master"]["scalars"] == ["axis:roby"]
    assert chain["scalars"] == [
        "timer:elapsed_time",
        "timer:epoch",
        "simulation_diode_sampling_controller:diode",
    ]
    assert chain["spectra"] == ["simu1:spectrum"] and chain["images"] == ["lima_simulator:image"]
    assert info["channels"]["axis:roby"] == {
        "display_name": "roby",
        "unit": "mm",
        "dim": 0,
        "start": 0.0,
        "stop": 1.0,
        "points": 3,
    }
    assert info["channels"]["simu1:spectrum"]["dim"] == 1
    assert info["channels"]["lima_simulator:image"]["dim"] == 2
    assert info["plots"] == [
        {
            "kind": "curve-plot",
            "items": [
                {
                    "kind": "curve",
                    "x": "axis:roby",
                    "y": "simulation_diode_sampling_controller:diode",
                }
            ],
        }
    ]
    assert info["positioners"]["positioners_start"] == {"roby": 0.0}
    assert info["instrument"]["@NX_class"] == "NXinstrument"
    assert (
        "save" not in info and "filename" not in info
    )  # no saving configuration: a writer decides
    assert default_plots([TopMaster("timer", 1, 0.1, [Mca("m", 4)])]) is None


def test_top_master_validation() -> None:
    with pytest.raises(ValueError, match="positions"):
        TopMaster("axis", 3, 0.1, motors=[Motor("m")], positions=[0, 1])
    with pytest.raises(ValueError, match="npoints"):
        TopMaster("timer", -1)
    with pytest.raises(ValueError, match="count_time"):
        TopMaster("timer", 1, -0.1)
    assert time_scale(True) == 1.0 and time_scale(False) == 0.0 and time_scale(0.5) == 0.5
    with pytest.raises(ValueError, match="sleep"):
        time_scale(-1)


def test_default_beamline_lookup_errors_list_names() -> None:
    bl = default_beamline()
    assert bl.motor("roby").fullname == "axis:roby"
    assert isinstance(bl.counter("simu1"), Mca)
    with pytest.raises(UnknownDeviceError) as info:
        bl.motor("nope")
    assert isinstance(info.value, KeyError) and "robz" in str(info.value)
    with pytest.raises(UnknownDeviceError, match="it is a motor"):
        bl.counter("roby")
    with pytest.raises(UnknownDeviceError, match="diode9"):
        bl.counter("diode99")


@pytest.mark.skipif(
    signal.getsignal(signal.SIGINT) is not signal.default_int_handler,
    reason="SIGINT has a custom handler in this process",
)
@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="not the main thread"
)
def test_ctrl_c_is_delayed_until_a_point_is_published() -> None:
    reached = []
    with pytest.raises(KeyboardInterrupt), sigint_deferred():
        signal.raise_signal(signal.SIGINT)
        reached.append(True)  # the block finished before the interrupt was raised
    assert reached == [True]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
