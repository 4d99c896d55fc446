"""What the writer could not store is refused when it is published, naming the culprit."""

from __future__ import annotations

from typing import Any

import pytest

from scanstream import EncodingError, InvalidArgumentError, PublishingSession, get_session_node


@pytest.mark.parametrize("name", [".", "..", "a\0b", "\0"])
def test_node_names_the_writer_cannot_store_are_refused(
    session: PublishingSession, name: str
) -> None:
    with session.create_scan("names", {}) as scan:
        timer = scan.create_container("timer")
        with pytest.raises(InvalidArgumentError, match="not '.' or '..'") as caught:
            timer.create_channel(name, dtype="float64")
        assert repr(name) in str(caught.value)
        kept = timer.create_channel("diode", dtype="float64")  # the scan goes on
        scan.prepared()
        kept.emit(1.0)
    node = get_session_node(session.name, store=session.store).get_scan(scan.number)
    assert [n.name for n in node.load_nodes() if n.type == "channel"] == ["diode"]


@pytest.mark.parametrize("name", [".", "..", "x\0"])
def test_scan_names_the_writer_cannot_store_are_refused(
    session: PublishingSession, name: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=r"invalid scan name"):
        session.create_scan(name, {})


def _circular() -> dict[str, Any]:
    info: dict[str, Any] = {"title": "loop"}
    info["again"] = {"inner": info}
    return info


@pytest.mark.parametrize(
    ("info", "culprit"),
    [
        (_circular(), "scan_info['again']['inner']"),
        ({"title": "lone \udc80 surrogate"}, "scan_info['title']"),
        ({"meta": {"\ud800key": 1}}, "scan_info['meta'] key"),
    ],
)
def test_scan_info_the_writer_cannot_store_is_an_encoding_error(
    session: PublishingSession, info: dict[str, Any], culprit: str
) -> None:
    with pytest.raises(EncodingError) as caught:
        session.create_scan("bad_info", info)
    assert culprit in str(caught.value)


def test_the_same_object_twice_is_not_a_cycle(session: PublishingSession) -> None:
    shared = {"unit": "mm"}
    with session.create_scan("shared", {"a": shared, "b": [shared, shared]}) as scan:
        scan.prepared()
    info = get_session_node(session.name, store=session.store).get_scan(scan.number).info
    assert info["a"] == info["b"][0] == info["b"][1] == {"unit": "mm"}
