"""Host planning of histogram layouts over a fixed set of models (NumPy, once per plan)."""

from __future__ import annotations

import numpy as np

__all__ = ["histogram_layout", "bin_constant_values"]


def histogram_layout(bins: np.ndarray, k: int) -> tuple[tuple, np.ndarray | None]:
    """How to histogram weights over a *fixed* set of models with bins ``bins`` (host,
    once per plan) without a scatter (XLA's CPU scatter materialises per-row
    indices and is several times slower than the rest of a summary).

    Returns ``(layout, index)``: ``("runs", k, r)`` when model ``i`` is in bin
    ``i // r`` (a reshape and sum), ``("strided", k, r)`` when it is in bin
    ``i % k``, ``("gather", k, c)`` with ``index`` (k, c) listing each bin's models
    (padded with the out-of-range index ``n_models``) when that padding at most
    doubles the work, else ``("scatter",)``. Models outside the edges (bin -1)
    are left out.
    """
    bins = np.asarray(bins, np.int64)
    n = bins.size
    ar = np.arange(n)
    if n % k == 0 and np.all(bins >= 0):
        r = n // k
        if np.array_equal(bins, ar // r):
            return ("runs", k, r), None
        if np.array_equal(bins, ar % k):
            return ("strided", k, r), None
    inside = bins >= 0
    counts = np.bincount(bins[inside], minlength=k)
    c = int(counts.max()) if counts.size else 0
    if c == 0 or k * c > 2 * n:
        return ("scatter",), None
    order = np.argsort(np.where(inside, bins, k), kind="stable")[: int(inside.sum())]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = np.arange(order.size) - np.repeat(starts, counts)
    index = np.full((k, c), n, np.int32)
    index[bins[order], slot] = order
    return ("gather", k, c), index


def bin_constant_values(values: np.ndarray, bins: np.ndarray, k: int) -> np.ndarray | None:
    """``(k,)`` the value shared by all models of each bin, or None when some bin mixes
    values or some model lies outside the bins (host, once per plan). Template x
    redshift grids summarised on bins centred on the grid redshifts qualify."""
    bins = np.asarray(bins, np.int64)
    values = np.asarray(values)
    if bins.size == 0 or np.any(bins < 0):
        return None
    lo = np.full(k, np.inf)
    hi = np.full(k, -np.inf)
    np.minimum.at(lo, bins, values)
    np.maximum.at(hi, bins, values)
    filled = np.isfinite(lo)
    if not np.array_equal(lo[filled], hi[filled]):
        return None
    return np.where(filled, lo, 0.0).astype(values.dtype)
