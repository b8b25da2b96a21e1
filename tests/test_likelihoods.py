import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import gaussian_loglike
from scipy import stats

from jaxgrid.prob import CensoredSizeLikelihood, CompositeLikelihood, GaussianProductLikelihood


def _case(rng, n=200, p=5):
    models = rng.normal(20, 1.5, size=(n, p))
    x = models[7] + rng.normal(0, 0.3, size=p)
    sigma = rng.uniform(0.05, 0.5, size=p)
    return x, sigma, models


@pytest.mark.parametrize("floor,scale", [(0.0, 1.0), (0.2, 1.0), (0.1, 1.7)])
def test_gaussian_matches_reference_x64(x64, rng, floor, scale):
    x, s, m = _case(rng)
    lik = GaussianProductLikelihood(bandwidth_floor=floor, scale=scale)
    got = np.asarray(lik.log_likelihood(jnp.asarray(x), jnp.asarray(s), jnp.asarray(m)))
    ref = gaussian_loglike(x, s, m, floor, scale)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, ref, rtol=1e-10)


def test_gaussian_matches_reference_float32(rng):
    x, s, m = _case(rng)
    lik = GaussianProductLikelihood(bandwidth_floor=0.1)
    got = np.asarray(lik.log_likelihood(jnp.asarray(x), jnp.asarray(s), jnp.asarray(m)))
    assert got.dtype == np.float32
    ref = gaussian_loglike(x.astype(np.float32), s.astype(np.float32), m.astype(np.float32), 0.1)
    np.testing.assert_allclose(got, ref, rtol=1e-5)


def test_missing_band_is_left_out(x64, rng):
    x, s, m = _case(rng)
    lik = GaussianProductLikelihood()
    x_nan, s_nan = x.copy(), s.copy()
    x_nan[2] = np.nan
    s_nan[4] = np.nan
    got = lik.log_likelihood(jnp.asarray(x_nan), jnp.asarray(s_nan), jnp.asarray(m))
    keep = [0, 1, 3]
    ref = gaussian_loglike(x[keep], s[keep], m[:, keep])
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-12)


def test_no_usable_band_gives_minus_inf(rng):
    x, s, m = _case(rng)
    got = GaussianProductLikelihood().log_likelihood(
        jnp.full(5, jnp.nan), jnp.asarray(s), jnp.asarray(m)
    )
    assert np.all(np.asarray(got) == -np.inf)


def test_missing_band_gradient_is_finite(rng):
    x, s, m = _case(rng)
    x[1] = np.nan
    lik = GaussianProductLikelihood()
    g = jax.grad(lambda xx: jnp.sum(lik.log_likelihood(xx, jnp.asarray(s), jnp.asarray(m))))(
        jnp.asarray(x)
    )
    g = np.asarray(g)
    assert np.all(np.isfinite(g[[0, 2, 3, 4]])) and g[1] == 0.0


@pytest.mark.parametrize("kind", ["flux", "magnitude"])
def test_upper_limits_match_reference(x64, rng, kind):
    x, s, m = _case(rng)
    upper = np.array([False, True, False, False, True])
    lik = GaussianProductLikelihood(limit_kind=kind)
    got = lik.log_likelihood(jnp.asarray(x), jnp.asarray(s), jnp.asarray(m), jnp.asarray(upper))
    ref = gaussian_loglike(x, s, m, upper=upper, limit_kind=kind)
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-10)


def test_magnitude_limit_prefers_fainter_models(x64):
    # Observed limit 25 mag: a model at 27 mag (fainter) is allowed, one at 23 mag is not.
    lik = GaussianProductLikelihood(limit_kind="magnitude")
    models = jnp.array([[27.0], [23.0]])
    ll = np.asarray(
        lik.log_likelihood(jnp.array([25.0]), jnp.array([0.5]), models, jnp.array([True]))
    )
    assert ll[0] > -0.01 and ll[1] < -8
    np.testing.assert_allclose(ll, stats.norm.logcdf([4.0, -4.0]), rtol=1e-12)


def test_censored_size_matches_reference(x64, rng):
    x, s, m = _case(rng, p=4)
    lik = CensoredSizeLikelihood(
        phot_indices=[0, 1, 2], size_index=3, s_min=19.5, bandwidth_floor=0.1
    )
    got = np.asarray(lik.log_likelihood(jnp.asarray(x), jnp.asarray(s), jnp.asarray(m)))
    h = max(s[3], 0.1)
    ref = gaussian_loglike(x[:3], s[:3], m[:, :3], floor=0.1) + stats.norm.logcdf(
        (19.5 - m[:, 3]) / h
    )
    np.testing.assert_allclose(got, ref, rtol=1e-10)


def test_censored_size_to_standardised_maps_s_min(x64):
    lik = CensoredSizeLikelihood([0], 1, s_min=3.0)
    std = lik.to_standardised(np.array([0.0, 1.0]), np.array([1.0, 4.0]))
    assert float(std.s_min) == pytest.approx(0.5)


def test_composite_is_sum(x64, rng):
    x, s, m = _case(rng, p=4)
    a = GaussianProductLikelihood()
    b = CensoredSizeLikelihood([0, 1], 3, s_min=20.0)
    comp = CompositeLikelihood([a, b])
    args = (jnp.asarray(x), jnp.asarray(s), jnp.asarray(m))
    np.testing.assert_allclose(
        np.asarray(comp.log_likelihood(*args)),
        np.asarray(a.log_likelihood(*args)) + np.asarray(b.log_likelihood(*args)),
        rtol=1e-14,
    )


def test_high_snr_chi2_accuracy_float32():
    # S/N = 1000 magnitudes near 25: chi^2 of order 1 must survive float32.
    rng = np.random.default_rng(1)
    m = 25.0 + rng.normal(0, 0.01, size=(100, 6))
    x = m[3] + rng.normal(0, 1e-3, size=6)
    s = np.full(6, 1e-3)
    got = np.asarray(
        GaussianProductLikelihood().log_likelihood(jnp.asarray(x), jnp.asarray(s), jnp.asarray(m))
    )
    ref = gaussian_loglike(x.astype(np.float32), s.astype(np.float32), m.astype(np.float32))
    np.testing.assert_allclose(got, ref, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs,msg",
    [
        ({"bandwidth_floor": -1.0}, "bandwidth_floor"),
        ({"scale": 0.0}, "scale"),
        ({"limit_kind": "jansky"}, "limit_kind"),
    ],
)
def test_bad_arguments(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        GaussianProductLikelihood(**kwargs)


def test_composite_rejects_non_likelihood():
    with pytest.raises(TypeError, match="likelihood"):
        CompositeLikelihood([GaussianProductLikelihood(), "chi2"])
    with pytest.raises(ValueError, match="empty"):
        CompositeLikelihood([])
