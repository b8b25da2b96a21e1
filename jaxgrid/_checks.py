"""Small helpers for validating user input at the public boundary (host side)."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["is_traced", "float_dtype", "scalar_param"]


def is_traced(value: Any) -> bool:
    """True for JAX tracers (values inside jit/grad/vmap), whose values cannot be checked."""
    return isinstance(value, jax.core.Tracer)


def float_dtype() -> Any:
    """float32, or float64 when the user enabled ``jax_enable_x64``."""
    return jnp.result_type(float)


def scalar_param(value: Any, name: str, owner: str, *, positive=False, nonneg=False) -> jax.Array:
    """A scalar hyperparameter as a float array field (differentiable; changing it never
    recompiles). Concrete values are checked: finite, and positive/non-negative if asked."""
    arr = jnp.asarray(value, dtype=float_dtype())
    if arr.ndim != 0:
        raise ValueError(f"{owner}: `{name}` must be a scalar, got shape {arr.shape}.")
    if not is_traced(value):
        v = float(np.asarray(value))
        if not math.isfinite(v):
            raise ValueError(f"{owner}: `{name}` must be finite, got {v}.")
        if positive and not v > 0:
            raise ValueError(f"{owner}: `{name}` must be positive, got {v}.")
        if nonneg and v < 0:
            raise ValueError(f"{owner}: `{name}` must be non-negative, got {v}.")
    return arr
