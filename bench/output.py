"""Cost of crash-safe output, same run: fit_batch with the journal writer vs the same
fit returning chunks (no file), and the writer's own phases.

    python bench/output.py            # M = 40,000 objects, N = 20,000 models
    python bench/output.py --quick    # M = 8,000
    python bench/output.py --smoke    # M = 512, N = 2,000: the code paths, seconds

Workload: N models, P = 5, 2 targets x 100 bins with PDFs stored, keep_mass 0.99
(candidate lists of >= 128 models per row written as variable-length data), default
chunk size. Reported: objects/s without output, with output (journal + assembly),
the overhead, journal bytes per row, and the assembly time alone (journal -> HDF5,
gzip level 4 and no compression).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: the code paths, seconds")
    args = ap.parse_args()
    import jax

    from jaxgrid import GridFitter, ModelGrid
    from jaxgrid.io import results as results_mod

    m = 512 if args.smoke else 8_000 if args.quick else 40_000
    n, p = 2_000 if args.smoke else 20_000, 5
    rng = np.random.default_rng(0)
    obs = rng.normal(22.0, 1.5, (n, p))
    tgt = rng.uniform(0, 1, (n, 2))
    grid = ModelGrid(obs, tgt, [f"b{i}" for i in range(p)], ["a", "b"])
    X = obs[rng.integers(0, n, m)] + rng.normal(0, 0.1, (m, p))
    S = np.full_like(X, 0.1)
    fitter = GridFitter(grid)
    kw = dict(
        stats_for=["a", "b"],
        stats_bins=[np.linspace(0, 1, 101)] * 2,
        return_pdf_for_stats=True,
        verbose=False,
    )
    list(fitter.fit_batch(X[:512], S[:512], return_mode="chunks", **kw))  # compile

    t0 = time.perf_counter()
    for _ in fitter.fit_batch(X, S, return_mode="chunks", **kw):
        pass
    t_plain = time.perf_counter() - t0

    tmp = Path(tempfile.mkdtemp(dir=os.environ.get("BENCH_TMP")))
    phases = {}
    assemble = results_mod.GridFitHDF5Writer._assemble

    def timed_assemble(self):
        t = time.perf_counter()
        assemble(self)
        phases["assemble"] = time.perf_counter() - t
        phases["journal_bytes"] = self._journal.size

    results_mod.GridFitHDF5Writer._assemble = timed_assemble
    t0 = time.perf_counter()
    fitter.fit_batch(X, S, output_hdf5_path=tmp / "out.h5", output_hdf5_write_only=True, **kw)
    t_out = time.perf_counter() - t0
    gz_assemble, journal_bytes = phases["assemble"], phases["journal_bytes"]
    t0 = time.perf_counter()
    fitter.fit_batch(
        X,
        S,
        output_hdf5_path=tmp / "raw.h5",
        output_hdf5_write_only=True,
        output_hdf5_compression=None,
        **kw,
    )
    t_raw = time.perf_counter() - t0
    raw_assemble = phases["assemble"]
    results_mod.GridFitHDF5Writer._assemble = assemble

    print(
        f"machine: {platform.machine()} {os.cpu_count()} cores, JAX {jax.__version__} "
        f"{jax.default_backend()}; M = {m:,}, N = {n:,}"
    )
    print("| run | s | objects/s |\n| --- | --- | --- |")
    print(f"| chunks, no file | {t_plain:.2f} | {m / t_plain:,.0f} |")
    print(f"| file, gzip 4 | {t_out:.2f} | {m / t_out:,.0f} |")
    print(f"| file, no compression | {t_raw:.2f} | {m / t_raw:,.0f} |")
    print(
        f"overhead: gzip {100 * (t_out / t_plain - 1):.0f} %, none "
        f"{100 * (t_raw / t_plain - 1):.0f} %; journal {journal_bytes / m:,.0f} "
        f"bytes/row; assembly alone {gz_assemble:.2f} s gzip, {raw_assemble:.2f} s none; file "
        f"{(tmp / 'out.h5').stat().st_size / m:,.0f} bytes/row (gzip)"
    )


if __name__ == "__main__":
    main()
