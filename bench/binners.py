"""The four binners on one workload: candidate recall of the true top-k and speed of
``batch_candidates``.

    python bench/binners.py            # N = 50,000 models, P = 5, M = 5,000 rows
    python bench/binners.py --smoke    # N = 2,000, M = 200: the code paths, seconds

Workload: N models with 5 observables (standard normal), M query rows = a random
model plus N(0, 0.1) noise, errors 0.1; every binner indexes all 5 observables,
standardised. Truth: the k = 100 nearest models in the standardised space (an
exact cKDTree query). Reported per binner: K (its fixed candidate count), mean
candidates per row (mask), recall of the true top-k (the fraction of the true
100 nearest among a row's candidates), rows that fell back to the full grid,
and objects/s of ``batch_candidates`` (host, after ``fit``; build time apart).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
from scipy.spatial import cKDTree


def _binners(k):
    from jaxgrid.binning import HashedGridBinner, KDTreeBinner, NestedBinner, RectBinner

    dims = list(range(5))
    return {
        "KDTreeBinner knn": KDTreeBinner(dims, target_k=k),
        "HashedGridBinner knn": HashedGridBinner(dims, target_k=k),
        "HashedGridBinner knn, occupancy 4": HashedGridBinner(
            dims, target_k=k, target_cell_occupancy=4
        ),
        "RectBinner target_k": RectBinner(dims, mode="target_k", target_k=k, max_candidates=4 * k),
        "RectBinner sigma": RectBinner(dims, max_candidates=4 * k),
        "NestedBinner kdtree": NestedBinner(
            primary_dims=[0],
            secondary_dims=dims[1:],
            secondary_params={"target_k": k},
            final_target_k=k,
        ),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: the code paths, seconds")
    args = ap.parse_args()
    from jaxgrid import ModelGrid

    n, m, p, k = (2_000, 200, 5, 100) if args.smoke else (50_000, 5_000, 5, 100)
    rng = np.random.default_rng(0)
    obs = rng.normal(0.0, 1.0, (n, p))
    grid = ModelGrid(obs, rng.uniform(size=(n, 1)), [f"b{i}" for i in range(p)], ["t"])
    Y = obs[rng.integers(0, n, m)] + rng.normal(0, 0.1, (m, p))
    S = np.full_like(Y, 0.1)
    mu, sd = obs.mean(0), obs.std(0)
    _, truth = cKDTree((obs - mu) / sd).query((Y - mu) / sd, k=k)

    print(f"N = {n} models, P = {p}, M = {m} rows, k = {k}; {platform.processor() or ''}")
    print(f"{os.cpu_count()} CPU cores\n")
    print("| binner | K | candidates/row | recall top-100 | fallback rows | fit s | objects/s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, b in _binners(k).items():
        t0 = time.perf_counter()
        b.fit(grid)
        t_fit = time.perf_counter() - t0
        t0 = time.perf_counter()
        found = b.batch_candidates(Y, S)
        dt = time.perf_counter() - t0
        idx, mask = found[0], found[1]
        fallback = ~mask.any(axis=1) if len(found) < 4 else found[3]
        hits = [
            np.isin(t, i[mm]).mean() if not f else 1.0
            for t, i, mm, f in zip(truth, idx, mask, fallback, strict=True)
        ]
        print(
            f"| {name} | {b.n_candidates} | {mask.sum(1).mean():.0f} | {np.mean(hits):.3f} "
            f"| {int(fallback.sum())} | {t_fit:.2f} | {m / dt:,.0f} |"
        )


if __name__ == "__main__":
    main()
