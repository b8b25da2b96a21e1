"""Predicted observables at arbitrary target positions, from a grid's neighbours.

`interpolate_observables(grid, targets_query, mode=...)` (also
``ModelGrid.interpolate_observables``): the neighbour search runs on the host
(a ``cKDTree`` over the grid targets, z-scored when ``standardize``; inside
``jit``/``grad`` it is reached through ``jax.pure_callback``), the weights
and the local linear solve run in JAX, so the result is differentiable with
respect to the query.

* ``"nearest"``: the nearest model's observables;
* ``"idw"``: inverse-distance weights ``1 / d^p`` over the ``k`` neighbours;
  exact matches (``d <= eps``) average their observables;
* ``"local_linear"``: weighted least squares ``y ~ a + B (t - q)`` over the ``k``
  neighbours, weights ``1 / (d^p + eps)`` as in ``"idw"`` (ridge ``ridge`` on
  the normal equations), the prediction is ``a``; reproduces any affine map of the
  targets exactly; needs ``k >= Q + 1``.

Distances are in z-scored target units when ``standardize``: by the grid's fitted
target standardiser, or the grid's own mean and std when it has none (what fitting
it would give; the grid is not changed). Both as BESTA.

In every mode a query that coincides with grid models (distance <= ``eps``)
returns the average of their observables.

Rows that are non-finite or fail the grid's ``check_boundaries`` get ``fill_value``.

As in BESTA: the default mode is ``"local_linear"``, ``k`` is clipped to the grid
size, and a 1-D query of Q values is one row.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy.spatial import cKDTree

__all__ = ["interpolate_observables"]

_MODES = ("nearest", "idw", "local_linear")


def interpolate_observables(
    grid,
    targets_query: Any,
    mode: str = "local_linear",
    k: int = 32,
    p: float = 2.0,
    eps: float = 1e-12,
    standardize: bool = True,
    ridge: float = 1e-8,
    fill_value: float = np.nan,
):
    """(M, P) observables predicted at ``targets_query`` (M, Q); see module docs."""
    if mode not in _MODES:
        raise ValueError(f"interpolate_observables: `mode` must be one of {_MODES}, got {mode!r}.")
    q_dim = grid.n_targets
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"interpolate_observables: `k` must be an int >= 1, got {k!r}.")
    k = 1 if mode == "nearest" else min(int(k), grid.n_models)  # clipped, as BESTA
    if mode == "local_linear" and k < q_dim + 1:
        raise ValueError(
            f"interpolate_observables: local_linear needs k >= Q + 1 = {q_dim + 1} neighbours, "
            f"got k={k} (the grid has {grid.n_models} models)."
        )
    query = jnp.asarray(targets_query, dtype=grid.targets.dtype)
    if query.ndim == 1:
        query = query[None, :]  # one row
    if query.ndim != 2 or query.shape[1] != q_dim:
        raise ValueError(
            f"interpolate_observables: `targets_query` must be (M, {q_dim}), got {query.shape}."
        )
    t_host = np.asarray(grid.targets, np.float64)
    std = grid.target_standardiser
    if standardize and std.is_fitted:
        mean, sd = np.asarray(std.mean, np.float64), np.asarray(std.std, np.float64)
    elif standardize:
        mean, sd = t_host.mean(0), t_host.std(0)
    else:
        mean, sd = np.zeros(q_dim), np.ones(q_dim)
    sd = np.where(sd > 0, sd, 1.0)
    tree = cKDTree((t_host - mean) / sd)
    check = grid.check_boundaries

    def host_neighbours(qh):
        qh = np.asarray(qh, np.float64)
        ok = np.all(np.isfinite(qh), axis=1)
        if check is not None:
            ok &= np.asarray(check(np.where(ok[:, None], qh, t_host[0])), bool)
        _, idx = tree.query(np.where(ok[:, None], (qh - mean) / sd, 0.0), k=k, workers=-1)
        return np.asarray(idx, np.int32).reshape(qh.shape[0], k), ok

    shapes = (
        jax.ShapeDtypeStruct((query.shape[0], k), jnp.int32),
        jax.ShapeDtypeStruct((query.shape[0],), jnp.bool_),
    )
    idx, ok = jax.pure_callback(host_neighbours, shapes, jax.lax.stop_gradient(query))
    mean_j = jnp.asarray(mean, query.dtype)
    sd_j = jnp.asarray(sd, query.dtype)
    tz = (grid.targets - mean_j) / sd_j  # (N, Q) standardised
    qz = (query - mean_j) / sd_j

    def one(qr, nb):
        y = grid.observables[nb]  # (k, P)
        if mode == "nearest":
            return y[0]
        dt = tz[nb] - qr  # (k, Q)
        d2 = jnp.sum(dt * dt, axis=1)
        exact = d2 <= eps**2
        if mode == "idw":
            d_safe = jnp.sqrt(jnp.where(exact, 1.0, d2))
            w = jnp.where(exact, 0.0, d_safe ** (-p))
            w_ex = exact.astype(y.dtype)
            w = jnp.where(jnp.any(exact), w_ex, w)
            return (w @ y) / jnp.sum(w)
        # local linear: least squares weighted as idw (BESTA's), ridge on the normal equations
        w = 1.0 / (jnp.sqrt(jnp.where(exact, 1.0, d2)) ** p + eps)
        X = jnp.concatenate([jnp.ones((nb.shape[0], 1), y.dtype), dt], axis=1)
        Xw = X * w[:, None]
        beta = jnp.linalg.solve(Xw.T @ X + ridge * jnp.eye(q_dim + 1, dtype=y.dtype), Xw.T @ y)
        w_ex = exact.astype(y.dtype)
        exact_mean = (w_ex @ y) / jnp.maximum(jnp.sum(w_ex), 1.0)
        return jnp.where(jnp.any(exact), exact_mean, beta[0])

    out = jax.vmap(one)(qz, idx)
    return jnp.where(ok[:, None], out, jnp.asarray(fill_value, out.dtype))
