"""The entry formats of _protocol.entries: what is written is what is read back."""

from __future__ import annotations

import pytest

from scanstream import DecodingError, SavingState, SavingVerdict
from scanstream._protocol import entries
from scanstream.models import NodeDescription


def _as_stored(fields: dict[object, object]) -> dict[bytes, bytes]:
    """Fields as Redis returns them: every key and value as bytes."""
    return {
        str(k).encode(): v if isinstance(v, bytes) else str(v).encode() for k, v in fields.items()
    }


def test_a_verdict_reads_back_as_written() -> None:
    verdict = SavingVerdict(
        SavingState.SAVED, "/d/s.h5", ("3.1", "3.2"), {"diode": 10}, None, "h:1:ab", 12.5
    )
    assert entries.parse_saving(_as_stored(entries.saving_fields(verdict))) == verdict


def test_no_verdict_is_waiting_and_a_garbage_one_is_failed_never_saved() -> None:
    assert entries.parse_saving({}).state is SavingState.WAITING
    garbage = entries.parse_saving({b"saving": b"SAVED", b"saving_points": b"{not json"})
    assert garbage.state is SavingState.FAILED and "corrupt saving verdict" in (
        garbage.reason or ""
    )
    unknown = entries.parse_saving({b"saving": b"MAYBE"})
    assert unknown.state is SavingState.FAILED


def test_a_node_description_reads_back_as_written() -> None:
    desc = NodeDescription(3, 1, "channel", "axis:roby", {"dtype": "float64", "shape": []})
    assert entries.parse_new_node(_as_stored(entries.new_node_fields(desc)), "scan x") == desc


@pytest.mark.parametrize(
    "fields",
    [{}, {b"node": b"x", b"parent": b"0", b"type": b"channel", b"name": b"a", b"info": b"{}"}],
)
def test_a_corrupt_new_node_is_a_decoding_error_naming_the_scan(fields: dict[bytes, bytes]) -> None:
    with pytest.raises(DecodingError, match="scan x: corrupt NEW_NODE"):
        entries.parse_new_node(fields, "scan x")


def test_data_entry_ids_and_lengths() -> None:
    assert entries.first_index_of(entries.data_entry_id(41).encode()) == 41
    assert entries.stream_length([]) == (0, False)
    assert entries.stream_length([(b"10-1", {b"n": b"5", b"d": b""})]) == (15, False)
    assert entries.stream_length([(b"15-1", {b"end": b"15"})]) == (15, True)
    with pytest.raises(DecodingError):
        entries.DataEntry.from_raw(b"7-1", {b"d": b"no count"})


@pytest.mark.parametrize(
    ("entry_id", "fields", "parsed"),
    [
        (b"10-1", {b"n": b"5", b"d": b"x" * 40}, (10, 5, None)),
        (b"15-1", {b"end": b"15"}, (15, 0, 15)),
        (b"0-1", {b"n": b"1", b"d": b"12345678", b"end": b"1"}, (0, 0, 1)),  # a seal wins
    ],
)
def test_the_walkers_entry_parse_is_the_data_entrys(
    entry_id: bytes, fields: dict[bytes, bytes], parsed: tuple[int, int, int | None]
) -> None:
    assert entries.parse_data_entry(entry_id, fields) == parsed
    entry = entries.DataEntry.from_raw(entry_id, fields)
    assert (entry.first_index, entry.npoints, entry.sealed_length) == parsed


@pytest.mark.parametrize(
    ("entry_id", "fields"),
    [
        (b"7-1", {b"d": b"no count"}),
        (b"x-1", {b"n": b"1"}),
        (b"7-1", {b"n": b"one"}),
        (b"7-1", {b"end": b"never"}),
    ],
)
def test_a_corrupt_data_entry_is_a_decoding_error_naming_it(
    entry_id: bytes, fields: dict[bytes, bytes]
) -> None:
    with pytest.raises(DecodingError, match="corrupt data entry"):
        entries.parse_data_entry(entry_id, fields)


def test_a_garbage_node_info_update_names_the_node_and_field():
    fields = {b"node_info:3": b"[1,2"}
    with pytest.raises(DecodingError, match=r"scan x: the info update of node 3 \(node_info:3\)"):
        entries.parse_node_info(fields, 3, "scan x")
    assert entries.parse_node_info(fields, 4, "scan x") == {}


def test_messages_about_garbage_entries_stay_short():
    huge = b"9" * 1_000_000 + b"x"
    with pytest.raises(DecodingError) as new_scan:
        entries.parse_new_scan({b"event": b"NEW_SCAN", b"scan": huge})
    with pytest.raises(DecodingError) as new_node:
        entries.parse_new_node({b"event": b"NEW_NODE", b"node": huge}, "scan x")
    for error in (new_scan.value, new_node.value):
        assert len(str(error)) < 300 and "9999..." in str(error), str(error)[:300]
