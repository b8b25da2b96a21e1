"""Which XLA operations of the chunk step take the time (CPU): a jax.profiler trace.

    python bench/trace_step.py [--workload photoz|dense|b1] [--rows 512] [--top 25] [--smoke]

Runs the photo-z step with BPZ-equivalent settings (the bundled DC2 sample,
8 templates x 301 redshifts, profile amplitude, HDF-N prior, full PDFs), or the
dense workload of bench/vs_besta.py, or B1, a few times under ``jax.profiler``
and prints each XLA thunk's time per chunk and per (object, model) pair, with
its shape and the source operation from the compiled HLO's ``op_name``
metadata. See docs/performance.md for what such traces found.
``--smoke``: 32 rows, two timed steps and one traced (the code paths, seconds).
"""

import argparse
import collections
import gzip
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from photoz_vs_bpz import BANDS, bpz_equivalent_inputs  # noqa: E402

from jaxgrid import GridFitter  # noqa: E402
from jaxgrid.batch import BatchOptions, plan_batch  # noqa: E402
from jaxgrid.batch.run import _Runner  # noqa: E402
from jaxgrid.core.step import chunk_step  # noqa: E402
from jaxgrid.data import DC2_TRAINING, data_path  # noqa: E402
from jaxgrid.photometry import build_template_grid  # noqa: E402
from jaxgrid.prob import BPZPrior, ScaledGaussianLikelihood  # noqa: E402


def photoz_plan(c):
    """The photo-z step with BPZ-equivalent settings (full PDFs, no candidates)."""
    z = np.round(np.arange(0.0, 3.0 + 0.005, 0.01), 6)
    edges = np.round(np.arange(-0.005, 3.0051, 0.01), 6)
    names = data_path("photoz", "SED", "CWWSB4.list").read_text().split()
    grid = build_template_grid(
        [data_path("photoz", "SED", n) for n in names],
        [data_path("photoz", "FILTER", f"DC2LSST_{b}.res") for b in BANDS],
        z,
        filter_names=[f"flux_{b}" for b in BANDS],
    )
    F, SF, upper, _ = bpz_equivalent_inputs(DC2_TRAINING)
    lik = ScaledGaussianLikelihood(mode="profile", nondetection="zero_flux")
    prior = BPZPrior.hdfn(grid, "flux_i", flux_zero_point=0.0)
    fitter = GridFitter(grid, lik, prior, use_standardised=False)
    options = BatchOptions(
        stats_for=["z"],
        stats_bins=[edges],
        return_pdf_for_stats=True,
        posterior_keep_mass=1.0,
        posterior_keep_min_candidates=1,
        chunk_size=c,
        upper_limits=upper,
        return_candidates=False,
    )
    plan = plan_batch(fitter, F, SF, options)
    return grid, fitter, plan


def dense_plan(c, b1=False):
    """The dense workload of bench/vs_besta.py (20,000 models, P = 5, 3 targets x 50
    bins, keep 0.99, min 128), or B1 of bench/fit_batch.py (100,000 models, P = 6,
    4 targets x 100 bins)."""
    from jaxgrid import ModelGrid

    if b1:
        from fit_batch import make_problem as b1_problem

        obs, tgt, X, S = b1_problem(100_000, 6, 4, c)
        bins = [np.linspace(0, 1, 101)] * 4
    else:
        from vs_besta import make_problem

        obs, tgt, X, S = make_problem(m=c)
        bins = [np.linspace(0, 1, 51)] * 3
    p, q = obs.shape[1], tgt.shape[1]
    grid = ModelGrid(obs, tgt, [f"b{i}" for i in range(p)], [f"t{i}" for i in range(q)])
    fitter = GridFitter(grid, use_standardised=False)
    options = BatchOptions(stats_for=[f"t{i}" for i in range(q)], stats_bins=bins, chunk_size=c)
    plan = plan_batch(fitter, X, S, options)
    return grid, fitter, plan


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=None, help="rows per chunk")
    ap.add_argument("--top", type=int, default=25, help="operations to list")
    ap.add_argument("--workload", choices=["photoz", "dense", "b1"], default="photoz")
    ap.add_argument("--smoke", action="store_true", help="32 rows, few repetitions")
    args = ap.parse_args()
    c = args.rows or (32 if args.smoke else 512 if args.workload == "photoz" else 64)
    n_timed, reps = (2, 1) if args.smoke else (10, 5)
    if args.workload == "photoz":
        grid, fitter, plan = photoz_plan(c)
    else:
        grid, fitter, plan = dense_plan(c, b1=args.workload == "b1")
    runner = _Runner(fitter, plan, None, 1)
    (chunk,) = runner.chunk_parts(np.arange(c))
    step_args = (plan.config, runner.datas[0], fitter.likelihood_in_space, fitter.prior)
    step_args = step_args + (plan.params, chunk)

    def step():
        return jax.block_until_ready(chunk_step(*step_args))

    step()
    times = []
    for _ in range(n_timed):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    pairs = c * grid.n_models
    print(f"step: best {min(times) * 1e3:.2f} ms = {min(times) / pairs * 1e9:.2f} ns/pair")
    with tempfile.TemporaryDirectory() as tmp:
        jax.profiler.start_trace(tmp, create_perfetto_trace=True)
        for _ in range(reps):
            step()
        jax.profiler.stop_trace()
        trace = sorted(Path(tmp).rglob("perfetto_trace.json.gz"))[-1]
        events = json.load(gzip.open(trace))
    events = events["traceEvents"] if isinstance(events, dict) else events
    hlo = chunk_step.lower(*step_args).compile().compiled.as_text()
    meta = {}
    for line in hlo.splitlines():
        m = re.match(r"\s*(?:ROOT )?%(\S+) = (\S+) .*?op_name=\"([^\"]*)\"", line)
        if m:
            meta[m.group(1)] = (m.group(2), m.group(3))
    total = collections.Counter()
    for e in events:
        name = e.get("name", "")
        if e.get("ph") == "X" and name in meta:
            total[name] += e.get("dur", 0.0)
    print(f"{'us/chunk':>9s} {'ns/pair':>8s}  {'operation':28s} {'shape':24s} source")
    for name, us in total.most_common(args.top):
        shape, op = meta[name]
        per_pair = us / reps / pairs * 1e3
        print(f"{us / reps:9.1f} {per_pair:8.3f}  {name:28s} {shape[:24]:24s} {op[-70:]}")


if __name__ == "__main__":
    sys.exit(main())
