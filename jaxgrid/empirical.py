"""Empirical grids: a training set's own objects as the models (host layer).

A training set with known targets (spectroscopic redshifts, say) is a model library:
each training object predicts the observables it was measured with, and its own
measurement errors are its model's noise (`ModelGrid` ``model_sigma``). Fitting an
object against it with `GaussianProductLikelihood` weighs each training object by
``N(x | x_j, sigma^2 + (alpha e_j)^2 + h^2)`` — a kernel estimate of ``p(target | x)``
whose kernel is the two measurements' errors plus a bandwidth ``h`` per observable —
and every summary, PDF, truncation and file of the engine applies unchanged.
Candidate preselection (`KDTreeBinner`) ranks models by their observables alone (no
noise model): give it enough neighbours.

* `colour_features`: magnitudes -> adjacent colours + one reference magnitude (the
  space that works for photo-z: colours carry the redshift, the magnitude a
  brightness prior), with non-detections handled;
* `ModelGrid.from_training` (`training_grid`): the grid, with the kernel;
* `fit_kernel`: the bandwidths ``h`` and the error scale ``alpha`` that maximise the
  training set's leave-one-out photo-z log score, by gradient (L-BFGS, exact JAX
  gradients, float64) — no tuning on the objects later scored.

Measured on the bundled DC2 sample (2-fold cross-validation): docs/photoz.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .prob.likelihoods import GaussianProductLikelihood
from .prob.optimize import minimize_lbfgs

__all__ = ["colour_features", "fit_kernel", "kernel_sigma", "training_grid"]


def colour_features(
    mags: Any,
    errs: Any,
    band_names: Sequence[str],
    reference: str | int = -3,
    nondetected: Any = None,
    limits: Any = None,
    nondetection_error: float = 1.0,
) -> dict[str, Any]:
    """Adjacent colours and one reference magnitude from (M, B) magnitudes.

    Features ``b0-b1, b1-b2, ..., b[B-2]-b[B-1], ref`` (B values) with errors
    ``hypot(e_k, e_k+1)`` and ``e_ref`` (correlations between adjacent colours are
    ignored). A band that is not detected (``nondetected`` True, or a NaN magnitude)
    makes its colours and, for the reference, the magnitude **missing** for a fitted
    row; as a *model* (a training object) it stands at its ``limits`` value (the
    1-sigma limiting magnitude; NaN: the band's median detected magnitude) with the
    error ``nondetection_error`` mag.

    Returns ``{"values", "errors", "missing", "model_values", "model_errors",
    "names"}``: rows to fit use ``values``/``errors`` (NaN where missing); a grid uses
    ``model_values``/``model_errors`` (finite everywhere).
    """
    m = np.asarray(mags, np.float64)
    e = np.asarray(errs, np.float64)
    if m.ndim != 2 or m.shape != e.shape or m.shape[1] < 2:
        raise ValueError(
            f"colour_features: `mags` and `errs` must be (M, B) with B >= 2, got {m.shape} "
            f"and {e.shape}."
        )
    names = list(band_names)
    if len(names) != m.shape[1]:
        raise ValueError(f"colour_features: {len(names)} band names for {m.shape[1]} bands.")
    ref = names.index(reference) if isinstance(reference, str) else int(reference) % len(names)
    nd = ~np.isfinite(m) if nondetected is None else np.asarray(nondetected, bool) | ~np.isfinite(m)
    if nd.shape != m.shape:
        raise ValueError(f"colour_features: `nondetected` must be {m.shape}, got {nd.shape}.")
    bad_err = ~nd & ~(np.isfinite(e) & (e > 0))
    if bad_err.any():
        raise ValueError(
            f"colour_features: {int(bad_err.sum())} detected magnitudes have an error that is "
            "not finite and positive; fix them or flag those bands as non-detected."
        )
    if limits is None:
        lim = np.full(m.shape, np.nan)
    else:
        lim = np.broadcast_to(np.asarray(limits, np.float64), m.shape)
    fill = np.array(
        [np.median(m[~nd[:, j], j]) if (~nd[:, j]).any() else 0.0 for j in range(m.shape[1])]
    )
    lim = np.where(np.isfinite(lim), lim, fill[None, :])
    mv = np.where(nd, lim, m)
    me = np.where(nd, float(nondetection_error), e)

    def build(v, s):
        cols = [v[:, k] - v[:, k + 1] for k in range(v.shape[1] - 1)] + [v[:, ref]]
        errs_ = [np.hypot(s[:, k], s[:, k + 1]) for k in range(v.shape[1] - 1)] + [s[:, ref]]
        return np.column_stack(cols), np.column_stack(errs_)

    model_values, model_errors = build(mv, me)
    missing = np.column_stack(
        [nd[:, k] | nd[:, k + 1] for k in range(m.shape[1] - 1)] + [nd[:, ref]]
    )
    values = np.where(missing, np.nan, model_values)
    errors = np.where(missing, np.nan, model_errors)
    feat = [f"{names[k]}-{names[k + 1]}" for k in range(len(names) - 1)] + [names[ref]]
    return {
        "values": values,
        "errors": errors,
        "missing": missing,
        "model_values": model_values,
        "model_errors": model_errors,
        "names": feat,
    }


def kernel_sigma(errors: Any, bandwidth: Any = 0.0, error_scale: float = 1.0) -> np.ndarray:
    """A training set's model noise: ``sqrt((error_scale * e)^2 + bandwidth^2)`` (N, P)."""
    e = np.asarray(errors, np.float64)
    h = np.broadcast_to(np.asarray(bandwidth, np.float64), e.shape[-1:])
    return np.sqrt((float(error_scale) * e) ** 2 + h[None, :] ** 2)


def training_grid(
    cls: type,
    observables: Any,
    errors: Any,
    targets: Any,
    observable_names: Sequence[str],
    target_names: Sequence[str],
    bandwidth: Any = 0.0,
    error_scale: float = 1.0,
    weights: Any = None,
    meta: dict[str, Any] | None = None,
    smooth_targets: dict[str, float] | None = None,
    replicas: int = 8,
) -> Any:
    """A grid of class ``cls`` whose models are a training set's objects (see the
    module docs; `ModelGrid.from_training` calls this with its own class).

    ``observables`` (N, P): the training objects' measured values (finite: use
    `colour_features` ``model_values`` for photometry with non-detections);
    ``errors`` (N, P) their errors; ``targets`` (N, Q) or (N,) their known targets.
    The model noise is `kernel_sigma` (``bandwidth``: a scalar or (P,), in the
    observables' units; ``error_scale`` multiplies the training errors) — learn both
    with `fit_kernel`. ``smooth_targets`` (``{"z": z_sigma}``, `fit_kernel`'s) smooths
    those targets by the kernel ``N(t, z_sigma (1 + t))``: each object is repeated
    ``replicas`` times at the kernel's quantile points (so summaries and PDFs are of
    the smoothed mixture; N x ``replicas`` models). The kernel is recorded in
    ``meta["empirical"]``.
    """
    obs = np.asarray(observables, np.float64)
    tgt = np.asarray(targets, np.float64)
    tgt = tgt[:, None] if tgt.ndim == 1 else tgt
    e = np.asarray(errors, np.float64)
    if e.shape != obs.shape:
        raise ValueError(
            f"from_training: `errors` must have the observables' shape {obs.shape}, got {e.shape}."
        )
    if not np.all(np.isfinite(e) & (e >= 0)):
        raise ValueError("from_training: `errors` must be finite and >= 0 (0: an exact model).")
    h = np.broadcast_to(np.asarray(bandwidth, np.float64), obs.shape[1:])
    if not np.all(np.isfinite(h) & (h >= 0)) or not (error_scale >= 0):
        raise ValueError("from_training: `bandwidth` and `error_scale` must be finite and >= 0.")
    names = list(target_names)
    smooth = dict(smooth_targets or {})
    unknown = sorted(set(smooth) - set(names))
    if unknown:
        raise KeyError(f"from_training: `smooth_targets` names unknown targets {unknown}.")
    if smooth and (not isinstance(replicas, int | np.integer) or replicas < 2):
        raise ValueError("from_training: `replicas` must be an integer >= 2 with smooth_targets.")
    for name in smooth:  # the kernel N(t, s (1 + t)) reflected at 0 is a redshift's
        if np.any(tgt[:, names.index(name)] < 0):
            raise ValueError(
                f"from_training: `smooth_targets` smooths non-negative targets (redshifts); "
                f"{name!r} has negative values."
            )
    info = {
        "kind": "empirical",
        "n_training": int(obs.shape[0]),
        "bandwidth": h.tolist(),
        "error_scale": float(error_scale),
        "smooth_targets": {k: float(v) for k, v in smooth.items()},
        "replicas": int(replicas) if smooth else 1,
    }
    sig = kernel_sigma(e, h, error_scale)
    w = None if weights is None else np.asarray(weights, np.float64)
    if smooth:
        # each object R times, its smoothed targets at the R quantile points of its
        # kernel N(t, s (1 + t)) (reflected at 0): the histograms then draw the kernel
        r = int(replicas)
        q = _normal_quantiles(r)
        tgt = np.repeat(tgt, r, axis=0)
        for name, s_t in smooth.items():
            c = names.index(name)
            base = tgt[:, c]
            tgt[:, c] = np.abs(base + float(s_t) * (1.0 + base) * np.tile(q, obs.shape[0]))
        obs, sig = np.repeat(obs, r, axis=0), np.repeat(sig, r, axis=0)
        w = None if w is None else np.repeat(w, r)
    meta = dict(meta or {}) | {"empirical": info}
    return cls(obs, tgt, observable_names, names, weights=w, meta=meta, model_sigma=sig)


def _normal_quantiles(r: int) -> np.ndarray:
    """The standard normal's quantiles at ``(k + 1/2) / r``, rescaled to unit variance."""
    from scipy.special import ndtri

    q = ndtri((np.arange(r) + 0.5) / r)
    return q / np.sqrt(np.mean(q**2))


def _loo_score(theta, x, s, models, merr, z_rows, z_models, self_idx, z_range, floor):
    """Mean leave-one-out log score of training rows ``x`` against the training models:
    ``log[(1 - floor) p(z_i) + floor / z_range]``, ``p`` the posterior mixture of the
    other objects' redshift kernels ``N(z_i | z_j, s_z (1 + z_j))``."""
    p = x.shape[1]
    h = jnp.exp(theta[:p])
    alpha = jnp.exp(theta[p])
    s_z = jnp.exp(theta[p + 1])
    beta = jnp.exp(theta[p + 2])
    sig = jnp.sqrt((alpha * merr) ** 2 + h[None, :] ** 2)
    wide = jnp.concatenate([models, sig, jnp.zeros_like(models)], axis=1)
    lik = GaussianProductLikelihood()
    width = s_z * (1.0 + z_models)

    def one(row):
        xr, sr, zr, ir = row
        lw = lik.log_likelihood(xr, beta * sr, wide)  # GaussianProductLikelihood(scale=beta)
        lw = jnp.where(jnp.arange(lw.shape[0]) == ir, -jnp.inf, lw)  # leave itself out
        w = jax.nn.softmax(lw)
        dens = jnp.exp(-0.5 * ((zr - z_models) / width) ** 2) / (width * jnp.sqrt(2.0 * jnp.pi))
        return jnp.log((1.0 - floor) * jnp.sum(w * dens) + floor / z_range)

    return jnp.mean(jax.lax.map(one, (x, s, z_rows, self_idx), batch_size=64))


def fit_kernel(
    observables: Any,
    errors: Any,
    z: Any,
    rows: Any = None,
    max_rows: int = 2000,
    bandwidth0: Any = 0.05,
    error_scale0: float = 1.0,
    z_sigma0: float = 0.02,
    row_error_scale0: float = 1.0,
    fit_error_scale: bool = True,
    fit_row_error_scale: bool = True,
    fit_z_sigma: bool = True,
    maxiter: int = 60,
    floor: float = 1e-3,
    seed: int = 0,
    row_values: Any = None,
    row_errors: Any = None,
) -> dict[str, Any]:
    """The kernel (``bandwidth`` (P,), ``error_scale``, ``z_sigma``, ``row_error_scale``)
    that maximises the training set's leave-one-out photo-z log score.

    Why the fitted row's error has a scale of its own: the training objects' measured
    values already carry noise like the fitted object's, so the right kernel is
    narrower than both errors in quadrature would make it; fit with
    ``GaussianProductLikelihood(scale=row_error_scale)``.

    Each of up to ``max_rows`` training objects (``rows``, else a random subset) is
    fitted against all the *other* training objects with the engine's likelihood
    (`GaussianProductLikelihood` with the model noise of `kernel_sigma`); its score is
    the log density at its own redshift of the posterior mixture of the others'
    redshift kernels ``N(z_j, z_sigma (1 + z_j))`` (the PDF `ModelGrid.from_training`
    reproduces with ``z_sigma`` and replicas), mixed with ``floor`` of a uniform
    density over the training redshifts' range so a far miss costs a finite amount.
    L-BFGS on the logs of the bandwidths, the error scales (unless
    ``fit_error_scale`` / ``fit_row_error_scale`` is False) and ``z_sigma``, exact JAX
    gradients, float64 (a scoped ``jax.enable_x64``).

    ``observables``/``errors``: the grid's (finite) model values and errors;
    ``row_values``/``row_errors``: the same objects as rows to fit (NaN = missing;
    default: the model values). Returns ``{"bandwidth", "error_scale", "z_sigma",
    "row_error_scale", "log_score" (mean per object at the optimum), "log_score_start", "n_rows",
    "success", "message"}``.
    """
    obs = np.asarray(observables, np.float64)
    e = np.asarray(errors, np.float64)
    zz = np.asarray(z, np.float64).reshape(-1)
    if obs.ndim != 2 or e.shape != obs.shape or zz.shape != (obs.shape[0],):
        raise ValueError("fit_kernel: observables, errors (N, P) and z (N,) do not match.")
    if not np.all(np.isfinite(zz)):
        raise ValueError("fit_kernel: `z` must be finite (drop the objects without one).")
    xv = obs if row_values is None else np.asarray(row_values, np.float64)
    xe = e if row_errors is None else np.asarray(row_errors, np.float64)
    if xv.shape != obs.shape or xe.shape != obs.shape:
        raise ValueError("fit_kernel: row_values/row_errors must have the observables' shape.")
    # a band is missing where its value or error is not usable; the stand-in error 1
    # keeps the gradient w.r.t. the error scale free of NaN (x stays NaN: left out)
    bad = ~(np.isfinite(xv) & np.isfinite(xe) & (xe > 0))
    xv, xe = np.where(bad, np.nan, xv), np.where(bad, 1.0, xe)
    if not (np.all(np.isfinite(obs)) and np.all(np.isfinite(e) & (e >= 0))):
        raise ValueError("fit_kernel: `observables` and `errors` must be finite (errors >= 0).")
    h0 = np.broadcast_to(np.asarray(bandwidth0, np.float64), (obs.shape[1],))
    starts = [*h0, error_scale0, z_sigma0, row_error_scale0]
    if not all(np.isfinite(v) and v > 0 for v in starts):
        raise ValueError("fit_kernel: the starting bandwidths and scales must be positive.")
    n, p = obs.shape
    if rows is None:
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(n, size=min(max_rows, n), replace=False))
    rows = np.asarray(rows, np.int64)
    rows = rows[~bad[rows].all(axis=1)]  # a row without a usable band scores nothing
    if rows.size < 10:
        raise ValueError("fit_kernel: need at least 10 training rows.")
    z_range = max(float(np.ptp(zz)), 1e-6)
    theta0 = np.concatenate([np.log(h0), np.log([error_scale0, z_sigma0, row_error_scale0])])
    free = np.ones(p + 3, bool)
    free[p] = bool(fit_error_scale)
    free[p + 1] = bool(fit_z_sigma)
    free[p + 2] = bool(fit_row_error_scale)
    with jax.enable_x64(True):
        args = (
            jnp.asarray(xv[rows]),
            jnp.asarray(xe[rows]),
            jnp.asarray(obs),
            jnp.asarray(e),
            jnp.asarray(zz[rows]),
            jnp.asarray(zz),
            jnp.asarray(rows),
            z_range,
            float(floor),
        )
        vg = jax.jit(jax.value_and_grad(lambda t, *a: -_loo_score(t, *a)))

        def fun(t_free):
            t = theta0.copy()
            t[free] = t_free
            v, g = vg(jnp.asarray(t), *args)
            return float(v), np.asarray(g, np.float64)[free]

        start = -fun(theta0[free])[0]
        res = minimize_lbfgs(fun, theta0[free], maxiter)
        theta = theta0.copy()
        theta[free] = res.x
    return {
        "bandwidth": np.exp(theta[:p]),
        "error_scale": float(np.exp(theta[p])),
        "z_sigma": float(np.exp(theta[p + 1])),
        "row_error_scale": float(np.exp(theta[p + 2])),
        "log_score": float(-res.fun),
        "log_score_start": float(start),
        "n_rows": int(rows.size),
        "success": bool(res.success),
        "message": str(res.message),
    }
