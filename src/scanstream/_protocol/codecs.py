"""Encoding of data batches (raw little-endian bytes) into stream entry fields.

Data entries never carry their dtype or shape: those are stored once in the node's
NEW_NODE entry, and each data entry holds only the points (field ``d``), their count
(``n``) and, for variable-length 1D channels, the length of each point (``l``).
Nothing is pickled: any language that reads JSON and raw bytes can read the stream.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, cast, overload

import numpy as np
import numpy.typing as npt

from ..exceptions import DecodingError, EncodingError
from ..models import ImageReference

if TYPE_CHECKING:
    from typing_extensions import Buffer

Fields = dict[bytes, bytes]

_new_tuple = tuple.__new__


@dataclass(frozen=True)
class ScatteredFields:
    """A numeric entry whose data field ``d`` is left as consecutive buffers, never joined.

    ``fields`` holds the other fields (the count ``n``), ``parts`` the arrays whose bytes, one
    after the other, are ``d``. What to do with them is the transport's business: send them as
    they are (:class:`scanstream._transport.vectored.Scattered`) or join them. The arrays must
    not change until the entry is sent.
    """

    fields: Fields
    parts: list[npt.NDArray[Any]]

    def joined(self) -> Fields:
        """The same entry with ``d`` joined into one bytes object (one copy)."""
        # Arrays are buffers; numpy's stubs declare it only for Python >= 3.12.
        return {**self.fields, b"d": b"".join(cast("list[Buffer]", self.parts))}


#: dtype kinds a channel may hold: bool, signed/unsigned integers, floats, complex.
NUMERIC_KINDS = "biufc"

# The numpy scalar types of those kinds (np.longlong and np.int64 may be one type or two).
_SCALAR_TYPES: tuple[type, ...] = tuple(
    dict.fromkeys(
        np.dtype(c).type for c in "?" + np.typecodes["AllInteger"] + np.typecodes["AllFloat"]
    )
)


# ----------------------------------------------------------------------------- data codecs


def check_dtype(dtype: npt.DTypeLike, name: str) -> np.dtype[Any]:
    """Return the numpy dtype for a channel, or raise :class:`EncodingError`."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise EncodingError(f"channel {name!r}: {dtype!r} is not a numpy dtype") from None
    if dt.kind not in NUMERIC_KINDS or dt.fields is not None or dt.subdtype is not None:
        raise EncodingError(
            f"channel {name!r}: dtype {dt} is not supported; channels hold bool, integer, "
            "float or complex numbers (put text in scan_info or node info)"
        )
    return dt.newbyteorder("=") if dt.byteorder not in "=|" else dt


def check_shape(shape: Sequence[int] | int, name: str, what: str = "channel") -> tuple[int, ...]:
    """Return a channel's point shape as a tuple, or raise :class:`EncodingError`.

    ``()`` is a scalar (0D) channel, ``(n,)`` a spectrum, ``(-1,)`` a 1D channel whose
    length varies from point to point. A zero size (``(0,)``, ``(3, 0)``) is refused: its
    points would hold no value, and the writer cannot store them. ``what`` names the kind of
    node in the message.
    """
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape),)
    try:
        out = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise EncodingError(f"{what} {name!r}: shape {shape!r} is not a tuple of ints") from None
    if out == (-1,):
        return out
    if any(s <= 0 for s in out):
        raise EncodingError(
            f"{what} {name!r}: shape {out} is invalid; use positive sizes (a zero size holds "
            "no value), or (-1,) for a 1D channel of variable length"
        )
    return out


@functools.cache
def _scalar_rules(dt: np.dtype[Any]) -> Mapping[type, tuple[Any, Any] | None]:
    """:meth:`NumericCodec.scalar_rules` of a 0D channel of dtype ``dt`` (read-only)."""
    rules: dict[type, tuple[Any, Any] | None] = {}
    sources: list[tuple[type, np.dtype[Any]]] = [
        (float, np.dtype(np.float64)),
        (int, np.dtype(np.int64)),
        (bool, np.dtype(np.bool_)),
    ]
    sources += [(t, np.dtype(t)) for t in _SCALAR_TYPES]
    for kind, src in sources:
        both_int = src.kind in "iu" and dt.kind in "iu"
        if not (both_int or np.can_cast(src, dt, casting="same_kind")):
            continue  # refused: batch() says why
        if dt.kind in "iu" and (kind is int or not np.can_cast(src, dt, casting="safe")):
            info = np.iinfo(dt)
            rules[kind] = (int(info.min), int(info.max))
        elif kind is int:
            # Python ints convert through a double: exact up to 2**53 (and a float16 channel
            # holds less). Larger ones go through batch() (int64, one rounding).
            if dt.kind in "fc":
                exact = min(2**53, int(np.finfo(dt).max))
                rules[kind] = (-exact, exact)
        elif np.can_cast(src, dt, casting="safe"):
            rules[kind] = None
        elif dt.kind == "f" and src.kind in "iuf":
            # A narrowing to a float (float64 into float32): rounding, as batch() does,
            # unless the value overflows (numpy warns then: batch() does that, at emit).
            top = float(np.finfo(dt).max)
            rules[kind] = (-top, top)
        # Anything else (complex128 into complex64, ...) goes through batch().
    return MappingProxyType(rules)


class NumericCodec:
    """Validates, encodes and decodes batches of points of one numeric channel."""

    def __init__(self, dtype: npt.DTypeLike, shape: Sequence[int], name: str = "") -> None:
        self.name = name
        self.dtype = check_dtype(dtype, name)
        self.shape = check_shape(shape, name)
        self.variable = self.shape == (-1,)
        # Stored little-endian whatever the machine, so the bytes mean the same everywhere.
        self.wire_dtype = self.dtype.newbyteorder("<")
        self.point_size = int(np.prod(self.shape)) if not self.variable else -1

    # -- validation --------------------------------------------------------------------
    def _cast(self, arr: np.ndarray) -> np.ndarray:
        # Integers go into any integer channel (the range is checked below); otherwise the
        # kind must not change (no floats silently truncated into an integer channel).
        both_int = arr.dtype.kind in "iu" and self.dtype.kind in "iu"
        if arr.dtype.kind not in NUMERIC_KINDS or not (
            both_int or np.can_cast(arr.dtype, self.dtype, casting="same_kind")
        ):
            raise EncodingError(
                f"channel {self.name!r}: got values of dtype {arr.dtype}, which cannot be "
                f"stored as {self.dtype} without changing their kind; convert them first"
            )
        if (
            arr.dtype != self.dtype
            and arr.dtype.kind in "iu"
            and self.dtype.kind in "iu"
            and not np.can_cast(arr.dtype, self.dtype, casting="safe")
            and arr.size
        ):
            info = np.iinfo(self.dtype)
            if arr.min() < info.min or arr.max() > info.max:
                raise EncodingError(
                    f"channel {self.name!r}: values from {arr.min()} to {arr.max()} do not "
                    f"fit in {self.dtype}"
                )
        return np.ascontiguousarray(arr, dtype=self.dtype)

    def scalar_rules(self) -> Mapping[type, tuple[Any, Any] | None]:
        """Which scalars a 0D channel may queue as they are, without :meth:`batch`.

        A step scan emits one scalar per call; :meth:`batch` costs microseconds per call. The
        scalars of a type in this table are stacked into an array of the channel's dtype
        later (``np.array(points, dtype)``), which gives the bytes :meth:`batch` would:

        - ``None``: every value converts exactly, or as :meth:`batch` would round it (Python
          floats into float32: rounding only);
        - ``(low, high)``: values within these bounds convert so; any other value (out of
          range, NaN, infinite) must go through :meth:`batch`, which refuses it with its
          message or converts it the way it does.

        Types :meth:`batch` refuses (floats into an integer channel, ...) are absent: they
        take the validating path and its error. Empty for channels that are not 0D. The
        table of a dtype is made once (tens of microseconds: part of a scan's fixed cost).
        """
        return _scalar_rules(self.dtype) if self.shape == () else MappingProxyType({})

    def batch(self, data: Any) -> np.ndarray | list[np.ndarray]:
        """Return ``data`` as a batch of points, or raise :class:`EncodingError`.

        Fixed shapes give an array of shape ``(n,) + shape``; ``data`` may be one point
        (of the point shape) or several. Variable-length channels give a list of 1D arrays;
        ``data`` may be one 1D array, a 2D array (one point per row) or a list of 1D arrays.
        """
        if self.variable:
            return self._variable_batch(data)
        try:
            arr = np.asarray(data)
        except (ValueError, TypeError) as exc:
            raise EncodingError(f"channel {self.name!r}: cannot convert data: {exc}") from None
        if arr.shape == self.shape:
            arr = arr.reshape((1,) + self.shape)
        elif arr.ndim != len(self.shape) + 1 or arr.shape[1:] != self.shape:
            raise EncodingError(
                f"channel {self.name!r}: got data of shape {arr.shape}; expected one point of "
                f"shape {self.shape} or a batch of shape (n,) + {self.shape}"
            )
        if arr.shape[0] == 0:
            raise EncodingError(f"channel {self.name!r}: empty batch, nothing to emit")
        return self._cast(arr)

    def _variable_batch(self, data: Any) -> list[np.ndarray]:
        if isinstance(data, np.ndarray):
            if data.ndim == 1 and data.dtype != object:
                points: list[Any] = [data]
            elif data.ndim == 2 or data.ndim == 1:
                points = list(data)
            else:
                raise EncodingError(
                    f"channel {self.name!r}: got an array of shape {data.shape}; a variable-"
                    "length 1D channel takes one 1D array or a list of them"
                )
        elif isinstance(data, (list, tuple)):
            if data and all(np.ndim(x) == 0 for x in data):
                points = [data]
            else:
                points = list(data)
        else:
            raise EncodingError(
                f"channel {self.name!r}: got {type(data).__name__}; a variable-length 1D "
                "channel takes one 1D array or a list of them"
            )
        if not points:
            raise EncodingError(f"channel {self.name!r}: empty batch, nothing to emit")
        out = []
        for i, point in enumerate(points):
            arr = np.asarray(point)
            if arr.ndim != 1:
                raise EncodingError(
                    f"channel {self.name!r}: point {i} has shape {arr.shape}; each point of a "
                    "variable-length 1D channel must be 1D"
                )
            out.append(self._cast(arr))
        return out

    # -- wire format -------------------------------------------------------------------
    @overload
    def encode(
        self, batch: np.ndarray | list[np.ndarray], *, scattered: Literal[False] = False
    ) -> Fields: ...

    @overload
    def encode(
        self, batch: np.ndarray | list[np.ndarray], *, scattered: Literal[True]
    ) -> ScatteredFields | Fields: ...

    def encode(
        self, batch: np.ndarray | list[np.ndarray], *, scattered: bool = False
    ) -> ScatteredFields | Fields:
        """Encode validated points as the fields of one stream entry.

        Fixed shapes: one batch (an array of shape ``(n,) + shape``) or a list of consecutive
        batches. Variable-length channels: a list of 1D points.

        With ``scattered`` (fixed shapes), a :class:`ScatteredFields` whose data is the
        batches' own buffers, not joined: the batches must not change until the entry is
        sent. Otherwise (and always for variable-length channels) the fields, with ``d``
        joined into one bytes object in one copy.
        """
        if self.variable:
            assert isinstance(batch, list)
            lengths = np.array([len(p) for p in batch], dtype="<i8")
            data = b"".join(p.astype(self.wire_dtype, copy=False).tobytes() for p in batch)
            return {b"n": b"%d" % len(batch), b"d": data, b"l": lengths.tobytes()}
        batches = [batch] if isinstance(batch, np.ndarray) else batch
        # Copies only to change the byte order (big-endian machines) or make a slice contiguous.
        parts = [np.ascontiguousarray(p, dtype=self.wire_dtype) for p in batches]
        entry = ScatteredFields({b"n": b"%d" % sum(p.shape[0] for p in parts)}, parts)
        # Joined: one copy, straight from the batches into the entry (no concatenate, no tobytes).
        return entry if scattered else entry.joined()

    def decode(self, entries: Sequence[Fields]) -> np.ndarray:
        """Decode consecutive entries into one batch.

        Fixed shapes give an array of shape ``(n,) + shape``. Variable-length channels give
        an object array of shape ``(n,)`` whose items are 1D arrays (no padding).
        """
        try:
            if self.variable:
                return self._decode_variable(entries)
            if len(entries) == 1:  # a live reader's usual batch: one entry per event
                raw = bytearray(entries[0][b"d"])
                count = int(entries[0][b"n"])
            else:
                raw = bytearray().join(e[b"d"] for e in entries)
                count = sum(int(e[b"n"]) for e in entries)
            arr = np.frombuffer(raw, dtype=self.wire_dtype)
            arr = arr.reshape((count,) + self.shape)
        except (KeyError, ValueError) as exc:
            raise DecodingError(
                f"channel {self.name!r}: corrupt data entry in Redis ({exc}); expected "
                f"points of {self.dtype} with shape {self.shape}"
            ) from None
        return arr if self.wire_dtype == self.dtype else arr.astype(self.dtype)

    def _decode_variable(self, entries: Sequence[Fields]) -> np.ndarray:
        points: list[np.ndarray] = []
        for e in entries:
            lengths = np.frombuffer(e[b"l"], dtype="<i8")
            values = np.frombuffer(bytearray(e[b"d"]), dtype=self.wire_dtype)
            if int(e[b"n"]) != len(lengths) or lengths.sum() != len(values):
                raise ValueError("point lengths do not match the data")
            offsets = np.concatenate(([0], np.cumsum(lengths)))
            points.extend(values[offsets[i] : offsets[i + 1]] for i in range(len(lengths)))
        out = np.empty(len(points), dtype=object)
        for i, p in enumerate(points):
            out[i] = p if self.wire_dtype == self.dtype else p.astype(self.dtype)
        return out


class ImageRefCodec:
    """Encodes lima image references (or, with NOSAVING, just image counts)."""

    def __init__(self, name: str = "", saved: bool = True) -> None:
        self.name = name
        self.saved = saved

    def batch(self, references: Any) -> list[ImageReference]:
        """Validate a sequence of references: ImageReference or 4-tuples."""
        if isinstance(references, ImageReference) or (
            isinstance(references, tuple)
            and len(references) == 4
            and isinstance(references[0], str)
        ):
            references = [references]
        out = []
        for i, ref in enumerate(references):
            try:
                file_path, path_in_file, index, fmt = ref
                out.append(ImageReference(str(file_path), str(path_in_file), int(index), str(fmt)))
            except (TypeError, ValueError):
                raise EncodingError(
                    f"lima node {self.name!r}: reference {i} ({ref!r}) is not "
                    "(file_path, path_in_file, index_in_file, file_format)"
                ) from None
            if out[-1].index_in_file < 0:
                raise EncodingError(f"lima node {self.name!r}: negative index_in_file in {ref!r}")
        if not out:
            raise EncodingError(f"lima node {self.name!r}: empty batch, nothing to emit")
        return out

    def encode(self, batch: list[ImageReference] | int) -> Fields:
        """Encode references (saved images) or a count (NOSAVING)."""
        if isinstance(batch, int):
            return {b"n": b"%d" % batch}
        return {b"n": b"%d" % len(batch), b"r": json.dumps([list(r) for r in batch]).encode()}

    def decode(self, entries: Sequence[Fields]) -> list[ImageReference]:
        """Decode entries into references (an empty list for NOSAVING entries)."""
        out: list[ImageReference] = []
        try:
            for e in entries:
                if b"r" in e:
                    # tuple.__new__ through map: the tuples are built in C, not by the
                    # namedtuple's __new__ per reference (it was 40 % of the decoding).
                    out.extend(map(_new_tuple, repeat(ImageReference), json.loads(e[b"r"])))
            if any(n != 4 for n in set(map(len, out))):
                bad = next(r for r in out if len(r) != 4)
                raise ValueError(f"{list(bad)!r} is not 4 fields")
        except (ValueError, TypeError) as exc:
            raise DecodingError(
                f"lima node {self.name!r}: corrupt reference entry: {exc}"
            ) from None
        return out


class ScanRefCodec:
    """Encodes references to other scans (scan groups): ``(session, number)`` pairs."""

    def __init__(self, name: str = "") -> None:
        self.name = name

    def encode(self, batch: list[tuple[str, int]]) -> Fields:
        return {b"n": b"%d" % len(batch), b"j": json.dumps(batch).encode()}

    def decode(self, entries: Sequence[Fields]) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        try:
            for e in entries:
                out.extend((str(s), int(n)) for s, n in json.loads(e[b"j"]))
        except (ValueError, TypeError, KeyError) as exc:
            raise DecodingError(
                f"scan reference node {self.name!r}: corrupt entry: {exc}"
            ) from None
        return out


def entry_count(fields: Fields) -> int:
    """Number of points in a data entry."""
    try:
        return int(fields[b"n"])
    except (KeyError, ValueError):
        raise DecodingError(f"data entry without a valid point count: {sorted(fields)}") from None


def is_finite_number(value: Any) -> bool:
    """True for a real number that is not NaN or infinite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def fill_value(dtype: npt.DTypeLike) -> Any:
    """What a missing element of a channel of ``dtype`` reads as: NaN, 0 or False.

    The one padding rule of the data model (floats and complex: NaN; integers: 0; bool:
    False), used where variable-length points are padded to a common length and for the
    elements of a file's dataset that no point has written.

    Raises
    ------
    EncodingError
        ``dtype`` is not a dtype a channel can hold (:data:`NUMERIC_KINDS`).
    """
    dt = np.dtype(dtype)
    value: float | bool
    if dt.kind in "fc":
        value = np.nan
    elif dt.kind == "b":
        value = False
    elif dt.kind in "iu":
        value = 0
    else:
        raise EncodingError(
            f"channel dtype {dt} is not supported; publish the channel as numbers or bool"
        )
    return np.asarray(value, dtype=dt)[()]  # a scalar of that dtype
