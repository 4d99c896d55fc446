"""``scanstream show``: a stored scan described from Redis, as text and as JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
import redis

from scanstream import ImageReference, PublishingSession
from scanstream._protocol.keys import Keys
from scanstream.cli import main


def _publish(session: PublishingSession) -> int:
    with session.create_scan("ascan", {"title": "ascan roby 0 1 4 0.1", "type": "ascan"}) as scan:
        timer = scan.create_container("timer")
        roby = timer.create_channel("axis:roby", dtype="float64", unit="mm")
        diode = timer.create_channel("diode", dtype="int32")
        spectra = timer.create_channel("mca", dtype="float32", shape=(-1,))
        cam = timer.create_lima("cam", "uint16", (4, 6))
        scan.prepared()
        roby.emit(np.linspace(0, 1, 5))
        diode.emit(np.arange(5, dtype="int32"))
        spectra.emit(np.zeros(3, "float32"))
        cam.emit([ImageReference("/data/cam_0000.h5", "/entry/data", i, "HDF5") for i in range(2)])
    return scan.number


def test_show_describes_the_scan_as_json(
    session: PublishingSession, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    number = _publish(session)
    assert main(["show", session.name, str(number), "--json", "--redis-url", redis_url]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["number"] == number and shown["title"] == "ascan roby 0 1 4 0.1"
    assert shown["state"] == "DONE" and shown["type"] == "ascan"
    nodes = {n["name"]: n for n in shown["nodes"]}
    assert nodes["axis:roby"] == {
        "kind": "channel",
        "name": "axis:roby",
        "dtype": "float64",
        "shape": [],
        "unit": "mm",
        "points": 5,
    }
    assert nodes["diode"]["dtype"] == "int32" and nodes["diode"]["points"] == 5
    assert nodes["mca"]["shape"] == [-1] and nodes["mca"]["points"] == 1
    assert nodes["cam"]["points"] == 2 and nodes["cam"]["image_files"] == ["/data/cam_0000.h5"]
    assert nodes["cam"]["shape"] == [4, 6]
    assert shown["saving"]["state"] == "WAITING"  # no writer follows this test session


def test_show_without_a_number_is_the_latest_scan_as_text(
    session: PublishingSession, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _publish(session)
    last = _publish(session)
    assert main(["show", session.name, "--redis-url", redis_url]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"scan {last} of session {session.name}: ascan roby 0 1 4 0.1")
    assert "state     DONE" in text and "saving    WAITING" in text
    assert "axis:roby" in text and "[mm]" in text and "2 images" in text


def test_show_of_an_unknown_scan_says_so(
    session: PublishingSession, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _publish(session)
    # The publisher's own warnings (no writer follows the session) reach stderr once an
    # earlier test's `main` installed the command line's handler: not this test's subject.
    capsys.readouterr()
    assert main(["show", session.name, "99", "--redis-url", redis_url]) == 1
    err = capsys.readouterr().err
    assert err.startswith("scanstream show: error: no scan number 99") and "Traceback" not in err
    assert err.rstrip().endswith(f"`scanstream ls {session.name}` lists its stored scans")
    assert main(["show", "never_used", "--redis-url", redis_url]) == 1
    assert "never_used" in capsys.readouterr().err


def test_show_names_a_corrupt_new_node_entry_and_shows_the_rest(
    session: PublishingSession, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    number = _publish(session)
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    events = Keys().scan_events(session.name, number)
    garbage = client.xadd(events, {"event": "NEW_NODE", "node": "abc", "type": "channel"})
    broken_info = client.xadd(
        events,
        {"event": "NEW_NODE", "node": "50", "parent": "0", "type": "channel", "name": "x"}
        | {"info": "{not json"},
    )
    client.close()
    assert main(["show", session.name, str(number), "--json", "--redis-url", redis_url]) == 0
    out, err = capsys.readouterr()
    shown = json.loads(out)
    assert {n["name"] for n in shown["nodes"]} == {"axis:roby", "diode", "mca", "cam"}
    corrupt = shown["corrupt_entries"]
    assert set(corrupt) == {garbage.decode(), broken_info.decode()}
    assert "'abc'" in corrupt[garbage.decode()] and "not a node index" in corrupt[garbage.decode()]
    assert "corrupt JSON" in corrupt[broken_info.decode()]
    assert garbage.decode() in err  # logged too, once per entry
    assert err.count(garbage.decode()) == 1

    assert main(["show", session.name, str(number), "--redis-url", redis_url]) == 0
    text = capsys.readouterr().out
    assert "axis:roby" in text and "2 images" in text
    assert f"corrupt entries (skipped):\n    {garbage.decode()}: " in text


def test_show_names_a_garbage_scan_info_and_shows_the_rest(
    session: PublishingSession, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    number = _publish(session)
    key = Keys().scan(session.name, number)
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    client.hset(key, "info", "{garbage")
    client.close()
    assert main(["show", session.name, str(number), "--json", "--redis-url", redis_url]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert {n["name"] for n in shown["nodes"]} == {"axis:roby", "diode", "mca", "cam"}
    assert "scan_info is unreadable" in shown["corrupt_entries"][key]
    assert shown["state"] == "DONE"
