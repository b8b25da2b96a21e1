"""The BPZ magnitude-dependent prior p(z, T | m0) (Benitez 2000, ApJ 536, 571).

Per broad type ``b`` (E/S0, spirals, irregular/starburst) and observed
reference magnitude ``m0`` (clipped to [20, 32]):

    f_b(m0) = f_b exp(-k_b (m0 - 20))   for E/S0 and spirals; f_irr = 1 - f_E - f_S
    p(z | b, m0) ∝ z^alpha_b exp(-(z / z_mb)^alpha_b),  z_mb = z0_b + km_b (m0 - 20)

normalised by a sum over the grid's redshifts, and each broad type's
fraction shared equally among the grid's templates of that type (interpolated
ones included). So for every ``m0`` the prior over the models of a template
grid sums to 1. Parameters are arrays: differentiable, and changing them does
not recompile.

`BPZPrior.hdfn` gives the published HDF-N parameters (Benitez 2000, Table 1 as
distributed with BPZ's ``prior_hdfn_gen``): alpha = (2.465, 1.806, 0.906),
z0 = (0.431, 0.390, 0.0626), km = (0.0913, 0.0636, 0.123), f = (0.35, 0.50),
k = (0.450, 0.147). For the 8 bundled templates (El, Sbc, Scd, Im, SB3, SB2,
two young SSPs) the broad types are (0, 1, 1, 2, 2, 2, 2, 2): E/S0 = El;
spirals = Sbc, Scd; irregular/starburst = the rest (the ``[1, 2, 5]`` split
of LSST DESC RAIL's BPZ configuration for this set).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.special import logsumexp
from jaxtyping import Array

from ..core.checks import float_dtype
from .optimize import minimize_lbfgs
from .posterior import log_weights_and_chi2
from .priors import FlatPrior, ObservableDependentPrior, require_input, resolve_column

__all__ = ["BPZPrior", "HDFN", "CWWSB4_BROAD_TYPES", "fit_bpz_prior", "fit_bpz_prior_photoz"]

HDFN = {
    "alpha": (2.465, 1.806, 0.906),
    "z0": (0.431, 0.390, 0.0626),
    "km": (0.0913, 0.0636, 0.123),
    "f": (0.35, 0.50),
    "k": (0.450, 0.147),
}
CWWSB4_BROAD_TYPES = (0, 1, 1, 2, 2, 2, 2, 2)


class BPZPrior(ObservableDependentPrior, strict=True):
    """p(z, T | m0) over the object's observed reference magnitude (see module docs).

    Build it for a grid with `BPZPrior.for_grid` (or `BPZPrior.hdfn`), which
    records the grid's redshifts and how many templates each broad type has;
    models are evaluated at their nearest grid redshift (exact on that grid).
    ``m0`` comes from the row's ``ref_observable``: a magnitude, or a flux when
    ``flux_zero_point`` is given (``m0 = zp - 2.5 log10 f``); a missing or
    non-positive reference gives ``m0 = m0_missing``.
    """

    alpha: Array
    z0: Array
    km: Array
    f: Array
    k: Array
    z_grid: Array
    broad_of_template: Array
    n_per_broad: Array
    ref_observable: Any = eqx.field(static=True)
    z_col: Any = eqx.field(static=True)
    type_col: Any = eqx.field(static=True)
    flux_zero_point: float | None = eqx.field(static=True)
    m0_missing: float = eqx.field(static=True)

    def __init__(
        self,
        alpha,
        z0,
        km,
        f,
        k,
        z_grid,
        broad_of_template,
        n_per_broad,
        ref_observable,
        z_col="z",
        type_col="type",
        flux_zero_point=None,
        m0_missing=25.0,
    ):
        dt = float_dtype()
        self.alpha, self.z0, self.km = (jnp.asarray(v, dt) for v in (alpha, z0, km))
        self.f, self.k = jnp.asarray(f, dt), jnp.asarray(k, dt)
        if self.alpha.shape != (3,) or self.f.shape != (2,):
            raise ValueError("BPZPrior: alpha, z0, km need 3 entries; f and k need 2.")
        self.z_grid = jnp.asarray(z_grid, dt)
        self.broad_of_template = jnp.asarray(broad_of_template, jnp.int32)
        self.n_per_broad = jnp.asarray(n_per_broad, dt)
        self.ref_observable, self.z_col, self.type_col = ref_observable, z_col, type_col
        self.flux_zero_point = None if flux_zero_point is None else float(flux_zero_point)
        self.m0_missing = float(m0_missing)

    @classmethod
    def for_grid(
        cls,
        grid,
        ref_observable,
        params: dict | None = None,
        broad_types: Sequence[int] = CWWSB4_BROAD_TYPES,
        z_col="z",
        type_col="type",
        flux_zero_point=None,
        m0_missing=25.0,
    ) -> BPZPrior:
        """The prior for a template grid (targets ``z`` and ``type``)."""
        p = dict(HDFN if params is None else params)
        z = np.unique(np.asarray(grid.get_target(z_col), np.float64))
        types = np.unique(np.asarray(grid.get_target(type_col), np.float64))
        broad_of = np.asarray(broad_types, np.int64)
        if np.any((broad_of < 0) | (broad_of > 2)):
            raise ValueError("BPZPrior: broad types must be 0 (E/S0), 1 (spiral) or 2 (irr/SB).")
        idx = np.clip(np.rint(types).astype(int), 0, broad_of.size - 1)
        if types.max() > broad_of.size - 1 + 0.5:
            raise ValueError(
                f"BPZPrior: the grid has types up to {types.max()} but "
                f"`broad_types` maps {broad_of.size} templates."
            )
        n_per = np.bincount(broad_of[idx], minlength=3).astype(np.float64)
        if np.any(n_per == 0):
            raise ValueError(f"BPZPrior: every broad type needs a template; counts {n_per}.")
        return cls(
            p["alpha"],
            p["z0"],
            p["km"],
            p["f"],
            p["k"],
            z,
            broad_of,
            n_per,
            ref_observable,
            z_col,
            type_col,
            flux_zero_point,
            m0_missing,
        )

    hdfn = for_grid  #: BPZPrior.hdfn(grid, ref_observable): the published HDF-N parameters

    def with_params(self, alpha, z0, km, f, k) -> BPZPrior:
        """The same prior (grid, columns) with other parameters."""
        return BPZPrior(
            alpha,
            z0,
            km,
            f,
            k,
            self.z_grid,
            self.broad_of_template,
            self.n_per_broad,
            self.ref_observable,
            self.z_col,
            self.type_col,
            self.flux_zero_point,
            self.m0_missing,
        )

    def fit(self, m0: Any, z_true: Any, maxiter: int = 500) -> BPZPrior:
        """Maximum-likelihood parameters from a training set (see `fit_bpz_prior`)."""
        return fit_bpz_prior(self, m0, z_true, maxiter)

    def fit_photoz(
        self,
        fitter,
        X,
        SIG,
        z_true,
        upper=None,
        maxiter: int = 200,
        chunk_size: int = 512,
        free: Sequence[str] = ("alpha", "z0", "km", "f", "k"),
        stiffness: float = 0.0,
    ) -> BPZPrior:
        """Parameters that make the best photo-z PDFs on a training set (see
        `fit_bpz_prior_photoz`); ``fitter`` gives the grid and likelihood."""
        return fit_bpz_prior_photoz(
            self, fitter, X, SIG, z_true, upper, maxiter, chunk_size, free, stiffness
        )

    def resolve(self, target_names, observable_names=None):
        z = resolve_column(self.z_col, target_names, "target", "BPZPrior")
        t = resolve_column(self.type_col, target_names, "target", "BPZPrior")
        ref = self.ref_observable
        if isinstance(ref, str) or observable_names is not None:
            ref = resolve_column(ref, observable_names, "observable", "BPZPrior")
        return BPZPrior(
            self.alpha,
            self.z0,
            self.km,
            self.f,
            self.k,
            self.z_grid,
            self.broad_of_template,
            self.n_per_broad,
            ref,
            z,
            t,
            self.flux_zero_point,
            self.m0_missing,
        )

    # ------------------------------------------------------------- formula
    def reference_magnitude(self, x) -> Array:
        v = x[self.ref_observable]
        if self.flux_zero_point is not None:
            ok = jnp.isfinite(v) & (v > 0)
            v = jnp.where(
                ok, self.flux_zero_point - 2.5 * jnp.log10(jnp.where(ok, v, 1.0)), jnp.nan
            )
        return jnp.clip(jnp.where(jnp.isfinite(v), v, self.m0_missing), 20.0, 32.0)

    def log_type_fractions(self, m0) -> Array:
        """``log f_b(m0)`` for the 3 broad types."""
        fe_fs = self.f * jnp.exp(-self.k * (m0 - 20.0))
        f_irr = jnp.maximum(1.0 - jnp.sum(fe_fs), 1e-30)
        return jnp.log(jnp.concatenate([fe_fs, f_irr[None]]))

    def log_pz_unnorm(self, z, m0) -> Array:
        """``log p(z | b, m0)`` up to normalisation, for each broad type (last axis)."""
        zm = self.z0 + self.km * (m0 - 20.0)
        zz = jnp.asarray(z)[..., None]
        pos = zz > 0
        lz = jnp.log(jnp.where(pos, zz, 1.0))
        val = self.alpha * lz - jnp.exp(self.alpha * (lz - jnp.log(zm)))
        return jnp.where(pos, val, -jnp.inf)

    def log_norm(self, m0) -> Array:
        """``log sum_z p_unnorm(z | b, m0)`` over the grid redshifts, per broad type.

        The log-sum-exp shift is the grid maximum, found without a reduction:
        ``alpha log z - (z / z_m)^alpha`` is unimodal with its peak at ``z = z_m``,
        so the maximum over the grid is at one of the two grid points around
        ``z_m``. Laid out (type, z) so the sum runs over contiguous memory.
        """
        zg = self.z_grid
        pos = zg > 0
        lz = jnp.log(jnp.where(pos, zg, 1.0))  # row-independent
        lzm = jnp.log(self.z0 + self.km * (m0 - 20.0))

        a = self.alpha[:, None]
        v = jnp.where(pos, a * lz - jnp.exp(a * (lz - lzm[:, None])), -jnp.inf)  # (3, n)
        n = zg.shape[0]
        hi = jnp.clip(jnp.searchsorted(zg, jnp.exp(lzm)), 0, n - 1)
        around = jnp.stack([jnp.maximum(hi - 1, 0), hi], axis=1)  # (3, 2)
        peak = jnp.max(jnp.take_along_axis(v, around, axis=1), axis=1)
        shift = lax.stop_gradient(jnp.where(jnp.isfinite(peak), peak, 0.0))
        return shift + jnp.log(jnp.sum(jnp.exp(v - shift[:, None]), axis=1))

    def log_prob_for_models(self, targets, observables=None, x=None):
        m0 = self.reference_magnitude(require_input(x, "the observed row x", "BPZPrior"))
        z = targets[:, self.z_col]
        tmpl = jnp.clip(
            jnp.rint(targets[:, self.type_col]).astype(jnp.int32),
            0,
            self.broad_of_template.shape[0] - 1,
        )
        b = self.broad_of_template[tmpl]
        # Per row: the normalisation and fraction of each broad type (3 values, from
        # the density on the grid redshifts) and zm^-alpha. Per model (row-independent,
        # computed once per chunk): alpha log z and z^alpha at the model's nearest grid
        # redshift. Per (row, model) pair that leaves a multiply-add and selects:
        # (z / zm)^alpha = z^alpha zm^-alpha — no exp, no gather (XLA's CPU gather in
        # the fused loop costs ~4 ns per pair).
        const = self.log_type_fractions(m0) - self.log_norm(m0) - jnp.log(self.n_per_broad)
        hi = jnp.clip(jnp.searchsorted(self.z_grid, z), 1, self.z_grid.shape[0] - 1)
        zi = jnp.where(jnp.abs(self.z_grid[hi - 1] - z) <= jnp.abs(self.z_grid[hi] - z), hi - 1, hi)
        zg = self.z_grid[zi]
        pos = zg > 0
        lz = jnp.log(jnp.where(pos, zg, 1.0))

        def pick(v):
            return jnp.where(b == 0, v[0], jnp.where(b == 1, v[1], v[2]))

        alpha = pick(self.alpha)
        # materialised once: else XLA fuses their exp/log into every (row, model) pair
        a_lz, z_pow = lax.optimization_barrier(
            (alpha * lz, jnp.where(pos, jnp.exp(alpha * lz), 0.0))
        )
        inv_zm_pow = jnp.exp(-self.alpha * jnp.log(self.z0 + self.km * (m0 - 20.0)))
        val = a_lz - z_pow * pick(inv_zm_pow) + pick(const)
        return jnp.where(pos, val, -jnp.inf)


def _unpack(theta):
    """Unconstrained vector -> (alpha, z0, km, f, k) with alpha, z0 > 0 and
    f_E, f_S > 0, f_E + f_S < 1 (a softmax over the three broad types at m0 = 20)."""
    alpha, z0 = jnp.exp(theta[0:3]), jnp.exp(theta[3:6])
    km = theta[6:9]
    frac = jnp.exp(theta[9:12] - logsumexp(theta[9:12]))
    return alpha, z0, km, frac[:2], theta[12:14]


def fit_bpz_prior(prior: BPZPrior, m0: Any, z_true: Any, maxiter: int = 500) -> BPZPrior:
    """Maximum-likelihood BPZ parameters from a training set with true redshifts.

    Maximises ``sum_i log sum_b f_b(m0_i) p(z_i | b, m0_i)`` — the broad type
    of a training galaxy is unknown, so the likelihood is the type mixture —
    with ``p(z | b, m0)`` normalised as a density over the prior's redshift
    grid (sum x dz). Positivity and ``f_E + f_S < 1`` are handled by
    reparametrisation; L-BFGS (SciPy) with JAX gradients, in float64 on the
    host. Rows with non-finite values are ignored. Returns a new prior.
    """
    m = np.clip(np.asarray(m0, np.float64), 20.0, 32.0)
    z = np.asarray(z_true, np.float64)
    ok = np.isfinite(m) & np.isfinite(z) & (z > 0)
    if ok.sum() < 10:
        raise ValueError("fit_bpz_prior: need at least 10 objects with finite m0 and z > 0.")
    m, z = m[ok], z[ok]
    zg = np.asarray(prior.z_grid, np.float64)
    dz = float(np.median(np.diff(zg))) if zg.size > 1 else 1.0

    def nll(theta):
        alpha, z0, km, f, k = _unpack(theta)
        q = prior.with_params(alpha, z0, km, f, k)

        def one(mi, zi):
            log_norm = logsumexp(q.log_pz_unnorm(q.z_grid, mi), axis=0) + jnp.log(dz)
            return logsumexp(q.log_type_fractions(mi) + q.log_pz_unnorm(zi, mi) - log_norm)

        return -jnp.mean(jax.vmap(one)(jnp.asarray(m), jnp.asarray(z)))

    alpha, z0, km, f, k = _lbfgs(nll, _theta0(prior), maxiter)
    return prior.with_params(alpha, z0, km, f, k)


def _theta0(prior: BPZPrior) -> np.ndarray:
    """The unconstrained parameter vector of `_unpack` for ``prior``'s parameters."""
    f0 = np.asarray(prior.f, np.float64)
    return np.concatenate(
        [
            np.log(np.asarray(prior.alpha, np.float64)),
            np.log(np.asarray(prior.z0, np.float64)),
            np.asarray(prior.km, np.float64),
            np.log(np.append(f0, max(1 - f0.sum(), 1e-3))),
            np.asarray(prior.k, np.float64),
        ]
    )


def _lbfgs(nll, theta0, maxiter, *args):
    """Minimise ``nll(theta, *args)`` (a JAX function; ``args`` host arrays) with
    `minimize_lbfgs` and JAX gradients, in float64 (scoped: the global JAX setting is
    untouched). Returns the unpacked parameters as float64 arrays."""
    with jax.enable_x64(True):
        vg = jax.jit(jax.value_and_grad(nll))
        args = tuple(jnp.asarray(a) for a in args)

        def fun(t):
            v, g = vg(jnp.asarray(t), *args)
            return float(v), np.asarray(g, np.float64)

        res = minimize_lbfgs(fun, theta0, maxiter)
        return [np.asarray(a, np.float64) for a in _unpack(jnp.asarray(res.x))]


_LOGLIK_TRACES = 0


def loglik_trace_count() -> int:
    """How many times the chunk log-likelihood function of `fit_bpz_prior_photoz` has
    been traced (compiled) in this process."""
    return _LOGLIK_TRACES


@eqx.filter_jit
def _chunk_log_likelihoods(data, likelihood, x, s, u):
    """(rows, models) ``log L + log w`` (flat prior) of a chunk of rows. The grid and
    likelihood are arguments, not closure constants: one compiled function serves
    every call with the same shapes."""
    global _LOGLIK_TRACES
    _LOGLIK_TRACES += 1  # runs at trace time only: counts compilations
    flat = FlatPrior()
    models = (data.models, data.models_native, data.targets, data.log_weights)

    def row(xr, sr, ur):
        return log_weights_and_chi2(likelihood, flat, data, xr, sr, ur, *models, True)[0]

    return jax.vmap(row)(x, s, u)


def fit_bpz_prior_photoz(
    prior: BPZPrior,
    fitter,
    X,
    SIG,
    z_true,
    upper=None,
    maxiter: int = 200,
    chunk_size: int = 512,
    free: Sequence[str] = ("alpha", "z0", "km", "f", "k"),
    stiffness: float = 0.0,
) -> BPZPrior:
    """BPZ parameters that maximise the photo-z log score of a training set.

    Maximises ``sum_i log p(z_i | photometry_i)``: each training object's
    posterior (``fitter``'s likelihood on its grid, this prior) evaluated at
    the grid redshift nearest its true ``z_i`` and summed over templates —
    the conditional likelihood of the true redshifts, a proper scoring rule
    of the photo-z PDFs. Unlike `fit_bpz_prior` (redshifts and magnitudes
    alone, where the split of galaxies between broad types is not
    identified), the templates' colours decide which broad type an object
    belongs to, so the type fractions are learned where they matter.

    The log likelihoods (objects x models) are computed once with the
    fitter (float32, in chunks of ``chunk_size`` rows, the last one padded: one
    compiled function) and held on the host; the optimisation (L-BFGS, exact
    JAX gradients, float64, `jaxgrid.prob.optimize.minimize_lbfgs`) only
    re-evaluates the prior.
    Memory: objects x models x 8 bytes. Objects whose true z is outside the
    grid's redshifts, or with no usable band, are left out. ``free`` names the
    parameter groups to fit (``"f"`` and ``"k"`` together: the type
    fractions); the others keep this prior's values. ``stiffness`` adds
    ``stiffness/2 |theta - theta_0|^2`` (per training object) to the mean
    negative log score, ``theta`` the unconstrained parameters (logs of alpha,
    z0 and the fractions; km; k) and ``theta_0`` this prior's: a Gaussian
    prior that keeps a small training set near the starting parameters.
    Returns a new prior for ``fitter``'s grid.
    """
    from jax.scipy.special import logsumexp as lse

    grid = fitter.grid
    q = prior.resolve(grid.target_names, grid.observable_names)
    X = np.asarray(X, np.float64)
    SIG = np.asarray(SIG, np.float64)
    z = np.asarray(z_true, np.float64)
    if X.ndim != 2 or X.shape != SIG.shape or z.shape != (X.shape[0],):
        raise ValueError("fit_bpz_prior_photoz: X, SIG (N, P) and z_true (N,) do not match.")
    if not isinstance(chunk_size, int | np.integer) or chunk_size < 1:
        raise ValueError(
            f"fit_bpz_prior_photoz: `chunk_size` must be a positive integer, got {chunk_size!r}."
        )
    U = None if upper is None else np.asarray(upper, bool)
    data, lik = fitter.data, fitter.likelihood_in_space
    dt = data.models.dtype
    n = X.shape[0]
    parts = []
    for a in range(0, n, chunk_size):
        b = min(a + chunk_size, n)
        # the tail is padded with copies of its last row (dropped below), so every
        # chunk has one shape and the function compiles once
        pad = ((0, chunk_size - (b - a)), (0, 0))
        x, s = (jnp.asarray(np.pad(v[a:b], pad, mode="edge"), dt) for v in (X, SIG))
        u = None if U is None else jnp.asarray(np.pad(U[a:b], pad, mode="edge"))
        parts.append(np.asarray(_chunk_log_likelihoods(data, lik, x, s, u))[: b - a])
    ll = np.concatenate(parts).astype(np.float64)
    zg = np.asarray(q.z_grid, np.float64)
    model_zi = np.abs(np.asarray(grid.targets[:, q.z_col])[:, None] - zg[None, :]).argmin(1)
    step = float(np.median(np.diff(zg))) if zg.size > 1 else 1.0
    true_zi = np.abs(z[:, None] - zg[None, :]).argmin(1)
    inside = np.isfinite(z) & (z >= zg[0] - step / 2) & (z <= zg[-1] + step / 2)
    ok = inside & np.isfinite(ll).any(1)
    if ok.sum() < 10:
        raise ValueError("fit_bpz_prior_photoz: need at least 10 usable training objects.")

    names = ("alpha", "z0", "km", "f", "k")
    unknown = set(free) - set(names)
    if unknown or not free or (("f" in free) != ("k" in free)):
        raise ValueError(
            f"fit_bpz_prior_photoz: `free` takes groups of {names} ('f' with 'k'), got {free!r}."
        )
    fixed = {n: getattr(q, n) for n in names if n not in free}

    def nll(theta, ll, x, true_zi, targets, model_zi):
        vals = dict(zip(names, _unpack(theta), strict=True))
        p = q.with_params(*(fixed.get(n, vals[n]) for n in names))

        def one(row):
            l_row, x_row, zi = row
            lw = l_row + p.log_prob_for_models(targets, None, x_row)
            return lse(jnp.where(model_zi == zi, lw, -jnp.inf)) - lse(lw)

        penalty = 0.5 * stiffness * jnp.sum((theta - theta0) ** 2)
        return -jnp.mean(jax.lax.map(one, (ll, x, true_zi), batch_size=256)) + penalty

    targets = np.asarray(grid.targets, np.float64)
    args = (ll[ok], X[ok], true_zi[ok], targets, model_zi)
    theta0 = _theta0(prior)
    vals = dict(zip(names, _lbfgs(nll, theta0, maxiter, *args), strict=True))
    return prior.with_params(*(fixed.get(n, vals[n]) for n in names))
