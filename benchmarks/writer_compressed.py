"""(3d) The writer with compression on (its default) against plain h5py compressing the same data.

A scan of realistic data is published at full speed to a writer process (default settings:
bitshuffle-LZ4, worker processes); the figure is END -> the scan saved (the writer's backlog
at END included), and the size of the scan's own file. Baselines, in the same run and on the
same disk, from the same arrays held in memory:

- plain h5py writing the whole arrays at once with the writer's default filter (bitshuffle-LZ4)
  in chunks of about 1 MiB, file closed: "compressing the same data with plain h5py";
- the same with blisswriter's choice (gzip level 4 + shuffle, about 1 MiB chunks): its file size
  is the size target (ours within 1.1x).

Data: 0D cases have one motor (a ramp) and counters (Poisson counts around 1000, stored as
float64, as counters usually are); spectra are MCA-like (Poisson counts of a peak over a
background). Noise-free ramps would flatter every compressor; pure gaussian noise would make
every one of them useless.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin
import numpy as np

from scanstream import create_session

from .harness import Figure, Stat, flush, open_store
from .writer import _wait_saved, writer_process

#: Chunks of the baselines: about 1 MiB, as blisswriter.
BASELINE_CHUNK_BYTES = 1 << 20


def _data(nch: int, npts: int, shape: tuple[int, ...]) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    if shape == ():
        ramp = np.linspace(-1.0, 1.0, npts)
        counters = [rng.poisson(1000.0, size=npts).astype(np.float64) for _ in range(nch - 1)]
        return [ramp, *counters]
    bins = np.arange(shape[-1])
    peak = 50 + 2000 * np.exp(-0.5 * ((bins - shape[-1] * 0.4) / 12.0) ** 2)
    return [rng.poisson(peak, size=(npts, *shape)).astype(np.float64) for _ in range(nch)]


def _publish(session: Any, arrays: list[np.ndarray], batch: int) -> Any:
    npts = arrays[0].shape[0]
    scan = session.create_scan("burst", {"npoints": npts})
    top = scan.create_container("timer")
    names = ["axis:robx"] + [f"counters:c{i}" for i in range(1, len(arrays))]
    channels = [
        top.create_channel(name, dtype="float64", shape=arr.shape[1:])
        for name, arr in zip(names, arrays, strict=True)
    ]
    scan.prepared()
    for k in range(0, npts, batch):
        for ch, arr in zip(channels, arrays, strict=True):
            ch.emit(arr[k : k + batch])
    scan.end()
    return scan


def _plain_h5py(path: Path, arrays: list[np.ndarray], options: dict[str, Any]) -> float:
    """Seconds for plain h5py to write ``arrays`` compressed, 1 MiB chunks, file closed."""
    t0 = time.perf_counter()
    with h5py.File(path, "w") as f:
        for i, arr in enumerate(arrays):
            point_bytes = max(1, int(np.prod(arr.shape[1:], dtype=np.int64)) * arr.itemsize)
            rows = max(1, min(BASELINE_CHUNK_BYTES // point_bytes, arr.shape[0]))
            f.create_dataset(f"c{i}", data=arr, chunks=(rows, *arr.shape[1:]), **options)
    return time.perf_counter() - t0


def _scan_file(root: Path, session: str, number: int) -> Path:
    files = [p for p in root.rglob("*.h5") if p.name != f"{session}.h5"]
    with_number = [p for p in files if f"{number:04d}" in p.name or f"_{number}." in p.name]
    chosen = with_number or files
    return max(chosen, key=lambda p: p.stat().st_mtime)


def end_to_saved_compressed(
    url: str, nch: int, npts: int, shape: tuple[int, ...], reps: int
) -> dict[str, Any]:
    """``reps`` scans (after one not counted: the fresh writer's first scan) of ``nch``
    channels x ``npts`` points of ``shape``; END -> saved, file sizes and the baselines,
    interleaved scan by scan."""
    flush(url)
    session_name = "w3d"
    arrays = _data(nch, npts, shape)
    batch = 1000 if shape == () else 100
    ours, base_bslz4, base_gzip = [], [], []
    sizes: dict[str, int] = {}
    bslz4 = dict(hdf5plugin.Bitshuffle(cname="lz4"))
    gzip = {"compression": "gzip", "compression_opts": 4, "shuffle": True}
    with tempfile.TemporaryDirectory(prefix="scanstream-bench-w3d-") as tmp:
        root = Path(tmp) / "files"
        root.mkdir()
        store = open_store(url)
        try:
            with writer_process(url, session_name, root):
                session = create_session(session_name, store=store)
                for rep in range(reps + 1):
                    scan = _publish(session, arrays, batch)
                    t1 = time.perf_counter()
                    _wait_saved(store, session_name, scan.number, 300)
                    if rep:
                        ours.append(time.perf_counter() - t1)
                    sizes["scanstream"] = _scan_file(root, session_name, scan.number).stat().st_size
                    if rep:
                        raw = Path(tmp) / f"bslz4_{rep}.h5"
                        base_bslz4.append(_plain_h5py(raw, arrays, bslz4))
                        sizes["plain h5py bitshuffle-lz4"] = raw.stat().st_size
                        raw.unlink()
                        raw = Path(tmp) / f"gzip_{rep}.h5"
                        base_gzip.append(_plain_h5py(raw, arrays, gzip))
                        sizes["plain h5py gzip 1 MiB"] = raw.stat().st_size
                        raw.unlink()
        finally:
            store.close()
    sizes["uncompressed data"] = sum(a.nbytes for a in arrays)
    return {"ours_s": ours, "bslz4_s": base_bslz4, "gzip_s": base_gzip, "sizes": sizes}


def run(url: str, quick: bool) -> list[Figure]:
    """(3d) figures: END -> saved against plain h5py, file size against gzip-1MiB."""
    cases = (
        [("0D", 10, 50_000, ()), ("spectra", 1, 1_000, (1024,))]
        if quick
        else [("0D", 10, 1_000_000, ()), ("spectra", 1, 10_000, (1024,))]
    )
    reps = 1 if quick else 5
    figures = []
    for kind, nch, npts, shape in cases:
        res = end_to_saved_compressed(url, nch, npts, shape, reps)
        what = (
            f"{npts // 1000}k x {nch} ch 0D" if kind == "0D" else f"{npts // 1000}k x 1024 spectra"
        )
        ours = Stat.of(np.array(res["ours_s"]) * 1000, "ms", higher_is_better=False)
        base = Stat.of(np.array(res["bslz4_s"]) * 1000, "ms", higher_is_better=False)
        sizes = res["sizes"]
        fig = Figure(
            f"3d END->saved, compression on, {what} (vs plain h5py compressing it)",
            ours,
            base,
            "<= 0.5x plain h5py",
            extra={
                "gzip_1MiB_ms": Stat.of(
                    np.array(res["gzip_s"]) * 1000, "ms", higher_is_better=False
                ).__dict__,
                "file_bytes": sizes,
                "size_vs_gzip_1MiB": sizes["scanstream"] / sizes["plain h5py gzip 1 MiB"],
            },
        )
        fig.met = ours.median <= 0.5 * base.median
        figures.append(fig)
        size = sizes["scanstream"] / 2**20
        gz = sizes["plain h5py gzip 1 MiB"] / 2**20
        fig = Figure(
            f"3d file size, compression on, {what} (vs plain h5py gzip 1 MiB chunks)",
            Stat.of([size], "MiB", higher_is_better=False),
            Stat.of([gz], "MiB", higher_is_better=False),
            "<= 1.1x gzip-1MiB",
            extra={"file_bytes": sizes},
        )
        fig.met = size <= 1.1 * gz
        figures.append(fig)
    return figures


if __name__ == "__main__":
    import argparse

    from .harness import private_server

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    with private_server() as url:
        for figure in run(url, args.quick):
            print(figure.name, figure.value, figure.baseline, figure.extra, figure.met)
