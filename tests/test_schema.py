"""The one output schema (`jaxgrid.core.schema`) and the one bin rule (`jaxgrid.core.bins`).

The file layout below is written out by hand: it is the result-file format that old
files, `read_fit_results` and users' scripts depend on, so a schema change that moves a
dataset or changes a dtype must fail here and be made on purpose.
"""

from __future__ import annotations

import h5py
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_grid

from jaxgrid import GridFitter
from jaxgrid.core.bins import (
    DEFAULT_N_EDGES,
    bin_index,
    check_edges,
    default_edges,
    host_bin_index,
)
from jaxgrid.core.schema import FIELDS, TABLE_FIELDS, hdf5_datasets, table_columns
from jaxgrid.io import results_to_table

_ROW = [
    ("index/written", "int8"),
    ("index/status", "int32"),
    ("truncation/level", "int64"),
    ("truncation/n_before", "int64"),
    ("truncation/n_after", "int64"),
    ("truncation/mass_kept", "float64"),
    ("truncation/mass_dropped", "float64"),
    ("truncation/cut_weight", "float64"),
    ("truncation/ess_before", "float64"),
    ("truncation/ess_after", "float64"),
]
_STATS = ["mean", "std", "map", "median", "lo68", "hi68", "nmodes", "mass_in_bins"]


def _expected_layout(targets, n_bins, pdf):
    out = list(_ROW)
    for t in targets:
        out += [(f"stats/{t}/{s}", "int32" if s == "nmodes" else "float64") for s in _STATS]
        if pdf:
            out.append((f"stats/{t}/posts_target", "float64"))
    out += [("stats/cov/cov", "float64"), ("log_evidence", "float64")]
    out += [("chi2_min", "float64"), ("best", "int64")]
    return out


def test_hdf5_datasets_are_the_documented_layout():
    bins = [np.linspace(0, 1, 11), np.linspace(0, 2, 5)]
    got = hdf5_datasets(["a", "b"], bins, return_pdf=True)
    assert [(d, np.dtype(t).name) for d, t, _, _ in got] == _expected_layout(["a", "b"], None, True)
    shapes = {d: s for d, _, _, s in got}
    assert shapes["stats/a/posts_target"] == (10,)
    assert shapes["stats/b/posts_target"] == (4,)
    assert shapes["stats/cov/cov"] == (2, 2)
    assert shapes["best"] == ()
    fills = {d: f for d, _, f, _ in got}
    assert fills["best"] == -1 and fills["stats/a/nmodes"] == -1 and fills["index/written"] == 0
    assert np.isnan(fills["stats/a/mean"])


def test_a_written_file_has_exactly_the_schema(tmp_path, rng):
    grid = make_grid(rng, n=300, p=3, q=3)
    fitter = GridFitter(grid)
    x = np.asarray(grid.observables[:7]) + rng.normal(0, 0.1, (7, 3))
    s = np.full_like(x, 0.1)
    x[2] = np.nan  # a bad row: fills
    path = tmp_path / "r.h5"
    list(
        fitter.fit_batch(
            x,
            s,
            stats_for=["t0", "t2"],
            output_hdf5_path=str(path),
            return_mode="chunks",
            chunk_size=4,
        )
    )
    with h5py.File(path, "r") as f:
        g = f["fit_batch"]
        found = []
        g.visititems(
            lambda name, obj: (
                found.append((name, obj.dtype.name))
                if isinstance(obj, h5py.Dataset) and not name.startswith("candidates")
                else None
            )
        )
        expected = _expected_layout(["t0", "t2"], None, False)
        # beside the per-row fields: the row numbers, the edges and the covariance keys
        extra = [("index/m", "int64"), ("stats/cov/keys", "bytes16")]
        extra += [("stats/t0/bins", "float64"), ("stats/t2/bins", "float64")]
        # the flat table (jaxgrid.io.flat): m, 6 row columns (52 bytes) + 2 targets x
        # (7 float64 + int32 nmodes: 60 bytes) = 172 bytes; beside it astropy's metadata
        meta = "table.__table_column_meta__"
        extra += [("table", "void1376"), (meta, g[meta].dtype.name)]
        assert sorted(found) == sorted(expected + extra)
        for name, _ in expected:
            assert g[name].shape[0] == 7
        assert g["stats/t0/bins"].shape == (DEFAULT_N_EDGES,)
        # a bad row carries every field's fill, and no evidence
        assert g["index/status"][2] != 0
        assert g["best"][2] == -1 and g["stats/t0/nmodes"][2] == -1
        assert np.isnan(g["stats/t2/mean"][2]) and g["log_evidence"][2] == -np.inf
        assert g["stats/t0/nmodes"][0] >= 1


def test_tables_have_the_schema_columns_and_dtypes_from_every_source(tmp_path, rng):
    grid = make_grid(rng, n=300, p=3, q=2)
    fitter = GridFitter(grid)
    x = np.asarray(grid.observables[:6]) + rng.normal(0, 0.1, (6, 3))
    s = np.full_like(x, 0.1)
    path = tmp_path / "r.h5"
    kw = dict(stats_for=["t1"], chunk_size=4)
    chunks = list(fitter.fit_batch(x, s, return_mode="chunks", **kw))
    objects = fitter.fit_batch(x, s, return_mode="list", **kw)
    list(fitter.fit_batch(x, s, return_mode="chunks", output_hdf5_path=str(path), **kw))
    columns = ["m", *TABLE_FIELDS] + [f"t1_{s}" for s in _STATS]
    tables = [
        results_to_table(chunks, ["t1"]),
        results_to_table(objects, ["t1"]),
        results_to_table(str(path)),
    ]
    for t in tables:
        assert t.colnames == columns
        for col, field in table_columns(["t1"]):
            assert t[col].dtype == np.dtype(field.dtype), col
        assert t["t1_nmodes"].dtype == np.int32
        assert len(t) == 6
    for col in columns:
        np.testing.assert_allclose(tables[0][col], tables[1][col], rtol=1e-12, err_msg=col)
        np.testing.assert_allclose(tables[0][col], tables[2][col], rtol=1e-12, err_msg=col)
    empty = results_to_table([], ["t1"])
    assert empty.colnames == columns and len(empty) == 0


def test_fields_are_unique_and_integer_fields_fill_with_minus_one():
    names = [f for f in FIELDS]
    assert len(names) == len(set(names))
    for f in FIELDS.values():
        if np.issubdtype(f.dtype, np.integer) and f.name != "status":
            assert f.fill == -1, f.name
        if np.issubdtype(f.dtype, np.floating):
            assert np.isnan(f.fill), f.name


def _reference_bins(values, edges, clamp):
    """Bin of each value by a plain loop: [e_i, e_i+1), the last bin closed."""
    k = len(edges) - 1
    out = []
    for v in values:
        if np.isnan(v):
            b = k - 1 if clamp else -1  # NaN sorts above everything
        elif v < edges[0]:
            b = 0 if clamp else -1
        elif v > edges[-1]:
            b = k - 1 if clamp else -1
        elif v == edges[-1]:
            b = k - 1
        else:
            b = max(i for i in range(k) if edges[i] <= v)
        out.append(b)
    return np.array(out)


@pytest.mark.parametrize("outside", ["drop", "clamp"])
def test_bin_index_device_and_host_follow_one_rule(rng, outside):
    edges = np.array([-1.0, -0.25, 0.0, 0.5, 2.0])
    values = np.concatenate(
        [rng.uniform(-2, 3, 200), edges, [np.nan, -np.inf, np.inf, -1.001, 2.001]]
    )
    ref = _reference_bins(values, edges, outside == "clamp")
    host = host_bin_index(values, edges, outside)
    dev = np.asarray(bin_index(jnp.asarray(values), jnp.asarray(edges), outside))
    np.testing.assert_array_equal(host, ref)
    np.testing.assert_array_equal(dev, ref)
    assert dev.dtype == np.int32
    # the drop rule is NumPy's histogram: same counts
    if outside == "drop":
        counts = np.bincount(host[host >= 0], minlength=4)
        np.testing.assert_array_equal(counts, np.histogram(values[np.isfinite(values)], edges)[0])
    with pytest.raises(ValueError, match="'drop' or 'clamp'"):
        host_bin_index(values, edges, "wrap")


@pytest.mark.parametrize(
    "bad", [[1.0], [0.0, 0.0, 1.0], [1.0, 0.0], [0.0, np.nan], [[0.0, 1.0]], [0.0, np.inf]]
)
def test_check_edges_names_the_argument(bad):
    with pytest.raises(ValueError, match=r"fit_batch: `stats_bins\['z'\]` must be strictly"):
        check_edges(bad, "stats_bins['z']", "fit_batch")


def test_default_edges():
    e = default_edges([3.0, np.nan, 1.0, 2.0])
    assert e.size == DEFAULT_N_EDGES and e[0] == 1.0 and e[-1] == 3.0
    np.testing.assert_allclose(np.diff(e), 2.0 / (DEFAULT_N_EDGES - 1))
    c = default_edges([5.0, 5.0])
    assert c[0] == 4.5 and c[-1] == 5.5
    np.testing.assert_array_equal(check_edges(e, "e"), e)
