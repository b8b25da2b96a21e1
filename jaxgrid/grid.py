"""`ModelGrid`: the model library — observables, targets, weights, metadata.

A grid is the host-side container a user builds once and fits many catalogs
against. It is a plain (mutable) class rather than an ``eqx.Module`` because the
BESTA workflow fits standardisers on it in place (``grid.fit_standardiser()``);
the traced core never sees it — `GridFitter` derives an immutable device-side
snapshot from it (see ``jaxgrid.fitter``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from . import grid_format
from .core.checks import cast_overflows, float_dtype
from .transforms import LinearStandardiser

__all__ = ["ModelGrid"]

BoundaryCheck = Callable[[Any], Any]
_RANGE_FIX = "rescale them (other units) or enable float64 (jax_enable_x64) first"


def _check_names(names: Sequence[str], n: int, what: str) -> list[str]:
    if isinstance(names, str):
        raise ValueError(f"ModelGrid: `{what}_names` must be a list of strings, not one string.")
    names = list(names)
    if not all(isinstance(s, str) and s for s in names):
        raise ValueError(f"ModelGrid: `{what}_names` must be non-empty strings, got {names!r}.")
    if len(names) != n:
        raise ValueError(
            f"ModelGrid: `{what}_names` has {len(names)} names but `{what}s` has {n} columns."
        )
    dup = sorted({s for s in names if names.count(s) > 1})
    if dup:
        raise ValueError(f"ModelGrid: duplicate {what} names {dup}; names must be unique.")
    return names


class ModelGrid:
    """A finite model library: ``N`` models, ``P`` observables, ``Q`` targets.

    Args:
        observables: (N, P) predicted observables of each model (e.g. AB
            magnitudes). Must be finite.
        targets: (N, Q) physical parameters of each model (e.g. logM, age, z).
            Must be finite.
        observable_names: P unique names.
        target_names: Q unique names.
        weights: optional (N,) non-negative per-model weights (e.g. grid
            cell volumes); enter the posterior as ``log w`` (zero = excluded).
        meta: optional JSON-able dict, stored in every file format.
        model_sigma: optional (N, P) per-model, per-band error of each model's
            prediction (native units, >= 0; a noise model, e.g. BEAST's artificial-star
            tests or a training galaxy's own errors), added in quadrature to the
            object's error by the likelihoods that support it (Gaussian and
            free-amplitude; docs/model.md "Per-model noise").
        model_bias: optional (N, P) per-model, per-band bias of each model's
            prediction (native units): the likelihood compares the object with
            ``observables + model_bias``; priors still see ``observables``.
        check_boundaries: optional vectorised callable
            ``targets (M, Q) -> bool (M,)`` telling which target positions lie
            inside the grid's domain (used by interpolation). Kept in memory
            and pickles; not written to FITS/HDF5.

    Arrays are held as JAX arrays of the default float dtype (float32, or
    float64 when ``jax_enable_x64`` is on).

    Raises:
        ValueError: shapes, names, weights or values are invalid (the message
            names the argument).

    Example:
        >>> grid = ModelGrid(np.zeros((3, 2)), np.arange(3.0)[:, None],
        ...                  ["g", "r"], ["logM"])
        >>> grid.n_models, grid.n_observables, grid.n_targets
        (3, 2, 1)
    """

    def __init__(
        self,
        observables: Any,
        targets: Any,
        observable_names: Sequence[str],
        target_names: Sequence[str],
        weights: Any = None,
        meta: dict[str, Any] | None = None,
        check_boundaries: BoundaryCheck | None = None,
        model_sigma: Any = None,
        model_bias: Any = None,
    ):
        obs = np.asarray(observables)
        tgt = np.asarray(targets)
        for arr, what in ((obs, "observables"), (tgt, "targets")):
            if arr.ndim != 2:
                raise ValueError(
                    f"ModelGrid: `{what}` must be 2-D (models, columns), got shape {arr.shape}."
                )
            if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
                raise ValueError(f"ModelGrid: `{what}` must be real numbers, got {arr.dtype}.")
        if obs.shape[0] == 0:
            raise ValueError("ModelGrid: the grid is empty (N == 0 models).")
        if obs.shape[0] != tgt.shape[0]:
            raise ValueError(
                f"ModelGrid: `observables` has {obs.shape[0]} models (rows) but `targets` has "
                f"{tgt.shape[0]}; they must describe the same models."
            )
        for arr, what in ((obs, "observables"), (tgt, "targets")):
            bad = ~np.isfinite(arr)
            if bad.any():
                rows = np.flatnonzero(bad.any(axis=1))
                raise ValueError(
                    f"ModelGrid: `{what}` has {int(bad.sum())} non-finite values (first rows "
                    f"{rows[:5].tolist()}); remove or fix those models."
                )
        self.observable_names = _check_names(observable_names, obs.shape[1], "observable")
        self.target_names = _check_names(target_names, tgt.shape[1], "target")
        if weights is not None:
            w = np.asarray(weights)
            if w.shape != (obs.shape[0],):
                raise ValueError(
                    f"ModelGrid: `weights` must have shape ({obs.shape[0]},), got {w.shape}."
                )
            if not np.issubdtype(w.dtype, np.number) or np.iscomplexobj(w):
                raise ValueError(f"ModelGrid: `weights` must be real numbers, got {w.dtype}.")
            if not np.all(np.isfinite(w)) or np.any(w < 0):
                raise ValueError("ModelGrid: `weights` must be finite and non-negative.")
            self.weights = _working(
                w,
                "weights",
                "only relative weights matter: divide them by their maximum",
                positive=w > 0,
            )
        else:
            self.weights = None
        meta = {} if meta is None else meta
        if not isinstance(meta, dict):
            raise ValueError(f"ModelGrid: `meta` must be a dict, got {type(meta).__name__}.")
        try:
            json.dumps(meta)
        except TypeError as err:
            raise ValueError(f"ModelGrid: `meta` must be JSON-serialisable ({err}).") from None
        self.meta = meta
        if check_boundaries is not None and not callable(check_boundaries):
            raise ValueError("ModelGrid: `check_boundaries` must be callable or None.")
        self.check_boundaries = check_boundaries
        fix = _RANGE_FIX
        self.observables: Float[Array, "models obs"] = _working(obs, "observables", fix)
        self.targets: Float[Array, "models targets"] = _working(tgt, "targets", fix)
        self.model_sigma = _noise_array(model_sigma, obs.shape, "model_sigma", fix)
        self.model_bias = _noise_array(model_bias, obs.shape, "model_bias", fix)
        self.standardiser = LinearStandardiser()
        self.target_standardiser = LinearStandardiser()
        self._kdtree = None  # the targets' tree (get_kdtree), built on demand
        self._kdtree_standardized: bool | None = None

    # ----------------------------------------------------------------- sizes
    @property
    def n_models(self) -> int:
        return int(self.observables.shape[0])

    @property
    def n_observables(self) -> int:
        return int(self.observables.shape[1])

    @property
    def n_targets(self) -> int:
        return int(self.targets.shape[1])

    def __len__(self) -> int:
        return self.n_models

    def __repr__(self) -> str:
        return (
            f"ModelGrid(n_models={self.n_models}, observables={self.observable_names}, "
            f"targets={self.target_names}, weighted={self.weights is not None}"
            + (", model noise" if self.has_model_noise else "")
            + ")"
        )

    @property
    def has_model_noise(self) -> bool:
        """Whether the grid carries a per-model noise model (`model_sigma` or `model_bias`)."""
        return self.model_sigma is not None or self.model_bias is not None

    def with_model_noise(self, model_sigma: Any = None, model_bias: Any = None) -> ModelGrid:
        """A copy of this grid (standardisers included) with the given noise model (None
        removes that part); e.g. ``grid.with_model_noise(template_error_sigma(...))``."""
        new = self.select()
        shape = new.observables.shape
        new.model_sigma = _noise_array(model_sigma, shape, "model_sigma", _RANGE_FIX)
        new.model_bias = _noise_array(model_bias, shape, "model_bias", _RANGE_FIX)
        return new

    # ----------------------------------------------------------------- lookup
    def target_index(self, col: str | int) -> int:
        """Index of a target given its name or index (`KeyError` / `IndexError` otherwise)."""
        return _column_index(col, self.target_names, "target")

    def observable_index(self, col: str | int) -> int:
        """Index of an observable given its name or index."""
        return _column_index(col, self.observable_names, "observable")

    def get_target(self, name: str | int) -> Float[Array, " models"]:
        """The (N,) values of one target, by name or index."""
        return self.targets[:, self.target_index(name)]

    def get_observable(self, name: str | int) -> Float[Array, " models"]:
        """The (N,) values of one observable, by name or index."""
        return self.observables[:, self.observable_index(name)]

    def select(
        self,
        idx: Any = None,
        observables: Sequence[str | int] | None = None,
        targets: Sequence[str | int] | None = None,
        standardisers: bool = True,
    ) -> ModelGrid:
        """A new grid with a subset of models and/or columns.

        Args:
            idx: model indices (ints) or an (N,) bool mask; None keeps all.
            observables, targets: column names or indices to keep (in that
                order); None keeps all.
            standardisers: carry the fitted standardisers, sliced to the kept
                columns (their parameters are *not* refitted on the subset).
        """
        rows = _row_index(idx, self.n_models)
        ocols = [self.observable_index(c) for c in (observables or range(self.n_observables))]
        tcols = [self.target_index(c) for c in (targets or range(self.n_targets))]
        obs = np.asarray(self.observables)[rows][:, ocols]
        tgt = np.asarray(self.targets)[rows][:, tcols]
        w = None if self.weights is None else np.asarray(self.weights)[rows]
        noise = {
            k: None if v is None else np.asarray(v)[rows][:, ocols]
            for k, v in (("model_sigma", self.model_sigma), ("model_bias", self.model_bias))
        }
        new = ModelGrid(
            obs,
            tgt,
            [self.observable_names[i] for i in ocols],
            [self.target_names[i] for i in tcols],
            weights=w,
            meta=json.loads(json.dumps(self.meta)),
            check_boundaries=self.check_boundaries,
            **noise,
        )
        if standardisers:
            new.standardiser = self.standardiser.select(ocols)
            new.target_standardiser = self.target_standardiser.select(tcols)
        return new

    # -------------------------------------------------------- standardisation
    @property
    def observable_standardiser(self) -> LinearStandardiser:
        """BESTA's name for `standardiser` (the observables' z-score)."""
        return self.standardiser

    @observable_standardiser.setter
    def observable_standardiser(self, value: LinearStandardiser) -> None:
        self.standardiser = value

    @property
    def _observables_standardized(self) -> np.ndarray | None:
        """(N, P) float64 z-scored observables, None while unfitted (BESTA's cache name;
        computed from the live standardiser, so it always follows the grid)."""
        if not self.standardiser.is_fitted:
            return None
        return self.standardiser.transform(np.asarray(self.observables))

    @property
    def _targets_standardized(self) -> np.ndarray | None:
        """(N, Q) float64 z-scored targets, None while unfitted (BESTA's name)."""
        if not self.target_standardiser.is_fitted:
            return None
        return self.target_standardiser.transform(np.asarray(self.targets))

    def fit_standardiser(self, mask: Any = None) -> LinearStandardiser:
        """Fit the observables' z-score on the grid (rows in ``mask`` only, if given)."""
        self.standardiser = LinearStandardiser().fit(np.asarray(self.observables), mask)
        return self.standardiser

    def transform_observables(self, values: Any) -> Any:
        return self.standardiser.transform(values)

    def inverse_transform_observables(self, values: Any) -> Any:
        return self.standardiser.inverse_transform(values)

    def fit_target_standardiser(self, mask: Any = None) -> LinearStandardiser:
        """Fit the targets' z-score on the grid (rows in ``mask`` only, if given)."""
        self.target_standardiser = LinearStandardiser().fit(np.asarray(self.targets), mask)
        self.invalidate_knn_index()
        return self.target_standardiser

    def transform_targets(self, values: Any) -> Any:
        return self.target_standardiser.transform(values)

    def inverse_transform_targets(self, values: Any) -> Any:
        return self.target_standardiser.inverse_transform(values)

    # ---------------------------------------------------------- target space
    def invalidate_knn_index(self) -> None:
        """Forget the cached targets' KD-tree (`get_kdtree` builds a new one)."""
        self._kdtree = None
        self._kdtree_standardized = None

    def get_kdtree(self, *, standardize: bool = True):
        """A ``scipy.spatial.cKDTree`` over the targets (float64), z-scored by the fitted
        target standardiser when ``standardize`` (``RuntimeError`` if it is not
        fitted: call `fit_target_standardiser`); cached until the standardiser is
        refitted or `invalidate_knn_index` is called."""
        if self._kdtree is not None and self._kdtree_standardized == bool(standardize):
            return self._kdtree
        from scipy.spatial import cKDTree

        if standardize:
            if not self.target_standardiser.is_fitted:
                raise RuntimeError(
                    "get_kdtree(standardize=True): the target standardiser is not fitted; "
                    "call grid.fit_target_standardiser() first, or pass standardize=False."
                )
            points = self._targets_standardized
        else:
            points = np.asarray(self.targets, dtype=np.float64)
        self._kdtree = cKDTree(points)
        self._kdtree_standardized = bool(standardize)
        return self._kdtree

    def in_boundaries(self, targets_query: Any) -> np.ndarray:
        """(M,) bool: which target positions (M, Q) lie inside the grid's domain, by
        ``check_boundaries`` (all True without one)."""
        q = np.atleast_2d(np.asarray(targets_query, dtype=np.float64))
        if q.ndim != 2 or q.shape[1] != self.n_targets:
            raise ValueError(
                f"in_boundaries: `targets_query` must be (M, {self.n_targets}), got {q.shape}."
            )
        if self.check_boundaries is None:
            return np.ones(q.shape[0], dtype=bool)
        inside = np.asarray(self.check_boundaries(q), dtype=bool).reshape(-1)
        if inside.shape != (q.shape[0],):
            raise ValueError(
                f"in_boundaries: check_boundaries returned shape {inside.shape} for "
                f"{q.shape[0]} queries; it must return one bool per row."
            )
        return inside

    # ---------------------------------------------------------- interpolation
    def interpolate_observables(
        self,
        targets_query,
        mode="local_linear",
        k=32,
        p=2.0,
        eps=1e-12,
        standardize=True,
        ridge=1e-8,
        fill_value=np.nan,
        *,
        method=None,
    ):
        """Observables predicted at arbitrary targets from the grid's neighbours
        (``"nearest"``, ``"idw"``, ``"local_linear"`` — the default, as BESTA;
        ``method`` is BESTA's alias of ``mode``); differentiable with respect to the
        query. See `jaxgrid.interpolate.interpolate_observables`."""
        from .interpolate import interpolate_observables

        return interpolate_observables(
            self,
            targets_query,
            mode=mode if method is None else method,
            k=k,
            p=p,
            eps=eps,
            standardize=standardize,
            ridge=ridge,
            fill_value=fill_value,
        )

    @classmethod
    def from_training(
        cls,
        observables: Any,
        errors: Any,
        targets: Any,
        observable_names: Sequence[str],
        target_names: Sequence[str],
        bandwidth: Any = 0.0,
        error_scale: float = 1.0,
        weights: Any = None,
        meta: dict[str, Any] | None = None,
        smooth_targets: dict[str, float] | None = None,
        replicas: int = 8,
    ) -> ModelGrid:
        """An **empirical grid**: the models are a training set's objects, their own
        errors (times ``error_scale``, plus ``bandwidth`` in quadrature) the model noise
        (`jaxgrid.empirical`; learn the kernel with `jaxgrid.empirical.fit_kernel`,
        build photometric features with `jaxgrid.empirical.colour_features`);
        ``smooth_targets={"z": z_sigma}`` smooths the redshifts with ``replicas``
        copies of each object (`jaxgrid.empirical.training_grid`)."""
        from .empirical import training_grid

        return training_grid(
            cls,
            observables,
            errors,
            targets,
            observable_names,
            target_names,
            bandwidth=bandwidth,
            error_scale=error_scale,
            weights=weights,
            meta=meta,
            smooth_targets=smooth_targets,
            replicas=replicas,
        )

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict[str, Any]:
        """The grid as a dict (NumPy arrays, names, weights, meta, standardisers), in
        BESTA's layout: `from_dict` — jaxgrid's or BESTA's — rebuilds it.
        ``check_boundaries`` (code) is not included."""
        return grid_format.grid_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, check_boundaries=None) -> ModelGrid:
        """A grid from `to_dict`'s dict (or BESTA's ``ModelGrid.to_dict()``)."""
        return grid_format.grid_from_dict(d, cls=cls, check_boundaries=check_boundaries)

    def to_fits_table(
        self,
        path,
        hdu_name="MODELGRID",
        overwrite=False,
        include_meta=True,
        checksum=True,
        *,
        meta_key="META",
        fill_value=None,
    ):
        """Write a FITS binary table (see `jaxgrid.grid_format.write_fits`).
        ``meta_key``: the header key of the meta (BESTA writes ``MODELGRID_META``);
        ``fill_value``: BESTA's keyword, accepted (a grid has no masked values)."""
        grid_format.write_fits(
            self,
            path,
            hdu_name=hdu_name,
            overwrite=overwrite,
            include_meta=include_meta,
            checksum=checksum,
            meta_key=meta_key,
        )

    @classmethod
    def from_fits_table(
        cls,
        path,
        observable_cols=None,
        target_cols=None,
        weight_col=None,
        row_mask=None,
        table_hdu=1,
        memmap=False,
        meta_key=None,
    ) -> ModelGrid:
        """Read a FITS table (see `jaxgrid.grid_format.read_fits`): jaxgrid's and
        BESTA's files (meta under ``META`` or ``MODELGRID_META``, or ``meta_key``).
        ``memmap``: BESTA's keyword, accepted (the table is read into memory)."""
        return grid_format.read_fits(
            path,
            observable_cols=observable_cols,
            target_cols=target_cols,
            weight_col=weight_col,
            row_mask=row_mask,
            table_hdu=table_hdu,
            meta_key=meta_key,
            cls=cls,
        )

    def to_hdf5(
        self,
        path,
        group="/modelgrid",
        overwrite=False,
        compression="gzip",
        compression_opts=None,
        chunks=True,
        include_meta=True,
    ):
        """Write to an HDF5 group (see `jaxgrid.grid_format.write_hdf5`); the keywords
        are BESTA's."""
        grid_format.write_hdf5(
            self,
            path,
            group=group,
            overwrite=overwrite,
            compression=compression,
            compression_opts=compression_opts,
            chunks=chunks,
            include_meta=include_meta,
        )

    @classmethod
    def from_hdf5(
        cls,
        path,
        group="/modelgrid",
        observable_dsets=None,
        target_dsets=None,
        weight_dset=None,
        row_slice=None,
    ) -> ModelGrid:
        """Read an HDF5 group (see `jaxgrid.grid_format.read_hdf5`)."""
        return grid_format.read_hdf5(
            path,
            group=group,
            observable_dsets=observable_dsets,
            target_dsets=target_dsets,
            weight_dset=weight_dset,
            row_slice=row_slice,
            cls=cls,
        )

    def to_pickle(self, path) -> None:
        """Pickle the grid (arrays as NumPy; see `jaxgrid.grid_format.write_pickle`)."""
        grid_format.write_pickle(self, path)

    @classmethod
    def from_pickle(cls, path) -> ModelGrid:

        return grid_format.read_pickle(path, cls=cls)

    @classmethod
    def load_auto(cls, path, **kw) -> ModelGrid:
        """Load by suffix: .fits/.fit/.fts/.fits.gz, .h5/.hdf5, .pkl/.pickle."""
        return grid_format.load_auto(path, cls=cls, **kw)


def _working(values: Any, what: str, fix: str, positive: Any = None) -> Array:
    """``values`` in the working float dtype, checked *after* the cast: a finite float64
    value beyond float32's range would be stored as inf (and a positive weight below it
    as 0, i.e. an excluded model) while passing a float64 check."""
    dt = np.dtype(float_dtype())
    out = cast_overflows(values, dt)
    bad = ~np.isfinite(out)
    if positive is not None:
        bad |= positive & (out == 0)
    if bad.any():
        rows = np.flatnonzero(bad.reshape(bad.shape[0], -1).any(axis=1))
        limits = f"|v| > {np.finfo(dt).max:.3g}, stored as inf"
        if positive is not None:
            limits += ", or 0 < v below the smallest positive value, stored as 0"
        raise ValueError(
            f"ModelGrid: `{what}` has {int(bad.sum())} values outside the {dt} range "
            f"({limits}; first rows {rows[:5].tolist()}); {fix}."
        )
    return jnp.asarray(out)


def _noise_array(values: Any, shape: tuple, what: str, fix: str) -> Array | None:
    """A checked (N, P) noise-model array in the working dtype, or None."""
    if values is None:
        return None
    arr = np.asarray(values)
    if arr.shape != tuple(shape):
        raise ValueError(
            f"ModelGrid: `{what}` must have the observables' shape {tuple(shape)} (one value "
            f"per model and band), got {arr.shape}."
        )
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise ValueError(f"ModelGrid: `{what}` must be real numbers, got {arr.dtype}.")
    bad = ~np.isfinite(arr)
    if what == "model_sigma":
        bad |= arr < 0
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        need = "finite and >= 0 (0: no model error)" if what == "model_sigma" else "finite"
        raise ValueError(
            f"ModelGrid: `{what}` must be {need}; {int(bad.sum())} values are not (first "
            f"rows {rows[:5].tolist()})."
        )
    return _working(arr, what, fix)


def _column_index(col: str | int, names: Sequence[str], what: str) -> int:
    if isinstance(col, (bool, np.bool_)):
        raise TypeError(f"{what} column must be a name or an integer index, got {col!r}.")
    if isinstance(col, (int, np.integer)):
        n = len(names)
        if not -n <= int(col) < n:
            raise IndexError(f"{what} index {int(col)} is out of range for {n} {what}s {names}.")
        return int(col) % n
    if isinstance(col, str):
        if col not in names:
            raise KeyError(f"unknown {what} {col!r}; known {what}s: {list(names)}.")
        return list(names).index(col)
    raise TypeError(f"{what} column must be a name or an integer index, got {type(col).__name__}.")


def _row_index(idx: Any, n: int) -> np.ndarray:
    if idx is None:
        return np.arange(n)
    arr = np.asarray(idx)
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise ValueError(f"select: a bool `idx` must have shape ({n},), got {arr.shape}.")
        return np.flatnonzero(arr)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"select: `idx` must be ints or a bool mask, got {arr.dtype}.")
    arr = arr.reshape(-1)
    if arr.size and (arr.min() < -n or arr.max() >= n):
        raise IndexError(f"select: `idx` has indices outside [0, {n}).")
    return arr % n
