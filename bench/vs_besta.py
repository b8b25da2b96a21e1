"""jaxgrid vs the real BESTA 0.6.2 grid module, side by side in one run.

    python bench/vs_besta.py --besta-python /tmp/besta/venv/bin/python \
                             --besta-src /tmp/besta/src
    python bench/vs_besta.py --quick ...     # small sizes
    python bench/vs_besta.py --smoke         # tiny sizes, jaxgrid alone unless BESTA is given

BESTA runs in its own virtual environment (recipe in bench/README.md); this
script writes the workload to a temporary .npz, times BESTA on it in a
subprocess and jaxgrid here, and checks that both give the same evidence and
target means on the objects both fitted. Workloads (the issue's):

* dense: N = 20,000 models, P = 5, 3 targets x 50 bins, keep_mass 0.99, min 128;
  jaxgrid 4,000 objects in "chunks" and "list" mode, BESTA 200 objects;
* kdtree: the same grid, KD-tree knn k = 100; jaxgrid 40,000 objects in "list"
  mode, BESTA 1,000 objects.

Times are end to end (candidate queries, fitting, results on the host); jaxgrid's
after a warm-up call that compiles the step. Reports objects/s, ns per (object,
model) pair and the per-object speed ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

BESTA_RUNNER = r"""
import json, sys, time
import numpy as np
from besta.grid.grid import ModelGrid, GridFitter
from besta.grid.binning import KDTreeBinner

d = np.load(sys.argv[1])
mode, m = sys.argv[2], int(sys.argv[3])
grid = ModelGrid(d["obs"], d["tgt"], [f"b{i}" for i in range(d["obs"].shape[1])],
                 [f"t{i}" for i in range(d["tgt"].shape[1])])
fitter = GridFitter(grid, use_standardised=False)
edges = [d["edges"]] * d["tgt"].shape[1]
kw = dict(stats_for=[f"t{i}" for i in range(d["tgt"].shape[1])], stats_bins=edges,
          return_mode="list", verbose=False, posterior_keep_mass=0.99,
          posterior_keep_min_candidates=128)
binner = None
if mode == "kdtree":
    binner = KDTreeBinner(dims=list(range(d["obs"].shape[1])), transform="none",
                          select_mode="knn", target_k=100).fit(grid)
X, S = d["X"][:m], d["S"][:m]
fitter.fit_batch(X[:4], S[:4], binner=binner, **kw)  # warm-up (numba, caches)
t0 = time.perf_counter()
res = fitter.fit_batch(X, S, binner=binner, **kw)
dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "m": m,
                  "mean0": [float(r["stats"]["t0"]["mean"]) for r in res[:50]],
                  "n_after": [int(r["truncation"]["n_after"]) for r in res[:50]]}))
"""


def make_problem(n=20_000, p=5, q=3, m=40_000, seed=1):
    rng = np.random.default_rng(seed)
    tgt = rng.uniform(0.0, 1.0, (n, q))
    mix = rng.normal(0.0, 1.0, (q, p))
    obs = 20.0 + tgt @ mix + 0.3 * rng.normal(size=(n, p))  # smooth in the targets
    pick = rng.integers(0, n, m)
    S = np.full((m, p), 0.05)
    X = obs[pick] + rng.normal(0.0, 0.05, (m, p))
    return obs, tgt, X, S


def time_besta(python, src, path, mode, m):
    env = dict(os.environ, PYTHONPATH=src, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", ""))
    env = {k: v for k, v in env.items() if v != ""}
    out = subprocess.run(
        [python, "-c", BESTA_RUNNER, path, mode, str(m)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def time_jaxgrid(obs, tgt, X, S, edges, mode, return_mode, m):
    from jaxgrid import GridFitter, ModelGrid
    from jaxgrid.binning import KDTreeBinner

    p, q = obs.shape[1], tgt.shape[1]
    grid = ModelGrid(obs, tgt, [f"b{i}" for i in range(p)], [f"t{i}" for i in range(q)])
    fitter = GridFitter(grid, use_standardised=False)
    binner = None
    if mode == "kdtree":
        binner = KDTreeBinner(
            dims=list(range(p)), transform="none", select_mode="knn", target_k=100
        ).fit(grid)
    kw = dict(
        stats_for=[f"t{i}" for i in range(q)],
        stats_bins=[edges] * q,
        return_mode=return_mode,
        verbose=False,
        posterior_keep_mass=0.99,
        posterior_keep_min_candidates=128,
        binner=binner,
    )

    def run(rows):
        out = fitter.fit_batch(X[:rows], S[:rows], **kw)
        return list(out)

    run(min(m, 2048))  # warm-up: compiles the step (the catalog's chunk size)
    best, res = np.inf, None
    for _ in range(2):
        t0 = time.perf_counter()
        res = run(m)
        best = min(best, time.perf_counter() - t0)
    if return_mode == "chunks":
        mean0 = np.concatenate([c["mean"][:, 0] for c in res])[:50]
        n_after = np.concatenate([c["n_after"] for c in res])[:50]
    else:
        mean0 = np.array([r["stats"]["t0"]["mean"] for r in res[:50]])
        n_after = np.array([r["truncation"]["n_after"] for r in res[:50]])
    return {"seconds": best, "m": m, "mean0": mean0.tolist(), "n_after": n_after.tolist()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--besta-python", help="python of the BESTA venv (required unless --smoke)")
    ap.add_argument("--besta-src", help="folder holding the besta package")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--smoke", action="store_true", help="tiny sizes (seconds); BESTA only if it is given"
    )
    a = ap.parse_args()
    use_besta = bool(a.besta_python and a.besta_src)
    if not use_besta and not a.smoke:
        ap.error("--besta-python and --besta-src are required (or --smoke for jaxgrid alone)")
    scale = 200 if a.smoke else 10 if a.quick else 1
    n = 2_000 if a.smoke else 20_000 // (2 if a.quick else 1)
    obs, tgt, X, S = make_problem(n=n, m=40_000 // scale)
    edges = np.linspace(0.0, 1.0, 51)
    import jax

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"JAX {jax.__version__} on {jax.devices()[0].platform}; N={n:,} models, P=5, "
        "3 targets x 50 bins, keep_mass 0.99, min 128"
    )
    if not use_besta:
        print("smoke run: BESTA not given (--besta-python, --besta-src): its columns skipped")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "problem.npz")
        np.savez(path, obs=obs, tgt=tgt, X=X, S=S, edges=edges)
        cases = [
            ("dense", "chunks", 4000 // scale, max(200 // scale, 4)),
            ("dense", "list", 4000 // scale, max(200 // scale, 4)),
            ("kdtree", "list", 40_000 // scale, max(1000 // scale, 4)),
        ]
        print(
            f"{'workload':<16}{'jaxgrid obj/s':>14}{'ns/pair':>9}{'BESTA obj/s':>13}"
            f"{'ns/pair':>9}{'ratio':>8}"
        )
        besta_cache = {}
        for mode, rmode, m_jax, m_besta in cases:
            j = time_jaxgrid(obs, tgt, X, S, edges, mode, rmode, m_jax)
            pool = n if mode == "dense" else 100
            jr = j["m"] / j["seconds"]
            if not use_besta:
                print(
                    f"{mode + ' ' + rmode:<16}{jr:>14,.0f}{1e9 / (jr * pool):>9.2f}"
                    f"{'skipped':>13}{'-':>9}{'-':>8}"
                )
                continue
            if mode not in besta_cache:
                besta_cache[mode] = time_besta(a.besta_python, a.besta_src, path, mode, m_besta)
            b = besta_cache[mode]
            br = b["m"] / b["seconds"]
            k = min(len(j["mean0"]), len(b["mean0"]))  # the objects both fitted
            err = np.max(np.abs(np.array(j["mean0"][:k]) - np.array(b["mean0"][:k])))
            same = np.array_equal(j["n_after"][:k], b["n_after"][:k])
            print(
                f"{mode + ' ' + rmode:<16}{jr:>14,.0f}{1e9 / (jr * pool):>9.2f}{br:>13,.0f}"
                f"{1e9 / (br * pool):>9.2f}{jr / br:>7.1f}x   (|d mean| {err:.1e}, "
                f"n_after {'equal' if same else 'DIFFER'})"
            )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
