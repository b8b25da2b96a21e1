"""Every bad-input class at the boundary, and what it gives (issue 13, section 2).

Outcomes are of two kinds: a clear error at the public boundary (naming the
argument and the fix), or, inside a batch, a flagged row whose neighbours keep
their exact results — compared bitwise with a run *without* the bad row (or the
bad value), never with the code's own output for the same input.

Each entry: input — where: outcome. The other lists of the same boundary:
`tests/test_bad_input_io.py` (files, columns, counts), `tests/test_cli_errors.py`
(the command line), `tests/test_numeric_limits.py` (float32 limits, bins missing
the posterior, poor fits, `calibrate`), `tests/test_crash_safety.py` and
`tests/test_output_edges.py` (the output file).

* masked value or error (`np.ma`, astropy `MaskedColumn`, masked `Table`) —
  `fit_batch`: band missing (as NaN), not flagged, the hidden value never fitted.
* masked value or error — `posterior_over_models`, `log_evidence`,
  `posterior_over_target`: band missing (as NaN).
* a `Table` without the grid's observable columns — `fit_batch`: `ValueError`
  naming the argument and pointing to `read_catalog`.
* grid observable / target / weight beyond float32 (1e39) — `ModelGrid`:
  `ValueError` naming the array and the fix.
* positive grid weight below float32's range (1e-50, would become 0) —
  `ModelGrid`: `ValueError` naming `weights`.
* grid built in float64 (x64 on) with values beyond float32, fitted in float32 —
  `GridFitter`: `ValueError` naming the array.
* catalog value or error beyond float32 (±1e39), or an error that rounds to 0 —
  `fit_batch`: row flagged `BAD_INPUT`, band missing, other rows unchanged.
* value beyond float32 — `posterior_over_models`: `ValueError` naming `x_native`.
* binner index outside `[0, N)` (1e6, -1) under a True mask — `fit_batch`: row
  flagged `NO_CANDIDATES | BAD_INPUT` (with or without the full-grid fallback),
  NaN summaries, other rows unchanged.
* binner index outside `[0, N)` under a False mask (padding) — ignored.
* binner output of the wrong shape, non-integer indices, non-bool mask —
  `fit_batch`: `ValueError` / `TypeError` naming `binner.batch_candidates`.
* zero error — `fit_batch`: row flagged `BAD_INPUT`, band missing (exactly as a
  negative error); `posterior_over_models` / `log_evidence`: `ValueError`
  naming `sigma_native` (as a negative error); `read_catalog`:
  `ValueFlag.BAD_ERROR`, band missing.
* empty catalog (0 rows) — `fit_batch`, every return mode: an empty result with
  the fields, dtypes and trailing shapes of a non-empty one.
* empty catalog with an HDF5 output — `fit_batch`: an empty, valid result group.
* unused 2-D (or other-length) column — `read_catalog`: ignored; a used 2-D
  column: `ValueError` naming the column.
"""

import jax
import numpy as np
import pytest
import reference as ref
from astropy.table import MaskedColumn, Table
from batch_helpers import BruteForceKNN, row_log_weights
from conftest import make_grid

from jaxgrid import GridFitter, ModelGrid
from jaxgrid.core.status import BAD_STATUS, Status
from jaxgrid.io import read_catalog
from jaxgrid.io.catalog import ValueFlag
from jaxgrid.io.results import read_fit_results

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
    kw.setdefault("return_mode", "list")
    return fitter.fit_batch(X, S, verbose=False, chunk_size=8, **kw)


def _same(a, b):
    """Two per-object results bitwise equal (NaN equal to NaN)."""
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_equal(a[k], b[k], err_msg=k)


def _assert_bad(r, flag):
    assert r["status"] & flag and r["status"] & BAD_STATUS
    assert r["candidates"].size == 0 and r["post_models"].size == 0
    assert r["best"] == -1 and np.isnan(r["chi2_min"]) and r["log_evidence"] == -np.inf
    assert all(np.isnan(v) for k, v in r["stats"]["t0"].items() if k != "nmodes")
    assert np.all(np.isnan(r["stats"]["cov"]))


def _insert(X, S, i, x, s):
    return np.insert(X, i, x, axis=0), np.insert(S, i, s, axis=0)


def _others_unchanged(clean, bad, i):
    """``bad`` is ``clean`` with one row inserted at ``i``: every other row is unchanged."""
    assert len(bad) == len(clean) + 1
    for j, r in enumerate(clean):
        _same(dict(r, m=r["m"] + (j >= i)), bad[j + (j >= i)])


def _drop_m(r):
    return {k: v for k, v in r.items() if k != "m"}


# ------------------------------------------------------------ 1. masks
def test_masked_array_values_and_errors_are_missing_bands(setup):
    grid, fitter, X, S = setup
    clean = _fit(fitter, X, S)
    # the hidden values are wild (a 10 mag offset, a negative and a zero error): fitting
    # them would change the posterior or flag the row
    Xh, Sh = X.copy(), S.copy()
    Xh[3, 1] += 10.0
    Sh[4, 0], Sh[6, 2] = -1.0, 0.0
    mask_x = np.zeros(X.shape, bool)
    mask_s = np.zeros(S.shape, bool)
    mask_x[3, 1] = mask_s[4, 0] = mask_s[6, 2] = True
    got = _fit(fitter, np.ma.masked_array(Xh, mask_x), np.ma.masked_array(Sh, mask_s))
    Xn, Sn = X.copy(), S.copy()
    Xn[3, 1] = Sn[4, 0] = Sn[6, 2] = np.nan  # the same bands, missing
    want = _fit(fitter, Xn, Sn)
    for a, b in zip(got, want, strict=True):
        _same(a, b)
    assert [r["status"] for r in got] == [0] * 12
    hidden = _fit(fitter, Xh, S)  # the hidden value does change the result
    assert hidden[3]["log_evidence"] != got[3]["log_evidence"]
    for i in (0, 1, 2, 5, 7):
        _same(got[i], clean[i])


def test_astropy_masked_columns_and_tables(setup):
    grid, fitter, X, S = setup
    Xh = X.copy()
    Xh[2, 0] = 99.0
    mask = np.zeros(X.shape, bool)
    mask[2, 0] = True
    Xn = X.copy()
    Xn[2, 0] = np.nan
    want = _fit(fitter, Xn, S)
    col = MaskedColumn(Xh, mask=mask)  # one (M, P) masked column
    for a, b in zip(_fit(fitter, col, S), want, strict=True):
        _same(a, b)
    names = grid.observable_names
    tx = Table([MaskedColumn(Xh[:, j], mask=mask[:, j]) for j in range(3)], names=names)
    ts = Table([S[:, j] for j in range(3)], names=names)
    # columns are taken by name, in the grid's order, whatever the table's order
    tx = tx[names[::-1]]
    for a, b in zip(_fit(fitter, tx, ts), want, strict=True):
        _same(a, b)
    with pytest.raises(ValueError, match=r"`SIG_native` is a Table without columns.*read_catalog"):
        _fit(fitter, tx, Table([S[:, j] for j in range(3)], names=["a", "b", "c"]))


def test_masked_single_object_apis(setup):
    grid, fitter, X, S = setup
    x, s = X[0].copy(), S[0].copy()
    xn = x.copy()
    xn[1] = np.nan
    hidden = x.copy()
    hidden[1] = 40.0
    xm = np.ma.masked_array(hidden, [False, True, False])
    np.testing.assert_array_equal(
        fitter.posterior_over_models(xm, s), fitter.posterior_over_models(xn, s)
    )
    assert float(fitter.log_evidence(xm, s)) == float(fitter.log_evidence(xn, s))
    sm = np.ma.masked_array([0.3, 0.0, 0.3], [False, True, False])  # a masked zero error
    sn = np.array([0.3, np.nan, 0.3])
    np.testing.assert_array_equal(
        fitter.posterior_over_models(x, sm), fitter.posterior_over_models(x, sn)
    )
    d1, _ = fitter.posterior_over_target(xm, s, "t0", EDGES[0])
    d2, _ = fitter.posterior_over_target(xn, s, "t0", EDGES[0])
    np.testing.assert_array_equal(d1, d2)


# ------------------------------------------------------------ 2. float32 range
@pytest.mark.parametrize(
    "field,value,msg",
    [
        ("observables", 1e39, r"`observables` has 1 values outside the float32 range"),
        ("targets", -1e39, r"`targets` has 1 values outside the float32 range"),
        ("weights", 1e39, r"`weights` has 1 values outside.*divide them by their maximum"),
        ("weights", 1e-50, r"`weights` has 1 values outside.*stored as 0"),
    ],
)
def test_grid_values_beyond_float32_are_refused(rng, field, value, msg):
    obs = rng.normal(20.0, 1.0, (20, 2))
    tgt = rng.uniform(0.0, 1.0, (20, 1))
    w = np.ones(20)
    arrays = {"observables": obs, "targets": tgt, "weights": w}
    a = arrays[field]
    a[(3,) + (0,) * (a.ndim - 1)] = value  # finite in float64: passed the old float64 check
    with pytest.raises(ValueError, match=msg):
        ModelGrid(obs, tgt, ["g", "r"], ["t"], weights=w)


def test_grid_values_beyond_float32_are_fine_in_float64(rng):
    obs = rng.normal(20.0, 1.0, (20, 2))
    tgt = rng.uniform(0.0, 1.0, (20, 1))
    w = np.ones(20)
    w[3] = 1e39
    with jax.enable_x64(True):
        grid = ModelGrid(obs, tgt, ["g", "r"], ["t"], weights=w)
        assert float(grid.weights[3]) == 1e39
    # the same grid fitted in float32 would hold an inf weight: refused by the fitter
    with pytest.raises(ValueError, match=r"GridFitter: the grid's `weights`.*float32"):
        GridFitter(grid)


def test_largest_float32_weights_give_the_reference_evidence(rng):
    """Where 1e39 is refused, 1e30 (representable) still gives the float64 reference
    log evidence, log Z = logsumexp(log L + log w), with status 0 — not +inf."""
    obs = rng.normal(20.0, 1.0, (20, 2))
    tgt = rng.uniform(0.0, 1.0, (20, 1))
    w = np.ones(20)
    w[3] = 1e30
    grid = ModelGrid(obs, tgt, ["g", "r"], ["t"], weights=w)
    X, S = obs[:2] + 0.05, np.full((2, 2), 0.2)
    res = GridFitter(grid, use_standardised=False).fit_batch(
        X, S, return_mode="list", verbose=False
    )
    for r, x, s in zip(res, X, S, strict=True):
        want = ref.logsumexp(row_log_weights(grid, x, s))
        assert r["status"] == 0
        np.testing.assert_allclose(r["log_evidence"], want, rtol=1e-6)


@pytest.mark.parametrize(
    "where,value", [("x", 1e39), ("x", -1e39), ("s", 1e39), ("s", 1e-50)], ids=str
)
def test_catalog_values_beyond_float32_are_flagged(setup, where, value):
    grid, fitter, X, S = setup
    clean = _fit(fitter, X, S)
    x, s = X[0] * 0.99, S[0].copy()
    (x if where == "x" else s)[1] = value
    Xb, Sb = _insert(X, S, 5, x, s)
    bad = _fit(fitter, Xb, Sb)
    assert bad[5]["status"] == Status.BAD_INPUT
    xn = X[0] * 0.99
    xn[1] = np.nan  # the band missing
    ref = _fit(fitter, *_insert(X, S, 5, xn, S[0]))[5]
    _same(_drop_m(bad[5]), dict(_drop_m(ref), status=int(Status.BAD_INPUT)))
    _others_unchanged(clean, bad, 5)


def test_single_row_value_beyond_float32_is_refused(setup):
    grid, fitter, X, S = setup
    x = X[0].copy()
    x[0] = 1e39
    with pytest.raises(ValueError, match=r"`x_native` has infinite values \(or values beyond"):
        fitter.posterior_over_models(x, S[0])


# ------------------------------------------------------------ 3. binner indices
class _Corrupt(BruteForceKNN):
    """Brute-force kNN whose lists for some rows are corrupted in place."""

    def __init__(self, grid, k, edit):
        super().__init__(grid, k)
        self.edit = edit

    def batch_candidates(self, Y, SIG):
        idx, mask, level = super().batch_candidates(Y, SIG)
        idx, mask = idx.copy(), mask.copy()
        self.edit(Y, idx, mask)
        return idx, mask, level


def _row_of(Y, row):
    """Positions in this binner call of the rows equal to ``row`` (calls are per chunk)."""
    return np.flatnonzero(np.all(Y == row, axis=1))


@pytest.mark.parametrize("fallback", [True, False])
def test_binner_indices_outside_the_grid_flag_the_row(setup, fallback):
    grid, fitter, X, S = setup
    k = 40
    knn = BruteForceKNN(grid, k)
    clean = _fit(fitter, X, S, binner=knn, fallback_to_full_grid=fallback)
    hi, lo = X[0] * 1.01, X[1] * 1.01  # two extra rows, corrupted by the binner

    def edit(Y, idx, mask):
        idx[_row_of(Y, hi), 3] = 10**6
        idx[_row_of(Y, lo), 0] = -1

    Xb, Sb = _insert(X, S, 2, hi, S[0])
    Xb, Sb = _insert(Xb, Sb, 9, lo, S[0])
    bad = _fit(fitter, Xb, Sb, binner=_Corrupt(grid, k, edit), fallback_to_full_grid=fallback)
    for i in (2, 9):
        _assert_bad(bad[i], Status.NO_CANDIDATES)
        assert bad[i]["status"] == Status.NO_CANDIDATES | Status.BAD_INPUT
    keep = [i for i in range(len(bad)) if i not in (2, 9)]
    for j, i in enumerate(keep):
        _same(dict(clean[j], m=i), bad[i])


def test_out_of_range_padding_under_a_false_mask_is_ignored(setup):
    grid, fitter, X, S = setup
    k = 40

    def pad(value):
        def edit(Y, idx, mask):
            idx[:, -1], mask[:, -1] = value, False  # the last slot is padding

        return _Corrupt(grid, k, edit)

    want = _fit(fitter, X, S, binner=pad(0))
    got = _fit(fitter, X, S, binner=pad(-1))
    for a, b in zip(got, want, strict=True):
        _same(a, b)
    assert all(r["status"] == 0 for r in got)


@pytest.mark.parametrize(
    "bad,exc,msg",
    [
        (lambda i, m: (i[:, :-1], m[:, :-1]), ValueError, r"both must be \(8, 40\)"),
        (lambda i, m: (i.astype(float), m), TypeError, r"float64 indices; they must be integer"),
        (lambda i, m: (i, m.astype(float)), TypeError, r"float64 mask; it must be bool"),
    ],
)
def test_malformed_binner_output_raises(setup, bad, exc, msg):
    grid, fitter, X, S = setup

    class Malformed(BruteForceKNN):
        def batch_candidates(self, Y, SIG):
            idx, mask, level = super().batch_candidates(Y, SIG)
            return (*bad(idx, mask), level)

    with pytest.raises(exc, match=r"binner\.batch_candidates returned.*" + msg):
        _fit(fitter, X, S, binner=Malformed(grid, 40))


# ------------------------------------------------------------ 4. zero errors
def test_zero_error_is_flagged_like_a_negative_one(setup):
    grid, fitter, X, S = setup
    clean = _fit(fitter, X, S)
    out = {}
    for e in (0.0, -1.0):
        s = S[0].copy()
        s[2] = e
        out[e] = _fit(fitter, *_insert(X, S, 4, X[0] * 0.99, s))
        assert out[e][4]["status"] == Status.BAD_INPUT
        _others_unchanged(clean, out[e], 4)
    _same(out[0.0][4], out[-1.0][4])
    xn = X[0] * 0.99
    xn[2] = np.nan
    ref = _fit(fitter, *_insert(X, S, 4, xn, S[0]))[4]  # the band missing
    _same(_drop_m(out[0.0][4]), dict(_drop_m(ref), status=int(Status.BAD_INPUT)))


def test_zero_error_single_object_raises_like_a_negative_one(setup):
    grid, fitter, X, S = setup
    for e in (0.0, -1.0, 1e-50):  # 1e-50 is 0 in float32
        s = S[0].copy()
        s[1] = e
        for call in (fitter.posterior_over_models, fitter.log_evidence):
            with pytest.raises(ValueError, match=r"`sigma_native` must be positive and finite"):
                call(X[0], s)


def test_zero_error_in_read_catalog():
    cat = read_catalog(
        {"g": [20.0, 21.0, 22.0], "g_err": [0.1, 0.0, -0.2], "r": [20.0] * 3, "r_err": [0.1] * 3},
        ["g", "r"],
        ["g_err", "r_err"],
    )
    assert cat.flags[:, 0].tolist() == [ValueFlag.OK, ValueFlag.BAD_ERROR, ValueFlag.BAD_ERROR]
    assert np.isnan(cat.X[1:, 0]).all() and np.isnan(cat.SIG[1:, 0]).all()
    assert cat.X[0, 0] == 20.0 and cat.SIG[0, 0] == 0.1


# ------------------------------------------------------------ 5. empty catalogs
def _layout(v):
    v = np.asarray(v)
    return v.dtype, v.shape[1:]


@pytest.mark.parametrize("use_binner", [False, True])
def test_empty_catalog_in_every_return_mode(setup, use_binner):
    grid, fitter, X, S = setup
    kw = {"binner": BruteForceKNN(grid, 40) if use_binner else None, "return_pdf_for_stats": True}
    E = np.zeros((0, 3))
    assert _fit(fitter, E, E, **kw) == []
    it = _fit(fitter, E, E, return_mode="iter", **kw)
    assert iter(it) is it and list(it) == []
    (chunk,) = list(_fit(fitter, E, E, return_mode="chunks", **kw))
    full = list(_fit(fitter, X, S, return_mode="chunks", **kw))[0]
    assert chunk.keys() == full.keys()
    for key in chunk:
        if key == "stats_for":
            assert chunk[key] == full[key]
        elif key == "stats_bins":  # per chunk, not per row: the same edges as a full chunk
            assert len(chunk[key]) == len(full[key])
            for a, b in zip(chunk[key], full[key], strict=True):
                np.testing.assert_array_equal(a, b)
        elif key == "pdf":
            assert [_layout(p) for p in chunk[key]] == [_layout(p) for p in full[key]]
            assert all(len(p) == 0 for p in chunk[key])
        elif key == "candidate_offsets":
            np.testing.assert_array_equal(chunk[key], [0])
            assert chunk[key].dtype == full[key].dtype
        else:
            assert _layout(chunk[key]) == _layout(full[key]), key
            assert len(chunk[key]) == 0, key
    table = _fit(fitter, E, E, return_mode="table", **kw)
    want = _fit(fitter, X, S, return_mode="table", **kw)
    assert len(table) == 0 and table.colnames == want.colnames
    assert [table[c].dtype for c in table.colnames] == [want[c].dtype for c in want.colnames]
    # as read from an empty catalog (e.g. after a cut)
    empty = {c: [] for c in ("g", "ge", "r", "re", "i", "ie")}
    cat = read_catalog(empty, *_catalog_maps(grid))
    assert cat.X.shape == (0, 3)
    assert _fit(fitter, cat.X, cat.SIG, upper_limits=cat.upper, **kw) == []


def _catalog_maps(grid):
    """``{observable: column}`` maps of values and errors for columns g, r, i (ge, re, ie)."""
    names = grid.observable_names
    return dict(zip(names, "gri", strict=True)), dict(zip(names, ["ge", "re", "ie"], strict=True))


def test_empty_catalog_writes_an_empty_valid_group(setup, tmp_path):
    grid, fitter, X, S = setup
    path = tmp_path / "empty.h5"
    E = np.zeros((0, 3))
    assert _fit(fitter, E, E, output_hdf5_path=path) == []
    out = read_fit_results(path)
    assert out["configuration"]["n_rows"] == 0
    assert out["log_evidence"].shape == (0,) and out["best"].shape == (0,)
    assert out["stats/t0/mean"].shape == (0,)


# ------------------------------------------------------------ 6. read_catalog columns
def test_read_catalog_ignores_unused_columns():
    cols = {"g": [20.0, 21.0], "ge": [0.1, 0.2], "r": [19.0, np.nan], "re": [0.1, 0.1]}
    want = read_catalog(cols, ["g", "r"], ["ge", "re"])
    extra = dict(cols, spectrum=np.ones((2, 50)), notes=np.ones(7))  # 2-D, other length
    got = read_catalog(extra, ["g", "r"], ["ge", "re"])
    for a, b in zip(got, want, strict=True):
        np.testing.assert_equal(a, b)
    t = Table(extra.copy() | {"notes": np.ones(2)})  # a Table with a 2-D column
    got = read_catalog(t, ["g", "r"], ["ge", "re"])
    np.testing.assert_equal(got.X, want.X)
    with pytest.raises(ValueError, match=r"column 'spectrum' has shape \(2, 50\)"):
        read_catalog(extra, ["g", "spectrum"], ["ge", "re"])
    with pytest.raises(ValueError, match="the columns read have different lengths"):
        read_catalog(dict(cols, re=[0.1]), ["g", "r"], ["ge", "re"])
