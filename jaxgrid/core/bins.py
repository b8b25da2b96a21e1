"""Bin edges and bin indices: one rule for the step, the priors and the host.

* `check_edges` — the one validation of user edges (``>= 2`` finite, strictly
  increasing), with the argument's name in the error;
* `default_edges` — `DEFAULT_N_EDGES` edges over a target's range (the default of
  ``fit_batch`` and of ``jaxgrid fit --stats TARGET``);
* `bin_index` (JAX) and `host_bin_index` (NumPy) — the bin of each value. Bins are
  half open ``[e_i, e_{i+1})`` except the last, which is closed. Values outside the
  edges (NaN included) are ``-1`` with ``outside="drop"`` (histograms: they carry no
  in-bin mass) or take the first/last bin with ``outside="clamp"`` (binned priors:
  a table is defined everywhere).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

__all__ = ["DEFAULT_N_EDGES", "check_edges", "default_edges", "bin_index", "host_bin_index"]

#: edges of a summarised target when the user gives none (199 bins over its range)
DEFAULT_N_EDGES = 200


def check_edges(edges: Any, name: str, owner: str = "") -> np.ndarray:
    """``edges`` as float64 if they are >= 2 finite, strictly increasing values, else a
    `ValueError` naming ``name`` (and ``owner``, the function or class asking)."""
    e = np.asarray(edges, dtype=np.float64)
    if e.ndim != 1 or e.size < 2 or not np.all(np.isfinite(e)) or np.any(np.diff(e) <= 0):
        where = f"{owner}: " if owner else ""
        raise ValueError(
            f"{where}`{name}` must be strictly increasing: >= 2 finite edges (1-D); got "
            f"{'shape ' + str(e.shape) if e.ndim != 1 else e[:6].tolist()}."
        )
    return e


def default_edges(values: Any, n_edges: int = DEFAULT_N_EDGES) -> np.ndarray:
    """``n_edges`` edges from the smallest to the largest finite value (a constant
    target gets the unit interval around it)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, n_edges)


def _check_outside(outside: str) -> None:
    if outside not in ("drop", "clamp"):
        raise ValueError(f"`outside` must be 'drop' or 'clamp', got {outside!r}.")


def bin_index(values: Array, edges: Array, outside: str = "drop") -> Array:
    """Bin of each value (int32): -1 outside the edges with ``"drop"``, the nearest
    end bin with ``"clamp"``. The last bin is closed."""
    _check_outside(outside)
    k = edges.shape[0] - 1
    idx = jnp.searchsorted(edges, values, side="right") - 1
    idx = jnp.where(values == edges[-1], k - 1, idx)
    if outside == "clamp":
        return jnp.clip(idx, 0, k - 1).astype(jnp.int32)
    inside = (values >= edges[0]) & (values <= edges[-1])
    return jnp.where(inside, idx, -1).astype(jnp.int32)


def host_bin_index(values: Any, edges: Any, outside: str = "drop") -> np.ndarray:
    """`bin_index` in NumPy (int64), the same rule."""
    _check_outside(outside)
    values, edges = np.asarray(values), np.asarray(edges)
    k = edges.size - 1
    idx = np.searchsorted(edges, values, side="right") - 1
    idx = np.where(values == edges[-1], k - 1, idx)
    if outside == "clamp":
        return np.clip(idx, 0, k - 1)
    inside = (values >= edges[0]) & (values <= edges[-1])
    return np.where(inside, idx, -1)
