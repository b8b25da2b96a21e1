"""The chunk step: one jitted posterior-and-summary computation for a chunk of rows.

``chunk_step(config, data, likelihood, prior, params, chunk) -> ChunkOutput`` is
the only jit boundary of batch fitting. It is compiled once per static
`StepConfig` (chunk size, candidate count, block layout, options) and reused
for every chunk of a catalog of any length.

Per row (vmapped), over the models — the whole grid in ``n_blocks`` blocks of
``block_size`` (online log-sum-exp merge), or the row's candidate list:

1. log weights ``lw_i = log L + log pi + log w``; ``chi2_i``;
2. running ``log Z``, ``sum w^2`` (ESS), ``chi2_min``, and the top ``cap``
   models (merged block by block with ``lax.top_k``);
3. truncation: the fewest top models whose mass reaches ``keep_mass`` (at least
   ``keep_min``, at most ``cap``; ties optional), renormalised;
4. summaries of the kept models (or, with truncation off, of every model, via
   mergeable partial sums): histogram stats per target, covariance, KDE.

Nothing here touches the host; statuses are bit flags (`Status`).
"""

from __future__ import annotations

import dataclasses
import enum

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Bool, Float, Int

from .fitter import GridData
from .prob.priors import prior_log_prob
from .summaries import (
    Moments,
    argmax_last,
    bin_index,
    cumsum_last,
    dense_histogram,
    hist_stats,
    histogram_from_index,
    kde_masses,
    merge_moments,
    moments,
)

__all__ = [
    "Status",
    "BAD_STATUS",
    "StepConfig",
    "StepParams",
    "Chunk",
    "ChunkOutput",
    "chunk_step",
    "trace_count",
]


class Status(enum.IntFlag):
    """Per-row status bit flags (``0`` = ok). Rows with any of `BAD_STATUS` have NaN
    summaries and no candidates; the other flags are warnings."""

    OK = 0
    NO_OBSERVABLES = 1  #: no band with a finite value and error
    NO_CANDIDATES = 2  #: the preselection gave this row no candidate
    ZERO_WEIGHT = 4  #: every model has zero posterior weight (log L + log prior = -inf)
    KDE_FALLBACK = 8  #: KDE impossible (one effective sample): histogram used instead
    MASS_CAP = 16  #: the candidate cap bound before keep_mass was reached
    FULL_GRID_FALLBACK = 32  #: preselection failed for this row; the full grid was used
    BAD_INPUT = 64  #: infinite values or negative errors were treated as missing bands
    NO_MASS_IN_BINS = 128  #: a summarised target has no posterior mass inside its bins


BAD_STATUS = Status.NO_OBSERVABLES | Status.NO_CANDIDATES | Status.ZERO_WEIGHT

_TRACES = 0


def trace_count() -> int:
    """How many times `chunk_step` has been traced (compiled) in this process."""
    return _TRACES


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Static configuration: every field changes the compiled program.

    ``cap`` is the static top-k size: the most candidates a row can keep
    (``posterior_keep_max_candidates`` when given). ``block_size`` x
    ``n_blocks`` covers the (padded) grid on the full-grid path; on the
    candidate path the single block is the row's K candidates.
    """

    n_models: int
    block_size: int
    n_blocks: int
    cap: int
    truncate: bool
    keep_ties: bool
    stat_cols: tuple[int, ...]
    find_multimodal: bool
    use_kde: bool
    fast_k: int = 0  #: first try a top-``fast_k`` (cheaper); full top-``cap`` if a row needs more
    extensive: tuple[int, ...] = ()  #: positions in stat_cols shifted by the likelihood
    #: per summarised target, a `histogram_layout` of the whole grid (full-grid,
    #: one-block, untruncated steps only); empty = scatter-add histograms
    hist_layouts: tuple[tuple, ...] = ()
    #: per summarised target: every model of a bin has the same value (`bin_constant_values`)
    hist_const: tuple[bool, ...] = ()


class StepParams(eqx.Module):
    """Dynamic parameters (changing them does not recompile)."""

    keep_mass: Array
    keep_min: Array
    edges: tuple[Array, ...]
    hist_index: tuple[Array | None, ...] = ()  #: the "gather" layouts' bin -> models tables
    bin_values: tuple[Array | None, ...] = ()  #: per target, its value in each bin (hist_const)


class Chunk(eqx.Module):
    """One chunk of rows, padded to the chunk size with all-NaN rows (which come out
    flagged ``NO_OBSERVABLES`` and are dropped by the host)."""

    x: Float[Array, "rows obs"]
    sigma: Float[Array, "rows obs"]
    upper: Bool[Array, "rows obs"] | None
    cand: Int[Array, "rows cand"] | None
    cand_mask: Bool[Array, "rows cand"] | None


class ChunkOutput(eqx.Module):
    """Per-row results of a chunk (device arrays, leading axis = rows)."""

    log_evidence: Array
    chi2_min: Array
    best: Array
    status: Array
    cand_idx: Array
    cand_w: Array
    n_before: Array
    n_after: Array
    mass_kept: Array
    mass_dropped: Array
    cut_weight: Array
    ess_before: Array
    ess_after: Array
    mean: Array
    std: Array
    map: Array
    median: Array
    lo68: Array
    hi68: Array
    nmodes: Array
    cov: Array
    pdf: tuple[Array, ...]


class _Acc(eqx.Module):
    m: Array
    W: Array
    S2: Array
    top_vals: Array
    top_idx: Array
    chi2_min: Array
    n_valid: Array
    stats: Moments | None


def _stat_columns(targets: Array, config: StepConfig) -> Array:
    """The summarised targets' columns, by static slices (an index-array gather would
    sit inside the fused reductions and stop their vectorisation)."""
    if not config.stat_cols:
        return targets[..., :0]
    return jnp.stack([targets[..., c] for c in config.stat_cols], axis=-1)


def _evaluate(lik, prior, data: GridData, x, sigma, upper, models, native, targets, log_w, valid):
    """``(lw, chi2)`` of one native row against a set of models (``-inf`` = excluded)."""
    xs, ss = data.to_likelihood_space(x, sigma)
    ll, chi2 = lik.log_likelihood_and_chi2(xs, ss, models, upper)
    lw = ll + prior_log_prob(prior, targets, native, x) + log_w
    lw = jnp.where(valid & ~jnp.isnan(lw), lw, -jnp.inf)
    return lw, jnp.where(jnp.isfinite(lw), chi2, jnp.inf)


def _top_k_then(config: StepConfig, params: StepParams, lw, log_z, n_valid, finish):
    """``finish(top_vals, top_pos)`` on the top log weights of each row of ``lw``.

    XLA's CPU top-k cost grows steeply with k, and so do the summaries of the
    kept list. When ``fast_k < cap`` the chunk first takes the top ``fast_k``;
    if every row reaches ``keep_mass`` within it (with a margin against
    rounding), or has no more valid models, ``finish`` runs on that short list
    — the kept sets are identical to a full top-``cap`` — and its per-row
    candidate lists are padded to ``cap``. Otherwise the chunk takes the full
    top-``cap``. (Inside a ``lax.cond`` XLA keeps its fast CPU top-k kernel;
    inlined into the step it was seen to fall back to a ~30x slower sort, so
    the full path goes through a cond too.)
    """

    def full(_):
        return finish(*lax.top_k(lw, config.cap))

    if config.cap == 1:  # only the best model: an argmax, no top-k
        pos = argmax_last(lw)[:, None]
        return finish(jnp.take_along_axis(lw, pos, axis=1), pos.astype(jnp.int32))
    if config.fast_k >= config.cap:
        return lax.cond(jnp.all(n_valid >= 0), full, full, None)
    v1, p1 = lax.top_k(lw, config.fast_k)
    shift = jnp.where(jnp.isfinite(log_z), log_z, 0.0)[:, None]
    cum = jnp.sum(jnp.where(jnp.isfinite(v1), jnp.exp(v1 - shift), 0.0), axis=1)
    ok = (cum >= params.keep_mass + 1e-4) | (n_valid <= config.fast_k) | ~jnp.isfinite(log_z)
    pad = config.cap - config.fast_k

    def fast(_):
        out = finish(v1, p1)
        rows = lw.shape[0]
        return dataclasses.replace(
            out,
            cand_idx=jnp.concatenate(
                [out.cand_idx, jnp.full((rows, pad), -1, out.cand_idx.dtype)], 1
            ),
            cand_w=jnp.concatenate([out.cand_w, jnp.zeros((rows, pad), out.cand_w.dtype)], 1),
        )

    return lax.cond(jnp.all(ok), fast, full, None)


def _single_block(config, data, lik, prior, params, chunk: Chunk, model_bins) -> ChunkOutput:
    """All models of a row in one block (the whole grid, or the row's candidates)."""
    dtype = data.models.dtype
    if chunk.cand is None:

        def evaluate(x, sigma, upper, cand, cand_mask):
            return _evaluate(
                lik,
                prior,
                data,
                x,
                sigma,
                upper,
                data.models,
                data.models_native,
                data.targets,
                data.log_weights,
                True,
            )
    else:

        def evaluate(x, sigma, upper, cand, cand_mask):
            safe = jnp.where(cand_mask, cand, 0)
            return _evaluate(
                lik,
                prior,
                data,
                x,
                sigma,
                upper,
                data.models[safe],
                data.models_native[safe],
                data.targets[safe],
                data.log_weights[safe],
                cand_mask,
            )

    lw, chi2 = jax.vmap(evaluate)(chunk.x, chunk.sigma, chunk.upper, chunk.cand, chunk.cand_mask)
    # Materialise the log weights and chi^2 once: otherwise XLA re-fuses the whole
    # likelihood into each consumer (chi2 min, max, exp, ...) and computes it ~3 times.
    lw, chi2 = lax.optimization_barrier((lw, chi2))
    m = jnp.max(lw, axis=1)
    ms = jnp.where(jnp.isfinite(m), m, 0.0)
    w = jnp.where(jnp.isfinite(lw), jnp.exp(lw - ms[:, None]), 0.0)
    W, S2 = jnp.sum(w, axis=1), jnp.sum(w * w, axis=1)
    # a float count (exact below 2^24 models): XLA's CPU int reduce materialises a copy
    n_valid = jnp.sum(jnp.where(jnp.isfinite(lw), 1.0, 0.0), axis=1).astype(jnp.int32)
    log_z = jnp.where(W > 0, m + jnp.log(jnp.where(W > 0, W, 1.0)), -jnp.inf)

    # Whole grid, untruncated: scatter-free histograms where the grid's order allows,
    # and the targets whose bins hold one value each (both planned on the host).
    dense = vals = None
    if chunk.cand is None and not config.truncate and config.hist_layouts:
        dense = tuple(
            None if layout[0] == "scatter" else dense_histogram(w, layout, index)
            for layout, index in zip(config.hist_layouts, params.hist_index, strict=True)
        )
        if config.hist_const:
            vals = tuple(
                v if const else None
                for v, const in zip(params.bin_values, config.hist_const, strict=True)
            )

    def finish_row(
        x, sigma, upper, cand, cand_mask, lw_r, w_r, m_r, W_r, S2_r, chi2_r, nv, tv, ti, h_r
    ):
        stats = None
        if not config.truncate:
            if cand is None:
                t, b = data.targets, model_bins
            else:
                safe = jnp.where(cand_mask, cand, 0)
                t, b = data.targets[safe], tuple(mb[safe] for mb in model_bins)
            hists = None
            if h_r is not None:
                hists = tuple(
                    histogram_from_index(bi, w_r, e.shape[0] - 1) if h is None else h
                    for h, bi, e in zip(h_r, b, params.edges, strict=True)
                )
            t = _stat_columns(t, config)
            stats = moments(
                lw_r, t, params.edges, b, scaled=(m_r, w_r), hists=hists, bin_values=vals
            )
        acc = _Acc(m_r, W_r, S2_r, tv, ti, jnp.min(chi2_r), nv, stats)
        shift = _kept_shift(config, data, lik, x, sigma, upper, ti)
        return _finalise(config, data, params, acc, x, sigma, cand_mask, dtype, model_bins, shift)

    def finish(top_vals, top_pos):
        if chunk.cand is None:
            top_idx = top_pos
        else:
            safe = jnp.where(chunk.cand_mask, chunk.cand, 0)
            top_idx = jnp.take_along_axis(safe, top_pos, axis=1)
        return jax.vmap(finish_row)(
            chunk.x,
            chunk.sigma,
            chunk.upper,
            chunk.cand,
            chunk.cand_mask,
            lw,
            w,
            m,
            W,
            S2,
            chi2,
            n_valid,
            top_vals,
            top_idx,
            dense,
        )

    return _top_k_then(config, params, lw, log_z, n_valid, finish)


def _blocked_row(
    config: StepConfig, data: GridData, lik, prior, params: StepParams, model_bins, x, sigma, upper
):
    """One row against the whole grid, block by block (chunk x N over the memory budget)."""
    dtype = data.models.dtype

    def evaluate(models, native, targets, log_w, gidx, valid):
        return _evaluate(lik, prior, data, x, sigma, upper, models, native, targets, log_w, valid)

    def absorb(acc: _Acc | None, lw, chi2, gidx, targets, bins) -> _Acc:
        m_b = jnp.max(lw)
        if acc is None:
            m = m_b
        else:
            m = jnp.maximum(acc.m, m_b)
        ms = jnp.where(jnp.isfinite(m), m, 0.0)
        w = jnp.where(jnp.isfinite(lw), jnp.exp(lw - ms), 0.0)
        if acc is None:
            vals, pos = lax.top_k(lw, config.cap)
            idx = gidx[pos]
            W, S2 = jnp.sum(w), jnp.sum(w * w)
            chi2_min, n_valid = jnp.min(chi2), jnp.sum(jnp.isfinite(lw))
        else:
            scale = jnp.where(jnp.isfinite(acc.m), jnp.exp(acc.m - ms), 0.0)
            vals, pos = lax.top_k(jnp.concatenate([acc.top_vals, lw]), config.cap)
            idx = jnp.concatenate([acc.top_idx, gidx])[pos]
            W = acc.W * scale + jnp.sum(w)
            S2 = acc.S2 * scale**2 + jnp.sum(w * w)
            chi2_min = jnp.minimum(acc.chi2_min, jnp.min(chi2))
            n_valid = acc.n_valid + jnp.sum(jnp.isfinite(lw))
        stats = None
        if not config.truncate:
            block = moments(lw, _stat_columns(targets, config), params.edges, bins)
            stats = block if acc is None else merge_moments(acc.stats, block)
        return _Acc(m, W, S2, vals, idx, chi2_min, n_valid, stats)

    # The model axis in n_blocks blocks, merged exactly (online log-sum-exp).
    B, nb = config.block_size, config.n_blocks

    def blocks(a):
        return a.reshape((nb, B) + a.shape[1:])

    gidx_all = jnp.arange(nb * B, dtype=jnp.int32)
    xs_blocks = (
        blocks(data.models),
        blocks(data.models_native),
        blocks(data.targets),
        blocks(data.log_weights),
        blocks(gidx_all),
        tuple(blocks(mb) for mb in model_bins),
    )

    def one(acc, blk):
        models, native, targets, log_w, gidx, bins = blk
        lw, chi2 = evaluate(models, native, targets, log_w, gidx, True)
        return absorb(acc, lw, chi2, gidx, targets, bins)

    first = jax.tree_util.tree_map(lambda a: a[0], xs_blocks)
    acc = one(None, first)
    if nb > 1:
        rest = jax.tree_util.tree_map(lambda a: a[1:], xs_blocks)
        acc, _ = lax.scan(lambda c, b: (one(c, b), None), acc, rest)

    shift = _kept_shift(config, data, lik, x, sigma, upper, acc.top_idx)
    return _finalise(config, data, params, acc, x, sigma, None, dtype, model_bins, shift)


def _kept_shift(config, data, lik, x, sigma, upper, top_idx):
    """Per kept model shift of the extensive targets (e.g. log10 amplitude), or None."""
    if not config.extensive:
        return None
    xs, ss = data.to_likelihood_space(x, sigma)
    return lik.target_shift(xs, ss, data.models[top_idx], upper)


def _finalise(config, data, params, acc: _Acc, x, sigma, cand_mask, dtype, model_bins, shift=None):
    nan = jnp.array(jnp.nan, dtype)
    has_mass = acc.W > 0
    log_z = jnp.where(has_mass, acc.m + jnp.log(jnp.where(has_mass, acc.W, 1.0)), -jnp.inf)
    z_shift = jnp.where(has_mass, log_z, 0.0)
    w_top = jnp.where(jnp.isfinite(acc.top_vals) & has_mass, jnp.exp(acc.top_vals - z_shift), 0.0)
    cum = cumsum_last(w_top)
    pos = jnp.arange(acc.top_vals.shape[0])  # the (possibly short) top list
    n_valid = acc.n_valid.astype(jnp.int32)
    cap_bound = jnp.array(False)
    if config.truncate:
        need = 1 + jnp.sum(cum < params.keep_mass).astype(jnp.int32)
        n_keep = jnp.clip(jnp.maximum(need, params.keep_min), 1, config.cap)
        n_keep = jnp.minimum(n_keep, n_valid)
        if config.keep_ties:
            thr = w_top[jnp.maximum(n_keep - 1, 0)]
            n_keep = jnp.maximum(n_keep, jnp.sum((w_top >= thr) & (w_top > 0)).astype(jnp.int32))
        cap_bound = (need > config.cap) & (n_valid > config.cap)
    else:
        n_keep = jnp.minimum(n_valid, config.cap)
    keep = pos < n_keep
    kept_w = jnp.where(keep, w_top, 0.0)
    kept_sum = jnp.sum(kept_w)
    post = kept_w / jnp.where(kept_sum > 0, kept_sum, 1.0)
    ess_before = acc.W**2 / jnp.where(acc.S2 > 0, acc.S2, 1.0)
    ess_after = 1.0 / jnp.where(jnp.sum(post**2) > 0, jnp.sum(post**2), 1.0)
    # targets of the listed models (extensive ones shifted per model) and their bins
    t_kept = _stat_columns(data.targets[acc.top_idx], config)
    kept_bins = [mb[acc.top_idx] for mb in model_bins]
    if shift is not None:
        for i in config.extensive:
            t_kept = t_kept.at[:, i].add(shift)
            kept_bins[i] = bin_index(t_kept[:, i], params.edges[i])
    kept_bins = tuple(kept_bins)
    if config.truncate:
        mass_kept = kept_sum
        cut_weight = w_top[jnp.maximum(n_keep - 1, 0)]
        kept_lw = jnp.where(keep, acc.top_vals, -jnp.inf)
        stats = moments(kept_lw, t_kept, params.edges, kept_bins)
    else:
        mass_kept = jnp.array(1.0, dtype)
        cut_weight = jnp.array(0.0, dtype)
        ess_after = ess_before
        stats = acc.stats

    kde_failed = jnp.array(False)
    per_target = []
    for i, e in enumerate(params.edges):
        mass = stats.hists[i]
        if config.use_kde:
            kept_t = t_kept[:, i]
            kmass, ok = kde_masses(kept_t, post, e)
            mass = jnp.where(ok, kmass, mass)
            kde_failed = kde_failed | ~ok
        per_target.append(hist_stats(mass, e, config.find_multimodal))
    no_mass = jnp.array(False)
    for hs in per_target:
        no_mass = no_mass | jnp.isnan(hs.mean)

    d = len(config.stat_cols)
    Ws = jnp.where(stats.W > 0, stats.W, 1.0)
    s2n = stats.S2 / Ws**2
    cov = (stats.M / Ws) / jnp.where(s2n < 1.0, 1.0 - s2n, jnp.nan)

    usable = jnp.any(jnp.isfinite(x) & jnp.isfinite(sigma))
    status = jnp.where(usable, 0, int(Status.NO_OBSERVABLES))
    if cand_mask is not None:
        status = status | jnp.where(jnp.any(cand_mask), 0, int(Status.NO_CANDIDATES))
    status = status | jnp.where((status == 0) & ~has_mass, int(Status.ZERO_WEIGHT), 0)
    status = status | jnp.where(cap_bound, int(Status.MASS_CAP), 0)
    if config.use_kde:
        status = status | jnp.where(kde_failed, int(Status.KDE_FALLBACK), 0)
    bad = (status & int(BAD_STATUS)) != 0
    status = status | jnp.where(no_mass & ~bad, int(Status.NO_MASS_IN_BINS), 0)

    def clean(v):
        return jnp.where(bad, jnp.full_like(v, jnp.nan), v)

    def stack(name):
        if d == 0:
            return jnp.zeros(0, dtype)
        return clean(jnp.stack([getattr(h, name) for h in per_target]))

    nmodes = (
        jnp.where(bad, -1, jnp.stack([h.nmodes for h in per_target]))
        if d
        else jnp.zeros(0, jnp.int32)
    )
    return ChunkOutput(
        log_evidence=jnp.where(bad, -jnp.inf, log_z),
        chi2_min=jnp.where(bad, nan, acc.chi2_min),
        best=jnp.where(bad, -1, acc.top_idx[0]),
        status=status.astype(jnp.int32),
        cand_idx=jnp.where(keep & ~bad, acc.top_idx, -1),
        cand_w=jnp.where(keep & ~bad, post, 0.0),
        n_before=jnp.where(bad, 0, n_valid),
        n_after=jnp.where(bad, 0, n_keep),
        mass_kept=clean(mass_kept),
        mass_dropped=clean(1.0 - mass_kept),
        cut_weight=clean(cut_weight),
        ess_before=clean(ess_before),
        ess_after=clean(ess_after),
        mean=stack("mean"),
        std=stack("std"),
        map=stack("map"),
        median=stack("median"),
        lo68=stack("lo68"),
        hi68=stack("hi68"),
        nmodes=nmodes,
        cov=clean(cov),
        pdf=tuple(clean(h.density) for h in per_target),
    )


@eqx.filter_jit
def chunk_step(
    config: StepConfig, data: GridData, likelihood, prior, params: StepParams, chunk: Chunk
) -> ChunkOutput:
    """Posterior and summaries for every row of ``chunk`` (see module docs)."""
    global _TRACES
    _TRACES += 1  # runs at trace time only: counts compilations

    # Each model's bin per summarised target: row-independent, computed once per chunk.
    model_bins = tuple(
        bin_index(data.targets[:, c], e)
        for c, e in zip(config.stat_cols, params.edges, strict=True)
    )

    def row(x, sigma, upper):
        return _blocked_row(config, data, likelihood, prior, params, model_bins, x, sigma, upper)

    if config.n_blocks == 1 or chunk.cand is not None:
        return _single_block(config, data, likelihood, prior, params, chunk, model_bins)
    # Optional fields are None (empty pytrees), which vmap passes through.
    return jax.vmap(row)(chunk.x, chunk.sigma, chunk.upper)
