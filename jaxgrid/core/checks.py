"""Small helpers for validating user input at the public boundary (host side)."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["is_traced", "float_dtype", "scalar_param", "masked_to_nan", "cast_overflows"]


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


def masked_to_nan(value: Any, name: str) -> Any:
    """A masked input (``np.ma.MaskedArray``, astropy ``MaskedColumn``) as float64 with NaN
    at the masked entries — "band missing", as `read_catalog` reads masks — so the hidden
    values are never fitted. Anything else is returned unchanged.

    Raises:
        TypeError: ``value`` is masked but not numeric (the message names ``name``).
    """
    if not np.ma.isMaskedArray(value):
        return value
    data = np.ma.getdata(value)
    if not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
        raise TypeError(f"`{name}` must hold real numbers, got a masked {data.dtype} array.")
    return np.where(np.ma.getmaskarray(value), np.nan, np.asarray(data, dtype=np.float64))


def cast_overflows(values: np.ndarray, dtype: Any) -> np.ndarray:
    """``values`` (float64, host) cast to the working ``dtype`` without NumPy's overflow
    warning: finite values beyond float32's range become inf, as on the device."""
    with np.errstate(over="ignore", under="ignore"):
        return np.asarray(values, dtype=np.float64).astype(np.dtype(dtype))
