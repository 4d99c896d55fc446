"""Files for the writer tests: Lima-layout detector files and a master file like a real scan."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from scanstream.writer import nexus

#: Path of the frames inside a Lima HDF5 file, for detector ``det``.
LIMA_DATA_PATH = "/entry_0000/instrument/{det}/data"


def frames(n: int, shape: tuple[int, int] = (3, 4), dtype: str = "uint16") -> np.ndarray:
    """``n`` distinct frames: frame ``i`` holds ``1000 * i + pixel index``."""
    size = int(np.prod(shape))
    base = np.arange(size, dtype=np.int64).reshape(shape)
    return np.stack([base + 1000 * i for i in range(n)]).astype(dtype)


def write_lima_files(
    folder: Path, det: str, data: np.ndarray, per_file: int = 2
) -> list[tuple[str, str, int, str]]:
    """Write ``data`` as Lima does (``per_file`` frames per file); return the frame references.

    References are ``(file_path, path_in_file, index_in_file, "HDF5")``, one per frame.
    """
    folder.mkdir(parents=True, exist_ok=True)
    refs = []
    path_in_file = LIMA_DATA_PATH.format(det=det)
    for k, start in enumerate(range(0, len(data), per_file)):
        chunk = data[start : start + per_file]
        path = folder / f"{det}_{k:04d}.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset(path_in_file, data=chunk)
        refs.extend((str(path), path_in_file, i, "HDF5") for i in range(len(chunk)))
    return refs


SCAN_INFO = {
    "scan_nb": 1,
    "title": "ascan roby 0 1 4 0.1",
    "type": "ascan",
    "npoints": 5,
    "data_dim": 1,
    "instrument": {
        "@NX_class": "NXinstrument",
        "name": "id00",
        "source": {
            "@NX_class": "NXsource",
            "name": "ESRF",
            "type": "Synchrotron X-ray Source",
            "probe": "x-ray",
        },
    },
    "sample": {"name": "Si wafer", "description": "(111) cut"},
    "positioners": {
        "positioners_start": {"roby": 0.0, "robz": 1.5},
        "positioners_end": {"roby": 1.0, "robz": 1.5},
        "positioners_dial_start": {"roby": 0.0, "robz": 1.5},
        "positioners_dial_end": {"roby": 1.0, "robz": 1.5},
        "positioners_units": {"roby": "mm", "robz": None},
    },
    "plots": [
        {
            "kind": "curve-plot",
            "items": [{"kind": "curve", "x": "axis:roby", "y": "simulation_diode:diode"}],
        },
        {
            "kind": "curve-plot",
            "name": "mca",
            "items": [{"kind": "curve", "x": "axis:roby", "y": "mca:spectrum"}],
        },
        {
            "kind": "image-plot",
            "name": "image",
            "items": [{"kind": "image", "image": "lima_simulator:image"}],
        },
    ],
}


def build_scan_file(folder: Path, *, strict_names: bool = False) -> Path:
    """A master file with what a real scan writes; returns its path.

    Entry ``1.1``: scalar channels, a spectrum, a ragged channel, a VDS over Lima files,
    instrument with positioners and a source, sample metadata, the default plot. Entry
    ``2.1``: a second scan. Entry ``3.1``: a scan group linking both.
    """
    path = folder / "session.h5"
    n = 5
    refs = write_lima_files(folder / "scan0001", "lima_simulator", frames(n))
    with nexus.open_nexus_file(path, "a") as f:
        for number in (1, 2):
            name = nexus.entry_name(number, strict_names=strict_names)
            info = dict(SCAN_INFO, scan_nb=number)
            entry = nexus.require_entry(
                f, name, title=info["title"], start_time=1.7e9 + number, scan_info=info
            )
            meas = entry["measurement"]
            channels = {
                "axis:roby": (np.linspace(0, 1, n), "mm"),
                "timer:elapsed_time": (np.arange(n) * 0.1, "s"),
                "simulation_diode:diode": (np.arange(n, dtype=np.float32) ** 2, None),
                "mca:spectrum": (np.arange(n * 16, dtype=np.uint32).reshape(n, 16), None),
            }
            for chan, (data, units) in channels.items():
                dset = nexus.require_channel_dataset(
                    meas, chan, data.dtype, data.shape[1:], expected_points=n, units=units
                )
                nexus.write_points(dset, 0, data)
            ragged = nexus.require_channel_dataset(meas, "sim:ragged", np.float64, (-1,))
            nexus.write_points(ragged, 0, [np.arange(k + 1, dtype=np.float64) for k in range(n)])
            nexus.require_image_vds(
                meas, "lima_simulator:image", refs, dtype=np.uint16, frame_shape=(3, 4)
            )
            instrument = entry["instrument"]
            nexus.write_metadata(instrument, info["instrument"])
            nexus.write_scan_info_positioners(instrument, info["positioners"])
            sample = nexus.require_nx_group(entry, "sample", "NXsample")
            nexus.write_metadata(sample, info["sample"])
            nexus.write_default_plot(
                entry, info["plots"], nexus.channel_paths(entry), scan_info=info
            )
            nexus.finalize_entry(
                entry, end_time=1.7e9 + number + 12.5, state="DONE", scan_info=info
            )
        group_name = nexus.entry_name(3, strict_names=strict_names)
        group = nexus.require_entry(
            f,
            group_name,
            title="sequence",
            start_time=1.7e9,
            scan_info={"scan_nb": 3, "title": "sequence"},
        )
        nexus.link_subscan_entries(
            group, [nexus.entry_name(k, strict_names=strict_names) for k in (1, 2)]
        )
        nexus.finalize_entry(group, end_time=1.7e9 + 20, state="DONE")
    return path
