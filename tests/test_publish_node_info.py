"""A node's info updated after its creation (BLISS devices add metadata when prepared and at end)."""

from __future__ import annotations

import threading

import pytest

from scanstream import (
    EncodingError,
    EventType,
    InvalidArgumentError,
    InvalidTransitionError,
    PublishingSession,
    ScanEndedError,
    get_session_node,
)


def test_updates_before_end_are_seen_at_end_scan(session: PublishingSession) -> None:
    scan = session.create_scan("loopscan", {"save": False})
    timer = scan.create_container("timer", {"kind": "master"})
    diode = timer.create_channel("diode")
    node = get_session_node(session.name, store=session.store).get_scan(scan.number)
    seen: dict[str, dict[str, object]] = {}
    ready = threading.Event()

    def follow() -> None:
        for event in node.walk_events(started_event=ready, timeout=10):
            if event.type is EventType.END_SCAN:
                for member in node.load_nodes():
                    seen[member.name] = member.info.get_all()
                    assert dict(member.info) == seen[member.name]
                return

    reader = threading.Thread(target=follow)
    reader.start()
    try:
        assert ready.wait(5)
        scan.prepared()
        timer.update_info({"prepared": {"expo_time": 0.1}, "kind": "top master"})
        diode.emit([1.0, 2.0])
        diode.update_info({"mode": "SINGLE"})
        timer.update_info({"end": [1, 2]})  # the last update, just before END
        scan.end()
    finally:
        reader.join(10)
    assert not reader.is_alive()
    assert seen["timer"] == {"kind": "top master", "prepared": {"expo_time": 0.1}, "end": [1, 2]}
    assert seen["diode"]["mode"] == "SINGLE" and seen["diode"]["dtype"] == "<f8"


def test_refused_updates_say_why(session: PublishingSession) -> None:
    scan = session.create_scan("loopscan", {"save": False})
    timer = scan.create_container("timer")
    diode = timer.create_channel("diode")
    with pytest.raises(InvalidArgumentError, match=r"node 'diode': 'dtype', 'shape' set at"):
        diode.update_info({"shape": [2], "dtype": "int8"})
    with pytest.raises(EncodingError, match=r"info update of node 'timer'.*'bad'"):
        timer.update_info({"bad": object()})
    with pytest.raises(EncodingError, match="must be a dict"):
        timer.update_info([("a", 1)])  # type: ignore[arg-type]
    timer.update_info({"ok": 1})
    scan.end()
    with pytest.raises(ScanEndedError, match=r"info of node 'timer' can no longer be updated"):
        timer.update_info({"late": 1})
    member = get_session_node(session.name, store=session.store).get_scan(scan.number)
    infos = {n.name: dict(n.info) for n in member.load_nodes()}
    assert infos["timer"] == {"ok": 1} and "late" not in infos["timer"]
    assert infos["diode"]["shape"] == []  # the refused update changed nothing


def test_a_scan_killed_elsewhere_refuses_updates(session: PublishingSession) -> None:
    scan = session.create_scan("loopscan", {"save": False})
    timer = scan.create_container("timer")
    store = session.store
    store.redis.hset(store.keys.scan(session.name, scan.number), "state", "KILLED")
    with pytest.raises(ScanEndedError, match="ended KILLED by another process"):
        timer.update_info({"a": 1})
    with pytest.raises(InvalidTransitionError):  # its end says the same
        scan.end()
