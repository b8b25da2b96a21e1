"""Photo-z on a real dask.distributed LocalCluster (2 worker processes): any likelihood
and prior in the spec, a template-grid recipe built once per worker, magnitude input
converted to fluxes; results equal a single-process fit_batch row for row. Also runs
the code blocks of docs/scaleout.md (Dask and LSDB) as written."""

import math
import pickle
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")

import cloudpickle  # noqa: E402
import h5py  # noqa: E402
from dask.base import tokenize  # noqa: E402

from jaxgrid import GridFitter  # noqa: E402
from jaxgrid.dask import Columns, FitSpec, TemplateGrid, fit_dataframe, fit_partition  # noqa: E402
from jaxgrid.data import DC2_TRAINING  # noqa: E402
from jaxgrid.demo import photoz_setup  # noqa: E402
from jaxgrid.prob import BPZPrior, GaussianProductLikelihood, ScaledGaussianLikelihood  # noqa: E402

ROOT = Path(__file__).parents[1]
N_ROWS = 300
DZ = 0.05
Z = np.round(np.arange(0.0, 3.0 + 1e-9, DZ), 6)
EDGES = np.round(np.arange(-0.025, 3.0 + 0.03, DZ), 6)
BANDS = "ugrizy"
FIT_KW = {"posterior_keep_mass": 1.0, "return_candidates": False, "chunk_size": 64}
INT_COLS = ("status", "best", "n_after", "z_nmodes")
FLOAT_COLS = (
    "log_evidence",
    "chi2_min",
    "mass_kept",
    "z_mean",
    "z_std",
    "z_map",
    "z_median",
    "z_lo68",
    "z_hi68",
    "z_mass_in_bins",
)
COLUMNS = Columns.make(
    {f"flux_{b}": f"mag_{b}_lsst" for b in BANDS},
    {f"flux_{b}": f"mag_err_{b}_lsst" for b in BANDS},
    id="id",
)


def _likelihood():
    return ScaledGaussianLikelihood(mode="profile", nondetection="zero_flux", error_floor_mag=0.1)


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.fixture(scope="module")
def catalog():
    """The first N_ROWS bundled DC2 galaxies as a survey catalog of AB magnitudes."""
    with h5py.File(DC2_TRAINING, "r") as f:
        return pd.DataFrame({k: f["photometry"][k][:N_ROWS] for k in f["photometry"]})


@pytest.fixture(scope="module")
def reference():
    """Single process, the demo's recipe (photoz_setup: its grid, its mag -> flux step)."""
    grid, F, SF, upper, _, ids = photoz_setup(n_interp=0, dz=DZ)
    fitter = GridFitter(
        grid, _likelihood(), BPZPrior.hdfn(grid, "flux_i", flux_zero_point=31.4), False
    )

    def run(**kw):
        return fitter.fit_batch(
            F[:N_ROWS],
            SF[:N_ROWS],
            upper_limits=upper[:N_ROWS],
            stats_for=["z"],
            stats_bins=[EDGES],
            return_pdf_for_stats=True,
            verbose=False,
            **FIT_KW,
            **kw,
        )

    table = run(return_mode="table", ids=ids[:N_ROWS])
    pdf = np.concatenate([c["pdf"][0] for c in run(return_mode="chunks")])
    return {"grid": grid, "table": table, "pdf": pdf.astype(np.float64)}


def _spec(recipe, prior, **kw):
    return FitSpec.make(
        recipe,
        likelihood=_likelihood(),
        prior=prior,
        inputs="magnitudes",
        use_standardised=False,
        stats_for=["z"],
        stats_bins=[EDGES],
        return_pdf=True,
        **kw,
    )


def _compare(result: pd.DataFrame, reference):
    """Row for row by id: the ids of the reference, each once; values bitwise equal."""
    table = reference["table"]
    ref_ids = np.asarray(table["id"])
    assert result["id"].is_unique and len(result) == len(ref_ids)
    result = result.set_index("id").loc[ref_ids]  # every reference id, in its order
    for col in INT_COLS:
        np.testing.assert_array_equal(result[col].to_numpy(), np.asarray(table[col]), col)
    got_pdf = np.stack([np.asarray(p, np.float64) for p in result["z_pdf"]])
    pairs = [(result[c].to_numpy(np.float64), np.asarray(table[c]), c) for c in FLOAT_COLS]
    pairs.append((got_pdf, reference["pdf"], "z_pdf"))
    for got, want, col in pairs:
        np.testing.assert_array_equal(got, want, col)


def test_recipe_builds_the_demo_grid(reference):
    grid = TemplateGrid.bundled(z=Z, n_interp=0).build()
    want = reference["grid"]
    assert grid.observable_names == want.observable_names == [f"flux_{b}" for b in BANDS]
    assert grid.target_names == want.target_names == ["z", "type"]
    np.testing.assert_array_equal(np.asarray(grid.observables), np.asarray(want.observables))
    np.testing.assert_array_equal(np.asarray(grid.targets), np.asarray(want.targets))


def test_photoz_on_the_cluster_equals_single_process(catalog, reference, client):
    recipe = TemplateGrid.bundled(z=Z, n_interp=0)
    prior = BPZPrior.hdfn(recipe.build(), "flux_i", flux_zero_point=31.4)  # a module
    spec = _spec(recipe, prior, fit_kwargs=FIT_KW)
    shuffled = catalog.sample(frac=1.0, random_state=3)  # partition order is irrelevant
    ddf = dd.from_pandas(shuffled, npartitions=5, sort=False)
    assert ddf.npartitions == 5
    out = fit_dataframe(ddf, spec, COLUMNS).compute()
    assert out.index.equals(shuffled.index)  # each row keeps its partition's index
    assert out["id"].dtype == np.int64
    _compare(out, reference)
    # each worker built the grid (and this fitter) once, however many partitions it ran
    builds = client.run(lambda: dict(__import__("jaxgrid.dask").dask._BUILDS))
    assert all(b == {"grid": 1, "fitter": 1} for b in builds.values() if b["grid"]), builds
    assert sum(b["grid"] for b in builds.values()) >= 1


def test_docs_page_runs_on_the_cluster(tmp_path, monkeypatch, reference, client):
    """docs/scaleout.md as written (the prior as a function built on the workers, then
    LSDB), on this module's cluster: the page's LocalCluster block
    is the only one not run."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "scaleout.md").read_text(), re.S)
    assert len(blocks) == 3 and "LocalCluster(" in blocks[0]
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(blocks[1], "docs/scaleout.md", "exec"), ns)  # noqa: S102
    assert ns["spec"].inputs == "magnitudes" and callable(ns["spec"].prior)
    _compare(ns["photoz"], reference)
    lsdb = pytest.importorskip("lsdb")
    with warnings.catch_warnings():
        # lsdb 0.11 / nested-pandas use pandas APIs that pandas 3 deprecates
        warnings.simplefilter("ignore", pd.errors.Pandas4Warning)
        exec(compile(blocks[2], "docs/scaleout.md", "exec"), ns)  # noqa: S102
    assert lsdb.__version__.split(".")[:2] == ["0", "11"]
    assert ns["catalog"].npartitions >= 2
    back = ns["back"]
    assert back.index.name == "_healpix_29"
    _compare(pd.DataFrame(back), reference)
    # the grid recipe was built once per worker for both specs (module and function prior)
    builds = client.run(lambda: dict(__import__("jaxgrid.dask").dask._BUILDS))
    assert all(b["grid"] <= 1 for b in builds.values()), builds


def test_magnitude_input_equals_hand_converted_fluxes(catalog, reference):
    """inputs="magnitudes" == the same rows converted to nJy in float64 NumPy from the
    formulas (f = 10^(-0.4 (m - 31.4)), sigma_f = f sigma_m ln10 / 2.5; a 99 non-detection:
    f = 0, sigma_f = the flux of its limiting magnitude, flagged as an upper limit)."""
    recipe = TemplateGrid.bundled(z=Z, n_interp=0)
    prior = BPZPrior.hdfn(reference["grid"], "flux_i", flux_zero_point=31.4)
    rows = catalog.iloc[:64]
    fluxes = pd.DataFrame({"id": rows["id"]})
    for b in BANDS:
        m = rows[f"mag_{b}_lsst"].to_numpy(np.float64)
        s = rows[f"mag_err_{b}_lsst"].to_numpy(np.float64)
        nd = m == 99.0
        f = 10.0 ** (-0.4 * (np.where(nd, s, m) - 31.4))
        fluxes[f"f_{b}"] = np.where(nd, 0.0, f)
        fluxes[f"sf_{b}"] = np.where(nd, f, f * s * math.log(10.0) / 2.5)
        fluxes[f"nd_{b}"] = nd
    assert fluxes["nd_u"].sum() > 0  # non-detections in the sample
    native = Columns.make(
        {f"flux_{b}": f"f_{b}" for b in BANDS},
        {f"flux_{b}": f"sf_{b}" for b in BANDS},
        id="id",
        upper={f"flux_{b}": f"nd_{b}" for b in BANDS},
    )
    kw = {"fit_kwargs": FIT_KW}
    by_mag = fit_partition(rows, _spec(recipe, prior, **kw), COLUMNS)
    spec_native = FitSpec.make(
        recipe,
        likelihood=_likelihood(),
        prior=prior,
        use_standardised=False,
        stats_for=["z"],
        stats_bins=[EDGES],
        return_pdf=True,
        **kw,
    )
    by_flux = fit_partition(fluxes, spec_native, native)
    for col in ("status", "best", "n_after"):
        np.testing.assert_array_equal(by_mag[col].to_numpy(), by_flux[col].to_numpy(), col)
    for col in ("log_evidence", "chi2_min", "z_mean", "z_median", "z_lo68", "z_hi68"):
        np.testing.assert_allclose(
            by_mag[col].to_numpy(), by_flux[col].to_numpy(), rtol=1e-5, atol=1e-5, err_msg=col
        )


def test_spec_pickles_and_has_a_stable_token(reference):
    recipe = TemplateGrid.bundled(z=Z, n_interp=0)
    for prior in (
        BPZPrior.hdfn(reference["grid"], "flux_i", flux_zero_point=31.4),
        lambda grid: BPZPrior.hdfn(grid, "flux_i", flux_zero_point=31.4),
    ):
        spec = _spec(recipe, prior)
        for dumps in (pickle.dumps, cloudpickle.dumps):
            if dumps is pickle.dumps and not isinstance(prior, BPZPrior):
                continue  # a lambda needs cloudpickle (what Dask uses)
            back = pickle.loads(dumps(spec))
            assert back == spec and hash(back) == hash(spec) and back.key() == spec.key()
            assert tokenize(back) == tokenize(spec)
    a = _spec(recipe, None)
    b = _spec(recipe, None, fit_kwargs={"chunk_size": 64})
    c = FitSpec.make(
        recipe, likelihood=GaussianProductLikelihood(), stats_for=["z"], stats_bins=[EDGES]
    )
    assert len({a.key(), b.key(), c.key(), _spec(recipe, None).key()}) == 3
    assert a == _spec(recipe, None)  # equal settings, equal specs


def test_bad_specs_are_refused(reference):
    recipe = TemplateGrid.bundled(z=Z, n_interp=0)
    with pytest.raises(TypeError, match="not a ModelGrid.*to_hdf5"):
        FitSpec.make(reference["grid"])
    with pytest.raises(TypeError, match="`likelihood` must be an AbstractLikelihood"):
        FitSpec.make(recipe, likelihood="gaussian")
    with pytest.raises(TypeError, match="`prior` must be a prior"):
        FitSpec.make(recipe, prior=3.0)
    with pytest.raises(ValueError, match="`inputs` must be one of"):
        FitSpec.make(recipe, inputs="mags")
    with pytest.raises(ValueError, match="set them on that likelihood"):
        FitSpec.make(recipe, likelihood=_likelihood(), limit_kind="flux")
    with pytest.raises(ValueError, match="`bands` must be letters"):
        TemplateGrid.bundled(z=Z, bands="uq")
    with pytest.raises(ValueError, match="`z` must be a non-empty"):
        TemplateGrid.make(["a.sed"], ["f.res"], [-1.0])
    with pytest.raises(TypeError, match="lists of files"):
        TemplateGrid.make("a.sed", ["f.res"], Z)
