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
from jaxtyping import Array, Float, Int

__all__ = [
    "bin_index",
    "weighted_histogram",
    "histogram_density",
    "Moments",
    "moments",
    "merge_moments",
    "HistStats",
    "hist_stats",
    "kde_masses",
]

_HI = lax.Precision.HIGHEST


def bin_index(values: Float[Array, " cand"], edges: Float[Array, " edges"]) -> Int[Array, " cand"]:
    """Bin of each value, or -1 when outside the edges (NaN included)."""
    k = edges.shape[0] - 1
    idx = jnp.searchsorted(edges, values, side="right") - 1
    idx = jnp.where(values == edges[-1], k - 1, idx)  # last bin is closed
    inside = (values >= edges[0]) & (values <= edges[-1])
    return jnp.where(inside, idx, -1)


def weighted_histogram(
    values: Float[Array, " cand"], weights: Float[Array, " cand"], edges: Float[Array, " edges"]
) -> Float[Array, " bins"]:
    """Mass per bin: ``sum_i w_i [t_i in bin k]``."""
    return _histogram_from_index(bin_index(values, edges), weights, edges.shape[0] - 1)


def _histogram_from_index(idx: Array, weights: Array, k: int) -> Array:
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
) -> Moments:
    """Partial sums of ``exp(lw)`` over a set of models with targets ``t`` (one column per
    edge array). ``bins``: the models' precomputed `bin_index` per column (saves
    the searches when the same models recur, e.g. across rows)."""
    m = jnp.max(lw)
    ms = jnp.where(jnp.isfinite(m), m, 0.0)
    w = jnp.where(jnp.isfinite(lw), jnp.exp(lw - ms), 0.0)
    W = jnp.sum(w)
    S2 = jnp.sum(w * w)
    Ws = jnp.where(W > 0, W, 1.0)
    mu = jnp.dot(w, t, precision=_HI) / Ws
    d = t - mu
    M = jnp.dot((w[:, None] * d).T, d, precision=_HI)
    if bins is None:
        bins = tuple(bin_index(t[:, i], e) for i, e in enumerate(edges))
    hists = tuple(
        _histogram_from_index(b, w, e.shape[0] - 1) for b, e in zip(bins, edges, strict=True)
    )
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


def hist_stats(mass: Float[Array, " bins"], edges: Float[Array, " edges"], find_multimodal: bool):
    """Mean, std (of the binned density, at bin centres), MAP (centre of the largest
    mass), median and 16/84 % (CDF interpolated linearly between edges) and the
    number of modes (strict interior local maxima when ``find_multimodal``, else 1)."""
    total = jnp.sum(mass)
    ok = total > 0
    p = mass / jnp.where(ok, total, 1.0)
    width = jnp.diff(edges)
    c = 0.5 * (edges[1:] + edges[:-1])
    mean = jnp.sum(p * c)
    std = jnp.sqrt(jnp.maximum(jnp.sum(p * (c - mean) ** 2), 0.0))
    cdf = jnp.concatenate([jnp.zeros(1, p.dtype), jnp.cumsum(p)])
    if find_multimodal and mass.shape[0] >= 3:
        mid = mass[1:-1]
        nmodes = jnp.sum((mid > mass[:-2]) & (mid > mass[2:])).astype(jnp.int32)
    else:
        nmodes = jnp.int32(1)
    nan = jnp.nan
    return HistStats(
        mean=jnp.where(ok, mean, nan),
        std=jnp.where(ok, std, nan),
        map=jnp.where(ok, c[jnp.argmax(mass)], nan),
        median=jnp.where(ok, _quantile(cdf, edges, 0.5), nan),
        lo68=jnp.where(ok, _quantile(cdf, edges, 0.16), nan),
        hi68=jnp.where(ok, _quantile(cdf, edges, 0.84), nan),
        nmodes=jnp.where(ok, nmodes, -1),
        density=jnp.where(ok, p / width, nan),
    )


def kde_masses(
    t: Float[Array, " cand"], w: Float[Array, " cand"], edges: Float[Array, " edges"]
) -> tuple[Array, Array]:
    """Weighted Gaussian KDE of ``t`` evaluated at the bin centres, as masses per bin.

    Bandwidth by Scott's rule with the effective sample size, as
    ``scipy.stats.gaussian_kde``: ``h^2 = var_w n_eff^(-2/5)``, with the
    unbiased weighted variance ``var_w = sum w (t-mu)^2 / (1 - sum w^2)`` (``w``
    normalised) and ``n_eff = 1 / sum w^2``. Returns ``(mass (bins,), ok)``;
    ``ok`` is false (fall back to the histogram) for fewer than two effective
    samples or zero spread.
    """
    W = jnp.sum(w)
    wn = w / jnp.where(W > 0, W, 1.0)
    s2 = jnp.sum(wn * wn)
    mu = jnp.sum(wn * t)
    var = jnp.sum(wn * (t - mu) ** 2) / jnp.where(s2 < 1, 1.0 - s2, 1.0)
    n_eff = 1.0 / jnp.where(s2 > 0, s2, 1.0)
    h2 = var * n_eff ** (-0.4)
    ok = (W > 0) & (s2 < 1.0 - 1e-6) & (h2 > 0) & jnp.isfinite(h2)
    h = jnp.sqrt(jnp.where(ok, h2, 1.0))
    c = 0.5 * (edges[1:] + edges[:-1])
    z = (c[:, None] - t[None, :]) / h
    dens = jnp.dot(jnp.exp(-0.5 * z * z), wn, precision=_HI) / (h * jnp.sqrt(2.0 * jnp.pi))
    return dens * jnp.diff(edges), ok
