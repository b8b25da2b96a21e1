"""Batch fitting on the host: validation, chunking, devices, outputs (`fit_batch`).

The host cuts the catalog into fixed-size chunks (the tail padded and
masked), prepares chunk ``i+1`` (candidate queries on host threads) while the
device computes chunk ``i``, and pulls results back one chunk behind, so the
device never waits on Python. Results always come back in object order.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._checks import cast_overflows, float_dtype, masked_to_nan
from .engine import (
    BAD_STATUS,
    POOR_FIT_PROBABILITY,
    Chunk,
    Status,
    StepConfig,
    StepParams,
    chunk_step,
    model_bins,
    pool_log_weights,
)
from .fitter import GridData, standardise_rows
from .io.results import STAT_FIELDS, GridFitHDF5Writer, check_output
from .summaries import bin_constant_values, bin_index, histogram_layout

__all__ = ["fit_batch", "RETURN_MODES", "RESERVED_KEYS", "BatchPlan"]

logger = logging.getLogger("jaxgrid")

RETURN_MODES = ("iter", "list", "chunks", "table")
#: Keys of a per-object result dict and of its ``stats`` dict; targets may not use them.
RESERVED_KEYS = frozenset(
    {
        "cov",
        "m",
        "level",
        "candidates",
        "post_models",
        "truncation",
        "stats",
        "posts_target",
        "log_evidence",
        "chi2_min",
        "best",
        "status",
    }
)
#: Length of each row's sorted top list on the device (at least keep_min): rows whose
#: kept set fits are summarised on it; XLA's CPU top-k cost grows steeply with k.
FAST_K = 128
#: Candidate pools up to this size are ordered on the host: XLA's CPU top-k costs
#: ~15-30 us per row for k ~ 100 (a whole-row sort), NumPy's argsort ~2 us.
HOST_ORDER_MAX = 512
_NO_BOUND = 2**31 - 1  # keep_max when the user sets none
DEFAULT_KEEP_MIN = 128  # posterior_keep_min_candidates when not given (a smaller max caps it)
DEFAULT_MEMORY_BUDGET = 512 * 2**20  # bytes of per-chunk temporaries on the CPU
_BYTES_PER_PAIR = 32  # float32 temporaries per (row, model) pair in the step, generous
_CACHE_BYTES = 8 * 2**20  # default chunks keep one (rows x models) float32 array this small


# ----------------------------------------------------------------- planning
@dataclasses.dataclass
class BatchPlan:
    """Everything fit_batch decided before computing (validated settings)."""

    X: np.ndarray
    S: np.ndarray
    U: np.ndarray | None
    host_flags: np.ndarray
    stats_names: list[str]
    stats_bins: list[np.ndarray]
    config: StepConfig
    full_config: StepConfig | None  # full-grid fallback for rows a binner cannot serve
    params: StepParams
    data: GridData
    chunk_size: int
    keep: dict[str, Any]
    return_pdf: bool
    configuration: dict[str, Any]


def _integer(value: Any, name: str, low: int | None = None, optional: bool = False) -> None:
    """Refuse a count that is not an integer (512.0 is one, 512.5 and "512" are not)."""
    if value is None and optional:
        return
    integral = isinstance(value, (int, np.integer)) or (
        isinstance(value, (float, np.floating)) and float(value).is_integer()
    )
    if isinstance(value, (bool, np.bool_)) or not integral:
        kind = "an integer" + (" or None" if optional else "")
        err = ValueError if isinstance(value, (float, np.floating)) else TypeError
        raise err(f"`{name}` must be {kind}, got {value!r}.")
    if low is not None and int(value) < low:
        raise ValueError(f"`{name}` must be >= {low}, got {value!r}.")


def _check_options(opts: dict[str, Any]) -> None:
    """fit_batch's scalar options, checked before anything is computed or any file opened."""
    _integer(opts["chunk_size"], "chunk_size", 1, optional=True)
    _integer(opts["n_jobs"], "n_jobs", optional=True)  # None, 0 and -1: one thread
    _integer(opts["output_hdf5_flush_every"], "output_hdf5_flush_every", 1)
    _integer(opts["model_block_size"], "model_block_size", 1, optional=True)
    _integer(opts["memory_budget_bytes"], "memory_budget_bytes", 0, optional=True)
    kmin, kmax = opts["posterior_keep_min_candidates"], opts["posterior_keep_max_candidates"]
    _integer(kmin, "posterior_keep_min_candidates", 1, optional=True)
    _integer(kmax, "posterior_keep_max_candidates", 1, optional=True)
    if kmin is not None and kmax is not None and int(kmin) > int(kmax):
        raise ValueError(
            f"`posterior_keep_min_candidates` ({kmin}) > `posterior_keep_max_candidates` "
            f"({kmax}): the minimum kept count cannot exceed the maximum; lower the minimum."
        )
    mass = opts["posterior_keep_mass"]
    if isinstance(mass, (bool, np.bool_)) or not isinstance(mass, (int, float, np.number)):
        raise TypeError(f"`posterior_keep_mass` must be a number in (0, 1], got {mass!r}.")


def _float_rows(a: Any, name: str, names: list[str]) -> np.ndarray:
    """(M, P) float64 rows; masked entries (``np.ma``, astropy masked columns/tables) are
    NaN, i.e. missing bands, as `jaxgrid.io.read_catalog` reads them."""
    p = len(names)
    if hasattr(a, "colnames"):  # an astropy Table: its columns named as the observables
        missing = [c for c in names if c not in a.colnames]
        if missing:
            raise ValueError(
                f"`{name}` is a Table without columns {missing}; name its columns as the "
                f"grid's observables {names}, or read it with jaxgrid.io.read_catalog(table, "
                "observables=..., errors=..., grid=grid)."
            )
        cols = [masked_to_nan(a[c], f"{name}[{c!r}]") for c in names]
        cols = [np.asarray(c, dtype=np.float64) for c in cols]
        if any(c.ndim != 1 for c in cols):
            raise ValueError(f"`{name}` Table columns {names} must be 1-D (one value per row).")
        return np.stack(cols, axis=1).reshape(-1, p)
    arr = np.asarray(masked_to_nan(a, name), dtype=np.float64)
    if arr.ndim == 1 and arr.size == p:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != p:
        raise ValueError(
            f"`{name}` must have shape (M, {p}) — one column per observable — got {np.shape(a)}."
        )
    return arr


def _resolve_stats(grid, stats_for, stats_bins) -> tuple[list[int], list[str], list[np.ndarray]]:
    if stats_for is None:
        if stats_bins is not None:
            raise ValueError(
                "`stats_bins` given without `stats_for`; name the targets to summarise."
            )
        return [], [], []
    if isinstance(stats_for, (str, int)):
        stats_for = [stats_for]
    cols = [grid.target_index(c) for c in stats_for]
    if len(set(cols)) != len(cols):
        raise ValueError(f"`stats_for` names a target twice: {list(stats_for)}.")
    names = [grid.target_names[c] for c in cols]
    clash = sorted(set(names) & RESERVED_KEYS)
    if clash:
        raise ValueError(
            f"targets {clash} collide with result keys {sorted(RESERVED_KEYS)}; rename them in "
            "the grid (e.g. ModelGrid(..., target_names=[...]))."
        )
    if stats_bins is None:
        t = np.asarray(grid.targets, dtype=np.float64)
        bins = []
        for c in cols:
            lo, hi = float(t[:, c].min()), float(t[:, c].max())
            if hi <= lo:
                lo, hi = lo - 0.5, hi + 0.5
            bins.append(np.linspace(lo, hi, 200))
        return cols, names, bins
    if isinstance(stats_bins, np.ndarray) and stats_bins.ndim == 1:
        stats_bins = [stats_bins]
    stats_bins = list(stats_bins)
    if len(stats_bins) != len(cols):
        raise ValueError(
            f"`stats_bins` has {len(stats_bins)} edge arrays for {len(cols)} targets in "
            "`stats_for`; give one edge array per target (or None for 200 edges over the grid "
            "range)."
        )
    bins = []
    for name, e in zip(names, stats_bins, strict=True):
        if e is None:
            raise ValueError(f"`stats_bins` entry for {name!r} is None; give its edges.")
        e = np.asarray(e, dtype=np.float64)
        if e.ndim != 1 or e.size < 2 or not np.all(np.isfinite(e)) or np.any(np.diff(e) <= 0):
            raise ValueError(
                f"`stats_bins` for {name!r} must be >= 2 finite, strictly increasing edges."
            )
        bins.append(e)
    return cols, names, bins


def _digest(*arrays: Any) -> str:
    h = hashlib.sha1()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        h.update(str((a.dtype, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _module_digest(module: Any) -> str:
    leaves, treedef = jax.tree_util.tree_flatten(module)
    return hashlib.sha1((str(treedef) + _digest(*leaves)).encode()).hexdigest()


def _padded_data(data: GridData, n_blocks: int, block: int) -> GridData:
    n = data.models.shape[0]
    pad = n_blocks * block - n
    if pad == 0:
        return data

    def padrows(a, value):
        return jnp.concatenate([a, jnp.full((pad,) + a.shape[1:], value, a.dtype)])

    return GridData(
        models=padrows(data.models, 0.0),
        models_native=padrows(data.models_native, 0.0),
        targets=padrows(data.targets, 0.0),
        log_weights=padrows(data.log_weights, -jnp.inf),  # padding models are excluded
        obs_mean=data.obs_mean,
        obs_std=data.obs_std,
        rows_standardised=data.rows_standardised,
    )


def poor_fit_chi2(n_obs: int, probability: float = POOR_FIT_PROBABILITY) -> np.ndarray:
    """(n_obs + 1,) ``chi2.isf(probability, dof)`` for dof = 0..n_obs (``inf`` at 0:
    nothing to test): `StepParams.poor_fit_chi2`."""
    from scipy.stats import chi2

    dof = np.arange(n_obs + 1)
    return np.where(dof > 0, chi2.isf(probability, np.maximum(dof, 1)), np.inf)


def _memory_budget() -> int:
    dev = jax.local_devices()[0]
    if dev.platform != "cpu":
        try:
            stats = dev.memory_stats() or {}
            limit = int(stats.get("bytes_limit", 0))
            if limit:
                return limit // 4
        except Exception:  # noqa: BLE001 - memory_stats is optional per backend
            pass
    return DEFAULT_MEMORY_BUDGET


def plan_batch(
    fitter,
    X_native,
    SIG_native,
    *,
    binner,
    stats_for,
    stats_bins,
    find_multimodal,
    use_kde_for_stats,
    return_pdf_for_stats,
    keep_mass,
    keep_min,
    keep_max,
    keep_ties,
    chunk_size,
    upper_limits,
    model_block_size,
    memory_budget,
    fallback_to_full_grid=True,
    return_candidates=True,
) -> BatchPlan:
    grid = fitter.grid
    X = _float_rows(X_native, "X_native", grid.observable_names)
    S = _float_rows(SIG_native, "SIG_native", grid.observable_names)
    if X.shape != S.shape:
        raise ValueError(f"`X_native` {X.shape} and `SIG_native` {S.shape} differ in shape.")
    U = None
    if upper_limits is not None:
        U = np.asarray(upper_limits)
        if U.dtype != bool or U.shape != X.shape:
            raise ValueError(
                f"`upper_limits` must be a bool array of shape {X.shape}, got {U.dtype} {U.shape}."
            )
    # Bad values inside a batch are flagged, not raised: treated as missing bands.
    # Checked as the device will hold them: beyond float32's range a value is inf, a
    # tiny error 0. A zero error is invalid like a negative one (it is not "missing").
    dt = float_dtype()
    Xc, Sc = cast_overflows(X, dt), cast_overflows(S, dt)
    bad_vals = np.isinf(Xc) | np.isinf(Sc) | (Sc <= 0)
    host_flags = np.where(bad_vals.any(axis=1), int(Status.BAD_INPUT), 0).astype(np.int32)
    X = np.where(bad_vals, np.nan, X)
    S = np.where(bad_vals, np.nan, S)

    cols, names, bins = _resolve_stats(grid, stats_for, stats_bins)
    if not 0.0 < float(keep_mass) <= 1.0:
        raise ValueError(f"`posterior_keep_mass` must be in (0, 1], got {keep_mass}.")
    if int(keep_min) < 1:
        raise ValueError(f"`posterior_keep_min_candidates` must be >= 1, got {keep_min}.")
    if keep_max is not None and int(keep_max) < 1:
        raise ValueError(f"`posterior_keep_max_candidates` must be >= 1 or None, got {keep_max}.")
    truncate = not (float(keep_mass) >= 0.9999 and keep_max is None)

    n_models = grid.n_models
    k_cand = None
    if binner is not None:
        if not callable(getattr(binner, "batch_candidates", None)) or not hasattr(
            binner, "n_candidates"
        ):
            raise TypeError(
                "`binner` must follow the binner protocol (a fitted object with n_candidates "
                "and batch_candidates(Y, SIG) -> (idx, mask, level)); got "
                f"{type(binner).__name__}."
            )
        k_cand = int(binner.n_candidates)
    n_pool = k_cand if k_cand is not None else n_models

    def list_length(pool: int) -> int:
        """The sorted top list: it decides most rows' kept sets (longer ones are exact too)."""
        if not return_candidates and not truncate:
            return 1  # summaries use every model; only the best one is tracked (no top-k)
        k = max(int(keep_min), FAST_K)
        if keep_max is not None:
            k = min(k, int(keep_max))
        return max(1, min(k, pool))

    list_k = list_length(n_pool)

    budget = int(memory_budget) if memory_budget is not None else _memory_budget()
    n_dev = jax.local_device_count()
    if chunk_size is None:
        per_row = n_pool * _BYTES_PER_PAIR
        chunk_size = int(np.clip(budget // max(per_row, 1), 8, 1024))
        # and small enough that a chunk's (rows x models) float32 arrays stay in cache:
        # measured on the photo-z grid (2,408 models), 512 rows beat 1,024 by 2x
        fits = _CACHE_BYTES // max(n_pool * 4, 1)
        chunk_size = min(chunk_size, max(8, 2 ** int(np.log2(max(fits, 1)))))
        chunk_size = min(chunk_size, max(8, int(2 ** np.ceil(np.log2(max(X.shape[0], 1))))))
    chunk_size = int(chunk_size)
    if chunk_size < 1:
        raise ValueError(f"`chunk_size` must be >= 1, got {chunk_size}.")
    chunk_size = -(-chunk_size // n_dev) * n_dev  # a multiple of the device count

    # Full-grid layout (also used for rows a binner cannot serve).
    if model_block_size is None:
        block = max(list_length(n_models), budget // max(chunk_size * _BYTES_PER_PAIR, 1))
    else:
        block = int(model_block_size)
        if block < 1:
            raise ValueError(f"`model_block_size` must be >= 1, got {block}.")
        block = max(block, list_length(n_models))
    # per-block counts are float sums: exact below 2^24 models
    block = min(block, n_models, 2**24)
    n_blocks = -(-n_models // block)
    common = dict(
        n_models=n_models,
        truncate=truncate,
        keep_ties=bool(keep_ties) and keep_max is None,  # as BESTA: a count bound wins
        stat_cols=tuple(cols),
        find_multimodal=bool(find_multimodal),
        use_kde=bool(use_kde_for_stats),
    )
    ext_cols = fitter._likelihood_in_space.extensive_cols()
    common["extensive"] = tuple(i for i, c in enumerate(cols) if c in ext_cols)
    if common["extensive"] and not truncate:
        raise ValueError(
            "extensive targets (shifted by the fitted amplitude) are summarised over the kept "
            "models: use posterior_keep_mass < 0.9999 or posterior_keep_max_candidates."
        )
    edges_dev = tuple(jnp.asarray(e, dt) for e in bins)
    hist, hist_index, bin_values = {}, (), ()
    if n_blocks == 1 and cols:
        hist, hist_index, bin_values = _whole_grid_histograms(fitter.data.targets, cols, edges_dev)
    full_config = StepConfig(
        block_size=block, n_blocks=n_blocks, list_k=list_length(n_models), **hist, **common
    )
    if k_cand is None:
        config = full_config
    elif k_cand <= HOST_ORDER_MAX:
        # short pools: bisection for every row, ordered on the host (no device sort)
        config = StepConfig(block_size=k_cand, n_blocks=1, list_k=1, host_order=True, **common)
    else:
        config = StepConfig(block_size=k_cand, n_blocks=1, list_k=list_k, **common)
    # rows reach the step z-scored in float64 on the host (`standardise_rows`)
    snapshot = fitter.data.with_rows_standardised(fitter.use_standardised)
    padded = _padded_data(snapshot, n_blocks, block)
    params = StepParams(
        # keep_mass 1 (with a max): all the mass, not "whenever rounding reaches 1"
        keep_mass=jnp.asarray(np.inf if float(keep_mass) >= 1.0 else keep_mass, dt),
        keep_min=jnp.asarray(int(keep_min), jnp.int32),
        keep_max=jnp.asarray(_NO_BOUND if keep_max is None else int(keep_max), jnp.int32),
        edges=edges_dev,
        model_bins=_model_bins_jit(padded.targets, tuple(cols), edges_dev),
        hist_index=hist_index,
        bin_values=bin_values,
        poor_fit_chi2=jnp.asarray(poor_fit_chi2(grid.n_observables), dt),
    )
    data = snapshot if k_cand is not None else padded
    if k_cand is not None and not fallback_to_full_grid:
        full_config = None
    configuration = {
        "format": "jaxgrid.fit_batch/1",
        "n_rows": int(X.shape[0]),
        "grid": {
            "n_models": n_models,
            "observable_names": grid.observable_names,
            "target_names": grid.target_names,
            "digest": _digest(
                grid.observables,
                grid.targets,
                np.zeros(0) if grid.weights is None else grid.weights,
            ),
        },
        "catalog_digest": _digest(X, S, np.zeros(0) if U is None else U),
        "likelihood": type(fitter.likelihood).__name__,
        "likelihood_digest": _module_digest(fitter.likelihood),
        "prior": type(fitter.prior).__name__,
        "prior_digest": _module_digest(fitter.prior),
        "use_standardised": fitter.use_standardised,
        "standardiser": fitter.grid.standardiser.to_dict() if fitter.use_standardised else None,
        "binner": None if binner is None else _binner_info(binner),
        "stats_for": names,
        "stats_bins": [b.tolist() for b in bins],
        "find_multimodal": bool(find_multimodal),
        "use_kde_for_stats": bool(use_kde_for_stats),
        "return_pdf_for_stats": bool(return_pdf_for_stats),
        "posterior_keep_mass": float(keep_mass),
        "posterior_keep_min_candidates": int(keep_min),
        "posterior_keep_max_candidates": None if keep_max is None else int(keep_max),
        "posterior_keep_ties": bool(keep_ties),
        "list_k": list_k,
        "fallback_to_full_grid": bool(fallback_to_full_grid),
        "return_candidates": bool(return_candidates),
        # chunk composition and device split can change float rounding: part of resume
        "chunk_size": int(chunk_size),
        "devices": f"{n_dev} x {jax.default_backend()}",
        "version": __import__("jaxgrid").__version__,
    }
    return BatchPlan(
        X=X,
        S=S,
        U=U,
        host_flags=host_flags,
        stats_names=names,
        stats_bins=bins,
        config=config,
        full_config=full_config,
        params=params,
        data=data,
        chunk_size=chunk_size,
        keep={"keep_mass": float(keep_mass), "return_candidates": bool(return_candidates)},
        return_pdf=bool(return_pdf_for_stats),
        configuration=configuration,
    )


_model_bins_jit = jax.jit(model_bins, static_argnums=1)


def _whole_grid_histograms(targets, cols, edges):
    """Static layouts and their arrays for untruncated steps over the whole grid in one
    block: histograms without a scatter where the grid's order allows (template x
    redshift grids do), and a target's mean and variance from its histogram when
    each bin holds a single value (a redshift grid on bins centred on it). The bins
    are computed as on the device. Returns ``(StepConfig fields, hist_index,
    bin_values)``."""
    found, values = [], []
    for c, e in zip(cols, edges, strict=True):
        b = np.asarray(bin_index(targets[:, c], e))
        found.append(histogram_layout(b, e.shape[0] - 1))
        values.append(bin_constant_values(np.asarray(targets[:, c]), b, e.shape[0] - 1))
    fields = {
        "hist_layouts": tuple(layout for layout, _ in found),
        "hist_const": tuple(
            v is not None and layout[0] != "scatter"
            for v, (layout, _) in zip(values, found, strict=True)
        ),
    }
    hist_index = tuple(None if i is None else jnp.asarray(i) for _, i in found)
    bin_values = tuple(None if v is None else jnp.asarray(v) for v in values)
    return fields, hist_index, bin_values


def _check_candidates(idx: Any, mask: Any, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The binner's ``(idx, mask)`` for ``n`` rows as int64 and bool (n, k) arrays.
    Output malformed as a whole (shape, dtype) raises; indices outside the grid are
    checked per row by the caller, which flags those rows."""
    idx, mask = np.asarray(idx), np.asarray(mask)
    if idx.shape != (n, k) or mask.shape != (n, k):
        raise ValueError(
            f"binner.batch_candidates returned idx {idx.shape} and mask {mask.shape} for {n} "
            f"rows; both must be ({n}, {k}) (rows, binner.n_candidates)."
        )
    if not np.issubdtype(idx.dtype, np.integer):
        raise TypeError(
            f"binner.batch_candidates returned {idx.dtype} indices; they must be integer model "
            "indices (e.g. idx.astype(np.int64))."
        )
    if mask.dtype != bool and not (
        np.issubdtype(mask.dtype, np.integer) and np.isin(mask, (0, 1)).all()
    ):
        raise TypeError(
            f"binner.batch_candidates returned a {mask.dtype} mask; it must be bool (True = a "
            "valid candidate)."
        )
    return idx.astype(np.int64), mask.astype(bool)


def _binner_info(binner) -> Any:
    info = getattr(binner, "info", None)
    try:
        return json.loads(json.dumps(info() if callable(info) else type(binner).__name__))
    except TypeError:
        return type(binner).__name__


# ---------------------------------------------------------------- execution
class _Runner:
    """Dispatches chunks to the device(s) and collects host results in order."""

    def __init__(self, fitter, plan: BatchPlan, binner, n_jobs: int):
        self.fitter, self.plan, self.binner = fitter, plan, binner
        self.n_jobs = max(1, int(n_jobs) if n_jobs and int(n_jobs) > 0 else 1)
        # Data parallelism over local devices: each device gets an equal slice of
        # the chunk and runs the *same* single-device program, so results are
        # bitwise identical to a one-device run (GSPMD sharding would partition
        # the program differently and change float rounding).
        self.devices = jax.local_devices()
        self.datas = [jax.device_put(plan.data, d) for d in self.devices]
        self._full_datas = None  # the padded full grid, built on first fallback
        self._obs64 = None  # float64 grid observables (`_host_log_evidence`), on first use

    def _split(self, arrays: dict[str, Any]) -> list[Chunk]:
        """Equal row slices of the chunk arrays, one per device."""
        per = self.plan.chunk_size // len(self.devices)
        return [
            Chunk(
                **{
                    k: None if v is None else jax.device_put(v[i * per : (i + 1) * per], dev)
                    for k, v in arrays.items()
                }
            )
            for i, dev in enumerate(self.devices)
        ]

    def _dispatch(self, config: StepConfig, datas, parts: list[Chunk]):
        # asynchronous dispatch: the devices run concurrently
        return [
            chunk_step(
                config,
                data,
                self.fitter._likelihood_in_space,
                self.fitter.prior,
                self.plan.params,
                part,
            )
            for data, part in zip(datas, parts, strict=True)
        ]

    def _full_grid_datas(self):
        if self._full_datas is None:
            fc = self.plan.full_config
            snapshot = self.fitter.data.with_rows_standardised(self.plan.data.rows_standardised)
            padded = _padded_data(snapshot, fc.n_blocks, fc.block_size)
            self._full_datas = [jax.device_put(padded, d) for d in self.devices]
        return self._full_datas

    def _prepare(self, rows: np.ndarray):
        plan, c = self.plan, self.plan.chunk_size
        n = rows.size
        p = plan.X.shape[1]
        dt = float_dtype()
        x = np.full((c, p), np.nan)
        s = np.full((c, p), np.nan)
        x[:n], s[:n] = plan.X[rows], plan.S[rows]
        upper = None
        if plan.U is not None:
            upper = np.zeros((c, p), bool)
            upper[:n] = plan.U[rows]
        cand = cmask = None
        level = None
        extra_flags = np.zeros(n, np.int32)
        if self.binner is not None:
            k = plan.config.block_size
            if n:
                idx, mask, level = self.binner.batch_candidates(plan.X[rows], plan.S[rows])
                fb = getattr(self.binner, "last_fallback_rows", None)
            else:  # an empty catalog: nothing to ask the binner
                idx, mask, fb = np.zeros((0, k), np.int64), np.zeros((0, k), bool), None
            idx, mask = _check_candidates(idx, mask, n, k)
            fallback = ~mask.any(axis=1)
            if fb is not None:
                fallback |= np.asarray(fb, bool)[:n]
            # indices outside the grid (a custom binner's bug): the row is not fitted on
            # a clamped model but flagged — no candidates, BAD_INPUT, NaN summaries
            off_grid = (idx < 0) | (idx >= self.fitter.grid.n_models)
            outside = (mask & off_grid).any(axis=1)
            outside &= ~fallback  # a fallback row's candidates are not used anyway
            if outside.any():
                logger.warning(
                    "fit_batch: the binner returned model indices outside [0, %d) for %d "
                    "rows; they are flagged NO_CANDIDATES | BAD_INPUT.",
                    self.fitter.grid.n_models,
                    int(outside.sum()),
                )
                extra_flags[outside] |= int(Status.BAD_INPUT)
            cand = np.zeros((c, k), np.int32)
            cmask = np.zeros((c, k), bool)
            cand[:n] = np.where(off_grid, 0, idx)  # masked padding too: any int is allowed
            cmask[:n] = mask & ~outside[:, None]
            cmask[:n][fallback] = False
        mean_std = self.fitter.row_mean_std
        xd, sd = standardise_rows(plan.data, mean_std, x, s, dt)
        arrays = dict(x=xd, sigma=sd, upper=upper, cand=cand, cand_mask=cmask)
        fb_rows = fb_parts = fb_arrays = None
        if self.binner is not None and plan.full_config is not None and fallback.any():
            # rows the binner could not serve: the whole grid, in a chunk of their own
            fb_rows = np.flatnonzero(fallback)
            extra_flags[fb_rows] |= int(Status.FULL_GRID_FALLBACK)
            take = np.zeros(c, np.int64)
            take[: fb_rows.size] = fb_rows
            fvalid = np.arange(c) < fb_rows.size
            fx, fs = standardise_rows(
                plan.data,
                mean_std,
                np.where(fvalid[:, None], x[take], np.nan),
                np.where(fvalid[:, None], s[take], np.nan),
                dt,
            )
            fb_arrays = dict(
                x=fx,
                sigma=fs,
                upper=None if upper is None else upper[take] & fvalid[:, None],
                cand=None,
                cand_mask=None,
            )
            fb_parts = self._split(fb_arrays)
        fb = (fb_rows, fb_parts)
        return self._split(arrays), level, extra_flags, fb, (arrays, fb_arrays)

    def run(self, todo: np.ndarray) -> Iterator[dict[str, Any]]:
        """Yield host results per chunk, in order, one chunk behind the device."""
        plan, c = self.plan, self.plan.chunk_size
        if plan.X.shape[0] == 0:
            # an empty catalog: one empty chunk through the same step (one all-padding
            # chunk), so every field comes back with its dtype and trailing shape
            parts, level, extra, _, host = self._prepare(todo[:0])
            outs = self._dispatch(plan.config, self.datas, parts)
            yield self._collect(todo[:0], level, extra, outs, None, host)
            return
        starts = range(0, todo.size, c)
        pending: deque = deque()
        with cf.ThreadPoolExecutor(max_workers=self.n_jobs) as pool:
            futures = deque(pool.submit(self._prepare, todo[s : s + c]) for s in list(starts)[:2])
            next_start = 2 * c
            for s in starts:
                rows = todo[s : s + c]
                parts, level, extra, (fb_rows, fb_parts), host = futures.popleft().result()
                if next_start < todo.size:
                    futures.append(pool.submit(self._prepare, todo[next_start : next_start + c]))
                    next_start += c
                outs = self._dispatch(plan.config, self.datas, parts)
                fb = None
                if fb_rows is not None:
                    fb = (
                        fb_rows,
                        self._dispatch(plan.full_config, self._full_grid_datas(), fb_parts),
                    )
                pending.append((rows, level, extra, outs, fb, host))
                if len(pending) > 1:
                    yield self._collect(*pending.popleft())
            while pending:
                yield self._collect(*pending.popleft())

    def _collect(self, rows, level, extra, outs, fb, host_arrays) -> dict[str, Any]:
        """Host arrays of a chunk (the device's dtypes; no per-object work, few copies)."""
        n = rows.size
        plan = self.plan
        host = _gather(outs)
        level_rows = np.full(n, -1 if level is None else int(level), np.int64)
        fb_rows = None
        if fb is not None:
            fb_rows, fb_outs = fb
            full = _gather(fb_outs)
            width = max(host.cand_idx.shape[1], full.cand_idx.shape[1])
            host, full = _widen_lists(host, width), _widen_lists(full, width)
            full = dataclasses.replace(
                full, pool_lw=np.full(host.pool_lw.shape, -np.inf, host.pool_lw.dtype)
            )

            def splice(a, b):
                a = np.array(a)
                a[fb_rows] = b[: fb_rows.size]
                return a

            host = jax.tree_util.tree_map(splice, host, full)
            level_rows[fb_rows] = -1
        status = (np.asarray(host.status[:n]) | plan.host_flags[rows] | extra).astype(np.int32)
        bad = (status & int(BAD_STATUS)) != 0
        res = {
            "m": rows,
            "status": status,
            "bad": bad,
            "level": level_rows,
            "keep_mass": np.full(n, plan.keep["keep_mass"]),
            "pdf": [p[:n] for p in host.pdf],
        }
        for f in (
            "log_evidence",
            "chi2_min",
            "best",
            "n_before",
            "n_after",
            "cov",
            "mass_kept",
            "mass_dropped",
            "cut_weight",
            "ess_before",
            "ess_after",
            *STAT_FIELDS,
        ):
            res[f] = getattr(host, f)[:n]
        res["log_evidence"] = self._host_log_evidence(host, rows, bad)
        if plan.keep["return_candidates"]:
            idx, w, off = self._candidate_lists(host, n, bad, host_arrays, fb_rows)
        else:
            idx, w, off = np.zeros(0, np.int64), np.zeros(0), np.zeros(n + 1, np.int64)
        res["candidate_idx"], res["candidate_w"], res["candidate_offsets"] = idx, w, off
        return res

    def _host_log_evidence(self, host, rows, bad) -> np.ndarray:
        """float64 ``log_evidence``. Rows refined relative to a reference model (``ref``:
        far from every model, log Z of -1e5 and less) get log Z relative to it (device)
        plus that one model's log weight, its log L evaluated in float64 here when the
        likelihood has a host evaluation (`AbstractLikelihood.host_log_likelihood_rows`):
        the device's float32 value would be off by several nats."""
        n = rows.size
        lz = np.asarray(host.log_evidence[:n], np.float64).copy()
        ref = np.asarray(host.ref[:n], np.int64)
        todo = np.flatnonzero((ref >= 0) & ~bad)
        if todo.size == 0:
            return lz
        plan = self.plan
        if self._obs64 is None:
            self._obs64 = np.asarray(self.fitter.grid.observables, np.float64)
        mean, std = self.fitter.row_mean_std
        r = rows[todo]
        x = (plan.X[r] - mean) / std
        s = plan.S[r] / std
        models = (self._obs64[ref[todo]] - mean) / std
        upper = None if plan.U is None else plan.U[r]
        ll = self.fitter._likelihood_in_space.host_log_likelihood_rows(x, s, models, upper)
        if ll is None:  # no host evaluation: the device's float32 value
            return lz
        rel = np.asarray(host.log_evidence_rel[:n], np.float64)[todo]
        lw = ll + np.asarray(host.ref_log_prior[:n], np.float64)[todo]
        ok = np.isfinite(lw) & np.isfinite(rel)
        lz[todo[ok]] = rel[ok] + lw[ok]
        return lz

    def _candidate_lists(self, host, n, bad, host_arrays, fb_rows):
        """Every row's kept models as flat ragged arrays ``(idx, w, offsets)``: row ``i``'s
        are ``idx[offsets[i]:offsets[i+1]]``, descending weight. The device lists the
        first ``list_k``; rows that keep more are listed here from their log weights
        (`pool_log_weights`, the step's arithmetic), sorted on the host."""
        plan = self.plan
        lengths = np.where(bad, 0, np.asarray(host.n_after[:n], np.int64))
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        width = host.cand_idx.shape[1]
        row_list = np.full(n, plan.config.list_k, np.int64)
        if fb_rows is not None:
            row_list[fb_rows] = plan.full_config.list_k
        over = lengths > row_list
        idx = np.empty(offsets[-1], np.int64)
        w = np.empty(offsets[-1], np.float64)
        if plan.config.host_order:  # the pool's log weights came back: order them here
            pooled = lengths > 0  # every row of the pools, ordered in float64 alike
            if fb_rows is not None:
                pooled[fb_rows] = False
            self._order_pools(
                host.pool_lw[:n], host_arrays[0]["cand"][:n], pooled, lengths, offsets, idx, w
            )
            over &= ~pooled
        listed = ~over
        if plan.config.host_order:
            listed &= ~pooled  # already written from the pools
        short = np.arange(width)[None, :] < np.where(listed, lengths, 0)[:, None]
        r, c = np.nonzero(short)
        dest = offsets[r] + c
        idx[dest] = host.cand_idx[:n][r, c]
        w[dest] = host.cand_w[:n][r, c]
        if over.any():
            main_over = over.copy()
            arrays, fb_arrays = host_arrays
            if fb_rows is not None:
                main_over[fb_rows] = False
                fb_over = np.flatnonzero(over[fb_rows])  # positions in the fallback chunk
                if fb_over.size:
                    fb_ref = np.full(plan.chunk_size, -1, np.int32)
                    fb_ref[: fb_rows.size] = host.ref[fb_rows]
                    self._list_long(
                        plan.full_config,
                        dict(fb_arrays, ref=fb_ref),
                        fb_over,
                        fb_rows[fb_over],
                        lengths,
                        offsets,
                        idx,
                        w,
                    )
            pos = np.flatnonzero(main_over)
            if pos.size:
                main = dict(arrays, ref=np.asarray(host.ref, np.int32))
                self._list_long(plan.config, main, pos, pos, lengths, offsets, idx, w)
        return idx, w, offsets

    @staticmethod
    def _order_pools(pool_lw, cand, rows, lengths, offsets, idx, w):
        """Kept models of ``rows`` (bool) from their pools' log weights, vectorised: a
        stable sort by ``-lw`` (ties in pool order), the first ``n_after`` of each."""
        if not rows.any():
            return
        lw = np.asarray(pool_lw, np.float64)[rows]
        order = np.argsort(-lw, axis=1, kind="stable")
        lens = lengths[rows]
        r, c = np.nonzero(np.arange(lw.shape[1])[None, :] < lens[:, None])
        pos = order[r, c]
        vals = lw[r, pos]
        p = np.exp(vals - lw[r, order[r, 0]])
        dest = offsets[np.flatnonzero(rows)][r] + c
        idx[dest] = np.asarray(cand)[rows][r, pos]
        w[dest] = p / np.bincount(r, p, minlength=lens.size)[r]

    def _list_long(self, config, arrays, pos, rows, lengths, offsets, idx, w):
        """List the kept models of chunk rows ``pos`` (result rows ``rows``) into the flat
        arrays: their log weights over the whole pool, sorted by (-lw, pool order)."""
        fitter = self.fitter
        data = self._full_grid_datas()[0] if config is self.plan.full_config else self.datas[0]
        dev = self.devices[0]
        chunk = Chunk(
            **{k: None if v is None else jax.device_put(v, dev) for k, v in arrays.items()}
        )
        lik, prior = fitter._likelihood_in_space, fitter.prior
        parts = [
            np.asarray(pool_log_weights(config, data, lik, prior, chunk, jnp.int32(b)))[pos]
            for b in range(config.n_blocks)
        ]
        lw = np.concatenate(parts, axis=1).astype(np.float64)
        order = np.argsort(-lw, axis=1, kind="stable")
        for j, i in enumerate(rows):
            k = int(lengths[i])
            o = order[j, :k]
            v = lw[j, o]
            p = np.exp(v - v[0])
            pool = o if arrays["cand"] is None else arrays["cand"][pos[j], o]
            idx[offsets[i] : offsets[i] + k] = pool
            w[offsets[i] : offsets[i] + k] = p / p.sum()


def _widen_lists(out, width: int):
    """The chunk output with its candidate lists padded to ``width`` columns."""
    pad = width - out.cand_idx.shape[1]
    if pad == 0:
        return out
    return dataclasses.replace(
        out,
        cand_idx=np.pad(out.cand_idx, ((0, 0), (0, pad)), constant_values=-1),
        cand_w=np.pad(out.cand_w, ((0, 0), (0, pad))),
    )


def _gather(outs):
    """Device outputs of the per-device slices -> one host ChunkOutput."""
    parts = jax.device_get(outs)
    if len(parts) == 1:
        return jax.tree_util.tree_map(np.asarray, parts[0])
    return jax.tree_util.tree_map(lambda *a: np.concatenate(a), *parts)


_TRUNC_KEYS = (
    "n_before",
    "n_after",
    "keep_mass",
    "mass_kept",
    "mass_dropped",
    "cut_weight",
    "ess_before",
    "ess_after",
)


def _object_dicts(res: dict[str, Any], plan: BatchPlan) -> Iterator[dict[str, Any]]:
    """The per-object dicts of a chunk. Every column is converted to Python values in
    one vectorised call per chunk (``tolist``), so the loop only builds the dicts."""
    names = plan.stats_names
    off = res["candidate_offsets"].tolist()
    idx, w = res["candidate_idx"], res["candidate_w"]
    cands = [idx[a:b] for a, b in zip(off[:-1], off[1:], strict=True)]
    posts = [w[a:b] for a, b in zip(off[:-1], off[1:], strict=True)]
    trunc = [
        res[k].astype(float if k not in ("n_before", "n_after") else int).tolist()
        for k in _TRUNC_KEYS
    ]
    trunc_rows = [dict(zip(_TRUNC_KEYS, vals, strict=True)) for vals in zip(*trunc, strict=True)]
    level = [None if v < 0 else v for v in res["level"].tolist()]
    ms = res["m"].tolist()
    lz = res["log_evidence"].astype(float).tolist()
    c2 = res["chi2_min"].astype(float).tolist()
    best = res["best"].tolist()
    status = res["status"].tolist()
    stat_rows = None
    if names:
        per = {
            f: (res[f].astype(int) if f == "nmodes" else res[f].astype(float)).T.tolist()
            for f in STAT_FIELDS
        }
        fields = STAT_FIELDS
        by_target = [
            [
                dict(zip(fields, v, strict=True))
                for v in zip(*(per[f][j] for f in fields), strict=True)
            ]
            for j in range(len(names))
        ]
        stat_rows = list(zip(*by_target, strict=True))
        cov = list(res["cov"])
        pdfs = list(zip(*(list(p) for p in res["pdf"]), strict=True)) if plan.return_pdf else None
    for i in range(len(ms)):
        d: dict[str, Any] = {
            "m": ms[i],
            "level": level[i],
            "candidates": cands[i],
            "post_models": posts[i],
            "truncation": trunc_rows[i],
            "log_evidence": lz[i],
            "chi2_min": c2[i],
            "best": best[i],
            "status": status[i],
        }
        if stat_rows is not None:
            stats: dict[str, Any] = dict(zip(names, stat_rows[i], strict=True))
            stats["cov"] = cov[i]
            d["stats"] = stats
            if pdfs is not None:
                d["posts_target"] = dict(zip(names, pdfs[i], strict=True))
        yield d


def _table(results: list[dict[str, Any]], plan: BatchPlan, ids, units):
    from .io.export import results_to_table

    return results_to_table(results, plan.stats_names, ids=ids, units=units)


def fit_batch(
    fitter,
    X_native,
    SIG_native,
    binner=None,
    n_jobs: int = 1,
    backend: str = "thread",
    stats_for: Sequence[str | int] | None = None,
    stats_bins: Sequence[Any] | None = None,
    find_multimodal: bool = False,
    use_kde_for_stats: bool = False,
    return_pdf_for_stats: bool = False,
    verbose: bool = True,
    posterior_keep_mass: float = 0.99,
    posterior_keep_min_candidates: int | None = None,
    posterior_keep_max_candidates: int | None = None,
    posterior_keep_ties: bool = False,
    return_mode: str = "iter",
    output_hdf5_path=None,
    output_hdf5_group: str = "/fit_batch",
    output_hdf5_overwrite: bool = False,
    output_hdf5_compression: str | None = "gzip",
    output_hdf5_compression_opts: int | None = 4,
    output_hdf5_flush_every: int = 256,
    output_hdf5_write_only: bool = False,
    dry_run: bool = False,
    *,
    chunk_size: int | None = None,
    resume: bool = False,
    progress: bool | Callable[[int, int], None] | None = None,
    upper_limits=None,
    ids=None,
    model_block_size: int | None = None,
    memory_budget_bytes: int | None = None,
    fallback_to_full_grid: bool = True,
    return_candidates: bool = True,
):
    """See `GridFitter.fit_batch` (this is its implementation)."""
    if return_mode not in RETURN_MODES:
        raise ValueError(f"`return_mode` must be one of {RETURN_MODES}, got {return_mode!r}.")
    if backend not in ("thread", "threads", "threading", "loky", "process", "sequential"):
        logger.info("fit_batch: backend=%r is accepted for compatibility and ignored.", backend)
    if resume and output_hdf5_path is None:
        raise ValueError("`resume=True` needs `output_hdf5_path` (the file to continue).")
    if output_hdf5_write_only and output_hdf5_path is None:
        raise ValueError("`output_hdf5_write_only=True` needs `output_hdf5_path`.")
    _check_options(
        {
            "chunk_size": chunk_size,
            "n_jobs": n_jobs,
            "output_hdf5_flush_every": output_hdf5_flush_every,
            "model_block_size": model_block_size,
            "memory_budget_bytes": memory_budget_bytes,
            "posterior_keep_min_candidates": posterior_keep_min_candidates,
            "posterior_keep_max_candidates": posterior_keep_max_candidates,
            "posterior_keep_mass": posterior_keep_mass,
        }
    )
    if posterior_keep_min_candidates is None:  # the default floor, capped by a smaller max
        posterior_keep_min_candidates = DEFAULT_KEEP_MIN
    plan = plan_batch(
        fitter,
        X_native,
        SIG_native,
        binner=binner,
        stats_for=stats_for,
        stats_bins=stats_bins,
        find_multimodal=find_multimodal,
        use_kde_for_stats=use_kde_for_stats,
        return_pdf_for_stats=return_pdf_for_stats,
        keep_mass=posterior_keep_mass,
        keep_min=posterior_keep_min_candidates,
        keep_max=posterior_keep_max_candidates,
        keep_ties=posterior_keep_ties,
        chunk_size=chunk_size,
        upper_limits=upper_limits,
        model_block_size=model_block_size,
        memory_budget=memory_budget_bytes,
        fallback_to_full_grid=fallback_to_full_grid,
        return_candidates=return_candidates,
    )
    if ids is not None and len(ids) != plan.X.shape[0]:
        raise ValueError(f"`ids` has {len(ids)} entries for {plan.X.shape[0]} rows.")
    if output_hdf5_path is not None:
        check_output(output_hdf5_path, output_hdf5_group, output_hdf5_overwrite, resume)
    if dry_run:
        logger.info(
            "fit_batch dry run: %d rows, chunk %d, config %s",
            plan.X.shape[0],
            plan.chunk_size,
            plan.config,
        )
        return [] if return_mode in ("list", "table") else iter(())

    def chunks() -> Iterator[dict[str, Any]]:
        writer = None
        m = plan.X.shape[0]
        todo = np.arange(m)
        show = verbose if progress is None else bool(progress)
        callback = progress if callable(progress) else None
        try:
            if output_hdf5_path is not None:
                writer = GridFitHDF5Writer(
                    output_hdf5_path,
                    output_hdf5_group,
                    m,
                    plan.configuration,
                    plan.stats_names,
                    plan.stats_bins,
                    plan.return_pdf,
                    overwrite=output_hdf5_overwrite,
                    resume=resume,
                    compression=output_hdf5_compression,
                    compression_opts=output_hdf5_compression_opts,
                    flush_every=output_hdf5_flush_every,
                )
                if resume:
                    todo = chunks_to_redo(writer.written(), plan.chunk_size)
                    logger.info("fit_batch resume: %d of %d rows left.", todo.size, m)
            bar = _progress_bar(todo.size, show and callback is None)
            done = 0
            t0 = time.perf_counter()
            for res in _Runner(fitter, plan, binner, n_jobs).run(todo):
                if writer is not None:
                    writer.write(res["m"], res)  # one journal record per chunk
                done += res["m"].size
                if bar is not None:
                    bar.update(res["m"].size)
                if callback is not None:
                    callback(done, todo.size)
                yield res
            if bar is not None:
                bar.close()
            dt = time.perf_counter() - t0
            logger.info(
                "fit_batch: %d rows in %.2f s (%.0f objects/s).",
                done,
                dt,
                done / dt if dt > 0 else float("nan"),
            )
        except BaseException:
            if writer is not None:
                writer.close(raise_errors=False)  # assemble what is committed; keep the error
            raise
        if writer is not None:
            writer.close()

    if output_hdf5_write_only:
        for _ in chunks():
            pass
        return [] if return_mode in ("list", "table") else iter(())
    if return_mode == "chunks":
        return _public_chunks(chunks(), plan)
    if return_mode == "table":
        units = fitter.grid.meta.get("units") if isinstance(fitter.grid.meta, dict) else None
        return _table(list(chunks()), plan, ids, units if isinstance(units, dict) else None)
    objects = (d for res in chunks() for d in _object_dicts(res, plan))
    if return_mode == "list":
        return list(objects)
    if output_hdf5_path is not None:
        return _Unconsumed(objects, output_hdf5_path)
    return objects


class _Unconsumed:
    """The ``"iter"`` iterator of a run with an output file: the run (and the file)
    advance only as it is consumed, so dropping it unstarted warns."""

    def __init__(self, it: Iterator[dict[str, Any]], path):
        self._it, self._path, self._started = it, path, False

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, Any]:
        self._started = True
        return next(self._it)

    def close(self) -> None:
        self._started = True
        self._it.close()

    def __del__(self):
        if not self._started:
            logger.warning(
                "fit_batch: the return_mode='iter' iterator for %s was never consumed, so "
                "nothing was fitted or written; iterate it, or pass "
                "output_hdf5_write_only=True or return_mode='list'.",
                self._path,
            )


def chunks_to_redo(written: np.ndarray, chunk_size: int) -> np.ndarray:
    """Rows of every chunk (``[k c, (k+1) c)``) with a row not yet written: a resumed
    run computes each row in the same chunk as an uninterrupted one (chunk
    composition can change float rounding), so the files are identical."""
    m = written.size
    open_chunks = (
        np.flatnonzero(np.add.reduceat(written == 0, np.arange(0, m, chunk_size)) > 0)
        if m
        else np.zeros(0, np.int64)
    )
    if open_chunks.size == 0:
        return np.zeros(0, np.int64)
    rows = (open_chunks[:, None] * chunk_size + np.arange(chunk_size)[None, :]).ravel()
    return rows[rows < m]


def _public_chunks(it, plan) -> Iterator[dict[str, Any]]:
    for res in it:
        out = {k: v for k, v in res.items() if k != "bad"}
        out["stats_for"] = plan.stats_names
        yield out


def _progress_bar(total: int, show: bool):
    if not show or total == 0:
        return None
    from tqdm.auto import tqdm

    # delay: runs shorter than ~2 s print nothing
    return tqdm(total=total, unit="obj", desc="fit_batch", delay=2.0, smoothing=0.1)
