"""Learning priors and calibrations from a catalog by maximising its marginal likelihood.

The catalog log marginal likelihood ``sum_i log Z_i(params)`` — each object's
evidence under the grid, with its observed values shifted by per-band
zero points, its errors scaled, and a prior built from parameters — is a pure
JAX function, so it has exact gradients. `catalog_log_likelihood` accumulates
its value and gradient over fixed-size chunks (one compiled function for any
catalog length); `calibrate` maximises it with L-BFGS (SciPy) and reports
standard errors from the exact Hessian.

Parameters (a pytree, float arrays):

* ``"zero_points"`` (P,): added to the native observed values (magnitudes), or
  applied as ``x 10^(-0.4 zp)`` when ``zero_points="flux"`` (fluxes with
  magnitude offsets);
* ``"log_error_scale"`` (P,): errors multiplied by ``exp(log_error_scale)``
  (positivity by reparametrisation);
* ``"prior"``: anything ``prior_fn`` turns into a prior (e.g.
  ``{"mu": 0.0, "log_sigma": 0.0}`` with
  ``prior_fn=lambda p: GaussianPrior1D("t", p["mu"], jnp.exp(p["log_sigma"]))``).

Bands listed in ``fixed_zero_points`` keep a zero offset (an overall offset
is degenerate with the targets; fix a reference band).

Bad rows are left out *explicitly*, never silently:

* invalid bands — an infinite value, or an error that is zero, negative or
  infinite — are treated as missing (as NaN), and counted per row
  (``bad_input``), as `fit_batch` flags them ``Status.BAD_INPUT``;
* rows without a usable band are not counted (``n_objects``);
* rows whose ``log Z`` or gradient is not finite at the starting parameters
  (every model excluded, or float overflow, e.g. a value of 1e30 in float32)
  are excluded and listed (``excluded_rows``); their NaN never reaches the
  summed gradient (per-row gradients, selected, not multiplied by 0).

`calibrate` never reports ``success`` on a non-finite objective or gradient:
a row that becomes non-finite during the optimisation makes that point
unusable (the line search backs off), and a non-finite gradient at the
optimum gives ``success=False`` with a ``message``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.scipy.special import logsumexp

from .core.checks import float_dtype
from .prob.posterior import log_weights_and_chi2

__all__ = ["catalog_log_likelihood", "calibrate", "CalibrationResult"]


def _flat_zero_point_mask(params, entries) -> np.ndarray:
    """(n,) bool over the flattened parameters: True at the given zero-point entries."""
    probe = jax.tree_util.tree_map(jnp.zeros_like, params)
    zp = np.zeros(np.asarray(params["zero_points"]).shape)
    zp[list(entries)] = 1.0
    probe["zero_points"] = jnp.asarray(zp)
    return np.asarray(ravel_pytree(probe)[0]) != 0


def _apply(params, x, s, zp_kind, fixed_mask):
    zp = params.get("zero_points")
    if zp is not None:
        zp = jnp.where(fixed_mask, 0.0, zp)
        x = x * 10.0 ** (-0.4 * zp) if zp_kind == "flux" else x + zp
        if zp_kind == "flux":
            s = s * 10.0 ** (-0.4 * zp)
    les = params.get("log_error_scale")
    if les is not None:
        s = s * jnp.exp(les)
    return x, s


def _make_chunk_fn(fitter, prior_fn, zp_kind, fixed_mask):
    data = fitter.data
    lik = fitter.likelihood_in_space
    grid = fitter.grid

    def prior_of(params):
        if prior_fn is None:
            return fitter.prior
        return prior_fn(params["prior"]).resolve(grid.target_names, grid.observable_names)

    def row_log_z(params, prior, xr, sr, ur):
        xr, sr = _apply(params, xr, sr, zp_kind, fixed_mask)
        lw, _ = log_weights_and_chi2(
            lik,
            prior,
            data,
            xr,
            sr,
            ur,
            data.models,
            data.models_native,
            data.targets,
            data.log_weights,
            True,
        )
        return logsumexp(lw)

    def chunk_rows(params, x, s, u):
        """Per-row ``(log Z (rows,), gradient pytree with a leading rows axis)``: rows are
        independent, so per-row gradients cost what the summed one does, and a row's
        NaN can be left out by selection instead of poisoning the sum."""

        def one(p, xr, sr, ur):
            return row_log_z(p, prior_of(p), xr, sr, ur)

        return jax.vmap(jax.value_and_grad(one), in_axes=(None, 0, 0, 0))(params, x, s, u)

    def chunk_total(params, x, s, u, valid):
        prior = prior_of(params)
        xs, ss = _apply(params, x, s, zp_kind, fixed_mask)

        def row(xr, sr, ur):
            lw, _ = log_weights_and_chi2(
                lik,
                prior,
                data,
                xr,
                sr,
                ur,
                data.models,
                data.models_native,
                data.targets,
                data.log_weights,
                True,
            )
            return logsumexp(lw)

        log_z = jax.vmap(row)(xs, ss, u)
        use = valid & jnp.isfinite(log_z)
        return jnp.sum(jnp.where(use, log_z, 0.0)), jnp.sum(use)

    return chunk_total, chunk_rows


def _bad_bands(X: np.ndarray, S: np.ndarray) -> np.ndarray:
    """Invalid bands: an infinite value, or an error that is zero, negative or infinite
    (NaN marks a missing band and is not an error)."""
    with np.errstate(invalid="ignore"):
        return np.isinf(X) | np.isinf(S) | (S <= 0)


def catalog_log_likelihood(
    fitter,
    X,
    S,
    params: dict,
    *,
    upper=None,
    prior_fn=None,
    zero_points: str = "additive",
    fixed_zero_points: Sequence[int] = (),
    chunk_size: int = 256,
    hessian: bool = False,
    zero_point_sigma: float | None = None,
    exclude=None,
    details: bool = False,
):
    """``(sum_i log Z_i, gradient pytree[, hessian (n, n)], n_used[, info])`` over the catalog.

    Chunks of ``chunk_size`` rows (the tail padded and masked) go through one
    compiled function giving each row's ``log Z`` and gradient. Invalid bands
    (infinite values; zero, negative or infinite errors) are treated as missing.
    Rows without a usable observable, rows in ``exclude`` ((M,) bool), and rows
    whose ``log Z`` or gradient is not finite are left out and not counted.
    ``zero_point_sigma`` adds a Gaussian prior N(0, sigma) on each free zero
    point (a log posterior). The arithmetic follows the JAX float setting
    (`calibrate` runs it in float64).

    With ``details=True`` a last element ``info`` is appended: ``excluded_rows``
    (indices of rows left out for a non-finite ``log Z`` or gradient, ``exclude``
    included), ``no_observables`` (indices of rows without a usable band) and
    ``bad_input`` ((M,) int, invalid bands per row).
    """
    out = _catalog_log_likelihood(
        fitter,
        X,
        S,
        params,
        upper,
        prior_fn,
        zero_points,
        fixed_zero_points,
        chunk_size,
        hessian,
        exclude,
    )
    info = out[-1]
    out = out[:-1]
    if zero_point_sigma is not None and "zero_points" in params:
        sig = float(zero_point_sigma)
        zp = np.asarray(params["zero_points"], np.float64)
        free = np.ones(zp.size, bool)
        free[list(fixed_zero_points)] = False
        total = out[0] - 0.5 * np.sum((zp[free] / sig) ** 2)
        grad = dict(out[1])
        grad["zero_points"] = out[1]["zero_points"] - jnp.asarray(np.where(free, zp / sig**2, 0.0))
        rest = list(out[2:])
        if hessian:
            mask = _flat_zero_point_mask(params, np.flatnonzero(free))
            rest[0] = rest[0] - np.diag(mask.astype(np.float64) / sig**2)
        out = (total, grad, *rest)
    return out + (info,) if details else out


def _catalog_log_likelihood(
    fitter,
    X,
    S,
    params,
    upper,
    prior_fn,
    zero_points,
    fixed_zero_points,
    chunk_size,
    hessian,
    exclude=None,
):
    p = fitter.grid.n_observables
    X = np.asarray(X, np.float64)
    S = np.asarray(S, np.float64)
    if X.ndim == 1:
        X, S = X[None, :], S[None, :]
    bad = _bad_bands(X, S)
    X = np.where(bad, np.nan, X)
    S = np.where(bad, np.nan, S)
    U = np.zeros(X.shape, bool) if upper is None else np.asarray(upper, bool)
    M = X.shape[0]
    skip = np.zeros(M, bool) if exclude is None else np.asarray(exclude, bool)
    fixed = np.zeros(p, bool)
    fixed[list(fixed_zero_points)] = True
    dt = float_dtype()
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dt), params)
    flat, _ = ravel_pytree(params)
    shapes = tuple(np.shape(a) for a in jax.tree_util.tree_leaves(params))
    rows, hess_fn, unravel = _compiled(
        fitter,
        prior_fn,
        zero_points,
        tuple(bool(f) for f in fixed),
        jax.tree_util.tree_structure(params),
        shapes,
        np.dtype(dt).name,
    )
    hess = hess_fn if hessian else None
    total, grad, n_used = 0.0, np.zeros(flat.size), 0
    H = np.zeros((flat.size, flat.size)) if hessian else None
    usable = np.any(np.isfinite(X) & np.isfinite(S), axis=1)
    dropped = skip & usable  # left out: asked, or found non-finite below
    for a in range(0, M, chunk_size):
        b = min(a + chunk_size, M)
        pad = chunk_size - (b - a)
        x = np.pad(X[a:b], ((0, pad), (0, 0)), constant_values=np.nan)
        s = np.pad(S[a:b], ((0, pad), (0, 0)), constant_values=np.nan)
        u = np.pad(U[a:b], ((0, pad), (0, 0)))
        v = np.pad(usable[a:b] & ~skip[a:b], (0, pad))
        # rows left out (padding, nothing usable, excluded) get harmless finite
        # stand-ins, so their (unused) arithmetic stays finite
        x = np.where(v[:, None], x, 0.0)
        s = np.where(v[:, None], s, 1.0)
        args = (jnp.asarray(x, dt), jnp.asarray(s, dt), jnp.asarray(u))
        log_z, g = rows(flat, *args)
        log_z, g = np.asarray(log_z, np.float64), np.asarray(g, np.float64)
        ok = v & np.isfinite(log_z) & np.all(np.isfinite(g), axis=1)
        dropped[a:b] |= (v & ~ok)[: b - a]
        total += float(np.sum(log_z[ok]))
        grad += g[ok].sum(axis=0)
        n_used += int(ok.sum())
        if hessian:
            xh = np.where(ok[:, None], x, 0.0)
            sh = np.where(ok[:, None], s, 1.0)
            hargs = (jnp.asarray(xh, dt), jnp.asarray(sh, dt), jnp.asarray(u), jnp.asarray(ok))
            H += np.asarray(hess(flat, *hargs), np.float64)
    out = (total, unravel(jnp.asarray(grad)))
    if hessian:
        out = out + (H,)
    info = {
        "excluded_rows": np.flatnonzero(dropped),
        "no_observables": np.flatnonzero(~usable),
        "bad_input": bad.sum(axis=1).astype(np.int64),
    }
    return out + (n_used, info)


@functools.lru_cache(maxsize=16)
def _compiled(fitter, prior_fn, zero_points, fixed, treedef, shapes, dtype):
    """The jitted per-row value-and-gradient and the Hessian of one problem, built once
    (a jit of a fresh closure per call would retrace and recompile at every L-BFGS
    step)."""
    total_fn, rows_fn = _make_chunk_fn(fitter, prior_fn, zero_points, jnp.asarray(fixed))
    template = jax.tree_util.tree_unflatten(treedef, [jnp.zeros(sh, dtype) for sh in shapes])
    _, unravel = ravel_pytree(template)

    def flat_rows(theta, x, s, u):
        log_z, g = rows_fn(unravel(theta), x, s, u)
        return log_z, jax.vmap(lambda t: ravel_pytree(t)[0])(g)

    def flat_total(theta, x, s, u, v):
        return total_fn(unravel(theta), x, s, u, v)

    hess = jax.jit(jax.hessian(lambda t, *a: flat_total(t, *a)[0]))
    return jax.jit(flat_rows), hess, unravel


class CalibrationResult(dict):
    """``params`` (fitted pytree), ``stderr`` (pytree of 1-sigma errors from the
    inverse Hessian of the total log likelihood), ``log_likelihood``,
    ``n_objects`` (rows used), ``n_iterations``, ``success`` (False whenever the
    optimiser failed or the objective or gradient is not finite at the result),
    ``message``, ``excluded_rows`` (indices of rows left out because their
    ``log Z`` or gradient was not finite at the start), ``no_observables``
    (indices of rows without a usable band) and ``bad_input`` ((M,) int: per
    row, the bands with an infinite value or a zero, negative or infinite error,
    treated as missing)."""


def calibrate(
    fitter,
    X,
    S,
    params: dict,
    *,
    upper=None,
    prior_fn: Callable | None = None,
    zero_points: str = "additive",
    fixed_zero_points: Sequence[int] = (),
    chunk_size: int = 256,
    maxiter: int = 200,
    zero_point_sigma: float | None = None,
) -> CalibrationResult:
    """Maximise the catalog log marginal likelihood over ``params`` (see module docs).

    L-BFGS-B (SciPy) on the flattened parameters with exact gradients; the
    standard errors come from the exact Hessian at the optimum. With
    ``zero_point_sigma`` the free zero points get a Gaussian prior N(0, sigma)
    (a maximum a posteriori fit): offsets then cannot absorb template mismatch
    without bound. Rows whose ``log Z`` or gradient is not finite at the
    starting ``params`` are excluded (``excluded_rows``); invalid bands are
    treated as missing and counted (``bad_input``). Returns a
    `CalibrationResult`; raises ``ValueError`` when no row is usable.
    """
    kw = dict(
        upper=upper,
        prior_fn=prior_fn,
        zero_points=zero_points,
        fixed_zero_points=fixed_zero_points,
        chunk_size=chunk_size,
        zero_point_sigma=zero_point_sigma,
    )
    with jax.enable_x64(True):  # scoped: float64 parameters and objective
        return _calibrate(fitter, X, S, params, maxiter, kw)


def _calibrate(fitter, X, S, params, maxiter, kw):
    from scipy.optimize import minimize

    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
    flat0, unravel = ravel_pytree(params)

    # the rows that are not finite at the start are excluded once, explicitly: the
    # objective then keeps one set of rows (a row dropping out would raise it)
    val0, g0, n0, info = catalog_log_likelihood(fitter, X, S, params, details=True, **kw)
    if n0 == 0:
        raise ValueError(
            "calibrate: no usable row (every row lacks a usable band or has a non-finite "
            f"log Z at the starting params; excluded rows: {info['excluded_rows'].tolist()})."
        )
    M = info["bad_input"].size
    exclude = np.zeros(M, bool)
    exclude[info["excluded_rows"]] = True
    m = max(n0, 1)
    g0flat = np.asarray(ravel_pytree(g0)[0], np.float64)
    last = {"f": -float(val0) / m, "g": -g0flat / m}
    state = {"nonfinite": 0}

    def fun(theta):
        val, g, n = catalog_log_likelihood(
            fitter, X, S, unravel(jnp.asarray(theta)), exclude=exclude, **kw
        )
        gflat = np.asarray(ravel_pytree(g)[0], np.float64)
        if n != n0 or not np.isfinite(val) or not np.all(np.isfinite(gflat)):
            # a row became non-finite here: outside the usable region. A large value with
            # the last *finite* gradient makes the line search back-track.
            state["nonfinite"] += 1
            return 1e3 * (1.0 + abs(last["f"])), last["g"]
        last["f"], last["g"] = -val / m, -gflat / m
        return last["f"], last["g"]

    res = minimize(
        fun,
        np.asarray(flat0, np.float64),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": maxiter, "gtol": 1e-7},
    )
    best = unravel(jnp.asarray(res.x))
    val, g_best, H, n = catalog_log_likelihood(
        fitter, X, S, best, hessian=True, exclude=exclude, **kw
    )
    g_best = np.asarray(ravel_pytree(g_best)[0], np.float64)
    finite = n == n0 and np.isfinite(val) and np.all(np.isfinite(g_best))
    finite = finite and np.all(np.isfinite(H))
    fixed = np.zeros(flat0.size, bool)
    if "zero_points" in params and len(kw["fixed_zero_points"]):
        fixed = _flat_zero_point_mask(params, kw["fixed_zero_points"])
    free = ~fixed
    cov = np.full((flat0.size, flat0.size), np.nan)
    if finite:
        try:
            cov[np.ix_(free, free)] = np.linalg.inv(-H[np.ix_(free, free)])
        except np.linalg.LinAlgError:
            pass
    err = np.sqrt(np.where(np.diag(cov) > 0, np.diag(cov), np.nan))
    err[fixed] = 0.0
    message = str(res.message)
    if not finite:
        message = "the objective or its gradient is not finite at the result; " + message
    return CalibrationResult(
        params=best,
        stderr=unravel(jnp.asarray(err)),
        log_likelihood=val,
        n_objects=n,
        n_iterations=int(res.nit),
        success=bool(res.success) and bool(finite),
        message=message,
        excluded_rows=info["excluded_rows"],
        no_observables=info["no_observables"],
        bad_input=info["bad_input"],
        n_nonfinite_evaluations=state["nonfinite"],
    )
