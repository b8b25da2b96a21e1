"""The command line, driven in subprocesses as a user would."""

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from astropy.table import Table

from jaxgrid.core.bins import DEFAULT_N_EDGES
from jaxgrid.demo import make_demo_files


def jaxgrid(*args, cwd=None, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "jaxgrid", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def fit_inputs(folder):
    """``fit --grid ... --catalog ...`` for the demo files."""
    return ["fit", "--grid", folder / "grid.h5", "--catalog", folder / "catalog.fits"]


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo")
    make_demo_files(folder, n_objects=300)
    return folder


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "jaxgrid"
    assert script.exists()
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "fit" in out.stdout and "demo" in out.stdout


def test_photoz_demo_runs_and_prints_metrics(tmp_path):
    proc = jaxgrid("demo", cwd=tmp_path)
    assert "10,225 DC2 galaxies" in proc.stdout and "sigma_NMAD" in proc.stdout
    assert "PIT: KS" in proc.stdout
    import qp

    ens = qp.read(str(tmp_path / "jaxgrid-demo" / "photoz_z.qp.hdf5"))
    assert ens.npdf == 10_225 and "zmode" in ens.ancil
    nmad = float(proc.stdout.split("sigma_NMAD ")[1].split(",")[0])
    assert nmad < 0.07


def test_synthetic_demo_runs_and_reports(tmp_path):
    proc = jaxgrid("demo", "--synthetic", "--n", 400, cwd=tmp_path)
    assert "400 objects" in proc.stdout and "68% interval coverage" in proc.stdout
    out = tmp_path / "jaxgrid-demo" / "fit.h5"
    assert str(out) in proc.stdout
    with h5py.File(out) as f:
        assert (f["fit_batch/index/written"][...] == 1).all()
        assert f["fit_batch/stats/logM/posts_target"].shape == (400, 100)
    # the fit is good: medians near the truth
    truth = Table.read(tmp_path / "jaxgrid-demo" / "catalog.fits")["true_logM"]
    with h5py.File(out) as f:
        med = f["fit_batch/stats/logM/median"][...]
    assert np.median(np.abs(med - truth)) < 0.15


def test_fit_hdf5_and_info(demo_files, tmp_path):
    out = tmp_path / "fit.h5"
    proc = jaxgrid(
        *fit_inputs(demo_files),
        "--out",
        out,
        "--stats",
        "logM:7:12:50",
        "log_age",
        "--binner",
        "kdtree",
        "--k",
        128,
        "--set",
        "posterior_keep_mass=0.9",
        "--quiet",
        "--id-col",
        "id",
    )
    assert "300 objects written" in proc.stdout
    with h5py.File(out) as f:
        g = f["fit_batch"]
        assert g["stats/logM/bins"].shape == (51,)
        assert g["stats/log_age/bins"].shape == (DEFAULT_N_EDGES,)
        assert '"posterior_keep_mass": 0.9' in g.attrs["configuration"]
        assert '"target_k": 128' in g.attrs["configuration"]
    info = jaxgrid("info", out)
    assert "300 rows, 300 written" in info.stdout
    ginfo = jaxgrid("info", demo_files / "grid.h5")
    assert "13,464 models, 5 observables, 3 targets" in ginfo.stdout


def test_fit_fits_qp_resume_and_config(demo_files, tmp_path):
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(
        'stats = ["logM:7:12:40"]\n[fit]\nposterior_keep_min_candidates = 32\n'
        "[binner]\ntarget_k = 64\n"
    )
    out = tmp_path / "res.fits"
    jaxgrid(
        *fit_inputs(demo_files),
        "--out",
        out,
        "--config",
        cfg,
        "--binner",
        "kdtree",
        "--format",
        "fits",
        "--quiet",
        "--id-col",
        "id",
    )
    t = Table.read(out)
    assert len(t) == 300 and "logM_median" in t.colnames and list(t["id"][:3]) == [1, 2, 3]
    qp_out = tmp_path / "res.h5"
    proc = jaxgrid(
        *fit_inputs(demo_files),
        "--out",
        qp_out,
        "--config",
        cfg,
        "--format",
        "qp",
        "--quiet",
    )
    import qp

    ens = qp.read(str(tmp_path / "res_logM.qp.hdf5"))
    assert ens.npdf == 300 and "logM_mode" in ens.ancil and "zmode" not in ens.ancil
    assert "res_logM.qp.hdf5" in proc.stdout
    assert f"written to {tmp_path / 'res_logM.qp.hdf5'} (qp)" in proc.stdout
    assert not qp_out.exists()  # --format qp writes its per-target files, not --out
    # the qp file exists: not replaced without --overwrite (before any fit)
    again = [*fit_inputs(demo_files), "--out", qp_out, "--config", cfg, "--format", "qp"]
    proc = jaxgrid(*again, "--quiet", check=False)
    assert proc.returncode == 2 and "res_logM.qp.hdf5 exists; pass --overwrite" in proc.stderr
    assert jaxgrid(*again, "--quiet", "--overwrite").returncode == 0
    # resume: a finished file resumes to a no-op; a different setting is refused
    h5 = tmp_path / "r.h5"
    args = [
        *fit_inputs(demo_files),
        "--out",
        h5,
        "--quiet",
    ]
    jaxgrid(*args)
    jaxgrid(*args, "--resume")
    bad = jaxgrid(*args, "--resume", "--set", "posterior_keep_mass=0.5", check=False)
    assert bad.returncode == 2 and "different configuration" in bad.stderr


def test_dry_run_writes_nothing(demo_files, tmp_path):
    out = tmp_path / "dry.h5"
    proc = jaxgrid(
        *fit_inputs(demo_files),
        "--out",
        out,
        "--dry-run",
        "--stats",
        "logM",
    )
    assert "dry run" in proc.stdout and "300 objects" in proc.stdout and not out.exists()


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--catalog", "missing.fits"], "no such catalog file"),
        (["--observables", "mag_g", "mag_r"], "do not match the grid"),
        (
            [
                "--errors",
                "mag_u=nope",
                "mag_g=mag_g_err",
                "mag_r=mag_r_err",
                "mag_i=mag_i_err",
                "mag_z=mag_z_err",
            ],
            "unknown column 'nope'",
        ),
        (["--stats", "mass:1:2:3"], "unknown target 'mass'"),
        (["--stats", "logM:1:2"], "TARGET:LO:HI:NBINS"),
        (["--set", "keep=1"], "unknown setting"),
        (["--set", "posterior_keep_mass=2"], "posterior_keep_mass"),
    ],
)
def test_user_errors_are_one_line_exit_2(demo_files, tmp_path, args, msg):
    base = {
        "--grid": str(demo_files / "grid.h5"),
        "--catalog": str(demo_files / "catalog.fits"),
        "--out": str(tmp_path / "o.h5"),
    }
    for i, a in enumerate(args):
        if a in base and i + 1 < len(args):
            base[a] = args[i + 1]
    rest = [a for i, a in enumerate(args) if a not in base and (i == 0 or args[i - 1] not in base)]
    flat = [x for kv in base.items() for x in kv]
    proc = jaxgrid("fit", *flat, *rest, "--quiet", check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxgrid: error:") and msg in lines[0]
    assert "Traceback" not in proc.stderr


def test_debug_shows_traceback(tmp_path):
    proc = jaxgrid("--debug", "info", tmp_path / "none.h5", check=False)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_info_unknown_file_type(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("a,b\n")
    proc = jaxgrid("info", p, check=False)
    assert proc.returncode == 2 and "supported suffixes" in proc.stderr


def test_photoz_demo_from_python_matches_its_output_file(tmp_path):
    """`jaxgrid.demo.photoz()` summary metrics == metrics recomputed from the HDF5 file
    it wrote and the catalog's true redshifts (independent of the demo's own arrays)."""
    from jaxgrid.data import DC2_TRAINING
    from jaxgrid.demo import photoz
    from jaxgrid.io import read_fit_results
    from jaxgrid.metrics import photoz_metrics

    summary = photoz(tmp_path, verbose=False, echo=None)
    res = read_fit_results(summary["output"], "/photoz")
    with h5py.File(DC2_TRAINING) as f:
        z_true = f["photometry/redshift"][...].astype(np.float64)
    m = photoz_metrics(z_true, res["stats/z/map"])
    for key in ("bias", "nmad", "outlier_fraction"):
        assert summary[key] == pytest.approx(m[key], rel=1e-6)
    assert summary["n_objects"] == 10_225 and (res["index/written"] == 1).all()
    assert summary["nmad"] < 0.0559 and summary["outlier_fraction"] < 0.087  # BPZ's values
