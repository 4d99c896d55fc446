"""What BLISS's own ``bliss/data/scan.py`` needs besides the data nodes, and the scan order
of session walks that clients handling one scan at a time rely on."""

from __future__ import annotations

import pytest

from scanstream import EventType, PublishingSession, get_session_node
from scanstream.legacy import common, hook


def test_bliss_common_names_scan_py_imports_resolve() -> None:
    hook.install()
    try:
        from bliss.common.axis import Axis  # type: ignore[import-not-found]
        from bliss.common.counter import Counter  # type: ignore[import-not-found]
        from bliss.common.utils import get_matching_names  # type: ignore[import-not-found]

        assert (Axis, Counter, get_matching_names) == (
            common.Axis,
            common.Counter,
            common.get_matching_names,
        )
        with pytest.raises(ImportError, match="bliss.common.session is not part"):
            import bliss.common.session  # type: ignore[import-not-found]  # noqa: F401
    finally:
        hook.uninstall()


def test_get_matching_names_as_bliss() -> None:
    names = ["axis:roby", "simulation_diode_sampling_controller:diode", "timer:diode:raw"]
    found = common.get_matching_names(["roby", "diode", "*diode*", "x"], names, True)
    assert (
        found
        == {
            "roby": ["axis:roby"],
            "diode": ["simulation_diode_sampling_controller:diode"],  # the last part first
            "*diode*": names[1:],
            "x": [],
        }
    )
    assert common.get_matching_names("raw", names) == {"raw": []}  # not as a short name
    assert common.get_matching_names(3, ["3"]) == {"3": ["3"]}


def test_a_session_walk_gives_each_end_before_the_next_scan(session: PublishingSession) -> None:
    for _ in range(3):  # all stored before the walk reads anything
        with session.create_scan("ct", {"save": False}) as scan:
            scan.create_container("timer").create_channel("diode").emit(1.0)
            scan.prepared()
    node = get_session_node(session.name, store=session.store)
    order = [
        (event.type, event.node.name)
        for event in node.walk_events(include_filter=["scan"], wait=False)
    ]
    assert order == [
        (kind, f"{n}_ct")
        for n in (1, 2, 3)
        for kind in (EventType.NEW_NODE, EventType.PREPARED_SCAN, EventType.END_SCAN)
    ]
