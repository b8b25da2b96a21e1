"""Object ids through every output (file, journal, resume, tables, qp) and the flat
tables that other programs read without jaxgrid (astropy, pandas, tables_io).

Expected values come from the inputs (the ids given) or from the independent readers;
the flat table is compared with `results_to_table`, column for column, bitwise.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
from astropy.table import Table
from output_helpers import assert_same_file

from jaxgrid import GridFitter, ModelGrid
from jaxgrid.io import read_fit_results, read_results, results_to_table, to_qp, write_results
from jaxgrid.io.results import journal_path

HERE = Path(__file__).parent
M = 30
EDGES = [np.linspace(0.0, 3.0, 16), np.linspace(0.0, 10.0, 11)]
KW = dict(
    stats_for=["z", "age"],
    stats_bins=EDGES,
    return_pdf_for_stats=True,
    chunk_size=8,
    verbose=False,
    # the photo-z recipe's settings; also the quickest step to compile
    posterior_keep_mass=1.0,
    return_candidates=False,
)
INT_IDS = np.arange(M, dtype=np.int64) * 7919 + 2**40  # beyond int32
STR_IDS = np.array([f"obj-é{i:03d}" + "x" * (i % 4) for i in range(M)])  # non-ASCII, ragged


def problem():
    """A 200-model grid with targets z and age; M rows, row 3 without data (flagged)."""
    rng = np.random.default_rng(7)
    obs = rng.normal(20.0, 1.0, (200, 3))
    tgt = np.column_stack([rng.uniform(0, 3, 200), rng.uniform(0, 10, 200)])
    grid = ModelGrid(obs, tgt, ["a", "b", "c"], ["z", "age"], meta={"units": {"age": "Gyr"}})
    X = obs[rng.integers(0, 200, M)] + rng.normal(0, 0.2, (M, 3))
    S = np.full_like(X, 0.2)
    X[3] = np.nan
    return GridFitter(grid), X, S


def _assert_columns_equal(a, b):
    assert a.colnames == b.colnames
    for c in a.colnames:
        x, y = np.asarray(a[c]), np.asarray(b[c])
        # the same kind and width (FITS stores big-endian; string widths may differ)
        same = x.dtype.kind == y.dtype.kind
        if x.dtype.kind in "iuf":
            same &= x.dtype.itemsize == y.dtype.itemsize
        assert same, (c, x.dtype, y.dtype)
        np.testing.assert_array_equal(x, y, err_msg=c)  # NaN == NaN, floats bitwise


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One file per id kind (and one without ids), plus in-memory results of each."""
    fitter, X, S = problem()
    d = tmp_path_factory.mktemp("ids")
    out = {}
    for kind, ids in (("int", INT_IDS), ("str", STR_IDS), ("none", None)):
        path = d / f"{kind}.h5"
        objs = fitter.fit_batch(X, S, return_mode="list", output_hdf5_path=path, ids=ids, **KW)
        chunks = list(fitter.fit_batch(X, S, return_mode="chunks", ids=ids, **KW))
        out[kind] = dict(path=path, objs=objs, chunks=chunks, ids=ids)
    return out


@pytest.mark.parametrize("kind", ["int", "str"])
def test_ids_are_stored_and_read_back_everywhere(runs, kind):
    r = runs[kind]
    ids = r["ids"]
    with h5py.File(r["path"], "r") as f:
        ds = f["fit_batch/index/id"]
        if kind == "int":
            assert ds.dtype == np.int64
        else:  # fixed-width UTF-8 strings
            assert h5py.check_string_dtype(ds.dtype).encoding == "utf-8"
            assert ds[0] == STR_IDS[0].encode("utf-8")
    back = read_fit_results(r["path"])["index/id"]
    assert back.dtype.kind == ids.dtype.kind
    np.testing.assert_array_equal(back, ids)
    t = results_to_table(r["path"])
    assert t.colnames[:2] == ["m", "id"]
    np.testing.assert_array_equal(np.asarray(t["id"]), ids[np.asarray(t["m"])])
    assert [o["id"] for o in r["objs"]] == ids.tolist()
    np.testing.assert_array_equal(np.concatenate([c["id"] for c in r["chunks"]]), ids)
    # every source gives the same table, ids included
    for other in (results_to_table(r["objs"]), results_to_table(r["chunks"])):
        _assert_columns_equal(other, t)
    # `ids=` still overrides what the file holds
    new = np.array([f"n{i}" for i in range(M)])
    np.testing.assert_array_equal(np.asarray(results_to_table(r["path"], ids=new)["id"]), new)


@pytest.mark.parametrize("kind", ["int", "str", "none"])
def test_flat_table_reads_with_astropy_and_equals_results_to_table(runs, kind):
    path = runs[kind]["path"]
    ref = results_to_table(path)
    got = Table.read(path, path="/fit_batch/table", character_as_bytes=False)
    _assert_columns_equal(got, ref)
    assert got.meta["STATSFOR"] == "z,age"
    assert str(got["age_mean"].unit) == "Gyr" and got["z_mean"].unit is None
    assert ("id" in got.colnames) == (kind != "none")
    # astropy also finds it given just the group
    assert len(Table.read(path, path="/fit_batch")) == M


def test_tables_io_reads_the_exported_tables(runs, tmp_path):
    """tables_io (qp's table reader) reads `write_results`'s HDF5 and Parquet files.
    (Its HDF5 reader takes top-level tables only: astropy resolves a relative group
    path inside that group, so it cannot open ``<group>/table``; use ``Table.read``
    with the absolute path for the result file itself.)"""
    tables_io = pytest.importorskip("tables_io")
    t = results_to_table(runs["int"]["path"])
    write_results(t, tmp_path / "r.h5")
    write_results(t, tmp_path / "r.parquet")
    _assert_columns_equal(Table(tables_io.read(str(tmp_path / "r.h5"), fmt="hf5")["results"]), t)
    got = tables_io.read(str(tmp_path / "r.parquet"), fmt="pq")
    for c in t.colnames:
        np.testing.assert_array_equal(np.asarray(got[c]), np.asarray(t[c]), err_msg=c)


@pytest.mark.parametrize("kind", ["int", "str"])
def test_parquet_and_fits_round_trips_with_ids(runs, kind, tmp_path):
    import pandas as pd

    t = results_to_table(runs[kind]["path"], units={"age": "Gyr"})
    ids = runs[kind]["ids"]
    pq = tmp_path / "r.parquet"
    write_results(t, pq)
    df = pd.read_parquet(pq)
    assert list(df.columns) == t.colnames
    assert df["id"].tolist() == ids.tolist()
    for c in t.colnames:
        if c != "id":
            np.testing.assert_array_equal(df[c].to_numpy(), np.asarray(t[c]), err_msg=c)
            assert df[c].to_numpy().dtype == np.asarray(t[c]).dtype, c
    _assert_columns_equal(Table.read(pq), t)
    back = read_results(pq)
    _assert_columns_equal(back, t)
    assert str(back["age_map"].unit) == "Gyr"
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_results(t, pq)
    write_results(t, pq, overwrite=True)
    write_results(t, tmp_path / "r.h5")
    _assert_columns_equal(read_results(tmp_path / "r.h5"), t)
    if kind == "str":  # FITS text is ASCII: refused with the way out, then ASCII ids
        with pytest.raises(ValueError, match="non-ASCII.*parquet"):
            write_results(t, tmp_path / "r.fits")
        assert not (tmp_path / "r.fits").exists()
        t["id"] = np.char.replace(STR_IDS, "é", "e")
    write_results(t, tmp_path / "r.fits")
    _assert_columns_equal(read_results(tmp_path / "r.fits"), t)
    tables_io = pytest.importorskip("tables_io")
    assert tables_io.read(str(pq), fmt="pq")["id"].tolist() == ids.tolist()


def test_qp_names_per_target_ids_and_in_memory_sources(runs, tmp_path):
    qp = pytest.importorskip("qp")
    r = runs["str"]
    ok = [o for o in r["objs"] if o["m"] != 3]  # the flagged row has no PDF
    for target in ("z", "age"):
        ens = to_qp(r["path"], target)
        assert ens.npdf == M - 1
        np.testing.assert_array_equal(ens.ancil["id"], [o["id"] for o in ok])
        np.testing.assert_array_equal(ens.ancil["status"], [o["status"] for o in ok])
        for key, stat in (("mode", "map"), ("mean", "mean"), ("median", "median")):
            want = [o["stats"][target][stat] for o in ok]
            np.testing.assert_array_equal(ens.ancil[f"{target}_{key}"], want)
            if target == "z":  # RAIL's names
                np.testing.assert_array_equal(ens.ancil[f"z{key}"], want)
            else:
                assert f"z{key}" not in ens.ancil
        # chunks carry their targets and edges: no `bins` needed
        mem = to_qp(r["chunks"], target)
        objs = to_qp(r["objs"], target, bins=EDGES[KW["stats_for"].index(target)])
        for e in (mem, objs):
            np.testing.assert_array_equal(e.objdata["pdfs"], ens.objdata["pdfs"])
            assert e.ancil.keys() == ens.ancil.keys()
            for k in ens.ancil:
                np.testing.assert_array_equal(e.ancil[k], ens.ancil[k], err_msg=k)
    ens = to_qp(r["chunks"], "z")
    ens.write_to(str(tmp_path / "z.hdf5"))
    back = qp.read(str(tmp_path / "z.hdf5"))
    assert back.ancil["id"].tolist() == [o["id"] for o in ok]
    np.testing.assert_array_equal(back.ancil["zmode"], ens.ancil["zmode"])
    assert "id" not in to_qp(runs["none"]["path"], "z").ancil
    with_ids = to_qp(runs["none"]["path"], "z", ids=INT_IDS)
    np.testing.assert_array_equal(with_ids.ancil["id"], INT_IDS[[o["m"] for o in ok]])
    with pytest.raises(ValueError, match="bins"):
        to_qp(r["objs"], "z")


def test_files_without_ids_or_table_still_read(runs, tmp_path):
    """A run without ids has no id column; a file from before the flat table (its
    datasets deleted) still reads and resumes."""
    path = runs["none"]["path"]
    assert "id" not in results_to_table(path).colnames
    assert "index/id" not in read_fit_results(path)
    np.testing.assert_array_equal(results_to_table(path, ids=INT_IDS)["id"], INT_IDS)
    old = tmp_path / "old.h5"
    old.write_bytes(path.read_bytes())
    with h5py.File(old, "r+") as f:
        del f["fit_batch/table"], f["fit_batch/table.__table_column_meta__"]
    _assert_columns_equal(results_to_table(old), results_to_table(path))
    fitter, X, S = problem()
    fitter.fit_batch(X, S, output_hdf5_path=old, resume=True, output_hdf5_write_only=True, **KW)
    with h5py.File(old, "r") as f:
        assert "table" not in f["fit_batch"]  # complete: resuming changes nothing


_KILLER = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {here!r})
    import numpy as np
    from test_ids_outputs import KW, STR_IDS, INT_IDS, problem

    fitter, X, S = problem()

    def progress(done, total):
        if done >= 16:  # two chunks committed to the journal
            os.kill(os.getpid(), signal.SIGKILL)

    fitter.fit_batch(X, S, output_hdf5_path={path!r}, output_hdf5_write_only=True,
                     progress=progress, ids={ids}, **KW)
    """
)


class _Stop(Exception):
    pass


@pytest.mark.parametrize("kind", ["int", "str"])
def test_ids_survive_an_interrupted_run_and_resume(runs, kind, tmp_path):
    """str: SIGKILL after two chunks (the journal alone holds them); int: an exception
    after two chunks (the partial group is assembled, the journal kept). Both resume to
    the uninterrupted file, ids and flat table included; other ids are refused."""
    ids = runs[kind]["ids"]
    path = tmp_path / "out.h5"
    fitter, X, S = problem()
    if kind == "str":
        code = _KILLER.format(here=str(HERE), path=str(path), ids="STR_IDS")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=300)
        assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
        assert not path.exists()
    else:

        def stop(done, total):
            if done >= 16:
                raise _Stop

        with pytest.raises(_Stop):
            fitter.fit_batch(
                X,
                S,
                output_hdf5_path=path,
                output_hdf5_write_only=True,
                progress=stop,
                ids=ids,
                **KW,
            )
        partial = results_to_table(path)
        assert len(partial) == 16
        np.testing.assert_array_equal(partial["id"], ids[:16])
        table = Table.read(path, path="/fit_batch/table")
        np.testing.assert_array_equal(table["id"], ids[:16])
    assert journal_path(path, "/fit_batch").exists()
    write = dict(output_hdf5_path=path, output_hdf5_write_only=True, resume=True, **KW)
    other = ids[::-1].copy()
    for wrong, what in ((other, "ids"), (None, "no ids")):
        with pytest.raises(ValueError, match=what):
            fitter.fit_batch(X, S, ids=wrong, **write)
    # the same ids in another form (a wider string dtype, a list) resume the run
    same = ids.astype(f"U{ids.dtype.itemsize // 4 + 5}") if kind == "str" else ids.tolist()
    fitter.fit_batch(X, S, ids=same, **write)
    assert not journal_path(path, "/fit_batch").exists()
    assert_same_file(path, runs[kind]["path"])
    np.testing.assert_array_equal(read_fit_results(path)["index/id"], ids)
    # a complete group: resuming it with other ids, or without, is refused too
    for wrong in (other, None):
        with pytest.raises(ValueError, match="resume: group"):
            fitter.fit_batch(X, S, ids=wrong, **write)
    with pytest.raises(ValueError, match="resume: group"):  # ids on a run that had none
        fitter.fit_batch(X, S, ids=ids, **{**write, "output_hdf5_path": runs["none"]["path"]})


def test_bad_ids_are_refused_before_any_file(tmp_path):
    fitter, X, S = problem()
    path = tmp_path / "never.h5"
    kw = dict(output_hdf5_path=path, output_hdf5_write_only=True, **KW)
    cases = [
        (np.arange(M - 1), ValueError, "29 entries for 30 rows"),
        (np.arange(M) + 0.5, ValueError, "non-integral"),
        (np.where(np.arange(M) == 4, np.nan, np.arange(M)), ValueError, "NaN"),
        (np.ones(M, bool), TypeError, "booleans"),
        (np.array([1, "a"] * (M // 2), dtype=object), TypeError, "all integers or all strings"),
        (np.ma.masked_array(np.arange(M), mask=np.arange(M) == 2), ValueError, "masked"),
        (np.arange(M).reshape(M, 1), ValueError, "1-D"),
        (np.full(M, 2**63, np.uint64), ValueError, "int64"),
    ]
    for ids, err, match in cases:
        with pytest.raises(err, match=match):
            fitter.fit_batch(X, S, ids=ids, **kw)
    assert not path.exists() and not journal_path(path, "/fit_batch").exists()
    # integral floats and byte strings are accepted as int64 / str ids
    t = fitter.fit_batch(X, S, ids=np.arange(M) * 1.0, return_mode="table", **KW)
    assert t["id"].dtype == np.int64
    t = fitter.fit_batch(X, S, ids=np.char.encode(STR_IDS, "utf-8"), return_mode="table", **KW)
    assert t["id"].tolist() == STR_IDS.tolist()


def test_ids_override_and_catalog_ids_are_checked(runs, tmp_path):
    """An ``ids=`` override that does not cover every row, and a catalog id column with
    missing (masked) entries, are refused naming the argument; the CLI's --id-col ids
    reach the result file, its flat table and the qp ancil."""
    from astropy.table import MaskedColumn

    from jaxgrid.cli import main
    from jaxgrid.io import read_catalog

    with pytest.raises(ValueError, match="`ids` has 5 entries"):
        results_to_table(runs["int"]["path"], ids=INT_IDS[:5])
    with pytest.raises(ValueError, match="`ids` has 5 entries"):
        to_qp(runs["int"]["path"], "z", ids=INT_IDS[:5])
    cols = {"a": np.ones(4), "a_err": np.full(4, 0.1)}
    cols["id"] = MaskedColumn([1, 2, 3, 4], mask=[False, True, False, False])
    with pytest.raises(ValueError, match="id column 'id'.*masked"):
        read_catalog(cols, ["a"], {"a": "a_err"}, id_col="id")

    fitter, X, S = problem()
    cat_path = tmp_path / "cat.h5"
    with h5py.File(cat_path, "w") as f:  # columns in a group, ids as UTF-8 bytes
        for i, n in enumerate("abc"):
            f[f"data/{n}"], f[f"data/{n}_err"] = X[:, i], S[:, i]
        f["data/objid"] = np.char.encode(STR_IDS, "utf-8")
    out = tmp_path / "fit.h5"
    argv = ["fit", "--grid", str(tmp_path / "grid.h5"), "--catalog", str(cat_path)]
    fitter.grid.to_hdf5(tmp_path / "grid.h5")
    common = ["--hdf5-group", "data", "--id-col", "objid", "--stats", "z:0:3:15", "--quiet"]
    assert main([*argv, "--out", str(out), *common]) == 0
    np.testing.assert_array_equal(read_fit_results(out)["index/id"], STR_IDS)
    flat = Table.read(out, path="fit_batch/table", character_as_bytes=False)
    np.testing.assert_array_equal(flat["id"], STR_IDS)
    qp_out = tmp_path / "pz.qp"
    assert main([*argv, "--out", str(qp_out), "--format", "qp", *common]) == 0
    ens = __import__("qp").read(str(tmp_path / "pz_z.qp.hdf5"))
    assert ens.ancil["id"].tolist() == STR_IDS[ens.ancil["m"]].tolist()
    # FITS cannot hold these (non-ASCII) ids: refused before the fit, naming --id-col
    fits_out = tmp_path / "fit.fits"
    assert main([*argv, "--out", str(fits_out), "--format", "fits", *common]) == 2
    assert not fits_out.exists()
