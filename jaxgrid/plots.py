"""Plots (optional extra ``plot``: matplotlib): corner plots, PIT, z_phot vs z_true.

`corner_for_targets` is also available as ``GridFitter.corner_for_targets``.
Every function draws into a given ``ax``/``fig`` or makes one (with matplotlib's
constrained layout, so ``savefig`` keeps every label), and returns the
matplotlib objects so figures can be tested and customised. The z_phot–z_true
and PIT plots print their metrics (`jaxgrid.metrics`) in the panel: the text
artist has ``gid="jaxgrid-metrics"``.
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
    "DENSITY_THRESHOLD",
]

#: `zphot_vs_ztrue` draws a hexbin density instead of points above this many objects
#: (``kind="auto"``): 10,000 dots saturate into a blob that hides where the objects are.
DENSITY_THRESHOLD = 5000
#: ``gid`` of the metrics text of `zphot_vs_ztrue` and `pit_histogram`.
METRICS_GID = "jaxgrid-metrics"


def _plt():
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - optional extra
        raise ImportError("plots need matplotlib: pip install 'jaxgrid[plot]'.") from err
    return plt


def _new_axes(plt, figsize):
    fig = plt.figure(figsize=figsize, layout="constrained")
    return fig.add_subplot()


def _metrics_text(ax, lines: Sequence[str]):
    """The metrics as one text box in the upper left of ``ax`` (``gid="jaxgrid-metrics"``)."""
    return ax.text(
        0.04,
        0.96,
        "\n".join(lines),
        transform=ax.transAxes,
        va="top",
        ha="left",
        fontsize="small",
        gid=METRICS_GID,
        bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "0.7", "alpha": 0.9},
    )


def _interval_label(name: str, med: float, lo: float, hi: float) -> str:
    """``name = med^{+(hi-med)}_{-(med-lo)}`` with two significant digits of the smaller error."""
    up, down = hi - med, med - lo
    err = min(up, down)
    ndec = 3
    if np.isfinite(err) and err > 0:
        ndec = int(np.clip(1 - np.floor(np.log10(err)), 0, 6))
    return f"{name} = ${med:.{ndec}f}^{{+{up:.{ndec}f}}}_{{-{down:.{ndec}f}}}$"


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


def _edges_for(values: np.ndarray, bins: Any, w=None, kappa=None) -> np.ndarray:
    if np.ndim(bins) == 0:
        lo, hi = float(values.min()), float(values.max())
        if kappa is not None:  # BESTA's zoom: median -/+ kappa x the 16/84 % distances
            q16, q50, q84 = weighted_quantiles(values, w, (0.16, 0.5, 0.84))
            lo, hi = max(q50 - kappa * (q50 - q16), lo), min(q50 + kappa * (q84 - q50), hi)
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
    figsize: tuple[float, float] | None = None,
    suptitle: str | None = None,
    color: str | None = None,
    kappa_sigma_edges: float | None = None,
    alpha_hist: float = 0.6,
    alpha_mesh: float = 1.0,
):
    """Corner plot of one object's posterior over ``target_cols``.

    BESTA's keywords: ``figsize`` (of a new figure), ``suptitle``, ``color`` (the 1-D
    histograms and the contours), ``alpha_hist`` / ``alpha_mesh`` (opacity of the 1-D
    histograms / 2-D meshes) and ``kappa_sigma_edges``: with an int ``bins``, the
    range is the median -/+ kappa times its distance to the 16 / 84 % quantiles
    (clipped to the models' range; BESTA's default is 5, jaxgrid's None: the whole
    range of the models, so no mass falls off the plot).

    Diagonal: weighted 1-D histograms with the ``quantiles`` (dashed), the
    best model (solid) and the mean (dotted) marked, and the truth if given
    (``true_target_vals``: one value per target, None or NaN where unknown);
    each is titled ``name = median^{+(q_hi - median)}_{-(median - q_lo)}``
    (``q_lo``/``q_hi`` the outer ``quantiles``). Below: 2-D weighted histograms
    with highest-posterior-density contours enclosing ``levels`` of the mass.
    Panels of a column share the x range, panels of a row the y range; tick
    labels are drawn on the outer panels only (at most 4 per axis, rotated), and
    a legend names the lines. ``bins``: an int for every target, or a list with
    one int or edge array per target (x and y bin counts may differ).

    Returns ``(fig, axes (D, D), summary)`` with ``summary = {names, q (D, len(quantiles)),
    median (D,), mean (D,), cov (D, D), corr (D, D), levels: {(i, j): thresholds}}`` —
    weighted quantiles, mean and covariance (unbiased ``1 - sum w^2``
    denominator) of the raw model targets.
    """
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

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
    wn = w / w.sum()
    if kappa_sigma_edges is not None and not float(kappa_sigma_edges) > 0:
        raise ValueError(
            f"corner_for_targets: `kappa_sigma_edges` must be > 0 or None, got {kappa_sigma_edges}."
        )
    edges = [_edges_for(t[:, i], per_bins[i], wn, kappa_sigma_edges) for i in range(d)]
    mean = wn @ t
    dev = t - mean
    s2 = np.sum(wn**2)
    cov = (dev.T * wn) @ dev / (1.0 - s2) if s2 < 1 else np.full((d, d), np.nan)
    sd = np.sqrt(np.diag(cov))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = cov / np.outer(sd, sd)
    q = np.stack([weighted_quantiles(t[:, i], wn, quantiles) for i in range(d)])
    median = np.array([weighted_quantiles(t[:, i], wn, [0.5])[0] for i in range(d)])
    best = t[np.argmax(w)]
    if true_target_vals is not None and len(true_target_vals) != d:
        raise ValueError(
            f"corner_for_targets: {len(true_target_vals)} `true_target_vals` for {d} targets; "
            "give one per target (None or NaN where unknown)."
        )
    truth = [
        None if v is None or not np.isfinite(v) else float(v)
        for v in (true_target_vals if true_target_vals is not None else [None] * d)
    ]
    if fig is None:
        size = figsize if figsize is not None else (2.4 * d + 0.6, 2.4 * d + 0.6)
        fig = plt.figure(figsize=size, layout="constrained")
    if suptitle:
        fig.suptitle(suptitle)
    axes = np.asarray(fig.subplots(d, d, squeeze=False))
    level_map = {}
    for i in range(d):
        for j in range(d):
            ax = axes[i, j]
            if j > i:
                ax.set_visible(False)
                continue
            if i == j:
                ax.hist(
                    t[:, i],
                    bins=edges[i],
                    weights=wn,
                    histtype="stepfilled",
                    alpha=alpha_hist,
                    color=color,
                )
                for k, qv in enumerate(q[i]):
                    label = None
                    if k == 0:
                        label = "quantiles " + "/".join(f"{100 * v:g}" for v in quantiles) + " %"
                    ax.axvline(qv, ls="--", color="k", lw=1, label=label)
                ax.axvline(best[i], ls="-", color="C3", lw=1.2, label="best model")
                ax.axvline(mean[i], ls=":", color="C2", lw=1.2, label="mean")
                if truth[i] is not None:
                    ax.axvline(truth[i], color="C1", lw=1.5, label="truth")
                ax.set_yticks([])
                ax.set_xlim(edges[i][0], edges[i][-1])
                ax.set_title(
                    _interval_label(names[i], median[i], q[i].min(), q[i].max()), fontsize="medium"
                )
            else:
                H, xe, ye = np.histogram2d(t[:, j], t[:, i], bins=[edges[j], edges[i]], weights=wn)
                ax.pcolormesh(xe, ye, H.T, cmap="Greys", shading="flat", alpha=alpha_mesh)
                thr = hpd_levels(H, levels)
                thr = np.unique(thr)
                if H.sum() > 0 and thr.size and np.any(H > thr.min()):
                    xc, yc = 0.5 * (xe[1:] + xe[:-1]), 0.5 * (ye[1:] + ye[:-1])
                    ax.contour(xc, yc, H.T, levels=np.sort(thr), colors=color or "C0", linewidths=1)
                level_map[(i, j)] = np.sort(thr)
                if truth[i] is not None and truth[j] is not None:
                    ax.plot(truth[j], truth[i], "*", color="C1", ms=9)
                ax.set_xlim(edges[j][0], edges[j][-1])
                ax.set_ylim(edges[i][0], edges[i][-1])
                ax.yaxis.set_major_locator(MaxNLocator(4, prune="both"))
                if j > 0:
                    ax.tick_params(labelleft=False)
            ax.xaxis.set_major_locator(MaxNLocator(4, prune="both"))
            if i == d - 1:
                ax.set_xlabel(names[j])
                ax.tick_params(axis="x", labelrotation=45)
            else:
                ax.tick_params(labelbottom=False)
            if j == 0 and i > 0:
                ax.set_ylabel(names[i])
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if d > 1:
        fig.legend(handles, labels, loc="upper right", fontsize="small", frameon=False)
    else:
        axes[0, 0].legend(handles, labels, fontsize="small")
    summary = {
        "names": names,
        "q": q,
        "median": median,
        "mean": mean,
        "cov": cov,
        "corr": corr,
        "levels": level_map,
    }
    return fig, axes, summary


def pit_histogram(
    pit: Any,
    bins: int = 20,
    ax=None,
    band_sigma: float = 1.0,
    show_metrics: bool = True,
    legend: bool = True,
):
    """Histogram of PIT values with the uniform expectation and its binomial band.

    With ``show_metrics`` the panel prints N, the KS distance (`jaxgrid.metrics.pit_ks`)
    and the Cramér-von Mises statistic (`jaxgrid.metrics.pit_cvm`) of the finite
    values; the legend names the histogram and the band.

    Returns ``(ax, counts, (lo, hi))``: ``lo``/``hi`` is the expected count per
    bin -/+ ``band_sigma`` binomial standard deviations.
    """
    from .metrics import pit_cvm, pit_ks

    plt = _plt()
    v = np.asarray(pit, np.float64)
    v = v[np.isfinite(v)]
    if ax is None:
        ax = _new_axes(plt, (4.5, 3.4))
    counts, edges, _ = ax.hist(v, bins=bins, range=(0, 1), histtype="step", color="k", label="PIT")
    n, p = v.size, 1.0 / bins
    expected = n * p
    half = band_sigma * np.sqrt(n * p * (1 - p))
    ax.axhspan(
        expected - half,
        expected + half,
        color="C0",
        alpha=0.25,
        label=f"uniform ± {band_sigma:g}σ",
    )
    ax.axhline(expected, color="C0")
    ax.set_xlim(0, 1)
    # head room for the metrics and the legend above the bars
    top = max(float(counts.max()) if counts.size else 0.0, expected + half)
    ax.set_ylim(0, 1.45 * top if top > 0 else 1.0)
    ax.set_xlabel("PIT")
    ax.set_ylabel("objects")
    if show_metrics:
        _metrics_text(ax, [f"N = {n:,}", f"KS = {pit_ks(v):.4f}", f"CvM = {pit_cvm(v):.4g}"])
    if legend:
        ax.legend(loc="upper right", fontsize="small")
    return ax, counts, (expected - half, expected + half)


def zphot_vs_ztrue(
    z_true: Any,
    z_phot: Any,
    ax=None,
    outlier_cut: float = 0.15,
    zmax=None,
    kind: str = "auto",
    density_threshold: int = DENSITY_THRESHOLD,
    gridsize: int = 60,
    show_metrics: bool = True,
    legend: bool = True,
    colorbar: bool = True,
):
    """z_phot against z_true with the 1:1 line and the outlier boundaries
    ``|dz| / (1 + z) = outlier_cut``.

    ``kind``: ``"scatter"`` (one dot per object), ``"hexbin"`` (objects per
    hexagon, logarithmic colour scale, with a colour bar when ``colorbar``) or
    ``"auto"``: hexbin above ``density_threshold`` finite pairs. With
    ``show_metrics`` the panel prints N, bias, σ_NMAD and the outlier fraction
    of `jaxgrid.metrics.photoz_metrics` (non-finite pairs excluded). Returns ``ax``.
    """
    from .metrics import photoz_metrics

    if kind not in ("auto", "scatter", "hexbin"):
        raise ValueError(
            f"zphot_vs_ztrue: `kind` must be 'auto', 'scatter' or 'hexbin', got {kind!r}."
        )
    plt = _plt()
    zt = np.asarray(z_true, np.float64).reshape(-1)
    zp = np.asarray(z_phot, np.float64).reshape(-1)
    if zt.shape != zp.shape:
        raise ValueError(f"zphot_vs_ztrue: z_true {zt.shape} and z_phot {zp.shape} differ.")
    ok = np.isfinite(zt) & np.isfinite(zp)
    if not ok.any():
        raise ValueError("zphot_vs_ztrue: no object has a finite z_true and z_phot.")
    if ax is None:
        ax = _new_axes(plt, (4.8 if kind != "scatter" else 4.2, 4.2))
    zmax = float(max(zt[ok].max(), zp[ok].max())) if zmax is None else float(zmax)
    if kind == "auto":
        kind = "hexbin" if ok.sum() > density_threshold else "scatter"
    if kind == "hexbin":
        lo = min(0.0, float(zt[ok].min()), float(zp[ok].min()))
        hi = max(zmax, float(zt[ok].max()), float(zp[ok].max()))
        hb = ax.hexbin(
            zt[ok],
            zp[ok],
            gridsize=gridsize,
            extent=(lo, hi, lo, hi),  # every object counted, also those off the axes
            bins="log",
            mincnt=1,
            cmap="viridis",
            linewidths=0.2,
        )
        if colorbar:
            ax.figure.colorbar(hb, ax=ax, label="objects per cell")
    else:
        ax.plot(zt[ok], zp[ok], ".", ms=2, alpha=0.5, color="k", label="objects")
    zz = np.linspace(0, zmax, 50)
    ax.plot(zz, zz, color="C3", lw=1, label="1:1")
    ax.plot(
        zz,
        zz + outlier_cut * (1 + zz),
        "--",
        color="C3",
        lw=0.8,
        label=f"|Δz|/(1+z) = {outlier_cut:g}",
    )
    ax.plot(zz, zz - outlier_cut * (1 + zz), "--", color="C3", lw=0.8)
    ax.set_xlim(0, zmax)
    ax.set_ylim(0, zmax)
    ax.set_aspect("equal")
    ax.set_xlabel("z true")
    ax.set_ylabel("z phot")
    if show_metrics:
        m = photoz_metrics(zt, zp, outlier_cut=outlier_cut)
        _metrics_text(
            ax,
            [
                f"N = {m['n']:,}",
                f"bias = {m['bias']:+.4f}",
                f"$\\sigma_\\mathrm{{NMAD}}$ = {m['nmad']:.4f}",
                f"outliers = {100 * m['outlier_fraction']:.2f} %",
            ],
        )
    if legend:
        ax.legend(loc="lower right", fontsize="small")
    return ax


def plot_posterior_over_target(
    density: Any,
    centres: Any,
    ax=None,
    truth: float | None = None,
    label: str | None = None,
    xlabel: str | None = None,
):
    """Step plot of a binned posterior density (from ``posterior_over_target`` or
    ``posts_target``), with the truth marked (and a legend when ``label`` is given).
    Returns ``ax``."""
    plt = _plt()
    if ax is None:
        ax = _new_axes(plt, (4.5, 3.2))
    ax.step(np.asarray(centres), np.asarray(density), where="mid", label=label)
    if truth is not None:
        ax.axvline(truth, color="C1", label="truth" if label is not None else None)
    ax.set_ylabel("posterior density")
    if xlabel is not None:
        ax.set_xlabel(xlabel)
    if label is not None:
        ax.legend(fontsize="small")
    return ax
