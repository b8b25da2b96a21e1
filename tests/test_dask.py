"""Scale-out on a real dask.distributed LocalCluster (2 worker processes)."""

import os
import signal
import time

import numpy as np
import pandas as pd
import pytest

dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")

from astropy.table import Table  # noqa: E402

from jaxgrid import GridFitter, ModelGrid  # noqa: E402
from jaxgrid.binning import KDTreeBinner  # noqa: E402
from jaxgrid.dask import Columns, FitSpec, fit_dataframe, fit_partition, to_parquet  # noqa: E402
from jaxgrid.demo import BANDS, make_demo_files  # noqa: E402
from jaxgrid.prob import GaussianProductLikelihood  # noqa: E402

N_ROWS = 20_000
BINS = [np.linspace(7.0, 12.0, 51), np.linspace(8.0, 10.1, 43)]
FIT_KW = {"chunk_size": 512, "posterior_keep_mass": 0.95, "posterior_keep_min_candidates": 32}


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dask")
    files = make_demo_files(folder, n_objects=N_ROWS)
    df = Table.read(files["catalog"]).to_pandas()
    df.loc[df.index[:40], list(BANDS)] = np.nan  # rows with no usable band
    parts = folder / "catalog"
    parts.mkdir()
    edges = [0, 5000, 10_000, 15_000, N_ROWS]
    for i, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
        df.iloc[a:b].to_parquet(parts / f"part{i}.parquet")
    spec = FitSpec.make(
        files["grid"],
        stats_for=["logM", "log_age"],
        stats_bins=BINS,
        binner={"dims": list(BANDS[1:]), "target_k": 128},
        fit_kwargs=FIT_KW,
        return_pdf=True,
    )
    columns = Columns.make(list(BANDS), [f"{b}_err" for b in BANDS], id="id")
    return {
        "folder": folder,
        "parts": parts,
        "df": df,
        "spec": spec,
        "columns": columns,
        "grid": files["grid"],
    }


@pytest.fixture(scope="module")
def reference(problem):
    """A single-process fit_batch on the same rows and settings."""
    grid = ModelGrid.load_auto(problem["grid"])
    fitter = GridFitter(grid, GaussianProductLikelihood(limit_kind="magnitude"))
    binner = KDTreeBinner(dims=list(BANDS[1:]), target_k=128).fit(grid)
    df = problem["df"]
    from jaxgrid.io import read_catalog

    cat = read_catalog(
        {c: df[c].to_numpy() for c in df.columns},
        list(BANDS),
        [f"{b}_err" for b in BANDS],
        id_col="id",
        grid=grid,
    )
    table = fitter.fit_batch(
        cat.X,
        cat.SIG,
        binner=binner,
        upper_limits=cat.upper,
        stats_for=["logM", "log_age"],
        stats_bins=BINS,
        return_mode="table",
        ids=cat.ids,
        verbose=False,
        **FIT_KW,
    )
    return table


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


def _compare(result: pd.DataFrame, reference):
    result = result.sort_values("id")
    assert len(result) == N_ROWS and result["id"].is_unique  # nothing lost or duplicated
    ref_ids = np.asarray(reference["id"])
    np.testing.assert_array_equal(result["id"].to_numpy(), ref_ids)
    for col in (
        "status",
        "log_evidence",
        "chi2_min",
        "best",
        "n_after",
        "logM_median",
        "logM_lo68",
        "log_age_mean",
        "log_age_nmodes",
        "mass_kept",
    ):
        np.testing.assert_array_equal(
            result[col].to_numpy(), np.asarray(reference[col]), err_msg=col
        )


def test_cluster_results_equal_single_process(problem, reference, client):
    ddf = dd.read_parquet(problem["parts"])
    assert ddf.npartitions >= 4
    res = fit_dataframe(ddf, problem["spec"], problem["columns"])
    out = res.compute()
    _compare(out, reference)
    assert (out.sort_values("id")["status"].to_numpy()[:40] & 1).all()  # flagged, not dropped
    assert len(out["logM_pdf"].iloc[100]) == 50
    # every worker built its fitter once and reused it (the process-wide cache)
    sizes = client.run(lambda: len(__import__("jaxgrid.dask").dask._CACHE))
    assert all(v == 1 for v in sizes.values())
    # Parquet output with the bin edges in the metadata
    path = problem["folder"] / "out.parquet"
    to_parquet(res, path, problem["spec"])
    import json

    import pyarrow.parquet as pq

    # (pandas 3 reads Arrow list columns back only with the pyarrow dtype backend)
    back = pd.read_parquet(path, dtype_backend="pyarrow").sort_values("id")
    np.testing.assert_array_equal(
        back["logM_median"].to_numpy(np.float64), np.asarray(reference["logM_median"])
    )
    assert len(back["logM_pdf"].iloc[0]) == 50
    md = pq.read_schema(next(path.glob("*.parquet"))).metadata
    assert json.loads(md[b"jaxgrid_bins"])["logM"] == list(BINS[0])


def test_empty_and_all_bad_partitions(problem):
    spec, columns, df = problem["spec"], problem["columns"], problem["df"]
    empty = fit_partition(df.iloc[:0], spec, columns)
    assert len(empty) == 0 and list(empty.columns)[:2] == ["id", "status"]
    bad = df.iloc[:40]  # every row without a usable band
    out = fit_partition(bad, spec, columns)
    assert len(out) == 40 and (out["status"] & 1).all() and out["logM_median"].isna().all()
    assert out.index.equals(bad.index)


def test_empty_and_bad_partitions_on_the_cluster(problem, client):
    df = problem["df"]
    bad = df.iloc[:40].copy()  # no usable band in any row
    parts = dd.concat(
        [
            dd.from_pandas(df.iloc[:0], npartitions=1),
            dd.from_pandas(bad, npartitions=1),
            dd.from_pandas(df.iloc[100:300], npartitions=2),
        ]
    )
    out = fit_dataframe(parts, problem["spec"], problem["columns"]).compute()
    assert len(out) == 240 and out["id"].is_unique
    flagged = out[out["id"].isin(bad["id"])]
    assert len(flagged) == 40 and (flagged["status"] & 1).all()
    assert flagged["logM_median"].isna().all() and out["logM_median"].notna().sum() == 200


def test_worker_killed_mid_computation(problem, reference, client):
    ddf = dd.read_parquet(problem["parts"]).repartition(npartitions=8)
    future = client.compute(fit_dataframe(ddf, problem["spec"], problem["columns"]))
    pids = client.run(os.getpid)
    deadline = time.time() + 60
    victim = None
    while time.time() < deadline and victim is None:
        busy = [w for w, tasks in client.processing().items() if tasks]
        if busy:
            victim = busy[0]
        time.sleep(0.05)
    assert victim is not None, "no worker picked up a task"
    time.sleep(0.3)
    os.kill(pids[victim], signal.SIGKILL)
    out = future.result(timeout=300)
    _compare(out, reference)
    assert pids[victim] not in client.run(os.getpid).values()  # the nanny started a new process


def test_lsdb_catalog_map_partitions(problem, reference):
    lsdb = pytest.importorskip("lsdb")
    import warnings

    df = problem["df"].iloc[:2000].copy()
    rng = np.random.default_rng(0)
    df["ra"] = rng.uniform(0, 360, len(df))
    df["dec"] = np.degrees(np.arcsin(rng.uniform(-1, 1, len(df))))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lsdb/hats deprecation noise from pandas 3
        catalog = lsdb.from_dataframe(df, ra_column="ra", dec_column="dec")
        res = catalog.map_partitions(fit_partition, problem["spec"], problem["columns"])
        out = res.compute()
    out = pd.DataFrame(out).sort_values("id")
    ref = reference[:2000]
    np.testing.assert_array_equal(out["id"].to_numpy(), np.asarray(ref["id"]))
    np.testing.assert_array_equal(out["logM_median"].to_numpy(), np.asarray(ref["logM_median"]))


def test_string_ids_on_the_cluster(problem, client):
    df = problem["df"].iloc[100:300].copy()
    want = fit_partition(df, problem["spec"], problem["columns"])  # integer ids
    named = df.assign(id=[f"obj-{i:06d}" for i in df["id"]])
    out = fit_dataframe(
        dd.from_pandas(named, npartitions=3), problem["spec"], problem["columns"]
    ).compute()
    out = out.loc[named.index]
    assert out["id"].tolist() == named["id"].tolist()  # the strings, unchanged
    for col in ("status", "log_evidence", "best", "logM_median", "log_age_mean"):
        np.testing.assert_array_equal(out[col].to_numpy(), want[col].to_numpy(), err_msg=col)
    # integral float ids still come out as int64, as before
    as_float = df.assign(id=df["id"].astype(float))
    floats = fit_partition(as_float, problem["spec"], problem["columns"])
    assert floats["id"].dtype == np.int64 and (floats["id"] == df["id"]).all()


def test_nan_and_fractional_ids_are_refused(problem, client):
    df = problem["df"].iloc[100:300].copy()
    ids = df["id"].astype(float)
    ids.iloc[[3, 50]] = np.nan
    with_nan = df.assign(id=ids)
    with pytest.raises(ValueError, match=r"id column 'id' has 2 missing \(NaN/None\)"):
        fit_partition(with_nan, problem["spec"], problem["columns"])
    ddf = dd.from_pandas(with_nan, npartitions=2)
    with pytest.raises(ValueError, match="id column 'id' has 2 missing"):
        fit_dataframe(ddf, problem["spec"], problem["columns"]).compute()
    with pytest.raises(ValueError, match="non-integral"):
        fit_partition(df.assign(id=df["id"] + 0.5), problem["spec"], problem["columns"])
    strings = df.assign(id=[f"o{i}" for i in df["id"]])
    strings.loc[strings.index[7], "id"] = None
    with pytest.raises(ValueError, match="has 1 missing"):
        fit_partition(strings, problem["spec"], problem["columns"])
