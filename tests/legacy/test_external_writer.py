"""A BLISS-1.x-style external writer under gevent, on the whole catalogue: every dataset compared."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from child_output import readline

from scanstream import LimaNode, ScanRefNode, get_session_node
from scanstream.sim import SavingConfig
from scanstream.sim.catalogue import run_catalogue

pytest.importorskip("gevent")

HERE = Path(__file__).resolve().parent
SRC = str(HERE.parents[1] / "src")


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return (
        a.shape == b.shape
        and a.dtype == b.dtype
        and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
    )


@pytest.mark.timeout(120)
def test_bliss_style_writer_under_gevent_writes_the_catalogue_exactly(
    redis_url, store, session, tmp_path
):
    out = tmp_path / "legacy_writer.h5"
    env = dict(os.environ, PYTHONPATH=SRC, SCANSTREAM_REDIS_URL=redis_url)
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "scanstream",
            "legacy",
            str(HERE / "bliss_style_writer.py"),
            session.name,
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = readline(child, 30)
        assert line == "ready", child.stderr.read() if child.stderr and child.poll() else line
        results = run_catalogue(session, SavingConfig(tmp_path / "data", session.name))
        with session.create_scan("stop_marker"):
            pass
        stdout, stderr = child.communicate(timeout=90)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(5)
    assert child.returncode == 0, stderr
    written = json.loads(stdout.strip().splitlines()[-1])
    assert sorted(written) == sorted(f"{r.number}_{r.name}" for r in results)

    node = get_session_node(session.name, store=store)
    compared = 0
    with h5py.File(out, "r") as f:
        for result in results:
            scan = node.get_scan(result.number)
            group = f[scan.name]
            info = json.loads(group.attrs["scan_info"])
            # get_all() saw the end update; through bliss.data.* it is a datetime (naive,
            # local time) that json.dumps(default=str) wrote as str(datetime), as under BLISS.
            end = datetime.datetime.fromisoformat(scan.info["end_time"])
            assert info["end_time"] == str(end.astimezone().replace(tzinfo=None))
            for n in scan.load_nodes():
                key = n.db_name[len(scan.db_name) + 1 :]
                if isinstance(n, LimaNode):
                    if n.saving_mode == "NOSAVING":
                        assert group.attrs[key + "@images"] == len(n)
                        continue
                    rows = [
                        [s.decode() if isinstance(s, bytes) else s for s in row]
                        for row in group[key][()]
                    ]
                    expected = [[str(x) for x in r] for r in n.get(0, -1).all_image_references()]
                    assert rows == expected, key
                elif isinstance(n, ScanRefNode):
                    assert json.loads(group.attrs[key]) == [s.db_name for s in n.get(0, -1)]
                elif n.type == "channel":
                    expected = n.get_as_array() if len(n) else None
                    got = group[key][()]
                    assert group[key].attrs["fullname"] == n.fullname
                    if expected is None:
                        assert got.shape[0] == 0, key
                    else:
                        assert (
                            _same(got, expected.astype(got.dtype, copy=False))
                            and got.dtype == n.dtype
                        ), (
                            scan.name,
                            key,
                        )
                    compared += 1
    assert compared > 50
