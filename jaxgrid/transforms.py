"""Per-column linear transforms of observables and targets.

"Standardised" means a per-column z-score, ``(v - mean) / std``. The fitted
parameters live on the host as float64 NumPy arrays. ``transform`` and
``inverse_transform`` run in float64 on the host and return NumPy (BESTA's
behaviour: a round trip is exact to float64), except inside ``jit``/``grad``,
where a traced JAX input stays JAX (traceable) in its own dtype.

BESTA's names are kept: ``sd`` (= ``std``), ``is_fit`` (= ``is_fitted``), the
``sd=`` constructor keyword, ``fit(X, ddof=0)``, and ``from_dict`` reads BESTA's
``{"mean", "sd"}`` / ``{"is_fit", "mean", "sd"}`` dicts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

__all__ = [
    "LinearStandardiser",
    "AB_ZERO_POINTS",
    "mag_to_flux",
    "flux_to_mag",
    "magerr_to_fluxerr",
    "fluxerr_to_magerr",
]


class LinearStandardiser:
    """Per-column z-score: ``z = (v - mean) / std``.

    ``fit`` ignores NaNs, uses ``ddof=0`` and replaces a zero (or all-NaN)
    standard deviation by 1 so constant columns pass through unscaled.

    Example:
        >>> s = LinearStandardiser().fit(np.array([[1.0, 5.0], [3.0, 5.0]]))
        >>> s.mean, s.std
        (array([2., 5.]), array([1., 1.]))
    """

    def __init__(
        self,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        *,
        sd: Sequence[float] | None = None,
    ):
        if sd is not None:
            if std is not None:
                raise ValueError("LinearStandardiser: give `std` or its BESTA name `sd`, not both.")
            std = sd
        if (mean is None) != (std is None):
            raise ValueError("LinearStandardiser: give both `mean` and `std`, or neither.")
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None
        if mean is not None:
            m = np.asarray(mean, dtype=np.float64).reshape(-1)
            s = np.asarray(std, dtype=np.float64).reshape(-1)
            if m.shape != s.shape:
                raise ValueError(
                    f"LinearStandardiser: `mean` has {m.size} entries but `std` has {s.size}."
                )
            if not (np.all(np.isfinite(s)) and np.all(s > 0)):
                raise ValueError("LinearStandardiser: `std` must be finite and positive.")
            self.mean, self.std = m, s

    @property
    def is_fitted(self) -> bool:
        return self.mean is not None

    @property
    def is_fit(self) -> bool:
        """BESTA's name for `is_fitted`."""
        return self.is_fitted

    @property
    def sd(self) -> np.ndarray | None:
        """BESTA's name for `std`."""
        return self.std

    @property
    def n_columns(self) -> int:
        self._require_fitted()
        return int(self.mean.size)

    def fit(self, values: Any, mask: Any = None, *, ddof: int = 0) -> LinearStandardiser:
        """Fit mean and std per column of ``values`` (rows, cols), NaNs ignored.

        ``mask`` (rows,) bool selects the rows used for the fit; ``ddof``: the
        std's delta degrees of freedom (0: population std, as BESTA).
        """
        if isinstance(ddof, bool) or not isinstance(ddof, int | np.integer) or ddof < 0:
            raise ValueError(f"LinearStandardiser.fit: `ddof` must be an int >= 0, got {ddof!r}.")
        v = np.asarray(values, dtype=np.float64)
        if v.ndim != 2:
            raise ValueError(f"LinearStandardiser.fit: `values` must be 2-D, got shape {v.shape}.")
        if mask is not None:
            mask = np.asarray(mask)
            if mask.dtype != bool or mask.shape != (v.shape[0],):
                raise ValueError(
                    f"LinearStandardiser.fit: `mask` must be a bool array of shape "
                    f"({v.shape[0]},), got {mask.dtype} {mask.shape}."
                )
            v = v[mask]
        if v.shape[0] == 0:
            raise ValueError("LinearStandardiser.fit: no rows to fit on (empty or all masked).")
        finite = np.isfinite(v)
        count = finite.sum(axis=0)
        vz = np.where(finite, v, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = vz.sum(axis=0) / count
            var = (np.where(finite, v - mean, 0.0) ** 2).sum(axis=0) / (count - ddof)
        mean = np.where(count > 0, mean, 0.0)
        std = np.sqrt(np.where(count > ddof, var, 1.0))
        std = np.where(std > 0, std, 1.0)
        self.mean, self.std = mean, std
        return self

    def transform(self, values: Any) -> Any:
        """``(values - mean) / std`` on the last axis: float64 NumPy out (a traced JAX
        input stays JAX, in its dtype)."""
        self._require_fitted()
        if isinstance(values, jax.core.Tracer):
            return (values - self._as(values, self.mean)) / self._as(values, self.std)
        return (self._host(values) - self.mean) / self.std

    def inverse_transform(self, values: Any) -> Any:
        """``values * std + mean`` on the last axis (float64 NumPy; traced stays JAX)."""
        self._require_fitted()
        if isinstance(values, jax.core.Tracer):
            return values * self._as(values, self.std) + self._as(values, self.mean)
        return self._host(values) * self.std + self.mean

    def select(self, columns: Sequence[int]) -> LinearStandardiser:
        """A standardiser restricted to ``columns`` (unfitted stays unfitted)."""
        if not self.is_fitted:
            return LinearStandardiser()
        cols = np.asarray(columns, dtype=int)
        return LinearStandardiser(self.mean[cols], self.std[cols])

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; ``from_dict`` restores it exactly (floats round-trip via repr).
        It carries BESTA's keys too (``is_fit``, ``sd``), so BESTA reads it."""
        if not self.is_fitted:
            return {"fitted": False, "is_fit": False, "mean": None, "sd": None}
        mean, std = self.mean.tolist(), self.std.tolist()
        return {"fitted": True, "is_fit": True, "mean": mean, "std": std, "sd": std}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LinearStandardiser:
        """From `to_dict`'s dict, or BESTA's (``{"mean", "sd"}``, with or without
        ``"is_fit"``; ``None`` values or ``is_fit`` false: unfitted)."""
        if not isinstance(d, dict) or not ({"fitted", "is_fit", "mean"} & set(d)):
            raise ValueError(
                "LinearStandardiser.from_dict: expected a dict made by to_dict() (jaxgrid's, "
                f"or BESTA's {{'mean', 'sd'}}), got {d!r:.200}."
            )
        fitted = d.get("fitted", d.get("is_fit", True))
        std = d.get("std", d.get("sd"))
        if not fitted or d.get("mean") is None or std is None:
            return cls()
        return cls(d["mean"], std)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LinearStandardiser):
            return NotImplemented
        if self.is_fitted != other.is_fitted:
            return False
        if not self.is_fitted:
            return True
        return bool(np.array_equal(self.mean, other.mean) and np.array_equal(self.std, other.std))

    __hash__ = None  # mutable

    def __repr__(self) -> str:
        if not self.is_fitted:
            return "LinearStandardiser(unfitted)"
        return f"LinearStandardiser(n_columns={self.mean.size})"

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError(
                "LinearStandardiser is not fitted: call fit(values) (or grid.fit_standardiser())."
            )

    @staticmethod
    def _host(values: Any) -> np.ndarray:
        # masked entries are missing values (NaN), as everywhere in jaxgrid
        if np.ma.isMaskedArray(values):
            return np.ma.filled(values.astype(np.float64), np.nan)
        return np.asarray(values, dtype=np.float64)

    @staticmethod
    def _as(like: Any, arr: np.ndarray) -> Any:
        # a traced input stays traceable: the parameters in the input's float dtype
        dtype = like.dtype if jax.numpy.issubdtype(like.dtype, jax.numpy.floating) else None
        return jax.numpy.asarray(arr, dtype=dtype)


# ------------------------------------------------------ magnitudes and fluxes
#: AB zero points per flux unit: m_AB = ZP - 2.5 log10(f / unit). 3631 Jy is
#: m_AB = 0 (Oke & Gunn 1983), so ZP = 2.5 log10(3631 Jy / unit).
AB_ZERO_POINTS = {
    "Jy": 2.5 * np.log10(3631.0),
    "mJy": 2.5 * np.log10(3631.0e3),
    "uJy": 2.5 * np.log10(3631.0e6),
    "nJy": 2.5 * np.log10(3631.0e9),
    "maggies": 0.0,
}
_POGSON = 2.5 / np.log(10.0)  # d(mag) / d(ln flux)


def _zero_point(unit: str, zero_point: float | None) -> float:
    if zero_point is not None:
        return float(zero_point)
    if unit not in AB_ZERO_POINTS:
        raise ValueError(
            f"unknown flux unit {unit!r}; use one of {list(AB_ZERO_POINTS)} or give zero_point."
        )
    return AB_ZERO_POINTS[unit]


def _xp(a: Any):
    return jax.numpy if isinstance(a, jax.Array) else np


def mag_to_flux(mag: Any, unit: str = "nJy", zero_point: float | None = None) -> Any:
    """AB magnitude -> flux in ``unit`` (``"Jy"``, ``"mJy"``, ``"uJy"``, ``"nJy"``,
    ``"maggies"``) or for any ``zero_point``: ``f = 10^(-0.4 (m - ZP))``."""
    xp = _xp(mag)
    return 10.0 ** (-0.4 * (xp.asarray(mag) - _zero_point(unit, zero_point)))


def flux_to_mag(flux: Any, unit: str = "nJy", zero_point: float | None = None) -> Any:
    """Flux -> AB magnitude, ``m = ZP - 2.5 log10 f``; NaN for ``f <= 0``."""
    xp = _xp(flux)
    f = xp.asarray(flux)
    pos = f > 0
    return xp.where(
        pos, _zero_point(unit, zero_point) - 2.5 * xp.log10(xp.where(pos, f, 1.0)), xp.nan
    )


def magerr_to_fluxerr(
    mag: Any, magerr: Any, unit: str = "nJy", zero_point: float | None = None
) -> Any:
    """First-order error propagation: ``sigma_f = f sigma_m / 1.0857``."""
    return mag_to_flux(mag, unit, zero_point) * magerr / _POGSON


def fluxerr_to_magerr(flux: Any, fluxerr: Any) -> Any:
    """First-order error propagation: ``sigma_m = 1.0857 sigma_f / f`` (NaN for f <= 0)."""
    xp = _xp(flux)
    f = xp.asarray(flux)
    return xp.where(f > 0, _POGSON * fluxerr / xp.where(f > 0, f, 1.0), xp.nan)
