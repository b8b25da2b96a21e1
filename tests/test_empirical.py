"""Empirical grids (issue 17): a training set's objects as the models, their errors as
the model noise, the kernel learned by the leave-one-out log score."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxgrid import GaussianProductLikelihood, GridFitter, ModelGrid
from jaxgrid.empirical import _loo_score, colour_features, fit_kernel, kernel_sigma


def test_colour_features_colours_reference_and_nondetections():
    mags = np.array([[22.0, 21.5, 21.0, 20.8], [25.0, np.nan, 23.0, 22.5]])
    errs = np.array([[0.05, 0.04, 0.03, 0.02], [0.3, np.nan, 0.1, 0.08]])
    nd = np.array([[False, False, False, False], [False, True, False, False]])
    f = colour_features(mags, errs, "griz", reference="i", nondetected=nd, limits=26.0)
    assert f["names"] == ["g-r", "r-i", "i-z", "i"]
    np.testing.assert_allclose(f["values"][0], [0.5, 0.5, 0.2, 21.0])
    np.testing.assert_allclose(
        f["errors"][0], [np.hypot(0.05, 0.04), 0.05, np.hypot(0.03, 0.02), 0.03]
    )
    # the undetected r band: both of its colours are missing for a fitted row ...
    assert f["missing"][1].tolist() == [True, True, False, False]
    assert np.isnan(f["values"][1, :2]).all()
    # ... and a model stands at the limit with an error of 1 mag
    np.testing.assert_allclose(f["model_values"][1, :2], [25.0 - 26.0, 26.0 - 23.0])
    np.testing.assert_allclose(f["model_errors"][1, :2], [np.hypot(0.3, 1.0), np.hypot(1.0, 0.1)])
    assert np.isfinite(f["model_values"]).all() and np.isfinite(f["model_errors"]).all()
    with pytest.raises(ValueError, match="error that is not finite"):
        colour_features(mags, np.where(nd, 0.1, -errs), "griz")


def test_from_training_grid_kernel_replicas_and_files(rng, tmp_path):
    n = 50
    obs = rng.normal(0, 1, (n, 3))
    err = rng.uniform(0.05, 0.2, (n, 3))
    z = rng.uniform(0.3, 2.0, n)
    grid = ModelGrid.from_training(obs, err, z, ["a", "b", "c"], ["z"], bandwidth=[0.1, 0, 0.2],
                                   error_scale=0.8)  # fmt: skip
    np.testing.assert_allclose(
        np.asarray(grid.model_sigma), np.sqrt((0.8 * err) ** 2 + np.array([0.1, 0, 0.2]) ** 2),
        rtol=1e-6,
    )  # fmt: skip
    assert grid.meta["empirical"]["error_scale"] == 0.8
    grid.to_hdf5(tmp_path / "emp.h5")
    back = ModelGrid.from_hdf5(tmp_path / "emp.h5")
    np.testing.assert_array_equal(np.asarray(back.model_sigma), np.asarray(grid.model_sigma))
    assert back.meta == grid.meta
    # redshift smoothing: R copies at the kernel's quantile points, mean z, std s (1 + z)
    sm = ModelGrid.from_training(obs, err, z, ["a", "b", "c"], ["z"], smooth_targets={"z": 0.02},
                                 replicas=8)  # fmt: skip
    assert sm.n_models == 8 * n
    zz = np.asarray(sm.targets[:, 0], np.float64).reshape(n, 8)
    np.testing.assert_allclose(zz.mean(1), z, rtol=1e-6)
    np.testing.assert_allclose(zz.std(1), 0.02 * (1 + z), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(sm.observables)[::8], np.asarray(grid.observables))
    with pytest.raises(KeyError, match="unknown targets"):
        ModelGrid.from_training(obs, err, z, ["a", "b", "c"], ["z"], smooth_targets={"t": 1.0})
    with pytest.raises(ValueError, match="errors"):
        ModelGrid.from_training(obs, -err, z, ["a", "b", "c"], ["z"])


def test_loo_objective_gradient_matches_finite_differences_x64(x64, rng):
    n, p = 80, 2
    obs = rng.normal(0, 1, (n, p))
    err = rng.uniform(0.1, 0.3, (n, p))
    z = 0.5 + 0.3 * obs[:, 0] + rng.normal(0, 0.05, n)
    rows = np.arange(0, n, 3)
    args = (
        jnp.asarray(obs[rows]), jnp.asarray(err[rows]), jnp.asarray(obs), jnp.asarray(err),
        jnp.asarray(z[rows]), jnp.asarray(z), jnp.asarray(rows), float(np.ptp(z)), 1e-3,
    )  # fmt: skip
    theta = jnp.asarray(np.log([0.1, 0.2, 0.9, 0.05, 1.1]))
    g = jax.grad(_loo_score)(theta, *args)
    for k in range(theta.size):
        e = jnp.zeros_like(theta).at[k].set(1e-6)
        fd = (_loo_score(theta + e, *args) - _loo_score(theta - e, *args)) / 2e-6
        np.testing.assert_allclose(g[k], fd, rtol=1e-5, atol=1e-9)


def _simulate(rng, n, s=0.08):
    """z ~ U(0, 1), one observable x = z + N(0, s): p(z | x) is a normal in z truncated
    to [0, 1], known exactly."""
    z = rng.uniform(0.0, 1.0, n)
    x = z + rng.normal(0.0, s, n)
    return x[:, None], np.full((n, 1), s), z


def _binned_log_score(pdf, edges, z):
    k = np.clip(np.searchsorted(edges, z, side="right") - 1, 0, edges.size - 2)
    return np.mean(np.log(np.maximum(pdf[np.arange(z.size), k], 1e-12)))


def test_empirical_log_score_approaches_the_truth_as_the_training_set_grows():
    """On a simulation with a known p(z | x), the held-out log score of the empirical
    grid (kernel learned on the training set alone) closes on the true PDF's."""
    rng = np.random.default_rng(7)
    s = 0.08
    xt, st, zt = _simulate(rng, 1500, s)
    edges = np.linspace(0.0, 1.0, 41)
    c = 0.5 * (edges[1:] + edges[:-1])
    # the truth, binned the same way: N(x | z, s) on [0, 1], mass per bin / width
    cdf = stats.norm.cdf((edges[None, :] - xt) / s)
    true_pdf = np.diff(cdf, axis=1) / np.diff(edges)
    true_pdf /= np.sum(true_pdf * np.diff(edges), axis=1, keepdims=True)
    truth = _binned_log_score(true_pdf, edges, zt)
    gaps = []
    for n in (150, 2400):
        x, e, z = _simulate(rng, n, s)
        k = fit_kernel(x, e, z, max_rows=600, maxiter=40, bandwidth0=0.05)
        assert k["log_score"] > k["log_score_start"]
        grid = ModelGrid.from_training(
            x, e, z, ["x"], ["z"], bandwidth=k["bandwidth"], error_scale=k["error_scale"]
        )
        fitter = GridFitter(grid, GaussianProductLikelihood(scale=k["row_error_scale"]),
                            use_standardised=False)  # fmt: skip
        res = fitter.fit_batch(xt, st, stats_for=["z"], stats_bins=[edges], verbose=False,
                               return_pdf_for_stats=True, posterior_keep_mass=1.0,
                               return_mode="chunks", return_candidates=False)  # fmt: skip
        pdf = np.concatenate([r["pdf"][0] for r in res]).astype(np.float64)
        gaps.append(truth - _binned_log_score(pdf, edges, zt))
        assert np.all(np.isfinite(pdf)) and c.size == pdf.shape[1]
    assert gaps[1] < gaps[0]
    assert 0.0 <= gaps[1] < 0.05, gaps  # within 0.05 nats of the truth at 2,400 objects
    assert gaps[0] > 0.05  # and the small training set is measurably worse


def test_kernel_sigma_and_fit_kernel_errors(rng):
    e = np.full((3, 2), 0.1)
    want = np.broadcast_to(np.sqrt(0.04 + np.array([0, 0.09])), (3, 2))
    np.testing.assert_allclose(kernel_sigma(e, [0.0, 0.3], 2.0), want)
    with pytest.raises(ValueError, match="do not match"):
        fit_kernel(np.zeros((5, 2)), np.zeros((5, 2)), np.zeros(4))
    with pytest.raises(ValueError, match="finite"):
        fit_kernel(np.zeros((20, 1)), np.ones((20, 1)), np.full(20, np.nan))
    with pytest.raises(ValueError, match="at least 10"):
        fit_kernel(np.zeros((20, 1)), np.ones((20, 1)), np.zeros(20), rows=[1, 2])


def test_fit_kernel_leaves_out_rows_without_a_usable_band(rng):
    x, e, z = _simulate(rng, 120)
    rows = x.copy()
    rows[:5] = np.nan  # five training rows whose only feature is missing
    k = fit_kernel(x, e, z, row_values=rows, max_rows=120, maxiter=5)
    assert k["n_rows"] == 115 and np.isfinite(k["log_score"])
    with pytest.raises(ValueError, match="positive"):
        fit_kernel(x, e, z, bandwidth0=0.0)
