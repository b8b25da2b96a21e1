"""The bundled demo: a synthetic stellar-population-like grid and catalog.

``jaxgrid demo`` (or `run_demo`) writes a grid and a catalog into a folder,
fits the catalog with KD-tree preselection, streams the results to HDF5 and
prints throughput, status counts and how well the known true targets are
recovered. Everything is generated deterministically (seeded): no download.

The toy model: targets ``logM`` (7-12), ``log_age`` (8-10.1, log yr) and
``Z`` (metallicity, 0.1-2.5 solar); five AB magnitudes ``mag_u..mag_z`` that
brighten with mass and redden with age and metallicity (smooth, non-linear;
not a real stellar population model, only a stand-in until the photo-z demo
lands).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from .grid import ModelGrid

__all__ = [
    "synthetic_magnitudes",
    "make_demo_files",
    "run_demo",
    "photoz_setup",
    "run_photoz_demo",
    "photoz",
]

BANDS = ("mag_u", "mag_g", "mag_r", "mag_i", "mag_z")
_WAVE = np.array([0.36, 0.47, 0.62, 0.75, 0.87])  # band centres, micron


def synthetic_magnitudes(targets: np.ndarray) -> np.ndarray:
    """(M, 3) targets (logM, log_age, Z) -> (M, 5) toy AB magnitudes."""
    logm, log_age, z = (np.asarray(targets, np.float64)[:, i] for i in range(3))
    colour = 0.9 * (log_age - 8.0) + 0.4 * np.log10(z) + 0.15 * (log_age - 9.0) ** 2
    slope = (0.87 - _WAVE) / 0.51  # 1 in u, 0 in z
    base = 30.0 - 2.5 * (logm - 7.0) + 0.6 * (log_age - 8.0) + 0.05 * np.sin(3.0 * logm)
    return base[:, None] + 1.8 * colour[:, None] * slope[None, :]


def make_demo_files(folder: str | Path, n_objects: int = 3000, seed: int = 7) -> dict[str, Any]:
    """Write ``grid.h5`` and ``catalog.fits`` into ``folder``; return paths and truth."""
    from astropy.table import Table

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    logm = np.linspace(7.0, 12.0, 51)
    log_age = np.linspace(8.0, 10.1, 22)
    met = np.geomspace(0.1, 2.5, 12)
    t = np.stack(np.meshgrid(logm, log_age, met, indexing="ij"), axis=-1).reshape(-1, 3)
    grid = ModelGrid(
        synthetic_magnitudes(t),
        t,
        list(BANDS),
        ["logM", "log_age", "Z"],
        meta={
            "model": "jaxgrid synthetic demo",
            "units": {"logM": "dex(solMass)", "log_age": "dex(yr)"},
        },
    )
    grid.to_hdf5(folder / "grid.h5", overwrite=True)

    rng = np.random.default_rng(seed)
    truth = np.column_stack(
        [
            rng.uniform(8.0, 11.5, n_objects),
            rng.uniform(8.2, 10.0, n_objects),
            np.exp(rng.uniform(np.log(0.15), np.log(2.2), n_objects)),
        ]
    )
    mags = synthetic_magnitudes(truth)
    err = 0.02 + 0.03 * np.exp((mags - 22.0) / 2.0)
    obs = mags + rng.normal(0.0, 1.0, mags.shape) * err
    # catalog conventions: some bands not observed (-99), faint u non-detections (99)
    unobs = rng.uniform(size=mags.shape) < 0.03
    obs[unobs] = -99.0
    faint = (mags[:, 0] > 27.5) & ~unobs[:, 0]
    obs[faint, 0] = 99.0
    err[faint, 0] = 27.5  # the 1-sigma limiting magnitude
    cols = {"id": np.arange(1, n_objects + 1)}
    for j, b in enumerate(BANDS):
        cols[b] = obs[:, j]
        cols[f"{b}_err"] = err[:, j]
    for j, name in enumerate(("logM", "log_age", "Z")):
        cols[f"true_{name}"] = truth[:, j]
    Table(cols).write(folder / "catalog.fits", overwrite=True)
    return {"grid": folder / "grid.h5", "catalog": folder / "catalog.fits", "truth": truth}


def run_demo(
    folder: str | Path = "jaxgrid-demo", n_objects: int = 3000, verbose: bool = True, echo=print
) -> dict[str, Any]:
    """Make the demo files, fit them, write ``fit.h5``; return a summary dict."""
    from .binning import KDTreeBinner
    from .core.status import Status, is_bad
    from .fitter import GridFitter
    from .io import read_catalog, results_to_table
    from .prob import GaussianProductLikelihood

    t0 = time.perf_counter()
    files = make_demo_files(folder, n_objects)
    grid = ModelGrid.from_hdf5(files["grid"])
    cat = read_catalog(
        files["catalog"], list(BANDS), [f"{b}_err" for b in BANDS], id_col="id", grid=grid
    )
    fitter = GridFitter(grid, GaussianProductLikelihood(limit_kind="magnitude"))
    binner = KDTreeBinner(dims=list(BANDS[1:]), target_k=512).fit(grid)
    out = Path(folder) / "fit.h5"
    stats = ["logM", "log_age"]
    bins = [np.linspace(7.0, 12.0, 101), np.linspace(8.0, 10.1, 85)]
    t1 = time.perf_counter()
    table = fitter.fit_batch(
        cat.X,
        cat.SIG,
        binner=binner,
        upper_limits=cat.upper,
        stats_for=stats,
        stats_bins=bins,
        return_mode="table",
        ids=cat.ids,
        output_hdf5_path=out,
        output_hdf5_overwrite=True,
        return_pdf_for_stats=True,
        verbose=verbose,
    )
    t_fit = time.perf_counter() - t1
    truth = files["truth"]
    ok = ~is_bad(np.asarray(table["status"]))
    err_m = np.abs(np.asarray(table["logM_median"]) - truth[:, 0])[ok]
    inside = (
        (np.asarray(table["logM_lo68"]) <= truth[:, 0])
        & (truth[:, 0] <= np.asarray(table["logM_hi68"]))
    )[ok]
    counts = {
        s.name: int(np.sum((np.asarray(table["status"]) & int(s)) != 0))
        for s in Status
        if s != Status.OK
    }
    summary = {
        "folder": str(Path(folder).resolve()),
        "output": str(out.resolve()),
        "n_objects": len(table),
        "n_models": grid.n_models,
        "fit_seconds": t_fit,
        "objects_per_second": len(table) / t_fit,
        "status_counts": {k: v for k, v in counts.items() if v},
        "logM_median_abs_error": float(np.median(err_m)),
        "logM_coverage_68": float(np.mean(inside)),
        "total_seconds": time.perf_counter() - t0,
    }
    results_to_table(out, group="/fit_batch")  # the file reads back
    if echo is not None:
        echo(
            f"jaxgrid demo: {summary['n_objects']:,} objects x {grid.n_models:,} models "
            f"(KD-tree k=512) in {t_fit:.1f} s ({summary['objects_per_second']:,.0f} objects/s)"
        )
        echo(f"  status flags: {summary['status_counts'] or 'all ok'}")
        echo(
            f"  logM: median |median - true| = {summary['logM_median_abs_error']:.3f} dex, "
            f"68% interval coverage = {summary['logM_coverage_68']:.1%}"
        )
        echo(
            f"  results: {summary['output']} (group /fit_batch); grid and catalog in "
            f"{summary['folder']}"
        )
    return summary


PHOTOZ_BANDS = "ugrizy"


def photoz_setup(
    n_interp: int = 0, igm: str | None = "madau95", z_max: float = 3.0, dz: float = 0.01
):
    """The bundled templates x LSST filters grid and the DC2 catalog as fluxes.

    Returns ``(grid, F, SF, upper, z_true, ids)``; fluxes in nJy (AB zero point 31.4).
    """
    from .data import DC2_TRAINING, data_path
    from .io import read_catalog
    from .photometry import build_template_grid, magnitudes_to_fluxes

    sed_names = data_path("photoz", "SED", "CWWSB4.list").read_text().split()
    seds = [data_path("photoz", "SED", n) for n in sed_names]
    filters = [data_path("photoz", "FILTER", f"DC2LSST_{b}.res") for b in PHOTOZ_BANDS]
    z = np.round(np.arange(0.0, z_max + dz / 2, dz), 6)
    grid = build_template_grid(
        seds,
        filters,
        z,
        n_interp=n_interp,
        igm=igm,
        filter_names=[f"flux_{b}" for b in PHOTOZ_BANDS],
        template_names=[n.removesuffix(".sed") for n in sed_names],
    )
    cat = read_catalog(
        DC2_TRAINING,
        {f"flux_{b}": f"mag_{b}_lsst" for b in PHOTOZ_BANDS},
        {f"flux_{b}": f"mag_err_{b}_lsst" for b in PHOTOZ_BANDS},
        id_col="id",
        hdf5_group="photometry",
        grid=grid,
    )
    F, SF, upper = magnitudes_to_fluxes(cat.X, cat.SIG, cat.upper)
    import h5py

    with h5py.File(DC2_TRAINING, "r") as f:
        z_true = f["photometry/redshift"][...].astype(np.float64)
    return grid, F, SF, upper, z_true, cat.ids


_PHOTOZ_FIXED = {
    "stats_for",
    "stats_bins",
    "return_pdf_for_stats",
    "posterior_keep_mass",
    "return_candidates",
    "return_mode",
    "upper_limits",
    "resume",
}
PHOTOZ_EDGES = np.round(np.arange(-0.005, 3.0051, 0.01), 6)  #: bins centred on the z grid


def photoz_fit(grid, F, SF, upper, *, verbose: bool = False, **fit_kwargs) -> dict[str, Any]:
    """The demo's recommended photo-z fit of fluxes ``F +- SF`` (nJy) on a template grid:
    profile amplitude, zero-flux non-detections, 0.1 mag floor, BPZ HDF-N prior on
    ``flux_i``, full z PDFs on `PHOTOZ_EDGES`, no candidate lists. ``fit_kwargs`` go to
    ``fit_batch`` (e.g. the HDF5 output). Returns float64 ``zmode`` and ``pdf`` (rows x
    bins), the ``chunks`` and the ``fitter``."""
    from .fitter import GridFitter
    from .prob import BPZPrior, ScaledGaussianLikelihood

    fixed = sorted(set(fit_kwargs) & _PHOTOZ_FIXED)
    if fixed:  # resume would return only the redone rows: zmode/pdf would not match F
        raise ValueError(
            f"photoz_fit: {fixed} are set by the recipe (or, for resume, would return only "
            "the recomputed rows); call GridFitter.fit_batch directly for those."
        )
    lik = ScaledGaussianLikelihood(mode="profile", nondetection="zero_flux", error_floor_mag=0.1)
    prior = BPZPrior.hdfn(grid, "flux_i", flux_zero_point=31.4)
    fitter = GridFitter(grid, lik, prior, use_standardised=False)
    chunks = list(
        fitter.fit_batch(
            F,
            SF,
            upper_limits=upper,
            stats_for=["z"],
            stats_bins=[PHOTOZ_EDGES],
            return_pdf_for_stats=True,
            posterior_keep_mass=1.0,
            return_candidates=False,  # full PDFs; no candidate lists, no top-k
            return_mode="chunks",
            verbose=verbose,
            **fit_kwargs,
        )
    )
    return {
        "zmode": np.concatenate([c["map"][:, 0] for c in chunks]).astype(np.float64),
        "pdf": np.concatenate([c["pdf"][0] for c in chunks]).astype(np.float64),
        "chunks": chunks,
        "fitter": fitter,
    }


def run_photoz_demo(
    folder: str | Path = "jaxgrid-demo", verbose: bool = True, echo=print
) -> dict[str, Any]:
    """Photo-z of the bundled DC2 sample with the bundled templates (the README's main job).

    8 templates (+5 interpolated between each consecutive pair) x 301
    redshifts (0-3, dz = 0.01, Madau IGM) through the 6 LSST filters;
    free-amplitude likelihood (profile amplitude, non-detections as zero flux
    +- the limit: these beat the marginal amplitude and censoring on this
    sample, see docs/photoz.md), 0.1 mag error floor, the BPZ HDF-N prior on
    the observed i magnitude.
    Writes ``photoz.h5`` (result group ``/photoz``) and ``photoz_z.qp.hdf5``;
    prints throughput and metrics against the true redshifts.
    """
    from .io import to_qp
    from .metrics import photoz_metrics, pit_from_binned, pit_ks

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    grid, F, SF, upper, z_true, ids = photoz_setup(n_interp=5)
    edges = PHOTOZ_EDGES
    out = folder / "photoz.h5"
    t1 = time.perf_counter()
    fit = photoz_fit(
        grid,
        F,
        SF,
        upper,
        verbose=verbose,
        output_hdf5_path=out,
        output_hdf5_group="/photoz",
        output_hdf5_overwrite=True,
        ids=ids,
    )
    t_fit = time.perf_counter() - t1
    zmode, pdf = fit["zmode"], fit["pdf"]
    metrics = photoz_metrics(z_true, zmode)
    pit = pit_from_binned(edges, pdf, z_true)
    catastrophic = float(np.mean((pit < 1e-4) | (pit > 1 - 1e-4)))
    qp_path = folder / "photoz_z.qp.hdf5"
    to_qp(out, "z", group="/photoz").write_to(str(qp_path))
    summary = {
        "n_objects": int(F.shape[0]),
        "n_models": grid.n_models,
        "fit_seconds": t_fit,
        "objects_per_second": F.shape[0] / t_fit,
        **metrics,
        "pit_ks": pit_ks(pit),
        "pit_catastrophic_fraction": catastrophic,
        "output": str(out.resolve()),
        "qp": str(qp_path.resolve()),
        "total_seconds": time.perf_counter() - t0,
    }
    if echo is not None:
        echo(
            f"jaxgrid demo (photo-z): {summary['n_objects']:,} DC2 galaxies x "
            f"{grid.n_models:,} template models in {t_fit:.1f} s, compilation included "
            f"({summary['objects_per_second']:,.0f} objects/s)"
        )
        echo(
            f"  zmode vs true z: bias {metrics['bias']:+.4f}, sigma_NMAD {metrics['nmad']:.4f}, "
            f"outliers {metrics['outlier_fraction']:.2%} (|dz|/(1+z) > 0.15)"
        )
        echo(f"  PIT: KS {summary['pit_ks']:.3f}, catastrophic fraction {catastrophic:.2%}")
        echo(f"  results: {summary['output']} (group /photoz); qp PDFs: {summary['qp']}")
    return summary


photoz = run_photoz_demo  #: ``jaxgrid.demo.photoz()``: the photo-z demo from Python
