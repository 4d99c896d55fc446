"""What the embedded server's persistence costs on the publish path (docs/server.md).

``python -m benchmarks.persistence [--quick]``: the publish workloads of
:mod:`benchmarks.publish` (1a bulk batches, 1b one point per emit, 1c spectra) against three
private servers started by this process, interleaved run by run: no persistence, AOF with
``appendfsync everysec`` (the embedded server's default) and AOF with ``appendfsync always``.
Each figure is the median rate (until ``end()`` returned: every point in Redis) and its ratio
to the server without persistence.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from statistics import median

from scanstream._transport.server import EmbeddedServer

from .harness import flush, free_port, interleave
from .publish import _publish

_MODES = ("off", "everysec", "always")


@contextlib.contextmanager
def _servers() -> Iterator[dict[str, str]]:
    """One private server per persistence mode, on loopback ports; their URLs by mode."""
    with (
        tempfile.TemporaryDirectory(prefix="scanstream-persist-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        urls = {}
        for mode in _MODES:
            server = EmbeddedServer(
                Path(tmp) / mode,
                port=free_port(),
                data_dir=None if mode == "off" else Path(tmp) / mode / "data",
                appendfsync="everysec" if mode == "off" else mode,
            )
            server.start(timeout=10)
            stack.callback(server.stop)
            urls[mode] = server.url
        yield urls


def _workloads(quick: bool) -> list[tuple[str, Callable[[str], float]]]:
    n_a, n_b, n_c = (20_000, 5_000, 1_000) if quick else (100_000, 50_000, 10_000)
    return [
        (
            "1a 0D float64, 100 ch, 1000-point batches (points/s)",
            lambda url: 100 * n_a / _publish(url, 100, "float64", (), n_a, 1000)[1],
        ),
        (
            "1b 0D float64, 10 ch, 1 point per emit, end to end (points/s)",
            lambda url: 10 * n_b / _publish(url, 10, "float64", (), n_b, 1)[1],
        ),
        (
            "1c 1D 1024 float32, 10 ch, 1 spectrum per emit (points/s)",
            lambda url: 10 * n_c / _publish(url, 10, "float32", (1024,), n_c, 1)[1],
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.persistence")
    parser.add_argument("--quick", action="store_true", help="smaller scans, 3 runs")
    parser.add_argument("--runs", type=int, default=None, help="runs per mode (default 3 or 7)")
    args = parser.parse_args()
    runs = args.runs or (3 if args.quick else 7)
    print("| workload | no persistence | AOF everysec | ratio | AOF always | ratio |")
    print("|---|---|---|---|---|---|")
    with _servers() as urls:
        for name, work in _workloads(args.quick):
            results = interleave(
                [lambda u=urls[m], w=work: w(u) for m in _MODES],
                runs,
                lambda: [flush(u) for u in urls.values()] and None,
            )
            off, everysec, always = (median(r) for r in results)
            print(
                f"| {name} | {off / 1000:,.0f}k | {everysec / 1000:,.0f}k | "
                f"{everysec / off:.2f} | {always / 1000:,.0f}k | {always / off:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
