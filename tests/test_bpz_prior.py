import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import logsumexp

from jaxgrid.data import data_path
from jaxgrid.photometry import build_template_grid
from jaxgrid.prob import BPZPrior

SEDS = [
    data_path("photoz", "SED", n)
    for n in data_path("photoz", "SED", "CWWSB4.list").read_text().split()
]
FILTERS = [data_path("photoz", "FILTER", f"DC2LSST_{b}.res") for b in "ugrizy"]


@pytest.fixture
def grids():  # built after the x64 fixture, so float64 in the x64 tests
    z = np.round(np.arange(0, 3.0001, 0.01), 2)
    return (
        build_template_grid(SEDS, FILTERS, z),
        build_template_grid(SEDS, FILTERS, z[::5], n_interp=2),
    )


def _prior(grid, **kw):
    return BPZPrior.hdfn(grid, "DC2LSST_i", **kw).resolve(grid.target_names, grid.observable_names)


@pytest.mark.parametrize("m0", [17.0, 22.3, 27.9, 35.0])
def test_sums_to_one_over_z_and_types(x64, grids, m0):
    for grid in grids:
        p = _prior(grid)
        lp = p.log_prob_for_models(grid.targets, grid.observables, jnp.full(6, m0))
        assert float(jnp.exp(logsumexp(lp))) == pytest.approx(1.0, abs=1e-12)


def test_matches_the_published_formula(x64, grids):
    grid = grids[0]
    p = _prior(grid)
    m0 = 23.4
    lp = np.asarray(p.log_prob_for_models(grid.targets, grid.observables, jnp.full(6, m0)))
    a, z0, km = (
        np.array([2.465, 1.806, 0.906]),
        np.array([0.431, 0.390, 0.0626]),
        np.array([0.0913, 0.0636, 0.123]),
    )
    f = np.array([0.35, 0.50]) * np.exp(-np.array([0.450, 0.147]) * (m0 - 20))
    frac = np.array([f[0], f[1], 1 - f.sum()])
    zg = np.round(np.arange(0, 3.0001, 0.01), 2)
    zm = z0 + km * (m0 - 20)
    with np.errstate(divide="ignore"):
        pz = zg[:, None] ** a * np.exp(-((zg[:, None] / zm) ** a))
    pz = pz / pz.sum(0)
    broad = np.array([0, 1, 1, 2, 2, 2, 2, 2])
    n_per = np.bincount(broad)
    t = np.asarray(grid.get_target("type")).astype(int)
    zi = np.searchsorted(zg, np.asarray(grid.get_target("z")).round(2))
    want = frac[broad[t]] / n_per[broad[t]] * pz[zi, broad[t]]
    with np.errstate(divide="ignore"):
        np.testing.assert_allclose(lp, np.log(want), rtol=1e-10)


def test_flux_reference_missing_magnitude_and_gradients(x64, grids):
    grid = grids[0]
    p_mag = _prior(grid)
    p_flux = _prior(grid, flux_zero_point=31.4)
    t, o = grid.targets, grid.observables
    x_mag = jnp.full(6, 24.0)
    x_flux = jnp.full(6, 10 ** (-0.4 * (24.0 - 31.4)))
    np.testing.assert_allclose(
        np.asarray(p_flux.log_prob_for_models(t, o, x_flux)),
        np.asarray(p_mag.log_prob_for_models(t, o, x_mag)),
        rtol=1e-10,
    )
    missing = p_mag.log_prob_for_models(t, o, jnp.full(6, jnp.nan))
    np.testing.assert_allclose(
        np.asarray(missing), np.asarray(p_mag.log_prob_for_models(t, o, jnp.full(6, 25.0)))
    )

    def total(alpha):
        q = p_mag.with_params(alpha, p_mag.z0, p_mag.km, p_mag.f, p_mag.k)
        lp = q.log_prob_for_models(t[t[:, 0] > 0], o[t[:, 0] > 0], x_mag)
        return jnp.sum(jnp.exp(lp) * t[t[:, 0] > 0][:, 0])  # the prior mean redshift

    g = jax.grad(total)(p_mag.alpha)
    eps = 1e-6
    for i in range(3):
        d = jnp.zeros(3).at[i].set(eps)
        fd = (total(p_mag.alpha + d) - total(p_mag.alpha - d)) / (2 * eps)
        assert float(g[i]) == pytest.approx(float(fd), rel=1e-5)


def test_prior_mean_redshift_increases_with_magnitude(grids):
    grid = grids[0]
    p = _prior(grid)
    zs = np.asarray(grid.get_target("z"))
    means = []
    for m0 in (20.0, 23.0, 26.0):
        w = np.exp(
            np.asarray(p.log_prob_for_models(grid.targets, grid.observables, jnp.full(6, m0)))
        )
        means.append(np.sum(w * zs))
    assert means[0] < means[1] < means[2]


def test_bad_arguments(grids):
    with pytest.raises(ValueError, match="broad types"):
        BPZPrior.hdfn(grids[0], "DC2LSST_i", broad_types=(0, 1, 3, 2, 2, 2, 2, 2))
    with pytest.raises(ValueError, match="maps 3 templates"):
        BPZPrior.hdfn(grids[0], "DC2LSST_i", broad_types=(0, 1, 2))
    with pytest.raises(KeyError, match="unknown observable"):
        BPZPrior.hdfn(grids[0], "mag_q").resolve(grids[0].target_names, grids[0].observable_names)


def test_fit_recovers_parameters_from_simulated_training_set():
    # draw (type, z) from a known BPZ prior on a fine z grid, then fit it back
    z = np.round(np.arange(0, 3.0001, 0.01), 2)
    grid = build_template_grid(SEDS, FILTERS, z)
    truth = dict(
        alpha=(2.2, 1.7, 1.1),
        z0=(0.35, 0.45, 0.15),
        km=(0.08, 0.07, 0.10),
        f=(0.3, 0.45),
        k=(0.40, 0.12),
    )
    p_true = BPZPrior.hdfn(grid, "DC2LSST_i", params=truth).resolve(
        grid.target_names, grid.observable_names
    )
    rng = np.random.default_rng(5)
    n = 4000
    m0 = rng.uniform(20, 26, n)
    zs = np.empty(n)
    zg = np.asarray(p_true.z_grid, np.float64)
    lfs = np.asarray(jax.vmap(p_true.log_type_fractions)(jnp.asarray(m0)), np.float64)
    lps = np.asarray(
        jax.vmap(lambda m: p_true.log_pz_unnorm(p_true.z_grid, m))(jnp.asarray(m0)), np.float64
    )
    for i in range(n):
        b = rng.choice(3, p=np.exp(lfs[i]) / np.exp(lfs[i]).sum())
        w = np.exp(lps[i, :, b] - lps[i, :, b].max())
        zs[i] = rng.choice(zg, p=w / w.sum()) + rng.uniform(-0.005, 0.005)
    start = BPZPrior.hdfn(grid, "DC2LSST_i").resolve(grid.target_names, grid.observable_names)
    fitted = start.fit(m0, np.clip(zs, 1e-3, None))
    # the redshift distribution at each magnitude is recovered (parameters trade off)
    for m in (20.5, 23.0, 25.5):

        def mean_z(p):
            lf = np.exp(np.asarray(p.log_type_fractions(m), np.float64))
            lp = np.exp(np.asarray(p.log_pz_unnorm(zg, m), np.float64))
            pz = (lp / lp.sum(0)) @ (lf / lf.sum())
            return np.sum(pz * zg)

        assert mean_z(fitted) == pytest.approx(mean_z(p_true), abs=0.03)
    with pytest.raises(ValueError, match="at least 10"):
        start.fit([21.0], [0.5])


@pytest.mark.parametrize(
    "params",
    [
        None,  # HDF-N: the peaks z_m inside the grid
        {
            "alpha": (2.0, 0.7, 3.5),
            "z0": (5.0, 0.001, 2.9),
            "km": (0.1, 0.0, -0.2),
            "f": (0.3, 0.3),
            "k": (0.1, 0.1),
        },  # peaks beyond the grid's end, before its first positive z, on it
    ],
)
def test_log_norm_equals_log_sum_over_the_grid(x64, grids, params):
    """The peak-bracket shift of `log_norm` gives the plain float64 log-sum-exp."""
    grid = grids[0]
    p = BPZPrior.for_grid(grid, "DC2LSST_i", params=params)
    zg = np.asarray(p.z_grid)
    for m0 in (20.0, 23.7, 32.0):
        want = []
        for b in range(3):
            a, z0, km = (float(np.asarray(v)[b]) for v in (p.alpha, p.z0, p.km))
            zm = z0 + km * (m0 - 20.0)
            zp = zg[zg > 0]
            want.append(np.log(np.sum(zp**a * np.exp(-((zp / zm) ** a)))))
        np.testing.assert_allclose(np.asarray(p.log_norm(m0)), want, rtol=1e-12)


def _simulate_photometry(grid, p_true, n, rng):
    """Objects drawn from p_true(z, T | m0): a model's fluxes scaled to i = m0 (AB, nJy),
    5 % errors. Returns X, S, true z, model index."""
    m0 = rng.uniform(20.5, 25.5, n)
    zs, idx = np.empty(n), np.empty(n, int)
    X = np.empty((n, grid.n_observables))
    iband = grid.observable_names.index("DC2LSST_i")
    for i in range(n):
        x = np.zeros(grid.n_observables)
        x[iband] = 10 ** (-0.4 * (m0[i] - 31.4))
        lp = np.asarray(p_true.log_prob_for_models(grid.targets, None, jnp.asarray(x)))
        j = rng.choice(lp.size, p=np.exp(lp - lp.max()) / np.exp(lp - lp.max()).sum())
        model = np.asarray(grid.observables[j], np.float64)
        X[i] = model * (x[iband] / model[iband])
        zs[i], idx[i] = float(grid.targets[j, 0]), j
    S = 0.05 * np.abs(X) + 1e-3 * X[:, iband : iband + 1]
    return X + rng.normal(0, 1, X.shape) * S, S, zs


def _log_score(grid, prior, X, S, zs):
    from jaxgrid import GridFitter
    from jaxgrid.prob import ScaledGaussianLikelihood

    zg = np.unique(np.asarray(grid.targets[:, 0], np.float64))
    step = zg[1] - zg[0]
    edges = np.append(zg - step / 2, zg[-1] + step / 2)
    fitter = GridFitter(grid, ScaledGaussianLikelihood("profile"), prior, use_standardised=False)
    out = fitter.fit_batch(
        X,
        S,
        stats_for=["z"],
        stats_bins=[edges],
        posterior_keep_mass=1.0,
        return_candidates=False,
        return_pdf_for_stats=True,
        return_mode="chunks",
        verbose=False,
    )
    pdf = np.concatenate([c["pdf"][0] for c in out]).astype(np.float64)
    k = np.abs(zs[:, None] - zg[None, :]).argmin(1)
    return np.mean(np.log(np.maximum(pdf[np.arange(zs.size), k] * step, 1e-300)))


def test_fit_photoz_learns_the_prior_that_generated_the_photometry():
    """Trained on simulated photometry, the prior scores held-out objects (log p(z_true |
    photometry), computed independently from fit_batch PDFs) as well as the true
    prior, and clearly better than the HDF-N start; stiffness and `free` hold."""
    from jaxgrid import GridFitter
    from jaxgrid.prob import ScaledGaussianLikelihood

    z = np.round(np.arange(0, 3.0001, 0.05), 2)
    grid = build_template_grid(SEDS, FILTERS, z)
    truth = dict(
        alpha=(2.0, 1.5, 1.2),
        z0=(0.6, 0.7, 0.35),
        km=(0.1, 0.1, 0.12),
        f=(0.2, 0.5),
        k=(0.3, 0.1),
    )
    kw = dict(flux_zero_point=31.4)
    p_true = BPZPrior.hdfn(grid, "DC2LSST_i", params=truth, **kw)
    rng = np.random.default_rng(11)
    resolved = p_true.resolve(grid.target_names, grid.observable_names)
    Xtr, Str, ztr = _simulate_photometry(grid, resolved, 1500, rng)
    Xte, Ste, zte = _simulate_photometry(grid, resolved, 1500, rng)
    start = BPZPrior.hdfn(grid, "DC2LSST_i", **kw)
    trainer = GridFitter(grid, ScaledGaussianLikelihood("profile"), start, use_standardised=False)
    fitted = start.fit_photoz(trainer, Xtr, Str, ztr)
    s_true, s_start, s_fit = (_log_score(grid, p, Xte, Ste, zte) for p in (p_true, start, fitted))
    assert s_fit > s_start + 0.05
    assert s_fit == pytest.approx(s_true, abs=0.02)
    stiff = start.fit_photoz(trainer, Xtr, Str, ztr, stiffness=1e6)
    for name in ("alpha", "z0", "km", "f", "k"):
        np.testing.assert_allclose(getattr(stiff, name), getattr(start, name), atol=1e-3)
    only_z0 = start.fit_photoz(trainer, Xtr, Str, ztr, free=("z0",))
    np.testing.assert_array_equal(only_z0.alpha, start.alpha)
    assert not np.allclose(only_z0.z0, start.z0)
    with pytest.raises(ValueError, match="free"):
        start.fit_photoz(trainer, Xtr, Str, ztr, free=("f",))
    with pytest.raises(ValueError, match="do not match"):
        start.fit_photoz(trainer, Xtr, Str, ztr[:5])


def test_fit_photoz_compiles_its_log_likelihoods_once():
    """250 objects in chunks of 100 (the tail padded): the chunk log-likelihood function
    is traced once, and not again by a second fit with the same fitter."""
    from jaxgrid import GridFitter
    from jaxgrid.prob import ScaledGaussianLikelihood
    from jaxgrid.prob.bpz import loglik_trace_count

    z = np.round(np.arange(0, 3.0001, 0.1), 2)
    grid = build_template_grid(SEDS, FILTERS, z)
    start = BPZPrior.hdfn(grid, "DC2LSST_i", flux_zero_point=31.4)
    resolved = start.resolve(grid.target_names, grid.observable_names)
    X, S, zs = _simulate_photometry(grid, resolved, 250, np.random.default_rng(3))
    trainer = GridFitter(grid, ScaledGaussianLikelihood("profile"), start, use_standardised=False)
    before = loglik_trace_count()
    first = start.fit_photoz(trainer, X, S, zs, maxiter=3, chunk_size=100)
    assert loglik_trace_count() - before == 1
    second = start.fit_photoz(trainer, X, S, zs, maxiter=3, chunk_size=100)
    assert loglik_trace_count() - before == 1
    np.testing.assert_array_equal(first.z0, second.z0)
    # the padded tail gives the rows' own log likelihoods (one chunk of 250: no padding)
    third = start.fit_photoz(trainer, X, S, zs, maxiter=3, chunk_size=250)
    for name in ("alpha", "z0", "km", "f", "k"):
        np.testing.assert_allclose(getattr(third, name), getattr(first, name), rtol=1e-6)
