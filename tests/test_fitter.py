import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as ref
from conftest import make_grid

from jaxgrid import GridFitter, ModelGrid
from jaxgrid.prob import (
    FlatPrior,
    GaussianPrior1D,
    GaussianProductLikelihood,
    MagDependentRedshiftPrior,
    log_evidence,
    posterior_over_models,
)


def _row(grid, rng, i=11, noise=0.2):
    x = np.asarray(grid.observables, np.float64)[i] + rng.normal(0, noise, grid.n_observables)
    return x, np.full(grid.n_observables, 0.3)


def test_conjugate_normal_analytic(x64):
    # 1-D grid on [-10, 10]; Gaussian likelihood x Gaussian prior -> normal posterior.
    t = np.linspace(-10, 10, 20001)
    grid = ModelGrid(t[:, None], t[:, None], ["x"], ["mu"])
    fitter = GridFitter(
        grid, GaussianProductLikelihood(), GaussianPrior1D("mu", -0.5, 1.1), use_standardised=False
    )
    x, s = 1.3, 0.7
    edges = np.linspace(-10.0005, 10.0005, 20002)  # one model per bin
    dens, centres = fitter.posterior_over_target(np.array([x]), np.array([s]), "mu", edges)
    p = dens * np.diff(edges)
    mean = np.sum(p * centres)
    var = np.sum(p * (centres - mean) ** 2)
    v_post = 1.0 / (1.0 / s**2 + 1.0 / 1.1**2)
    m_post = v_post * (x / s**2 + -0.5 / 1.1**2)
    assert mean == pytest.approx(m_post, abs=1e-4)
    assert var == pytest.approx(v_post, abs=1e-4)
    assert np.sum(dens * np.diff(edges)) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("standardised", [False, True])
def test_fitter_matches_reference_x64(x64, rng, standardised):
    grid = make_grid(rng, n=300, p=4, q=2, weights=True)
    prior = GaussianPrior1D("t1", 5.0, 2.0)
    fitter = GridFitter(
        grid, GaussianProductLikelihood(bandwidth_floor=0.05), prior, use_standardised=standardised
    )
    x, s = _row(grid, rng)
    obs = np.asarray(grid.observables, np.float64)
    tgt = np.asarray(grid.targets, np.float64)
    if standardised:
        mu, sd = grid.standardiser.mean, grid.standardiser.std
        ll = ref.gaussian_loglike((x - mu) / sd, s / sd, (obs - mu) / sd, floor=0.05)
    else:
        ll = ref.gaussian_loglike(x, s, obs, floor=0.05)
    w_ref, lz_ref = ref.posterior(
        ll, ref.gaussian_logpdf(tgt[:, 1], 5.0, 2.0), np.asarray(grid.weights)
    )
    w = np.asarray(fitter.posterior_over_models(x, s))
    np.testing.assert_allclose(w, w_ref, rtol=1e-10, atol=1e-300)
    assert float(fitter.log_evidence(x, s)) == pytest.approx(lz_ref, rel=1e-10)
    edges = np.linspace(0, 10, 21)
    dens, _ = fitter.posterior_over_target(x, s, "t0", edges)
    # numpy.histogram sums weights by cumulative differences: ~1e-16 absolute noise
    np.testing.assert_allclose(
        dens, ref.weighted_hist_density(tgt[:, 0], w_ref, edges), rtol=1e-9, atol=1e-14
    )
    cand = np.array([3, 11, 40, 41, 200])
    wc = np.asarray(fitter.posterior_over_models(x, s, candidate_idx=cand))
    wr, _ = ref.posterior(
        ll[cand], ref.gaussian_logpdf(tgt[cand, 1], 5.0, 2.0), np.asarray(grid.weights)[cand]
    )
    np.testing.assert_allclose(wc, wr, rtol=1e-10, atol=1e-300)


def test_fitter_float32_close_to_reference(rng):
    grid = make_grid(rng, n=300, p=4, q=2)
    fitter = GridFitter(grid, use_standardised=False)
    x, s = _row(grid, rng)
    obs32 = np.asarray(grid.observables).astype(np.float64)
    w_ref, lz = ref.posterior(
        ref.gaussian_loglike(x.astype(np.float32), s.astype(np.float32), obs32), 0.0
    )
    np.testing.assert_allclose(
        np.asarray(fitter.posterior_over_models(x, s)), w_ref, rtol=2e-4, atol=1e-7
    )
    assert float(fitter.log_evidence(x, s)) == pytest.approx(lz, rel=1e-5)


def test_use_standardised_keeps_user_fit(rng):
    grid = make_grid(rng, n=100)
    grid.fit_standardiser(np.arange(100) < 30)
    user_mean = grid.standardiser.mean.copy()
    GridFitter(grid, use_standardised=True)
    np.testing.assert_array_equal(grid.standardiser.mean, user_mean)
    fresh = make_grid(rng, n=100)
    GridFitter(fresh, use_standardised=True)
    assert fresh.standardiser.is_fitted


def test_jit_equals_eager_and_vmap_equals_loop(rng):
    grid = make_grid(rng, n=400, p=4, q=2)
    lik = GaussianProductLikelihood(bandwidth_floor=0.05)
    prior = GaussianPrior1D(1, 5.0, 2.0)
    X = np.asarray(grid.observables)[:64] + rng.normal(0, 0.2, (64, 4)).astype(np.float32)
    X[3, 1] = np.nan
    S = np.full((64, 4), 0.3, np.float32)

    def one(x, s):
        return posterior_over_models(x, s, grid.observables, grid.targets, lik, prior)

    eager = np.asarray(one(jnp.asarray(X[0]), jnp.asarray(S[0])))
    jitted = np.asarray(jax.jit(one)(jnp.asarray(X[0]), jnp.asarray(S[0])))
    np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-9)
    batched = np.asarray(jax.vmap(one)(jnp.asarray(X), jnp.asarray(S)))
    looped = np.stack([np.asarray(one(jnp.asarray(x), jnp.asarray(s))) for x, s in zip(X, S)])
    np.testing.assert_allclose(batched, looped, rtol=1e-5, atol=1e-9)


def test_grad_of_log_evidence_matches_finite_differences(x64, rng):
    grid = make_grid(rng, n=200, p=3, q=2)
    lik = GaussianProductLikelihood()
    x, s = _row(grid, rng, noise=0.5)
    s = np.full(3, 0.8)

    def lz_x(xx):
        return log_evidence(
            xx, s, grid.observables, grid.targets, lik, GaussianPrior1D(1, 5.0, 2.0)
        )

    def lz_mu(mu):
        return log_evidence(x, s, grid.observables, grid.targets, lik, GaussianPrior1D(1, mu, 2.0))

    g = np.asarray(jax.grad(lz_x)(jnp.asarray(x)))
    eps = 1e-6
    for j in range(3):
        d = np.zeros(3)
        d[j] = eps
        fd = (float(lz_x(jnp.asarray(x + d))) - float(lz_x(jnp.asarray(x - d)))) / (2 * eps)
        assert g[j] == pytest.approx(fd, rel=1e-6, abs=1e-8)
    gmu = float(jax.grad(lz_mu)(5.0))
    fd = (float(lz_mu(5.0 + eps)) - float(lz_mu(5.0 - eps))) / (2 * eps)
    assert gmu == pytest.approx(fd, rel=1e-6)
    # The fitter's own log_evidence is differentiable in the row too.
    fitter = GridFitter(grid, lik, GaussianPrior1D("t1", 5.0, 2.0))
    gf = np.asarray(jax.grad(lambda xx: fitter.log_evidence(xx, s))(jnp.asarray(x)))
    assert np.all(np.isfinite(gf))


def test_nan_band_equals_grid_without_that_column(rng):
    grid = make_grid(rng, n=300, p=4, q=2)
    fitter = GridFitter(grid, prior=GaussianPrior1D("t0", 5.0, 3.0))
    x, s = _row(grid, rng)
    x_nan = x.copy()
    x_nan[2] = np.nan
    sub = grid.select(observables=[0, 1, 3])
    fit_sub = GridFitter(sub, prior=GaussianPrior1D("t0", 5.0, 3.0))
    w = np.asarray(fitter.posterior_over_models(x_nan, s))
    w_sub = np.asarray(fit_sub.posterior_over_models(x[[0, 1, 3]], s[[0, 1, 3]]))
    # Equal to float32 rounding: XLA vectorises the masked 4-band sum and the 3-band sum
    # differently on some CPUs (bitwise equal on AVX-512 machines, ~1 ulp of log w on an
    # AMD EPYC without it), so exact equality is a property of the CPU, not of the code.
    np.testing.assert_array_equal(w == 0, w_sub == 0)
    np.testing.assert_allclose(w, w_sub, rtol=2e-5, atol=0)
    edges = np.linspace(0, 10, 11)
    np.testing.assert_allclose(
        fitter.posterior_over_target(x_nan, s, "t1", edges)[0],
        fit_sub.posterior_over_target(x[[0, 1, 3]], s[[0, 1, 3]], "t1", edges)[0],
        rtol=2e-5,
        atol=1e-12,
    )


def test_all_nan_row_gives_minus_inf_and_nan_density(rng):
    grid = make_grid(rng, n=50)
    fitter = GridFitter(grid)
    x = np.full(4, np.nan)
    s = np.full(4, 0.1)
    assert float(fitter.log_evidence(x, s)) == -np.inf
    with pytest.warns(RuntimeWarning, match="no usable observable"):
        dens, _ = fitter.posterior_over_target(x, s, "t0", np.linspace(0, 10, 5))
    assert np.all(np.isnan(dens))
    with pytest.warns(RuntimeWarning, match="no usable observable"):
        w = np.asarray(fitter.posterior_over_models(x, s))
    assert np.all(w == 0)


def test_no_mass_in_bins_warns(rng):
    grid = make_grid(rng, n=50)
    fitter = GridFitter(grid)
    x, s = _row(grid, rng)
    with pytest.warns(RuntimeWarning, match="no posterior mass"):
        dens, _ = fitter.posterior_over_target(x, s, "t0", np.linspace(100, 200, 5))
    assert np.all(np.isnan(dens))


def test_upper_limits_through_fitter(x64, rng):
    grid = make_grid(rng, n=200, p=3, q=1)
    fitter = GridFitter(
        grid, GaussianProductLikelihood(limit_kind="magnitude"), use_standardised=False
    )
    x, s = _row(grid, rng)
    upper = np.array([False, True, False])
    w = np.asarray(fitter.posterior_over_models(x, s, upper_limits=upper))
    ll = ref.gaussian_loglike(
        x, s, np.asarray(grid.observables), upper=upper, limit_kind="magnitude"
    )
    np.testing.assert_allclose(w, ref.posterior(ll, 0.0)[0], rtol=1e-10, atol=1e-300)


def test_observable_dependent_prior_gets_native_values(x64, rng):
    n = 400
    mag = rng.uniform(18, 26, n)
    z = rng.uniform(0, 3, n)
    grid = ModelGrid(np.column_stack([mag, mag - 0.5]), np.column_stack([z]), ["r", "i"], ["z"])
    prior = MagDependentRedshiftPrior(
        "z", "r", np.linspace(0, 3, 7), np.linspace(18, 26, 5), magnitude_from="observed"
    )
    prior = prior.resolve(grid.target_names, grid.observable_names).fit_from_grid(grid)
    fitter = GridFitter(grid, prior=prior, use_standardised=True)
    x, s = np.array([21.0, 20.4]), np.array([0.1, 0.1])
    mu, sd = grid.standardiser.mean, grid.standardiser.std
    ll = ref.gaussian_loglike((x - mu) / sd, s / sd, (np.asarray(grid.observables) - mu) / sd)
    lp = np.asarray(prior.log_prob_for_models(grid.targets, grid.observables, jnp.asarray(x)))
    np.testing.assert_allclose(
        np.asarray(fitter.posterior_over_models(x, s)),
        ref.posterior(ll, lp)[0],
        rtol=1e-10,
        atol=1e-300,
    )


def test_zero_weight_models_are_excluded(rng):
    grid = make_grid(rng, n=20, p=2, q=1)
    w = np.ones(20)
    w[:5] = 0
    g2 = ModelGrid(
        grid.observables, grid.targets, grid.observable_names, grid.target_names, weights=w
    )
    x, s = _row(g2, rng, i=2)
    post = np.asarray(GridFitter(g2).posterior_over_models(x, s))
    assert np.all(post[:5] == 0) and post.sum() == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize(
    "call,exc,msg",
    [
        (
            lambda f: f.posterior_over_models(np.zeros(3), np.ones(4)),
            ValueError,
            r"`x_native` must have shape \(4,\)",
        ),
        (
            lambda f: f.posterior_over_models(np.zeros(4), np.ones(5)),
            ValueError,
            "`sigma_native` must have shape",
        ),
        (
            lambda f: f.posterior_over_models(np.zeros(4), -np.ones(4)),
            ValueError,
            "must be positive",
        ),
        (lambda f: f.posterior_over_models(np.full(4, np.inf), np.ones(4)), ValueError, "infinite"),
        (
            lambda f: f.posterior_over_target(np.zeros(4), np.ones(4), "logM", [0, 1]),
            KeyError,
            "known targets",
        ),
        (
            lambda f: f.posterior_over_target(np.zeros(4), np.ones(4), "t0", [0, 2, 1]),
            ValueError,
            "`bins` must be strictly increasing",
        ),
        (
            lambda f: f.posterior_over_target(np.zeros(4), np.ones(4), "t0", [1.0]),
            ValueError,
            "`bins`",
        ),
        (
            lambda f: f.posterior_over_models(np.zeros(4), np.ones(4), upper_limits=[1, 0]),
            ValueError,
            "upper_limits",
        ),
        (
            lambda f: f.posterior_over_models(np.zeros(4), np.ones(4), candidate_idx=[1000]),
            IndexError,
            "candidate_idx",
        ),
    ],
)
def test_argument_errors(rng, call, exc, msg):
    f = GridFitter(make_grid(rng, n=30))
    with pytest.raises(exc, match=msg):
        call(f)


def test_constructor_type_errors(rng):
    grid = make_grid(rng, n=10)
    with pytest.raises(TypeError, match="ModelGrid"):
        GridFitter(np.zeros((3, 3)))
    with pytest.raises(TypeError, match="likelihood"):
        GridFitter(grid, likelihood=FlatPrior())
    with pytest.raises(TypeError, match="prior"):
        GridFitter(grid, prior=GaussianProductLikelihood())
    with pytest.raises(KeyError, match="unknown target"):
        GridFitter(grid, prior=GaussianPrior1D("logM", 0, 1))


def test_public_surface():
    import jaxgrid
    import jaxgrid.prob as prob

    assert isinstance(jaxgrid.__version__, str)
    for name in ["ModelGrid", "GridFitter"]:
        assert hasattr(jaxgrid, name)
    for name in [
        "GaussianProductLikelihood",
        "CensoredSizeLikelihood",
        "CompositeLikelihood",
        "FlatPrior",
        "GaussianPrior1D",
        "UniformPrior1D",
        "DeltaPrior1D",
        "ExponentialPrior1D",
        "ExponentialTruncatedPrior1D",
        "PowerLawPrior1D",
        "EmpiricalHistogramPrior1D",
        "EmpiricalFlatteningPriorND",
        "ObservableDependentPrior",
        "MagDependentRedshiftPrior",
        "CompositePrior",
        "ObservableCompositePrior",
        "posterior_over_models",
    ]:
        assert hasattr(prob, name), name
