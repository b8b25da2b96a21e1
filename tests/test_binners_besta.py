"""BESTA's other binners (`HashedGridBinner`, `RectBinner`, `NestedBinner`) against
brute-force NumPy references written from their definitions (docs/host.md), on the
same preselection space; the protocol (fixed K, mask, fallback, per-row levels),
``candidates`` == the ``batch_candidates`` row, NaN rows, file round trips, bad
arguments, and fit_batch with each binner against the full-grid fit."""

import numpy as np
import pytest
from conftest import make_grid

from jaxgrid import GridFitter, ModelGrid, Status
from jaxgrid.binning import Binner, HashedGridBinner, KDTreeBinner, NestedBinner, RectBinner

BINNERS = {
    "hashed-knn": lambda: HashedGridBinner(dims=[0, 1, 2], target_k=20),
    "hashed-radius": lambda: HashedGridBinner(dims=[0, 1, 2], select_mode="radius"),
    "rect-sigma": lambda: RectBinner(dims=[0, 1, 2], levels=3, base_bins=3),
    "rect-target_k": lambda: RectBinner(dims=[0, 1, 2], mode="target_k", target_k=15),
    "nested": lambda: NestedBinner(
        primary_dims=[3], secondary_dims=[0, 1, 2], primary_bins=4, final_target_k=30
    ),
}


@pytest.fixture
def grid(rng):
    return make_grid(rng, n=800, p=4, q=2)


def _rows(grid, rng, m=40, noise=0.3):
    obs = np.asarray(grid.observables, np.float64)
    Y = obs[rng.integers(0, grid.n_models, m)] + rng.normal(0, noise, (m, grid.n_observables))
    return Y, np.full_like(Y, 0.2) * rng.uniform(0.5, 1.5, Y.shape)


def _standardized(grid, dims):
    raw = np.asarray(grid.observables, np.float64)[:, dims]
    mu, sd = raw.mean(0), raw.std(0)
    return (raw - mu) / sd, lambda y: (y - mu) / sd, sd


def _lists(idx, mask):
    return [list(i[m]) for i, m in zip(idx, mask, strict=True)]


# ------------------------------------------------------------- HashedGridBinner
def test_hashed_knn_is_exact_when_one_cell_holds_the_grid(grid, rng):
    z, to_z, _ = _standardized(grid, [0, 1, 2])
    b = HashedGridBinner(dims=[0, 1, 2], target_k=25, cell_width=100.0).fit(grid)
    Y, S = _rows(grid, rng)
    idx, mask, level, fallback = b.batch_candidates(Y, S)
    assert level == 25 and mask.all() and not fallback.any()
    d = np.linalg.norm(z[None] - to_z(Y[:, :3])[:, None], axis=2)
    want = np.argsort(d, axis=1, kind="stable")[:, :25]
    np.testing.assert_array_equal(idx, want)


def test_hashed_knn_recall_of_the_true_top_k(rng):
    g = make_grid(rng, n=4000, p=3, q=1)
    z, to_z, _ = _standardized(g, [0, 1, 2])
    Y, S = _rows(g, rng, m=100, noise=0.1)
    d = np.linalg.norm(z[None] - to_z(Y)[:, None], axis=2)
    truth = np.argsort(d, axis=1)[:, :50]
    recalls = {}
    for occ in (32, 4):
        b = HashedGridBinner(dims=[0, 1, 2], target_k=50, target_cell_occupancy=occ).fit(g)
        idx, mask, _, _ = b.batch_candidates(Y, S)
        assert mask.all()
        recalls[occ] = np.mean([len(set(a) & set(t)) / 50 for a, t in zip(idx, truth, strict=True)])
        # nearest first within what was found
        dz = np.take_along_axis(d, idx, axis=1)
        assert np.all(np.diff(dz, axis=1) >= -1e-12)
    # approximate (BESTA's stopping rule: the shells stop once target_k models are
    # gathered); smaller cells visit more shells: better recall
    assert recalls[32] > 0.6 and recalls[4] > 0.9


@pytest.mark.parametrize("shape", ["ball", "ellipsoid", "box"])
def test_hashed_radius_matches_brute_force(grid, rng, shape):
    z, to_z, sd = _standardized(grid, [0, 1, 2])
    b = HashedGridBinner(
        dims=[0, 1, 2], select_mode="radius", radius_shape=shape, max_candidates=800
    ).fit(grid)
    Y, S = _rows(grid, rng)
    idx, mask, level, fallback = b.batch_candidates(Y, S)
    assert level is None and not fallback.any()
    zq, sq = to_z(Y[:, :3]), S[:, :3] / sd
    dz = z[None] - zq[:, None]
    f = 2.0
    if shape == "ball":
        inside = np.sum(dz**2, axis=2) <= f**2 * np.sum(sq**2, axis=1)[:, None]
    elif shape == "ellipsoid":
        inside = np.sum((dz / sq[:, None]) ** 2, axis=2) <= f**2
    else:
        inside = np.all(np.abs(dz) <= f * sq[:, None], axis=2)
    dist = np.linalg.norm(dz, axis=2)
    for i, got in enumerate(_lists(idx, mask)):
        want = np.flatnonzero(inside[i])
        if want.size == 0:  # nothing inside: the nearest model
            want = [int(np.argmin(dist[i]))]
        else:
            want = want[np.lexsort((want, dist[i, want]))]
        np.testing.assert_array_equal(got, want)


def test_hashed_nothing_found_gives_the_nearest(grid):
    z, to_z, _ = _standardized(grid, [0, 1, 2])
    far = np.full((1, 4), 40.0)
    d = np.linalg.norm(z - to_z(far[:, :3]), axis=1)
    knn = HashedGridBinner(dims=[0, 1, 2], target_k=7, max_expand_steps=0).fit(grid)
    idx, mask, _, fallback = knn.batch_candidates(far)
    assert mask.all() and not fallback.any()
    np.testing.assert_array_equal(idx[0], np.argsort(d)[:7])
    rad = HashedGridBinner(dims=[0, 1, 2], select_mode="radius").fit(grid)
    got, level = rad.candidates(far[0], np.full(4, 0.01))
    assert level is None and list(got) == [int(np.argmin(d))]


def test_hashed_cell_width_per_dim_and_automatic(grid):
    b = HashedGridBinner(dims=[0, 1, 2], cell_width=[0.5, 1.0, 2.0]).fit(grid)
    assert b.info()["cell_width_fitted"] == [0.5, 1.0, 2.0]
    auto = HashedGridBinner(dims=[0, 1, 2], target_cell_occupancy=10).fit(grid)
    z, _, _ = _standardized(grid, [0, 1, 2])
    w = auto.info()["cell_width_fitted"][0]
    # the cube that holds 10 models at the mean density over the bounding box
    assert w**3 == pytest.approx(10 / 800 * np.prod(np.ptp(z, axis=0)))
    with pytest.raises(ValueError, match="cell_width"):
        HashedGridBinner(dims=[0, 1, 2], cell_width=[1.0, 2.0]).fit(grid)


# ------------------------------------------------------------------ RectBinner
def _rect_reference(z, zq, sq, levels, base_bins, mode, target_k=None, steps=4, tf=2.0, ef=2.0):
    """RectBinner's selection per row, written from its docstring (quantile edges)."""
    out, lev_out = [], []
    edges, cells, width = [], [], []
    for lv in range(levels):
        nb = base_bins * 2**lv
        e = np.quantile(z, np.linspace(0, 1, nb + 1), axis=0).T
        span = e[:, -1] - e[:, 0]
        e[:, 0] -= 1e-6 * span
        e[:, -1] += 1e-6 * span
        edges.append(e)
        width.append(np.diff(e, axis=1).mean(axis=1))
        cells.append(
            np.stack([np.clip(np.digitize(z[:, d], e[d]) - 1, 0, nb - 1) for d in range(3)], 1)
        )
    for y, s in zip(zq, sq, strict=True):

        def cell(lv, y=y):
            nb = edges[lv].shape[1] - 1
            return np.array(
                [np.clip(np.digitize(y[d], edges[lv][d]) - 1, 0, nb - 1) for d in range(3)]
            )

        def box(lv, half, y=y):
            c = cell(lv, y)
            return np.all(np.abs(cells[lv] - c) <= half, axis=1)

        if mode == "sigma":
            score = [np.sum(np.log(width[lv] / (tf * s))) for lv in range(levels)]
            lv = int(np.argmin(np.abs(score)))
            inside = box(lv, np.ceil(ef * s / width[lv]))
        else:
            own = [int(box(lv, 0).sum()) for lv in range(levels)]
            hits = [lv for lv in range(levels) if own[lv] >= target_k]
            lv = hits[-1] if hits else 0
            step, inside = 0, box(lv, 0)
            while inside.sum() < target_k and step < steps:
                step += 1
                inside = box(lv, step)
        found = np.flatnonzero(inside)
        d = np.linalg.norm(z[found] - y, axis=1)
        out.append(found[np.lexsort((found, d))])
        lev_out.append(lv)
    return out, lev_out


@pytest.mark.parametrize("mode", ["sigma", "target_k"])
def test_rect_matches_its_definition(grid, rng, mode):
    z, to_z, sd = _standardized(grid, [0, 1, 2])
    b = RectBinner(dims=[0, 1, 2], levels=3, base_bins=3, mode=mode, target_k=30).fit(grid)
    Y, S = _rows(grid, rng)
    idx, mask, level, fallback = b.batch_candidates(Y, S)
    want, want_level = _rect_reference(z, to_z(Y[:, :3]), S[:, :3] / sd, 3, 3, mode, target_k=30)
    for i, got in enumerate(_lists(idx, mask)):
        if want[i].size == 0:
            assert fallback[i] and level[i] == -1
        else:
            np.testing.assert_array_equal(got, want[i])
            assert level[i] == want_level[i] and not fallback[i]


def test_rect_linear_edges_and_one_cell(grid, rng):
    b = RectBinner(dims=[0, 1], levels=1, base_bins=1, edges_mode="linear").fit(grid)
    Y, S = _rows(grid, rng, m=5)
    idx, mask, level, _ = b.batch_candidates(Y, S)
    assert mask.sum(axis=1).tolist() == [800] * 5 and level.tolist() == [0] * 5


def test_rect_sigma_mode_needs_errors(grid):
    b = RectBinner(dims=[0, 1]).fit(grid)
    with pytest.raises(ValueError, match="errors"):
        b.candidates(np.zeros(4))


# ---------------------------------------------------------------- NestedBinner
def test_nested_final_target_k_keeps_the_nearest(grid, rng):
    kw = dict(primary_dims=[3], secondary_dims=[0, 1, 2], primary_bins=4)
    full = NestedBinner(**kw, secondary_params={"target_k": 40}).fit(grid)
    cut = NestedBinner(**kw, secondary_params={"target_k": 40}, final_target_k=25).fit(grid)
    Y, S = _rows(grid, rng)
    obs = np.asarray(grid.observables)
    fi, fm, flevel, _ = full.batch_candidates(Y, S)
    ci, cm, clevel, _ = cut.batch_candidates(Y, S)
    assert cut.n_candidates == 25 and cm.all()
    np.testing.assert_array_equal(flevel, clevel)
    for i, (a, c) in enumerate(zip(_lists(fi, fm), _lists(ci, cm), strict=True)):
        d = np.sum(((obs[a][:, :3] - Y[i, :3]) / S[i, :3]) ** 2, axis=1)
        want = np.asarray(a)[np.lexsort((a, d))][:25]
        np.testing.assert_array_equal(c, want)


def test_nested_reference_union_of_children(grid, rng):
    b = NestedBinner(
        primary_dims=[3],
        secondary_dims=[0, 1],
        primary_bins=5,
        primary_radius_factor=1.0,
        secondary_params={"target_k": 10, "transform": "none"},
        min_primary_count=1,
    ).fit(grid)
    obs = np.asarray(grid.observables)
    edges = np.quantile(obs[:, 3], np.linspace(0, 1, 6))
    edges[0] -= 1e-6 * np.ptp(obs[:, 3])
    edges[-1] += 1e-6 * np.ptp(obs[:, 3])
    cell = np.clip(np.searchsorted(edges, obs[:, 3], side="right") - 1, 0, 4)
    Y, S = _rows(grid, rng, m=20)
    idx, mask, level, _ = b.batch_candidates(Y, S)
    for i, got in enumerate(_lists(idx, mask)):
        lo, hi = (
            np.clip(np.searchsorted(edges, Y[i, 3] + t * S[i, 3], side="right") - 1, 0, 4)
            for t in (-1, 1)
        )
        want = []
        for c in range(lo, hi + 1):
            members = np.flatnonzero(cell == c)
            d = np.linalg.norm(obs[members][:, :2] - Y[i, :2], axis=1)
            want += list(members[np.argsort(d, kind="stable")[:10]])
        want = np.asarray(want)
        d = np.sum(((obs[want][:, :2] - Y[i, :2]) / S[i, :2]) ** 2, axis=1)
        np.testing.assert_array_equal(got, want[np.lexsort((want, d))])
        assert level[i] == hi - lo + 1


def test_nested_small_cells_and_global_fallback(rng):
    x = rng.uniform(0, 1, 400)
    obs = np.column_stack([x, x, rng.normal(size=400), rng.normal(size=400)])
    g = ModelGrid(obs, rng.uniform(size=(400, 1)), ["a", "b", "c", "d"], ["t"])
    kw = dict(primary_dims=[0, 1], secondary_dims=[2, 3], primary_bins=4)
    kw["primary_radius_factor"] = 0.0
    # no child anywhere: every model of the object's primary cell
    whole = NestedBinner(**kw, min_primary_count=10_000).fit(g)
    y = np.array([[0.1, 0.1, 0.0, 0.0]])
    got, level = whole.candidates(y[0])
    cell0 = np.flatnonzero(x < np.quantile(x, 0.25))
    assert sorted(got) == sorted(cell0) and level == 1
    # (low a, high b) is an empty primary cell: the global child over the whole grid
    y = np.array([[0.1, 0.9, 0.0, 0.0]])
    nb = NestedBinner(**kw, secondary_params={"target_k": 12}).fit(g)
    got, _ = nb.candidates(y[0])
    want, _ = KDTreeBinner(dims=[2, 3], target_k=12).fit(g).candidates(y[0])
    assert sorted(got) == sorted(want)
    off = NestedBinner(**kw, use_global_fallback=False).fit(g)
    _, mask, level, fallback = off.batch_candidates(y)
    assert fallback.tolist() == [True] and not mask.any() and level.tolist() == [-1]


@pytest.mark.parametrize("kind", ["hashed", "rect"])
def test_nested_other_child_kinds(grid, rng, kind):
    params = {"hashed": {"target_k": 10}, "rect": {"mode": "target_k", "target_k": 10}}[kind]
    b = NestedBinner(
        primary_dims=[3],
        secondary_dims=[0, 1],
        primary_bins=3,
        secondary_kind=kind,
        secondary_params=params,
        final_target_k=20,
    ).fit(grid)
    Y, S = _rows(grid, rng, m=10)
    idx, mask, level, fallback = b.batch_candidates(Y, S)
    assert mask.sum(axis=1).min() >= 10 and not fallback.any() and (level >= 1).all()


# ------------------------------------------------------------ shared behaviour
@pytest.mark.parametrize("name", list(BINNERS))
def test_candidates_equals_the_batch_row(grid, rng, name):
    b = BINNERS[name]().fit(grid)
    assert isinstance(b, Binner)
    Y, S = _rows(grid, rng, m=12)
    idx, mask, level, fallback = b.batch_candidates(Y, S)
    assert idx.shape == mask.shape == (12, b.n_candidates) and idx.dtype == np.int64
    for i in range(12):
        got, lev = b.candidates(Y[i], S[i])
        if fallback[i]:
            assert got.size == grid.n_models
            continue
        np.testing.assert_array_equal(got[: b.n_candidates], idx[i][mask[i]])
        want_level = level[i] if isinstance(level, np.ndarray) else level
        assert lev == want_level


@pytest.mark.parametrize("name", list(BINNERS))
def test_nan_rows_fall_back(grid, rng, name):
    b = BINNERS[name]().fit(grid)
    Y, S = _rows(grid, rng, m=6)
    Y[1, 0] = np.nan  # a binner dim (secondary for nested)
    Y[2, :] = np.nan
    S[3, 1] = np.nan  # an error: radius/sigma modes cannot use the row
    idx, mask, level, fallback = b.batch_candidates(Y, S)
    assert fallback[2] and not mask[2].any()
    assert not fallback[[0, 4, 5]].any()
    if name != "nested":  # nested ranks the partial row on its finite secondary dims
        assert fallback[1]
    got, _ = b.candidates(Y[2], S[2])
    assert got.size == grid.n_models


SAVED = {
    HashedGridBinner: dict(
        dims=["mag_0", 2],
        transform="pca_whiten",
        pca_variance=0.9,
        select_mode="radius",
        target_k=17,
        radius_factor=2.5,
        radius_shape="box",
        sigma_floor=0.01,
        cell_width=[0.7, 0.8],
        target_cell_occupancy=9,
        max_expand_steps=3,
        max_candidates=50,
    ),
    RectBinner: dict(
        dims=[0, "mag_1", 2],
        levels=2,
        base_bins=4,
        transform="none",
        pca_variance=0.95,
        edges_mode="linear",
        mode="target_k",
        target_factor=1.5,
        expand_factor=3.0,
        target_k=12,
        k=7,
        max_expand_steps=2,
        sigma_floor=0.001,
        max_candidates=60,
    ),
    NestedBinner: dict(
        primary_dims=["mag_3"],
        secondary_dims=[0, 1],
        primary_bins=5,
        primary_edges_mode="linear",
        primary_radius_factor=1.5,
        secondary_kind="hashed",
        secondary_params={"target_k": 9, "target_cell_occupancy": 5},
        min_primary_count=20,
        final_target_k=15,
        use_global_fallback=False,
        max_candidates=99,
    ),
}


@pytest.mark.parametrize("cls", list(SAVED), ids=lambda c: c.__name__)
def test_save_load_round_trip(grid, rng, tmp_path, cls):
    b = cls(**SAVED[cls]).fit(grid)
    assert b.settings() == SAVED[cls]
    b.save(tmp_path / "b.json")
    c = cls.load(tmp_path / "b.json")
    assert c.settings() == b.settings() and c.info() == b.info()
    Y, S = _rows(grid, rng)
    for got, want in zip(c.batch_candidates(Y, S), b.batch_candidates(Y, S), strict=True):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="not a saved"):
        (tmp_path / "x.json").write_text("{}")
        cls.load(tmp_path / "x.json")


def test_mutated_settings_are_saved(grid, tmp_path):
    b = HashedGridBinner(dims=[0, 1]).fit(grid)
    b.select_mode = "radius"
    b.save(tmp_path / "h.json")
    assert HashedGridBinner.load(tmp_path / "h.json").select_mode == "radius"


@pytest.mark.parametrize(
    "cls,kwargs,name",
    [
        (HashedGridBinner, {"dims": []}, "dims"),
        (HashedGridBinner, {"dims": [0], "transform": "log"}, "transform"),
        (HashedGridBinner, {"dims": [0], "select_mode": "all"}, "select_mode"),
        (HashedGridBinner, {"dims": [0], "radius_shape": "cube"}, "radius_shape"),
        (HashedGridBinner, {"dims": [0], "target_k": 0}, "target_k"),
        (HashedGridBinner, {"dims": [0], "cell_width": -1.0}, "cell_width"),
        (HashedGridBinner, {"dims": [0], "target_cell_occupancy": 0}, "target_cell_occupancy"),
        (HashedGridBinner, {"dims": [0], "max_expand_steps": -1}, "max_expand_steps"),
        (HashedGridBinner, {"dims": [0], "radius_factor": 0}, "radius_factor"),
        (RectBinner, {"dims": [0], "levels": 0}, "levels"),
        (RectBinner, {"dims": [0], "base_bins": 0}, "base_bins"),
        (RectBinner, {"dims": [0], "edges_mode": "log"}, "edges_mode"),
        (RectBinner, {"dims": [0], "mode": "radius"}, "mode"),
        (RectBinner, {"dims": [0], "target_k": 0}, "target_k"),
        (RectBinner, {"dims": [0], "pca_variance": 1.5}, "pca_variance"),
        (RectBinner, {"dims": [0], "expand_factor": -1}, "expand_factor"),
        (NestedBinner, {"primary_dims": [], "secondary_dims": [0]}, "primary_dims"),
        (NestedBinner, {"primary_dims": [0], "secondary_dims": []}, "secondary_dims"),
        (
            NestedBinner,
            {"primary_dims": [0], "secondary_dims": [1], "primary_bins": 1},
            "primary_bins",
        ),
        (
            NestedBinner,
            {"primary_dims": [0], "secondary_dims": [1], "secondary_kind": "ball"},
            "secondary_kind",
        ),
        (
            NestedBinner,
            {"primary_dims": [0], "secondary_dims": [1], "secondary_params": {"bins": 3}},
            "secondary_params",
        ),
        (
            NestedBinner,
            {"primary_dims": [0], "secondary_dims": [1], "secondary_params": {"target_k": 0}},
            "target_k",
        ),
        (
            NestedBinner,
            {"primary_dims": [0], "secondary_dims": [1], "final_target_k": 0},
            "final_target_k",
        ),
        (
            NestedBinner,
            {"primary_dims": [0], "secondary_dims": [1], "min_primary_count": 0},
            "min_primary_count",
        ),
    ],
)
def test_bad_arguments_name_the_argument(cls, kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        cls(**kwargs)


def test_unfitted_and_radius_without_errors(grid):
    with pytest.raises(RuntimeError, match="fit"):
        RectBinner(dims=[0]).batch_candidates(np.zeros((1, 4)), np.ones((1, 4)))
    with pytest.raises(RuntimeError, match="fit"):
        NestedBinner(primary_dims=[0], secondary_dims=[1]).candidates(np.zeros(4))
    b = HashedGridBinner(dims=[0, 1], select_mode="radius").fit(grid)
    with pytest.raises(ValueError, match="errors"):
        b.candidates(np.zeros(4))
    kd = KDTreeBinner(dims=[0, 1], select_mode="radius").fit(grid)
    with pytest.raises(ValueError, match="sigmas"):
        kd.candidates(np.zeros(4))
    idx, k = KDTreeBinner(dims=[0, 1], target_k=5).fit(grid).candidates(np.full(4, 20.0))
    assert idx.size == 5 and k == 5


# ----------------------------------------------------------------- fit_batch
ALL_MODELS = {
    "hashed": lambda: HashedGridBinner(dims=[0, 1, 2], target_k=300),
    "rect": lambda: RectBinner(dims=[0, 1], levels=1, base_bins=1),
    "nested": lambda: NestedBinner(
        primary_dims=[2],
        secondary_dims=[0, 1],
        primary_radius_factor=100.0,
        secondary_params={"target_k": 300},
    ),
}


@pytest.mark.parametrize("name", list(ALL_MODELS))
def test_fit_batch_equals_the_full_grid_when_every_model_is_kept(rng, name):
    g = make_grid(rng, n=300, p=3, q=2)
    fitter = GridFitter(g)
    Y, S = _rows(g, rng, m=20)
    Y[3, [0, 2]] = np.nan  # a fallback row (full grid) for every binner here
    kw = dict(stats_for=["t1"], return_mode="chunks", verbose=False, chunk_size=8)
    binner = ALL_MODELS[name]().fit(g)
    full = list(fitter.fit_batch(Y, S, **kw))
    got = list(fitter.fit_batch(Y, S, binner=binner, **kw))
    for a, b in zip(full, got, strict=True):
        np.testing.assert_allclose(a["log_evidence"], b["log_evidence"], rtol=1e-6)
        for key in ("mean", "std", "median", "lo68", "hi68", "mass_kept"):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-7)
    status = np.concatenate([c["status"] for c in got])
    levels = np.concatenate([c["level"] for c in got])
    fb = (status & Status.FULL_GRID_FALLBACK) != 0
    assert fb.tolist() == [i == 3 for i in range(20)]
    assert (levels[fb] == -1).all() and (levels[~fb] >= 0).all()


def test_hashed_radius_wider_than_the_grid_takes_the_nearest_k(grid, rng):
    # a region spanning more cells than the grid occupies: the occupied cells are
    # tested instead of enumerated (binning_common._box_hits)
    z, to_z, _ = _standardized(grid, [0, 1, 2])
    b = HashedGridBinner(
        dims=[0, 1, 2], select_mode="radius", radius_shape="ball", max_candidates=50
    ).fit(grid)
    Y, _ = _rows(grid, rng, m=5)
    idx, mask, _, _ = b.batch_candidates(Y, np.full_like(Y, 1e3))
    d = np.linalg.norm(z[None] - to_z(Y[:, :3])[:, None], axis=2)
    np.testing.assert_array_equal(idx, np.argsort(d, axis=1, kind="stable")[:, :50])
    assert mask.all()


def test_fit_batch_rejects_a_level_of_the_wrong_shape(rng):
    g = make_grid(rng, n=300, p=3, q=2)  # the shapes of the test above: no new compile

    class Bad:
        n_candidates = 300

        def batch_candidates(self, Y, SIG):
            m = len(Y)
            idx = np.tile(np.arange(300), (m, 1))
            return idx, np.ones((m, 300), bool), np.zeros(m + 1, int)

    Y, S = _rows(g, rng, m=20)
    kw = dict(stats_for=["t1"], return_mode="chunks", verbose=False, chunk_size=8)
    with pytest.raises(ValueError, match="level"):
        list(GridFitter(g).fit_batch(Y, S, binner=Bad(), **kw))
