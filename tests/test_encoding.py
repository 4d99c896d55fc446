"""Unit tests of metadata and data encoding (no Redis)."""

from __future__ import annotations

import datetime
import json
import math

import numpy as np
import pytest

from scanstream import DecodingError, EncodingError, ImageReference
from scanstream._protocol.codecs import ImageRefCodec, NumericCodec
from scanstream._protocol.metadata import check_scan_info, dumps, iso_time, json_safe, loads


@pytest.mark.parametrize(
    "dtype, values",
    [
        ("int8", [-128, 0, 127]),
        ("uint16", [0, 1, 65535]),
        ("int64", [-(2**63), 0, 2**63 - 1]),
        ("float32", [np.float32(1.1), -0.0, np.inf]),
        ("float64", [math.pi, np.nan, -np.inf]),
        ("bool", [True, False, True]),
        ("complex64", [1 + 2j, 0, -1j]),
    ],
)
def test_numeric_round_trip_is_bit_exact(dtype, values):
    codec = NumericCodec(dtype, ())
    batch = codec.batch(np.array(values, dtype=dtype))
    out = codec.decode([codec.encode(batch)])
    assert out.dtype == np.dtype(dtype)
    assert out.tobytes() == np.array(values, dtype=dtype).tobytes()


def test_big_endian_input_is_stored_little_endian_and_read_back_native():
    codec = NumericCodec(">f8", (2,))
    data = np.array([[1.5, 2.5], [3.5, 4.5]], dtype=">f8")
    fields = codec.encode(codec.batch(data))
    assert fields[b"d"] == data.astype("<f8").tobytes()
    np.testing.assert_array_equal(codec.decode([fields]), data)


def test_several_entries_decode_as_one_batch():
    codec = NumericCodec("float64", (3,))
    a, b = np.arange(6.0).reshape(2, 3), np.arange(3.0) + 10
    out = codec.decode([codec.encode(codec.batch(a)), codec.encode(codec.batch(b))])
    np.testing.assert_array_equal(out, np.vstack([a, b]))
    out[0, 0] = -1  # arrays handed to users are writable
    assert out[0, 0] == -1


def test_variable_length_points():
    codec = NumericCodec("float32", (-1,))
    points = [np.arange(3, dtype="f4"), np.arange(0, dtype="f4"), np.arange(5, dtype="f4")]
    out = codec.decode([codec.encode(codec.batch(points))])
    assert out.dtype == object and len(out) == 3
    for got, want in zip(out, points):
        np.testing.assert_array_equal(got, want)
        assert got.dtype == np.float32
    single = codec.batch([1.0, 2.0])  # a flat list of numbers is one point
    assert len(single) == 1 and list(single[0]) == [1.0, 2.0]


@pytest.mark.parametrize(
    "dtype, shape, data, message",
    [
        ("int32", (), 1.5, "float64"),
        ("float64", (), "abc", "dtype <U3"),
        ("float64", (3,), np.zeros(4), "shape (4,)"),
        ("float64", (3,), np.zeros((2, 4)), "shape (2, 4)"),
        ("float64", (), np.zeros(0), "empty batch"),
        ("uint8", (), 300, "do not fit in uint8"),
        ("bool", (), 2, "int64"),
        ("float32", (-1,), np.zeros((2, 2, 2)), "variable-length"),
    ],
)
def test_bad_points_are_refused_with_a_clear_message(dtype, shape, data, message):
    codec = NumericCodec(dtype, shape, name="diode")
    with pytest.raises(EncodingError, match="diode") as info:
        codec.batch(data)
    assert message in str(info.value)


@pytest.mark.parametrize("dtype", ["U8", "O", [("a", "f8")], "datetime64[s]"])
def test_non_numeric_dtypes_are_refused(dtype):
    with pytest.raises(EncodingError, match="not supported|not a numpy dtype"):
        NumericCodec(dtype, ())


@pytest.mark.parametrize("shape", [(-1, 3), (-2,), "abc"])
def test_bad_shapes_are_refused(shape):
    with pytest.raises(EncodingError, match="shape"):
        NumericCodec("float64", shape)


def test_json_safe_converts_numpy_datetimes_and_nan():
    when = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    info = {
        "npoints": np.int64(11),
        "start": np.array([0.0, 1.0]),
        "when": when,
        "nan": float("nan"),
        "nested": {"@NX_class": "NXcollection", 3: (1, 2)},
    }
    back = loads(dumps(info))
    assert back["npoints"] == 11 and isinstance(back["npoints"], int)
    assert back["start"] == [0.0, 1.0]
    assert back["when"] == "2026-01-02T03:04:05+00:00"
    assert back["nan"] is None  # standard JSON has no NaN (decision 0005)
    assert back["nested"] == {"@NX_class": "NXcollection", "3": [1, 2]}


def _strict_loads(text: str | bytes) -> object:
    """JSON as readers of other languages read it: NaN, Infinity, -Infinity refused."""

    def refuse(token: str) -> object:
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


NON_FINITE = {
    "nan": float("nan"),
    "inf": math.inf,
    "minus_inf": -math.inf,
    "np_nan": np.float32("nan"),
    "array": np.array([[1.0, np.nan], [np.inf, 2.0]]),
    "list": [1, float("nan"), {"deep": -math.inf}],
    "positioners": {"positioners_start": {"roby": 0.5, "off": math.nan}},
}
NON_FINITE_STORED = {
    "nan": None,
    "inf": None,
    "minus_inf": None,
    "np_nan": None,
    "array": [[1.0, None], [None, 2.0]],
    "list": [1, None, {"deep": None}],
    "positioners": {"positioners_start": {"roby": 0.5, "off": None}},
}


def test_nan_and_infinities_are_stored_as_standard_json_null():
    text = dumps(NON_FINITE)
    assert _strict_loads(text) == NON_FINITE_STORED
    assert "NaN" not in text and "Infinity" not in text
    # What older versions stored still reads (Python's reader takes the tokens).
    assert math.isnan(loads(b'{"a": NaN}')["a"])


def test_published_scan_info_and_node_info_are_standard_json(session, store):
    with session.create_scan("nan", dict(NON_FINITE)) as scan:
        timer = scan.create_container("timer", info={"offset": math.nan})
        channel = timer.create_channel("c", info={"gain": [math.inf, 1.0]})
        channel.update_info({"zero": -math.inf})
        scan.prepared(info_update={"later": math.nan})
        channel.emit([1.0])
    raw = store.redis.hgetall(store.keys.scan("test_session", scan.number))
    info = _strict_loads(raw[b"info"])
    assert isinstance(info, dict)
    assert {k: info[k] for k in NON_FINITE_STORED} == NON_FINITE_STORED
    assert info["later"] is None
    node_infos = [
        _strict_loads(fields[b"info"])
        for _, fields in store.redis.xrange(store.keys.scan_events("test_session", scan.number))
        if fields.get(b"event") == b"NEW_NODE"
    ]
    assert {"offset": None}.items() <= node_infos[0].items()
    assert node_infos[1]["gain"] == [None, 1.0]
    updates = [_strict_loads(v) for k, v in raw.items() if k.startswith(b"node_info:")]
    assert updates == [{"zero": None}]


@pytest.mark.parametrize(
    "info, message",
    [
        ({"instrument": {"motor": object()}}, "scan_info['instrument']['motor']"),
        ({"a": {(1, 2): 3}}, "key (1, 2)"),
        ({"npoints": -1}, "scan_info['npoints'] must be >= 0"),
        ({"npoints": 2.5}, "scan_info['npoints'] must be Integral"),
        ({"title": 5}, "scan_info['title'] must be str"),
        ({"plots": "curve"}, "scan_info['plots']"),
        ({"raw": b"\xff\xfe"}, "not UTF-8"),
        ({"c": 1 + 2j}, "scan_info['c']"),
        ({"a": [1, {"b": (0, object())}]}, "scan_info['a'][1]['b'][1]: value <object"),
        ({"a": {"x": "\ud800"}}, "scan_info['a']['x']: text '\\ud800' is not valid Unicode"),
        ({"a": {"k\ud800": 1}}, "scan_info['a'] key: text 'k\\ud800' is not valid Unicode"),
        ({"a": {3: 1, "3": 2}}, "scan_info['a']: keys '3' and '3' would both be stored"),
        ({"d": [np.complex64(1j)]}, "scan_info['d'][0]: complex value"),
        ({"e": {"f": np.array(["x"], dtype=object)}}, "scan_info['e']['f']: numpy array"),
    ],
)
def test_malformed_scan_info_names_the_key(info, message):
    with pytest.raises(EncodingError) as exc:
        check_scan_info(info)
    assert message in str(exc.value)


def test_scan_info_that_contains_itself_is_refused_naming_where():
    loop: dict = {"a": [0]}
    loop["a"].append(loop)
    with pytest.raises(EncodingError, match=r"scan_info\['a'\]\[1\]: the value contains itself"):
        check_scan_info(loop)
    twice = [1.5]  # the same list in two places is a tree, not a loop
    assert check_scan_info({"x": twice, "y": {"z": twice}}) == {"x": [1.5], "y": {"z": [1.5]}}


def test_scan_info_must_be_a_mapping():
    with pytest.raises(EncodingError, match="must be a dict, got list"):
        check_scan_info([1, 2])
    assert json_safe(None) is None


def test_iso_time_has_the_utc_offset_of_that_instant(monkeypatch):
    import time

    monkeypatch.setenv("TZ", "Europe/Paris")
    time.tzset()
    try:
        assert iso_time(1767225600.0).endswith("+01:00")  # 2026-01-01, winter
        assert iso_time(1782864000.0).endswith("+02:00")  # 2026-07-01, summer
        monkeypatch.setenv("TZ", "America/New_York")
        time.tzset()
        assert iso_time(1767225600.0).startswith("2025-12-31T19:00:00")
        assert iso_time(1767225600.0).endswith("-05:00")
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_image_references():
    codec = ImageRefCodec("lima")
    refs = codec.batch([("/d/f_0000.h5", "/entry_0000/instrument/lima/data", 1, "HDF5")])
    assert refs == [ImageReference("/d/f_0000.h5", "/entry_0000/instrument/lima/data", 1, "HDF5")]
    assert codec.decode([codec.encode(refs)]) == refs
    with pytest.raises(EncodingError, match="reference 0"):
        codec.batch([("only", "three", 1)])
    with pytest.raises(EncodingError, match="negative"):
        codec.batch([("/f", "/d", -1, "HDF5")])


def test_image_references_decode_as_image_references_of_every_entry():
    codec = ImageRefCodec("lima")
    batches = [
        [(f"/d/f_{k:04d}.h5", "/entry_0000/measurement/data", i, "HDF5") for i in range(3)]
        for k in range(3)
    ]
    entries = [codec.encode(codec.batch(b)) for b in batches]
    entries.insert(1, codec.encode(2))  # a NOSAVING entry carries no references
    refs = codec.decode(entries)
    assert refs == [ImageReference(*r) for b in batches for r in b]
    assert all(type(r) is ImageReference for r in refs)
    assert refs[4].index_in_file == 1 and refs[4].file_path == "/d/f_0001.h5"


@pytest.mark.parametrize(
    "payload",
    [
        b'[["/f", "/d", 1]]',  # three fields
        b'[["/f", "/d", 1, "HDF5", "x"]]',  # five
        b"[5]",  # not a sequence
        b'[["/f", "/d", 1, "HDF5"]',  # not JSON
    ],
)
def test_corrupt_image_reference_entries_are_decoding_errors(payload):
    codec = ImageRefCodec("lima")
    good = codec.encode(codec.batch([("/f", "/d", 0, "HDF5")]))
    with pytest.raises(DecodingError, match="lima node 'lima': corrupt reference entry"):
        codec.decode([good, {b"n": b"1", b"r": payload}])
    assert codec.decode([good]) == [ImageReference("/f", "/d", 0, "HDF5")]


# ------------------------------------------------------------- the scalar fast path of emit

_CHANNEL_DTYPES = [np.dtype(c) for c in "?bBhHiIlLqQefdgFDG"]
_SCALAR_KINDS: list[type] = [float, int, bool] + list(
    dict.fromkeys(d.type for d in _CHANNEL_DTYPES)
)


def _probes(kind: type) -> list[object]:
    """Values of ``kind`` at the edges of every channel dtype: ranges, rounding, NaN, inf."""
    if kind is bool or kind is np.bool_:
        return [kind(True), kind(False)]
    if kind is int:
        return [
            0,
            1,
            -1,
            127,
            128,
            -129,
            255,
            256,
            2**15,
            2**16,
            2**31,
            2**32,
            2**53 + 1,
            -(2**53) - 1,
            2**63 - 1,
            2**63,
            -(2**63),
            2**64 - 1,
            65504,
            65520,
        ]
    dtype = np.dtype(kind)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = {0, 1, info.max, info.min, 127, 128, 255, 256, 65535, 65536, 2**31, 2**53 + 1}
        return [kind(v) for v in sorted(values) if info.min <= v <= info.max]
    values = [
        0.0,
        -0.0,
        1.1,
        1 / 3,
        65504.0,
        65520.0,
        3.4e38,
        3.5e38,
        1e300,
        float("inf"),
        float("-inf"),
        float("nan"),
        5e-324,
    ]
    with np.errstate(over="ignore"):
        return [kind(v) for v in values]


@pytest.mark.parametrize("dtype", _CHANNEL_DTYPES, ids=str)
def test_scalars_queued_as_they_are_give_the_bytes_batch_gives(dtype: np.dtype) -> None:
    """What emit queues without validation stacks into exactly what batch() would store."""
    codec = NumericCodec(dtype, (), name="diode")
    rules = codec.scalar_rules()
    for kind in _SCALAR_KINDS:
        for value in _probes(kind):
            rule = rules.get(kind, "absent")
            if rule == "absent" or (rule is not None and not rule[0] <= value <= rule[1]):
                continue  # takes batch(): nothing to compare
            stacked = np.array([value], dtype=codec.dtype)  # as the queue does, warnings are errors
            assert stacked.dtype == codec.dtype
            want = codec.batch(value)
            if dtype.char in "gG":  # 80-bit long doubles: their padding bytes are undefined
                np.testing.assert_array_equal(stacked, want, strict=True)
                assert np.signbit(stacked.real) == np.signbit(want.real), (kind, value, dtype)
            else:
                assert stacked.tobytes() == want.tobytes(), (kind, value, dtype)


@pytest.mark.parametrize("dtype", _CHANNEL_DTYPES, ids=str)
def test_scalar_types_batch_refuses_are_not_on_the_fast_path(dtype: np.dtype) -> None:
    codec = NumericCodec(dtype, (), name="diode")
    rules = codec.scalar_rules()
    for kind in _SCALAR_KINDS:
        value = kind(1)
        try:
            codec.batch(value)
        except EncodingError:
            assert kind not in rules, (kind, dtype)
    assert NumericCodec(dtype, (3,)).scalar_rules() == {}


def test_every_scalar_of_the_channel_dtype_is_on_the_fast_path() -> None:
    for dtype in _CHANNEL_DTYPES:
        assert NumericCodec(dtype, ()).scalar_rules()[dtype.type] is None, dtype
    assert NumericCodec("float64", ()).scalar_rules()[float] is None
    assert NumericCodec("float32", ()).scalar_rules()[np.float64] == (
        -float(np.finfo("f4").max),
        float(np.finfo("f4").max),
    )
    assert NumericCodec("int32", ()).scalar_rules()[np.int64] == (-(2**31), 2**31 - 1)
    assert NumericCodec("uint8", ()).scalar_rules()[int] == (0, 255)
