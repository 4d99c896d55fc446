"""The catalogue of simulated scans: the eight BLISS external-writer test scans and more.

:func:`run_catalogue` runs them in one session; ``examples/some_scans.py`` and
``scanstream demo`` call it. Entries, in order (BLISS's ``some_scans.py`` first):

1. ``d2scan``: roby -0.1..0.1 and robz -0.2..0.2, 15 intervals, ``sim_ct_gauss``
2. ``lima_loopscan``: loopscan of 5 Lima frames saved 2 per file (3 HDF5 files)
3. ``mca_ascan``: ascan roby 0..1, 10 intervals, MCA ``simu1``
4. ``two_top_masters``: timer1 (2 points, diode) and timer2 (50 points, Lima + diode2)
5. ``parallel_loopscans``: three loopscans at once (1, 5, 3 points; diode4, diode, diode2)
6. ``stopped_timescan``: timescan 0.05 s of diode2, stopped after 0.5 s (USER_ABORTED)
7. ``sampling_loopscan``: loopscan of ``diode9`` (10 samples per point)
8. ``varying_samples_ascan``: ascan of ``var_samples`` (3 to 9 samples per point)
9. ``ct``, 10. ``amesh`` (scatter), 11. ``sequence`` of two scans, 12. ``a2scan``,
13. ``dscan``, 14. ``killed_loopscan`` (ends KILLED after 3 of 10 points),
15. ``lima_nosaving``, 16. ``saving_off`` (``save=False``, ``filename`` ``""``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from ..exceptions import InvalidArgumentError
from ..publish import PublishingSession
from .beamline import Beamline, default_beamline
from .chain import run_chain
from .control import ScanResult
from .devices import Motor
from .groups import parallel, sequence
from .lima import LimaDetector
from .masters import Device, TopMaster
from .saving import SavingConfig
from .scans import a2scan, amesh, ascan, ct, d2scan, dscan, loopscan, timescan

__all__ = ["CATALOGUE", "CatalogueRun", "run_catalogue"]

logger = logging.getLogger(__name__)

#: Names of the catalogue entries, in the order they run.
CATALOGUE = (
    "d2scan",
    "lima_loopscan",
    "mca_ascan",
    "two_top_masters",
    "parallel_loopscans",
    "stopped_timescan",
    "sampling_loopscan",
    "varying_samples_ascan",
    "ct",
    "amesh",
    "sequence",
    "a2scan",
    "dscan",
    "killed_loopscan",
    # Last: BLISS's external saving example stops at a Lima detector that does not save (its
    # image references raise, as in BLISS) and at a scan not saved (it opens the empty
    # filename such a scan names), so every other scan comes before them.
    "lima_nosaving",
    "saving_off",
)


class CatalogueRun:
    """Context shared by the entries: session, devices, saving and time scale."""

    def __init__(
        self,
        session: PublishingSession,
        saving: SavingConfig | None,
        fast: bool,
        beamline: Beamline,
        seed: int,
    ) -> None:
        self.session = session
        self.saving = saving
        self.sleep: float = 0.0 if fast else 1.0
        self.beamline = beamline
        self.seed = seed

    def opts(self, **extra: Any) -> dict[str, Any]:
        """Options common to every scan of the catalogue."""
        options = {
            "saving": self.saving,
            "sleep": self.sleep,
            "positioners": self.beamline.positioners,
        }
        options.update(extra)
        return options

    def counter(self, name: str) -> Device:
        """The beamline's counter or detector ``name``."""
        return self.beamline.counter(name)

    def motor(self, name: str) -> Motor:
        """The beamline's motor ``name``."""
        return self.beamline.motor(name)

    # -- entries ---------------------------------------------------------------------------
    def d2scan(self) -> list[ScanResult]:
        return [
            d2scan(
                self.session,
                self.motor("roby"),
                -0.1,
                0.1,
                self.motor("robz"),
                -0.2,
                0.2,
                15,
                0.1,
                self.counter("sim_ct_gauss"),
                **self.opts(),
            )
        ]

    def lima_loopscan(self) -> list[ScanResult]:
        lima = LimaDetector(
            "lima_simulator", (64, 80), "uint16", frames_per_file=2, suffix=".h5", seed=self.seed
        )
        return [loopscan(self.session, 5, 0.1, lima, **self.opts())]

    def mca_ascan(self) -> list[ScanResult]:
        return [
            ascan(
                self.session,
                self.motor("roby"),
                0,
                1,
                10,
                0.1,
                self.counter("simu1"),
                **self.opts(),
            )
        ]

    def two_top_masters(self) -> list[ScanResult]:
        lima = LimaDetector(
            "lima_simulator", (32, 40), "uint16", frames_per_file=20, seed=self.seed
        )
        masters = [
            TopMaster("timer1", 2, 1.0, [self.counter("diode")]),
            TopMaster("timer2", 50, 0.001, [lima, self.counter("diode2")]),
        ]
        return [run_chain(self.session, masters, name="test", **self.opts())]

    def parallel_loopscans(self) -> list[ScanResult]:
        def step(npoints: int, counter: str) -> Callable[[], ScanResult]:
            return lambda: loopscan(
                self.session, npoints, 0.1, self.counter(counter), **self.opts()
            )

        return parallel([step(1, "diode4"), step(5, "diode"), step(3, "diode2")], timeout=120)

    def stopped_timescan(self) -> list[ScanResult]:
        # Always in real time: it is the duration that stops this scan, as Ctrl-C after 0.5 s.
        return [
            timescan(
                self.session, 0.05, self.counter("diode2"), **self.opts(sleep=1.0, max_duration=0.5)
            )
        ]

    def sampling_loopscan(self) -> list[ScanResult]:
        return [loopscan(self.session, 5, 0.1, self.counter("diode9"), **self.opts())]

    def varying_samples_ascan(self) -> list[ScanResult]:
        return [
            ascan(
                self.session,
                self.motor("robu"),
                0,
                1,
                10,
                0.1,
                self.counter("var_samples"),
                **self.opts(),
            )
        ]

    def ct(self) -> list[ScanResult]:
        return [
            ct(
                self.session,
                0.1,
                self.counter("diode"),
                self.counter("diode2"),
                self.counter("simu1"),
                **self.opts(),
            )
        ]

    def amesh(self) -> list[ScanResult]:
        return [
            amesh(
                self.session,
                self.motor("robx"),
                0,
                1,
                4,
                self.motor("roby"),
                -0.1,
                0.1,
                3,
                0.1,
                self.counter("sim_ct_gauss"),
                self.counter("diode"),
                **self.opts(),
            )
        ]

    def sequence(self) -> list[ScanResult]:
        subs: list[ScanResult] = []
        steps: list[Callable[[], Any]] = [
            lambda: subs.append(
                loopscan(self.session, 3, 0.1, self.counter("diode"), **self.opts())
            ),
            lambda: subs.append(
                ascan(
                    self.session,
                    self.motor("robx"),
                    0,
                    1,
                    4,
                    0.1,
                    self.counter("diode2"),
                    **self.opts(),
                )
            ),
        ]
        result = sequence(self.session, steps, title="sequence of 2 scans", saving=self.saving)
        return [result, *subs]

    def a2scan(self) -> list[ScanResult]:
        return [
            a2scan(
                self.session,
                self.motor("roby"),
                0,
                1,
                self.motor("robz"),
                0,
                2,
                5,
                0.1,
                self.counter("diode"),
                self.counter("diode3"),
                **self.opts(),
            )
        ]

    def dscan(self) -> list[ScanResult]:
        return [
            dscan(
                self.session,
                self.motor("robx"),
                -0.5,
                0.5,
                4,
                0.1,
                self.counter("diode5"),
                **self.opts(),
            )
        ]

    def saving_off(self) -> list[ScanResult]:
        off = SavingConfig(
            self.saving.base_directory if self.saving else ".", self.session.name, enabled=False
        )
        return [loopscan(self.session, 3, 0.1, self.counter("diode6"), **self.opts(saving=off))]

    def lima_nosaving(self) -> list[ScanResult]:
        lima = LimaDetector(
            "lima_simulator", (32, 40), "uint16", saving_mode="NOSAVING", seed=self.seed
        )
        return [loopscan(self.session, 4, 0.1, lima, self.counter("diode7"), **self.opts())]

    def killed_loopscan(self) -> list[ScanResult]:
        kill = threading.Event()

        def on_point(master: str, done: int) -> None:
            if done == 3:  # as if someone killed the scan during its fourth point
                kill.set()

        return [
            loopscan(
                self.session,
                10,
                0.1,
                self.counter("diode8"),
                **self.opts(kill_event=kill, on_point=on_point),
            )
        ]


def run_catalogue(
    session: PublishingSession,
    saving: SavingConfig | None = None,
    fast: bool = True,
    *,
    names: list[str] | tuple[str, ...] | None = None,
    beamline: Beamline | None = None,
    seed: int = 0,
    on_result: Callable[[str, ScanResult], None] | None = None,
) -> list[ScanResult]:
    """Run the catalogue of simulated scans in ``session``.

    Parameters
    ----------
    session : PublishingSession
        Where to publish.
    saving : SavingConfig, optional
        Saving configuration (``filename`` and Lima directories); None: scans name no file
        (a writer saves them under its own root) and Lima frames are not written.
    fast : bool
        True (default): count times are published but not waited for, except for the
        stopped timescan, which runs 0.5 s in real time. False: real time.
    names : sequence of str, optional
        Entries of :data:`CATALOGUE` to run (default: all, in catalogue order).
    beamline : Beamline, optional
        Devices (default :func:`~scanstream.sim.beamline.default_beamline` with ``seed``).
    seed : int
        Seed of the devices' noise: the same seed publishes the same values.
    on_result : callable, optional
        ``on_result(entry_name, result)`` for each scan as soon as its entry has run.

    Returns
    -------
    list of ScanResult
        Every scan published, entry by entry (a sequence gives its group, then its
        sub-scans); each result's ``label`` is its entry name.

    Raises
    ------
    InvalidArgumentError
        An unknown entry name.
    """
    unknown = [n for n in names or () if n not in CATALOGUE]
    if unknown:
        raise InvalidArgumentError(
            f"unknown catalogue entries {unknown}; known: {', '.join(CATALOGUE)}"
        )
    run = CatalogueRun(session, saving, fast, beamline or default_beamline(seed), seed)
    results: list[ScanResult] = []
    for name in names or CATALOGUE:
        logger.info("catalogue: %s", name)
        for result in getattr(run, name)():
            result.label = name
            results.append(result)
            if on_result is not None:
                on_result(name, result)
    return results
