"""Where the time of the B1 chunk step goes (CPU): times its stages in isolation.

    python bench/profile_step.py [--smoke]

Stages, cumulative, per (object, model) pair, chunk of 64 rows x N = 100,000:
likelihood + prior (log weights and chi^2), the row reductions (max, sum of
exp, ESS, counts), the top-k, and the whole step (truncation + summaries).
``--smoke``: N = 2,000, 16 rows, one repetition (the code paths, seconds).
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxgrid import GridFitter, ModelGrid
from jaxgrid.batch import BatchOptions, plan_batch
from jaxgrid.batch.run import _Runner
from jaxgrid.core.reductions import top_k_two_level
from jaxgrid.core.step import chunk_step
from jaxgrid.prob.posterior import log_weights_and_chi2


def timed(fn, reps=5):
    jax.block_until_ready(fn())
    t0 = time.perf_counter()
    for _ in range(reps):
        jax.block_until_ready(fn())
    return (time.perf_counter() - t0) / reps


def main(n=100_000, p=6, c=64, reps=5):
    rng = np.random.default_rng(0)
    obs = rng.normal(22, 1.5, (n, p)).astype(np.float32)
    tgt = rng.uniform(0, 1, (n, 4)).astype(np.float32)
    grid = ModelGrid(obs, tgt, [f"b{i}" for i in range(p)], [f"t{i}" for i in range(4)])
    fitter = GridFitter(grid, use_standardised=False)
    X = obs[:c] + 0.05
    S = np.full((c, p), 0.05, np.float32)
    options = BatchOptions(
        stats_for=["t0", "t1", "t2", "t3"], stats_bins=[np.linspace(0, 1, 101)] * 4, chunk_size=c
    )
    plan = plan_batch(fitter, X, S, options)
    runner = _Runner(fitter, plan, None, 1)
    (chunk,) = runner.chunk_parts(np.arange(c))
    data, lik, prior = runner.datas[0], fitter.likelihood_in_space, fitter.prior

    def evaluate(x, s):
        return log_weights_and_chi2(
            lik,
            prior,
            data,
            x,
            s,
            None,
            data.models,
            data.models_native,
            data.targets,
            data.log_weights,
            True,
        )

    @jax.jit
    def stage1(x, s):
        lw, chi2 = jax.vmap(evaluate)(x, s)
        return lw.sum(1), chi2.min(1)

    @jax.jit
    def stage2(x, s):
        lw, chi2 = jax.vmap(evaluate)(x, s)
        m = lw.max(1)
        w = jnp.exp(lw - m[:, None])
        return m, w.sum(1), (w * w).sum(1), chi2.min(1), jnp.isfinite(lw).sum(1)

    @jax.jit
    def stage3(x, s):
        lw, chi2 = jax.vmap(evaluate)(x, s)
        m = lw.max(1)
        w = jnp.exp(lw - m[:, None])
        top = lax.cond(
            m[0] > -1e30,
            lambda _: tuple(top_k_two_level(lw, 128)),
            lambda _: tuple(top_k_two_level(lw, 128)),
            None,
        )
        return m, w.sum(1), (w * w).sum(1), chi2.min(1), top

    pairs = c * n
    rows = [
        (
            "log weights + chi2 (likelihood, prior)",
            timed(lambda: stage1(chunk.x, chunk.sigma), reps),
        ),
        ("+ row reductions (logsumexp, ESS)", timed(lambda: stage2(chunk.x, chunk.sigma), reps)),
        ("+ top-128 (two-level, XLA CPU TopK)", timed(lambda: stage3(chunk.x, chunk.sigma), reps)),
        (
            "whole chunk step (truncation, 4 x 100-bin stats)",
            timed(lambda: chunk_step(plan.config, data, lik, prior, plan.params, chunk), reps),
        ),
    ]
    print(f"chunk {c} rows x N={n:,}, P={p}, {jax.devices()[0].platform}")
    for name, t in rows:
        print(f"  {name:52s} {t / pairs * 1e9:6.2f} ns/pair")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: the code paths, seconds")
    args = ap.parse_args()
    if args.smoke:
        main(n=2_000, c=16, reps=1)
    else:
        main()
