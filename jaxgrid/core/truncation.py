"""Posterior-mass truncation by a per-row log-weight threshold (pure JAX, traceable).

The kept set of a row is the smallest set of its highest-weight models whose mass
reaches ``keep_mass`` — at least ``keep_min`` and at most ``keep_max`` models, all
models tied with the last one kept when ``keep_ties`` — exactly the set a float64
sort of the weights gives (ties in model-index order). It has no static size: it
is described by a threshold ``t`` on the log weights and a tie count ``r``:

    kept = {i : lw_i > t}  U  {the first r models (by index) with lw_i == t}

Two ways to find ``t``:

* `select_sorted`: from a row's top list (descending), when the kept set fits in
  it (`Selection.fits`) — a cumulative sum over a short list.
* `select_search`: from any set of models, given a function that counts the models
  and sums their weights above a trial threshold: bisection over the ordered
  integer keys of the floating-point values, exact after at most 32 (float32) or
  64 (float64) passes, then one pass for the counts at ``t``. Works on a whole
  grid, on candidate lists and over model blocks alike (the counts and masses of
  disjoint blocks add).

Weights here are *scaled*: ``w_i = exp(lw_i - m)`` with ``m`` the row's largest
log weight, ``W = sum w``; the mass of a set is ``sum w / W``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax.numpy as jnp
from jax import lax
from jaxtyping import Array

from .reductions import cumsum_last

__all__ = [
    "Limits",
    "Selection",
    "float_key",
    "key_float",
    "select_sorted",
    "select_search",
    "kept_mask",
]


class Limits(NamedTuple):
    """The truncation rule of a row: ``keep_w = keep_mass * W`` (scaled weights),
    ``keep_min``/``keep_max`` model counts (``keep_max`` = the pool size when the user
    set none), and whether tied models at the cut are all kept."""

    keep_w: Array
    keep_min: Array
    keep_max: Array
    keep_ties: bool


class Selection(NamedTuple):
    """A row's kept set: threshold ``t`` (a log weight), ``n_gt`` models above it,
    ``n_eq`` at it, of which the first ``r`` (by index) are kept: ``n_keep = n_gt + r``.
    ``capped``: ``keep_max`` stopped the set before it reached ``keep_mass``."""

    t: Array
    n_gt: Array
    n_eq: Array
    n_keep: Array
    capped: Array

    @property
    def r(self) -> Array:
        return self.n_keep - self.n_gt

    @property
    def split_tie(self) -> Array:
        """Some but not all of the models tied at ``t`` are kept (needs index ranks)."""
        return (self.n_keep - self.n_gt) < self.n_eq


def _uint(dtype):
    return jnp.uint64 if jnp.dtype(dtype).itemsize == 8 else jnp.uint32


def float_key(x: Array) -> Array:
    """Unsigned integer keys ordered like the floats ``x`` (NaN-free): ``a < b`` iff
    ``key(a) < key(b)`` (``-0.0`` sorts just below ``+0.0``)."""
    u = _uint(x.dtype)
    sign = jnp.array(1, u) << (8 * jnp.dtype(x.dtype).itemsize - 1)
    bits = lax.bitcast_convert_type(x, u)
    return jnp.where((bits & sign) != 0, ~bits, bits | sign)


def key_float(k: Array, dtype) -> Array:
    """The inverse of `float_key`."""
    u = _uint(dtype)
    sign = jnp.array(1, u) << (8 * jnp.dtype(dtype).itemsize - 1)
    bits = jnp.where((k & sign) != 0, k ^ sign, ~k)
    return lax.bitcast_convert_type(bits, dtype)


def _finish(t, n_gt, n_eq, mass_gt, m, limits: Limits, n_valid) -> Selection:
    """Kept count from the counts and mass at the threshold ``t``."""
    w_t = jnp.exp(t - m)
    one = jnp.ones_like(n_gt)
    # ties at t each carry w_t: how many of them the mass needs
    short = jnp.maximum(limits.keep_w - mass_gt, 0.0)
    r_mass = jnp.ceil(short / jnp.where(w_t > 0, w_t, 1.0)).astype(n_gt.dtype)
    need = n_gt + jnp.clip(r_mass, 1, jnp.maximum(n_eq, 1))
    n_keep = jnp.minimum(jnp.maximum(need, limits.keep_min.astype(n_gt.dtype)), limits.keep_max)
    n_keep = jnp.clip(n_keep, n_gt + one, n_gt + jnp.maximum(n_eq, 1))
    if limits.keep_ties:
        n_keep = n_gt + n_eq
    n_keep = jnp.where(n_valid > 0, jnp.minimum(n_keep, n_valid), 0)
    kept_w = mass_gt + (n_keep - n_gt).astype(w_t.dtype) * w_t
    capped = (n_keep >= limits.keep_max) & (kept_w < limits.keep_w)
    return Selection(t, n_gt, n_eq, n_keep, capped)


def _rule(count, mass, limits: Limits):
    """The prefix of ``count`` models holding scaled mass ``mass`` is enough."""
    return (count >= limits.keep_max) | ((mass >= limits.keep_w) & (count >= limits.keep_min))


def select_sorted(vals: Array, m: Array, limits: Limits, n_valid: Array) -> tuple[Selection, Array]:
    """Selection from one row's top list ``vals`` (L,) of log weights, descending (ties
    in index order, ``-inf`` padded). Returns ``(selection, fits)``: ``fits`` is true
    when the list decides the kept set — it holds every valid model, or the rule is
    met inside it (and, with ``keep_ties``, the tie group at the cut ends inside it;
    without, the list's ties are the lowest-index ones, as the rule takes them).
    Otherwise use `select_search`. ``n_eq`` counts the ties inside the list."""
    L = vals.shape[-1]
    w = jnp.where(jnp.isfinite(vals), jnp.exp(vals - m), 0.0)
    cum = cumsum_last(w)
    hit = _rule(jnp.arange(1, L + 1), cum, limits) & jnp.isfinite(vals)
    found = jnp.any(hit)
    n = jnp.where(found, jnp.argmax(hit) + 1, jnp.minimum(L, n_valid))
    n = jnp.maximum(n, 1).astype(jnp.int32)
    t = vals[n - 1]
    n_gt = jnp.sum(vals > t).astype(jnp.int32)
    n_eq = jnp.sum(vals == t).astype(jnp.int32)
    n_keep = n_gt + n_eq if limits.keep_ties else n
    n_keep = jnp.where(n_valid > 0, n_keep, 0)
    capped = found & (n >= limits.keep_max) & (cum[n - 1] < limits.keep_w)
    decided = found & (vals[L - 1] < t) if limits.keep_ties else found
    return Selection(t, n_gt, n_eq, n_keep, capped), (n_valid <= L) | decided


def select_search(
    stats_at: Callable[[Array], tuple[Array, Array, Array, Array]],
    lo: Array,
    hi: Array,
    m: Array,
    limits: Limits,
    n_valid: Array,
) -> Selection:
    """Exact selection by bisection on the threshold, for rows of any kept size.

    ``stats_at(t)`` returns ``(n_ge, mass_ge, n_gt, mass_gt)`` — the number of models
    with ``lw >= t`` (resp. ``> t``) and the sum of their scaled weights — for a
    per-row threshold ``t`` (shape of ``m``). ``lo``/``hi``: the smallest and largest
    finite log weight of each row. Every array has the row shape of ``m`` (any
    leading batch shape; the loop runs until every row has converged).
    """

    dtype = m.dtype
    klo, khi = float_key(lo), float_key(hi)

    def cond(state):
        a, b = state
        return jnp.any(a < b)

    def body(state):
        a, b = state
        open_ = a < b
        mid = a + (b - a + 1) // 2  # upper middle: the loop keeps the largest key that passes
        n_ge, mass_ge, _, _ = stats_at(key_float(jnp.where(open_, mid, a), dtype))
        good = _rule(n_ge, mass_ge, limits)
        a = jnp.where(open_ & good, mid, a)
        b = jnp.where(open_ & ~good, mid - 1, b)
        return a, b

    ka, _ = lax.while_loop(cond, body, (klo, jnp.maximum(khi, klo)))
    t = key_float(ka, dtype)
    n_ge, _, n_gt, mass_gt = stats_at(t)
    n_gt = n_gt.astype(jnp.int32)
    return _finish(t, n_gt, n_ge.astype(jnp.int32) - n_gt, mass_gt, m, limits, n_valid)


def kept_mask(lw: Array, sel: Selection, split_any: bool | Array = True) -> Array:
    """``(..., n)`` mask of the kept models of each row of ``lw`` given its selection
    (the selection's arrays have the leading shape). Tied models at the cut are taken
    in index order; ``split_any=False`` promises that no row splits a tie group (then
    no prefix count is needed)."""
    t = sel.t[..., None]
    above = lw > t
    at = lw == t
    if split_any is False:
        return (above | at) & jnp.isfinite(lw)

    def ranked(_):
        # 1-based rank among the ties (a float prefix sum: exact below 2^24 models, and
        # XLA's CPU cumsum is quadratic)
        rank = cumsum_last(jnp.where(at, 1.0, 0.0).astype(lw.dtype)).astype(jnp.int32)
        return above | (at & (rank <= sel.r[..., None]))

    def whole(_):
        return above | at

    mask = lax.cond(jnp.any(sel.split_tie), ranked, whole, None)
    return mask & jnp.isfinite(lw) & (sel.n_keep[..., None] > 0)
