"""How the scan writer joins the points it held during a batch before writing them."""

from __future__ import annotations

import numpy as np

from scanstream.writer.live_batch import _contiguous


def test_adjacent_arrays_are_written_as_one() -> None:
    chunks = [(0, np.arange(3.0)), (3, np.arange(3.0, 5.0)), (5, np.arange(5.0, 9.0))]
    [(first, values)] = _contiguous(chunks)
    assert first == 0
    np.testing.assert_array_equal(values, np.arange(9.0))


def test_a_gap_a_replay_or_another_dtype_starts_a_new_write() -> None:
    a, b = np.zeros(2), np.ones(2)
    ints = np.arange(2, dtype=np.int32)
    got = _contiguous([(0, a), (2, b), (6, a), (6, b), (8, ints)])
    assert [(f, len(v)) for f, v in got] == [(0, 4), (6, 2), (6, 2), (8, 2)]
    assert got[3][1].dtype == np.int32


def test_spectra_of_other_lengths_and_lists_of_references() -> None:
    s4, s5 = np.zeros((2, 4)), np.zeros((1, 5))
    assert [(f, v.shape) for f, v in _contiguous([(0, s4), (2, s5)])] == [(0, (2, 4)), (2, (1, 5))]
    refs = _contiguous([(0, ["a", "b"]), (2, ["c"]), (4, ["e"])])
    assert refs == [(0, ["a", "b", "c"]), (4, ["e"])]
