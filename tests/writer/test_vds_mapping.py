"""The image VDS mapping kept in memory between batches (vds_mapping.py): after any sequence
of batches the file holds the mapping, the frames and the reference table that one call with
every reference makes, also when the file was written by another process in between."""

from __future__ import annotations

import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from scanstream.writer import nexus
from scanstream.writer.nexus import vds_mapping
from scanstream.writer.nexus.vds_mapping import Block, VdsMapping, merge, read_blocks

FRAME = (2, 3)
DATA = "/entry_0000/measurement/data"


def _detector_files(folder: Path, nframes: int, per_file: int) -> list[tuple[str, str, int, str]]:
    """Real detector files of ``per_file`` frames (frame k holds the value k); the references."""
    folder.mkdir(exist_ok=True)
    refs = []
    for k in range(-(-nframes // per_file)):
        path = folder / f"frames_{k:05d}.h5"
        n = min(per_file, nframes - k * per_file)
        values = np.arange(k * per_file, k * per_file + n, dtype="u2")
        with h5py.File(path, "w") as f:
            f[DATA] = np.broadcast_to(values[:, None, None], (n, *FRAME))
        refs += [(str(path), DATA, i, "HDF5") for i in range(n)]
    return refs


def _map(path: Path, batches: list[tuple[int, list[tuple[str, str, int, str]]]]) -> None:
    with nexus.open_nexus_file(path, "a") as f:
        group = f.require_group("measurement")
        for first, refs in batches:
            nexus.require_image_vds(
                group, "cam", refs, dtype="u2", frame_shape=FRAME, first_index=first
            )


def _state(path: Path) -> tuple[list[Block], tuple[int, ...], np.ndarray, np.ndarray, dict]:
    """What a reader finds: the mapping, the shape, the frames, the table, the attributes."""
    with h5py.File(path, "r") as f:
        vds = f["measurement/cam"]
        return (
            read_blocks(vds.id.get_create_plist()),
            vds.shape,
            vds[()],
            f["measurement/cam_references"][()],
            dict(vds.attrs),
        )


def _assert_same(a: Path, b: Path) -> None:
    blocks_a, shape_a, frames_a, table_a, attrs_a = _state(a)
    blocks_b, shape_b, frames_b, table_b, attrs_b = _state(b)
    assert blocks_a == blocks_b
    assert shape_a == shape_b
    np.testing.assert_array_equal(frames_a, frames_b)
    np.testing.assert_array_equal(table_a, table_b)
    assert attrs_a == attrs_b


def _batches(refs: list, sizes: list[int], start: int = 0) -> list[tuple[int, list]]:
    """``refs`` (frames ``start`` on) in batches of ``sizes``, the rest in a last one."""
    out, first = [], 0
    for size in sizes:
        if first >= len(refs):
            break
        out.append((start + first, refs[first : first + size]))
        first += size
    if first < len(refs):
        out.append((start + first, refs[first:]))
    return out


@pytest.mark.parametrize("per_file", [1, 3, 100, 1000])  # 1000: all frames in one file
@pytest.mark.parametrize("aligned", [True, False])
def test_many_batches_make_the_mapping_of_one_call(
    tmp_path: Path, per_file: int, aligned: bool
) -> None:
    refs = _detector_files(tmp_path / "det", 1000, per_file)
    rng = random.Random(per_file)
    if aligned and per_file < 1000:  # batches of whole files (each ends a block)
        sizes = [per_file * rng.randint(1, 3) for _ in range(1000)]
    else:
        sizes = [rng.randint(1, min(2 * per_file + 5, 150)) for _ in range(1000)]
    batches = _batches(refs, sizes)
    assert len(batches) > 3
    _map(tmp_path / "batches.h5", batches)
    _map(tmp_path / "one_call.h5", [(0, refs)])
    _assert_same(tmp_path / "batches.h5", tmp_path / "one_call.h5")
    blocks, shape, frames, _, attrs = _state(tmp_path / "batches.h5")
    assert len(blocks) == -(-1000 // per_file)  # one block per detector file
    assert shape == (1000, *FRAME)
    np.testing.assert_array_equal(frames[:, 0, 0], np.arange(1000))
    assert attrs["interpretation"] == "image"


def test_frames_mapped_again_gaps_in_a_file_and_files_revisited(tmp_path: Path) -> None:
    refs = _detector_files(tmp_path / "det", 60, 10)
    a, b = refs[:30], refs[30:]
    batches = [
        (0, a[:7]),
        (7, a[7:25]),
        (3, a[3:12]),  # mapped again, inside blocks already closed: the same mapping
        (25, a[25:30]),
        (30, b[:5] + b[10:15]),  # a gap inside a file: two blocks of one file
        (40, [a[0], a[1], a[0]]),  # a file revisited, a frame repeated
        (10, b[20:25]),  # other frames over earlier ones (a new block in the middle)
        (43, b[25:30]),
    ]
    _map(tmp_path / "batches.h5", batches)
    expected = list(a)
    for first, part in batches:
        expected[first : first + len(part)] = part
    _map(tmp_path / "one_call.h5", [(0, expected)])
    _assert_same(tmp_path / "batches.h5", tmp_path / "one_call.h5")
    frames = _state(tmp_path / "batches.h5")[2][:, 0, 0]
    assert list(frames[10:15]) == [50, 51, 52, 53, 54]
    assert list(frames[30:43]) == [30, 31, 32, 33, 34, 40, 41, 42, 43, 44, 0, 1, 0]


def test_the_same_references_again_leave_the_vds_in_place(tmp_path: Path) -> None:
    refs = _detector_files(tmp_path / "det", 20, 5)
    with nexus.open_nexus_file(tmp_path / "m.h5", "w") as f:
        group = f.create_group("measurement")
        first = nexus.require_image_vds(group, "cam", refs, dtype="u2", frame_shape=FRAME)
        assert first is not None
        address = h5py.h5g.get_objinfo(group.id, b"cam").objno
        again = nexus.require_image_vds(
            group, "cam", refs[12:], dtype="u2", frame_shape=FRAME, first_index=12
        )
        assert again is not None and again.id == first.id
        assert h5py.h5g.get_objinfo(group.id, b"cam").objno == address


def test_a_vds_written_by_another_process_meanwhile_is_read_from_the_file(
    tmp_path: Path,
) -> None:
    """The mapping kept in this process is of the file as it left it: another writer (a
    restarted one) grows the VDS, then this process maps more frames into it."""
    refs = _detector_files(tmp_path / "det", 300, 7)
    master = tmp_path / "m.h5"
    _map(master, _batches(refs[:100], [23] * 10))
    child = textwrap.dedent(
        f"""
        import pickle, sys
        from scanstream.writer import nexus
        refs = pickle.loads(sys.stdin.buffer.read())
        with nexus.open_nexus_file({str(master)!r}, "a") as f:
            nexus.require_image_vds(
                f["measurement"], "cam", refs[100:200], dtype="u2", frame_shape={FRAME!r},
                first_index=100,
            )
        """
    )
    subprocess.run([sys.executable, "-c", child], input=pickle.dumps(refs), check=True, timeout=60)
    _map(master, _batches(refs[200:], [31] * 5, start=200))
    _map(tmp_path / "one_call.h5", [(0, refs)])
    _assert_same(master, tmp_path / "one_call.h5")


def test_a_writer_killed_mid_scan_leaves_a_vds_that_a_new_one_continues(
    tmp_path: Path,
) -> None:
    """A writer process maps batches, flushing after each, and is killed (SIGKILL) in the
    middle; a new process opens the file and maps the rest from the frames the VDS has."""
    refs = _detector_files(tmp_path / "det", 2000, 100)
    master = tmp_path / "m.h5"
    refs_file = tmp_path / "refs.npy"
    np.save(refs_file, np.array(refs, dtype=object), allow_pickle=True)
    child = textwrap.dedent(
        f"""
        import sys, time
        import numpy as np
        from scanstream.writer import nexus
        refs = [tuple(r) for r in np.load({str(refs_file)!r}, allow_pickle=True).tolist()]
        with nexus.open_nexus_file({str(master)!r}, "w") as f:
            group = f.create_group("measurement")
            first = 0
            while True:
                part = refs[first : first + 150]
                nexus.require_image_vds(
                    group, "cam", part, dtype="u2", frame_shape={FRAME!r}, first_index=first
                )
                first += len(part)
                f.flush()
                print(first, flush=True)
                if first >= 1200:
                    time.sleep(60)  # killed here, the file open
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        line = ""
        while time.monotonic() < deadline:
            line = proc.stdout.readline() if proc.stdout else ""
            if not line or int(line) >= 1200:
                break
        assert line and int(line) >= 1200, "the writer process did not map its batches"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        if proc.stdout:
            proc.stdout.close()
    with h5py.File(master, "r") as f:
        done = f["measurement/cam"].shape[0]
    assert done == 1200
    _map(master, _batches(refs[done:], [170] * 10, start=done))
    _map(tmp_path / "one_call.h5", [(0, refs)])
    _assert_same(master, tmp_path / "one_call.h5")


def test_a_mapping_replaced_many_times_equals_one_made_at_once(tmp_path: Path) -> None:
    """VdsMapping alone: its dcpl (closed blocks, the last one copied in or not) gives a VDS
    with the blocks of one built from scratch, whatever the order of the batches."""
    rng = random.Random(7)
    fill = np.uint16(0)
    mapping = VdsMapping([], 0, FRAME, np.dtype("u2"), fill)
    expected: list[tuple[str, int]] = []
    for _ in range(300):
        first = rng.randint(max(0, len(expected) - 30), len(expected))
        new = []
        for _ in range(rng.randint(1, 40)):
            new.append((f"f{rng.randint(0, 3)}.h5", rng.randint(0, 50)))
        expected[first : first + len(new)] = new
        blocks = merge(
            Block(first + k, first + k + 1, file, "/d", s) for k, (file, s) in enumerate(new)
        )
        mapping.replace(first, blocks)
    scratch = merge(Block(k, k + 1, file, "/d", s) for k, (file, s) in enumerate(expected))
    assert mapping.blocks == scratch
    assert mapping.nframes == len(expected)
    with h5py.File(tmp_path / "m.h5", "w") as f:
        vds = mapping.create(f, "cam")
        assert read_blocks(vds.id.get_create_plist()) == scratch
        assert vds.shape == (len(expected), *FRAME)
        built = VdsMapping(scratch, len(expected), FRAME, np.dtype("u2"), fill).create(f, "b")
        assert read_blocks(built.id.get_create_plist()) == scratch


def test_mappings_kept_are_bounded(tmp_path: Path) -> None:
    refs = _detector_files(tmp_path / "det", 3, 3)
    with nexus.open_nexus_file(tmp_path / "m.h5", "w") as f:
        for k in range(vds_mapping.MAPPINGS_KEPT + 5):
            group = f.create_group(f"e{k}")
            nexus.require_image_vds(group, "cam", refs, dtype="u2", frame_shape=FRAME)
        assert len(vds_mapping._mappings) <= vds_mapping.MAPPINGS_KEPT


def test_a_vds_replaced_by_other_code_in_the_open_file_is_read_from_the_file(
    tmp_path: Path,
) -> None:
    refs = _detector_files(tmp_path / "det", 30, 10)
    with nexus.open_nexus_file(tmp_path / "m.h5", "w") as f:
        group = f.create_group("measurement")
        nexus.require_image_vds(group, "cam", refs[:20], dtype="u2", frame_shape=FRAME)
        del group["cam"]  # replaced by hand: frames 0-4 of the last file only
        layout = h5py.VirtualLayout(shape=(5, *FRAME), dtype="u2")
        layout[:] = h5py.VirtualSource(refs[20][0], DATA, shape=(10, *FRAME))[:5]
        group.create_virtual_dataset("cam", layout, fillvalue=0)
        nexus.require_image_vds(
            group, "cam", refs[25:], dtype="u2", frame_shape=FRAME, first_index=5
        )
        frames = group["cam"][:, 0, 0]
    assert list(frames) == list(range(20, 30))


def test_closing_the_file_closes_the_vds_kept_open(tmp_path: Path) -> None:
    """The mapping keeps the VDS in place open; h5py's close closes it, so the file can be
    created again (HDF5 refuses to truncate a file still open) and is mapped afresh."""
    refs = _detector_files(tmp_path / "det", 10, 5)
    master = tmp_path / "m.h5"
    for _ in range(2):
        with nexus.open_nexus_file(master, "w") as f:
            vds = nexus.require_image_vds(
                f.create_group("measurement"), "cam", refs, dtype="u2", frame_shape=FRAME
            )
            assert vds is not None and vds.id.valid
        assert not vds.id.valid
    _assert_same(master, master)
    assert _state(master)[1] == (10, *FRAME)


# -- rebuilds spaced by their duration (require_image_vds(..., rebuild_interval=...)) ----------
def test_a_rebuild_waits_the_interval_or_a_multiple_of_the_last_rebuild() -> None:
    mapping = VdsMapping([], 0, FRAME, np.dtype("u2"), np.uint16(0))
    assert mapping.wait(0.0, 0.2) <= 0  # never built: due at once
    mapping.built(10.0, 10.5)  # a rebuild of 0.5 s: the next one 4 x 0.5 s after it ended
    assert mapping.wait(11.0, 0.2) == pytest.approx(10.5 + vds_mapping.REBUILD_FACTOR * 0.5 - 11)
    assert mapping.wait(10.5 + vds_mapping.REBUILD_FACTOR * 0.5, 0.2) <= 0
    mapping.built(20.0, 20.001)  # a short one: the interval given
    assert mapping.wait(20.1, 0.2) == pytest.approx(0.101)
    assert mapping.wait(20.201, 0.2) <= 0


def test_frames_mapped_between_rebuilds_are_in_the_table_and_the_vds_at_the_end(
    tmp_path: Path,
) -> None:
    """With a long interval the VDS keeps the frames of its last rebuild (present, with its
    attributes, reading what the table says for them), the table has every frame, and
    complete_image_vds makes the file of one call with every reference."""
    refs = _detector_files(tmp_path / "det", 500, 10)
    master = tmp_path / "m.h5"
    with nexus.open_nexus_file(master, "w") as f:
        group = f.create_group("measurement")
        first = 0
        for size in [37, 10, 55, 3, 100, 95, 200]:
            vds = nexus.require_image_vds(
                group,
                "cam",
                refs[first : first + size],
                dtype="u2",
                frame_shape=FRAME,
                first_index=first,
                rebuild_interval=3600.0,
            )
            first += size
            assert vds is not None and group["cam"].id == vds.id
            assert dict(vds.attrs) == {"long_name": "cam", "interpretation": "image"}
            assert vds.shape[0] == 37  # created with its first frames, not rebuilt since
            assert group["cam_references"].shape[0] == first
            np.testing.assert_array_equal(vds[:, 0, 0], np.arange(37))
        assert nexus.complete_image_vds(group, "cam", rebuild_interval=3600.0) is not None
        assert group["cam"].shape[0] == 37  # not due
        assert nexus.complete_image_vds(group, "cam") is None
        assert group["cam"].shape[0] == 500
        assert nexus.complete_image_vds(group, "cam") is None  # nothing left: untouched
        assert "cam_building" not in group
    _map(tmp_path / "one_call.h5", [(0, refs)])
    _assert_same(master, tmp_path / "one_call.h5")


@pytest.mark.parametrize("per_file", [1, 100])
def test_batches_with_rebuilds_spaced_make_the_mapping_of_one_call(
    tmp_path: Path, per_file: int
) -> None:
    """Rebuilds due now and then (interval 0: due unless the last one was very recent; an
    hour: not due), frames mapped again over ones not yet in the VDS; the VDS in place after
    each batch is a state of the mapping (each frame reads what the table said for it)."""
    refs = _detector_files(tmp_path / "det", 1000, per_file)
    rng = random.Random(per_file)
    batches = _batches(refs, [rng.randint(1, 60) for _ in range(60)])
    x = batches[4][0]
    batches.insert(5, (x - 3, refs[700:723]))  # frames of elsewhere over frames just mapped
    value = {r: k for k, r in enumerate(refs)}  # frame k holds the value k
    master = tmp_path / "batches.h5"
    mapped: list[tuple[str, str, int, str]] = []  # what the table says
    in_vds: list[tuple[str, str, int, str]] = []  # what the VDS says: the last rebuild's
    rebuilt = 0
    with nexus.open_nexus_file(master, "w") as f:
        group = f.create_group("measurement")
        for first, part in batches:
            before = group["cam"].id if "cam" in group else None
            vds = nexus.require_image_vds(
                group,
                "cam",
                part,
                dtype="u2",
                frame_shape=FRAME,
                first_index=first,
                rebuild_interval=rng.choice([0.0, 3600.0]),
            )
            mapped[first : first + len(part)] = part
            assert vds is not None and dict(vds.attrs)["interpretation"] == "image"
            if vds.id != before:
                rebuilt += 1
                in_vds = list(mapped)
            assert [tuple(r) for r in group["cam_references"].asstr()[()]] == [
                (os.path.relpath(p, tmp_path), d, str(i), fmt) for p, d, i, fmt in mapped
            ]
            np.testing.assert_array_equal(vds[:, 0, 0], [value[r] for r in in_vds])
        assert nexus.complete_image_vds(group, "cam") is None
    assert 1 < rebuilt < len(batches)  # some rebuilt, some left for later
    _map(tmp_path / "one_call.h5", [(0, mapped)])
    _assert_same(master, tmp_path / "one_call.h5")


def test_a_mapping_ahead_of_its_vds_is_kept_beyond_the_bound(tmp_path: Path) -> None:
    """The mappings kept are bounded, but not by dropping frames the file lacks."""
    refs = _detector_files(tmp_path / "det", 6, 3)
    with nexus.open_nexus_file(tmp_path / "m.h5", "w") as f:
        ahead = f.create_group("ahead")
        nexus.require_image_vds(ahead, "cam", refs[:3], dtype="u2", frame_shape=FRAME)
        nexus.require_image_vds(
            ahead,
            "cam",
            refs[3:],
            dtype="u2",
            frame_shape=FRAME,
            first_index=3,
            rebuild_interval=3600.0,
        )
        for k in range(vds_mapping.MAPPINGS_KEPT + 5):
            group = f.create_group(f"e{k}")
            nexus.require_image_vds(group, "cam", refs, dtype="u2", frame_shape=FRAME)
        assert len(vds_mapping._mappings) <= vds_mapping.MAPPINGS_KEPT
        assert ahead["cam"].shape[0] == 3
        assert nexus.complete_image_vds(ahead, "cam") is None
        assert ahead["cam"].shape[0] == 6
        np.testing.assert_array_equal(ahead["cam"][:, 0, 0], np.arange(6))
