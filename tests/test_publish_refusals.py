"""What the writer could not store is refused when it is published, naming the culprit."""

from __future__ import annotations

from typing import Any

import pytest

from scanstream import (
    EncodingError,
    InvalidArgumentError,
    PublishingSession,
    SavingState,
    get_session_node,
)


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


@pytest.mark.parametrize(
    ("filename", "message"),
    [
        ("", r"is '' but saving is on: give a file path"),
        (" ", r"is ' ' but saving is on"),
        ("\t\n", r"is .* but saving is on"),
        ("/data/a\0b.h5", r"must be a file path, got .* NUL"),
    ],
)
def test_a_filename_the_writer_cannot_use_is_refused(
    session: PublishingSession, filename: str, message: str
) -> None:
    with pytest.raises(EncodingError, match=r"scan_info\['filename'\] " + message):
        session.create_scan("no_file", {"filename": filename})
    with session.create_scan("late", {}) as scan:
        with pytest.raises(EncodingError, match=r"scan_info\['filename'\]"):
            scan.prepared({"filename": filename})
        scan.prepared({"filename": "/data/ok.h5"})


def test_a_scan_not_saved_publishes_an_empty_filename(session: PublishingSession) -> None:
    node = get_session_node(session.name, store=session.store)
    with session.create_scan("off", {"save": False}) as scan:
        assert node.get_scan(scan.number).info["filename"] == ""  # from its creation
        scan.prepared({"filename": " "})  # blank is fine while saving is off
    assert node.get_scan(scan.number).info["filename"] == " "
    with session.create_scan("turned_on", {"save": False}) as scan:
        with pytest.raises(EncodingError, match="but saving is on"):
            scan.prepared({"save": True})  # the empty filename it had no longer fits
        scan.prepared({"save": True, "filename": "/data/on.h5"})
    assert scan.saving.state is not SavingState.NOT_SAVED
    with session.create_scan("on", {}) as scan:
        scan.prepared()
    assert "filename" not in node.get_scan(scan.number).info  # the writer's default file


@pytest.mark.parametrize("shape", [(0,), (3, 0), (0, 4, 4)])
def test_zero_size_channels_are_refused_naming_the_node(
    session: PublishingSession, shape: tuple[int, ...]
) -> None:
    with session.create_scan("sizes", {}) as scan:
        timer = scan.create_container("timer")
        with pytest.raises(EncodingError, match=r"channel 'spectrum': shape .* positive sizes"):
            timer.create_channel("spectrum", shape=shape)
        timer.create_channel("spectrum", shape=(2,))  # nothing was announced: the name is free


@pytest.mark.parametrize("shape", [(0, 10), (10, 0)])
def test_zero_size_images_are_refused_naming_the_node(
    session: PublishingSession, shape: tuple[int, int]
) -> None:
    with session.create_scan("images", {}) as scan:
        with pytest.raises(EncodingError, match=r"lima node 'det': shape .* positive sizes"):
            scan.create_container("timer").create_lima("det", "uint16", shape)


@pytest.mark.parametrize("retention", [float("inf"), float("nan"), -1.0])
def test_a_retention_time_redis_cannot_apply_is_refused_before_the_scan(
    redis_url: str, retention: float
) -> None:
    from scanstream import DataStore, Settings, create_session

    # Settings may refuse some values itself; the publisher refuses whatever reaches it.
    settings = Settings(redis_url=redis_url)
    object.__setattr__(settings, "retention_time", retention)
    with DataStore(settings=settings) as store:
        publishing = create_session("test_session", store=store, warn_no_writer=False)
        with pytest.raises(InvalidArgumentError, match=rf"retention_time .* got {retention!r}"):
            publishing.create_scan("kept", {})
        assert not store.redis.exists(store.keys.session_counter("test_session"))
