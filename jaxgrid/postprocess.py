"""BESTA's post-processing helpers under their BESTA names (``besta.postprocess``).

Host NumPy, for one object's binned posterior or a catalog of them:

* `weighted_quantiles` — BESTA's convention: the weighted CDF ``cumsum(w) / sum(w)``
  at the sorted values, interpolated linearly. (`jaxgrid.plots.weighted_quantiles`
  uses the midpoint CDF ``cumsum(w) - w/2``, symmetric under reflection; the two
  differ by up to half a sample's weight.)
* `pdf_stats` — mean, std, MAP, median, 16/84 % and optional quantiles of a binned
  density, as the batch engine computes them; with ``find_multimodal``, ``modes``
  holds the centres of the density's modes counted as the engine counts them
  (`jaxgrid.core.reductions.count_modes`: edge bins included, bins below 1e-3 of
  the peak empty, plateaus once) — BESTA's interior-only local maxima miss a peak in
  an edge bin and count float noise.
* `enclosed_fraction_map` — the HPD enclosed-mass map of a 2-D density.
* `pit_from_discrete_posterior` — the PIT of binned posteriors (masses per bin).
* `photoz_metrics` — BESTA's keys ``bias, nmad, outlier, rmse`` (plus jaxgrid's).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .core.reductions import MODE_FLOOR
from .metrics import photoz_metrics as _photoz_metrics
from .metrics import pit_from_binned

__all__ = [
    "weighted_quantiles",
    "pdf_stats",
    "mode_centres",
    "enclosed_fraction_map",
    "pit_from_discrete_posterior",
    "photoz_metrics",
]


def weighted_quantiles(x: Any, w: Any, qs: Sequence[float]) -> np.ndarray:
    """Quantiles ``qs`` of the sample ``x`` with weights ``w`` (BESTA's convention;
    non-finite or negative entries ignored; NaN when nothing is left)."""
    x, w = np.asarray(x, np.float64).reshape(-1), np.asarray(w, np.float64).reshape(-1)
    if x.shape != w.shape:
        raise ValueError(f"weighted_quantiles: `x` has {x.size} values but `w` has {w.size}.")
    ok = np.isfinite(x) & np.isfinite(w) & (w >= 0)
    if not ok.any() or w[ok].sum() <= 0:
        return np.full(len(qs), np.nan)
    order = np.argsort(x[ok], kind="stable")
    xs, ws = x[ok][order], w[ok][order]
    cdf = np.cumsum(ws)
    return np.interp(np.asarray(qs, np.float64), cdf / cdf[-1], xs)


def mode_centres(pdf: Any, centres: Any, floor: float = MODE_FLOOR) -> np.ndarray:
    """Centres of the modes of a binned density, found by the walk of
    `jaxgrid.core.reductions.count_modes` (same count): a mode is the highest bin of
    a rise that is followed by a fall of more than ``floor`` x the peak."""
    d = np.asarray(pdf, np.float64).reshape(-1)
    c = np.asarray(centres, np.float64).reshape(-1)
    finite = np.isfinite(d)
    peak = np.max(np.where(finite, d, 0.0)) if d.size else 0.0
    if not peak > 0:
        return np.zeros(0)
    tol = floor * peak
    d = np.append(np.where(finite & (d >= tol), d, 0.0), 0.0)  # the fall after the last bin
    rising, ext, at, out = True, 0.0, -1, []
    for i, v in enumerate(d):  # a host walk over the bins of one density
        if rising and ext - v > tol:
            out.append(c[at])
            rising, ext = False, v
        elif not rising and v - ext > tol:
            rising, ext, at = True, v, i
        elif rising and v > ext:
            ext, at = v, i
        elif not rising:
            ext = min(ext, v)
    return np.asarray(out)


def pdf_stats(
    edges: Any, pdf: Any, quantiles: Sequence[float] | None = None, find_multimodal: bool = False
) -> dict[str, Any]:
    """Summary of a binned density ``pdf`` (K,) on ``edges`` (K+1,), as BESTA's:
    ``{mean, std, map, q, median, lo68, hi68[, modes]}`` (the density is normalised
    first; the CDF is linear within bins; ``q`` the values at ``quantiles``)."""
    e = np.asarray(edges, np.float64)
    p = np.asarray(pdf, np.float64).copy()
    if e.ndim != 1 or p.shape != (e.size - 1,):
        raise ValueError(f"pdf_stats: `pdf` must have len(edges) - 1 = {e.size - 1} values.")
    if not np.all(np.diff(e) > 0):
        raise ValueError("pdf_stats: `edges` must be strictly increasing.")
    width = np.diff(e)
    norm = np.sum(p * width)
    p /= norm if norm > 0 else 1.0
    centres = 0.5 * (e[1:] + e[:-1])
    mass = p * width
    mean = np.sum(mass * centres)
    std = np.sqrt(np.sum(mass * (centres - mean) ** 2))
    v_map = centres[np.argmax(mass)]
    cdf = np.concatenate([[0.0], np.cumsum(mass)])

    def at(q):
        return np.interp(q, cdf, e, left=e[0], right=e[-1])

    out = {
        "mean": mean,
        "std": std,
        "map": v_map,
        "q": None if quantiles is None else at(np.asarray(quantiles, np.float64)),
        "median": at(0.5),
        "lo68": at(0.16),
        "hi68": at(0.84),
    }
    if find_multimodal:
        modes = mode_centres(p, centres)
        out["modes"] = modes if modes.size else np.array([v_map])
    return out


def enclosed_fraction_map(density: Any, *, xedges: Any = None, yedges: Any = None) -> np.ndarray:
    """``F`` (ny, nx): for each pixel, the mass of all pixels at least as dense (the
    HPD region it bounds), normalised to 1; pixel areas from ``xedges``/``yedges``
    when given; NaN for non-finite or negative pixels. ``F <= 0.68`` is the 68 %
    HPD region."""
    dens = np.asarray(density, np.float64)
    if dens.ndim != 2:
        raise ValueError(f"enclosed_fraction_map: `density` must be 2-D, got {dens.shape}.")
    mass = dens
    if xedges is not None and yedges is not None:
        dx, dy = np.diff(np.asarray(xedges, np.float64)), np.diff(np.asarray(yedges, np.float64))
        if dens.shape != (dy.size, dx.size):
            raise ValueError(
                f"enclosed_fraction_map: density {dens.shape} does not match the edges "
                f"(ny, nx) = ({dy.size}, {dx.size})."
            )
        mass = dens * dy[:, None] * dx[None, :]
    d, m = dens.ravel(), mass.ravel()
    good = np.isfinite(d) & np.isfinite(m) & (m >= 0)
    out = np.full(d.size, np.nan)
    if good.any() and m[good].sum() > 0:
        order = np.argsort(-d[good], kind="stable")
        cum = np.cumsum(m[good][order])
        filled = np.empty_like(cum)
        filled[order] = cum / cum[-1]
        out[good] = filled
    return out.reshape(dens.shape)


def pit_from_discrete_posterior(z_true: Any, posts: Any, z_edges: Any) -> np.ndarray:
    """PIT of binned posteriors ``posts`` (N, K: mass per bin, each row normalised here)
    at ``z_true`` (N,), uniform within bins; 0 / 1 below / above the edges (NaN for
    rows without mass). `jaxgrid.metrics.pit_from_binned` with ``kind="mass"``."""
    return pit_from_binned(z_edges, posts, z_true, kind="mass")


def photoz_metrics(z_true: Any, z_est: Any) -> dict[str, float]:
    """BESTA's keys ``bias, nmad, outlier, rmse`` (``nmad`` with 1.4826, BESTA rounds it
    to 1.48) plus jaxgrid's ``outlier_fraction, n, n_excluded``."""
    return _photoz_metrics(z_true, z_est)
