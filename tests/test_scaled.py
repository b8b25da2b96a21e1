import jax.numpy as jnp
import numpy as np
import pytest
import reference as ref
from scipy import integrate, stats

from jaxgrid import GridFitter, ModelGrid
from jaxgrid.prob import ScaledGaussianLikelihood


def _case(rng, n=50, p=6):
    models = rng.uniform(0.2, 2.0, (n, p))
    a_true = 3.7
    f = a_true * models[4] + rng.normal(0, 0.1, p)
    s = rng.uniform(0.05, 0.2, p)
    return f, s, models


def _ref_sums(f, s, m, use):
    w = np.where(use, 1.0 / s**2, 0.0)
    A = (m**2 * w).sum(1)
    B = (m * f * w).sum(1)
    C = (f**2 * w).sum()
    const = -0.5 * np.sum(np.log(2 * np.pi * s[use] ** 2))
    return A, B, C, const


def test_profile_matches_reference_x64(x64, rng):
    f, s, m = _case(rng)
    got = np.asarray(
        ScaledGaussianLikelihood(mode="profile").log_likelihood(
            jnp.asarray(f), jnp.asarray(s), jnp.asarray(m)
        )
    )
    A, B, C, const = _ref_sums(f, s, m, np.ones(6, bool))
    a = np.maximum(B / A, 0)
    want = const - 0.5 * ((f[None] - a[:, None] * m) ** 2 / s**2).sum(1)
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_marginal_matches_numerical_integral_x64(x64, rng):
    f, s, m = _case(rng, n=12)
    f[2] = -0.3  # noisy data: some models prefer a small amplitude
    got = np.asarray(
        ScaledGaussianLikelihood(mode="marginal").log_likelihood(
            jnp.asarray(f), jnp.asarray(s), jnp.asarray(m)
        )
    )
    const = -0.5 * np.sum(np.log(2 * np.pi * s**2))
    for i in range(12):
        chi2 = lambda a: (((f - a * m[i]) / s) ** 2).sum()  # noqa: E731
        amin = max(np.sum(f * m[i] / s**2) / np.sum(m[i] ** 2 / s**2), 0.0)
        shift = chi2(amin)
        val, _ = integrate.quad(
            lambda a: np.exp(-(chi2(a) - shift) / 2),
            0,
            np.inf,
            points=None,
            epsabs=0,
            epsrel=1e-12,
            limit=500,
        )
        assert got[i] == pytest.approx(const - shift / 2 + np.log(val), rel=1e-9)


def test_nondetections_censored_and_zero_flux_x64(x64, rng):
    f, s, m = _case(rng)
    upper = np.array([True, False, False, False, False, True])
    s_lim = s.copy()
    lik_c = ScaledGaussianLikelihood(
        mode="profile", nondetection="censored", nondetection_nsigma=2.0
    )
    got_c = np.asarray(
        lik_c.log_likelihood(jnp.asarray(f), jnp.asarray(s), jnp.asarray(m), jnp.asarray(upper))
    )
    det = ~upper
    A, B, C, const = _ref_sums(np.where(det, f, 0), s, m, det)
    a = np.maximum(B / A, 0)
    chi2 = ((np.where(det, f, 0)[None] - a[:, None] * m) ** 2 / s**2 * det).sum(1)
    cens = stats.norm.logcdf((2.0 * s_lim[None] - a[:, None] * m) / s_lim[None])[:, upper].sum(1)
    np.testing.assert_allclose(got_c, const - 0.5 * chi2 + cens, rtol=1e-10)
    lik_z = ScaledGaussianLikelihood(mode="profile", nondetection="zero_flux")
    got_z = np.asarray(
        lik_z.log_likelihood(jnp.asarray(f), jnp.asarray(s), jnp.asarray(m), jnp.asarray(upper))
    )
    f0 = np.where(upper, 0.0, f)  # BPZ: a non-detection is flux 0 +- s_lim
    A, B, C, const = _ref_sums(f0, s, m, np.ones(6, bool))
    a = np.maximum(B / A, 0)
    want = const - 0.5 * ((f0[None] - a[:, None] * m) ** 2 / s**2).sum(1)
    np.testing.assert_allclose(got_z, want, rtol=1e-10)


def test_error_floors_x64(x64, rng):
    f, s, m = _case(rng)
    lik = ScaledGaussianLikelihood(mode="profile", error_floor_mag=0.05, error_floor_frac=0.02)
    got = np.asarray(lik.log_likelihood(jnp.asarray(f), jnp.asarray(s), jnp.asarray(m)))
    s_eff = np.sqrt(s**2 + (np.log(10) / 2.5 * 0.05 * f) ** 2 + (0.02 * f) ** 2)
    A, B, C, const = _ref_sums(f, s_eff, m, np.ones(6, bool))
    a = np.maximum(B / A, 0)
    want = const - 0.5 * ((f[None] - a[:, None] * m) ** 2 / s_eff**2).sum(1)
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_missing_band_and_unusable_row(x64, rng):
    f, s, m = _case(rng)
    lik = ScaledGaussianLikelihood()
    f2, s2 = f.copy(), s.copy()
    f2[1] = np.nan
    s2[3] = np.nan
    got = np.asarray(lik.log_likelihood(jnp.asarray(f2), jnp.asarray(s2), jnp.asarray(m)))
    keep = [0, 2, 4, 5]
    want = np.asarray(
        lik.log_likelihood(jnp.asarray(f[keep]), jnp.asarray(s[keep]), jnp.asarray(m[:, keep]))
    )
    np.testing.assert_allclose(got, want, rtol=1e-12)
    none = lik.log_likelihood(jnp.full(6, jnp.nan), jnp.full(6, jnp.nan), jnp.asarray(m))
    assert np.all(np.asarray(none) == -np.inf)


@pytest.mark.parametrize(
    "sig,block",
    [(0.5, None), (15.0, None), (15.0, 150)],  # narrow; broad (exact path), also over blocks
)
def test_extensive_targets_shift_by_log_amplitude_x64(x64, rng, sig, block):
    n = 400
    sed = rng.uniform(0.2, 2.0, (n, 5))
    logm = rng.uniform(8, 10, n)  # per unit amplitude
    grid = ModelGrid(
        sed, np.column_stack([logm, rng.uniform(0, 1, n)]), list("abcde"), ["logM", "age"]
    )
    lik = ScaledGaussianLikelihood(mode="profile", extensive_targets=["logM"])
    fitter = GridFitter(grid, lik, use_standardised=False)
    F = 25.0 * sed[:6] * rng.uniform(0.98, 1.02, (6, 5))
    S = np.full_like(F, sig)
    edges = np.linspace(8, 13, 101)
    res = fitter.fit_batch(
        F,
        S,
        stats_for=["logM"],
        stats_bins=[edges],
        return_mode="list",
        verbose=False,
        posterior_keep_mass=0.9,
        posterior_keep_min_candidates=5,
        model_block_size=block,
        chunk_size=8 if block else None,
    )
    for r, f, s in zip(res, F, S):
        A, B, C, const = _ref_sums(f, s, sed, np.ones(5, bool))
        a = np.maximum(B / A, 0)
        lw = const - 0.5 * ((f[None] - a[:, None] * sed) ** 2 / s**2).sum(1)
        order = np.argsort(-lw, kind="stable")
        want = ref.batch_row_reference(
            lw,
            np.arange(n),
            np.column_stack([logm + np.log10(a)]),
            keep_mass=0.9,
            keep_min=5,
            cap=None,
            stats_cols=(0,),
            edges=[edges],
        )
        assert r["truncation"]["n_after"] == want["n_after"]
        if sig > 1:
            assert want["n_after"] > 128  # beyond the device's top list
        assert r["stats"]["logM"]["median"] == pytest.approx(want["stats"][0]["median"], rel=1e-9)
        if sig < 1:  # the mass scales with the amplitude: ~ logM(model) + log10(25)
            assert r["stats"]["logM"]["median"] == pytest.approx(
                logm[order[0]] + np.log10(25), abs=0.05
            )
    dens, centres = fitter.posterior_over_target(F[0], S[0], "logM", edges)
    assert np.sum(dens * centres * np.diff(edges)) > 9.3


def test_fitter_refuses_standardised_and_bad_options():
    grid = ModelGrid(np.ones((3, 2)), np.zeros((3, 1)), ["a", "b"], ["t"])
    with pytest.raises(ValueError, match="use_standardised=False"):
        GridFitter(grid, ScaledGaussianLikelihood())
    with pytest.raises(ValueError, match="mode"):
        ScaledGaussianLikelihood(mode="best")
    with pytest.raises(ValueError, match="nondetection"):
        ScaledGaussianLikelihood(nondetection="drop")
    with pytest.raises(KeyError, match="unknown target"):
        GridFitter(
            grid, ScaledGaussianLikelihood(extensive_targets=["logM"]), use_standardised=False
        )


@pytest.mark.parametrize("mode", ["profile", "marginal"])
def test_flux_units_do_not_matter_in_float32(rng, mode):
    # maggies (~1e-10) and template units (~1e6): float32 must neither overflow nor underflow
    f, s, m = _case(rng)
    upper = np.array([False, False, True, False, False, False])
    lik = ScaledGaussianLikelihood(mode=mode)
    ref_ll = np.asarray(
        lik.log_likelihood(jnp.asarray(f), jnp.asarray(s), jnp.asarray(m), jnp.asarray(upper))
    )
    scale_f, scale_m = 3e-10, 2e6
    got = np.asarray(
        lik.log_likelihood(
            jnp.asarray(f * scale_f),
            jnp.asarray(s * scale_f),
            jnp.asarray(m * scale_m),
            jnp.asarray(upper),
        )
    )
    assert np.all(np.isfinite(got))
    # only the constant terms change: -sum log s (and log(a-scale) for the marginal)
    shift = -np.sum(np.log(scale_f) * ~upper)
    if mode == "marginal":
        shift += np.log(scale_f / scale_m)
    np.testing.assert_allclose(got - shift, ref_ll, rtol=2e-5, atol=2e-3)
