"""BESTA names and keywords on jaxgrid (issue 16): the unnormalised Gaussian, BESTA's
error types, fit_batch's BESTA keywords, a binner with only candidates(), the HDF5
configuration group, GridFitStatsSpec, the grid's target-space helpers and the
post-processing helpers under BESTA's names — each against a reference."""

import json
import logging

import h5py
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_grid
from scipy.spatial import cKDTree

import jaxgrid
from jaxgrid import GridFitStatsSpec, GridFitter, KDTreeBinner, ModelGrid, Status
from jaxgrid.core.reductions import count_modes
from jaxgrid.postprocess import (
    enclosed_fraction_map,
    pdf_stats,
    photoz_metrics,
    pit_from_discrete_posterior,
    weighted_quantiles,
)
from jaxgrid.prob import (
    GaussianProductLikelihood,
    MagDependentRedshiftPrior,
    NumbaGaussianProductLikelihood,
    ObservableCompositePrior,
)


@pytest.fixture
def grid(rng):
    return make_grid(rng, n=300, p=3, q=2)


def test_top_level_has_every_prob_name():
    import jaxgrid.prob as prob

    for name in [n for n in dir(prob) if not n.startswith("_") and n[0].isupper()]:
        assert getattr(jaxgrid, name) is getattr(prob, name), name
    assert jaxgrid.posterior_over_models is prob.posterior_over_models


def test_unnormalised_gaussian_same_posterior(grid, rng):
    """NumbaGaussianProductLikelihood drops -1/2 sum log(2 pi h^2): same posterior and
    summaries, log evidence shifted by exactly that constant."""
    X = np.asarray(grid.observables)[:6] + rng.normal(0, 0.3, (6, 3))
    S = np.full_like(X, 0.4)
    X[2, 1] = np.nan  # a missing band changes the row's constant
    kw = dict(stats_for=["t0"], return_mode="chunks", verbose=False)
    a = next(iter(GridFitter(grid, GaussianProductLikelihood(), use_standardised=False)
                  .fit_batch(X, S, **kw)))  # fmt: skip
    b = next(iter(GridFitter(grid, NumbaGaussianProductLikelihood(prefer_batch=True),
                             use_standardised=False).fit_batch(X, S, **kw)))  # fmt: skip
    np.testing.assert_array_equal(a["candidate_idx"], b["candidate_idx"])
    np.testing.assert_allclose(a["candidate_w"], b["candidate_w"], rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(a["mean"], b["mean"], rtol=1e-5)
    usable = np.isfinite(X)
    const = -0.5 * np.sum(np.where(usable, np.log(2 * np.pi * S**2), 0.0), axis=1)
    np.testing.assert_allclose(a["log_evidence"] - b["log_evidence"], const, atol=2e-5)
    lik = NumbaGaussianProductLikelihood(bandwidth_floor=0.5)
    ll = lik.log_likelihood(jnp.zeros(2), jnp.array([0.1, 1.0]), jnp.array([[1.0, 1.0]]))
    np.testing.assert_allclose(ll, [-0.5 * (1 / 0.25 + 1.0)], rtol=1e-6)


def test_observable_dependent_priors_need_observables(grid):
    z = MagDependentRedshiftPrior(
        z_col=0, mag_observable_index=2, z_edges=np.linspace(0, 11, 12),
        m_edges=np.linspace(15, 25, 11),
    ).fit_from_grid(grid)  # fmt: skip
    t = grid.targets
    with pytest.raises(ValueError, match="observables"):
        z.log_prob_for_models(t)
    with pytest.raises(ValueError, match="observables"):
        ObservableCompositePrior([z]).log_prob_for_models(t)
    # members ask for what they need: plain priors need nothing (as BESTA)
    flat = ObservableCompositePrior([jaxgrid.FlatPrior()]).log_prob_for_models(t)
    np.testing.assert_array_equal(flat, np.zeros(300))
    assert ObservableCompositePrior([z]).log_prob_for_models(t, grid.observables).shape == (300,)


def test_besta_fit_batch_keywords(grid, recwarn, caplog):
    from jaxgrid import fitter as fitter_mod

    fitter_mod._warned_besta.clear()
    f = GridFitter(grid)
    X, S = np.asarray(grid.observables)[:4], np.full((4, 3), 0.3)
    kw = dict(return_mode="list", verbose=False)
    with pytest.warns(UserWarning, match="safety_margin"):
        out = f.fit_batch(X, S, memcheck_sample=64, safety_margin=1.5, tasks_per_worker=3, **kw)
    assert len(out) == 4
    f.fit_batch(X, S, safety_margin=2.0, **kw)  # once per session: no second warning
    assert not [w for w in recwarn if "BESTA" in str(w.message)]
    with caplog.at_level(logging.INFO, logger="jaxgrid"):
        f.fit_batch(X, S, max_memory_gb=0.001, dry_run=True, **kw)
    with pytest.raises(ValueError, match="max_memory_gb"):
        f.fit_batch(X, S, max_memory_gb=-1, **kw)


class _OnlyCandidates:
    """A BESTA-style custom binner: one object at a time."""

    def __init__(self, tree, k):
        self.tree, self.k, self.calls = tree, k, 0

    def candidates(self, y, sigma=None):
        self.calls += 1
        _, idx = self.tree.query(y, k=self.k)
        return np.asarray(idx), (self.calls - 1) % 3  # a level per row


def test_binner_with_only_candidates(grid, rng, caplog):
    X = np.asarray(grid.observables)[:10] + rng.normal(0, 0.2, (10, 3))
    S = np.full_like(X, 0.3)
    tree = cKDTree(np.asarray(grid.observables, np.float64))
    kd = KDTreeBinner(dims=[0, 1, 2], transform="none", target_k=40).fit(grid)
    f = GridFitter(grid, use_standardised=False)
    kw = dict(stats_for=["t0"], return_mode="chunks", verbose=False)
    custom = _OnlyCandidates(tree, 40)
    with caplog.at_level(logging.INFO, logger="jaxgrid"):
        a = next(iter(f.fit_batch(X, S, binner=custom, **kw)))
    assert custom.calls == 10 and "batch_candidates" in caplog.text
    b = next(iter(f.fit_batch(X, S, binner=kd, **kw)))
    np.testing.assert_allclose(a["mean"], b["mean"], rtol=1e-5)
    np.testing.assert_array_equal(a["candidate_idx"], b["candidate_idx"])
    np.testing.assert_array_equal(a["level"], np.arange(10) % 3)  # per-row levels kept
    # longer than the pool: the full grid, flagged, never cut
    wide = jaxgrid.binning_single.SingleObjectBinner(_OnlyCandidates(tree, 60), max_candidates=50)
    c = next(iter(f.fit_batch(X, S, binner=wide, **kw)))
    assert np.all(c["status"] & Status.FULL_GRID_FALLBACK)
    full = next(iter(f.fit_batch(X, S, **kw)))
    np.testing.assert_allclose(c["mean"], full["mean"], rtol=1e-5)


def test_configuration_keeps_the_standardisers_stored_form(grid, tmp_path):
    """Files written before the BESTA key aliases must resume: the run configuration
    stores the standardiser as {fitted, mean, std}, as it always did."""
    f = GridFitter(grid)  # use_standardised: the default
    X, S = np.asarray(grid.observables)[:3], np.full((3, 3), 0.3)
    path = tmp_path / "r.h5"
    f.fit_batch(X, S, output_hdf5_path=str(path), output_hdf5_write_only=True, verbose=False)
    cfg = jaxgrid.io.read_fit_results(path)["configuration"]
    assert set(cfg["standardiser"]) == {"fitted", "mean", "std"}


def test_hdf5_configuration_group_and_stats_spec(grid, tmp_path):
    f = GridFitter(grid)
    X, S = np.asarray(grid.observables)[:5], np.full((5, 3), 0.3)
    path = tmp_path / "fit.h5"
    f.fit_batch(
        X, S, stats_for=["t1"], output_hdf5_path=str(path), output_hdf5_write_only=True,
        return_mode="list", verbose=False,
    )  # fmt: skip
    with h5py.File(path) as h:
        g = h["fit_batch"]
        cfg = json.loads(g["configuration"].attrs["json"])  # where BESTA's readers look
        assert cfg == {**json.loads(g.attrs["configuration"]), **{k: cfg[k] for k in "MP"},
                       "group": "/fit_batch", "return_pdf_for_stats": False,
                       "stats_keys": ["t1"]}  # fmt: skip
        assert cfg["M"] == 5 and cfg["P"] == 3
    assert jaxgrid.io.read_fit_results(path)["stats/t1/mean"].shape == (5,)
    spec = GridFitStatsSpec("t1", np.linspace(0, 10, 11))
    assert spec.bins.dtype == np.float64
    with jaxgrid.io.results.GridFitHDF5Writer(tmp_path / "w.h5", "/g", 2, {}, [spec]) as w:
        assert w.stats_targets == ["t1"] and np.array_equal(w.stats_bins[0], spec.bins)
    with pytest.raises(ValueError, match="bins"):
        GridFitStatsSpec("t1", [1.0, 0.0])


def test_grid_target_space_helpers():
    t = np.column_stack([np.linspace(0, 1, 30), np.linspace(5, 8, 30) ** 2])
    grid = ModelGrid(t * 2, t, ["a", "b"], ["x", "y"], check_boundaries=lambda q: q[:, 0] < 0.5)
    with pytest.raises(RuntimeError, match="fit_target_standardiser"):
        grid.get_kdtree()
    raw = grid.get_kdtree(standardize=False)
    assert raw is grid.get_kdtree(standardize=False) and raw.n == 30
    grid.fit_target_standardiser()
    z = grid.get_kdtree()
    tf = np.asarray(grid.targets, np.float64)  # the stored (float32) targets
    np.testing.assert_allclose(z.data, (tf - tf.mean(0)) / tf.std(0), rtol=1e-12, atol=1e-14)
    grid.fit_target_standardiser(mask=np.arange(30) < 10)  # refit: a new tree
    assert grid.get_kdtree() is not z
    grid.invalidate_knn_index()
    assert grid._kdtree is None
    np.testing.assert_array_equal(grid.in_boundaries(np.array([[0.2, 30], [0.7, 30]])), [1, 0])
    assert ModelGrid(t, t, ["a", "b"], ["x", "y"]).in_boundaries(t).all()
    assert grid.observable_standardiser is grid.standardiser
    assert grid._observables_standardized is None
    grid.fit_standardiser()
    of = np.asarray(grid.observables, np.float64)
    np.testing.assert_allclose(
        grid._observables_standardized, (of - of.mean(0)) / of.std(0), rtol=1e-12, atol=1e-14
    )


def test_postprocess_helpers_against_references(rng):
    x, w = rng.normal(size=200), rng.uniform(0, 1, 200)
    order = np.argsort(x)
    cdf = np.cumsum(w[order]) / w.sum()
    np.testing.assert_allclose(
        weighted_quantiles(x, w, [0.16, 0.5]), np.interp([0.16, 0.5], cdf, x[order])
    )
    # pdf_stats: moments and CDF quantiles of the binned density; modes as the engine counts
    edges = np.linspace(0, 4, 41)
    c = 0.5 * (edges[1:] + edges[:-1])
    for pdf in (np.exp(-0.5 * ((c - 1) / 0.3) ** 2) + 0.6 * np.exp(-0.5 * ((c - 3) / 0.2) ** 2),
                np.exp(-c),  # peak in the first bin: one mode
                np.exp(-c) + 1e-9 * rng.uniform(size=40)):  # noise adds none  # fmt: skip
        st = pdf_stats(edges, pdf, quantiles=[0.1, 0.9], find_multimodal=True)
        p = pdf / np.sum(pdf * 0.1)
        np.testing.assert_allclose(st["mean"], np.sum(p * c * 0.1))
        cdfb = np.concatenate([[0], np.cumsum(p * 0.1)])
        np.testing.assert_allclose(st["q"], np.interp([0.1, 0.9], cdfb, edges))
        np.testing.assert_allclose(st["median"], np.interp(0.5, cdfb, edges))
        assert st["modes"].size == int(count_modes(jnp.asarray(pdf)))
    assert pdf_stats(edges, np.exp(-c), find_multimodal=True)["modes"].tolist() == [c[0]]
    # enclosed fraction: the mass of pixels at least as dense
    dens = rng.uniform(size=(5, 7))
    fmap = enclosed_fraction_map(dens)
    for i, j in [(0, 0), (4, 6), (2, 3)]:
        np.testing.assert_allclose(fmap[i, j], dens[dens >= dens[i, j]].sum() / dens.sum())
    # PIT of binned masses; BESTA's photo-z keys
    posts = rng.uniform(size=(3, 40))
    pit = pit_from_discrete_posterior(np.array([1.05, -1.0, 9.0]), posts, edges)
    want = (posts[0, :10].sum() + 0.5 * posts[0, 10]) / posts[0].sum()
    np.testing.assert_allclose(pit, [want, 0.0, 1.0])
    m = photoz_metrics(np.array([0.1, 0.5, 1.0]), np.array([0.12, 0.9, 1.01]))
    assert m["outlier"] == m["outlier_fraction"] == pytest.approx(1 / 3)
