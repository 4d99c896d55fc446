"""The fast paths of ``emit`` store exactly what the validating path stores, in order."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from scanstream import EncodingError, PublishingSession, get_session_node

_DTYPES = [
    "float64",
    "float32",
    "float16",
    "int8",
    "int32",
    "int64",
    "uint16",
    "uint64",
    "bool",
    "complex64",
    "complex128",
]


def _stored(session: PublishingSession, number: int) -> dict[str, Any]:
    scan = get_session_node(session.name, store=session.store).get_scan(number)
    return {n.name: n for n in scan.load_nodes() if n.type == "channel"}


def test_numpy_scalars_of_each_dtype_round_trip_exactly_in_order(
    session: PublishingSession,
) -> None:
    expected: dict[str, np.ndarray] = {}
    with session.create_scan("scalars", {}) as scan:
        timer = scan.create_container("timer")
        channels = {d: timer.create_channel(d, dtype=d) for d in _DTYPES}
        scan.prepared()
        for dtype, channel in channels.items():
            assert np.dtype(dtype).type in channel._as_is  # no validation per point
            values = (np.arange(7) % 2 if dtype == "bool" else np.arange(7) * 3 - 1).astype(dtype)
            if dtype in ("float64", "float32", "float16"):
                values[1], values[2] = np.nan, -0.0
            for i, value in enumerate(values):
                if i == 3:
                    channel.emit(values[3:5])  # a batch between single points keeps its place
                elif i != 4:
                    channel.emit(value)
            expected[dtype] = values
    stored = _stored(session, scan.number)
    for dtype, values in expected.items():
        got = np.asarray(stored[dtype].get(0, -1))
        assert got.dtype == np.dtype(dtype) and got.tobytes() == values.tobytes(), dtype


def test_scalars_of_other_types_are_converted_as_the_validating_path_does(
    session: PublishingSession,
) -> None:
    with session.create_scan("converted", {}) as scan:
        timer = scan.create_container("timer")
        narrow = timer.create_channel("narrow", dtype="float32")
        counts = timer.create_channel("counts", dtype="int32")
        small = timer.create_channel("small", dtype="uint8")
        scan.prepared()
        for value in (np.float64(1 / 3), 0.1, np.int64(2**40), 7, True, np.float16(0.5)):
            narrow.emit(value)
        for value in (np.int64(-5), np.uint64(2**31 - 1), 12, np.int8(-1), np.bool_(True)):
            counts.emit(value)
        for value in (np.int64(255), 0, np.uint16(7)):
            small.emit(value)
        with pytest.raises(EncodingError, match=r"'small'.*300 to 300 do not fit in uint8"):
            small.emit(np.int64(300))
        with pytest.raises(EncodingError, match=r"'small'.*-1 to -1 do not fit in uint8"):
            small.emit(-1)
        with pytest.raises(EncodingError, match=r"'counts'.*float64.*cannot be stored as int32"):
            counts.emit(np.float64(1.0))
        with pytest.raises(EncodingError, match=r"'counts'.*float64.*cannot be stored as int32"):
            counts.emit(1.0)
        with pytest.warns(RuntimeWarning, match="overflow"):  # at emit, as for an array
            narrow.emit(np.float64(1e300))
    stored = _stored(session, scan.number)
    want = np.array([1 / 3, 0.1, 2**40, 7, 1, 0.5, np.inf], dtype="float32")
    assert np.asarray(stored["narrow"].get(0, -1)).tobytes() == want.tobytes()
    assert list(stored["counts"].get(0, -1)) == [-5, 2**31 - 1, 12, -1, 1]
    assert list(stored["small"].get(0, -1)) == [255, 0, 7]


def test_single_spectra_round_trip_in_order_across_arenas(session: PublishingSession) -> None:
    buffer = np.empty(1000, dtype="float32")  # a reused acquisition buffer
    sent: list[np.ndarray] = []
    with session.create_scan("spectra", {}) as scan:
        channel = scan.create_container("mca").create_channel("spectrum", "float32", (1000,))
        image = scan.create_container("cam").create_channel("frame", "uint16", (300, 300))
        scan.prepared()
        for i in range(300):  # 1.2 MB: several arenas, of several sizes
            buffer[:] = np.arange(1000) + i
            if i % 50 == 7:
                channel.emit(np.stack([buffer, buffer + 0.5]))  # a batch in between
                sent += [buffer.copy(), buffer + 0.5]
            else:
                channel.emit(buffer)
                sent.append(buffer.copy())
            if i % 100 == 0:
                scan.flush()
        frame = np.zeros((300, 300), dtype="uint16")
        for i in range(5):  # points larger than an arena: one each
            frame[:] = i
            image.emit(frame)
    stored = _stored(session, scan.number)
    got = np.asarray(stored["spectrum"].get(0, -1))
    assert got.shape == (len(sent), 1000) and got.tobytes() == np.stack(sent).tobytes()
    frames = np.asarray(stored["frame"].get(0, -1))
    assert [int(f[0, 0]) for f in frames] == [0, 1, 2, 3, 4] and (frames == frames[:, :1, :1]).all()
