"""Fixtures of the writer service tests: a running WriterService and ways to wait for it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # noqa: F401  (files are compressed with its filters; the writer may run in a worker)
import numpy as np
import pytest
from small_fs import small_tmpfs

from scanstream import DataStore
from scanstream.subscribe.tree import ScanNode
from scanstream.writer import WriterService, nexus, saved_scans, scan_file_path, writer_status


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``condition`` every 50 ms until true; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def wait_saved(store: DataStore, session: str, numbers: set[int], timeout: float = 20.0) -> None:
    """Wait until the writer recorded every scan of ``numbers`` of ``session`` as saved."""

    def done() -> bool:
        status = writer_status(session, store=store)
        if status and status["errors"]:
            pytest.fail(f"the writer reported errors: {status['errors']}")
        return numbers <= saved_scans(session, store=store)

    wait_for(done, timeout, f"scans {sorted(numbers)} of {session} to be saved")


@contextmanager
def owning_writer(store: DataStore, root: Path, **options: Any) -> Iterator[WriterService]:
    """A started WriterService for ``test_session`` under ``root``, once it owns the session;
    stopped at the end."""
    service = WriterService(["test_session"], root=root, store=store, **options)
    service.start()
    try:
        # Owned from the first claim, made at start (not one heartbeat later): this returns in
        # a few ms, the deadline is only a bound.
        wait_for(
            lambda: (writer_status("test_session", store=store) or {}).get("writing"),
            2,
            "the writer to own the session",
        )
        yield service
    finally:
        service.stop()


@contextmanager
def pool_writer(
    redis_url: str, root: Path, *extra: str, preexec_fn: Callable[[], None] | None = None
) -> Iterator[subprocess.Popen[str]]:
    """``scanstream writer --pool test_session`` in its own process; killed at the end.

    Its output (stdout and stderr) is in ``proc.output`` afterwards.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "scanstream", "--redis-url", redis_url, "writer", "--pool"]
        + ["test_session", "--root", str(root), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=preexec_fn,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.output = proc.communicate(timeout=15)[0]  # type: ignore[attr-defined]
        print(f"--- output of pool writer {proc.pid}:\n{proc.output}")  # shown if the test fails


@pytest.fixture
def writer(store: DataStore, tmp_path: Path) -> Iterator[WriterService]:
    """A WriterService for ``test_session`` writing under ``tmp_path/data`` (and anywhere below
    ``tmp_path``), owning the session."""
    # tmp_path is allowed besides the root: tests give scans filenames all over it.
    with owning_writer(store, tmp_path / "data", flush_period=0.05, allow=[tmp_path]) as service:
        yield service


def assert_file_matches_redis(scan: ScanNode, root: Path) -> h5py.File:
    """Assert that the scan's entries hold exactly what Redis holds, bit for bit.

    Compares every channel (values, dtype, shape, count; ragged 1-D through the lengths
    dataset) and every saved Lima channel (frames of the virtual dataset against the frames
    the references name). Returns the file, open for reading, for more checks.
    """
    path = scan_file_path(scan.info, scan.session_name, root)
    file = h5py.File(path, "r")  # viewers' default; read_image copes with the VDS's open files
    top_masters = [n for n in scan.load_nodes() if n.parent is scan]
    for node in scan.load_nodes():
        if node.type not in ("channel", "lima"):
            continue
        master = node
        while master.parent is not scan:
            master = master.parent
        entry = file[nexus.entry_name(scan.number, top_masters.index(master) + 1)]
        assert entry.attrs["NX_class"] == "NXentry"
        path = nexus.channel_path(entry, node.name)
        if node.type == "lima":
            if node.saving_mode == "NOSAVING":
                assert path is None
                continue
            refs = node.get(0, -1).all_image_references()
            assert path is not None, node.name
            vds = file[path]
            assert vds.shape == (len(refs),) + node.shape, node.name
            for i in (0, len(refs) // 2, len(refs) - 1):
                assert np.array_equal(vds[i], node.get(0, -1).get_image(i)), (
                    f"{node.name} frame {i}"
                )
            continue
        assert path is not None, node.name
        dset = file[path]
        points = node[:]
        assert dset.dtype == node.dtype, node.name
        assert dset.shape[0] == len(points), node.name
        if node.point_shape == (-1,):
            lengths = dset.parent[dset.attrs["lengths_dataset"]][()]
            for i, point in enumerate(points):
                assert lengths[i] == len(point)
                assert np.array_equal(dset[i, : len(point)], point), f"{node.name} point {i}"
        else:
            assert dset.shape[1:] == node.shape, node.name
            assert np.array_equal(dset[()], points, equal_nan=dset.dtype.kind == "f"), node.name
    return file


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB file system (tmpfs), or a skip where mounting is not allowed."""
    with small_tmpfs(tmp_path / "tiny", "1m") as mount_point:
        yield mount_point
