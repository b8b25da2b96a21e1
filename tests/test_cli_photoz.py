"""The photo-z command line: ``build-grid``, ``train-prior``, ``fit`` with the photo-z
likelihoods and priors, checked against the same recipe run in-process (`jaxgrid.demo`'s
settings) on a subset of the bundled DC2 sample; the host helpers of `jaxgrid.photoz`
against formulas written out here.
"""

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

from jaxgrid import GridFitter, ModelGrid
from jaxgrid.cli import SETTABLE, _type_word, build_parser, main
from jaxgrid.data import DC2_TRAINING
from jaxgrid.io import read_catalog, read_fit_results
from jaxgrid.metrics import photoz_metrics
from jaxgrid.photometry import magnitudes_to_fluxes
from jaxgrid.photoz import (
    build_grid,
    bundled_filters,
    bundled_templates,
    fit_arrays,
    free_normalisation,
    load_prior,
    observable_kind,
    redshift_grid,
    save_prior,
    training_selection,
)
from jaxgrid.prob import BPZPrior, ScaledGaussianLikelihood

BANDS = "ugrizy"
EDGES = np.linspace(-0.005, 3.005, 302)  # what --stats z:-0.005:3.005:301 gives
DEMO_FIT = ["--inputs", "fluxes", "--likelihood", "scaled", "--amplitude-mode", "profile",
            "--nondetection", "zero_flux", "--error-floor-mag", "0.1", "--prior", "bpz-hdfn",
            "--stats", "z:-0.005:3.005:301", "--set", "posterior_keep_mass=1",
            "--set", "return_pdf_for_stats=true", "--no-candidates", "--quiet"]  # fmt: skip


def jaxgrid(*args, cwd=None):
    proc = subprocess.run(
        [sys.executable, "-m", "jaxgrid", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def one_line_error(rc, err, *needles):
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxgrid: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Every 40th DC2 galaxy (256), one true z moved next to 0 and one beyond the grid;
    a [columns] config for it; a small flux grid built in-process (no interpolation)."""
    folder = tmp_path_factory.mktemp("cli_photoz")
    cat = folder / "sub.h5"
    with h5py.File(DC2_TRAINING) as f, h5py.File(cat, "w") as g:
        for k in f["photometry"]:
            g[f"photometry/{k}"] = f[f"photometry/{k}"][::40]
        z = g["photometry/redshift"][...]
        z[3], z[7] = 0.003, 3.4
        g["photometry/redshift"][...] = z
    obs = ", ".join(f'flux_{b} = "mag_{b}_lsst"' for b in BANDS)
    err = ", ".join(f'flux_{b} = "mag_err_{b}_lsst"' for b in BANDS)
    cfg = folder / "dc2.toml"
    cfg.write_text(
        f'[columns]\nhdf5_group = "photometry"\nid = "id"\nobservables = {{ {obs} }}\n'
        f"errors = {{ {err} }}\n"
    )
    grid = build_grid(
        bundled_templates(),
        bundled_filters(),
        redshift_grid(0.0, 3.0, 0.02),
        igm=None,
        filter_names=[f"flux_{b}" for b in BANDS],
        broad_types=(0, 1, 1, 2, 2, 2, 2, 2),
    )
    grid.to_hdf5(folder / "small.h5")
    return {"folder": folder, "catalog": cat, "config": cfg, "grid": folder / "small.h5"}


def fluxes(catalog):
    """The subset as the demo reads it: `read_catalog` + `magnitudes_to_fluxes`."""
    c = read_catalog(
        catalog,
        {f"flux_{b}": f"mag_{b}_lsst" for b in BANDS},
        {f"flux_{b}": f"mag_err_{b}_lsst" for b in BANDS},
        id_col="id",
        hdf5_group="photometry",
    )
    return magnitudes_to_fluxes(c.X, c.SIG, c.upper)


def in_process_zmode(grid, prior, catalog):
    """`run_photoz_demo`'s fit (same likelihood, prior, keep mass, no candidates) on the
    catalog, in-process: (zmode, pdf)."""
    F, SF, upper = fluxes(catalog)
    lik = ScaledGaussianLikelihood(mode="profile", nondetection="zero_flux", error_floor_mag=0.1)
    fitter = GridFitter(grid, lik, prior, use_standardised=False)
    chunks = list(
        fitter.fit_batch(
            F,
            SF,
            upper_limits=upper,
            stats_for=["z"],
            stats_bins=[EDGES],
            return_pdf_for_stats=True,
            posterior_keep_mass=1.0,
            return_candidates=False,
            return_mode="chunks",
            verbose=False,
        )
    )
    zmode = np.concatenate([c["map"][:, 0] for c in chunks]).astype(np.float64)
    return zmode, np.concatenate([c["pdf"][0] for c in chunks])


def z_true(catalog):
    with h5py.File(catalog) as f:
        return f["photometry/redshift"][...].astype(np.float64)


# ----------------------------------------------------------------- acceptance
def test_build_grid_and_fit_reproduce_the_demo_recipe(files, tmp_path):
    """build-grid --bundled --n-interp 5 writes the demo's grid; fit with the demo's
    settings gives, per object, the zmode and PDF of the same fit run in-process, hence
    the same bias, NMAD and outlier fraction (float32 tolerance)."""
    from jaxgrid.demo import photoz_setup

    grid_file = tmp_path / "grid.h5"
    jaxgrid("build-grid", "--bundled", "--n-interp", 5, "--out", grid_file)
    demo_grid = photoz_setup(n_interp=5)[0]
    grid = ModelGrid.load_auto(grid_file)
    np.testing.assert_array_equal(np.asarray(grid.observables), np.asarray(demo_grid.observables))
    np.testing.assert_array_equal(np.asarray(grid.targets), np.asarray(demo_grid.targets))
    assert grid.observable_names == demo_grid.observable_names == [f"flux_{b}" for b in BANDS]
    assert observable_kind(grid) == "flux" and grid.meta["normalisation"] == "free"

    out = tmp_path / "pz.h5"
    jaxgrid("fit", "--grid", grid_file, "--catalog", files["catalog"], "--config",
            files["config"], "--out", out, *DEMO_FIT)  # fmt: skip
    res = read_fit_results(out, "/fit_batch")
    assert sum(len(c) for c in res.get("candidates/candidates", [])) == 0  # not stored
    prior = BPZPrior.hdfn(demo_grid, "flux_i", flux_zero_point=31.4)
    zmode, pdf = in_process_zmode(demo_grid, prior, files["catalog"])
    np.testing.assert_allclose(res["stats/z/map"], zmode, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(res["stats/z/posts_target"], pdf, rtol=1e-4, atol=1e-5)
    zt = z_true(files["catalog"])
    cli, ref = photoz_metrics(zt, res["stats/z/map"]), photoz_metrics(zt, zmode)
    for key in ("bias", "nmad", "outlier_fraction"):
        assert cli[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-7)
    assert cli["n"] == 256 and ref["nmad"] < 0.07  # the demo's quality on the subset


def test_train_prior_then_fit_with_the_prior_file(files, tmp_path, capsys):
    """train-prior leaves out (with a message) the object whose true z is nearest the
    grid's z = 0 and the one beyond the grid, trains what fit_photoz trains in-process,
    and fit --prior FILE fits with exactly that prior. (In-process ``main``: the
    subprocess path is the test above; here the compiled functions are shared.)"""
    prior_file = tmp_path / "prior.json"
    train = ["--grid", files["grid"], "--catalog", files["catalog"], "--config", files["config"],
             "--inputs", "fluxes", "--likelihood", "scaled", "--nondetection", "zero_flux",
             "--error-floor-mag", "0.1"]  # fmt: skip
    rc, out, err = run(capsys, "train-prior", *train, "--out", prior_file, "--maxiter", 8)
    assert rc == 0, err
    assert "1 objects left out: true z nearest the grid's z = 0" in out
    assert "1 objects left out: true z outside the grid's redshifts [0, 3]" in out
    assert "trained on 254 of 256 objects" in out
    record = json.loads(prior_file.read_text())
    assert record["trained_on"]["excluded"] == {"not_finite": 0, "outside": 1, "nearest_z0": 1}
    assert record["trained_on"]["n_used"] == 254 and record["ref_observable"] == "flux_i"

    grid = ModelGrid.load_auto(files["grid"])
    F, SF, upper = fluxes(files["catalog"])
    zt = z_true(files["catalog"])
    keep = np.ones(zt.size, bool)
    keep[[3, 7]] = False
    start = BPZPrior.hdfn(grid, "flux_i", flux_zero_point=31.4)
    lik = ScaledGaussianLikelihood(mode="profile", nondetection="zero_flux", error_floor_mag=0.1)
    trainer = GridFitter(grid, lik, start, use_standardised=False)
    ref = start.fit_photoz(
        trainer, F[keep], SF[keep], zt[keep], upper[keep], maxiter=8, stiffness=0.2
    )
    loaded, _ = load_prior(prior_file, grid)
    for name in ("alpha", "z0", "km", "f", "k"):
        np.testing.assert_allclose(getattr(loaded, name), getattr(ref, name), rtol=1e-5)
    assert not np.allclose(loaded.z0, start.z0)  # it trained

    out = tmp_path / "fit.h5"
    fit = [a if a != "bpz-hdfn" else str(prior_file) for a in DEMO_FIT]
    rc, _, err = run(capsys, "fit", "--grid", files["grid"], "--catalog", files["catalog"],
                     "--config", files["config"], "--out", out, *fit)  # fmt: skip
    assert rc == 0, err
    zmode, _ = in_process_zmode(grid, loaded, files["catalog"])
    np.testing.assert_allclose(read_fit_results(out)["stats/z/map"], zmode, rtol=1e-6, atol=1e-6)
    # the trained prior's redshifts are not the HDF-N prior's
    hdfn, _ = in_process_zmode(grid, start, files["catalog"])
    assert not np.array_equal(zmode, hdfn)


# ----------------------------------------------------------------- prior files
def test_prior_file_round_trip_is_exact(tmp_path):
    g = build_grid(bundled_templates()[:4], bundled_filters("gri"), [0.0, 0.5, 1.0],
                   filter_names=["flux_g", "flux_r", "flux_i"])  # fmt: skip
    params = {"alpha": (2.1, 1.7, 0.9), "z0": (0.4, 0.35, 0.07), "km": (0.09, 0.06, 0.13),
              "f": (0.3, 0.45), "k": (0.41, 0.12)}  # fmt: skip
    prior = BPZPrior.for_grid(g, "flux_r", params, broad_types=(0, 1, 2, 2),
                              flux_zero_point=28.9, m0_missing=24.0)  # fmt: skip
    path = tmp_path / "p.json"
    save_prior(prior, path, {"note": "test"})
    back, record = load_prior(path, g)
    for name in ("alpha", "z0", "km", "f", "k", "z_grid", "broad_of_template", "n_per_broad"):
        a, b = np.asarray(getattr(prior, name)), np.asarray(getattr(back, name))
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    for name in ("ref_observable", "z_col", "type_col", "flux_zero_point", "m0_missing"):
        assert getattr(back, name) == getattr(prior, name)
    assert record["trained_on"] == {"note": "test"}
    # the fit's inputs may differ from the training's: magnitudes, another band
    mags, _ = load_prior(path, g, ref_observable="flux_i", flux_zero_point=None)
    assert mags.flux_zero_point is None and mags.ref_observable == "flux_i"
    np.testing.assert_array_equal(np.asarray(mags.k), np.asarray(prior.k))


@pytest.mark.parametrize(
    "text,needle",
    [("not json", "is not JSON"), ('{"a": 1}', "not a jaxgrid prior file"),
     ('{"format": "jaxgrid-bpz-prior", "version": 7}', "version 7")],
)  # fmt: skip
def test_bad_prior_files_are_one_line(files, tmp_path, capsys, text, needle):
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    rc, _, err = run(capsys, "fit", "--grid", files["grid"], "--catalog", files["catalog"],
                     "--config", files["config"], "--out", tmp_path / "o.h5", "--inputs",
                     "fluxes", "--prior", bad, "--dry-run")  # fmt: skip
    one_line_error(rc, err, str(bad), needle)


# ----------------------------------------------------------------- kinds and refusals
def test_observable_kind_rule():
    obs, tgt = np.ones((2, 2)), np.zeros((2, 1))

    def grid(names, meta=None):
        return ModelGrid(obs, tgt, names, ["z"], meta=meta)

    assert observable_kind(grid(["a", "b"], {"observable_kind": "magnitude"})) == "magnitude"
    assert observable_kind(grid(["a", "b"], {"filters": ["a", "b"], "output": "mag"})) == (
        "magnitude"
    )
    assert observable_kind(grid(["FLUX_g", "f_r"])) == "flux"
    assert observable_kind(grid(["mag_g", "mag_r"])) == "magnitude"
    assert observable_kind(grid(["mag_g", "flux_r"])) is None
    assert observable_kind(grid(["g", "r"])) is None
    assert free_normalisation(grid(["a", "b"], {"normalisation": "free"}))
    assert free_normalisation(grid(["a", "b"], {"templates": ["x"], "filters": ["a", "b"],
                                                "output": "flux"}))  # fmt: skip
    assert not free_normalisation(grid(["a", "b"], {"model": "ssp"}))


def test_training_selection_counts_each_reason():
    zg = np.round(np.arange(0.0, 1.0001, 0.1), 6)
    keep, why = training_selection([np.nan, 0.04, 0.06, 0.5, 1.04, 1.2, -0.2], zg)
    np.testing.assert_array_equal(keep, [False, False, True, True, True, False, False])
    assert why == {"not_finite": 1, "outside": 2, "nearest_z0": 1}
    # against the brute-force nearest grid point, on random z (ties exact on the grid)
    rng = np.random.default_rng(3)
    zg = np.round(np.arange(0.0, 3.0001, 0.01), 6)
    z = np.concatenate([rng.uniform(-0.1, 3.1, 4000), zg, [np.inf, -np.inf, np.nan]])
    keep, why = training_selection(z, zg)
    with np.errstate(invalid="ignore"):
        near = zg[np.abs(np.nan_to_num(z)[:, None] - zg[None, :]).argmin(1)]
        inside = np.isfinite(z) & (z >= -0.005) & (z <= 3.005)
    np.testing.assert_array_equal(keep, inside & (near > 0))
    assert why["not_finite"] == 3 and why["outside"] == int(np.sum(np.isfinite(z) & ~inside))


def test_fit_arrays_against_the_formulas():
    X = np.array([[20.0, 25.0, 24.0]])
    SIG = np.array([[0.02, 0.3, 1.0857]])
    up = np.array([[False, False, True]])
    # fluxes: f = 10^(-0.4 (m - 31.4)) nJy, s_f = f s_m ln10 / 2.5; the limit: 0 +- f(24)
    f = 10.0 ** (-0.4 * (X - 31.4))
    sf = f * SIG * np.log(10) / 2.5
    lim = f[0, 2]
    F, S, U = fit_arrays(X, SIG, up, inputs="fluxes", likelihood="scaled")
    np.testing.assert_allclose(F, [[f[0, 0], f[0, 1], 0.0]], rtol=1e-12)
    np.testing.assert_allclose(S, [[sf[0, 0], sf[0, 1], lim]], rtol=1e-12)
    np.testing.assert_array_equal(U, up)
    # gaussian, censored in fluxes: the censored term at the limit, width the limit
    F, S, U = fit_arrays(X, SIG, up, inputs="fluxes", likelihood="gaussian")
    assert F[0, 2] == pytest.approx(lim) and S[0, 2] == pytest.approx(lim) and U[0, 2]
    # gaussian, zero flux: 0 +- limit as a measurement; the 0.1 mag floor in quadrature
    F, S, U = fit_arrays(X, SIG, up, inputs="fluxes", likelihood="gaussian",
                         nondetection="zero_flux", error_floor_mag=0.1)  # fmt: skip
    assert U is None and F[0, 2] == 0.0 and S[0, 2] == pytest.approx(lim)
    floor = f[0, :2] * 0.1 * np.log(10) / 2.5
    np.testing.assert_allclose(S[0, :2], np.sqrt(sf[0, :2] ** 2 + floor**2), rtol=1e-12)
    # magnitudes: as read, floor in magnitudes on detected bands only
    M, S, U = fit_arrays(X, SIG, up, inputs="magnitudes", likelihood="gaussian",
                         error_floor_mag=0.1)  # fmt: skip
    np.testing.assert_array_equal(M, X)
    np.testing.assert_allclose(S, [[np.hypot(0.02, 0.1), np.hypot(0.3, 0.1), 1.0857]])
    # flux columns: a limit value becomes 0 +- that value
    F, S, U = fit_arrays([[5.0, 2.0]], [[0.5, 1.0857]], [[False, True]],
                         inputs="flux-columns", likelihood="scaled")  # fmt: skip
    np.testing.assert_array_equal(F, [[5.0, 0.0]])
    np.testing.assert_array_equal(S, [[0.5, 2.0]])
    with pytest.raises(ValueError, match="needs flux inputs: pass --inputs fluxes"):
        fit_arrays(X, SIG, up, inputs="magnitudes", likelihood="scaled")
    with pytest.raises(ValueError, match="zero_flux"):
        fit_arrays(X, SIG, up, inputs="magnitudes", likelihood="gaussian",
                   nondetection="zero_flux")  # fmt: skip


@pytest.mark.parametrize("dry", [True, False])
def test_magnitudes_on_a_flux_grid_are_refused(files, tmp_path, capsys, dry):
    out = tmp_path / "o.h5"
    rc, _, err = run(capsys, "fit", "--grid", files["grid"], "--catalog", files["catalog"],
                     "--config", files["config"], "--out", out, "--quiet",
                     *(["--dry-run"] if dry else []))  # fmt: skip
    one_line_error(rc, err, "the grid holds fluxes", "--inputs fluxes")
    assert not out.exists()


def test_fluxes_on_a_magnitude_grid_refused_and_template_magnitudes_warned(files, tmp_path,
                                                                           capsys):  # fmt: skip
    grid = tmp_path / "mag.fits"
    rc, _, err = run(capsys, "build-grid", "--bundled", "--output", "mag", "--z-min", "0.1",
                     "--z-max", "1", "--dz", "0.1", "--out", grid)  # fmt: skip
    assert rc == 0, err
    assert ModelGrid.load_auto(grid).observable_names == [f"mag_{b}" for b in BANDS]
    mag_cfg = tmp_path / "mag.toml"
    mag_cfg.write_text(files["config"].read_text().replace("flux_", "mag_"))
    base = ["fit", "--grid", grid, "--catalog", files["catalog"], "--config", mag_cfg,
            "--out", tmp_path / "o.h5", "--quiet", "--dry-run"]  # fmt: skip
    rc, _, err = run(capsys, *base, "--inputs", "fluxes")
    one_line_error(rc, err, "the grid holds magnitudes", "--inputs magnitudes")
    rc, out, err = run(capsys, *base)
    assert rc == 0 and "dry run" in out
    assert err.startswith("jaxgrid: warning: the grid's normalisation is free") and (
        "--likelihood scaled" in err
    )
    rc, _, err = run(capsys, *base, "--likelihood", "scaled")
    one_line_error(rc, err, "--likelihood scaled", "flux inputs")


@pytest.mark.parametrize(
    "extra,needles",
    [
        (["--amplitude-mode", "marginal"], ["--amplitude-mode", "--likelihood scaled"]),
        (["--prior", "nope.json"], ["--prior 'nope.json'", "bpz-hdfn"]),
        (["--prior", "bpz-hdfn", "--prior-band", "flux_q"], ["--prior-band 'flux_q'"]),
        (["--limit-kind", "magnitude"], ["--limit-kind magnitude contradicts --inputs fluxes"]),
        (["--prior", "bpz-hdfn", "--broad-types", "0,1,x"], ["--broad-types"]),
    ],
)
def test_model_option_mistakes_are_one_line(files, tmp_path, capsys, extra, needles):
    rc, _, err = run(capsys, "fit", "--grid", files["grid"], "--catalog", files["catalog"],
                     "--config", files["config"], "--out", tmp_path / "o.h5", "--inputs",
                     "fluxes", "--dry-run", *extra)  # fmt: skip
    one_line_error(rc, err, *needles)


def test_build_grid_from_files_with_a_z_file_and_its_mistakes(tmp_path, capsys):
    from jaxgrid.data import data_path

    zfile = tmp_path / "z.txt"
    zfile.write_text("# z\n0.1\n0.5\n1.0\n")
    out = tmp_path / "g.h5"
    lst = data_path("photoz", "SED", "CWWSB4.list")
    rc, msg, err = run(capsys, "build-grid", "--seds", lst, "--filters",
                       *bundled_filters("gr"), "--z-file", zfile, "--igm", "none",
                       "--out", out)  # fmt: skip
    assert rc == 0, err and "8 templates" in msg
    g = ModelGrid.load_auto(out)
    assert g.n_models == 24 and g.observable_names == ["DC2LSST_g", "DC2LSST_r"]
    assert sorted(set(np.asarray(g.get_target("z")).round(6))) == [0.1, 0.5, 1.0]
    assert g.meta["igm"] is None and g.meta["observable_kind"] == "flux"
    rc, _, err = run(capsys, "build-grid", "--bundled", "--out", out)
    one_line_error(rc, err, "exists", "--overwrite")
    rc, _, err = run(capsys, "build-grid", "--out", tmp_path / "x.h5")
    one_line_error(rc, err, "--seds and --filters", "--bundled")
    rc, _, err = run(capsys, "build-grid", "--bundled", "--dz", "0", "--out", tmp_path / "y.h5")
    one_line_error(rc, err, "dz > 0")


# ----------------------------------------------------------------- run files, help, version
def test_qp_and_fits_run_files_are_small_and_transient(files, tmp_path, capsys, monkeypatch):
    base = ["fit", "--grid", files["grid"], "--catalog", files["catalog"], "--config",
            files["config"], "--inputs", "fluxes", "--likelihood", "scaled", "--stats",
            "z:0:3:30", "--set", "return_pdf_for_stats=true", "--quiet"]  # fmt: skip
    qp_out = tmp_path / "pz.h5"
    run_file = tmp_path / "pz.qp-run.h5"
    rc, out, err = run(capsys, *base, "--out", qp_out, "--format", "qp")
    assert rc == 0, err
    assert (tmp_path / "pz_z.qp.hdf5").exists() and not run_file.exists()
    rc, out, err = run(capsys, *base, "--out", qp_out, "--format", "qp", "--overwrite",
                       "--keep-run-file")  # fmt: skip
    assert rc == 0 and f"run file {run_file} kept" in out
    with h5py.File(run_file) as f:  # no candidate lists: they are not exported
        lists = f["fit_batch/candidates/candidates"][...] if "fit_batch/candidates" in f else []
        assert sum(len(c) for c in lists) == 0
    fits = tmp_path / "pz.fits"
    rc, _, err = run(capsys, *base, "--out", fits, "--format", "fits")
    assert rc == 0 and fits.exists() and not (tmp_path / "pz.fits-run.h5").exists()

    # interrupted before the export: the run file stays, and --resume finishes the job
    real = GridFitter.fit_batch

    def interrupted(self, *a, **kw):
        real(self, *a, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(GridFitter, "fit_batch", interrupted)
    out2 = tmp_path / "b.h5"
    with pytest.raises(KeyboardInterrupt):
        main([str(a) for a in [*base, "--out", out2, "--format", "qp"]])
    assert (tmp_path / "b.qp-run.h5").exists() and not (tmp_path / "b_z.qp.hdf5").exists()
    monkeypatch.setattr(GridFitter, "fit_batch", real)
    rc, _, err = run(capsys, *base, "--out", out2, "--format", "qp", "--resume")
    assert rc == 0, err
    assert (tmp_path / "b_z.qp.hdf5").exists() and not (tmp_path / "b.qp-run.h5").exists()


def test_version_and_fit_help_lists_every_setting(capsys):
    from jaxgrid import __version__

    with pytest.raises(SystemExit):
        build_parser().parse_args(["--version"])
    assert capsys.readouterr().out.strip() == f"jaxgrid {__version__}"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["fit", "--help"])
    text = capsys.readouterr().out
    for key, kind in SETTABLE.items():
        line = next(ln for ln in text.splitlines() if ln.split()[:1] == [key])
        assert _type_word(kind) in line, line
