"""Learning priors and calibrations from a catalog by maximising its marginal likelihood.

The catalog log marginal likelihood ``sum_i log Z_i(params)`` — each object's
evidence under the grid, with its observed values shifted by per-band
zero points, its errors scaled, and a prior built from parameters — is a pure
JAX function, so it has exact gradients. `catalog_log_likelihood` accumulates
its value and gradient over fixed-size chunks, the tail padded and masked: one
compiled function for any catalog length, traced once per static structure
(prior_fn, zero-point kind, parameter shapes, grid shapes) and reused by every
later call (`trace_count`, `hessian_trace_count`). `calibrate` maximises it with
L-BFGS (SciPy, `jaxgrid.prob.optimize.minimize_lbfgs`) and reports standard
errors from the exact Hessian.

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
unusable (`minimize_lbfgs` continues the objective from the last finite point,
so the line search about halves its step toward it), and a non-finite gradient
at the optimum gives ``success=False`` with a ``message``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.scipy.special import logsumexp
from jaxtyping import Array, Bool

from .core.checks import float_dtype
from .core.data import GridData
from .prob.optimize import minimize_lbfgs
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


#: traces (= compilations) of the chunk functions in this process, by name
_TRACES = {"rows": 0, "hessian": 0}


def trace_count() -> int:
    """How many times the per-chunk value and gradient of the catalog objective has been
    traced (compiled) in this process."""
    return _TRACES["rows"]


def hessian_trace_count() -> int:
    """How many times the per-chunk Hessian of the catalog objective has been traced."""
    return _TRACES["hessian"]


class _Objective(eqx.Module):
    """One calibration problem as the compiled chunk functions see it. Arrays (the grid
    snapshot, likelihood and prior hyperparameters, the fixed-band mask) are traced
    arguments and options are static, so JAX's own cache gives one compiled function
    per static structure — shared by every call and every fitter with the same
    shapes, and never holding a fitter alive."""

    data: GridData
    likelihood: Any
    prior: Any  # the fitter's prior, used when prior_fn is None
    fixed: Bool[Array, " obs"]
    prior_fn: Callable | None = eqx.field(static=True)
    zero_points: str = eqx.field(static=True)
    target_names: tuple[str, ...] = eqx.field(static=True)
    observable_names: tuple[str, ...] = eqx.field(static=True)

    def prior_of(self, params):
        if self.prior_fn is None:
            return self.prior
        return self.prior_fn(params["prior"]).resolve(self.target_names, self.observable_names)

    def log_z(self, params, prior, x, s, u):
        """``log Z`` of one row (its observed values and errors calibrated by ``params``)."""
        x, s = _apply(params, x, s, self.zero_points, self.fixed)
        d = self.data
        lw, _ = log_weights_and_chi2(
            self.likelihood,
            prior,
            d,
            x,
            s,
            u,
            d.models,
            d.models_native,
            d.targets,
            d.log_weights,
            True,
        )
        return logsumexp(lw)


@eqx.filter_jit
def _chunk_rows(objective: _Objective, params, x, s, u):
    """Per-row ``(log Z (rows,), flat gradient (rows, n))``: rows are independent, so
    per-row gradients cost what the summed one does, and a row's NaN can be left out
    by selection instead of poisoning the sum."""
    _TRACES["rows"] += 1  # runs at trace time only: counts compilations

    def one(p, xr, sr, ur):
        return objective.log_z(p, objective.prior_of(p), xr, sr, ur)

    log_z, g = jax.vmap(jax.value_and_grad(one), in_axes=(None, 0, 0, 0))(params, x, s, u)
    return log_z, jax.vmap(lambda t: ravel_pytree(t)[0])(g)


@eqx.filter_jit
def _chunk_hessian(objective: _Objective, params, x, s, u, use):
    """(n, n) Hessian over the flattened ``params`` of the chunk's summed ``log Z``
    (rows where ``use`` is False carry finite stand-ins and count 0)."""
    _TRACES["hessian"] += 1
    flat, unravel = ravel_pytree(params)

    def total(theta):
        p = unravel(theta)
        prior = objective.prior_of(p)
        log_z = jax.vmap(lambda xr, sr, ur: objective.log_z(p, prior, xr, sr, ur))(x, s, u)
        return jnp.sum(jnp.where(use & jnp.isfinite(log_z), log_z, 0.0))

    return jax.hessian(total)(flat)


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
    flat, unravel = ravel_pytree(params)
    grid = fitter.grid
    objective = _Objective(
        fitter.data,
        fitter.likelihood_in_space,
        fitter.prior,
        jnp.asarray(fixed),
        prior_fn,
        zero_points,
        tuple(grid.target_names),
        tuple(grid.observable_names),
    )
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
        log_z, g = _chunk_rows(objective, params, *args)
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
            H += np.asarray(_chunk_hessian(objective, params, *hargs), np.float64)
    out = (total, unravel(jnp.asarray(grad)))
    if hessian:
        out = out + (H,)
    info = {
        "excluded_rows": np.flatnonzero(dropped),
        "no_observables": np.flatnonzero(~usable),
        "bad_input": bad.sum(axis=1).astype(np.int64),
    }
    return out + (n_used, info)


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
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
    flat0, unravel = ravel_pytree(params)

    # the rows that are not finite at the start are excluded once, explicitly: the
    # objective then keeps one set of rows (a row dropping out would raise it)
    _, _, n0, info = catalog_log_likelihood(fitter, X, S, params, details=True, **kw)
    if n0 == 0:
        raise ValueError(
            "calibrate: no usable row (every row lacks a usable band or has a non-finite "
            f"log Z at the starting params; excluded rows: {info['excluded_rows'].tolist()})."
        )
    M = info["bad_input"].size
    exclude = np.zeros(M, bool)
    exclude[info["excluded_rows"]] = True
    m = max(n0, 1)

    def objective(theta):
        """Mean negative log likelihood per object, and its gradient."""
        val, g, n = catalog_log_likelihood(
            fitter, X, S, unravel(jnp.asarray(theta)), exclude=exclude, **kw
        )
        gflat = np.asarray(ravel_pytree(g)[0], np.float64)
        if n != n0:
            # a row became non-finite here: the point is outside the usable region
            # (minimize_lbfgs backs off toward the last finite point)
            return np.nan, gflat
        return -val / m, -gflat / m

    res = minimize_lbfgs(objective, np.asarray(flat0, np.float64), maxiter, gtol=1e-7)
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
        n_iterations=res.n_iterations,
        success=res.success and bool(finite),
        message=message,
        excluded_rows=info["excluded_rows"],
        no_observables=info["no_observables"],
        bad_input=info["bad_input"],
        n_nonfinite_evaluations=res.n_nonfinite,
    )
