"""A file read while the writer writes it: every state the writer flushes is valid.

A real ``WriterService`` writes a running scan (a motor, two 0-D counters, a spectrum and Lima
images in files written as the scan goes) while two reader processes open the scan's file
over and over, one with HDF5 file locking on (h5py's default) and one with it off
(``HDF5_USE_FILE_LOCKING=FALSE``), every other time through ``silx.io.open`` of the session
file, and check each snapshot: every NXdata has members of one length, no channel ends with
an unwritten (NaN) point, the spectrum holds counts, the image dataset, once seen, is always
there with its attributes, its reference table reads (every row, in every snapshot), and silx's ``get_default`` finds a valid plot once
one was seen. A snapshot during which the file did not change saw one flushed state and
must be valid; a torn read (HDF5 raises: the snapshot straddled a flush) must be followed
by a good snapshot. Run with the default compression and with none, each run prints the
torn reads by cause (the object read, HDF5's reason) and the file's size; ``python -m
soak.live_torn`` sums them over runs. docs/nexus_layout.md ("Reading a file while it is
written") has the figures. A second test follows a mesh's live map row by row.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from scanstream import DataStore, create_session
from scanstream.writer import WriterService
from scanstream.writer.files import FLUSH_PERIOD
from scanstream.writer.nexus import DEFAULT_COMPRESSION
from scanstream.writer.session_file import scan_file_of

from .conftest import owning_writer, wait_for, wait_saved
from .scan_files import frames, write_lima_files

#: Points of the scan; the publisher sleeps between points so the scan lasts a few seconds,
#: longer (up to MAX_POINTS) until each reader has seen QUIET snapshots (a loaded machine).
POINTS = 300
MAX_POINTS = 1500
POINT_SLEEP = 0.01
QUIET = 10
MAX_READER_RUNS = 5  # reader processes per mode, when libhdf5 crashes some
READER_LIMIT = 60  # s: a reader run stops by itself after this
STOP_GRACE = 20  # s: a reader ends its snapshot (and a torn read's recovery, 5 s) by then
DIODE = "simulation_diode_sampling_controller:diode"

SCAN_INFO = {
    "npoints": MAX_POINTS,
    "title": f"ascan roby 0 1 {POINTS} 0.01",
    "plots": [  # one plot per rank: a curve, spectra against the motor, the images
        {"kind": "curve-plot", "items": [{"kind": "curve", "x": "axis:roby", "y": DIODE}]},
        {
            "kind": "curve-plot",
            "name": "mca",
            "items": [{"kind": "curve", "x": "axis:roby", "y": "simu1:spectrum"}],
        },
        {
            "kind": "image-plot",
            "name": "image",
            "items": [{"kind": "image", "image": "lima_simulator:image"}],
        },
    ],
}

# The reader, run as its own process (a reader never shares the writer's HDF5 library).
READER = r"""
import faulthandler, gc, json, math, os, re, signal, sys, time
import h5py, hdf5plugin, numpy as np  # hdf5plugin: the bitshuffle-lz4 data
import silx.io
from silx.io.nxdata import get_default

faulthandler.register(signal.SIGUSR1)  # the supervisor asks where a reader hangs
path, session_path, stop_file = sys.argv[1], sys.argv[2], sys.argv[3]
limit = float(sys.argv[4])
progress_file = sys.argv[5]
RECOVERY_LIMIT = 5.0  # s: a torn read not followed by a good snapshot by then is a failure
counts = {"snapshots": 0, "with_data": 0, "quiet": 0, "torn": 0, "persistent": 0}
try:  # a reader restarted after a crash goes on counting where the last one stopped
    earlier_quiet = int(open(progress_file).read() or 0)
except (OSError, ValueError):
    earlier_quiet = 0
failures = {}  # invalid states: kind -> [count, first example]
quiet_failures = {}  # the same, in snapshots during which the writer did not write
torn = {}  # snapshots that raised (open or read): error -> [count, example]
seen = {"vds": False, "plot": False}
found = []  # the invalid states of the snapshot being checked
retrying = [False]
stage = [""]
recovery = []  # seconds from a torn read to the next good snapshot  # what the snapshot was reading (named in the torn-read report)


def fail(kind, detail):
    found.append((kind, str(detail)[:300]))


def result():
    return json.dumps({"counts": {**counts, "recovery_s": sorted(recovery)},
                       "failures": failures, "quiet_failures": quiet_failures, "torn": torn})


def note(table, kind, detail):
    entry = table.setdefault(kind, [0, detail])
    entry[0] += 1


def close_everything():
    # A file that is still open in this process (an object kept alive by a traceback, or
    # the scan file opened through the session file's external link) would be reused by the
    # next open, with its stale cached metadata: close every HDF5 object before reopening.
    gc.collect()
    kinds = h5py.h5f.OBJ_DATASET | h5py.h5f.OBJ_GROUP | h5py.h5f.OBJ_ATTR | h5py.h5f.OBJ_FILE
    for oid in h5py.h5f.get_obj_ids(types=kinds):
        while oid.valid:
            h5py.h5i.dec_ref(oid)


def cause(exc):
    # The object being read and HDF5's reason without its addresses and sizes ("simu1:
    # OSError: addr overflow"): what the report groups torn reads by.
    reasons = re.findall(r"\(([^()]*)\)", str(exc))
    reason = re.split(r"[,:=]", reasons[-1])[0].strip() if reasons else str(exc)[:60]
    return f"{stage[0]}: {type(exc).__name__}: {reason}"


def stamp():
    return [(st.st_mtime_ns, st.st_size) for st in map(os.stat, (path, session_path))]


def snapshot():
    # Check the file once; True when the writer did not write while it was read. A reader
    # reads metadata lazily, so a snapshot that straddles a flush can mix two states without
    # HDF5 noticing; a quiet snapshot saw one flushed state, which must be valid.
    before = stamp()
    if counts["snapshots"] % 2:
        stage[0] = "open"
        f = h5py.File(path, "r")
    else:
        stage[0] = "open (silx, session file)"
        f = silx.io.open(session_path)
    try:
        stage[0] = "entry"
        check(f)
    finally:
        f.close()
        close_everything()
    return stamp() == before


def check(f):
    entry = f.get("1.1")
    if entry is None:
        return
    measurement = entry.get("measurement")
    if measurement is None or "diode" not in measurement:
        return
    counts["with_data"] += not retrying[0]
    for name in ("diode", "diode2", "roby"):
        stage[0] = name
        dset = measurement.get(name)
        if dset is not None and dset.shape[0] and math.isnan(float(dset[-1])):
            fail("nan_tail", f"{name} ends with NaN at {dset.shape[0]}")
    stage[0] = "simu1"
    spectrum = measurement.get("simu1")
    if spectrum is not None and spectrum.shape[0]:
        values = spectrum[()]
        if np.isnan(values[-1]).all():
            fail("nan_tail", f"spectrum ends with a NaN row at {spectrum.shape[0]}")
        # Poisson counts: anything else is a chunk read from a stale address.
        elif not ((values >= 0) & (values < 1000) & (values == np.round(values))).all():
            fail("spectrum_garbage", f"values outside the counts at {spectrum.shape[0]}")
    stage[0] = "lima_simulator"
    image = measurement.get("lima_simulator")
    if image is None:
        if seen["vds"]:
            fail("vds_missing", "measurement/lima_simulator disappeared")
    else:
        seen["vds"] = True
        if image.attrs.get("interpretation") != "image":
            fail("vds_attrs", dict(image.attrs))
        table = entry.get("instrument/lima_simulator/data_references")
        if table is None:
            fail("references_missing", "instrument/lima_simulator/data_references")
        else:
            stage[0] = "data_references"
            # Every row: a stale chunk address would give an error or cells of garbage.
            rows = table[()]
            bad = [i for i, row in enumerate(rows) if row[3] != b"HDF5" or not row[2].isdigit()]
            if bad:
                fail("references_garbage", f"rows {bad[:5]} of {len(rows)}: {rows[bad[0]]}")
    stage[0] = "plots"
    for name, group in entry.items():
        if not isinstance(group, h5py.Group) or group.attrs.get("NX_class") != "NXdata":
            continue
        lengths = {
            m: group[m].shape[0] for m in group if m != "title" and group[m].ndim
        }
        if len(set(lengths.values())) > 1:
            fail("nxdata_lengths", f"{name}: {lengths}")
    if "default" in entry.attrs:
        seen["plot"] = True
        nxdata = get_default(entry)
        if nxdata is None or not nxdata.is_valid:
            fail("silx_default", getattr(nxdata, "issues", "no default"))
    elif seen["plot"]:
        fail("silx_default", "the default plot disappeared")


deadline = time.monotonic() + limit
while time.monotonic() < deadline and not os.path.exists(stop_file):
    if not os.path.exists(path) or not os.path.exists(session_path):
        time.sleep(0.002)
        continue
    counts["snapshots"] += 1
    del found[:]
    quiet = False
    try:
        quiet = snapshot()
    except Exception as exc:
        # A torn read: HDF5 met metadata or a chunk the writer has changed since (no SWMR).
        # The reader sees an error, not a wrong state; a reopen must then succeed.
        counts["torn"] += 1
        note(torn, cause(exc), repr(exc)[:300])
        retrying[0] = True
        t0 = time.monotonic()
        while True:
            time.sleep(0.02)
            del found[:]
            try:
                snapshot()
                break
            except Exception:
                if time.monotonic() - t0 > RECOVERY_LIMIT:
                    counts["persistent"] += 1
                    break
        retrying[0] = False
        recovery.append(round(time.monotonic() - t0, 3))
    counts["quiet"] += quiet
    if quiet:
        with open(progress_file, "w") as out:
            out.write(str(earlier_quiet + counts["quiet"]))
    for kind, detail in found:
        note(failures, kind, detail)
        if quiet:
            note(quiet_failures, kind, detail)
    # What this run found so far, kept for the supervisor if libhdf5 crashes this process.
    with open(progress_file + ".tmp", "w") as out:
        out.write(result())
    os.replace(progress_file + ".tmp", progress_file + ".run")
print(result())
"""


def _reader(
    path: Path, master: Path, stop: Path, progress: Path, locking: bool
) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env["HDF5_USE_FILE_LOCKING"] = "TRUE" if locking else "FALSE"
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            READER,
            str(path),
            str(master),
            str(stop),
            str(READER_LIMIT),
            str(progress),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


class _SupervisedReader(threading.Thread):
    """A reader process, started again when it dies of a signal.

    libhdf5 may crash (SIGSEGV) in a reader that follows metadata a flush has just changed
    (no SWMR: docs/nexus_layout.md); a crash is counted, and a new reader goes on until the
    stop file appears. Results of every run are merged.
    """

    def __init__(self, path: Path, master: Path, stop: Path, progress: Path, locking: bool):
        super().__init__(daemon=True)
        self.args = (path, master, stop, progress, locking)
        self.results: list[dict[str, Any]] = []
        self.crashes: list[str] = []
        self.errors: list[str] = []

    def run(self) -> None:
        run_file = Path(f"{self.args[3]}.run")  # what a run found so far
        for _ in range(MAX_READER_RUNS):
            run_file.unlink(missing_ok=True)
            proc = _reader(*self.args)
            finished = self._wait(proc)
            out, err = proc.communicate()
            if not finished:
                # Hung inside a read of the file: libhdf5 following torn metadata, the same
                # hazard as its crashes (no SWMR). Hung anywhere else: a defect of the test.
                if "in snapshot" not in err:
                    self.errors.append(f"reader hung outside a snapshot: {err[-600:]}")
                    return
                self.crashes.append(f"hung in libhdf5: {err[-600:]}")
                if run_file.exists():
                    self.results.append(json.loads(run_file.read_text()))
                if self.args[2].exists():
                    return
                continue
            if proc.returncode == 0:
                self.results.append(json.loads(out))
                return
            if proc.returncode < 0:  # killed by a signal inside libhdf5: start another
                self.crashes.append(f"signal {-proc.returncode}: {err[-300:]}")
                # Its snapshots count, and what they found: the publisher stops once the
                # quiet snapshots of every run together reach QUIET.
                if run_file.exists():
                    self.results.append(json.loads(run_file.read_text()))
                continue
            self.errors.append(err)
            return
        self.errors.append(f"{MAX_READER_RUNS} reader runs crashed")

    def _wait(self, proc: subprocess.Popen[str]) -> bool:
        """Wait for a reader run to end; False (the process killed) if it is still running
        STOP_GRACE s after the stop file appeared, or after its own time limit."""
        stop = self.args[2]
        deadline = time.monotonic() + READER_LIMIT + STOP_GRACE
        while proc.poll() is None:
            if stop.exists():
                deadline = min(deadline, time.monotonic() + STOP_GRACE)
            if time.monotonic() > deadline:
                proc.send_signal(signal.SIGUSR1)  # its Python stack, on its stderr
                time.sleep(1.0)
                proc.kill()
                proc.wait(timeout=10)
                return False
            time.sleep(0.1)
        return True

    def merged(self) -> dict[str, Any]:
        """The results of every run: counts summed, tables of failures joined."""
        counts: dict[str, Any] = {}
        tables: dict[str, dict[str, list[Any]]] = {"failures": {}, "quiet_failures": {}, "torn": {}}
        for result in self.results:
            for key, value in result["counts"].items():
                counts[key] = counts.get(key, [] if isinstance(value, list) else 0) + value
            for name, table in tables.items():
                for kind, (n, example) in result[name].items():
                    table.setdefault(kind, [0, example])[0] += n
        return {"counts": counts, **tables, "reader_crashes": self.crashes}


def _quiet_snapshots(progress: Path) -> int:
    try:
        return int(progress.read_text() or 0)
    except (OSError, ValueError):
        return 0


def _publish(store: DataStore, folder: Path, progress: list[Path]) -> int:
    """A running scan: motor, 2 counters, a spectrum, images in Lima files (2 per file)."""
    session = create_session("test_session", store=store)
    scan = session.create_scan("ascan", SCAN_INFO)
    top = scan.create_container("axis")
    roby = top.create_channel("axis:roby", unit="mm")
    timer = top.create_container("timer")
    diode = timer.create_channel(DIODE)
    diode2 = timer.create_channel("simulation_diode_sampling_controller:diode2")
    spectrum = timer.create_channel("simu1:spectrum", shape=(64,))
    lima = timer.create_lima("lima_simulator:image", "uint16", (3, 4))
    scan.prepared()
    images = frames(MAX_POINTS)
    rng = np.random.default_rng(0)
    for i in range(MAX_POINTS):
        if i >= POINTS and i % 2 == 0 and min(map(_quiet_snapshots, progress)) >= QUIET:
            break
        roby.emit(np.array([i / POINTS]))
        diode.emit(rng.normal(100.0, 1.0, size=1))
        diode2.emit(rng.normal(10.0, 1.0, size=1))
        spectrum.emit(rng.poisson(50, size=(1, 64)).astype(np.float64))
        if i % 2 == 1:  # Lima writes a file of 2 frames, then publishes their references
            refs = write_lima_files(folder / f"f{i:04d}", "lima_simulator", images[i - 1 : i + 1])
            lima.emit(refs)
        time.sleep(POINT_SLEEP)
    scan.end()
    return scan.number


@pytest.fixture
def writer(store: DataStore, tmp_path: Path) -> Iterator[WriterService]:
    """A writer with the default flush period (the tests' usual one flushes 4x as often)."""
    with owning_writer(store, tmp_path / "data") as service:
        yield service


# The default compression and none: what is torn by the compressed chunks, what is not.
# Its own time limit: on a loaded machine the scan runs up to MAX_POINTS (15 s of sleeps,
# 30 s or more with the readers starting silx), saving may take 30 s and the readers up to
# STOP_GRACE s to end; the suite's 60 s was hit once in CI with both readers still working.
@pytest.mark.timeout(150)
@pytest.mark.parametrize("compression", [DEFAULT_COMPRESSION, "none"])
def test_readers_see_valid_states_while_the_scan_is_written(
    store: DataStore, tmp_path: Path, compression: str
) -> None:
    with owning_writer(store, tmp_path / "data", compression=compression) as writer:
        _check_readers(store, writer, tmp_path, compression)


def _check_readers(
    store: DataStore, writer: WriterService, tmp_path: Path, compression: str
) -> None:
    assert writer.files.flush_period == FLUSH_PERIOD
    master = tmp_path / "data" / "test_session" / "test_session.h5"
    scan_file = scan_file_of(master, 1)
    stop = tmp_path / "stop"
    progress = [tmp_path / f"quiet_{locking}" for locking in (True, False)]
    readers = [
        _SupervisedReader(scan_file, master, stop, p, locking)
        for p, locking in zip(progress, (True, False))
    ]
    for reader in readers:
        reader.start()
    try:
        number = _publish(store, tmp_path / "lima", progress)
        assert number == 1
        wait_saved(store, "test_session", {1}, timeout=30)
    finally:
        stop.touch()
        for reader in readers:
            reader.join(timeout=READER_LIMIT + STOP_GRACE + 10)
    assert not any(reader.is_alive() for reader in readers)
    assert [reader.errors for reader in readers] == [[], []]
    report = dict(zip(("locking on", "locking off"), (reader.merged() for reader in readers)))
    # Torn reads by cause (object read: error, HDF5's reason), for docs/nexus_layout.md.
    size = scan_file.stat().st_size  # what the file layout options cost
    print(json.dumps({"compression": compression, "file_bytes": size, **report}, indent=1))
    for mode, result in report.items():
        # A reader crashed by libhdf5 is started again; it must stay rare (0 in most runs).
        assert len(result["reader_crashes"]) <= 2, (mode, result["reader_crashes"])
        counts = result["counts"]
        # Enough snapshots of a growing file for the check to mean something.
        # (A few hundred per reader on a quiet machine, a few dozen on a loaded one.)
        assert counts["quiet"] >= QUIET, (mode, counts)
        # Every state the writer flushed is valid (before batch flushes: 5-25 % were not).
        assert result["quiet_failures"] == {}, (mode, result)
        # A torn read (an HDF5 error: the snapshot straddled a flush) is followed by a good
        # snapshot: the file is never left unreadable.
        assert counts["persistent"] == 0, (mode, result)
        # The reference table is uncompressed, its chunks rewritten in place: its rows are
        # never those of another state, and it is torn only when the reader's end of file
        # (read at the open) is older than a chunk it finds, a new chunk every 256 frames
        # (0-1 per run; a gzip table gave 11-26 torn reads per run, stale rows in 3-11).
        torn_table = sum(n for k, (n, _) in result["torn"].items() if "data_references" in k)
        assert torn_table <= 3, (mode, result)
        assert "references_garbage" not in result["failures"], (mode, result)


def test_a_running_mesh_is_plotted_as_the_map_of_its_complete_rows(
    store: DataStore, writer: WriterService, tmp_path: Path
) -> None:
    from silx.io.nxdata import get_default

    n1, n2 = 4, 5
    info = {
        "npoints": n1 * n2,
        "npoints1": n1,
        "npoints2": n2,
        "data_dim": 2,
        "title": "amesh robx 0 3 3 roby 0 4 4 0.1",
        "plots": [
            {
                "kind": "scatter-plot",
                "items": [{"kind": "scatter", "x": "axis:robx", "y": "axis:roby", "value": DIODE}],
            }
        ],
    }
    session = create_session("test_session", store=store)
    scan = session.create_scan("amesh", info)
    top = scan.create_container("axis")
    robx, roby = top.create_channel("axis:robx"), top.create_channel("axis:roby")
    diode = top.create_container("timer").create_channel(DIODE)
    scan.prepared()
    path = scan_file_of(tmp_path / "data" / "test_session" / "test_session.h5", scan.number)
    seen_rows: list[int] = []

    def map_rows() -> int:
        try:
            with h5py.File(path, "r", locking=False) as f:
                entry = f["1.1"]
                nxdata = get_default(entry)
                if nxdata is None or not nxdata.is_valid or nxdata.signal.ndim != 2:
                    return 0
                assert nxdata.signal.shape[1] == n1
                assert nxdata.axes[0].shape == (nxdata.signal.shape[0],)
                return int(nxdata.signal.shape[0])
        except (OSError, KeyError):
            return 0  # not there yet, or a torn read (see the test above)

    for row in range(n2 - 1):  # the last row is not published before the checks
        robx.emit(np.arange(float(n1)))
        roby.emit(np.full(n1, float(row)))
        diode.emit(np.arange(float(n1)) + 10 * row)
        wait_for(lambda: map_rows() >= row + 1, 10, f"row {row} in the live map")  # noqa: B023
        seen_rows.append(map_rows())
    robx.emit(np.arange(2.0))  # half a row: not in the map
    roby.emit(np.full(2, float(n2 - 1)))
    diode.emit(np.arange(2.0))
    time.sleep(2 * FLUSH_PERIOD)
    assert map_rows() == n2 - 1
    scan.end()
    wait_saved(store, "test_session", {scan.number})
    assert seen_rows == list(range(1, n2))
    with h5py.File(path, "r") as f:
        assert f["1.1"].attrs["default"] == "plotselect"
        assert f["1.1/plotselect/diode"].shape == (n2 - 1, n1)  # aborted mid-row at the end
