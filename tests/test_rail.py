"""jaxgrid's RAIL stages through RAIL's own API (DataStore, make_stage, inform,
estimate, RAIL's evaluators), on the bundled DC2 sample: one part trains the prior,
another is estimated in several RAIL chunks. References are direct jaxgrid calls
(read_catalog -> magnitudes_to_fluxes -> GridFitter.fit_batch), metrics are compared
with jaxgrid.metrics on the same arrays, flux conversion with hand-computed values."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

pytest.importorskip("rail.estimation.estimator")

import jax  # noqa: E402
from rail.core.data import DataStore, TableHandle  # noqa: E402

from jaxgrid.data import DC2_TRAINING, data_path  # noqa: E402

BANDS = "ugrizy"
COLS = [f"mag_{b}_lsst" for b in BANDS]
N_TRAIN, N_TEST, CHUNK = 300, 250, 100  # 3 RAIL chunks: 100, 100, 50
REPO = Path(__file__).resolve().parents[1]


def _write(path: Path, cols: dict[str, np.ndarray]) -> Path:
    with h5py.File(path, "w") as f:
        g = f.create_group("photometry")
        for k, v in cols.items():
            g[k] = v
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rail")
    with h5py.File(DC2_TRAINING, "r") as f:
        allc = {k: f["photometry"][k][...] for k in f["photometry"]}
    order = np.random.default_rng(3).permutation(allc["id"].size)
    train = {k: v[order[:N_TRAIN]] for k, v in allc.items()}
    test = {k: v[order[N_TRAIN : N_TRAIN + N_TEST]] for k, v in allc.items()}
    # training objects the prior cannot score: nearest z = 0 (the prior is 0 there)
    # and beyond the grid; the informer must leave them out, not return -inf / NaN
    train["redshift"] = train["redshift"].copy()
    train["redshift"][:2] = 0.003
    train["redshift"][2] = 3.4
    return {
        "dir": tmp,
        "train": _write(tmp / "train.hdf5", train),
        "test": _write(tmp / "test.hdf5", test),
        "test_cols": test,
    }


@pytest.fixture(scope="module")
def data_store():
    return DataStore()  # RAIL 2: a store of data handles (each stage also has its own)


COMMON = dict(hdf5_groupname="photometry", limit_source="err_bands")


@pytest.fixture(scope="module")
def trained(files, data_store):
    from rail.estimation.algos.jaxgrid import JaxgridInformer

    train = data_store.read_file("jg_train", TableHandle, str(files["train"]))
    inf = JaxgridInformer.make_stage(
        name="jg_inform", model=str(files["dir"] / "jg_model.pkl"), maxiter=40, **COMMON
    )
    return inf.inform(train)


@pytest.fixture(scope="module")
def estimated(files, data_store, trained):
    """The estimate, and how many times jaxgrid's step compiled during it."""
    from jaxgrid.core.step import trace_count
    from rail.estimation.algos.jaxgrid import JaxgridEstimator

    test = data_store.read_file("jg_test", TableHandle, str(files["test"]))
    est = JaxgridEstimator.make_stage(
        name="jg_estimate",
        model=trained,
        chunk_size=CHUNK,
        id_col="id",
        fit_chunk_size=FIT_CHUNK,
        output=str(files["dir"] / "jg_output.hdf5"),
        **COMMON,
    )
    jax.clear_caches()  # whatever ran before: this run compiles its own step
    before = trace_count()
    out = est.estimate(test)
    return out, trace_count() - before, est


FIT_CHUNK = 64  # rows per jaxgrid step: RAIL chunks of 100, 100, 50 -> 2, 2, 1 steps


def _direct_fit(grid, prior, F, SF, U, edges):
    """A direct jaxgrid fit (the recommended likelihood) -> per-row arrays."""
    from jaxgrid import GridFitter
    from jaxgrid.prob import ScaledGaussianLikelihood

    lik = ScaledGaussianLikelihood(mode="profile", nondetection="zero_flux", error_floor_mag=0.1)
    chunks = list(
        GridFitter(grid, lik, prior, use_standardised=False).fit_batch(
            F,
            SF,
            upper_limits=U,
            stats_for=["z"],
            stats_bins=[edges],
            return_pdf_for_stats=True,
            posterior_keep_mass=1.0,
            return_candidates=False,
            return_mode="chunks",
            chunk_size=FIT_CHUNK,
            verbose=False,
        )
    )
    out = {k: np.concatenate([c[k][:, 0] for c in chunks]) for k in ("map", "mean", "median")}
    out["pdf"] = np.concatenate([c["pdf"][0] for c in chunks]).astype(np.float64)
    out["status"] = np.concatenate([c["status"] for c in chunks])
    return out


def _reference(files, model):
    """Direct jaxgrid: the same recipe, the catalog read by read_catalog (its 99 ->
    limit-from-the-error-column convention), fit_batch over the whole test set."""
    from jaxgrid.io import read_catalog
    from jaxgrid.photometry import build_template_grid, magnitudes_to_fluxes
    from jaxgrid.prob import BPZPrior

    names = data_path("photoz", "SED", "CWWSB4.list").read_text().split()
    grid = build_template_grid(
        [data_path("photoz", "SED", n) for n in names],
        [data_path("photoz", "FILTER", f"DC2LSST_{b}.res") for b in BANDS],
        np.round(np.arange(0.0, 3.0 + 0.005, 0.01), 6),
        n_interp=5,
        igm="madau95",
        filter_names=[f"f_{b}" for b in BANDS],
    )
    cat = read_catalog(
        files["test"],
        {f"f_{b}": f"mag_{b}_lsst" for b in BANDS},
        {f"f_{b}": f"mag_err_{b}_lsst" for b in BANDS},
        id_col="id",
        hdf5_group="photometry",
        grid=grid,
    )
    F, SF, U = magnitudes_to_fluxes(cat.X, cat.SIG, cat.upper)
    p = model["params"]
    prior = BPZPrior.hdfn(grid, "f_i", flux_zero_point=31.4).with_params(
        p["alpha"], p["z0"], p["km"], p["f"], p["k"]
    )
    edges = np.round(np.arange(-0.005, 3.0051, 0.01), 6)
    return _direct_fit(grid, prior, F, SF, U, edges), edges, cat.ids


# ------------------------------------------------------------------ discovery


def test_rail_finds_the_jaxgrid_package():
    from rail.core.introspection import RailEnv
    from rail.estimation.estimator import CatEstimator
    from rail.estimation.informer import CatInformer

    import rail
    from rail.estimation.algos.jaxgrid import JaxgridEstimator, JaxgridInformer

    assert str(REPO / "rail") in [str(Path(p)) for p in rail.__path__]
    assert "rail.jaxgrid" in RailEnv.list_rail_packages()
    assert issubclass(JaxgridEstimator, CatEstimator)
    assert issubclass(JaxgridInformer, CatInformer)
    # namespace packages shared with pz-rail-base: an __init__.py would shadow it
    for d in ("rail", "rail/estimation", "rail/estimation/algos"):
        assert not (REPO / d / "__init__.py").exists(), d
    import rail.jaxgrid

    assert rail.jaxgrid.JaxgridEstimator is JaxgridEstimator


# ------------------------------------------------------------------ flux conversion


def test_magnitudes_to_rail_fluxes_against_hand_values():
    from types import SimpleNamespace

    from jaxgrid.rail_stages import magnitudes_to_rail_fluxes

    data = {
        "a": np.array([22.0, 99.0, -99.0, np.nan, 23.0]),
        "ea": np.array([0.1, 26.0, 1.0, 0.1, 0.0]),  # last: zero error -> missing
    }
    cfg = SimpleNamespace(
        bands=["a"],
        err_bands=["ea"],
        nondetect_val=99.0,
        nonobserved_val=-99.0,
        mag_limits={"a": 27.0},
        limit_source="mag_limits",
    )
    F, SF, U = magnitudes_to_rail_fluxes(data, cfg)
    f0 = 10 ** (-0.4 * (22.0 - 31.4))
    np.testing.assert_allclose(F[:2, 0], [f0, 0.0], rtol=1e-12)
    np.testing.assert_allclose(
        SF[:2, 0], [f0 * 0.1 * np.log(10) / 2.5, 10 ** (-0.4 * (27.0 - 31.4))], rtol=1e-12
    )
    assert np.isnan(F[2:, 0]).all() and np.isnan(SF[2:, 0]).all()
    assert U[:, 0].tolist() == [False, True, False, False, False]
    # the error column as the limit (BPZ files); NaN as RAIL's non-detection value
    cfg.limit_source = "err_bands"
    assert magnitudes_to_rail_fluxes(data, cfg)[1][1, 0] == pytest.approx(10 ** (-0.4 * -5.4))
    cfg.nondetect_val, cfg.limit_source = np.nan, "mag_limits"
    F, SF, U = magnitudes_to_rail_fluxes(data, cfg)
    assert U[:, 0].tolist() == [False, False, False, True, False]
    assert F[3, 0] == 0.0 and SF[3, 0] == pytest.approx(10 ** (-0.4 * (27.0 - 31.4)))


# ------------------------------------------------------------------ inform


def test_informer_trains_the_prior_and_leaves_out_unscorable_objects(files, trained):
    """The counts of left-out objects, and the trained prior raises the training
    objects' photo-z log score (mean log p(z_true | photometry)) above HDF-N's: the
    objective L-BFGS decreased (it starts at HDF-N, where the stiffness penalty is 0),
    evaluated here independently through fit_batch's binned PDFs."""
    from jaxgrid.io import read_catalog
    from jaxgrid.photometry import build_template_grid, magnitudes_to_fluxes
    from jaxgrid.prob import BPZPrior
    from jaxgrid.prob.bpz import HDFN
    from jaxgrid.rail_stages import MODEL_KIND

    model = trained.data
    assert model["kind"] == MODEL_KIND
    t = model["training"]
    assert (t["n_objects"], t["n_at_z0"], t["n_outside_grid"], t["n_used"]) == (
        N_TRAIN,
        2,
        1,
        N_TRAIN - 3,
    )
    p = {k: np.asarray(v) for k, v in model["params"].items()}
    assert all(np.isfinite(v).all() for v in p.values())
    assert not np.allclose(p["alpha"], HDFN["alpha"])  # it moved
    names = data_path("photoz", "SED", "CWWSB4.list").read_text().split()
    z_grid = np.round(np.arange(0.0, 3.005, 0.01), 6)
    grid = build_template_grid(
        [data_path("photoz", "SED", n) for n in names],
        [data_path("photoz", "FILTER", f"DC2LSST_{b}.res") for b in BANDS],
        z_grid,
        igm="madau95",
        filter_names=[f"f_{b}" for b in BANDS],
    )
    cat = read_catalog(
        files["train"],
        {f"f_{b}": f"mag_{b}_lsst" for b in BANDS},
        {f"f_{b}": f"mag_err_{b}_lsst" for b in BANDS},
        hdf5_group="photometry",
        grid=grid,
    )
    F, SF, U = magnitudes_to_fluxes(cat.X, cat.SIG, cat.upper)
    with h5py.File(files["train"]) as f:
        z = f["photometry/redshift"][...].astype(np.float64)
    keep = np.arange(z.size) >= 3  # the 3 unscorable objects are the first three
    hdfn = BPZPrior.hdfn(grid, "f_i", flux_zero_point=31.4)
    edges = np.append(z_grid - 0.005, 3.005)
    true_bin = np.searchsorted(edges, z[keep]) - 1

    def log_score(prior):
        pdf = _direct_fit(grid, prior, F[keep], SF[keep], U[keep], edges)["pdf"]
        return np.mean(np.log(pdf[np.arange(pdf.shape[0]), true_bin] * 0.01))

    trained_prior = hdfn.with_params(p["alpha"], p["z0"], p["km"], p["f"], p["k"])
    assert log_score(trained_prior) > log_score(hdfn) + 0.01


def test_informer_without_training_holds_hdfn(files, data_store):
    from jaxgrid.prob.bpz import HDFN
    from rail.estimation.algos.jaxgrid import JaxgridInformer

    train = data_store.read_file("jg_train_h", TableHandle, str(files["train"]))
    inf = JaxgridInformer.make_stage(
        name="jg_inform_h",
        model=str(files["dir"] / "jg_hdfn.pkl"),
        train_prior=False,
        hdf5_groupname="photometry",
    )
    model = inf.inform(train).data
    assert model["training"] == {"trained": False}
    for k, v in HDFN.items():
        np.testing.assert_allclose(model["params"][k], v)


def test_in_memory_interp_output_and_hdfn_prior(files):
    """A small catalog handed over in memory (one RAIL chunk), ``qp.interp`` output,
    RAIL's default 1-sigma limits, the HDF-N prior without a model, no interpolated
    templates (placed before the estimate test: it reuses the training grid's compiled
    step): the same z_mode and PDFs as a direct fit with those settings."""
    from rail.core.common_params import lsst_def_maglims

    from jaxgrid.photometry import build_template_grid, magnitudes_to_fluxes
    from jaxgrid.prob import BPZPrior
    from rail.estimation.algos.jaxgrid import JaxgridEstimator

    u_nd = files["test_cols"]["mag_u_lsst"] == 99.0
    rows = np.flatnonzero((np.arange(u_nd.size) < 30) | u_nd)[:40]  # with u non-detections
    cols = {k: v[rows] for k, v in files["test_cols"].items()}
    est = JaxgridEstimator.make_stage(
        name="jg_mem",
        prior="hdfn",
        pdf_type="interp",
        n_interp=0,
        fit_chunk_size=FIT_CHUNK,
        output_mode="return",
        hdf5_groupname="",
        id_col="id",
    )
    ens = est.estimate(cols).data
    z = np.linspace(0, 3, 301)
    assert ens.npdf == 40
    np.testing.assert_array_equal(np.ravel(ens.ancil["id"]), cols["id"])
    np.testing.assert_allclose(np.trapezoid(ens.pdf(z), z, axis=1), 1.0, rtol=1e-6)
    X = np.column_stack([cols[f"mag_{b}_lsst"] for b in BANDS]).astype(np.float64)
    S = np.column_stack([cols[f"mag_err_{b}_lsst"] for b in BANDS]).astype(np.float64)
    up = X == 99.0
    assert up.sum() >= 5
    lim = np.array([lsst_def_maglims[f"mag_{b}_lsst"] for b in BANDS])
    F, SF, U = magnitudes_to_fluxes(np.where(up, lim[None, :], X), S, up)
    names = data_path("photoz", "SED", "CWWSB4.list").read_text().split()
    grid = build_template_grid(
        [data_path("photoz", "SED", n) for n in names],
        [data_path("photoz", "FILTER", f"DC2LSST_{b}.res") for b in BANDS],
        z,
        igm="madau95",
        filter_names=[f"f_{b}" for b in BANDS],
    )
    prior = BPZPrior.hdfn(grid, "f_i", flux_zero_point=31.4)
    ref = _direct_fit(grid, prior, F, SF, U, np.append(z - 0.005, 3.005))
    np.testing.assert_allclose(np.ravel(ens.ancil["zmode"]), ref["map"], atol=1e-6)
    # qp.interp holds the densities at the grid redshifts, renormalised by the trapezoid
    yvals = np.atleast_2d(ens.objdata["yvals"])
    expect = ref["pdf"] / np.trapezoid(ref["pdf"], z, axis=1)[:, None]
    np.testing.assert_allclose(yvals, expect, rtol=2e-4, atol=1e-6)


# ------------------------------------------------------------------ estimate


def test_estimate_matches_fit_batch_and_compiles_once(files, trained, estimated):
    out, traces, _ = estimated
    assert traces == 1  # 3 RAIL chunks (the tail padded), one compiled step
    ens = out.data
    ref, edges, ids = _reference(files, trained.data)
    assert ens.npdf == N_TEST
    np.testing.assert_array_equal(np.ravel(ens.ancil["id"]), ids)
    np.testing.assert_array_equal(np.ravel(ens.ancil["id"]), files["test_cols"]["id"])
    bins = ens.metadata["bins"].ravel()
    pdfs = np.atleast_2d(ens.objdata["pdfs"])
    np.testing.assert_allclose(bins, edges, atol=1e-9)
    np.testing.assert_allclose((pdfs * np.diff(bins)).sum(1), 1.0, rtol=1e-10)
    np.testing.assert_allclose(pdfs, ref["pdf"], rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(np.ravel(ens.ancil["zmode"]), ref["map"], atol=1e-6)
    np.testing.assert_allclose(np.ravel(ens.ancil["zmean"]), ref["mean"], rtol=1e-5)
    np.testing.assert_allclose(np.ravel(ens.ancil["zmedian"]), ref["median"], rtol=1e-5)
    np.testing.assert_array_equal(np.ravel(ens.ancil["status"]), ref["status"])


def test_rail_evaluators_agree_with_jaxgrid_metrics(files, data_store, estimated):
    from qp.metrics.pit import PIT
    from rail.evaluation.dist_to_point_evaluator import DistToPointEvaluator
    from rail.evaluation.point_to_point_evaluator import PointToPointEvaluator

    from jaxgrid.metrics import photoz_metrics, pit_from_binned, pit_ks

    out, _, _ = estimated
    ens = out.data
    truth = data_store.read_file("jg_truth", TableHandle, str(files["test"]))
    z = files["test_cols"]["redshift"].astype(np.float64)
    zmode = np.ravel(ens.ancil["zmode"])

    p2p = PointToPointEvaluator.make_stage(
        name="jg_p2p",
        metrics=["point_bias", "point_stats_sigma_mad", "point_outlier_rate"],
        force_exact=True,
        hdf5_groupname="photometry",
        point_estimate_key="zmode",
        output=str(files["dir"] / "jg_p2p.hdf5"),
        summary=str(files["dir"] / "jg_p2p_summary.hdf5"),
    )
    summary = p2p.evaluate(ens, truth)["summary"].data
    ez = (zmode - z) / (1 + z)
    q75, q25 = np.percentile(ez, [75, 25])
    cut = max(0.06, 3 * (q75 - q25) / 1.349)  # RAIL's outlier definition
    ours = photoz_metrics(z, zmode)
    assert float(np.ravel(summary["point_bias"])[0]) == pytest.approx(ours["bias"], abs=1e-12)
    assert float(np.ravel(summary["point_stats_sigma_mad"])[0]) == pytest.approx(
        ours["nmad"], rel=1e-9
    )
    assert float(np.ravel(summary["point_outlier_rate"])[0]) == pytest.approx(
        photoz_metrics(z, zmode, outlier_cut=cut)["outlier_fraction"], abs=1e-12
    )

    grid = np.linspace(0, 1, 100)
    d2p = DistToPointEvaluator.make_stage(
        name="jg_d2p",
        metrics=["pit"],
        force_exact=True,
        hdf5_groupname="photometry",
        metric_config={"pit": {"eval_grid": grid}},
        output=str(files["dir"] / "jg_d2p.hdf5"),
        summary=str(files["dir"] / "jg_d2p_summary.hdf5"),
        single_distribution_summary=str(files["dir"] / "jg_d2p_single.hdf5"),
    )
    res = d2p.evaluate(ens, truth)["single_distribution_summary"].data["pit"]
    pit = pit_from_binned(ens.metadata["bins"].ravel(), ens.objdata["pdfs"], z)
    quants = np.quantile(pit, grid)
    _, first = np.unique(quants, return_index=True)
    keep = first[(quants[first] > 0) & (quants[first] < 1)]
    np.testing.assert_allclose(res.objdata["locs"].ravel(), quants[keep], atol=1e-9)
    assert PIT(ens, z).evaluate_PIT_KS().statistic == pytest.approx(pit_ks(pit), abs=1e-9)


# ------------------------------------------------------------------ settings and errors


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(prior="model"), "needs a model written by JaxgridInformer"),
        (dict(prior="hdfn", ref_band="mag_q_lsst"), "`ref_band`"),
        (dict(prior="hdfn", igm="inoue"), "`igm`"),
        (dict(prior="hdfn", pdf_type="samples"), "`pdf_type`"),
        (dict(prior="hdfn", broad_types=[0, 1, 2]), "`broad_types` has 3 entries"),
        (dict(prior="hdfn", mag_limits={"mag_u_lsst": 27.0}), "`mag_limits` has no"),
    ],
)
def test_bad_settings_are_refused_by_name(files, kw, match):
    from rail.estimation.algos.jaxgrid import JaxgridEstimator

    cols = {k: v[:5] for k, v in files["test_cols"].items()}
    est = JaxgridEstimator.make_stage(
        name=f"jg_bad_{abs(hash(match))}", output_mode="return", hdf5_groupname="", **kw
    )
    with pytest.raises(ValueError, match=match):
        est.estimate(cols)


def test_a_model_for_other_templates_is_refused(files, trained):
    from rail.estimation.algos.jaxgrid import JaxgridEstimator

    cols = {k: v[:5] for k, v in files["test_cols"].items()}
    model = dict(trained.data)
    model["recipe"] = {**model["recipe"], "seds": model["recipe"]["seds"][::-1]}
    est = JaxgridEstimator.make_stage(
        name="jg_bad_model", model=model, output_mode="return", hdf5_groupname=""
    )
    with pytest.raises(ValueError, match="trained with seds="):
        est.estimate(cols)
