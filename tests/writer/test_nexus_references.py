"""Image reference tables: uncompressed, cells fitted to the paths, widened when needed;
files opened for writing keep their metadata until a flush."""

from __future__ import annotations

from pathlib import Path

import h5py

from scanstream.writer import nexus


def _refs(folder: Path, name: str, frames: range) -> list[tuple[str, str, int, str]]:
    return [(str(folder / name), "/entry_0000/measurement/data", i, "HDF5") for i in frames]


def test_a_reference_table_is_uncompressed_and_widened_for_a_longer_path(
    tmp_path: Path,
) -> None:
    path = tmp_path / "master.h5"
    long_name = "x" * 300 + ".h5"
    with nexus.open_nexus_file(path, "w") as f:
        group = f.create_group("measurement")
        nexus.require_image_vds(
            group, "cam", _refs(tmp_path, "cam_0000.h5", range(3)), dtype="u2", frame_shape=(2, 2)
        )
        table = group[nexus.references_dataset_name("cam")]
        assert table.compression is None and table.dtype.itemsize == 64
        nexus.require_image_vds(
            group,
            "cam",
            _refs(tmp_path, long_name, range(2)),
            dtype="u2",
            frame_shape=(2, 2),
            first_index=3,
        )
    with h5py.File(path, "r") as f:
        table = f["measurement/cam_references"]
        assert table.dtype.itemsize == 512 and table.compression is None
        assert [r[0].decode() for r in table[()]] == ["cam_0000.h5"] * 3 + [long_name] * 2
        assert [int(r[2]) for r in table[()]] == [0, 1, 2, 0, 1]
        assert list(table.attrs["columns"]) == ["file", "path_in_file", "index_in_file", "format"]
        assert f["measurement/cam"].shape == (5, 2, 2)
        assert "cam_references_widening" not in f["measurement"]


def test_a_file_opened_for_writing_writes_metadata_only_when_flushed(tmp_path: Path) -> None:
    with nexus.open_nexus_file(tmp_path / "w.h5", "w") as f:
        assert not f.id.get_mdc_config().evictions_enabled
    with nexus.open_nexus_file(tmp_path / "w.h5", "r") as f:
        assert f.id.get_mdc_config().evictions_enabled  # a reader: HDF5's default
