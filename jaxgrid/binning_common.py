"""What the host binners share: the preselection space (a fitted linear map),
row checks, integer cell indexes, ragged-to-padded candidate lists and the
``.npz`` file format.

Every binner maps the grid observables of its ``dims`` into a *preselection
space* ``z = ((x - mean) / scale) @ components`` (``components`` only with
``"pca_whiten"``) and selects candidates there. Candidate lists are built as
flat ``(row, model, distance)`` triples, then ranked per row (nearest first,
ties by model index) and padded to a fixed K with ``mask`` False.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

TRANSFORMS = ("none", "standardize", "pca_whiten")
SELECT_MODES = ("knn", "radius")
RADIUS_SHAPES = ("ball", "ellipsoid", "box")
EDGES_MODES = ("quantile", "linear")
DEFAULT_MAX_CANDIDATES = 1024
#: (row, cell) pairs enumerated at once; rows are processed in blocks below it
PAIR_BUDGET = 2_000_000
#: rows queried together (bounds the (row, model) pairs held at once)
QUERY_BLOCK = 256


def _blocks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


# ------------------------------------------------------------------ arguments
def check_choice(value: str, name: str, choices: tuple[str, ...], who: str) -> str:
    """``value`` if it is one of ``choices``, else a ValueError naming ``name``."""
    if value not in choices:
        raise ValueError(f"{who}: `{name}` must be one of {choices}; got {value!r}.")
    return value


def check_int(value: Any, name: str, who: str, minimum: int = 1, none_ok: bool = False):
    """``int(value)`` (or None when allowed) checked ``>= minimum``."""
    if value is None and none_ok:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        extra = " or None" if none_ok else ""
        raise ValueError(f"{who}: `{name}` must be an integer >= {minimum}{extra}; got {value!r}.")
    return int(value)


def check_positive(value: Any, name: str, who: str, zero_ok: bool = False) -> float:
    """``float(value)`` checked ``> 0`` (``>= 0`` with ``zero_ok``)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{who}: `{name}` must be a number; got {value!r}.") from None
    if not np.isfinite(v) or v < 0 or (v == 0 and not zero_ok):
        bound = ">= 0" if zero_ok else "> 0"
        raise ValueError(f"{who}: `{name}` must be finite and {bound}; got {value!r}.")
    return v


def check_dims(dims: Any, name: str, who: str) -> list:
    """A non-empty list of observable names or indices."""
    if isinstance(dims, (str, int, np.integer)):
        dims = [dims]
    dims = list(dims)
    if not dims:
        raise ValueError(f"{who}: `{name}` is empty; give the observables to index.")
    return dims


def check_pca_variance(value: Any, who: str) -> float:
    v = float(value)
    if not 0.0 < v <= 1.0:
        raise ValueError(f"{who}: `pca_variance` must be in (0, 1]; got {value!r}.")
    return v


def resolve_dims(grid, dims: list, name: str, who: str) -> list[int]:
    """Observable indices of ``dims`` on ``grid`` (a ``ModelGrid``), no repeats."""
    from .grid import ModelGrid

    if not isinstance(grid, ModelGrid):
        raise TypeError(f"{who}.fit: expected a ModelGrid, got {type(grid).__name__}.")
    idx = [grid.observable_index(d) for d in dims]
    if len(set(idx)) != len(idx):
        raise ValueError(f"{who}: `{name}` {dims} name an observable twice.")
    return idx


# ----------------------------------------------------------- the linear map
def fit_linear_map(raw: np.ndarray, transform: str, pca_variance: float = 1.0):
    """``(mean, scale, components | None)`` of the preselection space fitted on ``raw``.

    ``"none"``: identity; ``"standardize"``: ``(x - mean) / sd`` (``sd = 0`` -> 1);
    ``"pca_whiten"``: the standardised values projected on the principal
    components reaching ``pca_variance`` of the variance, each scaled to unit
    variance.

    Example:
        >>> mean, scale, comp = fit_linear_map(obs[:, :3], "pca_whiten", 0.99)
        >>> z = to_space(obs[:, :3], mean, scale, comp)
    """
    d = raw.shape[1]
    mean, scale, components = np.zeros(d), np.ones(d), None
    if transform in ("standardize", "pca_whiten"):
        mean = raw.mean(axis=0)
        sd = raw.std(axis=0)
        scale = np.where(sd > 0, sd, 1.0)
    if transform == "pca_whiten":
        z = (raw - mean) / scale
        cov = np.cov(z, rowvar=False, bias=True).reshape(d, d)
        evals, evecs = np.linalg.eigh(cov)
        order = np.argsort(evals)[::-1]
        evals, evecs = np.clip(evals[order], 0.0, None), evecs[:, order]
        frac = np.cumsum(evals) / max(evals.sum(), 1e-300)
        keep = int(np.searchsorted(frac, pca_variance - 1e-12) + 1)
        keep = max(1, min(keep, int(np.sum(evals > 1e-12 * evals[0])) or 1))
        components = evecs[:, :keep] / np.sqrt(np.where(evals[:keep] > 0, evals[:keep], 1))
    return mean, scale, components


def to_space(raw: np.ndarray, mean, scale, components) -> np.ndarray:
    """Native values (..., D) -> preselection space (..., D')."""
    z = (raw - mean) / scale
    return z if components is None else z @ components


def sigma_to_space(sig: np.ndarray, scale, components, floor: float) -> np.ndarray:
    """Independent native errors (..., D) -> errors per space dim, floored at ``floor``:
    ``sqrt(sum_j (s_j / scale_j)^2 c_jk^2)``."""
    s = sig / scale
    if components is not None:
        s = np.sqrt((s**2) @ (components**2))
    return np.maximum(s, floor)


# ------------------------------------------------------------------- rows
def select_rows(Y, SIG, dim_index: list[int], who: str):
    """``(y (M, D), s (M, D), ok (M, D))`` of full native rows; ``SIG=None`` gives NaN
    errors. ``ok``: finite value (the caller adds its own condition on ``s``)."""
    Y = np.asarray(Y, dtype=np.float64)
    if Y.ndim == 1:
        Y = Y[None]
    SIG = np.full_like(Y, np.nan) if SIG is None else np.asarray(SIG, dtype=np.float64)
    if SIG.ndim == 1:
        SIG = SIG[None]
    if Y.shape != SIG.shape or Y.ndim != 2:
        raise ValueError(f"{who}: Y {Y.shape} and SIG {SIG.shape} must be (M, P) alike.")
    if Y.shape[1] <= max(dim_index):
        raise ValueError(
            f"{who}: rows have {Y.shape[1]} observables, the binner needs index "
            f"{max(dim_index)}; pass full P-vectors."
        )
    y, s = Y[:, dim_index], SIG[:, dim_index]
    return y, s, np.isfinite(y)


def sigma_ok(s: np.ndarray) -> np.ndarray:
    """Usable errors: finite and >= 0."""
    return np.isfinite(s) & (s >= 0)


# ------------------------------------------------------------ cell indexes
_HASH = np.random.default_rng(20261204).integers(1, 2**62, size=64, dtype=np.int64) | 1


def _hash(coords: np.ndarray) -> np.ndarray:
    """64-bit keys of integer cell coordinates (..., D) (wrapping arithmetic)."""
    c = coords.astype(np.uint64)
    h = (c * _HASH[: coords.shape[-1]].astype(np.uint64)).sum(axis=-1, dtype=np.uint64)
    return h ^ (h >> np.uint64(29))


class CellIndex:
    """Models grouped by integer cell coordinates; ``lookup`` is exact (keys are
    hashed, the stored coordinates are compared).

    Example:
        >>> index = CellIndex(np.floor(z / width).astype(np.int64))
        >>> start, count = index.lookup(query_cells)   # count 0: empty cell
    """

    def __init__(self, coords: np.ndarray):
        coords = np.asarray(coords, dtype=np.int64)
        keys = _hash(coords)
        order = np.lexsort((*coords.T[::-1], keys))
        self.members = order  # model indices grouped by cell
        k, c = keys[order], coords[order]
        new = np.ones(order.size, bool)
        new[1:] = (k[1:] != k[:-1]) | np.any(c[1:] != c[:-1], axis=1)
        self.start = np.flatnonzero(new)
        self.count = np.diff(np.append(self.start, order.size))
        self.keys = k[self.start]
        self.cells = c[self.start]
        if np.any(self.keys[1:] == self.keys[:-1]):  # two occupied cells, one key
            raise RuntimeError("CellIndex: 64-bit cell-key collision; change the cell width.")
        self.lo = coords.min(axis=0) if coords.size else np.zeros(coords.shape[1], np.int64)
        self.hi = coords.max(axis=0) if coords.size else np.zeros(coords.shape[1], np.int64)

    @property
    def n_cells(self) -> int:
        return int(self.keys.size)

    def lookup(self, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(start, count)`` into ``members`` for cells (..., D); count 0 if empty."""
        keys = _hash(coords)
        pos = np.clip(np.searchsorted(self.keys, keys), 0, max(self.n_cells - 1, 0))
        hit = (self.keys[pos] == keys) & np.all(self.cells[pos] == coords, axis=-1)
        return self.start[pos], np.where(hit, self.count[pos], 0)


def ragged_arange(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + c) for s, c in zip(starts, counts)])``, vectorised."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    offsets = np.repeat(np.cumsum(counts) - counts, counts)
    return np.repeat(starts, counts) + (np.arange(total) - offsets)


def box_size(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Number of integer cells in each row's box ``lo..hi`` (inclusive), as float
    (a wide box does not overflow)."""
    return np.prod(np.clip(hi - lo + 1, 0, None).astype(np.float64), axis=1)


def box_cells(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every cell of each row's box: ``(row (T,), coords (T, D))``."""
    ext = np.clip(hi - lo + 1, 0, None)
    n = np.prod(ext, axis=1)
    row = np.repeat(np.arange(lo.shape[0]), n)
    local = np.arange(row.size) - np.repeat(np.cumsum(n) - n, n)
    coords = np.empty((row.size, lo.shape[1]), np.int64)
    for d in range(lo.shape[1] - 1, -1, -1):
        e = ext[row, d]
        coords[:, d] = lo[row, d] + local % e
        local = local // e
    return row, coords


def row_blocks(sizes: np.ndarray, budget: int = PAIR_BUDGET) -> Iterator[np.ndarray]:
    """Consecutive blocks of row positions whose ``sizes`` add up to about ``budget``."""
    csum = np.cumsum(np.asarray(sizes, np.float64))
    start = 0
    while start < sizes.size:
        base = csum[start - 1] if start else 0.0
        stop = int(np.searchsorted(csum, base + budget, side="right"))
        stop = max(stop, start + 1)
        yield np.arange(start, min(stop, sizes.size))
        start = stop


def gather_members(index: CellIndex, row: np.ndarray, coords: np.ndarray):
    """``(row, model)`` pairs of the models in the given (row, cell) pairs."""
    start, count = index.lookup(coords)
    return np.repeat(row, count), index.members[ragged_arange(start, count)]


def _box_hits(index: CellIndex, rows, lo, hi):
    """``(row, start, count)`` of the occupied cells inside each row's box ``lo..hi``
    (``start`` identifies the cell).

    Rows are enumerated in blocks of about ``PAIR_BUDGET`` cells; a row whose box
    holds more cells than the index has occupied cells tests the occupied cells
    instead (in blocks too).
    """
    size = box_size(lo, hi)
    wide = size > index.n_cells
    out = []
    narrow = np.flatnonzero(~wide)
    for blk in row_blocks(size[narrow]):
        pick = narrow[blk]
        r, c = box_cells(lo[pick], hi[pick])
        start, count = index.lookup(c)
        hit = count > 0
        out.append((rows[pick][r][hit], start[hit], count[hit]))
    wide = np.flatnonzero(wide)
    per = max(1, PAIR_BUDGET // max(index.n_cells, 1))
    for b in range(0, wide.size, per):
        w = wide[b : b + per]
        cells = index.cells[None]
        inside = np.all((cells >= lo[w][:, None]) & (cells <= hi[w][:, None]), axis=2)
        r, cell = np.nonzero(inside)
        out.append((rows[w][r], index.start[cell], index.count[cell]))
    if not out:
        z = np.zeros(0, np.int64)
        return z, z, z
    return tuple(np.concatenate(a) for a in zip(*out, strict=True))


def box_members(index: CellIndex, rows: np.ndarray, lo: np.ndarray, hi: np.ndarray):
    """``(row, model)`` pairs of every model inside each row's cell box ``lo..hi``."""
    row, start, count = _box_hits(index, rows, lo, hi)
    return np.repeat(row, count), index.members[ragged_arange(start, count)]


def box_counts(index: CellIndex, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Models inside each row's cell box ``lo..hi`` (M,)."""
    row, _, count = _box_hits(index, np.arange(lo.shape[0]), lo, hi)
    return np.bincount(row, weights=count, minlength=lo.shape[0]).astype(np.int64)


# ------------------------------------------------------- candidate lists
def rank_and_pad(row, model, dist, m: int, k: int):
    """Per row the ``k`` nearest of its ``(model, dist)`` pairs, nearest first (ties by
    model index, duplicates dropped): ``(idx (m, k), mask (m, k), n_found (m,))``."""
    n_found = np.bincount(row, minlength=m)
    if row.size > 2 * m * k:  # long lists: keep each row's k nearest (and ties) first
        keep = dist <= _kth_distance(row, dist, n_found, k)[row]
        row, model, dist = row[keep], model[keep], dist[keep]
    order = np.lexsort((model, dist, row))
    row, model = row[order], model[order]
    dup = np.zeros(row.size, bool)
    dup[1:] = (row[1:] == row[:-1]) & (model[1:] == model[:-1])
    row, model = row[~dup], model[~dup]
    start = np.searchsorted(row, np.arange(m))
    rank = np.arange(row.size) - start[row]
    keep = rank < k
    idx = np.zeros((m, k), np.int64)
    mask = np.zeros((m, k), bool)
    idx[row[keep], rank[keep]] = model[keep]
    mask[row[keep], rank[keep]] = True
    return idx, mask, n_found


def _kth_distance(row, dist, counts, k: int) -> np.ndarray:
    """Each row's k-th smallest distance (inf with fewer than k): rows of similar
    length are partitioned together in dense (rows, longest) blocks of about
    ``PAIR_BUDGET`` entries."""
    order = np.argsort(row, kind="stable")
    dist = dist[order]
    start = np.cumsum(counts) - counts
    kth = np.full(counts.size, np.inf)
    rows = np.flatnonzero(counts >= k)[np.argsort(counts[counts >= k], kind="stable")]
    b = 0
    while b < rows.size:  # a loop over blocks: rows sorted by length
        n_rows = np.arange(1, rows.size - b + 1)
        fits = n_rows * counts[rows[b:]] <= PAIR_BUDGET
        stop = b + max(1, int(np.searchsorted(~fits, True)))
        blk = rows[b:stop]
        width = int(counts[blk].max())
        r = np.repeat(np.arange(blk.size), counts[blk])
        pos = ragged_arange(start[blk], counts[blk])
        dense = np.full((blk.size, width), np.inf)
        dense[r, pos - np.repeat(start[blk], counts[blk])] = dist[pos]
        kth[blk] = np.partition(dense, k - 1, axis=1)[:, k - 1]
        b = stop
    return kth


def inside_shape(dz: np.ndarray, s: np.ndarray, factor: float, shape: str) -> np.ndarray:
    """Is each offset ``dz`` (T, D) inside the region of errors ``s`` (T, D):
    ball ``|dz| <= f |s|``, ellipsoid ``sum (dz/s)^2 <= f^2``, box ``|dz_d| <= f s_d``."""
    if shape == "ball":
        return np.sum(dz**2, axis=1) <= factor**2 * np.sum(s**2, axis=1)
    if shape == "ellipsoid":
        return np.sum((dz / s) ** 2, axis=1) <= factor**2
    return np.all(np.abs(dz) <= factor * s, axis=1)


# ------------------------------------------------------------------ files
def save_npz(path: str | Path, fmt: str, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    """Write ``meta`` (JSON) and ``arrays`` to ``path`` as an ``.npz`` archive
    (whatever its extension)."""
    blob = json.dumps({"format": fmt, **meta})
    with open(path, "wb") as fh:
        np.savez(fh, meta=np.array(blob), **arrays)


def load_npz(path: str | Path, fmt: str, who: str) -> tuple[dict, dict[str, np.ndarray]]:
    """``(meta, arrays)`` of a file written by ``save_npz`` with format ``fmt``."""
    not_ours = f"{who}.load: {path} is not a saved {who} (write one with save)"
    try:
        f = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile):
        raise ValueError(f"{not_ours}: not a NumPy .npz archive.") from None
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise ValueError(f"{not_ours}: not a NumPy .npz archive.")
    with f:
        try:
            meta = json.loads(str(f["meta"]))
        except (KeyError, ValueError):
            raise ValueError(f"{not_ours}: no jaxgrid metadata.") from None
        if not isinstance(meta, dict) or meta.get("format") != fmt:
            raise ValueError(f"{not_ours}.")
        arrays = {k: f[k] for k in f.files if k != "meta"}
    return meta, arrays


# ------------------------------------------------------------ shared base
class SpaceBinner:
    """What `HashedGridBinner` and `RectBinner` share (abstract; not public): the
    preselection space fitted on the grid, row checks, ``candidates`` built from the
    batched query, ``n_candidates``, ``info`` and the ``.npz`` round trip.

    A subclass defines ``settings()``, ``_build()`` (its cell structures, from
    ``self._points``), ``_query(y, s, rows_ok, k) -> (idx, mask, level)`` on the
    rows it can serve, ``_needs_sigma()``, ``_fixed_k()`` and optionally
    ``_info_extra()``.
    """

    _points: np.ndarray | None = None

    # ---- to define
    def settings(self) -> dict[str, Any]:
        raise NotImplementedError

    def _build(self) -> None:
        raise NotImplementedError

    def _query(self, z, sz, k):
        raise NotImplementedError

    def _needs_sigma(self) -> bool:
        raise NotImplementedError

    def _fixed_k(self) -> int:
        raise NotImplementedError

    def _info_extra(self) -> dict[str, Any]:
        return {}

    # ---- shared
    @property
    def _who(self) -> str:
        return type(self).__name__

    @property
    def is_fitted(self) -> bool:
        return self._points is not None

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError(f"{self._who} is not fitted: call binner.fit(grid) first.")

    @property
    def n_candidates(self) -> int:
        """The fixed K of ``batch_candidates``."""
        self._require_fitted()
        return min(self._fixed_k(), self._n_grid)

    def info(self) -> dict[str, Any]:
        out = {"kind": self._who, **self.settings()}
        if self.is_fitted:
            out.update(
                n_models=self._n_grid,
                dim_index=self._dim_index,
                space_dims=int(self._points.shape[1]),
                n_candidates=self.n_candidates,
                **self._info_extra(),
            )
        return out

    def __repr__(self) -> str:
        state = f"fitted on {self._n_grid} models" if self.is_fitted else "unfitted"
        return f"{self._who}(dims={self.dims}, {self.transform}, {state})"

    def fit(self, grid):
        """Fit the transform and the cells on ``grid``'s observables in ``dims``."""
        idx = resolve_dims(grid, self.dims, "dims", self._who)
        return self._fit_array(np.asarray(grid.observables, dtype=np.float64)[:, idx], idx)

    def _fit_array(self, raw: np.ndarray, dim_index: list[int]):
        """Fit on native values ``raw`` (N, D) of the observables ``dim_index``."""
        self._dim_index = list(dim_index)
        self._n_grid = raw.shape[0]
        self._mean, self._scale, self._components = fit_linear_map(
            raw, self.transform, self.pca_variance
        )
        self._set_points(to_space(raw, self._mean, self._scale, self._components))
        return self

    def _set_points(self, points: np.ndarray) -> None:
        from scipy.spatial import cKDTree

        self._points = np.ascontiguousarray(points, dtype=np.float64)
        self._tree = cKDTree(self._points)  # nearest models for rows that find nothing
        self._build()

    def _rows(self, Y, SIG):
        """``(z, sz, fallback)``: the servable rows in the space, their errors (NaN when
        not given) and the rows (M,) that fall back to the full grid."""
        self._require_fitted()
        if SIG is None and self._needs_sigma():
            raise ValueError(f"{self._who}: this mode needs the errors; pass sigmas.")
        y, s, ok = select_rows(Y, SIG, self._dim_index, self._who)
        fallback = ~ok.all(axis=1)  # cells need every dim: a partial row falls back
        if self._needs_sigma():
            fallback |= ~sigma_ok(s).all(axis=1)
        serve = ~fallback
        z = to_space(y[serve], self._mean, self._scale, self._components)
        sz = sigma_to_space(
            np.where(sigma_ok(s[serve]), s[serve], 0.0),
            self._scale,
            self._components,
            self.sigma_floor,
        )
        return z, sz, fallback

    def _batch(self, Y, SIG, k: int):
        z, sz, fallback = self._rows(Y, SIG)
        m = fallback.size
        idx = np.zeros((m, k), np.int64)
        mask = np.zeros((m, k), bool)
        parts = [self._query(z[b], sz[b], k) for b in _blocks(z.shape[0], QUERY_BLOCK)]
        got = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, k), np.int64)
        valid = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, k), bool)
        level = parts[0][2] if parts else self._empty_level()
        if parts and isinstance(level, np.ndarray):
            level = np.concatenate([p[2] for p in parts])
        idx[~fallback], mask[~fallback] = got, valid
        if isinstance(level, np.ndarray):  # per served row -> per row, -1 on fallback rows
            full = np.full(m, -1, np.int64)
            full[~fallback] = level
            level = full
        fallback = fallback | ~mask.any(axis=1)
        if isinstance(level, np.ndarray):
            level[fallback] = -1
        return idx, mask, level, fallback

    def batch_candidates(self, Y, SIG=None):
        """Candidates of every row: ``(idx (M, K), mask (M, K), level, fallback (M,))``.

        ``fallback`` marks rows with a missing value in ``dims`` (or unusable errors
        where the mode needs them), and rows that found nothing: ``fit_batch`` serves
        them from the full grid.
        """
        return self._batch(Y, SIG, self.n_candidates)

    def candidates(self, y_native, sigmas_native=None):
        """Candidates of one object (full P-vectors): ``(idx, level)``, nearest first.

        The same list as the row of ``batch_candidates`` (without the cap K where the
        mode has no natural size); a row that cannot be served gives every model.
        """
        y = np.asarray(y_native, dtype=np.float64)[None]
        s = None if sigmas_native is None else np.asarray(sigmas_native, np.float64)[None]
        idx, mask, level, fallback = self._batch(y, s, self._single_k())
        lev = level if not isinstance(level, np.ndarray) else int(level[0])
        if fallback[0]:
            return np.arange(self._n_grid), lev
        return idx[0][mask[0]], lev

    def _single_k(self) -> int:
        return self.n_candidates

    def _empty_level(self):
        """The level of a batch without a servable row."""
        return None

    def _state(self) -> dict[str, np.ndarray]:
        return {}

    def save(self, path: str | Path) -> None:
        """Write every setting and the fitted space (transform and points) to ``path``
        (an ``.npz`` archive whatever the extension; the cells are rebuilt on load)."""
        self._require_fitted()
        arrays = {
            "points": self._points,
            "mean": self._mean,
            "scale": self._scale,
            "dim_index": np.asarray(self._dim_index),
            **self._state(),
        }
        if self._components is not None:
            arrays["components"] = self._components
        meta = {"settings": self.settings(), "n_grid": self._n_grid}
        save_npz(path, f"jaxgrid.{self._who}/1", meta, arrays)

    @classmethod
    def load(cls, path: str | Path):
        """Read a binner written by ``save``: identical candidates."""
        meta, f = load_npz(path, f"jaxgrid.{cls.__name__}/1", cls.__name__)
        b = cls(**meta["settings"])
        b._mean, b._scale = f["mean"], f["scale"]
        b._components = f.get("components")
        b._dim_index = [int(i) for i in f["dim_index"]]
        b._n_grid = int(meta["n_grid"])
        b._restore(f)
        b._set_points(f["points"])
        return b

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        """Fitted values besides the space (set before ``_build``)."""
