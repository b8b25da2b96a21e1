"""Learning zero points and prior parameters from a simulated catalog."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgrid import GridFitter, ModelGrid
from jaxgrid.calibrate import calibrate, catalog_log_likelihood
from jaxgrid.prob import GaussianPrior1D, GaussianProductLikelihood

SLOPES = np.array([1.0, -0.6, 0.3])
OFFS = np.array([20.0, 21.0, 19.5])


def _problem(n_obj=3000, seed=0):
    t = np.linspace(-5, 5, 1001)
    grid = ModelGrid(OFFS + t[:, None] * SLOPES, t[:, None], ["b0", "b1", "b2"], ["t"])
    rng = np.random.default_rng(seed)
    t_true = rng.normal(0.7, 0.9, n_obj)
    zp_true = np.array([0.05, -0.03, 0.0])
    X = OFFS + t_true[:, None] * SLOPES - zp_true + rng.normal(0, 0.1, (n_obj, 3))
    S = np.full_like(X, 0.1)
    return grid, X, S, zp_true


def prior_fn(p):
    return GaussianPrior1D("t", p["mu"], jnp.exp(p["log_sigma"]))


def test_gradient_of_catalog_likelihood_matches_finite_differences(x64):
    grid, X, S, _ = _problem(n_obj=200)
    fitter = GridFitter(grid, GaussianProductLikelihood(), use_standardised=False)
    params = {
        "zero_points": jnp.array([0.01, -0.02, 0.0]),
        "log_error_scale": jnp.zeros(3),
        "prior": {"mu": jnp.array(0.5), "log_sigma": jnp.array(0.1)},
    }
    val, grad, n = catalog_log_likelihood(fitter, X, S, params, prior_fn=prior_fn, chunk_size=64)
    assert n == 200 and np.isfinite(val)
    eps = 1e-6
    for path, g in [
        (("prior", "mu"), grad["prior"]["mu"]),
        (("zero_points", 1), grad["zero_points"][1]),
        (("log_error_scale", 2), grad["log_error_scale"][2]),
    ]:

        def shifted(d):
            p = jax.tree_util.tree_map(lambda a: a, params)
            if path[0] == "prior":
                p["prior"] = dict(p["prior"], mu=p["prior"]["mu"] + d)
            else:
                p[path[0]] = p[path[0]].at[path[1]].add(d)
            return catalog_log_likelihood(fitter, X, S, p, prior_fn=prior_fn, chunk_size=64)[0]

        fd = (shifted(eps) - shifted(-eps)) / (2 * eps)
        assert float(g) == pytest.approx(fd, rel=1e-6)


def test_calibrate_recovers_offsets_and_prior_within_errors(x64):
    grid, X, S, zp_true = _problem()
    fitter = GridFitter(grid, GaussianProductLikelihood(), use_standardised=False)
    params = {
        "zero_points": jnp.zeros(3),
        "prior": {"mu": jnp.array(0.0), "log_sigma": jnp.array(0.0)},
    }
    res = calibrate(fitter, X, S, params, prior_fn=prior_fn, fixed_zero_points=[2], chunk_size=500)
    assert res["success"] and res["n_objects"] == 3000
    zp, err = np.asarray(res["params"]["zero_points"]), np.asarray(res["stderr"]["zero_points"])
    assert err[2] == 0 and zp[2] == 0
    for j in (0, 1):
        assert abs(zp[j] - zp_true[j]) < 3 * err[j], (zp, err)
        assert err[j] < 0.02
    mu, mu_err = float(res["params"]["prior"]["mu"]), float(res["stderr"]["prior"]["mu"])
    sig = float(np.exp(res["params"]["prior"]["log_sigma"]))
    sig_err = float(res["stderr"]["prior"]["log_sigma"]) * sig
    assert abs(mu - 0.7) < 3 * mu_err and abs(sig - 0.9) < 3 * sig_err
    assert mu_err < 0.05


def test_grad_wrt_grid_observables_and_error_scale_jacfwd(x64):
    from jaxgrid.prob import log_evidence

    rng = np.random.default_rng(3)
    models = jnp.asarray(rng.normal(size=(50, 3)))
    targets = jnp.asarray(rng.uniform(size=(50, 1)))
    x = models[7] + 0.1
    s = jnp.full(3, 0.5)
    lik = GaussianProductLikelihood()

    def lz(m):
        return log_evidence(x, s, m, targets, lik, GaussianPrior1D(0, 0.5, 0.3))

    g = np.asarray(jax.grad(lz)(models))
    eps = 1e-6
    for i, j in [(7, 0), (3, 2), (40, 1)]:
        d = jnp.zeros_like(models).at[i, j].set(eps)
        assert g[i, j] == pytest.approx(
            float((lz(models + d) - lz(models - d)) / (2 * eps)), rel=1e-6, abs=1e-9
        )

    # forward mode over the error scales agrees with reverse mode
    def lz_scale(log_scale):
        return log_evidence(
            x, s * jnp.exp(log_scale), models, targets, lik, GaussianPrior1D(0, 0.5, 0.3)
        )

    np.testing.assert_allclose(
        np.asarray(jax.jacfwd(lz_scale)(jnp.zeros(3))),
        np.asarray(jax.grad(lz_scale)(jnp.zeros(3))),
        rtol=1e-10,
    )


def test_catalog_gradients_every_family_fd_and_chunking(x64):
    from jaxgrid.prob import PowerLawPrior1D

    grid, X, S, _ = _problem(n_obj=150)
    t = np.asarray(grid.targets)[:, 0]
    grid = ModelGrid(np.asarray(grid.observables)[t > 0], t[t > 0, None], ["b0", "b1", "b2"], ["t"])
    fitter = GridFitter(grid, GaussianProductLikelihood(), use_standardised=False)

    def prior_fn(p):
        from jaxgrid.prob import CompositePrior

        return CompositePrior(
            [
                GaussianPrior1D("t", p["mu"], jnp.exp(p["log_sigma"])),
                PowerLawPrior1D("t", p["alpha"], 0.001, 5.0),
            ]
        )

    params = {
        "zero_points": jnp.array([0.02, -0.01, 0.0]),
        "log_error_scale": jnp.array([0.1, -0.05, 0.0]),
        "prior": {"mu": jnp.array(0.6), "log_sigma": jnp.array(-0.1), "alpha": jnp.array(0.3)},
    }
    kw = dict(prior_fn=prior_fn)
    v1, g1, _ = catalog_log_likelihood(fitter, X, S, params, chunk_size=150, **kw)
    v2, g2, _ = catalog_log_likelihood(fitter, X, S, params, chunk_size=32, **kw)
    assert v1 == pytest.approx(v2, rel=1e-12)
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    gflat = np.asarray(jax.flatten_util.ravel_pytree(g2)[0])
    eps = 1e-6
    for i in range(flat.size):
        d = jnp.zeros_like(flat).at[i].set(eps)
        fd = (
            catalog_log_likelihood(fitter, X, S, unravel(flat + d), chunk_size=32, **kw)[0]
            - catalog_log_likelihood(fitter, X, S, unravel(flat - d), chunk_size=32, **kw)[0]
        ) / (2 * eps)
        assert gflat[i] == pytest.approx(fd, rel=1e-6, abs=1e-6), i


def test_zero_point_prior_penalty(x64):
    grid, X, S, _ = _problem(n_obj=100)
    fitter = GridFitter(grid, GaussianProductLikelihood(), use_standardised=False)
    params = {"zero_points": jnp.array([0.04, -0.02, 0.3])}
    v0, g0, n = catalog_log_likelihood(fitter, X, S, params, fixed_zero_points=[2], chunk_size=50)
    v1, g1, H1, _ = catalog_log_likelihood(
        fitter,
        X,
        S,
        params,
        fixed_zero_points=[2],
        chunk_size=50,
        zero_point_sigma=0.05,
        hessian=True,
    )
    assert v1 == pytest.approx(v0 - 0.5 * ((0.04 / 0.05) ** 2 + (0.02 / 0.05) ** 2), rel=1e-12)
    np.testing.assert_allclose(
        np.asarray(g1["zero_points"]),
        np.asarray(g0["zero_points"]) - np.array([0.04, -0.02, 0]) / 0.0025,
        rtol=1e-10,
    )


def test_grad_of_posterior_weights_and_target_moments(x64):
    from jaxgrid.prob import posterior_over_models

    rng = np.random.default_rng(4)
    models = jnp.asarray(rng.normal(size=(80, 3)))
    targets = jnp.asarray(rng.uniform(0, 2, size=(80, 1)))
    x = models[5] + 0.2
    s = jnp.full(3, 0.6)
    lik = GaussianProductLikelihood()

    def moments(mu, zp):
        w = posterior_over_models(x + zp, s, models, targets, lik, GaussianPrior1D(0, mu, 0.4))
        mean = jnp.sum(w * targets[:, 0])
        var = jnp.sum(w * (targets[:, 0] - mean) ** 2)
        return jnp.stack([w[5], mean, var])

    mu0, zp0 = jnp.array(1.1), jnp.array([0.05, -0.02, 0.0])
    jac_mu = np.asarray(jax.jacfwd(moments, argnums=0)(mu0, zp0))
    jac_zp = np.asarray(jax.jacrev(moments, argnums=1)(mu0, zp0))
    eps = 1e-6
    fd_mu = (np.asarray(moments(mu0 + eps, zp0)) - np.asarray(moments(mu0 - eps, zp0))) / (2 * eps)
    np.testing.assert_allclose(jac_mu, fd_mu, rtol=1e-6, atol=1e-10)
    for j in range(3):
        d = jnp.zeros(3).at[j].set(eps)
        fd = (np.asarray(moments(mu0, zp0 + d)) - np.asarray(moments(mu0, zp0 - d))) / (2 * eps)
        np.testing.assert_allclose(jac_zp[:, j], fd, rtol=1e-6, atol=1e-10)


def test_calibrate_compiles_its_objective_once_and_reuses_it():
    """A ragged catalog (1000 rows in chunks of 300) over 5 L-BFGS iterations: the
    chunk value-and-gradient and the Hessian are each traced once; a second call, and
    a new fitter of the same grid, trace nothing."""
    from jaxgrid.calibrate import hessian_trace_count, trace_count

    grid, X, S, _ = _problem(n_obj=1000, seed=2)
    fitter = GridFitter(grid, GaussianProductLikelihood(), use_standardised=False)

    def fresh_prior_fn(p):  # a new function: nothing compiled for it yet
        return GaussianPrior1D("t", p["mu"], jnp.exp(p["log_sigma"]))

    params = {
        "zero_points": jnp.zeros(3),
        "prior": {"mu": jnp.array(0.0), "log_sigma": jnp.array(0.0)},
    }
    kw = dict(prior_fn=fresh_prior_fn, fixed_zero_points=[2], chunk_size=300, maxiter=5)
    rows0, hess0 = trace_count(), hessian_trace_count()
    res = calibrate(fitter, X, S, params, **kw)
    assert res["n_iterations"] == 5  # many evaluations, 4 chunks each
    assert (trace_count() - rows0, hessian_trace_count() - hess0) == (1, 1)
    again = calibrate(
        GridFitter(grid, GaussianProductLikelihood(), use_standardised=False), X, S, params, **kw
    )
    assert (trace_count() - rows0, hessian_trace_count() - hess0) == (1, 1)
    for a, b in zip(
        jax.tree_util.tree_leaves(res["params"]), jax.tree_util.tree_leaves(again["params"])
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ------------------------------------------------ the shared L-BFGS and non-finite points
M_TRUE = np.array([1.0, -2.0])


def _huber_with_a_hole(theta):
    """sqrt(1 + |theta - m|^2) (minimum at m), NaN where theta_0 > m_0 + 0.01: nearly
    linear far away, so L-BFGS extrapolates its first steps far past the minimum into
    the NaN region."""
    d = theta - M_TRUE
    if theta[0] > M_TRUE[0] + 0.01:
        return np.nan, np.full(theta.shape, np.nan)
    v = np.sqrt(1.0 + d @ d)
    return v, d / v


def test_minimize_lbfgs_backs_off_non_finite_points_to_the_minimum():
    from scipy.optimize import minimize

    from jaxgrid.prob.optimize import minimize_lbfgs

    x0 = np.array([-1600.0, 30.0])
    res = minimize_lbfgs(_huber_with_a_hole, x0, maxiter=200, gtol=1e-10)
    assert res.success and res.n_nonfinite > 0
    np.testing.assert_allclose(res.x, M_TRUE, atol=1e-8)
    assert res.fun == pytest.approx(1.0, abs=1e-15)
    np.testing.assert_array_equal(res.grad, _huber_with_a_hole(res.x)[1])

    # the policy it replaces (bpz's: 1e10 and a zero gradient) stops where it started:
    # a cubic through 1e10 puts the next trial ~1e-11 of the way, and the line search
    # spends its evaluations without leaving x0
    def huge_value_zero_gradient(theta):
        v, g = _huber_with_a_hole(theta)
        return (v, g) if np.isfinite(v) else (1e10, np.zeros_like(g))

    old = minimize(
        huge_value_zero_gradient,
        x0,
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 200, "gtol": 1e-10},
    )
    assert not old.success and old.nit == 0
    np.testing.assert_array_equal(old.x, x0)


def test_minimize_lbfgs_returns_a_finite_point_at_the_edge_and_refuses_a_bad_start():
    """Minimum on the edge of the finite region (-theta, NaN beyond 1.01): the result
    creeps up to the edge, is finite, and its value and gradient are its own."""
    from jaxgrid.prob.optimize import minimize_lbfgs

    def edge(theta):
        if theta[0] > 1.01:
            return np.nan, np.array([np.nan])
        return -theta[0], np.array([-1.0])

    res = minimize_lbfgs(edge, np.array([0.0]), maxiter=100)
    assert 1.0099 < res.x[0] <= 1.01 and res.n_nonfinite > 0
    assert res.fun == -res.x[0] and res.grad.tolist() == [-1.0]
    with pytest.raises(ValueError, match="not finite at the starting point"):
        minimize_lbfgs(edge, np.array([2.0]), maxiter=100)
