import numpy as np
import pytest
from conftest import make_grid

from jaxgrid import GridFitter, Status
from jaxgrid.binning import Binner, KDTreeBinner


@pytest.fixture
def grid(rng):
    g = make_grid(rng, n=2000, p=4, q=2)
    return g


def _rows(grid, rng, m=50):
    obs = np.asarray(grid.observables, np.float64)
    Y = obs[rng.integers(0, grid.n_models, m)] + rng.normal(0, 0.3, (m, grid.n_observables))
    return Y, np.full_like(Y, 0.2) * rng.uniform(0.5, 1.5, Y.shape)


def _tree_space(grid, dims, transform, pca_variance=1.0):
    raw = np.asarray(grid.observables, np.float64)[:, dims]
    if transform == "none":
        return raw, lambda y: y
    mu, sd = raw.mean(0), raw.std(0)
    z = (raw - mu) / sd
    if transform == "standardize":
        return z, lambda y: (y - mu) / sd
    evals, evecs = np.linalg.eigh(np.cov(z, rowvar=False, bias=True))
    order = np.argsort(evals)[::-1]
    evals, evecs = evals[order], evecs[:, order]
    keep = int(np.searchsorted(np.cumsum(evals) / evals.sum(), pca_variance - 1e-12) + 1)
    comp = evecs[:, :keep] / np.sqrt(evals[:keep])
    return z @ comp, lambda y: ((y - mu) / sd) @ comp


@pytest.mark.parametrize("transform", ["none", "standardize", "pca_whiten"])
def test_knn_matches_brute_force_and_per_row(grid, rng, transform):
    dims = [0, 2, 3]
    b = KDTreeBinner(dims=dims, transform=transform, target_k=40, leafsize=16).fit(grid)
    Y, S = _rows(grid, rng)
    idx, mask, level = b.batch_candidates(Y, S)
    assert idx.shape == (50, 40) and mask.all() and level == 40
    pts, to_tree = _tree_space(grid, dims, transform)
    for r in range(50):
        d = np.linalg.norm(pts - to_tree(Y[r, dims]), axis=1)
        want = np.argsort(d, kind="stable")[:40]
        np.testing.assert_array_equal(np.sort(idx[r]), np.sort(want))
        assert np.all(np.diff(d[idx[r]]) >= -1e-12)  # nearest first
        one, lvl = b.candidates(Y[r], S[r])
        np.testing.assert_array_equal(one, idx[r])
        assert lvl == 40


def test_pca_variance_drops_components(rng):
    from jaxgrid import ModelGrid

    base = rng.normal(size=(500, 2))
    obs = np.column_stack([base, base @ [1.0, 0.5] + 1e-3 * rng.normal(size=500)])
    g = ModelGrid(obs, rng.normal(size=(500, 1)), ["a", "b", "c"], ["t"])
    b = KDTreeBinner(dims=[0, 1, 2], transform="pca_whiten", pca_variance=0.99).fit(g)
    assert b.info()["tree_dims"] == 2


@pytest.mark.parametrize("shape", ["ball", "ellipsoid", "box"])
def test_radius_matches_brute_force(grid, rng, shape):
    dims = [0, 1, 2, 3]
    b = KDTreeBinner(
        dims=dims, select_mode="radius", radius_shape=shape, radius_factor=1.5, max_candidates=300
    ).fit(grid)
    Y, S = _rows(grid, rng, m=30)
    idx, mask, level = b.batch_candidates(Y, S)
    assert level is None and idx.shape == (30, 300)
    pts, to_tree = _tree_space(grid, dims, "standardize")
    sd = np.asarray(grid.observables, np.float64).std(0)
    n_cut = 0
    for r in range(30):
        dz = pts - to_tree(Y[r])
        s = S[r] / sd
        if shape == "ball":
            inside = np.linalg.norm(dz, axis=1) <= 1.5 * np.linalg.norm(s)
        elif shape == "ellipsoid":
            inside = np.sum((dz / s) ** 2, axis=1) <= 1.5**2
        else:
            inside = np.all(np.abs(dz) <= 1.5 * s, axis=1)
        dist = np.linalg.norm(dz, axis=1)
        want = np.flatnonzero(inside)
        want = want[np.lexsort((want, dist[want]))][:300]
        if inside.sum() > 300:
            n_cut += 1
        if want.size == 0:  # empty ball: the single nearest model
            want = np.array([np.argmin(dist)])
        np.testing.assert_array_equal(idx[r][mask[r]], want)
        one, _ = b.candidates(Y[r], S[r])
        np.testing.assert_array_equal(one, want)
    assert b.last_cut_rows == n_cut


def test_radius_empty_ball_gives_nearest(grid):
    b = KDTreeBinner(dims=[0, 1], select_mode="radius", radius_factor=1e-6).fit(grid)
    y = np.asarray(grid.observables, np.float64)[7] + 0.5
    idx, level = b.candidates(y, np.full(4, 1e-3))
    pts, to_tree = _tree_space(grid, [0, 1], "standardize")
    assert list(idx) == [int(np.argmin(np.linalg.norm(pts - to_tree(y[[0, 1]]), axis=1)))]


def test_nan_dims_use_remaining_dims(grid, rng):
    b = KDTreeBinner(dims=[0, 1, 2], target_k=20).fit(grid)
    Y, S = _rows(grid, rng, m=6)
    Y[1, 1] = np.nan
    Y[2, [0, 2]] = np.nan
    idx, mask, _ = b.batch_candidates(Y, S)
    pts, to_tree = _tree_space(grid, [0, 1, 2], "standardize")
    for r, keep in ((1, [0, 2]), (2, [1])):
        z = to_tree(np.nan_to_num(Y[r, [0, 1, 2]]))
        d = np.linalg.norm(pts[:, keep] - z[keep], axis=1)
        np.testing.assert_array_equal(np.sort(idx[r]), np.sort(np.argsort(d, kind="stable")[:20]))
    assert not b.last_fallback_rows.any()


def test_nan_fallbacks_are_flagged(grid, rng):
    Y, S = _rows(grid, rng, m=4)
    Y[0, :3] = np.nan  # no tree dim left
    Y[1, 0] = np.nan  # PCA cannot use a partial row
    b = KDTreeBinner(dims=[0, 1, 2], transform="pca_whiten", target_k=10).fit(grid)
    idx, mask, _ = b.batch_candidates(Y, S)
    np.testing.assert_array_equal(b.last_fallback_rows, [True, True, False, False])
    assert not mask[:2].any() and mask[2:].all()
    full, _ = b.candidates(Y[0], S[0])
    assert full.size == grid.n_models
    res = GridFitter(grid).fit_batch(Y, S, binner=b, return_mode="list", verbose=False)
    fb = [bool(r["status"] & Status.FULL_GRID_FALLBACK) for r in res]
    assert fb == [True, True, False, False]
    assert all(np.isfinite(r["log_evidence"]) for r in res)


def test_save_load_round_trip(grid, rng, tmp_path):
    Y, S = _rows(grid, rng)
    for kw in (
        dict(transform="pca_whiten", pca_variance=0.9, target_k=33, leafsize=7),
        dict(
            select_mode="radius",
            radius_shape="box",
            radius_factor=3.0,
            max_candidates=77,
            sigma_floor=0.01,
            transform="none",
        ),
    ):
        b = KDTreeBinner(dims=["mag_0", 1, "mag_3"], **kw).fit(grid)
        b.save(tmp_path / "b.npz")
        c = KDTreeBinner.load(tmp_path / "b.npz")
        assert c.settings() == b.settings() and c.info() == b.info()
        for got, want in zip(c.batch_candidates(Y, S), b.batch_candidates(Y, S)):
            np.testing.assert_array_equal(got, want)


def test_protocol_and_info(grid):
    b = KDTreeBinner(dims=[0, 1]).fit(grid)
    assert isinstance(b, Binner)
    info = b.info()
    assert (
        info["kind"] == "KDTreeBinner" and info["n_models"] == 2000 and info["n_candidates"] == 100
    )


@pytest.mark.parametrize(
    "kwargs,msg",
    [
        ({"dims": []}, "empty"),
        ({"dims": [0], "transform": "log"}, "transform"),
        ({"dims": [0], "select_mode": "all"}, "select_mode"),
        ({"dims": [0], "radius_shape": "cube"}, "radius_shape"),
        ({"dims": [0], "pca_variance": 0.0}, "pca_variance"),
        ({"dims": [0], "target_k": 0}, "target_k"),
    ],
)
def test_bad_arguments(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        KDTreeBinner(**kwargs)


def test_unfitted_and_unknown_dims(grid):
    with pytest.raises(RuntimeError, match="fit"):
        KDTreeBinner(dims=[0]).batch_candidates(np.zeros((1, 4)), np.ones((1, 4)))
    with pytest.raises(KeyError, match="known observables"):
        KDTreeBinner(dims=["mag_9"]).fit(grid)


def test_fit_batch_with_target_k_n_equals_full_grid(rng):
    g = make_grid(rng, n=300, p=3, q=2)
    fitter = GridFitter(g)
    Y, S = _rows(g, rng, m=20)
    kw = dict(
        stats_for=["t0", "t1"],
        return_mode="list",
        verbose=False,
        chunk_size=8,
        posterior_keep_mass=0.9,
        posterior_keep_min_candidates=10,
    )
    full = fitter.fit_batch(Y, S, **kw)
    tree = fitter.fit_batch(Y, S, binner=KDTreeBinner(dims=[0, 1, 2], target_k=300).fit(g), **kw)
    for a, b in zip(full, tree):
        np.testing.assert_array_equal(a["candidates"], b["candidates"])
        np.testing.assert_allclose(a["post_models"], b["post_models"], rtol=1e-5, atol=1e-9)
        assert a["log_evidence"] == pytest.approx(b["log_evidence"], rel=1e-6)
        for k in ("mean", "median", "lo68", "hi68"):
            assert a["stats"]["t1"][k] == pytest.approx(b["stats"]["t1"][k], rel=1e-5)
        assert b["level"] == 300
