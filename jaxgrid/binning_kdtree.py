"""`KDTreeBinner`: candidate models from a ``scipy.spatial.cKDTree`` (host).

The binner protocol it follows is described in `jaxgrid.binning`.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from .binning_common import (
    DEFAULT_MAX_CANDIDATES,
    RADIUS_SHAPES,
    SELECT_MODES,
    TRANSFORMS,
    fit_linear_map,
    sigma_to_space,
    to_space,
)

_TRANSFORMS, _MODES, _SHAPES = TRANSFORMS, SELECT_MODES, RADIUS_SHAPES
_FORMAT = "jaxgrid.KDTreeBinner/1"


class KDTreeBinner:
    """Preselects candidate models with a ``scipy.spatial.cKDTree``.

    Args:
        dims: observable indices (or names, resolved at ``fit``) spanning the tree.
        transform: ``"none"``; ``"standardize"`` (z-score per dimension, fitted
            on the grid); ``"pca_whiten"`` (principal components reaching
            ``pca_variance`` of the variance, whitened).
        pca_variance: fraction of variance the kept components must reach.
        leafsize: the tree's leaf size.
        select_mode: ``"knn"`` (the ``target_k`` nearest, nearest first) or
            ``"radius"`` (models within ``radius_factor`` x the object's errors
            mapped into tree space, floored at ``sigma_floor``).
        radius_shape: ``"ball"`` (``|dz| <= f ||s||``), ``"ellipsoid"``
            (``sum (dz/s)^2 <= f^2``) or ``"box"`` (``|dz_d| <= f s_d``).
        max_candidates: cap on radius-mode candidates (nearest first); the
            fixed K of ``batch_candidates`` in radius mode (default 1024).

    Missing values: a row with NaN in some tree dims is queried on the
    remaining dims (``"none"``/``"standardize"``; one tree per missing-dims
    pattern, built on demand). With ``"pca_whiten"`` (mixed dims) or no
    finite dim left, the row falls back to the full grid
    (``last_fallback_rows``). Nothing crashes on NaN.

    Example:
        >>> binner = KDTreeBinner(dims=[0, 1, 2], target_k=256).fit(grid)
        >>> idx, level = binner.candidates(x, sigma)
    """

    def __init__(
        self,
        dims,
        transform: str = "standardize",
        pca_variance: float = 1.0,
        leafsize: int = 100,
        select_mode: str = "knn",
        target_k: int = 100,
        radius_factor: float = 2.0,
        radius_shape: str = "ellipsoid",
        sigma_floor: float = 1e-12,
        max_candidates: int | None = None,
    ):
        if isinstance(dims, (str, int)):
            dims = [dims]
        dims = list(dims)
        if not dims:
            raise ValueError("KDTreeBinner: `dims` is empty; give the observables to index.")
        if transform not in _TRANSFORMS:
            raise ValueError(f"KDTreeBinner: `transform` must be one of {_TRANSFORMS}.")
        if select_mode not in _MODES:
            raise ValueError(f"KDTreeBinner: `select_mode` must be one of {_MODES}.")
        if radius_shape not in _SHAPES:
            raise ValueError(f"KDTreeBinner: `radius_shape` must be one of {_SHAPES}.")
        if not 0.0 < float(pca_variance) <= 1.0:
            raise ValueError("KDTreeBinner: `pca_variance` must be in (0, 1].")
        if int(target_k) < 1 or int(leafsize) < 1:
            raise ValueError("KDTreeBinner: `target_k` and `leafsize` must be >= 1.")
        if not float(radius_factor) > 0 or not float(sigma_floor) >= 0:
            raise ValueError("KDTreeBinner: need radius_factor > 0 and sigma_floor >= 0.")
        if max_candidates is not None and int(max_candidates) < 1:
            raise ValueError("KDTreeBinner: `max_candidates` must be >= 1 or None.")
        self.dims = dims
        self.transform = transform
        self.pca_variance = float(pca_variance)
        self.leafsize = int(leafsize)
        self.select_mode = select_mode
        self.target_k = int(target_k)
        self.radius_factor = float(radius_factor)
        self.radius_shape = radius_shape
        self.sigma_floor = float(sigma_floor)
        self.max_candidates = None if max_candidates is None else int(max_candidates)
        self.last_fallback_rows: np.ndarray | None = None
        self.last_cut_rows = 0
        self._points: np.ndarray | None = None  # grid in tree space (N, D')
        self._dim_index: list[int] | None = None
        self._mean = self._scale = self._components = None
        self._n_grid = 0
        self._trees: dict[tuple[int, ...], cKDTree] = {}

    # ----------------------------------------------------------- settings
    def settings(self) -> dict[str, Any]:
        return {
            "dims": self.dims,
            "transform": self.transform,
            "pca_variance": self.pca_variance,
            "leafsize": self.leafsize,
            "select_mode": self.select_mode,
            "target_k": self.target_k,
            "radius_factor": self.radius_factor,
            "radius_shape": self.radius_shape,
            "sigma_floor": self.sigma_floor,
            "max_candidates": self.max_candidates,
        }

    @property
    def is_fitted(self) -> bool:
        return self._points is not None

    @property
    def n_candidates(self) -> int:
        """The fixed K of ``batch_candidates``."""
        self._require_fitted()
        if self.select_mode == "knn":
            return min(self.target_k, self._n_grid)
        return min(self.max_candidates or DEFAULT_MAX_CANDIDATES, self._n_grid)

    def info(self) -> dict[str, Any]:
        out = {"kind": "KDTreeBinner", **self.settings()}
        if self.is_fitted:
            out.update(
                n_models=self._n_grid,
                dim_index=self._dim_index,
                tree_dims=int(self._points.shape[1]),
                n_candidates=self.n_candidates,
            )
        return out

    def __repr__(self) -> str:
        state = f"fitted on {self._n_grid} models" if self.is_fitted else "unfitted"
        return f"KDTreeBinner({self.select_mode}, dims={self.dims}, {self.transform}, {state})"

    # ---------------------------------------------------------------- fit
    def fit(self, grid) -> KDTreeBinner:
        """Build the tree over ``grid``'s observables in ``dims`` (transformed)."""
        from .grid import ModelGrid

        if not isinstance(grid, ModelGrid):
            raise TypeError(f"KDTreeBinner.fit: expected a ModelGrid, got {type(grid).__name__}.")
        idx = [grid.observable_index(d) for d in self.dims]
        if len(set(idx)) != len(idx):
            raise ValueError(f"KDTreeBinner: `dims` {self.dims} name an observable twice.")
        raw = np.asarray(grid.observables, dtype=np.float64)[:, idx]
        return self._fit_array(raw, idx)

    def _fit_array(self, raw: np.ndarray, dim_index: list[int]) -> KDTreeBinner:
        """Fit on native values ``raw`` (N, D) of the observables ``dim_index``."""
        self._dim_index = list(dim_index)
        self._n_grid = raw.shape[0]
        self._mean, self._scale, self._components = fit_linear_map(
            raw, self.transform, self.pca_variance
        )
        self._set_points(self._to_tree(raw))
        return self

    def _set_points(self, points: np.ndarray) -> None:
        self._points = np.ascontiguousarray(points)
        self._trees = {tuple(range(points.shape[1])): cKDTree(self._points, leafsize=self.leafsize)}

    def _to_tree(self, raw: np.ndarray) -> np.ndarray:
        """Native preselection dims (..., D) -> tree space (..., D')."""
        return to_space(raw, self._mean, self._scale, self._components)

    def _sigma_to_tree(self, sig: np.ndarray) -> np.ndarray:
        """Errors mapped into tree space (per tree dim), floored at sigma_floor."""
        return sigma_to_space(sig, self._scale, self._components, self.sigma_floor)

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError("KDTreeBinner is not fitted: call binner.fit(grid) first.")

    def _tree(self, keep: tuple[int, ...]) -> cKDTree:
        if keep not in self._trees:
            self._trees[keep] = cKDTree(self._points[:, list(keep)], leafsize=self.leafsize)
        return self._trees[keep]

    # -------------------------------------------------------------- query
    def _prepare_rows(self, Y, SIG):
        self._require_fitted()
        Y = np.asarray(Y, dtype=np.float64)
        if SIG is None:
            if self.select_mode == "radius":
                raise ValueError(
                    "KDTreeBinner: select_mode='radius' needs the errors; pass sigmas."
                )
            SIG = np.full_like(Y, np.nan)
        SIG = np.asarray(SIG, dtype=np.float64)
        if Y.ndim == 1:
            Y, SIG = Y[None], SIG[None]
        if Y.shape != SIG.shape or Y.ndim != 2:
            raise ValueError(f"binner: Y {Y.shape} and SIG {SIG.shape} must be (M, P) alike.")
        if Y.shape[1] <= max(self._dim_index):
            raise ValueError(
                f"binner: rows have {Y.shape[1]} observables, the tree needs index "
                f"{max(self._dim_index)}; pass full P-vectors."
            )
        y = Y[:, self._dim_index]
        s = SIG[:, self._dim_index]
        ok = np.isfinite(y)
        if self.select_mode == "radius":
            ok &= np.isfinite(s) & (s >= 0)
        return y, s, ok

    def batch_candidates(self, Y, SIG=None) -> tuple[np.ndarray, np.ndarray, int | None]:
        """Candidates for every row at once: ``(idx (M, K), mask (M, K), level)``.

        One batched tree query per missing-dims pattern, on all cores
        (``workers=-1``). knn: the ``target_k`` nearest, nearest first,
        ``level = target_k``. radius: up to ``max_candidates`` nearest within
        the radius (``last_cut_rows`` counts rows whose ball held more), the
        nearest model when none is inside; ``level = None``. Rows that cannot
        be served get an all-false mask and ``last_fallback_rows[i] = True``.
        """
        y, s, ok = self._prepare_rows(Y, SIG)
        m, k = y.shape[0], self.n_candidates
        idx = np.zeros((m, k), dtype=np.int64)
        mask = np.zeros((m, k), dtype=bool)
        fallback = ~ok.any(axis=1)
        if self._components is not None:
            fallback |= ~ok.all(axis=1)  # PCA mixes dims: no partial query
        self.last_cut_rows = 0
        patterns = {}
        for r in np.flatnonzero(~fallback):
            patterns.setdefault(tuple(np.flatnonzero(ok[r])), []).append(r)
        for keep, rows in patterns.items():
            rows = np.asarray(rows)
            if self._components is None:
                zq = self._to_tree(np.where(ok[rows], y[rows], 0.0))[:, list(keep)]
                sq = self._sigma_to_tree(np.where(ok[rows], s[rows], 0.0))[:, list(keep)]
            else:
                zq, sq = self._to_tree(y[rows]), self._sigma_to_tree(s[rows])
            tree = self._tree(keep if self._components is None else tuple(range(zq.shape[1])))
            if self.select_mode == "knn":
                got, valid = self._knn(tree, zq, k)
            else:
                got, valid = self._radius(tree, zq, sq, k)
            idx[rows], mask[rows] = got, valid
        self.last_fallback_rows = fallback
        level = self.target_k if self.select_mode == "knn" else None
        return idx, mask, level

    def _knn(self, tree: cKDTree, zq: np.ndarray, k: int):
        _, got = tree.query(zq, k=k, workers=-1)
        got = np.asarray(got).reshape(zq.shape[0], k)
        return got, np.ones_like(got, dtype=bool)

    def _radius(self, tree: cKDTree, zq: np.ndarray, sq: np.ndarray, k: int):
        f = self.radius_factor
        if self.radius_shape == "ball":
            r = f * np.linalg.norm(sq, axis=1)
        elif self.radius_shape == "ellipsoid":
            r = f * sq.max(axis=1)  # the ellipsoid's bounding ball
        else:
            r = f * np.linalg.norm(sq, axis=1)  # the box's bounding ball
        lists = tree.query_ball_point(zq, r, workers=-1, return_sorted=False)
        counts = np.array([len(a) for a in lists])
        row = np.repeat(np.arange(zq.shape[0]), counts)
        flat = (
            np.concatenate([np.asarray(a, dtype=np.int64) for a in lists])
            if row.size
            else (np.zeros(0, np.int64))
        )
        pts = tree.data[flat]
        dz = pts - zq[row]
        if self.radius_shape == "ball":
            inside = np.ones(row.size, bool)
        elif self.radius_shape == "ellipsoid":
            inside = np.sum((dz / sq[row]) ** 2, axis=1) <= f**2
        else:
            inside = np.all(np.abs(dz) <= f * sq[row], axis=1)
        row, flat, dist = row[inside], flat[inside], np.linalg.norm(dz[inside], axis=1)
        order = np.lexsort((flat, dist, row))  # per row: nearest first, ties by index
        row, flat = row[order], flat[order]
        start = np.searchsorted(row, np.arange(zq.shape[0]))
        rank = np.arange(row.size) - start[row]
        n_in = np.bincount(row, minlength=zq.shape[0])
        self.last_cut_rows += int(np.sum(n_in > k))
        keep = rank < k
        got = np.zeros((zq.shape[0], k), np.int64)
        valid = np.zeros((zq.shape[0], k), bool)
        got[row[keep], rank[keep]] = flat[keep]
        valid[row[keep], rank[keep]] = True
        empty = n_in == 0
        if empty.any():  # nothing inside: the single nearest model
            _, nearest = tree.query(zq[empty], k=1, workers=-1)
            got[empty, 0] = nearest
            valid[empty, 0] = True
        return got, valid

    def candidates(self, y_native, sigmas_native=None) -> tuple[np.ndarray, int | None]:
        """Candidates of one object (full P-vectors): ``(idx, level)``.

        ``sigmas_native`` may be omitted in knn mode (radius mode raises ValueError).

        knn: the ``target_k`` nearest, nearest first, ``level = target_k``;
        radius: every model inside the radius, nearest first (at most
        ``max_candidates`` when set), the nearest one when none; ``level = None``.
        A row that cannot be served returns all model indices (the full grid).
        """
        y_row = np.asarray(y_native, dtype=np.float64)[None]
        s_row = None if sigmas_native is None else np.asarray(sigmas_native, np.float64)[None]
        if self.select_mode == "knn":
            idx, mask, level = self.batch_candidates(y_row, s_row)
        else:
            saved = self.max_candidates
            try:  # one row: no fixed K needed, take the whole ball unless capped
                self.max_candidates = saved or self._n_grid
                idx, mask, level = self.batch_candidates(y_row, s_row)
            finally:
                self.max_candidates = saved
        if self.last_fallback_rows[0]:
            return np.arange(self._n_grid), level
        return idx[0][mask[0]], level

    # ------------------------------------------------------------ save/load
    def save(self, path: str | Path) -> None:
        """Write every setting and the fitted transform/points to ``path`` (.npz)."""
        self._require_fitted()
        arrays = {
            "points": self._points,
            "mean": self._mean,
            "scale": self._scale,
            "dim_index": np.asarray(self._dim_index),
        }
        if self._components is not None:
            arrays["components"] = self._components
        meta = json.dumps({"format": _FORMAT, "settings": self.settings(), "n_grid": self._n_grid})
        with open(path, "wb") as fh:
            np.savez(fh, meta=np.array(meta), **arrays)

    @classmethod
    def load(cls, path: str | Path) -> KDTreeBinner:
        """Read a binner written by ``save`` (the tree is rebuilt identically)."""
        not_ours = f"KDTreeBinner.load: {path} is not a saved KDTreeBinner (write one with save)"
        try:
            f = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise
        except (ValueError, OSError, EOFError, zipfile.BadZipFile):  # not an .npz at all
            raise ValueError(f"{not_ours}: not a NumPy .npz archive.") from None
        if not isinstance(f, np.lib.npyio.NpzFile):  # a bare .npy array
            raise ValueError(f"{not_ours}: not a NumPy .npz archive.")
        with f:
            try:
                meta = json.loads(str(f["meta"]))
            except (KeyError, ValueError):
                raise ValueError(f"{not_ours}: no jaxgrid metadata.") from None
            if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
                raise ValueError(f"{not_ours}.")
            b = cls(**meta["settings"])
            b._mean, b._scale = f["mean"], f["scale"]
            b._components = f["components"] if "components" in f else None
            b._dim_index = [int(i) for i in f["dim_index"]]
            b._n_grid = int(meta["n_grid"])
            b._set_points(f["points"])
        return b
