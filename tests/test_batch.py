import numpy as np
import pytest
import reference as ref
from batch_helpers import BruteForceKNN, assert_row_matches, chi2_reference, row_log_weights
from conftest import make_grid

from jaxgrid import GridFitter, ModelGrid
from jaxgrid.prob import GaussianPrior1D, GaussianProductLikelihood

EDGES = [np.linspace(0.0, 10.0, 41), np.linspace(0.0, 10.0, 26)]


def _catalog(grid, rng, m=40, noise=0.4, sig=0.4):
    obs = np.asarray(grid.observables, np.float64)
    pick = rng.integers(0, grid.n_models, m)
    X = obs[pick] + rng.normal(0, noise, (m, grid.n_observables))
    S = np.full_like(X, sig) * rng.uniform(0.7, 1.3, X.shape)
    return X, S


@pytest.mark.parametrize(
    "keep_mass,keep_min,keep_max,ties",
    [(0.9, 5, None, False), (0.99, 20, 60, False), (0.5, 1, 200, True), (1.0, 128, None, False)],
)
def test_full_grid_matches_reference_x64(x64, rng, keep_mass, keep_min, keep_max, ties):
    grid = make_grid(rng, n=400, p=4, q=3, weights=True)
    prior = GaussianPrior1D("t1", 5.0, 3.0)
    fitter = GridFitter(grid, GaussianProductLikelihood(), prior, use_standardised=False)
    X, S = _catalog(grid, rng)
    X[5, 2] = np.nan  # a missing band
    res = fitter.fit_batch(
        X,
        S,
        stats_for=["t0", "t2"],
        stats_bins=EDGES,
        return_mode="list",
        verbose=False,
        posterior_keep_mass=keep_mass,
        posterior_keep_min_candidates=keep_min,
        posterior_keep_max_candidates=keep_max,
        posterior_keep_ties=ties,
        chunk_size=16,
        return_pdf_for_stats=True,
        find_multimodal=True,
    )
    assert [r["m"] for r in res] == list(range(40))
    lp = ref.gaussian_logpdf(np.asarray(grid.targets, np.float64)[:, 1], 5.0, 3.0)
    for r, x, s in zip(res, X, S):
        lw = row_log_weights(grid, x, s, prior_logp=lp)
        want = ref.batch_row_reference(
            lw,
            np.arange(grid.n_models),
            grid.targets,
            keep_mass=keep_mass,
            keep_min=keep_min,
            cap=keep_max,
            ties=ties,
            stats_cols=(0, 2),
            edges=EDGES,
            find_multimodal=True,
        )
        assert_row_matches(r, want, ["t0", "t2"], (0, 2))
        assert r["chi2_min"] == pytest.approx(chi2_reference(grid, x, s).min(), rel=1e-9)
        assert r["status"] == 0
        assert r["truncation"]["keep_mass"] == keep_mass


def test_standardised_and_upper_limits_match_reference_x64(x64, rng):
    grid = make_grid(rng, n=300, p=4, q=2)
    lik = GaussianProductLikelihood(bandwidth_floor=0.05, limit_kind="magnitude")
    fitter = GridFitter(grid, lik, use_standardised=True)
    X, S = _catalog(grid, rng, m=20)
    U = np.zeros(X.shape, bool)
    U[::3, 1] = True
    res = fitter.fit_batch(
        X,
        S,
        upper_limits=U,
        stats_for=[0],
        stats_bins=EDGES[:1],
        return_mode="list",
        verbose=False,
        chunk_size=8,
    )
    for r, x, s, u in zip(res, X, S, U):
        lw = row_log_weights(
            grid, x, s, upper=u, limit_kind="magnitude", floor=0.05, standardised=True
        )
        want = ref.batch_row_reference(
            lw,
            np.arange(300),
            grid.targets,
            keep_mass=0.99,
            keep_min=128,
            cap=None,
            stats_cols=(0,),
            edges=EDGES[:1],
        )
        assert_row_matches(r, want, ["t0"], (0,))


def test_candidate_path_matches_reference_x64(x64, rng):
    grid = make_grid(rng, n=500, p=3, q=2)
    fitter = GridFitter(grid, use_standardised=False)
    X, S = _catalog(grid, rng, m=30)
    binner = BruteForceKNN(grid, k=64)
    res = fitter.fit_batch(
        X,
        S,
        binner=binner,
        stats_for=["t0", "t1"],
        stats_bins=EDGES,
        return_mode="list",
        verbose=False,
        chunk_size=8,
        posterior_keep_mass=0.95,
        posterior_keep_min_candidates=4,
    )
    idx, _, _ = binner.batch_candidates(X, S)
    for r, x, s, cand in zip(res, X, S, idx):
        lw = row_log_weights(grid, x, s)[cand]
        want = ref.batch_row_reference(
            lw,
            cand,
            np.asarray(grid.targets)[cand],
            keep_mass=0.95,
            keep_min=4,
            cap=None,
            stats_cols=(0, 1),
            edges=EDGES,
        )
        assert_row_matches(r, want, ["t0", "t1"], (0, 1))
        assert r["level"] == 64


def test_candidates_with_k_equal_n_match_full_grid(rng):
    grid = make_grid(rng, n=200, p=3, q=2)
    fitter = GridFitter(grid)
    X, S = _catalog(grid, rng, m=12)
    kw = dict(
        stats_for=["t0"],
        stats_bins=EDGES[:1],
        return_mode="list",
        verbose=False,
        chunk_size=4,
        posterior_keep_mass=0.9,
    )
    full = fitter.fit_batch(X, S, **kw)
    cand = fitter.fit_batch(X, S, binner=BruteForceKNN(grid, k=200), **kw)
    for a, b in zip(full, cand):
        np.testing.assert_array_equal(a["candidates"], b["candidates"])
        np.testing.assert_allclose(a["post_models"], b["post_models"], rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(a["stats"]["t0"]["mean"], b["stats"]["t0"]["mean"], rtol=1e-5)


def test_kde_stats_match_scipy_x64(x64, rng):
    grid = make_grid(rng, n=300, p=3, q=2)
    fitter = GridFitter(grid, use_standardised=False)
    X, S = _catalog(grid, rng, m=10, sig=1.5)
    res = fitter.fit_batch(
        X,
        S,
        stats_for=["t0"],
        stats_bins=EDGES[:1],
        use_kde_for_stats=True,
        return_mode="list",
        verbose=False,
        posterior_keep_mass=0.9,
        posterior_keep_min_candidates=3,
    )
    for r, x, s in zip(res, X, S):
        want = ref.batch_row_reference(
            row_log_weights(grid, x, s),
            np.arange(300),
            grid.targets,
            keep_mass=0.9,
            keep_min=3,
            cap=None,
            stats_cols=(0,),
            edges=EDGES[:1],
            kde=True,
        )
        assert_row_matches(r, want, ["t0"], (0,), rtol=1e-8)
        assert r["status"] == 0


def test_blocked_equals_unblocked(rng):
    grid = make_grid(rng, n=1000, p=4, q=3, weights=True)
    fitter = GridFitter(grid, prior=GaussianPrior1D("t0", 4.0, 2.0))
    X, S = _catalog(grid, rng, m=24)
    for keep in (0.95, 1.0):
        kw = dict(
            stats_for=["t0", "t1"],
            stats_bins=EDGES,
            return_mode="list",
            verbose=False,
            chunk_size=8,
            posterior_keep_mass=keep,
            posterior_keep_max_candidates=None,
            posterior_keep_min_candidates=16,
        )
        one = fitter.fit_batch(X, S, **kw)
        blocked = fitter.fit_batch(X, S, model_block_size=130, **kw)  # 8 blocks, ragged tail
        for a, b in zip(one, blocked):
            np.testing.assert_array_equal(a["candidates"], b["candidates"])
            np.testing.assert_allclose(a["post_models"], b["post_models"], rtol=2e-5, atol=1e-9)
            assert a["log_evidence"] == pytest.approx(b["log_evidence"], rel=1e-5, abs=1e-5)
            assert a["chi2_min"] == pytest.approx(b["chi2_min"], rel=1e-6)
            for k in ("mean", "std", "median", "lo68", "hi68", "map"):
                assert a["stats"]["t1"][k] == pytest.approx(b["stats"]["t1"][k], rel=1e-4, abs=1e-5)
            np.testing.assert_allclose(a["stats"]["cov"], b["stats"]["cov"], rtol=1e-3, atol=1e-6)
            for k in ("mass_kept", "ess_before", "ess_after"):
                assert a["truncation"][k] == pytest.approx(b["truncation"][k], rel=1e-4)


def test_memory_budget_blocks_the_model_axis(rng):
    from jaxgrid.batch import BatchOptions, plan_batch

    grid = make_grid(rng, n=5000, p=3, q=1)
    fitter = GridFitter(grid)
    X, S = _catalog(grid, rng, m=64)
    options = BatchOptions(
        posterior_keep_min_candidates=16, chunk_size=64, memory_budget_bytes=64 * 32 * 1200
    )
    plan = plan_batch(fitter, X, S, options)
    assert plan.config.n_blocks > 1 and plan.config.block_size * 64 * 32 <= 64 * 32 * 1200


def test_high_snr_chi2_float32(rng):
    # S/N = 1000 magnitudes around 22: chi2_min must match the float64 reference.
    obs = 22.0 + rng.normal(0, 0.02, (500, 6))
    grid = ModelGrid(obs, rng.uniform(0, 1, (500, 1)), [f"b{i}" for i in range(6)], ["t"])
    fitter = GridFitter(grid, use_standardised=False)
    truth = np.asarray(grid.observables, np.float64)[:10]
    S = np.full((10, 6), 22.0e-3 / 22.0)  # 1e-3 mag errors
    X = truth + rng.normal(0, 1e-3, truth.shape)
    res = fitter.fit_batch(X, S, return_mode="list", verbose=False)
    for r, x, s in zip(res, X, S):
        chi2 = chi2_reference(grid, x.astype(np.float32).astype(np.float64), s)
        assert r["chi2_min"] == pytest.approx(chi2.min(), rel=1e-3, abs=1e-2)
        assert r["best"] == int(np.argmin(chi2))


def test_compiles_once_for_ragged_catalog(rng):
    from jaxgrid.core.step import trace_count

    grid = make_grid(rng, n=300, p=3, q=2)
    fitter = GridFitter(grid)
    X, S = _catalog(grid, rng, m=56)  # 3.5 chunks of 16
    kw = dict(
        stats_for=["t0"], stats_bins=EDGES[:1], return_mode="chunks", verbose=False, chunk_size=16
    )
    before = trace_count()
    chunks = list(fitter.fit_batch(X, S, **kw))
    assert len(chunks) == 4 and sum(c["m"].size for c in chunks) == 56
    assert trace_count() == before + 1
    list(fitter.fit_batch(X[:20], S[:20], **kw))  # another catalog, same configuration
    assert trace_count() == before + 1
    # changing a prior parameter (an array) does not recompile either
    f2 = GridFitter(grid, prior=GaussianPrior1D("t0", 1.0, 2.0))
    f3 = GridFitter(grid, prior=GaussianPrior1D("t0", 3.0, 1.0))
    list(f2.fit_batch(X, S, **kw))
    n = trace_count()
    list(f3.fit_batch(X, S, **kw))
    assert trace_count() == n


def test_return_modes_agree(rng):
    grid = make_grid(rng, n=200, p=3, q=2)
    fitter = GridFitter(grid)
    X, S = _catalog(grid, rng, m=21)
    kw = dict(stats_for=["t0", "t1"], stats_bins=EDGES, verbose=False, chunk_size=8)
    it = fitter.fit_batch(X, S, return_mode="iter", **kw)
    assert not isinstance(it, list)
    objs = list(it)
    lst = fitter.fit_batch(X, S, return_mode="list", **kw)
    chunks = list(fitter.fit_batch(X, S, return_mode="chunks", **kw))
    table = fitter.fit_batch(X, S, return_mode="table", ids=np.arange(100, 121), **kw)
    assert [o["m"] for o in objs] == list(range(21)) == [o["m"] for o in lst]
    assert len(table) == 21 and list(table["id"]) == list(range(100, 121))
    for col in [
        "m",
        "status",
        "log_evidence",
        "chi2_min",
        "best",
        "t0_mean",
        "t1_hi68",
        "t1_nmodes",
    ]:
        assert col in table.colnames
    np.testing.assert_array_equal(table["t0_mean"], [o["stats"]["t0"]["mean"] for o in objs])
    np.testing.assert_array_equal(
        np.concatenate([c["log_evidence"] for c in chunks]), [o["log_evidence"] for o in lst]
    )
    assert set(objs[0]) >= {
        "m",
        "level",
        "candidates",
        "post_models",
        "truncation",
        "stats",
        "log_evidence",
        "chi2_min",
        "best",
        "status",
    }
    assert objs[0]["level"] is None
    assert np.sum(objs[0]["post_models"]) == pytest.approx(1.0, rel=1e-5)
    w = objs[0]["post_models"]
    assert np.all(np.diff(w) <= 0)  # descending weight


def test_default_bins_span_the_grid(rng):
    grid = make_grid(rng, n=100, p=3, q=2)
    r = GridFitter(grid).fit_batch(
        *_catalog(grid, rng, m=2),
        stats_for=["t1"],
        verbose=False,
        return_mode="list",
        return_pdf_for_stats=True,
    )
    assert r[0]["posts_target"]["t1"].shape == (199,)


def test_bimodal_posterior_has_two_modes(x64):
    t = np.linspace(0, 10, 1001)
    obs = np.column_stack([np.abs(t - 5.0)])  # |t - 5| = 3 at t = 2 and t = 8
    grid = ModelGrid(obs, t[:, None], ["o"], ["t"])
    r = GridFitter(grid, use_standardised=False).fit_batch(
        np.array([[3.0]]),
        np.array([[0.3]]),
        stats_for=["t"],
        stats_bins=[np.linspace(0, 10, 21)],
        find_multimodal=True,
        posterior_keep_mass=1.0,
        return_mode="list",
        verbose=False,
    )
    assert r[0]["stats"]["t"]["nmodes"] == 2


def test_return_candidates_false_skips_lists_keeps_summaries(rng, tmp_path):
    grid = make_grid(rng, n=500, p=3, q=2)
    fitter = GridFitter(grid)
    X, S = _catalog(grid, rng, m=20)
    kw = dict(
        stats_for=["t0", "t1"],
        stats_bins=EDGES,
        return_mode="list",
        verbose=False,
        posterior_keep_mass=1.0,
        chunk_size=8,
        return_pdf_for_stats=True,
    )
    full = fitter.fit_batch(X, S, **kw)
    lean = fitter.fit_batch(X, S, return_candidates=False, output_hdf5_path=tmp_path / "l.h5", **kw)
    for a, b in zip(full, lean):
        assert b["candidates"].size == 0 and b["post_models"].size == 0
        assert a["best"] == b["best"] and a["log_evidence"] == b["log_evidence"]
        # two compiled programs: XLA may order the sums differently (float32 rounding)
        for f in ("mean", "std", "median", "lo68", "hi68", "map", "nmodes"):
            np.testing.assert_allclose(a["stats"]["t1"][f], b["stats"]["t1"][f], rtol=1e-5)
        np.testing.assert_allclose(a["posts_target"]["t0"], b["posts_target"]["t0"], rtol=1e-6)
        assert a["truncation"]["n_after"] == b["truncation"]["n_before"] == 500
    import h5py

    with h5py.File(tmp_path / "l.h5") as f:
        assert f["fit_batch/candidates/candidates"][3].size == 0
