"""`NestedBinner`: a primary partition, then a binner per primary cell (host).

Typical use: cut the grid in redshift-like observables (``primary_dims``), then
select in colour space (``secondary_dims``) only among the models of the primary
cells an object can reach.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .binning_common import (
    DEFAULT_MAX_CANDIDATES,
    EDGES_MODES,
    CellIndex,
    _box_hits,
    check_choice,
    check_dims,
    check_int,
    check_positive,
    load_npz,
    ragged_arange,
    rank_and_pad,
    resolve_dims,
    select_rows,
)
from .binning_hashed import HashedGridBinner
from .binning_kdtree import KDTreeBinner
from .binning_rect import RectBinner

__all__ = ["NestedBinner"]

SECONDARY_KINDS = {"kdtree": KDTreeBinner, "hashed": HashedGridBinner, "rect": RectBinner}
_FORMAT = "jaxgrid.NestedBinner/1"


class NestedBinner:
    """Two-stage candidate selection: primary cells, then a child binner per cell.

    Args:
        primary_dims: observables (indices or names) of the primary partition
            (native values, no transform).
        secondary_dims: observables the child binners index.
        primary_bins: bins per primary dim (>= 2).
        primary_edges_mode: ``"quantile"`` or ``"linear"`` primary edges.
        primary_radius_factor: an object reaches the primary cells within
            ``primary_radius_factor`` x its errors of its primary values (0: its
            own cell; without errors: its own cell).
        secondary_kind: the child binner, ``"kdtree"`` (`KDTreeBinner`),
            ``"hashed"`` (`HashedGridBinner`) or ``"rect"`` (`RectBinner`).
        secondary_params: keywords of the child binner (``dims`` excluded).
        min_primary_count: a primary cell with fewer models gets no child; its
            models are used whole (see below).
        final_target_k: keep the ``final_target_k`` nearest (None: all, up to
            ``max_candidates``).
        use_global_fallback: a child binner over the whole grid for objects
            whose reachable primary cells hold no model.
        max_candidates: the fixed K of ``batch_candidates`` when
            ``final_target_k`` is None (default 1024).

    Per object (as BESTA): the union of the child candidates of the reachable
    cells; if there is none, every model of the reachable cells; if there is
    none, the global child's candidates. The list is ranked by
    ``sum_d ((x_d - y_d) / s_d)^2`` over the secondary dims (native values,
    ``s_d = 1`` where an error is missing; missing values left out), nearest
    first. The level (BESTA's ``aux``) is the number of reachable primary cells
    (``batch_candidates``: an (M,) array, -1 on fallback rows). A row with a
    missing primary value, or with nothing found, falls back to the full grid.

    Example:
        >>> b = NestedBinner(primary_dims=["mag_i"], secondary_dims=[0, 1, 2],
        ...                  secondary_params={"target_k": 64}, final_target_k=128)
        >>> idx, n_cells = b.fit(grid).candidates(x, sigma)
    """

    def __init__(
        self,
        primary_dims,
        secondary_dims,
        primary_bins: int = 16,
        primary_edges_mode: str = "quantile",
        primary_radius_factor: float = 2.0,
        secondary_kind: str = "kdtree",
        secondary_params: dict | None = None,
        min_primary_count: int = 8,
        final_target_k: int | None = None,
        use_global_fallback: bool = True,
        max_candidates: int | None = None,
    ):
        who = "NestedBinner"
        self.primary_dims = check_dims(primary_dims, "primary_dims", who)
        self.secondary_dims = check_dims(secondary_dims, "secondary_dims", who)
        self.primary_bins = check_int(primary_bins, "primary_bins", who, minimum=2)
        self.primary_edges_mode = check_choice(
            primary_edges_mode, "primary_edges_mode", EDGES_MODES, who
        )
        self.primary_radius_factor = check_positive(
            primary_radius_factor, "primary_radius_factor", who, zero_ok=True
        )
        self.secondary_kind = check_choice(
            secondary_kind, "secondary_kind", tuple(SECONDARY_KINDS), who
        )
        if secondary_params is None:
            secondary_params = {}
        if not isinstance(secondary_params, dict) or "dims" in secondary_params:
            raise ValueError(
                f"{who}: `secondary_params` must be a dict of child-binner keywords "
                "without 'dims' (the child binners index `secondary_dims`)."
            )
        self.secondary_params = dict(secondary_params)
        self.min_primary_count = check_int(min_primary_count, "min_primary_count", who)
        self.final_target_k = check_int(final_target_k, "final_target_k", who, none_ok=True)
        if not isinstance(use_global_fallback, (bool, np.bool_)):
            raise ValueError(f"{who}: `use_global_fallback` must be True or False.")
        self.use_global_fallback = bool(use_global_fallback)
        self.max_candidates = check_int(max_candidates, "max_candidates", who, none_ok=True)
        try:  # the child's own checks, now rather than at fit
            self._new_child()
        except TypeError as err:
            raise ValueError(f"{who}: `secondary_params` {err}") from None
        self._index: CellIndex | None = None
        self._children: dict[int, tuple[Any, np.ndarray]] = {}
        self._global = None
        self._n_grid = 0

    # ----------------------------------------------------------- settings
    def settings(self) -> dict[str, Any]:
        return {
            "primary_dims": self.primary_dims,
            "secondary_dims": self.secondary_dims,
            "primary_bins": self.primary_bins,
            "primary_edges_mode": self.primary_edges_mode,
            "primary_radius_factor": self.primary_radius_factor,
            "secondary_kind": self.secondary_kind,
            "secondary_params": self.secondary_params,
            "min_primary_count": self.min_primary_count,
            "final_target_k": self.final_target_k,
            "use_global_fallback": self.use_global_fallback,
            "max_candidates": self.max_candidates,
        }

    @property
    def dims(self) -> list:
        """Primary then secondary dims, each once."""
        return list(dict.fromkeys(self.primary_dims + self.secondary_dims))

    @property
    def is_fitted(self) -> bool:
        return self._index is not None

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError("NestedBinner is not fitted: call binner.fit(grid) first.")

    @property
    def n_candidates(self) -> int:
        """The fixed K of ``batch_candidates``."""
        self._require_fitted()
        k = self.final_target_k or self.max_candidates or DEFAULT_MAX_CANDIDATES
        return min(k, self._n_grid)

    def info(self) -> dict[str, Any]:
        out = {"kind": "NestedBinner", **self.settings()}
        if self.is_fitted:
            occ = self._index.count
            out.update(
                n_models=self._n_grid,
                n_primary_cells=self._index.n_cells,
                n_secondary_models=len(self._children),
                mean_primary_occupancy=float(occ.mean()),
                median_primary_occupancy=float(np.median(occ)),
                n_candidates=self.n_candidates,
            )
        return out

    def __repr__(self) -> str:
        state = f"fitted on {self._n_grid} models" if self.is_fitted else "unfitted"
        return (
            f"NestedBinner(primary={self.primary_dims}, secondary={self.secondary_dims}, "
            f"{self.secondary_kind}, {state})"
        )

    # ---------------------------------------------------------------- fit
    def _new_child(self):
        return SECONDARY_KINDS[self.secondary_kind](self.secondary_dims, **self.secondary_params)

    def fit(self, grid) -> NestedBinner:
        """Primary edges and cells on ``grid``, a child binner per populated cell."""
        p_idx = resolve_dims(grid, self.primary_dims, "primary_dims", "NestedBinner")
        s_idx = resolve_dims(grid, self.secondary_dims, "secondary_dims", "NestedBinner")
        obs = np.asarray(grid.observables, dtype=np.float64)
        return self._fit_arrays(obs[:, p_idx], obs[:, s_idx], p_idx, s_idx)

    def _fit_arrays(self, raw_p, raw_s, p_idx, s_idx) -> NestedBinner:
        self._p_idx, self._s_idx = list(p_idx), list(s_idx)
        self._raw_p, self._raw_s = raw_p, raw_s
        self._n_grid = raw_p.shape[0]
        self._edges = [self._primary_edges(raw_p[:, d]) for d in range(raw_p.shape[1])]
        self._index = CellIndex(self._primary_cell(raw_p))
        self._children = {}
        for cell in np.flatnonzero(self._index.count >= self.min_primary_count):
            start, count = self._index.start[cell], self._index.count[cell]
            members = np.sort(self._index.members[start : start + count])
            child = self._new_child()._fit_array(raw_s[members], self._s_idx)
            self._children[int(cell)] = (child, members)
        self._global = None
        if self.use_global_fallback:
            self._global = self._new_child()._fit_array(raw_s, self._s_idx)
        return self

    def _primary_edges(self, x: np.ndarray) -> np.ndarray:
        """Strictly increasing edges of one primary dim, the ends padded by 1e-6 x span."""
        n = self.primary_bins
        if self.primary_edges_mode == "quantile":
            edges = np.quantile(x, np.linspace(0.0, 1.0, n + 1))
        else:
            lo, hi = float(x.min()), float(x.max())
            edges = np.linspace(lo, hi if hi > lo else lo + 1.0, n + 1)
        edges = np.maximum.accumulate(edges)
        step = np.arange(n + 1) * 1e-12  # repeated quantiles: nudge apart, keep the order
        edges = edges + step
        span = edges[-1] - edges[0]
        pad = 1e-6 * span if span > 0 else 1e-6
        edges[0] -= pad
        edges[-1] += pad
        return edges

    def _primary_bin(self, d: int, x: np.ndarray) -> np.ndarray:
        ed = self._edges[d]
        return np.clip(np.searchsorted(ed, x, side="right") - 1, 0, ed.size - 2)

    def _primary_cell(self, raw_p: np.ndarray) -> np.ndarray:
        cols = [self._primary_bin(d, raw_p[:, d]) for d in range(raw_p.shape[1])]
        return np.stack(cols, axis=1).astype(np.int64)

    # -------------------------------------------------------------- query
    def batch_candidates(self, Y, SIG=None):
        """Candidates of every row: ``(idx (M, K), mask (M, K), level (M,), fallback (M,))``."""
        return self._batch(Y, SIG, self.n_candidates)

    def candidates(self, y_native, sigmas_native=None) -> tuple[np.ndarray, int]:
        """Candidates of one object (full P-vectors): ``(idx, n_primary_cells)``,
        nearest first; the row of ``batch_candidates`` (uncapped when neither
        ``final_target_k`` nor ``max_candidates`` is set). A row that cannot be
        served gives every model."""
        self._require_fitted()
        y = np.asarray(y_native, dtype=np.float64)[None]
        s = None if sigmas_native is None else np.asarray(sigmas_native, np.float64)[None]
        k = self.final_target_k or self.max_candidates or self._n_grid
        idx, mask, level, fallback = self._batch(y, s, min(k, self._n_grid))
        if fallback[0]:
            return np.arange(self._n_grid), int(level[0])
        return idx[0][mask[0]], int(level[0])

    def _batch(self, Y, SIG, k: int):
        self._require_fitted()
        y_p, s_p, ok = select_rows(Y, SIG, self._p_idx, "NestedBinner")
        m = y_p.shape[0]
        fallback = ~ok.all(axis=1)
        serve = np.flatnonzero(~fallback)
        reach = self.primary_radius_factor * np.where(np.isfinite(s_p) & (s_p > 0), s_p, 0.0)
        lo = np.stack(
            [self._primary_bin(d, (y_p - reach)[serve, d]) for d in range(y_p.shape[1])], 1
        )
        hi = np.stack(
            [self._primary_bin(d, (y_p + reach)[serve, d]) for d in range(y_p.shape[1])], 1
        )
        level = np.full(m, -1, np.int64)
        level[serve] = np.prod(hi - lo + 1, axis=1)
        hit_row, hit_start, hit_count = _box_hits(self._index, serve, lo, hi)
        hit_cell = np.searchsorted(self._index.start, hit_start)
        rows, models = self._child_pairs(Y, SIG, hit_row, hit_cell)
        got = np.zeros(m, bool)
        got[rows] = True
        # no child candidate: every model of the reachable cells
        pool = ~got[hit_row]
        pr, pm = (
            np.repeat(hit_row[pool], hit_count[pool]),
            self._index.members[ragged_arange(hit_start[pool], hit_count[pool])],
        )
        rows, models = np.concatenate([rows, pr]), np.concatenate([models, pm])
        got[pr] = True
        lost = serve[~got[serve]]
        if lost.size and self._global is not None:  # nothing reachable: the global child
            gi, gm = self._global.batch_candidates(_take(Y, lost), _take(SIG, lost))[:2]
            r, c = np.nonzero(gm)
            rows, models = np.concatenate([rows, lost[r]]), np.concatenate([models, gi[r, c]])
        idx, mask, _ = rank_and_pad(
            rows, models, self._secondary_distance(Y, SIG, rows, models), m, k
        )
        fallback |= ~mask.any(axis=1)
        level[fallback] = -1
        return idx, mask, level, fallback

    def _child_pairs(self, Y, SIG, hit_row, hit_cell):
        """(row, model) pairs from the child binners of the reached cells (a loop over
        cells, each child queried once for all its rows)."""
        rows_out, models_out = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        for cell in np.unique(hit_cell):
            if int(cell) not in self._children:
                continue
            child, members = self._children[int(cell)]
            rows = hit_row[hit_cell == cell]
            ci, cm = child.batch_candidates(_take(Y, rows), _take(SIG, rows))[:2]
            r, c = np.nonzero(cm)
            rows_out.append(rows[r])
            models_out.append(members[ci[r, c]])
        return np.concatenate(rows_out), np.concatenate(models_out)

    def _secondary_distance(self, Y, SIG, rows, models):
        """BESTA's ranking: ``sum_d ((x_d - y_d) / s_d)^2`` on the secondary dims."""
        y_s, s_s, ok = select_rows(Y, SIG, self._s_idx, "NestedBinner")
        s = np.where(np.isfinite(s_s) & (s_s > 0), s_s, 1.0)
        dz = (self._raw_s[models] - np.where(ok, y_s, 0.0)[rows]) / s[rows]
        return np.sum(np.where(ok[rows], dz, 0.0) ** 2, axis=1)

    # ------------------------------------------------------------ save/load
    def save(self, path: str | Path) -> None:
        """Write every setting and the grid values the binner indexes to ``path`` (an
        ``.npz`` archive whatever the extension); ``load`` refits the cells and the
        child binners from them (the same fit: identical candidates)."""
        self._require_fitted()
        from .binning_common import save_npz

        meta = {"settings": self.settings(), "p_idx": self._p_idx, "s_idx": self._s_idx}
        try:
            json.dumps(meta)
        except TypeError:
            raise ValueError(
                "NestedBinner.save: `secondary_params` must hold JSON values (numbers, "
                "strings, lists) to be saved."
            ) from None
        save_npz(path, _FORMAT, meta, {"raw_p": self._raw_p, "raw_s": self._raw_s})

    @classmethod
    def load(cls, path: str | Path) -> NestedBinner:
        """Read a binner written by ``save``."""
        meta, f = load_npz(path, _FORMAT, "NestedBinner")
        b = cls(**meta["settings"])
        return b._fit_arrays(f["raw_p"], f["raw_s"], meta["p_idx"], meta["s_idx"])


def _take(a, rows):
    return None if a is None else np.asarray(a, dtype=np.float64)[rows]
