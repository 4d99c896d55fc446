"""The writer rebuilds an image VDS at most once per flush period and spaced by its
duration (docs/performance.md, "the VDS rebuilt less often"): frames mapped in between are in
the reference table at once, and in the VDS by the next rebuild, which comes also when no
more frames arrive (a scan that pauses), and at the end."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np

from scanstream import DataStore, create_session, saved_scans

from .conftest import owning_writer, wait_for, wait_saved
from .scan_files import frames, write_lima_files

#: Long against the writer's batches (10 ms apart when the data pauses), so that frames sent
#: soon after a rebuild wait for the next one.
FLUSH_PERIOD = 1.0

READER = """
import json, sys
import h5py
with h5py.File(sys.argv[1], "r") as f:
    entry = f.get("1.1")
    vds = entry.get("measurement/lima_simulator") if entry else None
    table = entry.get("instrument/lima_simulator/data_references") if entry else None
    print(json.dumps({
        "vds": None if vds is None else vds.shape[0],
        "attrs": None if vds is None else vds.attrs.get("interpretation"),
        "table": None if table is None else table.shape[0],
        "last": None if vds is None or not vds.shape[0] else int(vds[-1, 0, 0]),
    }))
"""


def _seen(path: Path) -> dict[str, object]:
    """What a reader process finds in the scan file (its last flush)."""
    if not path.exists():
        return {}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(READER), str(path)],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    return json.loads(out.stdout) if out.returncode == 0 else {}


def test_frames_sent_before_a_pause_reach_the_vds_during_the_pause_and_all_at_the_end(
    store: DataStore, tmp_path: Path
) -> None:
    images = frames(40)
    refs = write_lima_files(tmp_path / "det", "lima_simulator", images, per_file=1)
    with owning_writer(store, tmp_path / "data", flush_period=FLUSH_PERIOD, allow=[tmp_path]):
        session = create_session("test_session", store=store)
        try:
            scan = session.create_scan("loop", {"npoints": 40})
            path = tmp_path / "data/test_session/test_session.h5"  # links to the scan file
            lima = scan.create_container("timer").create_lima(
                "lima_simulator:image", "uint16", (3, 4)
            )
            scan.prepared()
            lima.emit(refs[:10])
            wait_for(lambda: _seen(path).get("vds") == 10, 15, "the VDS of the first frames")
            # Two batches well within a flush period (the writer's batches end 10 ms after
            # the data pauses): the second one's rebuild (at least) waits, and no frame
            # comes after it to trigger it.
            lima.emit(refs[10:20])
            time.sleep(0.2)
            lima.emit(refs[20:30])
            seen: list[dict[str, object]] = []

            def caught_up() -> bool:
                seen.append(_seen(path))
                return seen[-1].get("vds") == 30

            wait_for(caught_up, 15, "the VDS to catch up while the scan pauses")
            assert seen[-1] == {"vds": 30, "attrs": "image", "table": 30, "last": 29000}
            assert all(s.get("vds") and s.get("attrs") == "image" for s in seen), seen
            assert scan.number not in saved_scans("test_session", store=store)
            # And again just before the end: the end completes the VDS.
            lima.emit(refs[30:35])
            time.sleep(0.2)
            lima.emit(refs[35:40])
            scan.end()
            wait_saved(store, "test_session", {scan.number})
        finally:
            session.close()
    with h5py.File(path, "r") as f:
        vds = f["1.1/measurement/lima_simulator"]
        np.testing.assert_array_equal(vds[()], images)
        assert f["1.1/instrument/lima_simulator/data_references"].shape == (40, 4)
        assert "data_building" not in f["1.1/instrument/lima_simulator"]
