"""Status codes, bad rows and argument errors of fit_batch."""

import numpy as np
import pytest
from batch_helpers import BruteForceKNN
from conftest import make_grid

from jaxgrid import GridFitter, ModelGrid
from jaxgrid.core.status import BAD_STATUS, Status

EDGES = [np.linspace(0.0, 10.0, 21)]


@pytest.fixture
def setup(rng):
    grid = make_grid(rng, n=300, p=3, q=2)
    X = np.asarray(grid.observables, np.float64)[:12] + rng.normal(0, 0.3, (12, 3))
    S = np.full_like(X, 0.3)
    return grid, GridFitter(grid), X, S


def _fit(fitter, X, S, **kw):
    kw.setdefault("stats_for", ["t0"])
    kw.setdefault("stats_bins", EDGES)
    return fitter.fit_batch(X, S, return_mode="list", verbose=False, chunk_size=8, **kw)


def _assert_bad(r, flag):
    assert r["status"] & flag
    assert r["candidates"].size == 0 and r["post_models"].size == 0
    assert r["best"] == -1 and np.isnan(r["chi2_min"]) and r["log_evidence"] == -np.inf
    assert all(np.isnan(v) for k, v in r["stats"]["t0"].items() if k != "nmodes")
    assert np.all(np.isnan(r["stats"]["cov"]))
    assert np.isnan(r["truncation"]["mass_kept"]) and r["truncation"]["n_after"] == 0


def test_bad_rows_are_flagged_and_do_not_touch_others(setup):
    grid, fitter, X, S = setup
    clean = _fit(fitter, X, S)
    Xb, Sb = X.copy(), S.copy()
    Xb[2] = np.nan  # no usable observable
    Xb[5, 1] = np.inf  # bad value -> treated as missing, flagged
    Sb[7, 0] = -1.0  # negative error -> treated as missing, flagged
    bad = _fit(fitter, Xb, Sb)
    _assert_bad(bad[2], Status.NO_OBSERVABLES)
    assert bad[5]["status"] == Status.BAD_INPUT and bad[7]["status"] == Status.BAD_INPUT
    assert np.isfinite(bad[5]["stats"]["t0"]["mean"])
    for i in [0, 1, 3, 4, 6, 8, 9, 10, 11]:  # untouched rows: identical results
        a, b = clean[i], bad[i]
        np.testing.assert_array_equal(a["candidates"], b["candidates"])
        np.testing.assert_array_equal(a["post_models"], b["post_models"])
        assert a["stats"]["t0"] == b["stats"]["t0"] and a["log_evidence"] == b["log_evidence"]


def test_no_candidates_and_zero_weight(rng):
    grid0 = make_grid(rng, n=100, p=3, q=1)
    w = np.ones(100)
    w[:50] = 0.0
    grid = ModelGrid(
        grid0.observables, grid0.targets, grid0.observable_names, grid0.target_names, weights=w
    )
    fitter = GridFitter(grid)
    X = np.asarray(grid.observables, np.float64)[:4] + 0.01
    S = np.full_like(X, 0.2)

    class Selector(BruteForceKNN):
        def batch_candidates(self, Y, SIG):
            idx = np.tile(np.arange(10), (len(Y), 1))  # all zero-weight models
            mask = np.ones_like(idx, bool)
            idx[1] = np.arange(60, 70)  # row 1 gets real candidates
            mask[2] = False  # row 2 gets none
            return idx, mask, 10

    res = _fit(fitter, X, S, binner=Selector(grid, 10), fallback_to_full_grid=False)
    _assert_bad(res[0], Status.ZERO_WEIGHT)
    # row 1's candidates are not its model: a real fit, and a poor one (chi2_min ~ 100s)
    assert res[1]["status"] == Status.POOR_FIT and set(res[1]["candidates"]) <= set(range(60, 70))
    _assert_bad(res[2], Status.NO_CANDIDATES)
    # by default a row without candidates is fitted on the whole grid, and says so
    # (truncated like any full-grid row: no cap from the candidate path's K = 10)
    res = _fit(fitter, X, S, binner=Selector(grid, 10))
    full = _fit(fitter, X, S)
    assert res[2]["truncation"]["n_after"] > 10
    assert res[2]["status"] == Status.FULL_GRID_FALLBACK and res[2]["level"] is None
    np.testing.assert_array_equal(res[2]["candidates"], full[2]["candidates"])
    assert res[2]["stats"]["t0"] == full[2]["stats"]["t0"]


def test_full_grid_fallback_flag_from_binner(setup):
    grid, fitter, X, S = setup

    class Fallback(BruteForceKNN):
        def batch_candidates(self, Y, SIG):
            idx, mask, level = super().batch_candidates(Y, SIG)
            return idx, mask, level, np.arange(len(Y)) == 0  # rows to serve from the full grid

    res = _fit(fitter, X, S, binner=Fallback(grid, 50), posterior_keep_max_candidates=50)
    full = _fit(fitter, X, S, posterior_keep_max_candidates=50)
    assert res[0]["status"] == Status.FULL_GRID_FALLBACK and res[1]["status"] == 0
    assert res[8]["status"] == Status.FULL_GRID_FALLBACK  # first row of the second chunk
    for i in (0, 8):  # fallback rows carry the full-grid results
        np.testing.assert_array_equal(res[i]["candidates"], full[i]["candidates"])
        np.testing.assert_array_equal(res[i]["post_models"], full[i]["post_models"])
        assert res[i]["log_evidence"] == full[i]["log_evidence"]


def test_mass_cap_is_reported_honestly(setup):
    grid, fitter, X, S = setup
    res = _fit(
        fitter,
        X,
        S * 20,
        posterior_keep_mass=0.99,
        posterior_keep_max_candidates=5,
        posterior_keep_min_candidates=1,
    )
    r = res[0]
    assert r["status"] == Status.MASS_CAP
    assert r["truncation"]["n_after"] == 5 and r["truncation"]["mass_kept"] < 0.99
    assert r["truncation"]["mass_dropped"] == pytest.approx(1 - r["truncation"]["mass_kept"])


def test_kde_fallback_on_one_candidate(setup):
    grid, fitter, X, S = setup
    exact = np.asarray(grid.observables, np.float64)[:2]
    res = _fit(
        fitter,
        exact,
        np.full_like(exact, 1e-4),
        use_kde_for_stats=True,
        posterior_keep_min_candidates=1,
    )
    assert res[0]["status"] == Status.KDE_FALLBACK
    assert res[0]["truncation"]["n_after"] == 1
    t = float(np.asarray(grid.targets)[0, 0])
    assert res[0]["stats"]["t0"]["lo68"] <= t <= res[0]["stats"]["t0"]["hi68"]


def test_no_mass_in_bins(setup):
    grid, fitter, X, S = setup
    res = _fit(fitter, X, S, stats_bins=[np.linspace(50, 60, 5)])
    assert res[0]["status"] == Status.NO_MASS_IN_BINS
    assert np.isnan(res[0]["stats"]["t0"]["mean"]) and np.isfinite(res[0]["log_evidence"])


def test_status_enum_is_documented():
    assert Status.OK == 0
    assert BAD_STATUS == Status.NO_OBSERVABLES | Status.NO_CANDIDATES | Status.ZERO_WEIGHT
    assert len({int(s) for s in Status}) == len(list(Status))


@pytest.mark.parametrize(
    "kwargs,exc,msg",
    [
        ({"return_mode": "dict"}, ValueError, "`return_mode` must be one of"),
        (
            {"stats_for": ["t0", "t1"], "stats_bins": [np.linspace(0, 1, 5)]},
            ValueError,
            "one edge array per target",
        ),
        ({"stats_for": ["t0"], "stats_bins": [[0, 2, 1]]}, ValueError, "strictly increasing"),
        ({"stats_bins": [np.linspace(0, 1, 5)]}, ValueError, "without `stats_for`"),
        ({"stats_for": ["mass"]}, KeyError, "known targets"),
        ({"stats_for": ["t0", 0]}, ValueError, "twice"),
        ({"posterior_keep_mass": 0.0}, ValueError, "posterior_keep_mass"),
        ({"posterior_keep_min_candidates": 0}, ValueError, "posterior_keep_min_candidates"),
        ({"resume": True}, ValueError, "needs `output_hdf5_path`"),
        ({"upper_limits": np.zeros((2, 2), bool)}, ValueError, "upper_limits"),
        ({"binner": object()}, TypeError, "binner protocol"),
        ({"chunk_size": 0}, ValueError, "chunk_size"),
    ],
)
def test_argument_errors(setup, kwargs, exc, msg):
    grid, fitter, X, S = setup
    with pytest.raises(exc, match=msg):
        fitter.fit_batch(X, S, verbose=False, **kwargs)


def test_shape_errors(setup):
    grid, fitter, X, S = setup
    with pytest.raises(ValueError, match=r"`X_native` must have shape \(M, 3\)"):
        fitter.fit_batch(X[:, :2], S, verbose=False)
    with pytest.raises(ValueError, match="differ in shape"):
        fitter.fit_batch(X, S[:5], verbose=False)


def test_target_name_colliding_with_result_key(rng):
    grid = ModelGrid(rng.normal(size=(20, 2)), rng.normal(size=(20, 2)), ["a", "b"], ["cov", "z"])
    with pytest.raises(ValueError, match="collide with result keys"):
        GridFitter(grid).fit_batch(
            np.zeros((1, 2)), np.ones((1, 2)), stats_for=["cov"], verbose=False
        )


def test_invalid_mode_touches_no_file(setup, tmp_path):
    grid, fitter, X, S = setup
    path = tmp_path / "out.h5"
    with pytest.raises(ValueError, match="return_mode"):
        fitter.fit_batch(X, S, return_mode="bogus", output_hdf5_path=path)
    assert not path.exists()


def test_dry_run_computes_nothing(setup, tmp_path):
    from jaxgrid.core.step import trace_count

    grid, fitter, X, S = setup
    path = tmp_path / "out.h5"
    n = trace_count()
    assert fitter.fit_batch(X, S, dry_run=True, return_mode="list", output_hdf5_path=path) == []
    assert list(fitter.fit_batch(X, S, dry_run=True, output_hdf5_path=path)) == []
    assert not path.exists() and trace_count() == n
    with pytest.raises(ValueError, match="one edge array"):
        fitter.fit_batch(X, S, dry_run=True, stats_for=["t0", "t1"], stats_bins=EDGES)


def test_n_jobs_and_backend_never_fail(setup):
    grid, fitter, X, S = setup
    for n_jobs, backend in [(4, "thread"), (-1, "loky"), (None, "whatever")]:
        res = fitter.fit_batch(
            X,
            S,
            n_jobs=n_jobs,
            backend=backend,
            verbose=False,
            binner=BruteForceKNN(grid, 20),
            return_mode="list",
        )
        assert len(res) == 12
