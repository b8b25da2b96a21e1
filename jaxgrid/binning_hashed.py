"""`HashedGridBinner`: candidates from a hashed uniform grid of cells (host).

The preselection space (see `jaxgrid.binning_common`) is cut into equal boxes of
width ``w`` per dim; a model lives in cell ``floor((z - origin) / w)``. Only
occupied cells are stored (a hash table of integer coordinates), so the grid
costs memory in proportion to the models, not to the volume.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .binning_common import (
    DEFAULT_MAX_CANDIDATES,
    RADIUS_SHAPES,
    SELECT_MODES,
    TRANSFORMS,
    CellIndex,
    SpaceBinner,
    box_cells,
    box_members,
    box_size,
    check_choice,
    check_dims,
    check_int,
    check_pca_variance,
    check_positive,
    gather_members,
    inside_shape,
    rank_and_pad,
    row_blocks,
)

__all__ = ["HashedGridBinner"]


class HashedGridBinner(SpaceBinner):
    """Preselects candidate models from a hashed uniform grid of cells.

    Args:
        dims: observable indices (or names, resolved at ``fit``).
        transform: ``"none"``, ``"standardize"`` or ``"pca_whiten"`` (as
            `KDTreeBinner`).
        pca_variance: fraction of variance the kept PCA components reach.
        select_mode: ``"knn"``: the cells around the object's cell are visited
            shell by shell (Chebyshev rings of cells, ``0..max_expand_steps``)
            until ``target_k`` models are gathered; the ``target_k`` nearest of
            them, nearest first (approximate: a model just outside the last shell
            can be nearer than one inside). ``"radius"``: every model inside the
            region ``radius_shape`` of ``radius_factor`` x the object's errors
            mapped into the space (exact), nearest first.
        target_k: candidates per row in knn mode.
        radius_factor, radius_shape, sigma_floor: the radius region, as
            `KDTreeBinner` (``"ball"``, ``"ellipsoid"``, ``"box"``).
        cell_width: cell width in the space (a number or one per space dim);
            None: the width giving ``target_cell_occupancy`` models per cell at
            the grid's mean density over its bounding box.
        target_cell_occupancy: models per cell for the automatic width.
        max_expand_steps: the last shell visited in knn mode.
        max_candidates: the fixed K of radius mode (nearest first; default 1024).

    A row that finds nothing gets the exact nearest models from a KD-tree
    (``target_k`` in knn mode, 1 in radius mode, as BESTA). A row with a missing
    value in ``dims`` (or unusable errors in radius mode) falls back to the full
    grid (``batch_candidates``' ``fallback``).

    Example:
        >>> b = HashedGridBinner(dims=[0, 1, 2], target_k=128).fit(grid)
        >>> idx, mask, level, fallback = b.batch_candidates(X, S)
    """

    def __init__(
        self,
        dims,
        transform: str = "standardize",
        pca_variance: float = 1.0,
        select_mode: str = "knn",
        target_k: int = 100,
        radius_factor: float = 2.0,
        radius_shape: str = "ellipsoid",
        sigma_floor: float = 1e-12,
        cell_width=None,
        target_cell_occupancy: int = 32,
        max_expand_steps: int = 8,
        max_candidates: int | None = None,
    ):
        who = "HashedGridBinner"
        self.dims = check_dims(dims, "dims", who)
        self.transform = check_choice(transform, "transform", TRANSFORMS, who)
        self.pca_variance = check_pca_variance(pca_variance, who)
        self.select_mode = check_choice(select_mode, "select_mode", SELECT_MODES, who)
        self.target_k = check_int(target_k, "target_k", who)
        self.radius_factor = check_positive(radius_factor, "radius_factor", who)
        self.radius_shape = check_choice(radius_shape, "radius_shape", RADIUS_SHAPES, who)
        self.sigma_floor = check_positive(sigma_floor, "sigma_floor", who, zero_ok=True)
        if cell_width is not None:
            cw = np.atleast_1d(np.asarray(cell_width, dtype=np.float64))
            if cw.ndim != 1 or not np.all(np.isfinite(cw) & (cw > 0)):
                raise ValueError(
                    f"{who}: `cell_width` must be None, a positive number or one per "
                    f"space dim; got {cell_width!r}."
                )
            cell_width = float(cw[0]) if np.ndim(cell_width) == 0 else cw.tolist()
        self.cell_width = cell_width
        self.target_cell_occupancy = check_int(target_cell_occupancy, "target_cell_occupancy", who)
        self.max_expand_steps = check_int(max_expand_steps, "max_expand_steps", who, minimum=0)
        self.max_candidates = check_int(max_candidates, "max_candidates", who, none_ok=True)
        self._width = self._origin = None
        self._index: CellIndex | None = None

    def settings(self) -> dict[str, Any]:
        return {
            "dims": self.dims,
            "transform": self.transform,
            "pca_variance": self.pca_variance,
            "select_mode": self.select_mode,
            "target_k": self.target_k,
            "radius_factor": self.radius_factor,
            "radius_shape": self.radius_shape,
            "sigma_floor": self.sigma_floor,
            "cell_width": self.cell_width,
            "target_cell_occupancy": self.target_cell_occupancy,
            "max_expand_steps": self.max_expand_steps,
            "max_candidates": self.max_candidates,
        }

    def _needs_sigma(self) -> bool:
        return self.select_mode == "radius"

    def _fixed_k(self) -> int:
        if self.select_mode == "knn":
            return self.target_k
        return self.max_candidates or DEFAULT_MAX_CANDIDATES

    def _single_k(self) -> int:
        if self.select_mode == "radius" and self.max_candidates is None:
            return self._n_grid  # one row: the whole region
        return self.n_candidates

    def _info_extra(self) -> dict[str, Any]:
        return {"cell_width_fitted": self._width.tolist(), "n_cells": self._index.n_cells}

    # ---------------------------------------------------------------- cells
    def _resolve_width(self, z: np.ndarray) -> np.ndarray:
        d = z.shape[1]
        if self.cell_width is not None:
            cw = np.atleast_1d(np.asarray(self.cell_width, dtype=np.float64))
            if cw.size == 1:
                cw = np.full(d, cw[0])
            if cw.shape != (d,):
                raise ValueError(
                    f"HashedGridBinner: `cell_width` has {cw.size} values; the space has "
                    f"{d} dims (give one number or {d})."
                )
            return np.maximum(cw, self.sigma_floor)
        span = np.maximum(z.max(axis=0) - z.min(axis=0), max(self.sigma_floor, 1e-300))
        # the cube holding target_cell_occupancy models at the mean density
        log_volume = np.log(self.target_cell_occupancy) - np.log(z.shape[0]) + np.log(span).sum()
        return np.maximum(np.full(d, np.exp(log_volume / d)), self.sigma_floor)

    def _build(self) -> None:
        z = self._points
        if self._width is None:  # fit (load restores the fitted width)
            self._width = self._resolve_width(z)
            self._origin = z.min(axis=0) - 0.5 * self._width
        self._index = CellIndex(self._cell_of(z))

    def _cell_of(self, z: np.ndarray) -> np.ndarray:
        c = np.floor((z - self._origin) / self._width)
        return np.clip(c, -(2.0**40), 2.0**40).astype(np.int64)

    def _fit_array(self, raw, dim_index):
        self._width = self._origin = None
        return super()._fit_array(raw, dim_index)

    def _state(self) -> dict[str, np.ndarray]:
        return {"width": self._width, "origin": self._origin}

    def _restore(self, arrays) -> None:
        self._width, self._origin = arrays["width"], arrays["origin"]

    # ---------------------------------------------------------------- query
    def _query(self, z: np.ndarray, sz: np.ndarray, k: int):
        n = z.shape[0]
        if self.select_mode == "knn":
            kk = min(self.target_k, self._n_grid)
            row, model = self._knn_pairs(z, kk)
            level = kk
        else:
            row, model = self._radius_pairs(z, sz)
            level = None
        dist = np.linalg.norm(self._points[model] - z[row], axis=1)
        idx, mask, found = rank_and_pad(row, model, dist, n, k)
        empty = np.flatnonzero(found == 0)
        if empty.size:  # nothing in the visited cells: the exact nearest models
            kk = min(k, self.target_k, self._n_grid) if self.select_mode == "knn" else 1
            _, near = self._tree.query(z[empty], k=kk)
            idx[empty, :kk] = np.asarray(near).reshape(empty.size, kk)
            mask[empty, :kk] = True
        return idx, mask, level

    def _knn_pairs(self, z: np.ndarray, kk: int):
        """(row, model) pairs of the shells visited until each row has ``kk`` models."""
        index = self._index
        center = self._cell_of(z)
        count = np.zeros(z.shape[0], np.int64)
        rows_out, models_out = [], []
        for step in range(self.max_expand_steps + 1):
            act = np.flatnonzero(count < kk)
            if act.size == 0:
                break
            lo = np.maximum(center[act] - step, index.lo)
            hi = np.minimum(center[act] + step, index.hi)
            for blk in row_blocks(box_size(lo, hi)):
                r, cells = box_cells(lo[blk], hi[blk])
                on_shell = np.abs(cells - center[act[blk]][r]).max(axis=1) == step
                rr, mm = gather_members(index, act[blk][r[on_shell]], cells[on_shell])
                rows_out.append(rr)
                models_out.append(mm)
                count += np.bincount(rr, minlength=z.shape[0])
        if not rows_out:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(rows_out), np.concatenate(models_out)

    def _radius_pairs(self, z: np.ndarray, sz: np.ndarray):
        """(row, model) pairs inside each row's region (exact)."""
        f = self.radius_factor
        if self.radius_shape == "ball":
            bound = f * np.linalg.norm(sz, axis=1, keepdims=True) * np.ones_like(sz)
        else:
            bound = f * sz
        index = self._index
        lo = np.maximum(self._cell_of(z - bound), index.lo)
        hi = np.minimum(self._cell_of(z + bound), index.hi)
        row, model = box_members(index, np.arange(z.shape[0]), lo, hi)
        keep = inside_shape(self._points[model] - z[row], sz[row], f, self.radius_shape)
        return row[keep], model[keep]

    def _empty_level(self):
        return min(self.target_k, self._n_grid) if self.select_mode == "knn" else None
