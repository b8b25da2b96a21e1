"""Pure reductions of posterior weights into target summaries (JAX, traceable).

Histogram convention (as NumPy): bins ``[e_k, e_{k+1})``, the last bin closed;
mass outside ``[e_0, e_K]`` is left out. Densities are normalised over the
in-range mass: ``sum_k density_k * width_k = 1``.

Weighted moments are kept as *mergeable partial sums* (`Moments`) so that
blocks of models can be reduced one at a time and combined exactly
(online log-sum-exp with Chan et al.'s pairwise update for the covariance):
every partial sum is scaled by ``exp(-m)`` with ``m`` its largest log weight.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float

from .bins import bin_index

__all__ = [
    "bin_index",
    "weighted_histogram",
    "histogram_from_index",
    "histogram_density",
    "Moments",
    "moments",
    "merge_moments",
    "HistStats",
    "hist_stats",
    "kde_masses",
    "kde_bandwidth",
    "kde_density_sum",
    "count_modes",
    "MODE_FLOOR",
    "cumsum_last",
    "argmax_last",
    "top_k_two_level",
    "dense_histogram",
]

_HI = lax.Precision.HIGHEST


def cumsum_last(x: Array) -> Array:
    """Cumulative sum along the last axis: ``jnp.cumsum`` on GPUs/TPUs, and on the CPU
    two small triangular matmuls.

    XLA's CPU backend lowers ``jnp.cumsum`` to a ``reduce_window`` that costs
    O(n^2) per row; there the axis is cut into ~sqrt(n) blocks: within-block
    sums ``blocks @ triu`` and block offsets ``totals @ strict_triu``
    (O(n^1.5) flops in two GEMMs, exact summation order aside).
    """
    return lax.platform_dependent(
        x, cpu=_cumsum_by_matmul, default=lambda v: jnp.cumsum(v, axis=-1)
    )


def _cumsum_by_matmul(x: Array) -> Array:
    n = x.shape[-1]
    if n <= 1:
        return x
    b = max(2, int(round(n**0.5)))
    nb = -(-n // b)
    pad = [(0, 0)] * (x.ndim - 1) + [(0, nb * b - n)]
    blocks = jnp.pad(x, pad).reshape(x.shape[:-1] + (nb, b))
    inner = jnp.matmul(blocks, jnp.triu(jnp.ones((b, b), x.dtype)), precision=_HI)
    offsets = jnp.matmul(inner[..., -1], jnp.triu(jnp.ones((nb, nb), x.dtype), 1), precision=_HI)
    return (inner + offsets[..., None]).reshape(x.shape[:-1] + (nb * b,))[..., :n]


def argmax_last(x: Array) -> Array:
    """First index of the largest value along the last axis (``jnp.argmax`` for
    NaN-free input; an all-NaN row gives 0).

    On the CPU a max and a min-reduction of masked indices: XLA's CPU argmax (a
    variadic reduce) is ~10x slower on long rows. Elsewhere ``jnp.argmax``.
    """
    return lax.platform_dependent(
        x,
        cpu=_argmax_by_min,
        default=lambda v: jnp.argmax(jnp.where(jnp.isnan(v), -jnp.inf, v), axis=-1).astype(
            jnp.int32
        ),
    )


def _argmax_by_min(x: Array) -> Array:
    n = x.shape[-1]
    mx = jnp.max(x, axis=-1, keepdims=True)
    # indices as floats where exact (a float min-reduction is faster on the CPU)
    exact = jnp.issubdtype(x.dtype, jnp.floating) and n < 2 ** jnp.finfo(x.dtype).nmant
    iota = lax.broadcasted_iota(x.dtype if exact else jnp.int32, x.shape, x.ndim - 1)
    first = jnp.min(jnp.where(x == mx, iota, n), axis=-1).astype(jnp.int32)
    return jnp.where(first < n, first, 0)


def top_k_two_level(x: Float[Array, "rows n"], k: int) -> tuple[Array, Array]:
    """``lax.top_k(x, k)`` along the last axis of a NaN-free (rows, n) array — the same
    values, ties in index order — through block maxima, ~10x less top-k work on long
    rows (XLA's CPU top-k costs ~6 ns per element for k = 128).

    The row is cut into ``n / b`` blocks of ``b ~ sqrt(n / k)``. The top ``k`` elements
    lie in the ``k`` blocks with the largest maxima (each of those maxima is at least
    the k-th largest element, and any block holding a top element has a maximum at
    least as large), so a top-k of the block maxima, the chosen blocks gathered in
    index order, and a top-k of those ``k * b`` elements give the exact answer.
    Indices of ``-inf`` padding entries (rows with fewer than ``k`` finite values)
    are clipped into range; their values stay ``-inf``.
    """
    n = x.shape[-1]
    b0 = max(2, int(round((n / k) ** 0.5)))
    # a block size dividing n avoids copying the row into a padded array
    b = next(
        (
            c
            for c in sorted(range(max(2, b0 // 2), 2 * b0 + 1), key=lambda c: abs(c - b0))
            if n % c == 0
        ),
        b0,
    )
    nb = -(-n // b)
    if k >= n or nb < 4 * k:
        return lax.top_k(x, k)
    rows = x.shape[0]
    xp = x if nb * b == n else jnp.pad(x, ((0, 0), (0, nb * b - n)), constant_values=-jnp.inf)
    blocks = xp.reshape(rows, nb, b)
    _, bidx = lax.top_k(jnp.max(blocks, axis=2), k)
    bidx = jnp.sort(bidx, axis=1)  # index order, so ties keep the global index order
    cand = jnp.take_along_axis(blocks, bidx[:, :, None], axis=1).reshape(rows, k * b)
    vals, pos = lax.top_k(cand, k)
    gidx = (bidx[:, :, None] * b + jnp.arange(b, dtype=bidx.dtype)).reshape(rows, k * b)
    return vals, jnp.minimum(jnp.take_along_axis(gidx, pos, axis=1), n - 1)


def dense_histogram(w: Float[Array, "rows models"], layout: tuple, index) -> Array:
    """Per-row histograms (rows, k) of ``w`` for a `histogram_layout` other than scatter."""
    kind, k, r = layout
    rows = w.shape[0]
    if kind == "runs":
        return jnp.sum(w.reshape(rows, k, r), axis=2)
    if kind == "strided":
        return jnp.sum(w.reshape(rows, r, k), axis=1)
    padded = jnp.concatenate([w, jnp.zeros((rows, 1), w.dtype)], axis=1)
    return jnp.sum(padded[:, index.reshape(-1)].reshape(rows, k, r), axis=2)


def weighted_histogram(
    values: Float[Array, " cand"], weights: Float[Array, " cand"], edges: Float[Array, " edges"]
) -> Float[Array, " bins"]:
    """Mass per bin: ``sum_i w_i [t_i in bin k]``."""
    return histogram_from_index(bin_index(values, edges), weights, edges.shape[0] - 1)


def histogram_from_index(idx: Array, weights: Array, k: int) -> Array:
    """Mass per bin from precomputed `bin_index` values (a scatter-add)."""
    w = jnp.where(idx >= 0, weights, 0.0)
    return jax.ops.segment_sum(w, jnp.clip(idx, 0, k - 1), num_segments=k)


def histogram_density(
    mass: Float[Array, " bins"], edges: Float[Array, " edges"]
) -> Float[Array, " bins"]:
    """``mass / (sum(mass) * width)``; NaN everywhere when there is no in-range mass."""
    total = jnp.sum(mass)
    ok = total > 0
    return jnp.where(ok, mass / (jnp.where(ok, total, 1.0) * jnp.diff(edges)), jnp.nan)


class Moments(NamedTuple):
    """Partial sums of one row's weights ``w_i = exp(lw_i - m)`` over a set of models.

    ``m`` largest log weight (``-inf`` if none), ``W = sum w``, ``S2 = sum w^2``,
    ``mu`` (D,) weighted mean of the targets, ``M`` (D, D) ``sum w (t-mu)(t-mu)^T``,
    ``hists`` one (bins,) mass array per summarised target.
    """

    m: Array
    W: Array
    S2: Array
    mu: Array
    M: Array
    hists: tuple[Array, ...]


def moments(
    lw: Float[Array, " cand"],
    t: Float[Array, "cand targets"],
    edges: tuple[Array, ...],
    bins: tuple[Array, ...] | None = None,
    scaled: tuple[Array, Array] | None = None,
    hists: tuple[Array, ...] | None = None,
    bin_values: tuple[Array | None, ...] | None = None,
) -> Moments:
    """Partial sums of ``exp(lw)`` over a set of models with targets ``t`` (one column per
    edge array). ``bins``: the models' precomputed `bin_index` per column (saves
    the searches when the same models recur, e.g. across rows). ``scaled``:
    ``(m, w)`` already computed by the caller (``m = max lw``,
    ``w = exp(lw - m)``, 0 where ``lw = -inf``); ``hists``: the histograms of
    ``w``, already computed by the caller (see `dense_histogram`); ``bin_values``:
    per target, ``None`` or the value that *every* model of each bin has (then
    that target's mean and variance come from its histogram: a pass over the
    bins instead of the models)."""
    if scaled is None:
        m = jnp.max(lw)
        ms = jnp.where(jnp.isfinite(m), m, 0.0)
        w = jnp.where(jnp.isfinite(lw), jnp.exp(lw - ms), 0.0)
    else:
        m, w = scaled
    W = jnp.sum(w)
    S2 = jnp.sum(w * w)
    Ws = jnp.where(W > 0, W, 1.0)
    if bins is None:
        bins = tuple(bin_index(t[:, i], e) for i, e in enumerate(edges))
    if hists is None:
        hists = tuple(
            histogram_from_index(b, w, e.shape[0] - 1) for b, e in zip(bins, edges, strict=True)
        )
    # Two passes (mean, then centred products) of elementwise products and sums:
    # XLA's CPU backend runs these skinny contractions several times faster than dots.
    D = t.shape[1]
    vals = bin_values if bin_values is not None else (None,) * D
    cols = [t[:, i] for i in range(D)]  # rank-1 columns: rank-3 broadcasts slow XLA's CPU
    mu = [
        jnp.sum(w * c) / Ws if v is None else jnp.sum(h * v) / Ws
        for c, v, h in zip(cols, vals, hists, strict=True)
    ]
    d = [c - m_i for c, m_i in zip(cols, mu, strict=True)]

    def centred(i, j):
        if i == j and vals[i] is not None:
            return jnp.sum(hists[i] * (vals[i] - mu[i]) ** 2)
        return jnp.sum(w * d[i] * d[j])

    prod = {(i, j): centred(i, j) for i in range(D) for j in range(i, D)}
    if D:
        M = jnp.stack([jnp.stack([prod[min(i, j), max(i, j)] for j in range(D)]) for i in range(D)])
        mu = jnp.stack(mu)
    else:
        M, mu = jnp.zeros((0, 0), w.dtype), jnp.zeros(0, w.dtype)
    return Moments(m, W, S2, mu, M, hists)


def merge_moments(a: Moments, b: Moments) -> Moments:
    """Exact combination of two disjoint sets' partial sums."""
    m = jnp.maximum(a.m, b.m)
    ms = jnp.where(jnp.isfinite(m), m, 0.0)
    sa = jnp.where(jnp.isfinite(a.m), jnp.exp(a.m - ms), 0.0)
    sb = jnp.where(jnp.isfinite(b.m), jnp.exp(b.m - ms), 0.0)
    Wa, Wb = a.W * sa, b.W * sb
    W = Wa + Wb
    Ws = jnp.where(W > 0, W, 1.0)
    delta = b.mu - a.mu
    mu = a.mu + delta * (Wb / Ws)
    M = a.M * sa + b.M * sb + jnp.outer(delta, delta) * (Wa * Wb / Ws)
    hists = tuple(ha * sa + hb * sb for ha, hb in zip(a.hists, b.hists, strict=True))
    return Moments(m, W, a.S2 * sa**2 + b.S2 * sb**2, mu, M, hists)


class HistStats(NamedTuple):
    """Summaries of one target from its binned masses (NaN when no in-range mass)."""

    mean: Array
    std: Array
    map: Array
    median: Array
    lo68: Array
    hi68: Array
    nmodes: Array
    density: Array


def _quantile(cdf: Array, edges: Array, q: float) -> Array:
    """Linear interpolation of the CDF given at the edges (``cdf[0] = 0``)."""
    nb = edges.shape[0] - 1
    # first bin whose upper CDF reaches q (a sum of compares: no search loop)
    k = jnp.clip(jnp.sum(cdf[1:] < q), 0, nb - 1)
    lo, hi = cdf[k], cdf[k + 1]
    frac = jnp.clip((q - lo) / jnp.where(hi > lo, hi - lo, 1.0), 0.0, 1.0)
    return edges[k] + frac * (edges[k + 1] - edges[k])


#: Bins whose density is below this fraction of the peak density count as empty, and a
#: mode must rise and fall by more than it (of the peak) to count, when counting modes.
MODE_FLOOR = 1e-3


def count_modes(density: Float[Array, " bins"], floor: float = MODE_FLOOR) -> Array:
    """Number of modes of a binned density: maxima that stand out, edge bins included.

    Walking the bins (with the density 0 outside both edges), a mode is counted when,
    after a rise, the density falls more than ``floor`` x the peak below the highest
    value since the last minimum; a new rise starts when it climbs more than that
    above the lowest value since. Bins below ``floor`` x the peak count as empty.
    So a plateau counts once, a shoulder not at all, float32 residues and ripples
    never make a mode, and the answer does not depend on how finely a smooth
    density is binned (the total rise and fall count, not each step). 0 when the
    density is empty or not finite.
    """
    peak = jnp.max(jnp.where(jnp.isfinite(density), density, 0.0))
    tol = floor * peak
    d = jnp.where(density >= tol, density, 0.0)
    d = jnp.concatenate([d, jnp.zeros(1, d.dtype)])  # the fall after the last bin

    def step(state, v):
        rising, ext, n = state
        # rising: ext is the highest value since the last minimum; else the lowest
        fell = rising & (ext - v > tol)
        rose = ~rising & (v - ext > tol)
        n = n + fell.astype(jnp.int32)
        new_ext = jnp.where(
            fell | rose, v, jnp.where(rising, jnp.maximum(ext, v), jnp.minimum(ext, v))
        )
        return (jnp.where(fell, False, jnp.where(rose, True, rising)), new_ext, n), None

    init = (jnp.array(True), jnp.zeros((), d.dtype), jnp.int32(0))
    (_, _, n), _ = lax.scan(step, init, d)
    return jnp.where(peak > 0, n, 0)


def hist_stats(mass: Float[Array, " bins"], edges: Float[Array, " edges"], find_multimodal: bool):
    """Mean, std (of the binned density, at bin centres), MAP (centre of the largest
    mass), median and 16/84 % (CDF interpolated linearly between edges) and the
    number of modes (`count_modes` of the density when ``find_multimodal``, else 1)."""
    total = jnp.sum(mass)
    ok = total > 0
    p = mass / jnp.where(ok, total, 1.0)
    width = jnp.diff(edges)
    c = 0.5 * (edges[1:] + edges[:-1])
    mean = jnp.sum(p * c)
    std = jnp.sqrt(jnp.maximum(jnp.sum(p * (c - mean) ** 2), 0.0))
    cdf = jnp.concatenate([jnp.zeros(1, p.dtype), cumsum_last(p)])
    nmodes = count_modes(p / width) if find_multimodal else jnp.int32(1)
    nan = jnp.nan
    return HistStats(
        mean=jnp.where(ok, mean, nan),
        std=jnp.where(ok, std, nan),
        map=jnp.where(ok, c[argmax_last(mass)], nan),
        median=jnp.where(ok, _quantile(cdf, edges, 0.5), nan),
        lo68=jnp.where(ok, _quantile(cdf, edges, 0.16), nan),
        hi68=jnp.where(ok, _quantile(cdf, edges, 0.84), nan),
        nmodes=jnp.where(ok, nmodes, -1),
        density=jnp.where(ok, p / width, nan),
    )


def kde_bandwidth(stats: Moments, i: int) -> tuple[Array, Array]:
    """Scott's-rule bandwidth of target ``i`` from a set's partial sums, as
    ``scipy.stats.gaussian_kde`` with weights: ``h^2 = var_w n_eff^(-2/5)`` with the
    unbiased weighted variance ``var_w = sum w (t-mu)^2 / (W (1 - sum wn^2))``
    (``wn = w / W``) and ``n_eff = 1 / sum wn^2``. Returns ``(h, ok)``; ``ok`` is false
    (fall back to the histogram) for fewer than two effective samples or no spread."""
    W = stats.W
    Ws = jnp.where(W > 0, W, 1.0)
    s2 = stats.S2 / Ws**2
    var = (stats.M[i, i] / Ws) / jnp.where(s2 < 1, 1.0 - s2, 1.0)
    n_eff = 1.0 / jnp.where(s2 > 0, s2, 1.0)
    h2 = var * n_eff ** (-0.4)
    ok = (W > 0) & (s2 < 1.0 - 1e-6) & (h2 > 0) & jnp.isfinite(h2)
    return jnp.sqrt(jnp.where(ok, h2, 1.0)), ok


def kde_density_sum(
    t: Float[Array, " cand"], wn: Float[Array, " cand"], edges: Float[Array, " edges"], h: Array
) -> Float[Array, " bins"]:
    """``sum_i wn_i N(c_k; t_i, h^2)`` at the bin centres ``c_k``: the KDE density of a
    set (or, for disjoint parts of it, the parts' terms, which add)."""
    c = 0.5 * (edges[1:] + edges[:-1])
    z = (c[:, None] - t[None, :]) / h
    return jnp.dot(jnp.exp(-0.5 * z * z), wn, precision=_HI) / (h * jnp.sqrt(2.0 * jnp.pi))


def kde_masses(
    t: Float[Array, " cand"], w: Float[Array, " cand"], edges: Float[Array, " edges"]
) -> tuple[Array, Array]:
    """Weighted Gaussian KDE of ``t`` evaluated at the bin centres, as masses per bin
    (`kde_bandwidth` gives the bandwidth). Returns ``(mass (bins,), ok)``."""
    st = moments(jnp.zeros_like(w), t[:, None], (edges,), scaled=(jnp.zeros((), w.dtype), w))
    h, ok = kde_bandwidth(st, 0)
    W = jnp.sum(w)
    dens = kde_density_sum(t, w / jnp.where(W > 0, W, 1.0), edges, h)
    return dens * jnp.diff(edges), ok
