"""`truncate_posterior_mass`: BESTA's standalone truncation helper, on the engine's rule.

BESTA's grid module exposes ``_truncate_posterior_mass(cand_idx, w, *, keep_mass,
min_candidates, max_candidates, keep_ties, tie_rtol, tie_atol)`` for one object's
candidate weights. Here it runs the batch engine's own selection
(`jaxgrid.core.truncation.select_sorted`, in float64) on the sorted weights, so the
helper and ``fit_batch`` can never disagree on a kept set.

Differences from BESTA 0.6.2 (docs/besta.md): the weights are normalised first
(BESTA's docstring says so; its code assumes normalised input); at least one model
is kept when any weight is positive (BESTA keeps none at ``keep_mass <= 0``); as in
``fit_batch``, truncation is off at ``keep_mass >= 0.9999`` without a max (every
candidate kept, in input order); tied candidates are ordered by index; zero weights
are never kept (BESTA keeps them to reach ``min_candidates``). The kept count comes
from the engine's scaled weights (``w / max w``): at a boundary within float64
rounding of ``keep_mass`` it can differ by one model from a plain cumulative sum.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .core.truncation import Limits, select_sorted

__all__ = ["truncate_posterior_mass", "_truncate_posterior_mass"]

_OFF_MASS = 0.9999  # as fit_batch: at or above it (no max, no ties), nothing is dropped


def _count(value: Any, name: str, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"truncate_posterior_mass: `{name}` must be an int >= 0, got {value!r}.")
    return int(value)


def truncate_posterior_mass(
    cand_idx: Any,
    w: Any,
    *,
    keep_mass: float,
    min_candidates: int = 0,
    max_candidates: int | None = None,
    keep_ties: bool = False,
    tie_rtol: float = 0.0,
    tie_atol: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The fewest highest-weight candidates whose mass reaches ``keep_mass``.

    Args:
        cand_idx: (n,) candidate indices (into a grid), returned for the kept ones.
        w: (n,) non-negative weights (normalised here; zero = never kept).
        keep_mass: target mass in [0, 1] (values outside are clipped, as BESTA).
        min_candidates: keep at least this many (when that many have weight).
        max_candidates: keep at most this many (None: no bound).
        keep_ties: also keep every candidate tied with the last one kept (not with a
            ``max_candidates``, as BESTA and ``fit_batch``); ``tie_rtol``/``tie_atol``
            widen "tied" to ``|w - w_cut| <= tie_atol + tie_rtol * w_cut``.

    Returns:
        ``(kept_idx, kept_w, meta)``: kept indices in descending weight (ties by
        index), their weights renormalised to 1, and ``meta`` with ``n_before``,
        ``n_after``, ``keep_mass``, ``mass_kept``, ``mass_dropped``, ``cut_weight``,
        ``ess_before``, ``ess_after`` (BESTA's keys).

    Example:
        >>> idx, w, meta = truncate_posterior_mass(np.arange(4), [0.5, 0.3, 0.1, 0.1],
        ...                                        keep_mass=0.75)
        >>> idx.tolist(), round(meta["mass_kept"], 2)
        ([0, 1], 0.8)
    """
    idx = np.asarray(cand_idx).reshape(-1)
    p = np.asarray(w, dtype=np.float64).reshape(-1)
    if idx.shape != p.shape:
        raise ValueError(
            f"truncate_posterior_mass: `cand_idx` has {idx.size} entries but `w` has {p.size}."
        )
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError("truncate_posterior_mass: `w` must be finite and non-negative.")
    if not np.isfinite(float(keep_mass)):
        raise ValueError(f"truncate_posterior_mass: `keep_mass` must be finite, got {keep_mass}.")
    keep_mass = float(np.clip(keep_mass, 0.0, 1.0))
    kmin = _count(min_candidates, "min_candidates")
    kmax = _count(max_candidates, "max_candidates", optional=True)
    if min(float(tie_rtol), float(tie_atol)) < 0:
        raise ValueError("truncate_posterior_mass: `tie_rtol` and `tie_atol` must be >= 0.")
    total = p.sum()
    n = p.size
    if n == 0 or total <= 0 or kmax == 0:
        return idx[:0], p[:0], _meta(n, 0, keep_mass, 0.0, np.nan, _ess(p), 0.0)
    p = p / total
    ess_before = _ess(p)
    ties = bool(keep_ties) and kmax is None
    if keep_mass >= _OFF_MASS and kmax is None:  # as BatchOptions.truncate
        return idx.copy(), p, _meta(n, n, keep_mass, 1.0, np.nan, ess_before, ess_before)
    order = np.argsort(-p, kind="stable")  # descending, ties in index order
    with np.errstate(divide="ignore"):
        lw = np.log(p[order])
    # padded to a power of two with -inf (invalid models): one compile per size class
    padded = np.full(1 << max(3, (n - 1).bit_length()), -np.inf)
    padded[:n] = lw
    keep_w = np.inf if keep_mass >= 1.0 else keep_mass / p[order[0]]
    kmax_eff = n if kmax is None else min(kmax, n)
    with jax.enable_x64(True):  # scoped: the engine's rule, in float64
        n_keep = int(_n_keep(padded, keep_w, kmin, kmax_eff, np.count_nonzero(p), ties))
    kept = order[:n_keep]
    cut = p[kept[-1]]
    tol = float(tie_atol) + float(tie_rtol) * cut
    if ties and tol > 0:  # BESTA's tolerant ties: everything within tol of the cut too
        kept = order[: int(np.count_nonzero(p[order] >= cut - tol))]
    mass = p[kept].sum()
    w_kept = p[kept] / mass
    return idx[kept], w_kept, _meta(n, kept.size, keep_mass, mass, cut, ess_before, _ess(w_kept))


@partial(jax.jit, static_argnums=5)
def _n_keep(lw, keep_w, kmin, kmax, n_valid, ties):
    """The engine's kept count for one sorted row of log weights (float64 under x64)."""
    limits = Limits(
        keep_w=jnp.asarray(keep_w, lw.dtype),
        keep_min=jnp.asarray(kmin, jnp.int32),
        keep_max=jnp.asarray(kmax, jnp.int32),
        keep_ties=ties,
    )
    sel, _ = select_sorted(lw, lw[0], limits, jnp.asarray(n_valid, jnp.int32))
    return sel.n_keep


def _ess(p: np.ndarray) -> float:
    s = np.sum(p * p)
    return float(1.0 / s) if s > 0 else 0.0


def _meta(n_before, n_after, keep_mass, mass_kept, cut, ess_before, ess_after) -> dict[str, Any]:
    return {
        "n_before": int(n_before),
        "n_after": int(n_after),
        "keep_mass": keep_mass,
        "mass_kept": float(mass_kept),
        "mass_dropped": float(max(0.0, 1.0 - mass_kept)),
        "cut_weight": float(cut),
        "ess_before": float(ess_before),
        "ess_after": float(ess_after),
    }


#: BESTA's name (``besta.grid.grid._truncate_posterior_mass``).
_truncate_posterior_mass = truncate_posterior_mass
