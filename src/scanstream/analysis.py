"""Simple analysis of a scanned curve, as BLISS offers it: ``peak``, ``cen``, ``com``, ``fwhm``.

The definitions follow BLISS's alignment functions, so that a number read in ``scanstream
web`` is the number a BLISS user expects:

* ``peak``: the x of the highest y;
* ``com``: the centre of mass of the curve above its minimum (the "visual" centroid: y minus
  its minimum, normalised), over the points sorted by x with one point per x value;
* ``cen`` and ``fwhm``: the two x where the curve crosses half-way between its minimum and
  its maximum, on each side of the peak (interpolated linearly between points); ``cen`` is
  their middle and ``fwhm`` their distance. When the peak touches an edge of the scan on
  one side, ``cen`` is the peak's x and the width is twice the distance from it to the one
  crossing (a partial peak).

Points where x or y is not finite are ignored. Every function returns NaN for a curve with
no finite point. Only numpy is used, so these run anywhere the package does::

    from scanstream import cen, com, fwhm, peak
    x = node_x.get(0, -1); y = node_y.get(0, -1)
    print(peak(x, y), cen(x, y), com(x, y), fwhm(x, y))
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from .exceptions import InvalidArgumentError

__all__ = ["CurveStats", "cen", "com", "curve_stats", "fwhm", "peak"]

ArrayLike = npt.ArrayLike


class CurveStats(NamedTuple):
    """The four numbers of :func:`curve_stats` (NaN where the curve has no finite point).

    Attributes
    ----------
    peak : float
        x of the highest y.
    peak_value : float
        The highest y.
    cen : float
        Middle of the half-maximum crossings.
    fwhm : float
        Full width at half maximum.
    com : float
        Centre of mass above the minimum.
    """

    peak: float
    peak_value: float
    cen: float
    fwhm: float
    com: float


def _finite_sorted(x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """x and y as float arrays of their finite pairs, sorted by x, one point per x value."""
    xs = np.asarray(x, dtype=float)
    ys = np.asarray(y, dtype=float)
    if xs.shape != ys.shape or xs.ndim != 1:
        raise InvalidArgumentError(
            f"x and y must be 1D arrays of one length, not of shapes {xs.shape} and {ys.shape}"
        )
    keep = np.isfinite(xs) & np.isfinite(ys)
    # np.unique sorts and keeps the first point of each x value.
    xs, first = np.unique(xs[keep], return_index=True)
    return xs, ys[keep][first]


def peak(x: ArrayLike, y: ArrayLike) -> float:
    """The x of the highest y.

    Parameters
    ----------
    x, y : array_like
        The curve, 1D, of one length.

    Returns
    -------
    float
        NaN when no point is finite.

    Raises
    ------
    InvalidArgumentError
        x and y are not 1D arrays of one length.
    """
    xs, ys = _finite_sorted(x, y)
    return float(xs[np.argmax(ys)]) if xs.size else float("nan")


def com(x: ArrayLike, y: ArrayLike) -> float:
    """The centre of mass of the curve above its minimum.

    Parameters
    ----------
    x, y : array_like
        The curve, 1D, of one length.

    Returns
    -------
    float
        ``sum(x * w)`` with ``w = (y - min(y)) / sum(y - min(y))``; the mean of x for a flat
        curve; NaN when no point is finite.

    Raises
    ------
    InvalidArgumentError
        x and y are not 1D arrays of one length.
    """
    xs, ys = _finite_sorted(x, y)
    if not xs.size:
        return float("nan")
    weights = ys - ys.min()
    total = weights.sum()
    if total <= 0:
        return float(xs.mean())
    return float(np.sum(xs * weights) / total)


def _crossing(x0: float, y0: float, x1: float, y1: float, level: float) -> float:
    """x where the segment (x0, y0)-(x1, y1) reaches ``level`` (linear interpolation)."""
    if y1 == y0:
        return (x0 + x1) / 2
    return x0 + (level - y0) * (x1 - x0) / (y1 - y0)


def _half_maximum(xs: np.ndarray, ys: np.ndarray) -> tuple[float, float]:
    """(cen, fwhm) of a sorted, finite curve of at least one point."""
    top = int(np.argmax(ys))
    if xs.size == 1:
        return float(xs[0]), 0.0
    level = (ys.min() + ys.max()) / 2
    if ys.max() == ys.min():  # flat: the whole range is "above half"
        return float((xs[0] + xs[-1]) / 2), float(xs[-1] - xs[0])
    below = ys < level
    # The last point below the level left of the peak, the first one right of it.
    left_below = np.flatnonzero(below[:top])
    right_below = np.flatnonzero(below[top:]) + top
    left = right = None
    if left_below.size:
        i = int(left_below[-1])
        left = _crossing(xs[i], ys[i], xs[i + 1], ys[i + 1], level)
    if right_below.size:
        j = int(right_below[0])
        right = _crossing(xs[j - 1], ys[j - 1], xs[j], ys[j], level)
    # The crossings are numpy scalars: float() so that CurveStats holds plain floats, as its
    # repr and JSON (the web view) show them.
    if left is not None and right is not None:
        return float((left + right) / 2), float(right - left)
    position = float(xs[top])
    half = left if left is not None else right
    if half is None:  # never below the level on either side: cannot happen unless flat
        return position, float(xs[-1] - xs[0])
    return position, float(2 * abs(position - half))


def cen(x: ArrayLike, y: ArrayLike) -> float:
    """The middle of the two half-maximum crossings around the peak.

    Parameters
    ----------
    x, y : array_like
        The curve, 1D, of one length.

    Returns
    -------
    float
        NaN when no point is finite. For a peak cut by an edge of the scan: the peak's x.

    Raises
    ------
    InvalidArgumentError
        x and y are not 1D arrays of one length.
    """
    xs, ys = _finite_sorted(x, y)
    return _half_maximum(xs, ys)[0] if xs.size else float("nan")


def fwhm(x: ArrayLike, y: ArrayLike) -> float:
    """The full width at half maximum (half-way between the minimum and the maximum).

    Parameters
    ----------
    x, y : array_like
        The curve, 1D, of one length.

    Returns
    -------
    float
        The distance between the two crossings; for a peak cut by an edge, twice the distance
        from the peak to its one crossing; 0 for a single point; NaN when no point is finite.

    Raises
    ------
    InvalidArgumentError
        x and y are not 1D arrays of one length.
    """
    xs, ys = _finite_sorted(x, y)
    return _half_maximum(xs, ys)[1] if xs.size else float("nan")


def curve_stats(x: ArrayLike, y: ArrayLike) -> CurveStats:
    """``peak``, its value, ``cen``, ``fwhm`` and ``com`` of one curve in one pass.

    Parameters
    ----------
    x, y : array_like
        The curve, 1D, of one length.

    Returns
    -------
    CurveStats
        NaN fields when no point is finite.

    Raises
    ------
    InvalidArgumentError
        x and y are not 1D arrays of one length.
    """
    xs, ys = _finite_sorted(x, y)
    if not xs.size:
        nan = float("nan")
        return CurveStats(nan, nan, nan, nan, nan)
    top = int(np.argmax(ys))
    center, width = _half_maximum(xs, ys)
    return CurveStats(float(xs[top]), float(ys[top]), center, width, com(xs, ys))
