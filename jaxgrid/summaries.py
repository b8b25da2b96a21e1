"""Pure reductions of posterior weights into target summaries (JAX, traceable).

Histogram convention (as NumPy): bins ``[e_k, e_{k+1})``, the last bin closed;
mass outside ``[e_0, e_K]`` is left out. Densities are normalised over the
in-range mass: ``sum_k density_k * width_k = 1``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

__all__ = ["bin_index", "weighted_histogram", "histogram_density"]


def bin_index(values: Float[Array, " cand"], edges: Float[Array, " edges"]) -> Int[Array, " cand"]:
    """Bin of each value, or -1 when outside the edges (NaN included)."""
    k = edges.shape[0] - 1
    idx = jnp.searchsorted(edges, values, side="right") - 1
    idx = jnp.where(values == edges[-1], k - 1, idx)  # last bin is closed
    inside = (values >= edges[0]) & (values <= edges[-1])
    return jnp.where(inside, idx, -1)


def weighted_histogram(
    values: Float[Array, " cand"], weights: Float[Array, " cand"], edges: Float[Array, " edges"]
) -> Float[Array, " bins"]:
    """Mass per bin: ``sum_i w_i [t_i in bin k]``."""
    k = edges.shape[0] - 1
    idx = bin_index(values, edges)
    w = jnp.where(idx >= 0, weights, 0.0)
    return jax.ops.segment_sum(w, jnp.clip(idx, 0, k - 1), num_segments=k)


def histogram_density(
    mass: Float[Array, " bins"], edges: Float[Array, " edges"]
) -> Float[Array, " bins"]:
    """``mass / (sum(mass) * width)``; NaN everywhere when there is no in-range mass."""
    total = jnp.sum(mass)
    ok = total > 0
    return jnp.where(ok, mass / (jnp.where(ok, total, 1.0) * jnp.diff(edges)), jnp.nan)
