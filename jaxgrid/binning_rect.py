"""`RectBinner`: candidates from multi-level rectangular cells (host).

Level ``l`` cuts each dim of the preselection space (see
`jaxgrid.binning_common`) into ``base_bins * 2**l`` bins (quantile or linear
edges); a model lives in one cell per level. An object takes the models of a
box of cells around its own cell, at a level chosen from its errors
(``mode="sigma"``) or from the models its cell holds (``mode="target_k"``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .binning_common import (
    DEFAULT_MAX_CANDIDATES,
    EDGES_MODES,
    TRANSFORMS,
    CellIndex,
    SpaceBinner,
    box_counts,
    box_members,
    check_choice,
    check_dims,
    check_int,
    check_pca_variance,
    check_positive,
    rank_and_pad,
)

__all__ = ["RectBinner"]

RECT_MODES = ("sigma", "target_k")


class RectBinner(SpaceBinner):
    """Preselects candidate models from rectangular cells on several levels.

    Args:
        dims: observable indices (or names, resolved at ``fit``).
        levels: number of levels; level ``l`` has ``base_bins * 2**l`` bins per dim.
        base_bins: bins per dim on level 0.
        transform, pca_variance: the preselection space, as `KDTreeBinner`.
        edges_mode: ``"quantile"`` (equal counts per bin, per dim) or
            ``"linear"`` (equal widths over the grid's range, padded 1 %).
        mode: ``"sigma"``: the level whose mean bin width best matches
            ``target_factor`` x the object's error (the smallest
            ``|sum_d log(width_d / (target_factor s_d))|``), then the box of
            ``ceil(expand_factor s_d / width_d)`` cells on each side of the
            object's cell. ``"target_k"``: the finest level whose cell of the
            object holds ``target_k`` models (else level 0), then boxes of 1, 2,
            ... ``max_expand_steps`` cells on each side until they hold
            ``target_k`` models.
        target_factor, expand_factor: the sigma mode's factors.
        target_k: the models ``"target_k"`` mode looks for (None: 1).
        k: accepted for BESTA compatibility; unused (as in BESTA).
        max_expand_steps: the widest box of ``"target_k"`` mode.
        sigma_floor: floor of the errors mapped into the space.
        max_candidates: the fixed K of ``batch_candidates`` (the nearest of the
            box's models, by distance in the space; default 1024).

    The candidates are every model of the box, nearest first (``candidates``:
    all of them unless ``max_candidates`` is set); the level is returned per row
    (``batch_candidates``: an (M,) array, -1 on fallback rows). A row with a
    missing value (or, in sigma mode, unusable errors) or an empty box falls
    back to the full grid.

    Example:
        >>> b = RectBinner(dims=[0, 1, 2], mode="target_k", target_k=200).fit(grid)
        >>> idx, level = b.candidates(x, sigma)
    """

    def __init__(
        self,
        dims,
        levels: int = 5,
        base_bins: int = 6,
        transform: str = "standardize",
        pca_variance: float = 1.0,
        edges_mode: str = "quantile",
        mode: str = "sigma",
        target_factor: float = 2.0,
        expand_factor: float = 2.0,
        target_k: int | None = None,
        k: int | None = None,
        max_expand_steps: int = 4,
        sigma_floor: float = 1e-12,
        max_candidates: int | None = None,
    ):
        who = "RectBinner"
        self.dims = check_dims(dims, "dims", who)
        self.levels = check_int(levels, "levels", who)
        self.base_bins = check_int(base_bins, "base_bins", who)
        self.transform = check_choice(transform, "transform", TRANSFORMS, who)
        self.pca_variance = check_pca_variance(pca_variance, who)
        self.edges_mode = check_choice(edges_mode, "edges_mode", EDGES_MODES, who)
        self.mode = check_choice(mode, "mode", RECT_MODES, who)
        self.target_factor = check_positive(target_factor, "target_factor", who)
        self.expand_factor = check_positive(expand_factor, "expand_factor", who)
        self.target_k = check_int(target_k, "target_k", who, none_ok=True)
        self.k = check_int(k, "k", who, none_ok=True)
        self.max_expand_steps = check_int(max_expand_steps, "max_expand_steps", who, minimum=0)
        self.sigma_floor = check_positive(sigma_floor, "sigma_floor", who, zero_ok=True)
        self.max_candidates = check_int(max_candidates, "max_candidates", who, none_ok=True)
        self._edges: list[np.ndarray] = []
        self._width: np.ndarray | None = None
        self._index: list[CellIndex] = []

    def settings(self) -> dict[str, Any]:
        return {
            "dims": self.dims,
            "levels": self.levels,
            "base_bins": self.base_bins,
            "transform": self.transform,
            "pca_variance": self.pca_variance,
            "edges_mode": self.edges_mode,
            "mode": self.mode,
            "target_factor": self.target_factor,
            "expand_factor": self.expand_factor,
            "target_k": self.target_k,
            "k": self.k,
            "max_expand_steps": self.max_expand_steps,
            "sigma_floor": self.sigma_floor,
            "max_candidates": self.max_candidates,
        }

    def _needs_sigma(self) -> bool:
        return self.mode == "sigma"

    def _fixed_k(self) -> int:
        return self.max_candidates or DEFAULT_MAX_CANDIDATES

    def _single_k(self) -> int:
        return self.n_candidates if self.max_candidates else self._n_grid

    def _empty_level(self):
        return np.zeros(0, np.int64)

    def _info_extra(self) -> dict[str, Any]:
        return {"cells_per_level": [ix.n_cells for ix in self._index]}

    # ---------------------------------------------------------------- cells
    def _level_edges(self, z: np.ndarray, n_bins: int) -> np.ndarray:
        """Edges (D, n_bins + 1) of one level."""
        if self.edges_mode == "quantile":
            edges = np.quantile(z, np.linspace(0.0, 1.0, n_bins + 1), axis=0).T
            span = edges[:, -1] - edges[:, 0]
            pad = np.where(span > 0, 1e-6 * span, 1.0)
            edges[:, 0] -= pad
            edges[:, -1] += pad
            return edges
        lo, hi = z.min(axis=0), z.max(axis=0)
        pad = 0.01 * (hi - lo + 1e-6)
        return np.linspace(lo - pad, hi + pad, n_bins + 1).T

    def _build(self) -> None:
        z = self._points
        self._edges, self._index = [], []
        widths = []
        for level in range(self.levels):
            edges = self._level_edges(z, self.base_bins * 2**level)
            self._edges.append(edges)
            widths.append(np.diff(edges, axis=1).mean(axis=1))
            self._index.append(CellIndex(self._cell_of(z, level)))
        self._width = np.array(widths)  # (levels, D') mean bin width

    def _cell_of(self, z: np.ndarray, level: int) -> np.ndarray:
        edges = self._edges[level]
        n_bins = edges.shape[1] - 1
        cols = [np.searchsorted(edges[d], z[:, d], side="right") - 1 for d in range(z.shape[1])]
        return np.clip(np.stack(cols, axis=1), 0, n_bins - 1).astype(np.int64)

    # ---------------------------------------------------------------- query
    def _query(self, z: np.ndarray, sz: np.ndarray, k: int):
        n = z.shape[0]
        if self.mode == "sigma":
            level, half = self._sigma_boxes(sz)
        else:
            level, half = self._target_k_boxes(z)
        rows_out, models_out = [], []
        for lv in range(self.levels):
            rows = np.flatnonzero(level == lv)
            if rows.size == 0:
                continue
            cell = self._cell_of(z[rows], lv)
            top = self._edges[lv].shape[1] - 2
            lo = np.clip(cell - half[rows], 0, top)
            hi = np.clip(cell + half[rows], 0, top)
            r, m = box_members(self._index[lv], rows, lo, hi)
            rows_out.append(r)
            models_out.append(m)
        row = np.concatenate(rows_out) if rows_out else np.zeros(0, np.int64)
        model = np.concatenate(models_out) if models_out else np.zeros(0, np.int64)
        dist = np.linalg.norm(self._points[model] - z[row], axis=1)
        idx, mask, _ = rank_and_pad(row, model, dist, n, k)
        return idx, mask, level.astype(np.int64)

    def _sigma_boxes(self, sz: np.ndarray):
        """Per row: the level matching ``target_factor * s`` and the box half-widths."""
        target = self.target_factor * sz  # (n, D')
        score = np.log((self._width[None] + 1e-12) / (target[:, None] + 1e-12)).sum(axis=2)
        level = np.argmin(np.abs(score), axis=1)
        half = np.ceil(self.expand_factor * sz / self._width[level])
        return level, np.clip(half, 0, 2.0**40).astype(np.int64)

    def _target_k_boxes(self, z: np.ndarray):
        """Per row: the finest level whose own cell holds ``target_k`` models (else 0)
        and the box half-width reached by expanding until it holds them."""
        want = self.target_k or 1
        n = z.shape[0]
        level = np.zeros(n, np.int64)
        own = np.zeros(n, np.int64)
        for lv in range(self.levels):  # finer levels overwrite coarser ones
            count = self._index[lv].lookup(self._cell_of(z, lv))[1]
            hit = count >= want
            level[hit] = lv
            own[hit] = count[hit]
        coarse = level == 0
        own[coarse] = self._index[0].lookup(self._cell_of(z[coarse], 0))[1]
        half = np.zeros(n, np.int64)
        total = own
        for step in range(1, self.max_expand_steps + 1):
            for lv in range(self.levels):
                act = np.flatnonzero((total < want) & (level == lv))
                if act.size == 0:
                    continue
                cell = self._cell_of(z[act], lv)
                top = self._edges[lv].shape[1] - 2
                lo, hi = np.clip(cell - step, 0, top), np.clip(cell + step, 0, top)
                total[act] = box_counts(self._index[lv], lo, hi)
                half[act] = step
        return level, half[:, None] * np.ones((1, z.shape[1]), np.int64)
