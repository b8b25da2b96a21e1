import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as ref
from scipy import integrate

from jaxgrid.prob import (
    CompositePrior,
    DeltaPrior1D,
    EmpiricalFlatteningPriorND,
    EmpiricalHistogramPrior1D,
    ExponentialPrior1D,
    ExponentialTruncatedPrior1D,
    FlatPrior,
    GaussianPrior1D,
    MagDependentRedshiftPrior,
    ObservableCompositePrior,
    PowerLawPrior1D,
    UniformPrior1D,
)


def _targets(t):
    return jnp.asarray(np.column_stack([np.zeros_like(t), t]))


T = np.concatenate([np.linspace(-2.0, 12.0, 301), [0.0, 1.0, 5.0, 10.0]])

ANALYTIC = [
    (lambda: GaussianPrior1D(1, mu=1.5, sigma=0.7), lambda t: ref.gaussian_logpdf(t, 1.5, 0.7)),
    (lambda: UniformPrior1D(1, low=0.5, high=4.0), lambda t: ref.uniform_logpdf(t, 0.5, 4.0)),
    (lambda: ExponentialPrior1D(1, scale=2.5), lambda t: ref.exponential_logpdf(t, 2.5)),
    (
        lambda: ExponentialTruncatedPrior1D(1, scale=2.5, t_max=6.0),
        lambda t: ref.truncexp_logpdf(t, 2.5, 6.0),
    ),
    (
        lambda: PowerLawPrior1D(1, alpha=-1.0, t_min=0.1, t_max=10.0),
        lambda t: ref.powerlaw_logpdf(t, -1.0, 0.1, 10.0),
    ),
    (
        lambda: PowerLawPrior1D(1, alpha=1.7, t_min=0.5, t_max=10.0),
        lambda t: ref.powerlaw_logpdf(t, 1.7, 0.5, 10.0),
    ),
    (
        lambda: PowerLawPrior1D(1, alpha=-2.3, t_min=0.5, t_max=10.0),
        lambda t: ref.powerlaw_logpdf(t, -2.3, 0.5, 10.0),
    ),
    (
        lambda: PowerLawPrior1D(1, alpha=0.5, t_min=0.0, t_max=10.0),
        lambda t: ref.powerlaw_logpdf(t, 0.5, 0.0, 10.0),
    ),
]


@pytest.mark.parametrize("make,reference", ANALYTIC)
def test_analytic_priors_match_reference_x64(x64, make, reference):
    prior = make()  # built under x64: float64 parameters
    got = np.asarray(prior.log_prob_for_models(_targets(T)))
    want = reference(T)
    assert np.array_equal(np.isinf(got), np.isinf(want))
    fin = np.isfinite(want)
    np.testing.assert_allclose(got[fin], want[fin], rtol=1e-10)


@pytest.mark.parametrize("make,reference", ANALYTIC)
def test_analytic_priors_match_reference_float32(make, reference):
    prior = make()
    got = np.asarray(prior.log_prob_for_models(_targets(T.astype(np.float32))))
    want = reference(T.astype(np.float32).astype(np.float64))
    fin = np.isfinite(want)
    np.testing.assert_allclose(got[fin], want[fin], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make", [p for p, _ in ANALYTIC])
def test_analytic_priors_integrate_to_one(x64, make):
    prior = make()

    def pdf(t):
        return float(np.exp(prior.log_prob_for_models(_targets(np.array([t])))[0]))

    total, _ = integrate.quad(pdf, -5, 80, points=[0.0, 0.1, 0.5, 4.0, 6.0, 10.0], limit=400)
    assert total == pytest.approx(1.0, abs=1e-6)


def test_power_law_continuous_through_minus_one(x64):
    t = _targets(np.array([0.3, 2.0, 7.0]))
    at = PowerLawPrior1D(1, -1.0, 0.1, 10.0).log_prob_for_models(t)
    near = PowerLawPrior1D(1, -1.0 + 1e-9, 0.1, 10.0).log_prob_for_models(t)
    np.testing.assert_allclose(np.asarray(near), np.asarray(at), rtol=1e-8)
    g = jax.grad(lambda a: PowerLawPrior1D(1, a, 0.1, 10.0).log_prob_for_models(t).sum())(-1.0)
    eps = 1e-5
    fd = (
        PowerLawPrior1D(1, -1.0 + eps, 0.1, 10.0).log_prob_for_models(t).sum()
        - PowerLawPrior1D(1, -1.0 - eps, 0.1, 10.0).log_prob_for_models(t).sum()
    ) / (2 * eps)
    assert float(g) == pytest.approx(float(fd), rel=1e-6)


def test_delta_prior(x64):
    p = DeltaPrior1D(1, value=2.0, tolerance=0.01)
    got = np.asarray(p.log_prob_for_models(_targets(np.array([2.0, 2.005, 2.02]))))
    np.testing.assert_allclose(got[:2], np.log(1 / 0.02), rtol=1e-12)
    assert got[2] == -np.inf


def test_flat_prior_is_zero():
    assert np.all(np.asarray(FlatPrior().log_prob_for_models(jnp.ones((4, 2)))) == 0)


def test_names_resolve():
    p = GaussianPrior1D("z", 0.0, 1.0).resolve(["logM", "z"])
    assert p.target_col == 1
    with pytest.raises(KeyError, match="known"):
        GaussianPrior1D("age", 0.0, 1.0).resolve(["logM", "z"])
    with pytest.raises(ValueError, match="unresolved"):
        GaussianPrior1D("z", 0.0, 1.0).log_prob_for_models(jnp.ones((2, 2)))


@pytest.mark.parametrize(
    "build,msg",
    [
        (lambda: GaussianPrior1D(0, 0.0, -1.0), "sigma"),
        (lambda: UniformPrior1D(0, 2.0, 1.0), "high"),
        (lambda: PowerLawPrior1D(0, -1.5, 0.0, 1.0), "integrable"),
        (lambda: ExponentialPrior1D(0, 0.0), "scale"),
        (lambda: EmpiricalHistogramPrior1D(0, [0.0, 0.0, 1.0]), "increasing"),
        (lambda: EmpiricalFlatteningPriorND([0, 1], [[0, 1]]), "edge arrays"),
        (lambda: EmpiricalFlatteningPriorND([0], [[0, 1]], mode="both"), "mode"),
    ],
)
def test_bad_prior_arguments(build, msg):
    with pytest.raises(ValueError, match=msg):
        build()


def test_empirical_histogram_reference(x64, rng):
    sample = rng.gamma(2.0, 1.5, size=5000)
    w = rng.uniform(0.5, 1.5, size=5000)
    edges = np.linspace(0.0, 8.0, 17)
    prior = EmpiricalHistogramPrior1D(0, edges, density_floor=1e-3).fit_from_targets(
        sample[:, None], weights=w
    )
    clipped = np.clip(sample, edges[0], edges[-1])
    mass, _ = np.histogram(clipped, bins=edges, weights=w)
    dens = np.maximum(mass / mass.sum() / np.diff(edges), 1e-3)
    dens /= np.sum(dens * np.diff(edges))
    q = np.array([-1.0, 0.1, 3.3, 7.99, 8.0, 20.0])
    want = np.log(dens[np.clip(np.searchsorted(edges, q, "right") - 1, 0, 15)])
    got = np.asarray(prior.log_prob_for_models(jnp.asarray(q[:, None])))
    np.testing.assert_allclose(got, want, rtol=1e-10)
    np.testing.assert_allclose(np.exp(np.asarray(prior.log_mass)), mass / mass.sum(), rtol=1e-10)


def test_empirical_histogram_unfitted():
    with pytest.raises(RuntimeError, match="fit_from_targets"):
        EmpiricalHistogramPrior1D(0, [0, 1, 2]).log_prob_for_models(jnp.ones((2, 1)))


def test_flattening_prior_cancels_uneven_sampling(x64, rng):
    # A grid sampled densely at low t: grid density x prior must be flat per bin.
    t = np.concatenate([rng.uniform(0, 1, 9000), rng.uniform(1, 4, 1000)])
    edges = np.linspace(0, 4, 9)
    prior = EmpiricalFlatteningPriorND([0], [edges], mode="joint").fit_from_targets(t[:, None])
    lp = np.asarray(prior.log_prob_for_models(jnp.asarray(t[:, None])))
    # grid density x prior is uniform: the prior-weighted grid mass per unit t is constant
    mass_per_bin, _ = np.histogram(t, bins=edges, weights=np.exp(lp))
    per_unit = mass_per_bin / np.diff(edges)
    np.testing.assert_allclose(per_unit, per_unit[0], rtol=1e-10)
    # and the prior is a normalised density over the occupied range
    centres = 0.5 * (edges[1:] + edges[:-1])
    dens = np.exp(np.asarray(prior.log_prob_for_models(jnp.asarray(centres[:, None]))))
    assert np.sum(dens * np.diff(edges)) == pytest.approx(1.0, rel=1e-12)


def test_flattening_prior_joint_and_factorised_reference(x64, rng):
    t = np.column_stack([rng.uniform(0, 1, 3000) ** 2, rng.normal(5, 1, 3000)])
    e0, e1 = np.linspace(0, 1, 6), np.linspace(2, 8, 7)
    joint = EmpiricalFlatteningPriorND([0, 1], [e0, e1], mode="joint", count_floor=0.5)
    joint = joint.fit_from_targets(t)
    counts, _, _ = np.histogram2d(np.clip(t[:, 0], 0, 1), np.clip(t[:, 1], 2, 8), bins=[e0, e1])
    vol = np.outer(np.diff(e0), np.diff(e1))
    rho = np.maximum(counts, 0.5) / (3000 * vol)
    table = -np.log(rho) - np.log(np.sum((vol / rho)[counts > 0]))
    i0 = np.clip(np.searchsorted(e0, t[:, 0], "right") - 1, 0, 4)
    i1 = np.clip(np.searchsorted(e1, t[:, 1], "right") - 1, 0, 5)
    np.testing.assert_allclose(
        np.asarray(joint.log_prob_for_models(jnp.asarray(t))), table[i0, i1], rtol=1e-10
    )
    fact = EmpiricalFlatteningPriorND([0, 1], [e0, e1]).fit_from_targets(t)
    want = 0.0
    for col, e, idx in ((0, e0, i0), (1, e1, i1)):
        c, _ = np.histogram(np.clip(t[:, col], e[0], e[-1]), bins=e)
        r = np.maximum(c, 1e-3) / (3000 * np.diff(e))
        want = want + (-np.log(r) - np.log(np.sum((np.diff(e) / r)[c > 0])))[idx]
    np.testing.assert_allclose(
        np.asarray(fact.log_prob_for_models(jnp.asarray(t))), want, rtol=1e-10
    )


def _mag_z_sample(rng, n=4000):
    m = rng.uniform(18, 26, n)
    z = np.clip(0.1 + 0.15 * (m - 18) + rng.normal(0, 0.2, n), 0.0, 3.0)
    obs = np.column_stack([m + 0.3, m])
    return obs, np.column_stack([z, rng.uniform(size=n)])


def _mag_z_reference(obs_mag, z, fit_m, fit_z, m_edges, z_edges, floor):
    counts, _, _ = np.histogram2d(
        np.clip(fit_m, m_edges[0], m_edges[-1]),
        np.clip(fit_z, z_edges[0], z_edges[-1]),
        bins=[m_edges, z_edges],
    )
    dz = np.diff(z_edges)

    def dens(c):
        p = np.maximum(c / (c.sum() * dz), floor)
        return p / np.sum(p * dz)

    marg = dens(counts.sum(0))
    table = np.stack([dens(c) if c.sum() > 0 else marg for c in counts])
    im = np.clip(np.searchsorted(m_edges, obs_mag, "right") - 1, 0, m_edges.size - 2)
    iz = np.clip(np.searchsorted(z_edges, z, "right") - 1, 0, z_edges.size - 2)
    return np.log(table[im, iz]), np.log(marg[iz])


def test_mag_dependent_redshift_prior_models_kind(x64, rng):
    obs, tgt = _mag_z_sample(rng)
    ze, me = np.linspace(0, 3, 31), np.linspace(17, 27, 11)
    prior = MagDependentRedshiftPrior(0, 1, ze, me, density_floor=1e-6).fit_from_grid(obs, tgt)
    got = prior.log_prob_for_models(jnp.asarray(tgt), jnp.asarray(obs), jnp.full(2, jnp.nan))
    want, _ = _mag_z_reference(obs[:, 1], tgt[:, 0], obs[:, 1], tgt[:, 0], me, ze, 1e-6)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-10)


def test_mag_dependent_redshift_prior_observed_kind(x64, rng):
    obs, tgt = _mag_z_sample(rng)
    ze, me = np.linspace(0, 3, 31), np.linspace(17, 27, 11)
    prior = MagDependentRedshiftPrior(0, 1, ze, me, magnitude_from="observed").fit_from_grid(
        obs, tgt
    )
    row = jnp.array([20.0, 19.7])
    got = prior.log_prob_for_models(jnp.asarray(tgt), jnp.asarray(obs), row)
    want, marg = _mag_z_reference(
        np.full(len(tgt), 19.7), tgt[:, 0], obs[:, 1], tgt[:, 0], me, ze, 1e-12
    )
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-10)
    # A missing observed magnitude falls back to the marginal p(z).
    missing = prior.log_prob_for_models(
        jnp.asarray(tgt), jnp.asarray(obs), jnp.array([20.0, jnp.nan])
    )
    np.testing.assert_allclose(np.asarray(missing), marg, rtol=1e-10)
    # vmapped over rows with different magnitudes
    rows = jnp.array([[20.0, 19.7], [25.0, 24.1]])
    batched = jax.vmap(lambda r: prior.log_prob_for_models(jnp.asarray(tgt), jnp.asarray(obs), r))(
        rows
    )
    np.testing.assert_allclose(np.asarray(batched[0]), want, rtol=1e-12)


def test_composite_prior_weighted_sum(x64):
    t = _targets(np.array([0.5, 1.0, 3.0]))
    a = GaussianPrior1D(1, 1.0, 2.0)
    b = ExponentialPrior1D(1, 1.5)
    c = UniformPrior1D(1, 5.0, 6.0)  # weight zero: skipped, even though -inf here
    comp = CompositePrior([a, b, c], weights=[0.5, 2.0, 0.0])
    want = 0.5 * np.asarray(a.log_prob_for_models(t)) + 2.0 * np.asarray(b.log_prob_for_models(t))
    np.testing.assert_allclose(np.asarray(comp.log_prob_for_models(t)), want, rtol=1e-14)


def test_composite_rejects_observable_dependent(rng):
    obs, tgt = _mag_z_sample(rng, 200)
    mag = MagDependentRedshiftPrior(0, 1, np.linspace(0, 3, 4), np.linspace(17, 27, 3))
    with pytest.raises(TypeError, match="ObservableCompositePrior"):
        CompositePrior([FlatPrior(), mag])
    with pytest.raises(ValueError, match="weights"):
        CompositePrior([FlatPrior()], weights=[1.0, 2.0])


def test_observable_composite_accepts_both(x64, rng):
    obs, tgt = _mag_z_sample(rng, 500)
    mag = MagDependentRedshiftPrior(
        0, 1, np.linspace(0, 3, 7), np.linspace(17, 27, 5)
    ).fit_from_grid(obs, tgt)
    g = GaussianPrior1D(0, 1.0, 0.5)
    comp = ObservableCompositePrior([g, mag], weights=[1.0, 0.5])
    args = (jnp.asarray(tgt), jnp.asarray(obs), jnp.full(2, jnp.nan))
    want = np.asarray(g.log_prob_for_models(args[0])) + 0.5 * np.asarray(
        mag.log_prob_for_models(*args)
    )
    np.testing.assert_allclose(np.asarray(comp.log_prob_for_models(*args)), want, rtol=1e-14)
