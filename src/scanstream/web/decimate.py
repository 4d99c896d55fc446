"""Min/max decimation of a growing scan: what the browser draws stays bounded, whatever its length.

A :class:`Decimator` takes the aligned 0D columns of one scan (motor positions, elapsed time,
counters), a block of points at a time, and keeps them as *buckets* of consecutive points:
for each column, the minimum and the maximum of the bucket and where in the bucket each came.
A bucket is drawn as two rows (its two extremes, in the order they came), so a spike inside
a bucket still shows on the plot. While the scan has no more than ``2 * max_buckets`` points,
buckets hold one point each (nothing is decimated); past that, neighbouring buckets are merged
in pairs (the bucket size doubles), so the view never exceeds ``4 * max_buckets`` rows plus
the points of the bucket being filled. The cost of a new point is O(1) amortised: a merge
touches at most ``2 * max_buckets`` buckets, and merges double the bucket size.

Each merge increases :attr:`Decimator.generation`: a client that saw an older generation gets
the whole view again; otherwise only the buckets completed since its last update, and the
points of the bucket being filled (the *tail*).
"""

from __future__ import annotations

import numpy as np

__all__ = ["Decimator"]


class Decimator:
    """Aligned columns of one scan as at most ``2 * max_buckets`` min/max buckets.

    Parameters
    ----------
    ncolumns : int
        Number of columns (all appended blocks have that many).
    max_buckets : int
        The view has between ``max_buckets`` and ``2 * max_buckets`` buckets once decimated.
    """

    def __init__(self, ncolumns: int, max_buckets: int = 2000) -> None:
        self.ncolumns = ncolumns
        self.max_buckets = max_buckets
        #: Points per bucket of the buckets completed from now on (a power of two).
        self.bucket_size = 1
        #: Increased when buckets were merged: the earlier rows are no longer valid.
        self.generation = 0
        #: Points appended so far.
        self.count = 0
        empty_f = np.empty((0, ncolumns))
        empty_i = np.empty((0, ncolumns), dtype=np.int64)
        self._start = np.empty(0, dtype=np.int64)  # index of each bucket's first point
        self._stop = np.empty(0, dtype=np.int64)  # one past its last point
        self._lo, self._hi = empty_f, empty_f.copy()  # minimum and maximum, per column
        self._ilo, self._ihi = empty_i, empty_i.copy()  # point index of each
        self._pending = empty_f.copy()  # points of the bucket being filled

    @property
    def nbuckets(self) -> int:
        """Number of completed buckets."""
        return int(self._start.size)

    def append(self, block: np.ndarray) -> None:
        """Add points: ``block`` has shape ``(n, ncolumns)``, in point order."""
        block = np.asarray(block, dtype=float).reshape(-1, self.ncolumns)
        if not block.size:
            return
        first_pending = self.count - len(self._pending)
        self.count += len(block)
        pending = np.concatenate([self._pending, block]) if len(self._pending) else block
        size = self.bucket_size
        nfull = len(pending) // size
        if nfull:
            full = pending[: nfull * size].reshape(nfull, size, self.ncolumns)
            # NaN never wins a comparison here: it would hide the bucket's real extremes.
            filled_lo = np.where(np.isnan(full), np.inf, full)
            filled_hi = np.where(np.isnan(full), -np.inf, full)
            ilo = np.argmin(filled_lo, axis=1)
            ihi = np.argmax(filled_hi, axis=1)
            lo = np.take_along_axis(full, ilo[:, None, :], axis=1)[:, 0, :]
            hi = np.take_along_axis(full, ihi[:, None, :], axis=1)[:, 0, :]
            starts = first_pending + size * np.arange(nfull, dtype=np.int64)
            self._start = np.concatenate([self._start, starts])
            self._stop = np.concatenate([self._stop, starts + size])
            self._lo = np.concatenate([self._lo, lo])
            self._hi = np.concatenate([self._hi, hi])
            self._ilo = np.concatenate([self._ilo, ilo + starts[:, None]])
            self._ihi = np.concatenate([self._ihi, ihi + starts[:, None]])
        self._pending = pending[nfull * size :].copy()
        while self.nbuckets > 2 * self.max_buckets:
            self._merge()

    def _merge(self) -> None:
        """Merge neighbouring buckets in pairs (an odd last one stays as it is)."""
        n = self.nbuckets - self.nbuckets % 2
        a, b = slice(0, n, 2), slice(1, n, 2)
        # A bucket of NaN points only has NaN extremes: its neighbour's win.
        take_b_lo = (self._lo[b] < self._lo[a]) | np.isnan(self._lo[a])
        take_b_hi = (self._hi[b] > self._hi[a]) | np.isnan(self._hi[a])
        lo = np.where(take_b_lo, self._lo[b], self._lo[a])
        hi = np.where(take_b_hi, self._hi[b], self._hi[a])
        ilo = np.where(take_b_lo, self._ilo[b], self._ilo[a])
        ihi = np.where(take_b_hi, self._ihi[b], self._ihi[a])
        rest = slice(n, None)
        self._start = np.concatenate([self._start[a], self._start[rest]])
        self._stop = np.concatenate([self._stop[b], self._stop[rest]])
        self._lo = np.concatenate([lo, self._lo[rest]])
        self._hi = np.concatenate([hi, self._hi[rest]])
        self._ilo = np.concatenate([ilo, self._ilo[rest]])
        self._ihi = np.concatenate([ihi, self._ihi[rest]])
        self.bucket_size *= 2
        self.generation += 1

    def rows(self, from_bucket: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """The rows of the completed buckets from ``from_bucket`` on.

        Returns
        -------
        index : ndarray of int64, shape (m,)
            The point index each row stands for (a bucket's first and last point).
        values : ndarray of float, shape (m, ncolumns)
            One row per point for one-point buckets, two per bucket otherwise: for each
            column its two extremes in the order they came.
        """
        sel = slice(from_bucket, None)
        start, stop = self._start[sel], self._stop[sel]
        lo, hi, ilo, ihi = self._lo[sel], self._hi[sel], self._ilo[sel], self._ihi[sel]
        single = (stop - start) == 1
        lo_first = ilo <= ihi
        first = np.where(lo_first, lo, hi)
        second = np.where(lo_first, hi, lo)
        # Interleave (first, second) per bucket, then drop the duplicate of one-point buckets.
        values = np.stack([first, second], axis=1).reshape(-1, self.ncolumns)
        index = np.stack([start, stop - 1], axis=1).reshape(-1)
        keep = np.ones(len(index), dtype=bool)
        keep[1::2] = ~single
        return index[keep], values[keep]

    def tail(self) -> tuple[np.ndarray, np.ndarray]:
        """The points of the bucket being filled, as rows (index, values), not decimated."""
        first = self.count - len(self._pending)
        return np.arange(first, self.count, dtype=np.int64), self._pending
