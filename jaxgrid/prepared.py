"""`PreparedGrid`: everything a fitter derives from its grid, built once per fitter.

`GridFitter` builds one on construction and every consumer reads it — single-row
fits, `fit_batch` planning and running, Dask partitions, the training objectives:

* the likelihood and prior resolved on the grid's names (the likelihood in the
  space it is evaluated in: z-scored observables when ``use_standardised``);
* the standardiser *snapshot* (float64 mean/std the host z-scores rows with, and
  its dict — what the file's configuration records: exactly what the step used,
  whatever happens to ``grid.standardiser`` later);
* the device snapshot `GridData` (one copy of the observables when they are not
  z-scored), its padded block layouts, each model's bin per summarised target and
  the whole-grid histogram layouts, computed on first use and cached per layout;
* the grid digest (SHA-1 of observables, targets, weights: resume compares it),
  computed on first use from the arrays the snapshot was made of, once.

Nothing here changes after construction; a refitted standardiser needs a new
fitter (`GridFitter` says so when it notices).
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .core.checks import cast_overflows, float_dtype
from .core.data import GridData
from .core.step import model_bins

__all__ = [
    "PreparedGrid",
    "array_digest",
    "module_digest",
    "padded_data",
    "histogram_layout",
    "bin_constant_values",
]


def array_digest(*arrays: Any) -> str:
    """SHA-1 of arrays' dtypes, shapes and bytes (host)."""
    h = hashlib.sha1()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        h.update(str((a.dtype, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def module_digest(module: Any) -> str:
    """SHA-1 of a pytree's structure and leaves (likelihoods, priors)."""
    leaves, treedef = jax.tree_util.tree_flatten(module)
    return hashlib.sha1((str(treedef) + array_digest(*leaves)).encode()).hexdigest()


def _in_dtype(values, what: str, dt):
    """A grid array in the working dtype. A grid built with float64 (``jax_enable_x64``
    on) and fitted in float32 is cast here, and checked after the cast: values beyond
    float32's range would become inf (positive weights below it, 0)."""
    if values.dtype == dt:
        return values
    host = np.asarray(values)
    out = cast_overflows(host, dt)
    if not np.all(np.isfinite(out)) or np.any((host > 0) & (out == 0)):
        raise ValueError(
            f"GridFitter: the grid's `{what}` (built as {host.dtype}) have values outside the "
            f"{np.dtype(dt)} range; rescale them, or enable jax_enable_x64 for the fit too."
        )
    return jnp.asarray(out)


def _snapshot(grid, mean64: np.ndarray, std64: np.ndarray, standardised: bool) -> GridData:
    dt = float_dtype()
    observables = _in_dtype(grid.observables, "observables", dt)
    if standardised or grid.has_model_noise:
        # z-scored in float64 on the host, then cast: one rounding of an O(1) value
        # instead of the float32 difference of two magnitudes near 20
        models = (np.asarray(grid.observables, np.float64) - mean64) / std64
        if grid.has_model_noise:  # (N, 3P): [models, model_sigma, model_bias]
            models = noise_columns(models, grid.model_sigma, grid.model_bias, std64)
        cast = cast_overflows(models, np.dtype(dt))
        if not np.all(np.isfinite(cast)):
            raise ValueError(
                "GridFitter: the grid's observables or noise model (model_sigma/model_bias) "
                f"have values outside the {np.dtype(dt)} range once in the likelihood's units; "
                "rescale them, or enable jax_enable_x64."
            )
        models = jnp.asarray(cast, dt)
    else:
        models = observables  # the same array: no second N x P copy
    log_w = (
        jnp.zeros(grid.n_models, dt)
        if grid.weights is None
        else jnp.log(_in_dtype(grid.weights, "weights", dt))
    )
    return GridData(
        models=models,
        models_native=observables,
        targets=_in_dtype(grid.targets, "targets", dt),
        log_weights=log_w,
        obs_mean=jnp.asarray(mean64, dt),
        obs_std=jnp.asarray(std64, dt),
    )


def noise_columns(models, model_sigma, model_bias, std64: np.ndarray, rows=None) -> np.ndarray:
    """(R, 3P) float64 ``[models, model_sigma, model_bias]`` in the likelihood's units
    (the noise over the standardiser's std): how a grid with a per-model noise model
    reaches the likelihoods (`jaxgrid.prob.likelihoods.split_model_noise`). ``models``:
    the (R, P) models in those units; ``rows``: the grid rows they are (None: all);
    ``model_sigma``/``model_bias``: the grid's (N, P) arrays or None (zeros)."""
    m = np.asarray(models, np.float64)
    pick = slice(None) if rows is None else rows

    def part(a):
        return np.zeros(m.shape) if a is None else np.asarray(a, np.float64)[pick] / std64

    return np.concatenate([m, part(model_sigma), part(model_bias)], axis=1)


def padded_data(data: GridData, n_blocks: int, block: int) -> GridData:
    """``data`` with its model axis padded to ``n_blocks * block`` (padding models have
    ``log w = -inf``: excluded). Shared observables stay shared."""
    n = data.models.shape[0]
    pad = n_blocks * block - n
    if pad == 0:
        return data

    def padrows(a, value):
        return jnp.concatenate([a, jnp.full((pad,) + a.shape[1:], value, a.dtype)])

    native = padrows(data.models_native, 0.0)
    models = native if data.models is data.models_native else padrows(data.models, 0.0)
    return GridData(
        models=models,
        models_native=native,
        targets=padrows(data.targets, 0.0),
        log_weights=padrows(data.log_weights, -jnp.inf),
        obs_mean=data.obs_mean,
        obs_std=data.obs_std,
        rows_standardised=data.rows_standardised,
    )


def histogram_layout(bins: np.ndarray, k: int) -> tuple[tuple, np.ndarray | None]:
    """How to histogram weights over a *fixed* set of models with bins ``bins`` (host,
    once per plan) without a scatter (XLA's CPU scatter materialises per-row
    indices and is several times slower than the rest of a summary).

    Returns ``(layout, index)``: ``("runs", k, r)`` when model ``i`` is in bin
    ``i // r`` (a reshape and sum), ``("strided", k, r)`` when it is in bin
    ``i % k``, ``("gather", k, c)`` with ``index`` (k, c) listing each bin's models
    (padded with the out-of-range index ``n_models``) when that padding at most
    doubles the work, else ``("scatter",)``. Models outside the edges (bin -1)
    are left out.
    """
    bins = np.asarray(bins, np.int64)
    n = bins.size
    ar = np.arange(n)
    if n % k == 0 and np.all(bins >= 0):
        r = n // k
        if np.array_equal(bins, ar // r):
            return ("runs", k, r), None
        if np.array_equal(bins, ar % k):
            return ("strided", k, r), None
    inside = bins >= 0
    counts = np.bincount(bins[inside], minlength=k)
    c = int(counts.max()) if counts.size else 0
    if c == 0 or k * c > 2 * n:
        return ("scatter",), None
    order = np.argsort(np.where(inside, bins, k), kind="stable")[: int(inside.sum())]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = np.arange(order.size) - np.repeat(starts, counts)
    index = np.full((k, c), n, np.int32)
    index[bins[order], slot] = order
    return ("gather", k, c), index


def bin_constant_values(values: np.ndarray, bins: np.ndarray, k: int) -> np.ndarray | None:
    """``(k,)`` the value shared by all models of each bin, or None when some bin mixes
    values or some model lies outside the bins (host, once per plan). Template x
    redshift grids summarised on bins centred on the grid redshifts qualify."""
    bins = np.asarray(bins, np.int64)
    values = np.asarray(values)
    if bins.size == 0 or np.any(bins < 0):
        return None
    lo = np.full(k, np.inf)
    hi = np.full(k, -np.inf)
    np.minimum.at(lo, bins, values)
    np.maximum.at(hi, bins, values)
    filled = np.isfinite(lo)
    if not np.array_equal(lo[filled], hi[filled]):
        return None
    return np.where(filled, lo, 0.0).astype(values.dtype)


_model_bins_jit = jax.jit(model_bins, static_argnums=1)


class PreparedGrid:
    """The fitter's grid, prepared once (see the module docs).

    Attributes:
        grid: the `ModelGrid` it was made from.
        use_standardised: the likelihood sees z-scored observables.
        likelihood: the likelihood resolved on the grid, in the space it is evaluated in.
        likelihood_given: the likelihood as the user gave it (unresolved).
        likelihood_native: the likelihood resolved on the grid, in native space.
        prior: the prior resolved on the grid's names.
        data: the device snapshot `GridData` (rows given native).
        mean_std: float64 ``(mean, std)`` the host z-scores rows with (0 and 1 when not
            standardised).
        standardiser: the snapshot's dict (``LinearStandardiser.to_dict``) or None.
    """

    def __init__(self, grid, likelihood, prior, use_standardised: bool):
        self.grid = grid
        self.use_standardised = bool(use_standardised)
        p = grid.n_observables
        std = grid.standardiser
        if self.use_standardised:
            self.mean_std = (np.array(std.mean, np.float64), np.array(std.std, np.float64))
            # jaxgrid's keys only (not the BESTA aliases): the run configuration of
            # files written before those existed stays equal, so they resume
            own = {k: v for k, v in std.to_dict().items() if k in ("fitted", "mean", "std")}
            self.standardiser = json.loads(json.dumps(own))
        else:
            self.mean_std = (np.zeros(p), np.ones(p))
            self.standardiser = None
        self.prior = prior.resolve(grid.target_names, grid.observable_names)
        self.likelihood_given = likelihood
        self.likelihood_native = likelihood.resolve(grid.target_names)
        self.likelihood = (
            self.likelihood_native.to_standardised(*self.mean_std)
            if self.use_standardised
            else self.likelihood_native
        )
        self.data = _snapshot(grid, *self.mean_std, self.use_standardised)
        # the arrays the snapshot was made of (JAX arrays are immutable): the digest and
        # the host float64 observables come from these, not from the live grid
        self._sources = (grid.observables, grid.targets, grid.weights)
        self._noise = (grid.model_sigma, grid.model_bias)
        self._padded: dict[tuple[int, int], GridData] = {}
        self._bins: dict[Any, tuple] = {}
        self._layouts: dict[Any, tuple] = {}

    # ---------------------------------------------------------------- identity
    @functools.cached_property
    def digest(self) -> str:
        obs, tgt, w = self._sources
        noise = [np.zeros(0) if a is None else a for a in self._noise]
        # grids without a noise model keep the digest of files written before it existed
        extra = noise if any(a is not None for a in self._noise) else []
        return array_digest(obs, tgt, np.zeros(0) if w is None else w, *extra)

    @functools.cached_property
    def likelihood_digest(self) -> str:
        return module_digest(self.likelihood_given)  # as files written before expect

    @functools.cached_property
    def prior_digest(self) -> str:
        return module_digest(self.prior)

    @functools.cached_property
    def observables64(self) -> np.ndarray:
        """The snapshot's native observables in float64 on the host (log Z refinement)."""
        return np.asarray(self._sources[0], np.float64)

    def likelihood_models64(self, idx) -> np.ndarray:
        """Models ``idx`` as the likelihood sees them, in float64 on the host: z-scored
        when standardised, with the noise columns when the grid has a noise model."""
        mean, std = self.mean_std
        models = (self.observables64[idx] - mean) / std
        if any(a is not None for a in self._noise):
            return noise_columns(models, *self._noise, std, rows=idx)
        return models

    def matches_standardiser(self) -> bool:
        """Whether the grid's live standardiser still equals the snapshot."""
        if not self.use_standardised:
            return True
        std = self.grid.standardiser
        mean, sd = self.mean_std
        return (
            std.is_fitted
            and np.array_equal(np.asarray(std.mean, np.float64), mean)
            and np.array_equal(np.asarray(std.std, np.float64), sd)
        )

    # ---------------------------------------------------------------- layouts
    def rows_data(self) -> GridData:
        """The snapshot taking rows already in the likelihood's space (the batch path:
        rows are z-scored in float64 on the host, `standardise_rows`)."""
        return self.data.with_rows_standardised(self.use_standardised)

    def padded(self, n_blocks: int, block: int) -> GridData:
        """`rows_data` padded to ``n_blocks`` blocks of ``block`` models (cached)."""
        key = (int(n_blocks), int(block))
        if key not in self._padded:
            self._padded[key] = padded_data(self.rows_data(), *key)
        return self._padded[key]

    @staticmethod
    def _edges_key(cols, edges) -> tuple:
        return (tuple(cols), tuple(np.asarray(e).tobytes() for e in edges))

    def model_bins(self, n_blocks: int, block: int, cols, edges) -> tuple:
        """Each (padded) model's bin per summarised target (`StepParams.model_bins`)."""
        key = (int(n_blocks), int(block), self._edges_key(cols, edges))
        if key not in self._bins:
            targets = self.padded(n_blocks, block).targets
            self._bins[key] = _model_bins_jit(targets, tuple(cols), tuple(edges))
        return self._bins[key]

    def whole_grid_histograms(self, cols, edges) -> tuple[dict, tuple, tuple]:
        """Static layouts and their arrays for untruncated steps over the whole grid in
        one block: histograms without a scatter where the grid's order allows
        (template x redshift grids do), and a target's mean and variance from its
        histogram when each bin holds a single value (a redshift grid on bins centred
        on it). The bins are the device's (`model_bins`). Returns ``(StepConfig
        fields, hist_index, bin_values)``; cached per (targets, edges)."""
        key = self._edges_key(cols, edges)
        if key not in self._layouts:
            n = self.grid.n_models
            bins = self.model_bins(1, n, cols, edges)
            targets = np.asarray(self.data.targets)
            found, values = [], []
            for c, e, b in zip(cols, edges, bins, strict=True):
                b = np.asarray(b)
                found.append(histogram_layout(b, e.shape[0] - 1))
                values.append(bin_constant_values(targets[:, c], b, e.shape[0] - 1))
            fields = {
                "hist_layouts": tuple(layout for layout, _ in found),
                "hist_const": tuple(
                    v is not None and layout[0] != "scatter"
                    for v, (layout, _) in zip(values, found, strict=True)
                ),
            }
            hist_index = tuple(None if i is None else jnp.asarray(i) for _, i in found)
            bin_values = tuple(None if v is None else jnp.asarray(v) for v in values)
            self._layouts[key] = (fields, hist_index, bin_values)
        return self._layouts[key]
