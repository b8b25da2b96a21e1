"""Throughput of jaxgrid.dask with 1 vs 2 worker processes on this machine.

    python bench/dask_scaling.py [--rows 40000]
    python bench/dask_scaling.py --smoke   # 400 rows, 2 partitions, 1 worker: the code paths

A synthetic catalog (the demo's grid, 13,464 models) in 8 Parquet partitions,
KD-tree knn k = 128, stats for 2 targets. Each cluster first runs the whole
computation once (workers load the grid and compile), then it is timed again.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=None, help="catalog rows (default 40,000)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: the code paths, seconds")
    args = ap.parse_args()
    rows = args.rows or (400 if args.smoke else 40_000)
    n_parts = 2 if args.smoke else 8
    workers = (1,) if args.smoke else (1, 2)
    import dask.dataframe as dd
    import distributed
    from astropy.table import Table

    from jaxgrid.dask import Columns, FitSpec, fit_dataframe
    from jaxgrid.demo import BANDS, make_demo_files

    folder = Path(tempfile.mkdtemp(dir=os.environ.get("BENCH_TMP")))
    files = make_demo_files(folder, n_objects=rows)
    df = Table.read(files["catalog"]).to_pandas()
    parts = folder / "parts"
    parts.mkdir()
    for i, chunk in enumerate(np.array_split(np.arange(len(df)), n_parts)):
        df.iloc[chunk].to_parquet(parts / f"p{i}.parquet")
    spec = FitSpec.make(
        files["grid"],
        stats_for=["logM", "log_age"],
        stats_bins=[np.linspace(7, 12, 101), np.linspace(8, 10.1, 85)],
        binner={"dims": list(BANDS[1:]), "target_k": 128},
        fit_kwargs={"chunk_size": 1024},
    )
    columns = Columns.make(list(BANDS), [f"{b}_err" for b in BANDS], id="id")
    rates = {}
    for n in workers:
        with (
            distributed.LocalCluster(
                n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None
            ) as cluster,
            distributed.Client(cluster),
        ):
            # warm-up: grid load + compilation on every worker
            fit_dataframe(dd.read_parquet(parts), spec, columns).compute()
            t0 = time.perf_counter()
            out = fit_dataframe(dd.read_parquet(parts), spec, columns).compute()
            dt = time.perf_counter() - t0
            assert len(out) == rows
            rates[n] = rows / dt
            print(
                f"{n} worker process(es): {rates[n]:9,.0f} objects/s ({dt:.2f} s for "
                f"{rows:,} rows, {n_parts} partitions)"
            )
    if 2 in rates:
        print(f"speed-up 2 vs 1: {rates[2] / rates[1]:.2f}x")
    else:
        print("smoke run: one worker only, no speed-up measured")


if __name__ == "__main__":
    main()
