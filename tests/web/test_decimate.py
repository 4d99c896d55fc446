"""The min/max decimation behind the live curves: bounded, faithful to extremes, incremental."""

from __future__ import annotations

import numpy as np
import pytest

from scanstream.web.decimate import Decimator


def _view(dec: Decimator) -> tuple[np.ndarray, np.ndarray]:
    index, values = dec.rows()
    tail_index, tail = dec.tail()
    return np.concatenate([index, tail_index]), np.concatenate([values, tail])


def test_short_scans_are_not_decimated() -> None:
    dec = Decimator(2, max_buckets=10)
    data = np.column_stack([np.arange(20.0), np.arange(20.0) ** 2])
    dec.append(data)
    index, values = _view(dec)
    assert dec.bucket_size == 1 and dec.generation == 0
    assert index.tolist() == list(range(20))
    assert np.array_equal(values, data)


def test_a_long_scan_stays_bounded_and_keeps_every_extreme() -> None:
    rng = np.random.default_rng(3)
    n = 100_003
    y = rng.normal(size=n)
    y[77_777] = 50.0  # a spike a plain stride would miss
    y[12_345] = -40.0
    dec = Decimator(2, max_buckets=100)
    for start in range(0, n, 997):  # in uneven blocks, as they come from Redis
        dec.append(np.column_stack([np.arange(start, min(n, start + 997)), y[start : start + 997]]))
    index, values = _view(dec)
    assert dec.count == n
    assert len(index) <= 4 * 100 + dec.bucket_size
    assert values[:, 1].max() == 50.0 and values[:, 1].min() == -40.0
    assert index[np.argmax(values[:, 1])] in range(
        77_777 - dec.bucket_size, 77_777 + dec.bucket_size
    )
    assert index[0] == 0 and index[-1] == n - 1
    assert np.all(np.diff(index) >= 0)  # rows stay in point order
    # Each row's value is one of the points of the bucket it stands for: the x column of a
    # monotonic motor gives its first and last point.
    assert set(values[:, 0].astype(int)) <= set(range(n))


def test_appending_in_blocks_gives_the_same_extremes_as_at_once() -> None:
    # Bucket boundaries may differ (merges happen at other moments), not what they show.
    data = np.column_stack([np.linspace(0, 1, 5000), np.sin(np.arange(5000.0))])
    whole, pieces = Decimator(2, max_buckets=64), Decimator(2, max_buckets=64)
    whole.append(data)
    for start in range(0, 5000, 313):
        pieces.append(data[start : start + 313])
    assert whole.count == pieces.count == 5000
    for dec in (whole, pieces):
        index, values = _view(dec)
        assert len(index) <= 4 * 64 + dec.bucket_size
        assert values.max(axis=0).tolist() == data.max(axis=0).tolist()
        assert values.min(axis=0).tolist() == data.min(axis=0).tolist()
        assert index[0] == 0 and index[-1] == 4999


def test_a_client_gets_only_new_buckets_until_a_merge() -> None:
    dec = Decimator(1, max_buckets=4)
    dec.append(np.arange(6.0))
    generation, seen = dec.generation, dec.nbuckets
    dec.append(np.arange(6.0, 8.0))
    assert dec.generation == generation
    index, _ = dec.rows(seen)
    assert index.tolist() == [6, 7]
    dec.append(np.arange(8.0, 9.0))  # 9 buckets > 2 * 4: merged
    assert dec.generation == generation + 1 and dec.bucket_size == 2


def test_nan_points_do_not_hide_the_extremes() -> None:
    dec = Decimator(1, max_buckets=2)
    dec.append(np.array([1.0, np.nan, 5.0, 2.0, np.nan, -3.0, 0.0, 4.0, 1.0, 1.0]))
    _, values = _view(dec)
    finite = values[np.isfinite(values)]
    assert finite.max() == 5.0 and finite.min() == -3.0


@pytest.mark.parametrize("n", [0, 1, 7])
def test_tiny_and_empty_blocks(n: int) -> None:
    dec = Decimator(3, max_buckets=2)
    dec.append(np.zeros((n, 3)))
    dec.append(np.zeros((0, 3)))
    index, values = _view(dec)
    assert dec.count == n == len(np.unique(index)) and values.shape[1] == 3
