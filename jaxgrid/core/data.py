"""The device-side snapshot of a grid (`GridData`) and rows put into its space."""

from __future__ import annotations

import equinox as eqx
import numpy as np
from jaxtyping import Array, Float

__all__ = ["GridData", "standardise_rows"]


class GridData(eqx.Module, strict=True):
    """Device-side snapshot of a grid, as the traced core sees it.

    Attributes:
        models: (N, P) observables in the likelihood's space.
        models_native: (N, P) native observables (for observable-dependent priors).
        targets: (N, Q) targets.
        log_weights: (N,) ``log w`` (zeros when the grid is unweighted).
        obs_mean, obs_std: (P,) map native rows to the likelihood's space,
            ``(x - mean) / std`` (0 and 1 without standardisation).
        rows_standardised: the rows handed to the traced core are already in the
            likelihood's space (the batch fitter standardises them in float64 on
            the host before the cast: in float32 on the device, ``x - mean`` of
            magnitudes near 20 loses ~1e-6 mag, 0.01 sigma at S/N 1e4).
    """

    models: Float[Array, "models obs"]
    models_native: Float[Array, "models obs"]
    targets: Float[Array, "models targets"]
    log_weights: Float[Array, " models"]
    obs_mean: Float[Array, " obs"]
    obs_std: Float[Array, " obs"]
    rows_standardised: bool = eqx.field(static=True, default=False)

    def to_likelihood_space(self, x, sigma):
        if self.rows_standardised:
            return x, sigma
        return (x - self.obs_mean) / self.obs_std, sigma / self.obs_std

    def native_row(self, x):
        """A row's native values (observable-dependent priors see these)."""
        if self.rows_standardised:
            return x * self.obs_std + self.obs_mean
        return x

    def with_rows_standardised(self, flag: bool = True) -> GridData:
        """This snapshot, taking rows already in the likelihood's space (or native)."""
        return GridData(
            self.models,
            self.models_native,
            self.targets,
            self.log_weights,
            self.obs_mean,
            self.obs_std,
            bool(flag),
        )


def standardise_rows(
    data: GridData, mean_std: tuple[np.ndarray, np.ndarray], x: np.ndarray, sigma: np.ndarray, dtype
) -> tuple[np.ndarray, np.ndarray]:
    """Host rows (float64) as ``data`` takes them, cast to ``dtype`` last: in the
    likelihood's space when `GridData.rows_standardised` (``mean_std``: the
    fitter's float64 snapshot of the standardiser), else native."""
    if not data.rows_standardised:
        return x.astype(dtype), sigma.astype(dtype)
    mean, std = mean_std
    return ((x - mean) / std).astype(dtype), (sigma / std).astype(dtype)
