"""Per-model noise models (issue 17): `ModelGrid(model_sigma=, model_bias=)` in the
Gaussian, unnormalised Gaussian and free-amplitude likelihoods, on every path (single
rows, the whole grid, model blocks, candidate lists, rows far from every model),
against the float64 references of tests/reference.py; gradients against finite
differences; files; the refusal of likelihoods that ignore a noise model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as ref
from batch_helpers import BruteForceKNN

from jaxgrid import (
    CensoredSizeLikelihood,
    GaussianProductLikelihood,
    GridFitter,
    MagDependentRedshiftPrior,
    ModelGrid,
    NumbaGaussianProductLikelihood,
)
from jaxgrid.prob import ScaledGaussianLikelihood

EDGES = [np.linspace(0.0, 1.0, 41), np.linspace(0.0, 1.0, 31)]


def _noisy_grid(rng, n=3000, p=3, bias=True):
    t = rng.uniform(0.0, 1.0, (n, 2))
    obs = np.column_stack([t[:, 0], t[:, 1], t[:, 0] + t[:, 1]])[:, :p] * 2.0 + 18.0
    sm = rng.uniform(0.0, 0.3, (n, p))
    b = rng.normal(0.0, 0.05, (n, p)) if bias else None
    grid = ModelGrid(obs, t, [f"m{j}" for j in range(p)], ["a", "b"], model_sigma=sm, model_bias=b)
    return grid, obs, sm, np.zeros((n, p)) if b is None else b


def _rows(rng, m=24, p=3):
    x = 18.0 + rng.uniform(0.3, 3.5, (m, p))
    s = rng.uniform(0.02, 0.4, (m, p))
    return x, s


# ------------------------------------------------------------------ likelihoods
@pytest.mark.parametrize("limit_kind", ["flux", "magnitude"])
def test_gaussian_with_model_noise_matches_reference_x64(x64, rng, limit_kind):
    n, p = 40, 4
    models = rng.normal(0, 1, (n, p))
    sm, b = rng.uniform(0, 0.8, (n, p)), rng.normal(0, 0.2, (n, p))
    x, s = rng.normal(0, 1, p), rng.uniform(0.1, 0.5, p)
    x[1], upper = np.nan, np.array([False, False, True, False])  # a missing band, a limit
    wide = jnp.asarray(np.concatenate([models, sm, b], axis=1))
    for lik, normalised in (
        (GaussianProductLikelihood(bandwidth_floor=0.2, scale=1.3, limit_kind=limit_kind), True),
        (NumbaGaussianProductLikelihood(0.2, 1.3, limit_kind=limit_kind), False),
    ):
        got = np.asarray(lik.log_likelihood(jnp.asarray(x), jnp.asarray(s), wide, upper))
        want = ref.gaussian_loglike_noise(
            x, s, models, sm, b, 0.2, 1.3, upper, limit_kind, normalised=normalised
        )
        np.testing.assert_allclose(got, want, rtol=1e-11)
        host = lik.host_log_likelihood_rows(
            np.tile(x, (n, 1)), np.tile(s, (n, 1)), np.asarray(wide), np.tile(upper, (n, 1))
        )
        np.testing.assert_allclose(host, want, rtol=1e-11)
    # no model error and no bias: exactly the plain likelihood
    zero = jnp.asarray(np.concatenate([models, 0 * sm, 0 * b], axis=1))
    lik = GaussianProductLikelihood()
    np.testing.assert_array_equal(
        lik.log_likelihood(jnp.asarray(x), jnp.asarray(s), zero, upper),
        lik.log_likelihood(jnp.asarray(x), jnp.asarray(s), jnp.asarray(models), upper),
    )


def test_ratio_with_model_noise_is_accurate_far_from_every_model(x64, rng):
    """``log L_i - log L_ref`` from differences to the reference model equals the float64
    difference, and stays accurate in float32 where ``log L`` itself is ~1e6."""
    n, p = 30, 3
    models = rng.normal(0, 0.01, (n, p))
    sm, b = rng.uniform(0, 0.02, (n, p)), rng.normal(0, 0.005, (n, p))
    x, s = np.array([30.0, -25.0, 12.0]), np.full(p, 0.02)
    upper = np.array([False, False, True])
    lik = GaussianProductLikelihood()
    want = ref.gaussian_loglike_noise(x, s, models, sm, b, upper=upper)
    want = want - want[7]
    wide = np.concatenate([models, sm, b], axis=1)
    got64 = lik.log_likelihood_ratio(
        jnp.asarray(x), jnp.asarray(s), jnp.asarray(wide), jnp.asarray(wide[7]), upper
    )
    np.testing.assert_allclose(got64, want, rtol=1e-9, atol=1e-6)
    with jax.enable_x64(False):
        lik32 = GaussianProductLikelihood()
        f32 = [jnp.asarray(a, jnp.float32) for a in (x, s, wide, wide[7], models - models[7])]
        got32 = lik32.log_likelihood_ratio(*f32[:4], upper, f32[4])
        plain = lik32.log_likelihood(*f32[:3], upper)
    assert np.max(np.abs(want)) > 10.0  # the test means something: large ratios
    np.testing.assert_allclose(np.asarray(got32, np.float64), want, rtol=2e-5, atol=0.05)
    # the plain float32 difference of ~1e6 values is off by whole nats
    assert np.max(np.abs(np.asarray(plain - plain[7], np.float64) - want)) > 0.05


@pytest.mark.parametrize("mode", ["profile", "marginal"])
def test_scaled_with_model_noise_matches_reference_x64(x64, rng, mode):
    n, p = 15, 6
    models = rng.uniform(0.2, 2.0, (n, p))
    sm, b = 0.15 * models * rng.uniform(0, 1, (n, p)), 0.02 * rng.normal(0, 1, (n, p))
    f = 3.7 * models[4] + rng.normal(0, 0.1, p)
    f[2] = -0.3
    s = rng.uniform(0.05, 0.2, p)
    lik = ScaledGaussianLikelihood(mode=mode)
    wide = jnp.asarray(np.concatenate([models, sm, b], axis=1))
    got = np.asarray(lik.log_likelihood(jnp.asarray(f), jnp.asarray(s), wide))
    want = ref.scaled_loglike_noise(f, s, models, sm, b, mode)
    np.testing.assert_allclose(got, want, rtol=1e-8)
    # the model error matters here (not a vacuous comparison)
    plain = np.asarray(lik.log_likelihood(jnp.asarray(f), jnp.asarray(s), jnp.asarray(models)))
    assert np.max(np.abs(plain - got)) > 0.1


def test_scaled_censored_nondetection_uses_the_model_error(x64, rng):
    """A censored band: P(model flux below n s_lim) with the model's error widening it."""
    models = rng.uniform(0.5, 2.0, (6, 4))
    sm = np.full((6, 4), 0.3)
    f, s = 2.0 * models[1], np.full(4, 0.05)
    upper = np.array([False, False, False, True])
    lik = ScaledGaussianLikelihood(mode="profile", nondetection="censored")
    wide = np.concatenate([models, sm, 0 * sm], axis=1)
    got = np.asarray(lik.log_likelihood(jnp.asarray(f), jnp.asarray(s), jnp.asarray(wide), upper))
    det = np.array([True, True, True, False])
    gauss = ref.scaled_loglike_noise(f[det], s[det], models[:, det], sm[:, det], 0 * sm[:, det])
    # the amplitude of the detected bands, as the reference fits it
    for i in range(6):
        m, v0 = models[i, det], s[det] ** 2
        a0 = max(np.sum(f[det] * m / v0) / np.sum(m**2 / v0), 0)
        v = v0 + (a0 * sm[i, det]) ** 2
        a = max(np.sum(f[det] * m / v) / np.sum(m**2 / v), 0)
        tot = np.hypot(s[3], a0 * sm[i, 3])
        want = gauss[i] + ref.stats.norm.logcdf((1.0 * s[3] - a * models[i, 3]) / tot)
        np.testing.assert_allclose(got[i], want, rtol=1e-9)


def test_gradients_through_the_noise_model_match_finite_differences_x64(x64, rng):
    n, p = 25, 3
    models = rng.normal(0, 1, (n, p))
    sm, b = rng.uniform(0.1, 0.5, (n, p)), rng.normal(0, 0.1, (n, p))
    x, s = rng.normal(0, 1, p), rng.uniform(0.2, 0.4, p)
    lik = GaussianProductLikelihood()
    scaled = ScaledGaussianLikelihood(mode="marginal")
    fpos = np.abs(models) + 0.5

    def log_z(noise, xx, which):
        if which == "gauss":
            wide = jnp.concatenate([jnp.asarray(models), noise[0], noise[1]], axis=1)
            return jax.scipy.special.logsumexp(lik.log_likelihood(xx, jnp.asarray(s), wide))
        wide = jnp.concatenate([jnp.asarray(fpos), noise[0], noise[1]], axis=1)
        ff = 2.0 * jnp.asarray(fpos[3]) + xx
        return jax.scipy.special.logsumexp(scaled.log_likelihood(ff, jnp.asarray(s), wide))

    noise = (jnp.asarray(sm), jnp.asarray(b))
    for which in ("gauss", "scaled"):
        g_noise, g_x = jax.grad(log_z, argnums=(0, 1))(noise, jnp.asarray(x) * 0.1, which)
        eps = 1e-6
        for part in (0, 1):
            i, j = 3, 1
            up = [np.array(a) for a in noise]
            dn = [np.array(a) for a in noise]
            up[part][i, j] += eps
            dn[part][i, j] -= eps
            fd = (
                log_z(tuple(map(jnp.asarray, up)), jnp.asarray(x) * 0.1, which)
                - log_z(tuple(map(jnp.asarray, dn)), jnp.asarray(x) * 0.1, which)
            ) / (2 * eps)
            np.testing.assert_allclose(g_noise[part][i, j], fd, rtol=1e-6, atol=1e-9)
        for j in range(p):
            e = np.zeros(p)
            e[j] = eps
            xx = jnp.asarray(x) * 0.1
            fd = (log_z(noise, xx + e, which) - log_z(noise, xx - e, which)) / (2 * eps)
            np.testing.assert_allclose(g_x[j], fd, rtol=1e-6, atol=1e-9)


# ------------------------------------------------------------------ the fitter
def _row_reference_lw(grid, obs, sm, b, x, s, standardised=False, prior=None):
    if standardised:
        mu, sd = grid.standardiser.mean, grid.standardiser.std
        ll = ref.gaussian_loglike_noise((x - mu) / sd, s / sd, (obs - mu) / sd, sm / sd, b / sd)
    else:
        ll = ref.gaussian_loglike_noise(x, s, obs, sm, b)
    if prior is not None:
        ll = ll + prior
    return ll


@pytest.mark.parametrize("standardised", [False, True])
def test_single_row_posterior_with_model_noise_x64(x64, rng, standardised):
    grid, obs, sm, b = _noisy_grid(rng, n=400)
    fitter = GridFitter(grid, GaussianProductLikelihood(), use_standardised=standardised)
    x, s = _rows(rng, m=1)
    w = np.asarray(fitter.posterior_over_models(x[0], s[0]))
    want, lz = ref.posterior(_row_reference_lw(grid, obs, sm, b, x[0], s[0], standardised), 0.0)
    np.testing.assert_allclose(w, want, rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(float(fitter.log_evidence(x[0], s[0])), lz, rtol=1e-11)


def _check_batch(res, grid, obs, sm, b, X, S, tol, cand=None):
    t = np.asarray(grid.targets, np.float64)
    for i, r in enumerate(res):
        lw = _row_reference_lw(grid, obs, sm, b, X[i], S[i])
        ids = np.arange(lw.size)
        if cand is not None:
            ids = cand[i]
            lw = lw[ids]
        want = ref.batch_row_reference(
            lw, ids, t[ids], keep_mass=0.99, keep_min=16, cap=None, stats_cols=(0, 1), edges=EDGES
        )
        np.testing.assert_allclose(r["log_evidence"], want["log_evidence"], rtol=tol, atol=5e-5)
        n_got, n_want = r["truncation"]["n_after"], want["n_after"]
        assert abs(n_got - n_want) <= 1, (i, n_got, n_want)
        if n_got == n_want:
            np.testing.assert_array_equal(np.sort(r["candidates"]), np.sort(want["candidates"]))
            for j, name in enumerate(["a", "b"]):
                for k in ("mean", "std", "median"):
                    np.testing.assert_allclose(
                        r["stats"][name][k], want["stats"][j][k], rtol=5e-4, atol=5e-4
                    )


def test_fit_batch_with_model_noise_whole_grid_blocks_and_candidates(rng):
    """Float32 batch results against the float64 reference; ragged model blocks equal
    the whole grid; KD-tree style candidate lists use the candidates' own noise."""
    grid, obs, sm, b = _noisy_grid(rng, n=3000)
    fitter = GridFitter(grid, GaussianProductLikelihood(), use_standardised=False)
    X, S = _rows(rng)
    kw = dict(
        stats_for=["a", "b"],
        stats_bins=EDGES,
        return_mode="list",
        verbose=False,
        posterior_keep_min_candidates=16,
    )
    whole = fitter.fit_batch(X, S, **kw)
    _check_batch(whole, grid, obs, sm, b, X, S, tol=1e-5)
    blocks = fitter.fit_batch(X, S, model_block_size=700, **kw)  # 5 ragged blocks
    for a, c in zip(whole, blocks, strict=True):
        np.testing.assert_allclose(a["log_evidence"], c["log_evidence"], rtol=1e-6)
        assert a["truncation"]["n_after"] == c["truncation"]["n_after"]
        np.testing.assert_allclose(a["stats"]["a"]["mean"], c["stats"]["a"]["mean"], atol=1e-5)
    binner = BruteForceKNN(grid, 300)
    cand = binner.batch_candidates(X, S)[0]
    listed = fitter.fit_batch(X, S, binner=binner, **kw)
    _check_batch(listed, grid, obs, sm, b, X, S, tol=1e-5, cand=cand)


def test_rows_far_from_every_model_keep_an_accurate_evidence(rng):
    """The step's refinement for rows far from every model (log Z ~ -1e5): relative to
    the best model on the device, that model's log L in float64 on the host — with the
    noise model on both sides."""
    grid, obs, sm, b = _noisy_grid(rng, n=500)
    fitter = GridFitter(grid, GaussianProductLikelihood(), use_standardised=False)
    X = np.array([[100.0, 101.0, 98.0], [19.0, 19.5, 20.0]])
    S = np.full_like(X, 0.05)
    res = fitter.fit_batch(X, S, return_mode="list", verbose=False, stats_for=["a"])
    for i in range(2):
        lw = _row_reference_lw(grid, obs, sm, b, X[i], S[i])
        want = ref.logsumexp(lw)
        # float32 differences between models whose errors differ: c^2 (v_ref - v) / (v v_ref)
        # with c ~ 300 sigma carries ~1e-7 relative rounding of ~1e5, i.e. ~0.01 nats
        np.testing.assert_allclose(res[i]["log_evidence"], want, rtol=1e-9, atol=0.02)
    assert res[0]["log_evidence"] < -1e4  # the far row really is far


def test_scaled_fit_batch_with_model_noise_x64(x64, rng):
    n, p = 300, 5
    z = np.linspace(0, 1, n)
    models = 1.0 + np.outer(z, np.arange(1, p + 1)) * 0.3
    sm = 0.1 * models
    grid = ModelGrid(models, z[:, None], [f"f{j}" for j in range(p)], ["z"], model_sigma=sm)
    lik = ScaledGaussianLikelihood(mode="marginal")
    fitter = GridFitter(grid, lik, use_standardised=False)
    F = 5.0 * models[[40, 200]] * (1 + rng.normal(0, 0.03, (2, p)))
    S = np.full_like(F, 0.05)
    res = fitter.fit_batch(F, S, return_mode="list", verbose=False, stats_for=["z"])
    for i in range(2):
        ll = ref.scaled_loglike_noise(F[i], S[i], models, sm, 0 * sm, "marginal")
        np.testing.assert_allclose(res[i]["log_evidence"], ref.logsumexp(ll), rtol=1e-8)


# ------------------------------------------------------------------ the grid
def test_model_noise_arrays_are_checked(rng):
    obs, t = rng.normal(size=(5, 2)), rng.normal(size=(5, 1))
    with pytest.raises(ValueError, match="model_sigma.*shape"):
        ModelGrid(obs, t, ["a", "b"], ["t"], model_sigma=np.ones((5, 3)))
    with pytest.raises(ValueError, match="model_sigma.*>= 0"):
        ModelGrid(obs, t, ["a", "b"], ["t"], model_sigma=-np.ones((5, 2)))
    with pytest.raises(ValueError, match="model_bias.*finite"):
        ModelGrid(obs, t, ["a", "b"], ["t"], model_bias=np.full((5, 2), np.nan))
    grid = ModelGrid(obs, t, ["a", "b"], ["t"], model_sigma=np.ones((5, 2)))
    with pytest.raises(ValueError, match="per-model noise model.*CensoredSizeLikelihood"):
        GridFitter(grid, CensoredSizeLikelihood([0], 1, s_min=0.1))
    assert "model noise" in repr(grid)
    sub = grid.select([0, 2], observables=["b"])
    np.testing.assert_array_equal(np.asarray(sub.model_sigma), np.ones((2, 1)))
    assert sub.model_bias is None
    assert not grid.with_model_noise().has_model_noise


@pytest.mark.parametrize("fmt", ["hdf5", "fits", "pickle", "dict"])
def test_model_noise_survives_every_file_format(rng, tmp_path, fmt):
    grid, _, sm, b = _noisy_grid(rng, n=50)
    if fmt == "hdf5":
        grid.to_hdf5(tmp_path / "g.h5")
        back = ModelGrid.from_hdf5(tmp_path / "g.h5")
        part = ModelGrid.from_hdf5(tmp_path / "g.h5", row_slice=(10, 20))
        np.testing.assert_array_equal(
            np.asarray(part.model_sigma), np.asarray(grid.model_sigma)[10:20]
        )
    elif fmt == "fits":
        grid.to_fits_table(tmp_path / "g.fits")
        back = ModelGrid.from_fits_table(tmp_path / "g.fits")
    elif fmt == "pickle":
        grid.to_pickle(tmp_path / "g.pkl")
        back = ModelGrid.from_pickle(tmp_path / "g.pkl")
    else:
        back = ModelGrid.from_dict(grid.to_dict())
    np.testing.assert_array_equal(np.asarray(back.model_sigma), np.asarray(grid.model_sigma))
    np.testing.assert_array_equal(np.asarray(back.model_bias), np.asarray(grid.model_bias))
    np.testing.assert_array_equal(np.asarray(back.observables), np.asarray(grid.observables))
    plain = grid.with_model_noise()
    if fmt == "hdf5":  # a grid without a noise model reads back without one
        plain.to_hdf5(tmp_path / "p.h5")
        assert not ModelGrid.from_hdf5(tmp_path / "p.h5").has_model_noise


def test_resume_refuses_a_changed_noise_model(rng, tmp_path):
    grid, _, sm, b = _noisy_grid(rng, n=200)
    X, S = _rows(rng, m=8)
    out = tmp_path / "fit.h5"
    kw = dict(stats_for=["a"], verbose=False, output_hdf5_path=out, return_mode="list")
    GridFitter(grid, use_standardised=False).fit_batch(X, S, **kw)
    other = grid.with_model_noise(2 * np.asarray(sm), b)
    with pytest.raises(ValueError, match="grid"):
        GridFitter(other, use_standardised=False).fit_batch(X, S, resume=True, **kw)


def test_prior_sees_the_models_unbiased_observables_x64(x64, rng):
    """An observable-dependent prior reads each model's ``observables``, not
    ``observables + model_bias`` (the bias is the measurement's, not the model's)."""
    grid, obs, sm, b = _noisy_grid(rng, n=400)
    m_edges, z_edges = np.linspace(18.0, 20.0, 9), np.linspace(0.0, 1.0, 6)
    table = rng.normal(0.0, 3.0, (8, 5))  # strong jumps between magnitude bins
    prior = MagDependentRedshiftPrior("a", "m0", z_edges, m_edges, log_table=table)
    fitter = GridFitter(grid, GaussianProductLikelihood(), prior, use_standardised=False)
    x, s = _rows(rng, m=1)
    mb = np.clip(np.searchsorted(m_edges, obs[:, 0], side="right") - 1, 0, 7)
    zb = np.clip(np.searchsorted(z_edges, np.asarray(grid.targets)[:, 0], side="right") - 1, 0, 4)
    want, _ = ref.posterior(_row_reference_lw(grid, obs, sm, b, x[0], s[0]), table[mb, zb])
    got = np.asarray(fitter.posterior_over_models(x[0], s[0]))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-15)
    # with the biased magnitudes the bins (and the answer) would differ
    mb_biased = np.clip(np.searchsorted(m_edges, obs[:, 0] + b[:, 0], side="right") - 1, 0, 7)
    assert np.any(mb_biased != mb)


# ------------------------------------------------------------ template error function
def test_pivot_wavelength_of_a_box_filter():
    from jaxgrid.photometry import pivot_wavelength

    wave = np.linspace(4000.0, 6000.0, 20001)
    trans = np.ones_like(wave)
    want = np.sqrt((6000.0**2 - 4000.0**2) / (2 * np.log(6000.0 / 4000.0)))
    assert pivot_wavelength((wave, trans)) == pytest.approx(want, rel=1e-8)


def test_template_error_sigma_is_the_rest_frame_fraction(rng):
    from jaxgrid.photometry import template_error_sigma

    z = np.repeat([0.0, 1.0, 3.0], 2)
    flux = rng.uniform(0.5, 2.0, (6, 2))
    grid = ModelGrid(flux, np.column_stack([z, np.tile([0, 1], 3)]), ["g", "i"], ["z", "type"])
    lam = np.array([4800.0, 7500.0])
    # a step: 2 % redward of 3000 A rest, 20 % blueward (the UV templates are worse)
    tef = (np.array([1000.0, 2999.0, 3001.0, 20000.0]), np.array([0.2, 0.2, 0.02, 0.02]))
    got = template_error_sigma(grid, lam, tef)
    rest = lam[None, :] / (1 + z[:, None])
    frac = np.where(rest < 2999.0, 0.2, np.where(rest > 3001.0, 0.02, np.nan))
    stored = np.asarray(grid.observables, np.float64)  # the grid's working dtype
    np.testing.assert_allclose(got, frac * stored, rtol=1e-12)
    mags = template_error_sigma(grid, lam, lambda w: np.full_like(w, 0.1), fluxes=False)
    np.testing.assert_allclose(mags, 0.1 * 2.5 / np.log(10), rtol=1e-12)
    with pytest.raises(ValueError, match="wavelengths"):
        template_error_sigma(grid, [4800.0], tef)
    with pytest.raises(ValueError, match="fraction >= 0"):
        template_error_sigma(grid, lam, lambda w: -np.ones_like(w))
    # the grid with it fits (free amplitude)
    noisy = grid.with_model_noise(got)
    fitter = GridFitter(noisy, ScaledGaussianLikelihood(), use_standardised=False)
    res = fitter.fit_batch(2.0 * flux[:2], 0.05 * flux[:2], return_mode="list", verbose=False)
    assert all(np.isfinite(r["log_evidence"]) for r in res)


def test_ratio_stays_finite_when_the_reference_is_far_broader(rng):
    """A reference model whose own error is 1e4 x the row's (an empirical grid's broad
    member): ``-1/2 log(v / v_ref)`` from the difference of the logs, not log1p of ~-1."""
    p = 2
    models = np.zeros((3, p))
    sm = np.array([[0.0, 0.0], [1e3, 1e3], [1e4, 1e4]]) * 0.01
    x, s = np.array([0.5, -0.5]), np.full(p, 0.01)  # 50 sigma from every model
    wide = np.concatenate([models, sm, 0 * sm], axis=1)
    want = ref.gaussian_loglike_noise(x, s, models, sm, 0 * sm)
    want = want - want[2]
    lik = GaussianProductLikelihood()
    f32 = [jnp.asarray(a, jnp.float32) for a in (x, s, wide, wide[2])]
    got = np.asarray(lik.log_likelihood_ratio(*f32, None, jnp.zeros((3, p))), np.float64)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)
