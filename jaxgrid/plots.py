"""Plots (optional extra ``plot``: matplotlib): corner plots, PIT, z_phot vs z_true.

`corner_for_targets` is also available as ``GridFitter.corner_for_targets``.
Every function draws into a given ``ax``/``fig`` or makes one, and returns the
matplotlib objects so figures can be tested and customised.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "corner_for_targets",
    "weighted_quantiles",
    "hpd_levels",
    "pit_histogram",
    "zphot_vs_ztrue",
    "plot_posterior_over_target",
]


def _plt():
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - optional extra
        raise ImportError("plots need matplotlib: pip install 'jaxgrid[plot]'.") from err
    return plt


def weighted_quantiles(values: Any, weights: Any, qs: Sequence[float]) -> np.ndarray:
    """Quantiles of a weighted sample: the weighted CDF (midpoint rule) interpolated."""
    v = np.asarray(values, np.float64)
    w = np.asarray(weights, np.float64)
    order = np.argsort(v, kind="stable")
    v, w = v[order], w[order]
    cdf = (np.cumsum(w) - 0.5 * w) / w.sum()
    return np.interp(np.asarray(qs, np.float64), cdf, v)


def hpd_levels(mass: Any, levels: Sequence[float]) -> np.ndarray:
    """Cell-mass thresholds whose highest cells enclose each fraction in ``levels``.

    The cells with mass >= threshold_l hold at least ``levels[l]`` of the total
    (the highest-posterior-density region on the grid of cells).
    """
    m = np.sort(np.asarray(mass, np.float64).ravel())[::-1]
    cum = np.cumsum(m) / m.sum()
    idx = np.minimum(np.searchsorted(cum, np.asarray(levels, np.float64)), m.size - 1)
    return m[idx]


def _edges_for(values: np.ndarray, bins: Any) -> np.ndarray:
    if np.ndim(bins) == 0:
        lo, hi = float(values.min()), float(values.max())
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        return np.linspace(lo, hi, int(bins) + 1)
    return np.asarray(bins, np.float64)


def corner_for_targets(
    fitter,
    x_native: Any,
    sigma_native: Any,
    target_cols: Sequence[str | int],
    true_target_vals: Sequence[float] | None = None,
    candidate_idx: Any = None,
    bins: Any = 50,
    quantiles: Sequence[float] = (0.16, 0.5, 0.84),
    levels: Sequence[float] = (0.68, 0.95),
    upper_limits: Any = None,
    fig=None,
):
    """Corner plot of one object's posterior over ``target_cols``.

    Diagonal: weighted 1-D histograms with the ``quantiles`` (dashed), the
    best model (solid) and the mean (dotted) marked, and the truth if given.
    Below: 2-D weighted histograms with highest-posterior-density contours
    enclosing ``levels`` of the mass. ``bins``: an int for every target, or a
    list with one int or edge array per target (x and y bin counts may differ).

    Returns ``(fig, axes (D, D), summary)`` with ``summary = {names, q (D, 3),
    mean (D,), cov (D, D), corr (D, D), levels: {(i, j): thresholds}}`` —
    weighted quantiles, mean and covariance (unbiased ``1 - sum w^2``
    denominator) of the raw model targets.
    """
    plt = _plt()
    names = [fitter.grid.target_names[fitter.grid.target_index(c)] for c in target_cols]
    cols = [fitter.grid.target_index(c) for c in target_cols]
    w = np.asarray(
        fitter.posterior_over_models(x_native, sigma_native, candidate_idx, upper_limits),
        np.float64,
    )
    t_all = np.asarray(fitter.grid.targets, np.float64)
    if candidate_idx is not None:
        t_all = t_all[np.asarray(candidate_idx)]
    t = t_all[:, cols]
    d = len(cols)
    # one spec per target (a list of D ints/edge arrays), else the same for all
    per_bins = list(bins) if isinstance(bins, (list, tuple)) and len(bins) == d else [bins] * d
    edges = [_edges_for(t[:, i], per_bins[i]) for i in range(d)]
    wn = w / w.sum()
    mean = wn @ t
    dev = t - mean
    s2 = np.sum(wn**2)
    cov = (dev.T * wn) @ dev / (1.0 - s2) if s2 < 1 else np.full((d, d), np.nan)
    sd = np.sqrt(np.diag(cov))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = cov / np.outer(sd, sd)
    q = np.stack([weighted_quantiles(t[:, i], wn, quantiles) for i in range(d)])
    best = t[np.argmax(w)]
    if fig is None:
        fig, axes = plt.subplots(d, d, figsize=(2.6 * d, 2.6 * d), squeeze=False)
    else:
        axes = np.asarray(fig.subplots(d, d, squeeze=False))
    level_map = {}
    for i in range(d):
        for j in range(d):
            ax = axes[i, j]
            if j > i:
                ax.set_visible(False)
                continue
            if i == j:
                ax.hist(t[:, i], bins=edges[i], weights=wn, histtype="stepfilled", alpha=0.6)
                for qv in q[i]:
                    ax.axvline(qv, ls="--", color="k", lw=1)
                ax.axvline(best[i], ls="-", color="C3", lw=1.2, label="best model")
                ax.axvline(mean[i], ls=":", color="C2", lw=1.2, label="mean")
                if true_target_vals is not None:
                    ax.axvline(true_target_vals[i], color="C1", lw=1.5, label="truth")
                ax.set_yticks([])
            else:
                H, xe, ye = np.histogram2d(t[:, j], t[:, i], bins=[edges[j], edges[i]], weights=wn)
                ax.pcolormesh(xe, ye, H.T, cmap="Greys", shading="flat")
                thr = hpd_levels(H, levels)
                thr = np.unique(thr)
                if H.sum() > 0 and thr.size and np.any(H > thr.min()):
                    xc, yc = 0.5 * (xe[1:] + xe[:-1]), 0.5 * (ye[1:] + ye[:-1])
                    ax.contour(xc, yc, H.T, levels=np.sort(thr), colors="C0", linewidths=1)
                level_map[(i, j)] = np.sort(thr)
                if true_target_vals is not None:
                    ax.plot(true_target_vals[j], true_target_vals[i], "*", color="C1", ms=9)
            if i == d - 1:
                ax.set_xlabel(names[j])
            if j == 0 and i > 0:
                ax.set_ylabel(names[i])
    summary = {"names": names, "q": q, "mean": mean, "cov": cov, "corr": corr, "levels": level_map}
    return fig, axes, summary


def pit_histogram(pit: Any, bins: int = 20, ax=None, band_sigma: float = 1.0):
    """Histogram of PIT values with the uniform expectation and its binomial band.

    Returns ``(ax, counts, (lo, hi))``: ``lo``/``hi`` is the expected count per
    bin -/+ ``band_sigma`` binomial standard deviations.
    """
    plt = _plt()
    v = np.asarray(pit, np.float64)
    v = v[np.isfinite(v)]
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 3))
    counts, edges, _ = ax.hist(v, bins=bins, range=(0, 1), histtype="step", color="k")
    n, p = v.size, 1.0 / bins
    expected = n * p
    half = band_sigma * np.sqrt(n * p * (1 - p))
    ax.axhspan(expected - half, expected + half, color="C0", alpha=0.25, label="uniform")
    ax.axhline(expected, color="C0")
    ax.set_xlabel("PIT")
    ax.set_ylabel("objects")
    return ax, counts, (expected - half, expected + half)


def zphot_vs_ztrue(z_true: Any, z_phot: Any, ax=None, outlier_cut: float = 0.15, zmax=None):
    """z_phot against z_true with the 1:1 line and the outlier boundaries
    ``|dz| / (1 + z) = outlier_cut``. Returns ``ax``."""
    plt = _plt()
    zt = np.asarray(z_true, np.float64)
    zp = np.asarray(z_phot, np.float64)
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    zmax = float(np.nanmax([zt.max(), zp.max()])) if zmax is None else zmax
    zz = np.linspace(0, zmax, 50)
    ax.plot(zt, zp, ".", ms=2, alpha=0.5, color="k")
    ax.plot(zz, zz, color="C3", lw=1)
    ax.plot(zz, zz + outlier_cut * (1 + zz), "--", color="C3", lw=0.8)
    ax.plot(zz, zz - outlier_cut * (1 + zz), "--", color="C3", lw=0.8)
    ax.set_xlim(0, zmax)
    ax.set_ylim(0, zmax)
    ax.set_xlabel("z true")
    ax.set_ylabel("z phot")
    return ax


def plot_posterior_over_target(
    density: Any, centres: Any, ax=None, truth: float | None = None, label: str | None = None
):
    """Step plot of a binned posterior density (from ``posterior_over_target`` or
    ``posts_target``), with the truth marked. Returns ``ax``."""
    plt = _plt()
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 3))
    ax.step(np.asarray(centres), np.asarray(density), where="mid", label=label)
    if truth is not None:
        ax.axvline(truth, color="C1")
    ax.set_ylabel("posterior density")
    return ax
