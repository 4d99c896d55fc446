"""scan_info of simulated scans, following the BLISS conventions.

Keys produced: ``title``, ``type``, ``npoints``, ``count_time``, ``acquisition_chain``,
``channels``, ``devices``, ``plots``, ``positioners``, ``instrument``,
``scan_meta_categories``, ``publisher``, ``save`` and, with saving on, ``filename``,
``sample`` and ``dataset``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .devices import Counter, Motor
from .masters import TopMaster
from .saving import SavingConfig
from .spectra import Mca

__all__ = [
    "build_scan_info",
    "default_plots",
    "format_title",
    "positioners_end",
    "positioners_start",
]


def format_title(scan_type: str, *args: Any) -> str:
    """BLISS-style title: ``format_title("ascan", "roby", 0, 1, 10, 0.1)`` -> ``"ascan roby 0 1 10 0.1"``."""
    words = [scan_type]
    for arg in args:
        if isinstance(arg, float):
            words.append(f"{arg:g}")
        else:
            words.append(str(getattr(arg, "name", arg)))
    return " ".join(words)


def positioners_start(motors: Sequence[Motor]) -> dict[str, Any]:
    """``positioners`` at the start: user and dial positions, units."""
    return {
        "positioners_start": {m.name: m.position for m in motors},
        "positioners_dial_start": {m.name: m.dial for m in motors},
        "positioners_units": {m.name: m.unit for m in motors},
    }


def positioners_end(motors: Sequence[Motor]) -> dict[str, Any]:
    """The ``positioners`` keys added at the end."""
    return {
        "positioners_end": {m.name: m.position for m in motors},
        "positioners_dial_end": {m.name: m.dial for m in motors},
    }


def default_plots(masters: Sequence[TopMaster], data_dim: int = 1) -> list[dict[str, Any]] | None:
    """A curve of the first scalar counter against the first motor (or the elapsed time).

    ``data_dim`` 2 with two motors gives a scatter plot instead. None when there is no
    scalar counter (the writer then picks its own default plot).
    """
    for m in masters:
        scalars = [s.name for s in m.counter_channels() if s.dim == 0]
        if not scalars:
            continue
        if data_dim == 2 and len(m.motors) >= 2:
            return [
                {
                    "kind": "scatter-plot",
                    "items": [
                        {
                            "kind": "scatter",
                            "x": m.motors[0].fullname,
                            "y": m.motors[1].fullname,
                            "value": scalars[0],
                        }
                    ],
                }
            ]
        x = m.motors[0].fullname if m.motors else f"{m.timer_name}:elapsed_time"
        return [{"kind": "curve-plot", "items": [{"kind": "curve", "x": x, "y": scalars[0]}]}]
    return None


def _chain_entry(m: TopMaster) -> dict[str, Any]:
    master_channels = m.motor_channels() if m.motors else m.timer_channels()
    slaves = (m.timer_channels() if m.motors else []) + m.counter_channels()
    entry: dict[str, Any] = {
        "master": {"scalars": [s.name for s in master_channels], "spectra": [], "images": []},
        "scalars": [s.name for s in slaves if s.kind == "scalars"],
        "spectra": [s.name for s in slaves if s.kind == "spectra"],
        "images": [d.fullname for d in m.detectors()],
    }
    devices = (
        [m.name]
        + ([m.timer] if m.motors else [])
        + [c.controller if isinstance(c, Counter) else c.name for c in m.counters]
    )
    entry["devices"] = list(dict.fromkeys(devices))  # one entry per controller, in order
    entry["npoints"] = m.npoints  # per master: several top masters differ in length
    return entry


def _channels(m: TopMaster) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for k, spec in enumerate(m.motor_channels()):
        positions = m.positions[:, k]
        out[spec.name] = {
            "display_name": spec.display_name,
            "unit": spec.unit,
            "dim": 0,
            "start": float(positions[0]),
            "stop": float(positions[-1]),
            "points": m.npoints,
        }
    for spec in m.timer_channels() + m.counter_channels():
        out[spec.name] = {"display_name": spec.display_name, "unit": spec.unit, "dim": spec.dim}
    for det in m.detectors():
        out[det.fullname] = {"display_name": "image", "unit": None, "dim": 2}
    return out


def _devices(m: TopMaster) -> dict[str, dict[str, Any]]:
    # Every device acquisition_chain names, masters included (BLISS clients look each one
    # up: watch_session_scans maps every channel to its top master through them).
    out: dict[str, dict[str, Any]] = {}
    if m.motors:
        out[m.name] = {"channels": [s.name for s in m.motor_channels()]}
        out.setdefault(m.timer, {"channels": []})["channels"] += [
            s.name for s in m.timer_channels()
        ]
    else:
        out[m.name] = {"channels": [s.name for s in m.timer_channels()]}
    for c in m.counters:
        if isinstance(c, Counter):
            entry = out.setdefault(c.controller, {"channels": []})
            entry["channels"] += [s.name for s in c.channels()]
            if isinstance(c, Mca):
                entry["type"] = "mca"
        else:
            out[c.name] = {"channels": [c.fullname], "type": "lima"}
    # What each master triggers, as BLISS's scan_info tells it (clients tell masters from
    # the rest by it): the motor master its timer, the timer the counters' controllers.
    timer = m.timer if m.motors else m.name
    if m.motors:
        out[m.name]["triggered_devices"] = [timer]
    slaves = [key for key in out if key not in (m.name, timer)]
    if slaves:
        out[timer]["triggered_devices"] = slaves
    return out


def _chain_and_devices(
    masters: Sequence[TopMaster],
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """``acquisition_chain`` and ``devices``, each device key unique in the scan.

    A controller under several top masters (a diode controller in each chain) is a device
    of each: the first keeps its name, the others are ``<top master>:<name>``, as BLISS gave
    every acquisition object its own key. Clients map each channel to its top master
    through these keys (``watch_session_scans``).
    """
    chain: dict[str, Any] = {}
    devices: dict[str, dict[str, Any]] = {}
    for m in masters:
        entry = _chain_entry(m)
        renamed: dict[str, str] = {}
        for key, device in _devices(m).items():
            unique = key if key not in devices else f"{m.name}:{key}"
            renamed[key] = unique
            devices[unique] = device
        for unique in renamed.values():
            triggered = devices[unique].get("triggered_devices")
            if triggered is not None:
                devices[unique]["triggered_devices"] = [renamed.get(n, n) for n in triggered]
        entry["devices"] = [renamed.get(name, name) for name in entry["devices"]]
        chain[m.name] = entry
    return chain, devices


def _instrument(masters: Sequence[TopMaster]) -> dict[str, Any]:
    instrument: dict[str, Any] = {
        "@NX_class": "NXinstrument",
        "name": "scanstream simulated beamline",
    }
    for m in masters:
        for c in m.counters:
            meta = (
                c.metadata()
                if isinstance(c, Counter)
                else {
                    "@NX_class": "NXdetector",
                    "type": "lima",
                    "frame_shape": list(c.shape),
                    "dtype": c.dtype.str,
                }
            )
            if meta is not None:
                instrument[c.name] = meta
    return instrument


def build_scan_info(
    masters: Sequence[TopMaster],
    name: str,
    motors: Sequence[Motor],
    saving: SavingConfig | None,
    extra: Mapping[str, Any] | None = None,
    plots: list[dict[str, Any]] | None = None,
    channel_info: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The scan_info of a chain at its creation.

    Parameters
    ----------
    masters : sequence of TopMaster
        The chain.
    name : str
        Scan name: default ``title`` and ``type``.
    motors : sequence of Motor
        Motors recorded in ``positioners`` (at their current, start, positions).
    saving : SavingConfig or None
        Adds ``filename`` (``""`` when disabled), ``sample``, ``dataset`` and ``save``,
        and makes the dataset directory.
    extra : Mapping, optional
        Keys that override the generated ones.
    plots : list, optional
        ``plots``; default from :func:`default_plots`.
    channel_info : Mapping, optional
        Extra keys per channel (``axis-points``...), merged into ``channels``.

    Notes
    -----
    ``npoints`` is that of the top master for one master; with several it is the smallest
    (a client that allocates ``npoints`` rows per channel, as BLISS's example writer does,
    grows the longer masters' datasets instead of leaving NaN rows in the shorter ones'),
    or 0 when one of them is unbounded. Each ``acquisition_chain`` entry has its own.
    """
    npoints = [m.npoints for m in masters]
    chain, devices = _chain_and_devices(masters)
    info: dict[str, Any] = {
        "title": name,
        "type": name,
        "npoints": 0 if 0 in npoints else min(npoints),
        "count_time": masters[0].count_time,
        "acquisition_chain": chain,
        "channels": {k: v for m in masters for k, v in _channels(m).items()},
        "devices": devices,
        "instrument": _instrument(masters),
        "positioners": positioners_start(motors),
        "publisher": "scanstream.sim",
        "data_writer": "external",
    }
    if masters[0].sleep_time:
        info["sleep_time"] = masters[0].sleep_time
    for channel, keys in (channel_info or {}).items():
        info["channels"].setdefault(channel, {}).update(keys)
    # Without a saving configuration a scan names no file: a writer puts it in its own root.
    if saving is not None:
        saving.prepare()
    info.update(saving.scan_info() if saving is not None else {})
    info.update(extra or {})
    if "plots" not in info:
        chosen = (
            plots if plots is not None else default_plots(masters, int(info.get("data_dim", 1)))
        )
        if chosen is not None:
            info["plots"] = chosen
    info["scan_meta_categories"] = [
        k
        for k in ("instrument", "positioners", "sample", "technique")
        if isinstance(info.get(k), Mapping)
    ]
    return info
