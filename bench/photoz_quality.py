"""Photo-z quality, 2-fold cross-validated on the bundled DC2 sample: jaxgrid's template
and empirical grids beside RAIL's BPZ, FlexZBoost and KNearNeigh on the same split.

    python bench/photoz_quality.py --rail-python /path/to/railenv/bin/python
    python bench/photoz_quality.py --smoke   # 400 objects, jaxgrid alone: the code paths

The 10,225 galaxies are split in two halves (``numpy.random.default_rng(0)``, as
bench/photoz_vs_bpz.py); everything trained is trained on one half and scores the
other (then the halves swap), so no object's own redshift is ever used for it:

* jaxgrid template grid, recommended settings (5 interpolated templates, IGM,
  profile amplitude), HDF-N prior (nothing trained);
* the same with the BPZ prior trained for the photo-z log score on the other half
  (`BPZPrior.fit_photoz`, stiffness 0.2);
* jaxgrid empirical grid: the other half's galaxies as the models (adjacent colours +
  i magnitude, `jaxgrid.empirical.colour_features`), the kernel (bandwidths, error
  scales, redshift smoothing) learned on that half by its leave-one-out log score
  (`jaxgrid.empirical.fit_kernel`), without and with the redshift smoothing (8
  replicas per galaxy);
* with ``--rail-python`` (an environment with ``pz-rail-base pz-rail-bpz
  pz-rail-flexzboost pz-rail-sklearn``): RAIL's BPZliteEstimator (HDF-N prior, the
  whole sample: nothing is trained), FlexZBoost and KNearNeigh (informed on one
  half, estimating the other), with their default settings.

Metrics on all objects (each scored once): sigma_NMAD and outlier fraction of the
PDF's mode and of its median, PIT KS. Times: estimation (both halves, after
compilation for jaxgrid) and training.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from photoz_vs_bpz import BPZ_SCRIPT, fit_jaxgrid  # noqa: E402

BANDS = "ugrizy"
EDGES = np.round(np.arange(-0.005, 3.0051, 0.01), 6)  # bins centred on z = 0, 0.01, ..., 3

RAIL_SCRIPT = r"""
import sys, time, h5py, numpy as np
from rail.core.data import DataStore, TableHandle
from rail.estimation.algos.flexzboost import FlexZBoostInformer, FlexZBoostEstimator
from rail.estimation.algos.k_nearneigh import KNearNeighInformer, KNearNeighEstimator
src, split, out = sys.argv[1], sys.argv[2], sys.argv[3]
DS = DataStore()
with h5py.File(src) as f:
    g = f["photometry"]
    base = {k: g[k][...] for k in g}
halves = np.load(split)
zc = np.round(np.arange(0.0, 3.0 + 0.005, 0.01), 6)
algos = {"flexzboost": (FlexZBoostInformer, FlexZBoostEstimator),
         "knn": (KNearNeighInformer, KNearNeighEstimator)}
res = {}
for name, (Inf, Est) in algos.items():
    n = base["redshift"].size
    pdf, zmode, t_inf, t_est = np.zeros((n, zc.size)), np.zeros(n), 0.0, 0.0
    for a in range(2):
        tr, te = halves[f"f{a}"], halves[f"f{1 - a}"]
        train = DS.add_data(f"train_{name}{a}", {k: v[tr] for k, v in base.items()}, TableHandle)
        test = DS.add_data(f"test_{name}{a}", {k: v[te] for k, v in base.items()}, TableHandle)
        kw = dict(hdf5_groupname="", zmin=0.0, zmax=3.0, nzbins=301)
        inf = Inf.make_stage(name=f"inf_{name}{a}", model=f"{out}_{name}{a}.pkl", **kw)
        t0 = time.perf_counter(); inf.inform(train); t_inf += time.perf_counter() - t0
        est = Est.make_stage(name=f"est_{name}{a}", model=inf.get_handle("model"),
                             output_mode="return", **kw)
        t0 = time.perf_counter(); ens = est.estimate(test).data; t_est += time.perf_counter() - t0
        pdf[te] = ens.pdf(zc)
        anc = ens.ancil or {}
        zmode[te] = np.asarray(anc["zmode"]).ravel() if "zmode" in anc else zc[pdf[te].argmax(1)]
    res[name] = dict(pdf=pdf, zmode=zmode, t_inform=t_inf, t_estimate=t_est)
np.savez(out + ".npz", **{f"{n}_{k}": v for n, d in res.items() for k, v in d.items()})
"""


def _rail(cmd, cwd):
    """Run a RAIL script in its environment; its own error when it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    if proc.returncode:
        sys.exit(f"{cmd[1]} failed in the RAIL environment:\n{proc.stderr[-3000:]}")


def pdf_median(pdf: np.ndarray) -> np.ndarray:
    """The median of each binned density on `EDGES` (linear within bins)."""
    mass = np.clip(pdf, 0.0, None) * np.diff(EDGES)[None, :]
    cdf = np.cumsum(mass, axis=1)
    cdf = cdf / np.where(cdf[:, -1:] > 0, cdf[:, -1:], 1.0)
    k = np.clip((cdf < 0.5).sum(axis=1), 0, pdf.shape[1] - 1)
    lo = np.where(k > 0, cdf[np.arange(k.size), k - 1], 0.0)
    step = np.where(mass[np.arange(k.size), k] > 0, cdf[np.arange(k.size), k] - lo, 1.0)
    return EDGES[k] + (0.5 - lo) / step * (EDGES[k + 1] - EDGES[k])


def row(name, z_true, zmode, pdf, seconds, train_seconds=0.0):
    from jaxgrid.metrics import photoz_metrics, pit_from_binned, pit_ks

    m_mode = photoz_metrics(z_true, zmode)
    m_med = photoz_metrics(z_true, pdf_median(pdf))
    return {
        "name": name,
        "seconds": seconds,
        "train_seconds": train_seconds,
        "nmad_mode": m_mode["nmad"],
        "outliers_mode": m_mode["outlier_fraction"],
        "nmad_median": m_med["nmad"],
        "outliers_median": m_med["outlier_fraction"],
        "bias_median": m_med["bias"],
        "pit_ks": pit_ks(pit_from_binned(EDGES, pdf, z_true)),
    }


def fit_chunks(fitter, X, S, upper=None, reps=2):
    """Modes, binned PDFs on `EDGES` and the best of ``reps`` timed runs after a compiling
    one (bench/photoz_vs_bpz.py's `fit_jaxgrid`, with ``fitter``'s settings)."""
    return fit_jaxgrid(fitter.grid, X, S, upper, fitter.likelihood, fitter.prior, EDGES, reps)


def dc2_magnitudes(path, n_obj=None):
    with h5py.File(path) as f:
        g = f["photometry"]
        mags = np.stack([g[f"mag_{b}_lsst"][...] for b in BANDS], 1).astype(np.float64)
        errs = np.stack([g[f"mag_err_{b}_lsst"][...] for b in BANDS], 1).astype(np.float64)
        z = g["redshift"][...].astype(np.float64)
    sl = slice(None) if n_obj is None else slice(0, n_obj)
    return mags[sl], errs[sl], z[sl]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rail-python", help="python of an environment with RAIL's estimators")
    ap.add_argument("--smoke", action="store_true", help="400 objects, few iterations")
    args = ap.parse_args()
    from jaxgrid import GaussianProductLikelihood, GridFitter, ModelGrid
    from jaxgrid.data import DC2_TRAINING
    from jaxgrid.demo import photoz_setup
    from jaxgrid.empirical import colour_features, fit_kernel
    from jaxgrid.prob import BPZPrior, ScaledGaussianLikelihood

    n_obj = 400 if args.smoke else None
    if args.smoke:
        print("smoke run: 400 objects, the figures mean nothing; RAIL skipped")
        args.rail_python = None
    mags, errs, z_true = dc2_magnitudes(DC2_TRAINING, n_obj)
    n = z_true.size
    halves = np.array_split(np.random.default_rng(0).permutation(n), 2)
    folds = list(zip(halves, halves[::-1], strict=True))  # (train, test), both ways
    rows = []

    # --- RAIL first (a failure there costs least), same split
    if args.rail_python:
        with tempfile.TemporaryDirectory() as tmp:
            split = Path(tmp) / "split.npz"
            np.savez(split, f0=halves[0], f1=halves[1])
            (Path(tmp) / "run_bpz.py").write_text(BPZ_SCRIPT)
            (Path(tmp) / "run_rail.py").write_text(RAIL_SCRIPT)
            run = dict(cwd=tmp)
            _rail(
                [args.rail_python, "run_bpz.py", str(DC2_TRAINING), str(Path(tmp) / "bpz.npz")],
                **run,
            )
            b = np.load(Path(tmp) / "bpz.npz")
            rows.append(
                row("RAIL BPZliteEstimator, HDF-N prior", z_true, b["zmode"], b["pdf"],
                    float(b["seconds"])),
            )  # fmt: skip
            _rail(
                [
                    args.rail_python,
                    "run_rail.py",
                    str(DC2_TRAINING),
                    str(split),
                    str(Path(tmp) / "r"),
                ],
                **run,
            )
            r = np.load(Path(tmp) / "r.npz")
            for name, label in (("flexzboost", "FlexZBoost"), ("knn", "KNearNeigh")):
                rows.append(
                    row(f"RAIL {label}", z_true, r[f"{name}_zmode"], r[f"{name}_pdf"],
                        float(r[f"{name}_t_estimate"]), float(r[f"{name}_t_inform"]))
                )  # fmt: skip
    # --- template grids (recommended settings)
    grid0, F, SF, up, zt, _ = photoz_setup(n_interp=0)
    F, SF, up = F[:n], SF[:n], up[:n]
    grid5 = photoz_setup(n_interp=1 if args.smoke else 5)[0]
    lik = ScaledGaussianLikelihood(mode="profile", nondetection="zero_flux", error_floor_mag=0.1)
    hdfn0 = BPZPrior.hdfn(grid0, "flux_i", flux_zero_point=31.4)
    hdfn5 = BPZPrior.hdfn(grid5, "flux_i", flux_zero_point=31.4)
    zm, pdf, dt = fit_chunks(GridFitter(grid5, lik, hdfn5, use_standardised=False), F, SF, up)
    rows.append(row("jaxgrid templates, HDF-N prior", z_true, zm, pdf, dt))
    trainer = GridFitter(grid0, lik, hdfn0, use_standardised=False)
    zm, pdf, dt, tt = np.empty(n), np.empty((n, EDGES.size - 1)), 0.0, 0.0
    for train, test in folds:
        t0 = time.perf_counter()
        fit = hdfn0.fit_photoz(
            trainer, F[train], SF[train], z_true[train], up[train], stiffness=0.2,
            maxiter=2 if args.smoke else 200,
        )  # fmt: skip
        tt += time.perf_counter() - t0
        prior = hdfn5.with_params(fit.alpha, fit.z0, fit.km, fit.f, fit.k)
        fitter = GridFitter(grid5, lik, prior, use_standardised=False)
        zm[test], pdf[test], d = fit_chunks(fitter, F[test], SF[test], up[test])
        dt += d
    rows.append(row("jaxgrid templates, trained BPZ prior", z_true, zm, pdf, dt, tt))

    # --- empirical grids: the training half's galaxies as the models
    nondet = np.isclose(mags, 99.0)  # the error column then holds the 1-sigma limit
    feat = colour_features(
        np.where(nondet, np.nan, mags),
        np.where(nondet, np.nan, errs),
        list(BANDS),
        reference="i",
        nondetected=nondet,
        limits=np.where(nondet, errs, np.nan),
    )
    results = {False: [np.empty(n), np.empty((n, EDGES.size - 1)), 0.0, 0.0]}
    results[True] = [np.empty(n), np.empty((n, EDGES.size - 1)), 0.0, 0.0]
    kernels = []
    for train, test in folds:
        t0 = time.perf_counter()
        k = fit_kernel(
            feat["model_values"][train],
            feat["model_errors"][train],
            z_true[train],
            row_values=feat["values"][train],
            row_errors=feat["errors"][train],
            max_rows=200 if args.smoke else 2000,
            maxiter=3 if args.smoke else 60,
        )
        t_kernel = time.perf_counter() - t0
        kernels.append({key: np.asarray(v).tolist() for key, v in k.items()})
        likelihood = GaussianProductLikelihood(scale=k["row_error_scale"])
        for smooth in (False, True):
            grid = ModelGrid.from_training(
                feat["model_values"][train],
                feat["model_errors"][train],
                z_true[train],
                feat["names"],
                ["z"],
                bandwidth=k["bandwidth"],
                error_scale=k["error_scale"],
                smooth_targets={"z": k["z_sigma"]} if smooth else None,
            )
            fitter = GridFitter(grid, likelihood, use_standardised=False)
            r = results[smooth]
            r[0][test], r[1][test], d = fit_chunks(
                fitter, feat["values"][test], feat["errors"][test]
            )
            r[2] += d
            r[3] += t_kernel
    for smooth, label in ((False, ""), (True, ", z smoothed (8 replicas)")):
        zm, pdf, dt, tt = results[smooth]
        rows.append(row(f"jaxgrid empirical, learned kernel{label}", z_true, zm, pdf, dt, tt))

    print(f"DC2, {n:,} objects, 2-fold cross-validated (every object scored once)")
    head = f"{'estimator':52s} {'est. s':>7s} {'train s':>8s} {'NMAD':>7s} {'outl.':>7s}"
    print(head + f" {'NMAD med':>8s} {'outl.med':>8s} {'PIT KS':>7s}")
    for r in rows:
        print(
            f"{r['name']:52s} {r['seconds']:7.2f} {r['train_seconds']:8.1f} "
            f"{r['nmad_mode']:7.4f} {r['outliers_mode']:7.2%} {r['nmad_median']:8.4f} "
            f"{r['outliers_median']:8.2%} {r['pit_ks']:7.3f}"
        )
    print("(NMAD, outl.: of the PDF's mode; med: of its median)")
    print("learned kernels:", json.dumps(kernels))
    print(json.dumps(rows, default=float))


if __name__ == "__main__":
    sys.exit(main())
