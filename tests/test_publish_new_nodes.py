"""When a scan's NEW_NODE entries are written (decision 0015): with PREPARED for the nodes made
before it, in one script call; ahead of the data when points, a flush or end() come first;
at once for a node made after it. Always before PREPARED and before the node's data."""

from __future__ import annotations

import numpy as np

from scanstream import DataStore, PublishingSession, ScanState, get_session_node


def events(store: DataStore, session: PublishingSession, number: int) -> list[tuple[str, str]]:
    """(event, node name or "") of the scan's event stream, in order."""
    raw = store.redis.xrange(store.keys.scan_events(session.name, number))
    return [(f[b"event"].decode(), f.get(b"name", b"").decode()) for _, f in raw]


def test_nodes_made_before_prepared_are_written_with_it(
    session: PublishingSession, store: DataStore
) -> None:
    scan = session.create_scan("batched", {})
    timer = scan.create_container("timer")
    channels = [timer.create_channel(f"c{i}") for i in range(3)]
    assert events(store, session, scan.number) == [("CREATED", "")]  # nothing written yet
    scan.prepared()
    late = timer.create_channel("late")  # after PREPARED: written before it is handed out
    assert events(store, session, scan.number) == [
        ("CREATED", ""),
        ("NEW_NODE", "timer"),
        ("NEW_NODE", "c0"),
        ("NEW_NODE", "c1"),
        ("NEW_NODE", "c2"),
        ("PREPARED", ""),
        ("NEW_NODE", "late"),
    ]
    for channel in [*channels, late]:
        channel.emit(np.arange(5.0))
    scan.end()
    node = get_session_node(session.name, store=store).get_scan(scan.number)
    assert node.state is ScanState.DONE
    data = {n.name: n.get_as_array(0, -1) for n in node.load_nodes() if n.type == "channel"}
    assert sorted(data) == ["c0", "c1", "c2", "late"]
    assert all(np.array_equal(v, np.arange(5.0)) for v in data.values())


def test_points_before_prepared_carry_their_nodes_first(
    session: PublishingSession, store: DataStore
) -> None:
    scan = session.create_scan("early_points", {})
    timer = scan.create_container("timer")
    channel = timer.create_channel("c")
    channel.emit(np.arange(3.0))
    scan.flush()  # the nodes, then the points, in one transaction
    assert events(store, session, scan.number)[1:] == [("NEW_NODE", "timer"), ("NEW_NODE", "c")]
    other = timer.create_channel("d")  # still before PREPARED: written with it
    scan.prepared()
    other.emit(1.0)
    scan.end()
    assert events(store, session, scan.number)[1:4] == [
        ("NEW_NODE", "timer"),
        ("NEW_NODE", "c"),
        ("NEW_NODE", "d"),
    ]
    node = get_session_node(session.name, store=store).get_scan(scan.number)
    lengths = {n.name: len(n) for n in node.load_nodes() if n.type == "channel"}
    assert lengths == {"c": 3, "d": 1}


def test_a_scan_ended_before_prepared_has_its_nodes(
    session: PublishingSession, store: DataStore
) -> None:
    scan = session.create_scan("never_prepared", {})
    scan.create_container("timer").create_channel("c")
    scan.end(ScanState.FAILED, error="setup failed")
    assert [e for e, _ in events(store, session, scan.number)] == [
        "CREATED",
        "NEW_NODE",
        "NEW_NODE",
        "END",
    ]
    node = get_session_node(session.name, store=store).get_scan(scan.number)
    assert node.state is ScanState.FAILED
    assert [n.name for n in node.load_nodes()] == ["timer", "c"]
