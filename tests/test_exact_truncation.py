"""Exact posteriors at any size: kept sets of 1 to N models, no silent cap.

Rows with posterior widths from 0.01 to 1.0 on a 6,000-model grid (and a
multimodal grid) under default settings; every row is compared with the float64
sort-based reference of tests/reference.py. In float32 a kept set's boundary is
decided to float32 rounding: where the reference's cumulative mass lies within
1e-5 of keep_mass at the cut, the engine may keep one model more or fewer, and
the reference is then re-evaluated at the engine's count (still checked).
"""

import numpy as np
import pytest
import reference as ref
from batch_helpers import BruteForceKNN, row_log_weights

from jaxgrid import GridFitter, ModelGrid
from jaxgrid.core.status import Status

EDGES = [np.linspace(0.0, 1.0, 51), np.linspace(0.0, 1.0, 41)]
SIGMAS = np.geomspace(0.01, 1.0, 60)


def _grid(rng, n=6000, multimodal=False):
    t = rng.uniform(0.0, 1.0, (n, 2))
    if multimodal:  # observables fold the targets: two separated solutions per row
        obs = np.column_stack([np.abs(t[:, 0] - 0.5), t[:, 1]])
    else:
        obs = t.copy()
    return ModelGrid(obs, t, ["o0", "o1"], ["a", "b"])


def _rows(rng, m=60):
    X = np.column_stack([rng.uniform(0.15, 0.4, m), rng.uniform(0.2, 0.8, m)])
    S = np.column_stack([SIGMAS[:m], SIGMAS[:m] * 0.8])
    return X, S


def _fit(fitter, X, S, **kw):
    kw = (
        dict(
            stats_for=["a", "b"],
            stats_bins=EDGES,
            return_mode="list",
            verbose=False,
            find_multimodal=True,
            return_pdf_for_stats=True,
        )
        | kw
    )
    return fitter.fit_batch(X, S, **kw)


def _reference(lw, targets, n_keep=None, **kw):
    want = ref.batch_row_reference(
        lw,
        np.arange(lw.size),
        targets,
        stats_cols=(0, 1),
        edges=EDGES,
        find_multimodal=True,
        n_keep=n_keep,
        **kw,
    )
    return want


def _ambiguous(lw, keep_mass, n_keep, tol=1e-5):
    """True when float32 rounding can move the cut by one model at count ``n_keep``."""
    w = np.sort(np.exp(lw - ref.logsumexp(lw)))[::-1]
    cum = np.cumsum(w)
    near = [cum[k] for k in (n_keep - 2, n_keep - 1, n_keep) if 0 <= k < cum.size]
    return any(abs(c - keep_mass) < tol for c in near)


def _check_row(got, want, lw, tol, exact_order):
    tr = got["truncation"]
    assert tr["n_before"] == want["n_before"]
    assert tr["n_after"] == want["n_after"]
    cand = np.asarray(got["candidates"])
    assert cand.size == tr["n_after"] == np.asarray(got["post_models"]).size
    if exact_order:
        np.testing.assert_array_equal(cand, want["candidates"])
    else:
        # the kept set is the reference's up to models within float32 rounding of the cut
        cut = lw[want["candidates"][-1]]
        differ = set(cand.tolist()) ^ set(want["candidates"].tolist())
        assert all(abs(lw[i] - cut) < 1e-4 for i in differ), sorted(differ)[:5]
        # descending weight, up to float32 rounding of the log weights
        assert np.all(np.diff(lw[cand]) <= 1e-4)
    np.testing.assert_allclose(np.sum(got["post_models"]), 1.0, rtol=1e-5)
    np.testing.assert_allclose(got["log_evidence"], want["log_evidence"], rtol=tol, atol=tol)
    for k in ("mass_kept", "mass_dropped", "cut_weight"):
        np.testing.assert_allclose(tr[k], want[k], rtol=tol, atol=tol, err_msg=k)
    for k in ("ess_before", "ess_after"):
        np.testing.assert_allclose(tr[k], want[k], rtol=10 * tol, err_msg=k)
    for j, name in enumerate(["a", "b"]):
        g, w = got["stats"][name], want["stats"][j]
        for k in ("mean", "std", "median", "lo68", "hi68"):
            np.testing.assert_allclose(g[k], w[k], rtol=tol, atol=tol, err_msg=f"{name}.{k}")
        if not np.isclose(g["map"], w["map"]):  # two bins within rounding of each other
            dens = w["density"]
            k_got = np.searchsorted(EDGES[j], g["map"]) - 1
            assert dens[k_got] == pytest.approx(dens.max(), rel=1e-4)
        assert g["nmodes"] == w["nmodes"], name
        np.testing.assert_allclose(got["posts_target"][name], w["density"], rtol=tol, atol=tol)
    np.testing.assert_allclose(got["stats"]["cov"], want["cov"], rtol=10 * tol, atol=tol)
    assert got["status"] & ~Status.MASS_CAP == 0


def _compare(res, grid, X, S, keep_mass=0.99, tol=2e-5, exact_order=False, **kw):
    sizes = []
    for r, x, s in zip(res, X, S, strict=True):
        lw = row_log_weights(grid, x, s)
        want = _reference(lw, grid.targets, keep_mass=keep_mass, **kw)
        if r["truncation"]["n_after"] != want["n_after"]:
            assert abs(r["truncation"]["n_after"] - want["n_after"]) == 1
            assert _ambiguous(lw, keep_mass, want["n_after"])
            want = _reference(
                lw, grid.targets, keep_mass=keep_mass, n_keep=r["truncation"]["n_after"], **kw
            )
        _check_row(r, want, lw, tol, exact_order)
        sizes.append(want["n_after"])
    return np.array(sizes)


@pytest.mark.parametrize("multimodal", [False, True])
def test_broad_posteriors_default_settings_match_reference(rng, multimodal):
    grid = _grid(rng, multimodal=multimodal)
    fitter = GridFitter(grid, use_standardised=False)
    X, S = _rows(rng)
    res = _fit(fitter, X, S)
    sizes = _compare(res, grid, X, S, keep_min=128, cap=None)
    # the rows span kept sets from the minimum to most of the grid; none is capped
    assert sizes.min() == 128 and sizes.max() > 5000
    assert not any(r["status"] & Status.MASS_CAP for r in res)
    if multimodal:  # the narrow rows see both solutions (and the grid's sampling noise)
        assert all(r["stats"]["a"]["nmodes"] >= 2 for r in res[:10])


def test_broad_posteriors_x64_exact_order(x64, rng):
    grid = _grid(rng, n=3000)
    fitter = GridFitter(grid, use_standardised=False)
    X, S = _rows(rng, m=30)
    res = _fit(fitter, X, S)
    _compare(res, grid, X, S, keep_min=128, cap=None, tol=1e-9, exact_order=True)


def test_model_blocks_equal_whole_grid(rng):
    grid = _grid(rng, n=6000, multimodal=True)
    fitter = GridFitter(grid, use_standardised=False)
    X, S = _rows(rng, m=24)
    whole = _fit(fitter, X, S, chunk_size=8)
    blocked = _fit(fitter, X, S, chunk_size=8, model_block_size=1700)  # 4 ragged blocks
    _compare(blocked, grid, X, S, keep_min=128, cap=None)
    for a, b in zip(whole, blocked, strict=True):
        assert a["truncation"]["n_after"] == b["truncation"]["n_after"]
        np.testing.assert_array_equal(a["candidates"], b["candidates"])
        np.testing.assert_allclose(a["post_models"], b["post_models"], rtol=1e-5, atol=1e-9)
        for name in ("a", "b"):
            for k in ("mean", "std", "median", "lo68", "hi68"):
                assert a["stats"][name][k] == pytest.approx(b["stats"][name][k], abs=1e-5)


def test_candidate_lists_of_any_length(rng):
    grid = _grid(rng, n=6000)
    fitter = GridFitter(grid, use_standardised=False)
    X, S = _rows(rng, m=30)
    k = 4000
    res = _fit(fitter, X, S, binner=BruteForceKNN(grid, k), chunk_size=8)
    knn = BruteForceKNN(grid, k)
    sizes = []
    for r, x, s, cand in zip(res, X, S, knn.batch_candidates(X, S)[0], strict=True):
        lw_all = row_log_weights(grid, x, s)
        t_cand = np.asarray(grid.targets)[cand]

        def reference(n_keep=None, lw=lw_all[cand], cand=cand, t_cand=t_cand):
            return ref.batch_row_reference(
                lw,
                cand,
                t_cand,
                keep_mass=0.99,
                keep_min=128,
                cap=None,
                stats_cols=(0, 1),
                edges=EDGES,
                find_multimodal=True,
                n_keep=n_keep,
            )

        want = reference()
        if r["truncation"]["n_after"] != want["n_after"]:
            assert abs(r["truncation"]["n_after"] - want["n_after"]) == 1
            assert _ambiguous(lw_all[cand], 0.99, want["n_after"])
            want = reference(r["truncation"]["n_after"])
        lw_named = np.full(grid.n_models, -np.inf)
        lw_named[cand] = lw_all[cand]
        _check_row(r, want, lw_named, 2e-5, exact_order=False)
        sizes.append(want["n_after"])
    assert max(sizes) > 1000  # far beyond the device's top list


@pytest.mark.parametrize("keep_max", [300, 2500])
def test_user_bounds_bind_and_only_then_mass_cap(rng, keep_max):
    grid = _grid(rng, n=6000)
    fitter = GridFitter(grid, use_standardised=False)
    X, S = _rows(rng, m=60)
    res = _fit(
        fitter, X, S, posterior_keep_max_candidates=keep_max, posterior_keep_min_candidates=200
    )
    sizes = _compare(res, grid, X, S, keep_min=200, cap=keep_max)
    assert sizes.max() == keep_max and sizes.min() == 200
    for r in res:
        capped = r["truncation"]["n_after"] == keep_max and r["truncation"]["mass_kept"] < 0.99
        assert bool(r["status"] & Status.MASS_CAP) == capped


@pytest.mark.parametrize("ties", [False, True])
def test_tied_models_at_the_cut(x64, rng, ties):
    # every model three times: each weight is tied with two others
    base = rng.uniform(0.0, 1.0, (1500, 2))
    t = np.repeat(base, 3, axis=0)
    grid = ModelGrid(t.copy(), t, ["o0", "o1"], ["a", "b"])
    fitter = GridFitter(grid, use_standardised=False)
    X, S = _rows(rng, m=40)
    res = _fit(fitter, X, S, posterior_keep_ties=ties, posterior_keep_min_candidates=10)
    sizes = _compare(res, grid, X, S, keep_min=10, cap=None, ties=ties, tol=1e-9, exact_order=True)
    if ties:
        assert np.all(sizes % 3 == 0)
    else:
        assert np.any(sizes % 3 != 0)  # a tie group split at the cut, in index order
    assert sizes.max() > 1000


def test_flat_posterior_keeps_its_share(rng):
    # the example of the issue: a flat posterior over 3,000 models, keep_mass 0.99
    t = np.linspace(0.0, 1.0, 3000)[:, None]
    grid = ModelGrid(np.zeros((3000, 1)), np.column_stack([t, t]), ["o"], ["a", "b"])
    fitter = GridFitter(grid, use_standardised=False)
    (r,) = _fit(fitter, np.zeros((1, 1)), np.ones((1, 1)))
    assert r["truncation"]["n_after"] in (2970, 2971)  # 0.99 of equal weights
    assert r["truncation"]["mass_kept"] == pytest.approx(0.99, abs=1e-3)
    # the lowest-index models are kept (ties in index order)
    np.testing.assert_array_equal(r["candidates"], np.arange(r["truncation"]["n_after"]))
    assert r["stats"]["a"]["std"] == pytest.approx(np.sqrt(1 / 12) * 0.99, rel=2e-2)


def test_no_candidates_mode_needs_no_lists(rng):
    grid = _grid(rng, n=6000)
    fitter = GridFitter(grid, use_standardised=False)
    X, S = _rows(rng, m=20)
    with_lists = _fit(fitter, X, S)
    without = _fit(fitter, X, S, return_candidates=False)
    for a, b in zip(with_lists, without, strict=True):
        assert b["candidates"].size == 0 and a["candidates"].size == a["truncation"]["n_after"]
        assert a["truncation"] == b["truncation"]
        assert a["stats"]["a"] == b["stats"]["a"]


def test_long_lists_compile_once(rng):
    from jaxgrid.core.step import pool_trace_count, trace_count

    grid = _grid(rng, n=3000)
    fitter = GridFitter(grid, use_standardised=False)
    X, S = _rows(rng, m=60)
    kw = dict(chunk_size=16, return_mode="chunks")
    list(_fit(fitter, X[-5:], S[-5:], **kw))  # broad rows: compiles both (chunk shape fixed)
    before = trace_count(), pool_trace_count()
    chunks = list(_fit(fitter, X[::-1], S[::-1], **kw))  # 4 chunks, ragged tail
    assert (trace_count(), pool_trace_count()) == before
    n_after = np.concatenate([c["n_after"] for c in chunks])
    assert n_after.max() > 1000  # long lists were completed on the host
    off = np.concatenate([[0], np.cumsum(n_after)])
    got = np.concatenate(
        [
            c["candidate_offsets"][1:] + o
            for c, o in zip(
                chunks,
                np.cumsum([0] + [c["candidate_offsets"][-1] for c in chunks[:-1]]),
                strict=True,
            )
        ]
    )
    np.testing.assert_array_equal(got, off[1:])


def test_kde_over_broad_kept_sets_whole_and_blocked(x64, rng):
    grid = _grid(rng, n=2000)
    fitter = GridFitter(grid, use_standardised=False)
    X = _rows(rng, m=6)[0]
    S = np.geomspace(0.05, 0.8, 6)[:, None] * np.ones((1, 2))
    for kw in ({}, {"model_block_size": 700, "chunk_size": 8}):
        res = _fit(fitter, X, S, use_kde_for_stats=True, **kw)
        for r, x, s in zip(res, X, S, strict=True):
            lw = row_log_weights(grid, x, s)
            want = _reference(lw, grid.targets, keep_mass=0.99, keep_min=128, cap=None, kde=True)
            assert r["truncation"]["n_after"] == want["n_after"] > 128
            for j, name in enumerate(["a", "b"]):
                for k in ("mean", "std", "median"):
                    assert r["stats"][name][k] == pytest.approx(want["stats"][j][k], abs=1e-7)


def test_fallback_row_next_to_host_ordered_pools(rng):
    # a short candidate pool (ordered on the host) and, in the same chunk, a row the
    # binner cannot serve (the full grid, listed by the device): both lists intact
    grid = _grid(rng, n=2000)

    class WithFallback(BruteForceKNN):
        def batch_candidates(self, Y, SIG):
            idx, mask, level = super().batch_candidates(Y, SIG)
            mask = mask.copy()
            mask[0] = False
            return idx, mask, level

    fitter = GridFitter(grid, use_standardised=False)
    X, S = np.array([[0.5, 0.5], [0.3, 0.3]]), np.full((2, 2), 0.05)
    got = _fit(fitter, X, S, binner=WithFallback(grid, 300))
    alone = _fit(fitter, X[1:], S[1:], binner=BruteForceKNN(grid, 300))[0]
    full = _fit(fitter, X[:1], S[:1])[0]
    assert got[0]["status"] == Status.FULL_GRID_FALLBACK
    for r, want in ((got[0], full), (got[1], alone)):
        np.testing.assert_array_equal(r["candidates"], want["candidates"])
        np.testing.assert_allclose(r["post_models"], want["post_models"], rtol=1e-6)
        assert np.sum(r["post_models"]) == pytest.approx(1.0)


def test_untruncated_blocks_keep_every_valid_model(x64, rng):
    # the found-by-review case: blocks, no truncation, KDE, upper limits given
    t = rng.uniform(0, 1, (2400, 2))
    w = rng.uniform(0.5, 2.0, 2400)
    w[rng.uniform(size=2400) < 0.4] = 0.0
    obs = np.column_stack([t[:, 0], t[:, 1], t[:, 0] + t[:, 1]])
    grid = ModelGrid(obs, t, ["o0", "o1", "o2"], ["a", "b"], weights=w)
    fitter = GridFitter(grid, use_standardised=False)
    X = np.column_stack([rng.uniform(0.2, 0.8, 6), rng.uniform(0.2, 0.8, 6), np.full(6, 1.0)])
    S = np.column_stack([np.geomspace(0.05, 0.5, 6)] * 2 + [np.full(6, np.nan)])
    for block in (None, 700):
        res = _fit(
            fitter,
            X,
            S,
            posterior_keep_mass=0.9999,
            use_kde_for_stats=True,
            model_block_size=block,
            upper_limits=np.zeros(X.shape, bool),
            chunk_size=4,
        )
        for r, x, s in zip(res, X, S, strict=True):
            lw = row_log_weights(grid, x, s)
            want = _reference(lw, grid.targets, keep_mass=0.9999, keep_min=128, cap=None, kde=True)
            assert r["truncation"]["n_after"] == want["n_after"]
            for j, name in enumerate(["a", "b"]):
                for k in ("mean", "std"):
                    assert r["stats"][name][k] == pytest.approx(want["stats"][j][k], abs=1e-12)
