"""The chunk step: one jitted posterior-and-summary computation for a chunk of rows.

``chunk_step(config, data, likelihood, prior, params, chunk) -> ChunkOutput`` is
the only jit boundary of batch fitting. It is compiled once per static
`StepConfig` (chunk size, list length, block layout, options) and reused for
every chunk of a catalog of any length.

Per row, over its *pool* of models — the whole grid (in ``n_blocks`` blocks of
``block_size``, merged exactly) or the row's candidate list:

1. log weights ``lw_i = log L + log pi + log w`` and ``chi2_i``;
2. totals: ``log Z`` (log-sum-exp), ``sum w^2`` (ESS), ``chi2_min``, the best
   model and the row's sorted top ``list_k`` models;
3. truncation (`jaxgrid.core.truncation`): a log-weight threshold whose super-level
   set is the kept set, of any size from 1 to the pool. When every row of the
   chunk is decided by its top list (`select_sorted`), the summaries run on the
   lists; otherwise the chunk finds each row's threshold by bisection
   (`select_search`) and summarises *masked* pools — exact for any kept size;
4. summaries of the kept models (every valid model when truncation is off):
   histogram stats per target, covariance, KDE;
5. flags (`Status`) and NaN clean-up of bad rows.

The kept models are listed in ``cand_idx``/``cand_w`` up to ``list_k`` of them;
``n_after`` may be larger — the host then lists the rest (`pool_log_weights`).
Nothing here touches the host.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Bool, Float, Int, Int32

from ..prob.posterior import log_weights_and_chi2
from ..prob.priors import prior_log_prob
from .bins import bin_index
from .data import GridData
from .reductions import (
    Moments,
    argmax_last,
    cumsum_last,
    dense_histogram,
    hist_stats,
    histogram_from_index,
    kde_bandwidth,
    kde_density_sum,
    merge_moments,
    moments,
    top_k_two_level,
)
from .schema import HIST_STATS
from .status import MIN_MASS_IN_BINS, Status, is_bad
from .truncation import Limits, Selection, kept_mask, select_search, select_sorted

__all__ = [
    "StepConfig",
    "StepParams",
    "Chunk",
    "ChunkOutput",
    "chunk_step",
    "model_bins",
    "pool_log_weights",
    "REFINE_LOG_WEIGHT",
    "pool_trace_count",
    "trace_count",
]


#: Rows whose largest log weight or chi2_min exceeds this in size get their log weights
#: again *relative to their best model* (`AbstractLikelihood.log_likelihood_ratio`): a
#: float32 log weight of -1.8e5 is only known to +-0.008, which moves weights by ~1 %.
#: Their log Z is then ``log_evidence_rel`` plus the reference model's log weight, which
#: the host evaluates in float64 where the likelihood allows (GaussianProductLikelihood,
#: CompositeLikelihood of such terms); otherwise its float32 value (off by ~1e-7 |log Z|).
REFINE_LOG_WEIGHT = 256.0

_TRACES = 0


_POOL_TRACES = 0


def trace_count() -> int:
    """How many times `chunk_step` has been traced (compiled) in this process."""
    return _TRACES


def pool_trace_count() -> int:
    """How many times `pool_log_weights` has been traced in this process."""
    return _POOL_TRACES


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Static configuration: every field changes the compiled program.

    ``list_k`` is the length of each row's sorted top list (the candidates the step
    hands back; 1 = only the best model). ``block_size`` x ``n_blocks`` covers the
    (padded) grid on the full-grid path; on the candidate path the single block is
    the row's K candidates. ``keep_ties`` is the effective tie rule (off when the
    user bounds the count with ``keep_max``, as BESTA).
    """

    n_models: int
    block_size: int
    n_blocks: int
    list_k: int
    truncate: bool
    keep_ties: bool
    stat_cols: tuple[int, ...]
    find_multimodal: bool
    use_kde: bool
    extensive: tuple[int, ...] = ()  #: positions in stat_cols shifted by the likelihood
    #: per summarised target, a `histogram_layout` of the whole grid (full-grid,
    #: one-block steps only); empty = scatter-add histograms
    hist_layouts: tuple[tuple, ...] = ()
    #: per summarised target: every model of a bin has the same value (`bin_constant_values`)
    hist_const: tuple[bool, ...] = ()
    #: short candidate pools: no device sort; every row's kept set by bisection, and the
    #: pool's log weights handed back (``pool_lw``) for the host to order (``list_k`` = 1)
    host_order: bool = False


class StepParams(eqx.Module, strict=True):
    """Dynamic parameters (changing them does not recompile)."""

    keep_mass: Array
    keep_min: Array
    keep_max: Array  #: the pool size when the user set no bound
    edges: tuple[Array, ...]
    #: per summarised target, each model's `bin_index` (the padded grid's length; computed
    #: once per plan with `model_bins`, not per chunk)
    model_bins: tuple[Array, ...] = ()
    hist_index: tuple[Array | None, ...] = ()  #: the "gather" layouts' bin -> models tables
    bin_values: tuple[Array | None, ...] = ()  #: per target, its value in each bin (hist_const)
    #: (P + 1,) the chi2 above which a row with ``dof`` degrees of freedom is a poor fit
    #: (built on the host: ``chi2.isf(POOR_FIT_PROBABILITY, dof)``); None: no POOR_FIT flag
    poor_fit_chi2: Array | None = None


class Chunk(eqx.Module, strict=True):
    """One chunk of rows, padded to the chunk size with all-NaN rows (which come out
    flagged ``NO_OBSERVABLES`` and are dropped by the host)."""

    x: Float[Array, "rows obs"]
    sigma: Float[Array, "rows obs"]
    upper: Bool[Array, "rows obs"] | None
    cand: Int[Array, "rows cand"] | None
    cand_mask: Bool[Array, "rows cand"] | None
    #: (rows,) `ChunkOutput.ref` of a step, for `pool_log_weights` (None: every row plain)
    ref: Int[Array, " rows"] | None = None


class ChunkOutput(eqx.Module, strict=True):
    """Per-row results of a chunk (leading axis = rows; a row's own output, built inside
    the step's vmap, has the same fields without it). The per-row fields the user sees
    are named and typed in `jaxgrid.core.schema`; the shapes below are checked on every
    step of the test suite (``tests/step_checks.py``, jaxtyping + beartype)."""

    log_evidence: Float[Array, " rows"]
    chi2_min: Float[Array, " rows"]
    best: Int[Array, " rows"]
    status: Int32[Array, " rows"]
    cand_idx: Int[Array, "rows list"]  #: the first kept models, descending weight; -1 padded
    cand_w: Float[Array, "rows list"]  #: their normalised weights; 0 padded
    n_before: Int[Array, " rows"]
    n_after: Int[Array, " rows"]
    mass_kept: Float[Array, " rows"]
    mass_dropped: Float[Array, " rows"]
    cut_weight: Float[Array, " rows"]
    ess_before: Float[Array, " rows"]
    ess_after: Float[Array, " rows"]
    mean: Float[Array, "rows targets"]
    std: Float[Array, "rows targets"]
    map: Float[Array, "rows targets"]
    median: Float[Array, "rows targets"]
    lo68: Float[Array, "rows targets"]
    hi68: Float[Array, "rows targets"]
    nmodes: Int32[Array, "rows targets"]
    cov: Float[Array, "rows targets targets"]
    pdf: tuple[Float[Array, "rows _"], ...]  #: per target, the density on its bins
    pool_lw: Float[Array, "rows pool"]  #: the pool's log weights (``host_order``), else pool 0
    mass_in_bins: Float[Array, "rows targets"]  #: fraction of the kept mass in the bins
    #: grid index of the model the row's log weights are relative to (-1: plain)
    ref: Int[Array, " rows"]
    #: log Z relative to model ``ref`` (``log_evidence`` where ``ref`` is -1): the host
    #: adds that model's log weight evaluated in float64 (`_host_log_evidence`)
    log_evidence_rel: Float[Array, " rows"]
    #: log prior + log grid weight of model ``ref`` (0 where ``ref`` is -1)
    ref_log_prior: Float[Array, " rows"]


class _Totals(NamedTuple):
    """Whole-pool quantities of a row (scaled weights ``w = exp(lw - m)``)."""

    m: Array
    W: Array
    S2: Array
    n_valid: Array
    chi2_min: Array
    lo: Array  #: smallest finite log weight (bisection bracket; blocked path only)
    top_vals: Array  #: (list_k,) descending log weights
    top_idx: Array  #: (list_k,) their grid indices
    shift: Array  #: added to the log weights for log Z (0, or the refined row's best lw)
    ref: Array  #: grid index of the refinement's reference model (-1: plain log weights)


class _Kept(NamedTuple):
    """A row's kept set and its summaries' raw material."""

    sel: Selection
    stats: Moments
    kde: tuple[Array, ...] | None  #: per target, KDE masses per bin (None without KDE)
    kde_ok: Array


def model_bins(targets: Array, stat_cols: tuple[int, ...], edges: tuple[Array, ...]):
    """Each model's bin per summarised target (`StepParams.model_bins`)."""
    return tuple(bin_index(targets[:, c], e) for c, e in zip(stat_cols, edges, strict=True))


def _stat_columns(targets: Array, config: StepConfig) -> Array:
    """The summarised targets' columns, by static slices (an index-array gather would
    sit inside the fused reductions and stop their vectorisation)."""
    if not config.stat_cols:
        return targets[..., :0]
    return jnp.stack([targets[..., c] for c in config.stat_cols], axis=-1)


def _needs_refinement(m, chi2_min):
    """Rows whose log weights are large enough for float32 rounding to move weights."""
    big = (jnp.abs(m) > REFINE_LOG_WEIGHT) | (chi2_min > 2.0 * REFINE_LOG_WEIGHT)
    return jnp.isfinite(m) & big


def _grid_ref(data: GridData, i):
    """The `log_weights_and_chi2` reference tuple of grid model ``i``."""
    return data.models[i], data.models_native[i], data.targets[i], data.log_weights[i]


def _scaled(lw, m):
    ms = jnp.where(jnp.isfinite(m), m, 0.0)
    return jnp.where(jnp.isfinite(lw), jnp.exp(lw - ms[..., None]), 0.0)


def _top(config: StepConfig, lw, n_valid):
    """``(vals, pos)`` of the top ``list_k`` log weights of each row of ``lw``.

    Inside a ``lax.cond`` XLA keeps its fast CPU top-k kernel; inlined into the
    step it was seen to fall back to a ~30x slower sort (a cond whose branches are
    the same function keeps the kernel and costs nothing)."""
    if config.list_k == 1:  # only the best model: an argmax, no top-k
        pos = argmax_last(lw)[:, None]
        return jnp.take_along_axis(lw, pos, axis=1), pos.astype(jnp.int32)

    def top(_):
        return top_k_two_level(lw, config.list_k)

    return lax.cond(jnp.all(n_valid >= 0), top, top, None)


def _limits(config: StepConfig, params: StepParams, W) -> Limits:
    return Limits(params.keep_mass * W, params.keep_min, params.keep_max, config.keep_ties)


def _all_valid(tot: _Totals) -> Selection:
    """The 'selection' of an untruncated row: every valid model."""
    z = jnp.zeros_like(tot.n_valid)
    return Selection(tot.lo, tot.n_valid, z, tot.n_valid, jnp.zeros_like(tot.n_valid, bool))


# ------------------------------------------------------------------ summaries
def _shifted(config, data, lik, x, sigma, upper, models, t, bins, edges):
    """Targets (and bins) of a pool with the extensive ones shifted per model."""
    if not config.extensive:
        return t, bins
    xs, ss = data.to_likelihood_space(x, sigma)
    shift = lik.target_shift(xs, ss, models, upper)
    bins = list(bins)
    for i in config.extensive:
        t = t.at[:, i].add(shift)
        bins[i] = bin_index(t[:, i], edges[i])
    return t, tuple(bins)


def _kde(config, params, t, w, stats: Moments):
    """Per target KDE masses of a pool with kept weights ``w`` (Scott's rule on the
    kept set's moments), and whether KDE was possible for every target."""
    if not config.use_kde:
        return None, jnp.array(True)
    out, ok_all = [], jnp.array(True)
    for i, e in enumerate(params.edges):
        h, ok = kde_bandwidth(stats, i)
        Ws = jnp.where(stats.W > 0, stats.W, 1.0)
        out.append(kde_density_sum(t[:, i], w / Ws, e, h) * jnp.diff(e))
        ok_all = ok_all & ok
    return tuple(out), ok_all


def _pool_summaries(config, params, w, t, bins, hists=None, vals=None):
    """Moments of a pool's (masked) scaled weights ``w``."""
    if hists is not None:
        hists = tuple(
            histogram_from_index(b, w, e.shape[0] - 1) if h is None else h
            for h, b, e in zip(hists, bins, params.edges, strict=True)
        )
    # weights are already on the row's scale (w = exp(lw - m_row)): every pool and block
    # shares the reference 0, so merging them needs no rescaling
    m = jnp.zeros((), w.dtype)
    return moments(w, t, params.edges, bins, scaled=(m, w), hists=hists, bin_values=vals)


class _Truncation(NamedTuple):
    """A row's evidence and truncation bookkeeping (before clean-up)."""

    log_z: Array  #: log Z (with the row's shift added back)
    log_z_rel: Array  #: log Z relative to the reference model (0 without refinement)
    has_mass: Array  #: some model has weight
    in_list: Array  #: (list_k,) list positions inside the kept set
    w_list: Array  #: (list_k,) the listed models' weights on the row's scale
    mass_kept: Array
    cut_weight: Array
    ess_before: Array
    ess_after: Array


class _Summaries(NamedTuple):
    """A row's per-target summaries of the kept models (before clean-up)."""

    per_target: list  #: `HistStats` per summarised target
    in_bins: list  #: per target, the in-bin fraction of the kept mass
    cov: Array  #: (D, D) weighted covariance (unbiased for reliability weights)
    kde_failed: Array
    no_mass: Array  #: some target has no kept mass inside its bins
    low_mass: Array  #: some target has less than `MIN_MASS_IN_BINS` of it inside


def _truncate(config, tot: _Totals, kept: _Kept, dtype) -> _Truncation:
    """Evidence, the kept list's weights, kept mass, cut weight and ESS of a row."""
    has_mass = tot.W > 0
    # log weights may be relative to the row's best model (shift): log Z adds it back
    log_z_rel = jnp.where(has_mass, tot.m + jnp.log(jnp.where(has_mass, tot.W, 1.0)), -jnp.inf)
    sel, stats = kept.sel, kept.stats
    pos = jnp.arange(tot.top_vals.shape[0])
    in_list = pos < sel.n_keep
    w_list = jnp.where(in_list & jnp.isfinite(tot.top_vals), jnp.exp(tot.top_vals - tot.m), 0.0)
    ess_before = tot.W**2 / jnp.where(tot.S2 > 0, tot.S2, 1.0)
    if config.truncate:
        # at most 1: the kept and total sums may be summed in another order (blocked
        # passes recompute the log weights), a rounding excess of ~1e-6 at most once
        # large log weights are refined (`REFINE_LOG_WEIGHT`)
        mass_kept = jnp.minimum(stats.W / jnp.where(has_mass, tot.W, 1.0), 1.0)
        cut_weight = jnp.where(has_mass, jnp.exp(sel.t - log_z_rel), 0.0)
        ess_after = stats.W**2 / jnp.where(stats.S2 > 0, stats.S2, 1.0)
    else:
        mass_kept, cut_weight, ess_after = jnp.array(1.0, dtype), jnp.array(0.0, dtype), ess_before
    return _Truncation(
        log_z=tot.shift + log_z_rel,
        log_z_rel=log_z_rel,
        has_mass=has_mass,
        in_list=in_list,
        w_list=w_list,
        mass_kept=mass_kept,
        cut_weight=cut_weight,
        ess_before=ess_before,
        ess_after=ess_after,
    )


def _summarise(config, params, kept: _Kept) -> _Summaries:
    """Per-target histogram stats (KDE masses where asked and possible), in-bin
    fractions and the covariance of the kept models."""
    stats = kept.stats
    Wk = jnp.where(stats.W > 0, stats.W, 1.0)
    kde_failed = jnp.array(False)
    per_target = []
    for i, e in enumerate(params.edges):
        mass = stats.hists[i]
        if kept.kde is not None:
            mass = jnp.where(kept.kde_ok, kept.kde[i], mass)
            kde_failed = ~kept.kde_ok
        per_target.append(hist_stats(mass, e, config.find_multimodal))
    no_mass = jnp.array(False)
    for hs in per_target:
        no_mass = no_mass | jnp.isnan(hs.mean)
    # in-bin fraction of the kept (histogrammed) mass, per target
    in_bins = [jnp.clip(jnp.sum(h) / Wk, 0.0, 1.0) for h in stats.hists]
    low_mass = jnp.array(False)
    for f in in_bins:
        low_mass = low_mass | ((f > 0) & (f < MIN_MASS_IN_BINS))
    s2n = stats.S2 / Wk**2
    cov = (stats.M / Wk) / jnp.where(s2n < 1.0, 1.0 - s2n, jnp.nan)
    return _Summaries(per_target, in_bins, cov, kde_failed, no_mass, low_mass)


def _flag(
    config,
    params,
    tot: _Totals,
    kept: _Kept,
    tr: _Truncation,
    su: _Summaries,
    x,
    sigma,
    cand_mask,
    dof,
):
    """The row's `Status` bits."""
    usable = jnp.any(jnp.isfinite(x) & jnp.isfinite(sigma))
    status = jnp.where(usable, 0, int(Status.NO_OBSERVABLES))
    if cand_mask is not None:
        status = status | jnp.where(jnp.any(cand_mask), 0, int(Status.NO_CANDIDATES))
    status = status | jnp.where((status == 0) & ~tr.has_mass, int(Status.ZERO_WEIGHT), 0)
    status = status | jnp.where(kept.sel.capped, int(Status.MASS_CAP), 0)
    if config.use_kde:
        status = status | jnp.where(su.kde_failed, int(Status.KDE_FALLBACK), 0)
    bad = is_bad(status)
    status = status | jnp.where(su.no_mass & ~bad, int(Status.NO_MASS_IN_BINS), 0)
    status = status | jnp.where(su.low_mass & ~bad, int(Status.LOW_MASS_IN_BINS), 0)
    if params.poor_fit_chi2 is not None:
        limit = params.poor_fit_chi2[jnp.clip(dof, 0, params.poor_fit_chi2.shape[0] - 1)]
        poor = (dof > 0) & (tot.chi2_min > limit) & ~bad
        status = status | jnp.where(poor, int(Status.POOR_FIT), 0)
    return status


def _finish_row(config, params, tot: _Totals, kept: _Kept, x, sigma, cand_mask, dtype, dof):
    """Per-row outputs: truncate -> summarise -> flag -> clean (NaN summaries, no
    candidates and ``log Z = -inf`` for rows with a `BAD_STATUS` flag)."""
    tr = _truncate(config, tot, kept, dtype)
    su = _summarise(config, params, kept)
    status = _flag(config, params, tot, kept, tr, su, x, sigma, cand_mask, dof)
    bad = is_bad(status)
    return _clean_row(config, tot, kept, tr, su, status, bad, dtype)


def _clean_row(
    config, tot: _Totals, kept: _Kept, tr: _Truncation, su: _Summaries, status, bad, dtype
):
    """The row's `ChunkOutput`, bad rows cleaned: NaN summaries (``nmodes`` -1), no
    candidates, ``log Z = -inf``."""
    nan = jnp.array(jnp.nan, dtype)
    d = len(config.stat_cols)
    Wk = jnp.where(kept.stats.W > 0, kept.stats.W, 1.0)

    def clean(v):
        return jnp.where(bad, jnp.full_like(v, jnp.nan), v)

    def per_target(name):
        """One `HIST_STATS` field of every summarised target, cleaned."""
        if d == 0:
            return jnp.zeros(0, jnp.int32 if name == "nmodes" else dtype)
        v = jnp.stack([getattr(h, name) for h in su.per_target])
        return jnp.where(bad, -1, v) if name == "nmodes" else clean(v)

    listed = tr.in_list & ~bad
    return ChunkOutput(
        log_evidence=jnp.where(bad, -jnp.inf, tr.log_z),
        chi2_min=jnp.where(bad, nan, tot.chi2_min),
        best=jnp.where(bad, -1, tot.top_idx[0]),
        status=status.astype(jnp.int32),
        cand_idx=jnp.where(listed, tot.top_idx, -1),
        cand_w=jnp.where(listed, tr.w_list / Wk, 0.0),
        n_before=jnp.where(bad, 0, tot.n_valid),
        n_after=jnp.where(bad, 0, kept.sel.n_keep),
        mass_kept=clean(tr.mass_kept),
        mass_dropped=clean(1.0 - tr.mass_kept),
        cut_weight=clean(tr.cut_weight),
        ess_before=clean(tr.ess_before),
        ess_after=clean(tr.ess_after),
        **{name: per_target(name) for name in HIST_STATS},
        cov=clean(su.cov),
        pdf=tuple(clean(h.density) for h in su.per_target),
        pool_lw=jnp.zeros(0, dtype),
        mass_in_bins=clean(jnp.stack(su.in_bins)) if d else jnp.zeros(0, dtype),
        ref=jnp.where(bad, -1, tot.ref),
        log_evidence_rel=jnp.where(bad, -jnp.inf, tr.log_z_rel),
        ref_log_prior=jnp.zeros((), dtype),
    )


def _dof(data: GridData, lik, x, sigma, upper):
    xs, ss = data.to_likelihood_space(x, sigma)
    return lik.chi2_dof(xs, ss, upper)


# --------------------------------------------------------- one block per row
def _single_block(config, data, lik, prior, params, chunk: Chunk, model_bins) -> ChunkOutput:
    """All models of a row in one block (the whole grid, or the row's candidates)."""
    dtype = data.models.dtype
    cand = chunk.cand is not None

    def pool(x, sigma, upper, c, cmask):
        """A row's pool: (models, native, targets, log w, valid, bins)."""
        if not cand:
            return (
                data.models,
                data.models_native,
                data.targets,
                data.log_weights,
                True,
                model_bins,
            )
        safe = jnp.where(cmask, c, 0)
        return (
            data.models[safe],
            data.models_native[safe],
            data.targets[safe],
            data.log_weights[safe],
            cmask,
            tuple(mb[safe] for mb in model_bins),
        )

    def evaluate(x, sigma, upper, c, cmask):
        models, native, targets, log_w, valid, _ = pool(x, sigma, upper, c, cmask)
        return log_weights_and_chi2(
            lik, prior, data, x, sigma, upper, models, native, targets, log_w, valid
        )

    def evaluate_ref(x, sigma, upper, c, cmask, pos):
        """The row's log weights relative to its pool model ``pos``."""
        models, native, targets, log_w, valid, _ = pool(x, sigma, upper, c, cmask)
        ref = (models[pos], native[pos], targets[pos], log_w[pos])
        return log_weights_and_chi2(
            lik, prior, data, x, sigma, upper, models, native, targets, log_w, valid, ref
        )[0]

    rows = (chunk.x, chunk.sigma, chunk.upper, chunk.cand, chunk.cand_mask)
    lw, chi2 = jax.vmap(evaluate)(*rows)
    # Materialise the log weights and chi^2 once: otherwise XLA re-fuses the whole
    # likelihood into each consumer (chi2 min, max, exp, ...) and computes it ~3 times.
    lw, chi2 = lax.optimization_barrier((lw, chi2))
    m = jnp.max(lw, axis=1)
    chi2_min = jnp.min(chi2, axis=1)
    need = _needs_refinement(m, chi2_min)

    # Rows far from every model: their log weights again, relative to their best model,
    # one row at a time, updated in place (a loop of zero trips for ordinary chunks:
    # no copy of the (rows, n) array, unlike a cond returning it).
    order = jnp.nonzero(need, size=need.shape[0], fill_value=0)[0]

    def refine_row(state):
        k, lw_c, m_c, pos_c = state
        r = order[k]
        row = tuple(None if a is None else a[r] for a in rows)
        pos = argmax_last(lw_c[r])
        new = evaluate_ref(*row, pos)
        lw_c = lax.dynamic_update_slice(lw_c, new[None, :], (r, jnp.zeros((), r.dtype)))
        return k + 1, lw_c, m_c.at[r].set(jnp.max(new)), pos_c.at[r].set(pos)

    zero = jnp.zeros(m.shape, jnp.int32)
    n_refine = jnp.sum(need.astype(jnp.int32))
    m_plain = m
    _, lw, m, ref_pos = lax.while_loop(
        lambda st: st[0] < n_refine, refine_row, (jnp.int32(0), lw, m, zero)
    )
    shift = jnp.where(need, m_plain, 0.0)
    ref_idx = ref_pos if not cand else jnp.take_along_axis(chunk.cand, ref_pos[:, None], 1)[:, 0]
    ref_idx = jnp.where(need, ref_idx, -1)
    w = _scaled(lw, m)
    W, S2 = jnp.sum(w, axis=1), jnp.sum(w * w, axis=1)
    # a float count (exact below 2^24 models): XLA's CPU int reduce materialises a copy;
    # no named mask (a mask used twice is materialised as a whole (rows, n) array)
    n_valid = jnp.sum(jnp.where(lw > -jnp.inf, 1.0, 0.0), axis=1).astype(jnp.int32)
    top_vals, top_pos = _top(config, lw, n_valid)
    top_idx = (
        top_pos
        if not cand
        else jnp.take_along_axis(jnp.where(chunk.cand_mask, chunk.cand, 0), top_pos, axis=1)
    )
    # (the bisection bracket's low end is found in the exact branch only: a full pass)
    tot = _Totals(m, W, S2, n_valid, chi2_min, m, top_vals, top_idx, shift, ref_idx)

    # Whole grid: scatter-free histograms where the grid's order allows, and the
    # targets whose bins hold one value each (both planned on the host).
    dense = vals = None
    if not cand and config.hist_layouts:
        vals = (
            tuple(
                v if c else None for v, c in zip(params.bin_values, config.hist_const, strict=True)
            )
            if config.hist_const
            else None
        )

        def dense_hists(wk):
            return tuple(
                None if layout[0] == "scatter" else dense_histogram(wk, layout, index)
                for layout, index in zip(config.hist_layouts, params.hist_index, strict=True)
            )

        dense = dense_hists
    if config.extensive:
        vals = None  # shifted targets no longer sit one value per bin

    def whole(sel: Selection, wk):
        """Summaries of every row's whole pool under kept weights ``wk`` (rows, n)."""
        hists = None if dense is None else dense(wk)

        def one(x, sigma, upper, c, cmask, w_r, h_r):
            models, _, targets, _, _, bins = pool(x, sigma, upper, c, cmask)
            t = _stat_columns(targets, config)
            t, bins = _shifted(config, data, lik, x, sigma, upper, models, t, bins, params.edges)
            hh = h_r if h_r is not None else (None,) * len(bins)
            stats = _pool_summaries(config, params, w_r, t, bins, hh, vals)
            kde, ok = _kde(config, params, t, w_r, stats)
            return stats, kde, ok

        stats, kde, ok = jax.vmap(one)(*rows, wk, hists)
        return _Kept(sel, stats, kde, ok)

    def listed(sel: Selection):
        """Summaries of the kept models on each row's top list (it decides them all)."""

        def one(x, sigma, upper, c, cmask, vals_r, idx_r, m_r, s: Selection):
            wk = jnp.where(jnp.arange(config.list_k) < s.n_keep, _scaled(vals_r, m_r), 0.0)
            models = data.models[idx_r]
            t = _stat_columns(data.targets[idx_r], config)
            bins = tuple(mb[idx_r] for mb in model_bins)
            t, bins = _shifted(config, data, lik, x, sigma, upper, models, t, bins, params.edges)
            stats = _pool_summaries(config, params, wk, t, bins)
            kde, ok = _kde(config, params, t, wk, stats)
            return stats, kde, ok

        stats, kde, ok = jax.vmap(one)(*rows, top_vals, top_idx, m, sel)
        return _Kept(sel, stats, kde, ok)

    if not config.truncate:
        kept = whole(_all_valid(tot), w)
    else:
        fast, fits = jax.vmap(
            lambda v, m_r, W_r, n_r: select_sorted(v, m_r, _limits(config, params, W_r), n_r)
        )(top_vals, m, W, n_valid)
        limits = _limits(config, params, W)

        def exact(_):
            def stats_at(t):
                ge, gt = lw >= t[:, None], lw > t[:, None]
                one = jnp.ones_like(w)
                return (
                    jnp.sum(jnp.where(ge, one, 0.0), 1),
                    jnp.sum(jnp.where(ge, w, 0.0), 1),
                    jnp.sum(jnp.where(gt, one, 0.0), 1),
                    jnp.sum(jnp.where(gt, w, 0.0), 1),
                )

            lo = jnp.min(jnp.where(jnp.isfinite(lw), lw, jnp.inf), axis=1)
            hi = jnp.where(n_valid > 0, m, 0.0)
            sel = select_search(stats_at, jnp.where(n_valid > 0, lo, 0.0), hi, m, limits, n_valid)
            return whole(sel, jnp.where(kept_mask(lw, sel), w, 0.0))

        if config.host_order:
            kept = exact(None)
        else:
            kept = lax.cond(jnp.all(fits), lambda _: listed(fast), exact, None)

    out = jax.vmap(
        lambda tot_r, kept_r, x, sigma, upper, cm: _finish_row(
            config, params, tot_r, kept_r, x, sigma, cm, dtype, _dof(data, lik, x, sigma, upper)
        )
    )(tot, kept, chunk.x, chunk.sigma, chunk.upper, chunk.cand_mask)
    if config.host_order:
        out = dataclasses.replace(out, pool_lw=lw)
    return out


# ------------------------------------------------------- model blocks per row
def _blocks(config: StepConfig, data: GridData, model_bins):
    """The (padded) grid as ``n_blocks`` blocks (leading axis) for `lax.scan`."""
    B, nb = config.block_size, config.n_blocks

    def split(a):
        return a.reshape((nb, B) + a.shape[1:])

    return (
        split(data.models),
        split(data.models_native),
        split(data.targets),
        split(data.log_weights),
        split(jnp.arange(nb * B, dtype=jnp.int32)),
        tuple(split(mb) for mb in model_bins),
    )


def _scan_blocks(blocks, init, fn):
    """``fn(carry, block) -> carry`` over every block."""
    first = jax.tree_util.tree_map(lambda a: a[0], blocks)
    carry = fn(init, first)
    if jax.tree_util.tree_leaves(blocks)[0].shape[0] > 1:
        rest = jax.tree_util.tree_map(lambda a: a[1:], blocks)
        carry, _ = lax.scan(lambda c, b: (fn(c, b), None), carry, rest)
    return carry


def _blocked(config, data, lik, prior, params, chunk: Chunk, model_bins) -> ChunkOutput:
    """Rows against the whole grid, block by block (chunk x N over the memory budget).

    Pass 1 gathers each row's totals and top list (and, untruncated, its moments); a
    chunk whose rows are not all decided by their lists finds each threshold by
    bisection (one pass over the blocks per step) and summarises in a last pass."""
    dtype = data.models.dtype
    L = config.list_k
    blocks = _blocks(config, data, model_bins)

    def plain_lw(x, sigma, upper, blk):
        models, native, targets, log_w, gidx, bins = blk
        return log_weights_and_chi2(
            lik, prior, data, x, sigma, upper, models, native, targets, log_w, True
        )

    def refined_lw(x, sigma, upper, blk, ref):
        """Relative to grid model ``ref`` where ``ref >= 0``, else plain."""
        models, native, targets, log_w, gidx, bins = blk
        lw, chi2 = plain_lw(x, sigma, upper, blk)
        lw_r, _ = log_weights_and_chi2(
            lik,
            prior,
            data,
            x,
            sigma,
            upper,
            models,
            native,
            targets,
            log_w,
            True,
            _grid_ref(data, jnp.maximum(ref, 0)),
        )
        return jnp.where(ref >= 0, lw_r, lw), chi2

    refine_chunk = None  # set after pass 1: does any row of the chunk need refinement

    def lw_of(x, sigma, upper, blk, ref=None):
        if ref is None:
            return plain_lw(x, sigma, upper, blk)
        # a chunk-level (unbatched) predicate: stays a cond under vmap, so chunks
        # without refined rows pay nothing
        return lax.cond(
            refine_chunk,
            lambda: refined_lw(x, sigma, upper, blk, ref),
            lambda: plain_lw(x, sigma, upper, blk),
        )

    def block_targets(x, sigma, upper, blk):
        models, _, targets, _, _, bins = blk
        t = _stat_columns(targets, config)
        return _shifted(config, data, lik, x, sigma, upper, models, t, bins, params.edges)

    def pass1(x, sigma, upper, ref=None):
        def absorb(acc, blk):
            lw, chi2 = (
                plain_lw(x, sigma, upper, blk)
                if ref is None
                else refined_lw(x, sigma, upper, blk, ref)
            )
            gidx = blk[4]
            m_b = jnp.max(lw)
            m = m_b if acc is None else jnp.maximum(acc[0].m, m_b)
            w = _scaled(lw, m)
            finite = jnp.isfinite(lw)
            lo_b = jnp.min(jnp.where(finite, lw, jnp.inf))
            stats = None
            if not config.truncate:
                t, bins = block_targets(x, sigma, upper, blk)
                stats = moments(lw, t, params.edges, bins)
            if acc is None:
                vals, pos = lax.top_k(lw, L)
                tot = _Totals(
                    m,
                    jnp.sum(w),
                    jnp.sum(w * w),
                    jnp.sum(finite).astype(jnp.int32),
                    jnp.min(chi2),
                    lo_b,
                    vals,
                    gidx[pos],
                    jnp.zeros((), dtype),
                    jnp.int32(-1),
                )
                return tot, stats
            prev, pstats = acc
            scale = jnp.where(
                jnp.isfinite(prev.m), jnp.exp(prev.m - jnp.where(jnp.isfinite(m), m, 0.0)), 0.0
            )
            vals, pos = lax.top_k(jnp.concatenate([prev.top_vals, lw]), L)
            tot = _Totals(
                m,
                prev.W * scale + jnp.sum(w),
                prev.S2 * scale**2 + jnp.sum(w * w),
                prev.n_valid + jnp.sum(finite).astype(jnp.int32),
                jnp.minimum(prev.chi2_min, jnp.min(chi2)),
                jnp.minimum(prev.lo, lo_b),
                vals,
                jnp.concatenate([prev.top_idx, gidx])[pos],
                prev.shift,
                prev.ref,
            )
            return tot, None if stats is None else merge_moments(pstats, stats)

        return _scan_blocks(blocks, None, absorb)

    rows = (chunk.x, chunk.sigma, chunk.upper)
    tot, untrunc = jax.vmap(pass1)(*rows)
    # rows far from every model: pass 1 again, relative to each one's best model
    need = _needs_refinement(tot.m, tot.chi2_min)
    refine_chunk = jnp.any(need)
    ref = jnp.where(need, tot.top_idx[:, 0], -1)
    shift = jnp.where(need, tot.m, 0.0)

    def rerun():
        # only the refined rows take the new pass: the others keep pass 1 bitwise
        def pick(a, b):
            return jnp.where(need.reshape(need.shape + (1,) * (a.ndim - 1)), a, b)

        return jax.tree_util.tree_map(pick, jax.vmap(pass1)(*rows, ref), (tot, untrunc))

    tot, untrunc = lax.cond(refine_chunk, rerun, lambda: (tot, untrunc))
    tot = tot._replace(shift=shift, ref=ref)

    def listed_row(x, sigma, upper, tot_r: _Totals, sel: Selection):
        wk = jnp.where(jnp.arange(L) < sel.n_keep, _scaled(tot_r.top_vals, tot_r.m), 0.0)
        idx = tot_r.top_idx
        t = _stat_columns(data.targets[idx], config)
        bins = tuple(mb[idx] for mb in model_bins)
        t, bins = _shifted(
            config, data, lik, x, sigma, upper, data.models[idx], t, bins, params.edges
        )
        stats = _pool_summaries(config, params, wk, t, bins)
        kde, ok = _kde(config, params, t, wk, stats)
        return _Kept(sel, stats, kde, ok)

    def masked_row(ranked: bool, every_valid: bool = False):
        """Summaries of a row's kept models by one pass over the blocks (and a KDE pass);
        ``every_valid``: untruncated, every finite model is kept (no threshold compare,
        which a recomputed log weight could miss by an ulp)."""

        def run(x, sigma, upper, tot_r: _Totals, sel: Selection):
            def kept_w(blk, seen):
                lw, _ = lw_of(x, sigma, upper, blk, tot_r.ref)
                above, at = lw > sel.t, (lw == sel.t) & jnp.isfinite(lw)
                if every_valid:
                    keep = jnp.isfinite(lw)
                elif ranked:
                    rank = seen + cumsum_last(jnp.where(at, 1.0, 0.0)).astype(jnp.int32)
                    keep = above | (at & (rank <= sel.r))
                    seen = seen + jnp.sum(at.astype(jnp.int32))
                else:
                    keep = above | at
                return jnp.where(keep, _scaled(lw, tot_r.m), 0.0), seen

            def absorb(acc, blk):
                stats, seen = acc
                wk, seen = kept_w(blk, seen)
                t, bins = block_targets(x, sigma, upper, blk)
                s = _pool_summaries(config, params, wk, t, bins, (None,) * len(bins))
                # rescale onto the row's max: every block's m is 0 here (weights are scaled)
                return (s if stats is None else merge_moments(stats, s)), seen

            stats, _ = _scan_blocks(blocks, (None, jnp.int32(0)), absorb)
            if not config.use_kde:
                return _Kept(sel, stats, None, jnp.array(True))
            hs = [kde_bandwidth(stats, i) for i in range(len(params.edges))]
            Ws = jnp.where(stats.W > 0, stats.W, 1.0)

            def kde_absorb(acc, blk):
                dens, seen = acc
                wk, seen = kept_w(blk, seen)
                t, _ = block_targets(x, sigma, upper, blk)
                add = tuple(
                    kde_density_sum(t[:, i], wk / Ws, e, h)
                    for i, (e, (h, _)) in enumerate(zip(params.edges, hs, strict=True))
                )
                return tuple(a + b for a, b in zip(dens, add, strict=True)), seen

            zero = tuple(jnp.zeros(e.shape[0] - 1, dtype) for e in params.edges)
            dens, _ = _scan_blocks(blocks, (zero, jnp.int32(0)), kde_absorb)
            ok = jnp.array(True)
            for _, o in hs:
                ok = ok & o
            kde = tuple(d * jnp.diff(e) for d, e in zip(dens, params.edges, strict=True))
            return _Kept(sel, stats, kde, ok)

        return run

    if not config.truncate:
        sel = _all_valid(tot)
        if config.use_kde:
            kept = jax.vmap(masked_row(False, every_valid=True))(*rows, tot, sel)
        else:
            kept = _Kept(sel, untrunc, None, jnp.ones(chunk.x.shape[0], bool))
    else:
        fast, fits = jax.vmap(
            lambda v, m_r, W_r, n_r: select_sorted(v, m_r, _limits(config, params, W_r), n_r)
        )(tot.top_vals, tot.m, tot.W, tot.n_valid)

        def exact(_):
            def search(x, sigma, upper, tot_r: _Totals):
                lim = _limits(config, params, tot_r.W)

                def stats_at(t):
                    def absorb(acc, blk):
                        lw, _ = lw_of(x, sigma, upper, blk, tot_r.ref)
                        w = _scaled(lw, tot_r.m)
                        ge, gt = lw >= t, lw > t
                        return (
                            acc[0] + jnp.sum(ge),
                            acc[1] + jnp.sum(jnp.where(ge, w, 0.0)),
                            acc[2] + jnp.sum(gt),
                            acc[3] + jnp.sum(jnp.where(gt, w, 0.0)),
                        )

                    z = jnp.zeros((), dtype)
                    return _scan_blocks(blocks, (jnp.int32(0), z, jnp.int32(0), z), absorb)

                ok = tot_r.n_valid > 0
                return select_search(
                    stats_at,
                    jnp.where(ok, tot_r.lo, 0.0),
                    jnp.where(ok, tot_r.m, 0.0),
                    tot_r.m,
                    lim,
                    tot_r.n_valid,
                )

            sel = jax.vmap(search)(*rows, tot)
            return lax.cond(
                jnp.any(sel.split_tie & (sel.n_keep > 0)),
                lambda s: jax.vmap(masked_row(True))(*rows, tot, s),
                lambda s: jax.vmap(masked_row(False))(*rows, tot, s),
                sel,
            )

        kept = lax.cond(
            jnp.all(fits), lambda _: jax.vmap(listed_row)(*rows, tot, fast), exact, None
        )

    return jax.vmap(
        lambda tot_r, kept_r, x, sigma, upper: _finish_row(
            config, params, tot_r, kept_r, x, sigma, None, dtype, _dof(data, lik, x, sigma, upper)
        )
    )(tot, kept, chunk.x, chunk.sigma, chunk.upper)


@eqx.filter_jit
def chunk_step(
    config: StepConfig, data: GridData, likelihood, prior, params: StepParams, chunk: Chunk
) -> ChunkOutput:
    """Posterior and summaries for every row of ``chunk`` (see module docs)."""
    global _TRACES
    _TRACES += 1  # runs at trace time only: counts compilations

    model_bins = params.model_bins
    if config.n_blocks == 1 or chunk.cand is not None:
        out = _single_block(config, data, likelihood, prior, params, chunk, model_bins)
    else:
        out = _blocked(config, data, likelihood, prior, params, chunk, model_bins)

    def ref_log_prior(x, r):
        """log prior + log w of the row's reference model (one model: O(1) values,
        accurate in float32; the host adds its float64 log L)."""
        i = jnp.maximum(r, 0)
        xn = data.native_row(x)
        lp = prior_log_prob(prior, data.targets[i][None], data.models_native[i][None], xn)[0]
        return jnp.where(r >= 0, lp + data.log_weights[i], 0.0)

    return dataclasses.replace(out, ref_log_prior=jax.vmap(ref_log_prior)(chunk.x, out.ref))


@eqx.filter_jit
def pool_log_weights(
    config: StepConfig, data: GridData, likelihood, prior, chunk: Chunk, block: Array
) -> Array:
    """``(rows, block_size)`` log weights of a chunk's rows over model block ``block``
    of the grid (or over each row's candidates): what the host needs to list the
    kept models of rows whose kept set is longer than ``list_k``. Same arithmetic
    as `chunk_step` (`log_weights_and_chi2`): rows with ``chunk.ref >= 0`` (the step's
    `ChunkOutput.ref`) relative to that grid model, as the step refined them."""
    global _POOL_TRACES
    _POOL_TRACES += 1

    def row(x, sigma, upper, c, cmask, ref):
        if c is None:
            B = config.block_size
            start = block * B

            def sl(a):
                return lax.dynamic_slice_in_dim(a, start, B)

            models, native = sl(data.models), sl(data.models_native)
            targets, log_w, valid = sl(data.targets), sl(data.log_weights), True
        else:
            safe = jnp.where(cmask, c, 0)
            models, native = data.models[safe], data.models_native[safe]
            targets, log_w, valid = data.targets[safe], data.log_weights[safe], cmask
        args = (likelihood, prior, data, x, sigma, upper, models, native, targets, log_w, valid)
        lw = log_weights_and_chi2(*args)[0]
        if ref is None:
            return lw
        lw_r = log_weights_and_chi2(*args, _grid_ref(data, jnp.maximum(ref, 0)))[0]
        return jnp.where(ref >= 0, lw_r, lw)

    return jax.vmap(row)(chunk.x, chunk.sigma, chunk.upper, chunk.cand, chunk.cand_mask, chunk.ref)
