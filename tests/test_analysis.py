"""peak, cen, com and fwhm as BLISS defines them (scanstream.analysis)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import scanstream
from scanstream import InvalidArgumentError, cen, com, curve_stats, fwhm, peak

SIGMA_TO_FWHM = 2 * math.sqrt(2 * math.log(2))


def _gauss(
    x: np.ndarray, center: float, sigma: float, height: float = 100.0, bg: float = 5.0
) -> np.ndarray:
    return bg + height * np.exp(-0.5 * ((x - center) / sigma) ** 2)


def test_a_gaussian_peak() -> None:
    x = np.linspace(-2, 3, 501)
    y = _gauss(x, 0.7, 0.2)
    assert peak(x, y) == pytest.approx(0.7, abs=0.01)
    assert cen(x, y) == pytest.approx(0.7, abs=1e-3)
    # Half-way between min and max: with a background, the minimum is the baseline.
    assert fwhm(x, y) == pytest.approx(SIGMA_TO_FWHM * 0.2, rel=1e-2)
    assert com(x, y) == pytest.approx(0.7, abs=1e-3)
    stats = curve_stats(x, y)
    assert stats.peak == peak(x, y) and stats.cen == cen(x, y) and stats.fwhm == fwhm(x, y)
    assert stats.peak_value == pytest.approx(105.0, rel=1e-3)


@pytest.mark.parametrize(
    "y",
    [[0.0, 0.0, 10.0, 0.0, 0.0], [10.0, 8.0, 6.0, 4.0, 2.0], [0.0, 2.0, 4.0, 6.0, 10.0]],
    ids=["two crossings", "cut left", "cut right"],
)
def test_every_number_is_a_plain_float(y: list[float]) -> None:
    # As docs/web.md shows it: CurveStats(peak=..., fwhm=...), not np.float64(...).
    stats = curve_stats(np.arange(5.0), np.array(y))
    assert [type(value) for value in stats] == [float] * 5, repr(stats)
    assert "np." not in repr(stats)


def test_order_duplicates_and_non_finite_points_do_not_matter() -> None:
    x = np.linspace(0, 1, 101)
    y = _gauss(x, 0.4, 0.1)
    order = np.random.default_rng(0).permutation(x.size)
    xs = np.concatenate([x[order], [0.4, np.nan, 0.5]])
    ys = np.concatenate([y[order], [999.0, 7.0, np.inf]])
    # x=0.4 appears twice: the first point of each x value counts (the 999 comes later).
    assert cen(xs, ys) == pytest.approx(cen(x, y))
    assert fwhm(xs, ys) == pytest.approx(fwhm(x, y))
    assert com(xs, ys) == pytest.approx(com(x, y))


def test_crossings_are_interpolated_between_points() -> None:
    x = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    y = np.array([0.0, 0.0, 10.0, 0.0, 0.0])  # half = 5, crossed at 1.5 and 2.5
    assert cen(x, y) == 2.0 and fwhm(x, y) == 1.0
    assert com(x, y) == 2.0 and peak(x, y) == 2.0


def test_a_peak_cut_by_the_edge_of_the_scan() -> None:
    x = np.linspace(0, 1, 11)
    y = 10 - 10 * x  # falls from the first point: crossed once, at 0.5
    assert peak(x, y) == 0.0
    assert cen(x, y) == 0.0  # the peak's x
    assert fwhm(x, y) == pytest.approx(1.0)  # twice the distance to the one crossing


def test_degenerate_curves() -> None:
    assert fwhm([3.0], [1.0]) == 0.0 and cen([3.0], [1.0]) == 3.0
    flat_x = np.arange(5.0)
    assert com(flat_x, np.ones(5)) == 2.0
    assert fwhm(flat_x, np.ones(5)) == 4.0
    for func in (peak, cen, com, fwhm):
        assert math.isnan(func([], []))
        assert math.isnan(func([1.0, 2.0], [np.nan, np.nan]))
    assert all(math.isnan(v) for v in curve_stats([], []))


def test_wrong_shapes_are_refused_with_the_shapes() -> None:
    with pytest.raises(InvalidArgumentError, match=r"\(3,\) and \(2,\)"):
        peak([1, 2, 3], [1, 2])
    with pytest.raises(InvalidArgumentError):
        cen(np.zeros((2, 2)), np.zeros((2, 2)))


def test_exported_from_the_package() -> None:
    for name in ("peak", "cen", "com", "fwhm", "curve_stats", "CurveStats"):
        assert name in scanstream.__all__
