"""Planning a batch: validated settings, the step configuration, the file configuration."""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..binning import Binner
from ..core.bins import DEFAULT_N_EDGES, check_edges, default_edges
from ..core.checks import cast_overflows, float_dtype, masked_to_nan
from ..core.data import GridData
from ..core.schema import RESERVED_KEYS
from ..core.status import POOR_FIT_PROBABILITY, Status
from ..core.step import StepConfig, StepParams
from ..prepared import array_digest
from .options import BatchOptions

logger = logging.getLogger("jaxgrid")

#: Length of each row's sorted top list on the device (at least keep_min): rows whose
#: kept set fits are summarised on it; XLA's CPU top-k cost grows steeply with k.
FAST_K = 128
#: Candidate pools up to this size are ordered on the host: XLA's CPU top-k costs
#: ~15-30 us per row for k ~ 100 (a whole-row sort), NumPy's argsort ~2 us.
HOST_ORDER_MAX = 512
_NO_BOUND = 2**31 - 1  # keep_max when the user sets none
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
        return cols, names, [default_edges(t[:, c]) for c in cols]
    if isinstance(stats_bins, np.ndarray) and stats_bins.ndim == 1:
        stats_bins = [stats_bins]
    stats_bins = list(stats_bins)
    if len(stats_bins) != len(cols):
        raise ValueError(
            f"`stats_bins` has {len(stats_bins)} edge arrays for {len(cols)} targets in "
            f"`stats_for`; give one edge array per target (or None for {DEFAULT_N_EDGES} "
            "edges over the grid range)."
        )
    bins = []
    for name, e in zip(names, stats_bins, strict=True):
        if e is None:
            raise ValueError(f"`stats_bins` entry for {name!r} is None; give its edges.")
        bins.append(check_edges(e, f"stats_bins[{name!r}]"))
    return cols, names, bins


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


def plan_batch(fitter, X_native, SIG_native, options: BatchOptions) -> BatchPlan:
    """Validate a catalog and decide how `fit_batch` computes it: the rows as the device
    will see them (bad values flagged), the summarised targets and their bins, the
    step's static configuration(s) and parameters (from the fitter's `PreparedGrid`),
    the chunk size and the configuration the output file records. Computes nothing."""
    grid, o = fitter.grid, options
    X, S, U, host_flags = _rows(grid, X_native, SIG_native, o.upper_limits)
    cols, names, bins = _resolve_stats(grid, o.stats_for, o.stats_bins)
    keep_mass = o.posterior_keep_mass
    if not 0.0 < float(keep_mass) <= 1.0:
        raise ValueError(f"`posterior_keep_mass` must be in (0, 1], got {keep_mass}.")
    k_cand = _pool_size(o.binner)
    sizes = _sizes(grid.n_models, k_cand, X.shape[0], o)
    prep = fitter.prepared
    if not prep.matches_standardiser():
        logger.warning(
            "fit_batch: the grid's standardiser changed after this GridFitter was built; the "
            "fit uses (and the output records) the fitter's snapshot. Build a new GridFitter "
            "to use the new standardiser."
        )
    config, full_config, params = _step_setup(prep, cols, bins, k_cand, sizes, o)
    data = prep.rows_data() if k_cand is not None else prep.padded(sizes.n_blocks, sizes.block)
    if k_cand is not None and not o.fallback_to_full_grid:
        full_config = None
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
        chunk_size=sizes.chunk_size,
        keep={"keep_mass": float(keep_mass), "return_candidates": bool(o.return_candidates)},
        return_pdf=bool(o.return_pdf_for_stats),
        configuration=_configuration(prep, X, S, U, names, bins, sizes, o),
    )


def _rows(grid, X_native, SIG_native, upper_limits):
    """``(X, S, U, host_flags)``: float64 rows, bad values (infinite, errors <= 0, beyond
    the device's float range) set to NaN — missing bands — and flagged BAD_INPUT."""
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
    return np.where(bad_vals, np.nan, X), np.where(bad_vals, np.nan, S), U, host_flags


def _pool_size(binner) -> int | None:
    """The binner's candidates per row (None without a binner)."""
    if binner is None:
        return None
    if not isinstance(binner, Binner):  # a runtime-checkable Protocol: its members exist
        raise TypeError(
            "`binner` must follow the binner protocol (a fitted object with n_candidates "
            "and batch_candidates(Y, SIG) -> (idx, mask, level)); got "
            f"{type(binner).__name__}."
        )
    return int(binner.n_candidates)


@dataclasses.dataclass(frozen=True)
class _Sizes:
    """How a catalog is cut: rows per chunk, the full grid's model blocks, list lengths."""

    chunk_size: int
    block: int  #: models per block of the full-grid path
    n_blocks: int
    list_k: int  #: the sorted top list of the pool rows are fitted on
    list_k_full: int  #: the same on the full grid
    n_dev: int


def _list_length(pool: int, o: BatchOptions) -> int:
    """The sorted top list: it decides most rows' kept sets (longer ones are exact too)."""
    if not o.return_candidates and not o.truncate:
        return 1  # summaries use every model; only the best one is tracked (no top-k)
    k = max(o.keep_min, FAST_K)
    if o.posterior_keep_max_candidates is not None:
        k = min(k, int(o.posterior_keep_max_candidates))
    return max(1, min(k, pool))


def _sizes(n_models: int, k_cand: int | None, n_rows: int, o: BatchOptions) -> _Sizes:
    n_pool = k_cand if k_cand is not None else n_models
    budget = int(o.memory_budget_bytes) if o.memory_budget_bytes is not None else _memory_budget()
    n_dev = jax.local_device_count()
    chunk_size = o.chunk_size
    if chunk_size is None:
        per_row = n_pool * _BYTES_PER_PAIR
        chunk_size = int(np.clip(budget // max(per_row, 1), 8, 1024))
        # and small enough that a chunk's (rows x models) float32 arrays stay in cache:
        # measured on the photo-z grid (2,408 models), 512 rows beat 1,024 by 2x
        fits = _CACHE_BYTES // max(n_pool * 4, 1)
        chunk_size = min(chunk_size, max(8, 2 ** int(np.log2(max(fits, 1)))))
        chunk_size = min(chunk_size, max(8, int(2 ** np.ceil(np.log2(max(n_rows, 1))))))
    chunk_size = int(chunk_size)
    if chunk_size < 1:
        raise ValueError(f"`chunk_size` must be >= 1, got {chunk_size}.")
    chunk_size = -(-chunk_size // n_dev) * n_dev  # a multiple of the device count

    # Full-grid layout (also used for rows a binner cannot serve).
    list_k_full = _list_length(n_models, o)
    if o.model_block_size is None:
        block = max(list_k_full, budget // max(chunk_size * _BYTES_PER_PAIR, 1))
    else:
        block = int(o.model_block_size)
        if block < 1:
            raise ValueError(f"`model_block_size` must be >= 1, got {block}.")
        block = max(block, list_k_full)
    # per-block counts are float sums: exact below 2^24 models
    block = min(block, n_models, 2**24)
    return _Sizes(
        chunk_size=chunk_size,
        block=block,
        n_blocks=-(-n_models // block),
        list_k=_list_length(n_pool, o),
        list_k_full=list_k_full,
        n_dev=n_dev,
    )


def _step_setup(prep, cols, bins, k_cand, sizes: _Sizes, o: BatchOptions):
    """``(config, full_config, params)``: the step's static configuration on the row
    pools, the full grid's (the same without a binner) and its array parameters."""
    keep_max = o.posterior_keep_max_candidates
    truncate = o.truncate
    common = dict(
        n_models=prep.grid.n_models,
        truncate=truncate,
        keep_ties=bool(o.posterior_keep_ties) and keep_max is None,  # as BESTA: a count bound wins
        stat_cols=tuple(cols),
        find_multimodal=bool(o.find_multimodal),
        use_kde=bool(o.use_kde_for_stats),
    )
    ext_cols = prep.likelihood.extensive_cols()
    common["extensive"] = tuple(i for i, c in enumerate(cols) if c in ext_cols)
    if common["extensive"] and not truncate:
        raise ValueError(
            "extensive targets (shifted by the fitted amplitude) are summarised over the kept "
            "models: use posterior_keep_mass < 0.9999 or posterior_keep_max_candidates."
        )
    dt = float_dtype()
    edges_dev = tuple(jnp.asarray(e, dt) for e in bins)
    hist, hist_index, bin_values = {}, (), ()
    if sizes.n_blocks == 1 and cols:
        hist, hist_index, bin_values = prep.whole_grid_histograms(cols, edges_dev)
    full_config = StepConfig(
        block_size=sizes.block, n_blocks=sizes.n_blocks, list_k=sizes.list_k_full, **hist, **common
    )
    if k_cand is None:
        config = full_config
    elif k_cand <= HOST_ORDER_MAX:
        # short pools: bisection for every row, ordered on the host (no device sort)
        config = StepConfig(block_size=k_cand, n_blocks=1, list_k=1, host_order=True, **common)
    else:
        config = StepConfig(block_size=k_cand, n_blocks=1, list_k=sizes.list_k, **common)
    keep_mass = float(o.posterior_keep_mass)
    params = StepParams(
        # keep_mass 1 (with a max): all the mass, not "whenever rounding reaches 1"
        keep_mass=jnp.asarray(np.inf if keep_mass >= 1.0 else keep_mass, dt),
        keep_min=jnp.asarray(o.keep_min, jnp.int32),
        keep_max=jnp.asarray(_NO_BOUND if keep_max is None else int(keep_max), jnp.int32),
        edges=edges_dev,
        model_bins=prep.model_bins(sizes.n_blocks, sizes.block, cols, edges_dev),
        hist_index=hist_index,
        bin_values=bin_values,
        poor_fit_chi2=jnp.asarray(poor_fit_chi2(prep.grid.n_observables), dt),
    )
    return config, full_config, params


def _configuration(prep, X, S, U, names, bins, sizes: _Sizes, o: BatchOptions) -> dict[str, Any]:
    """The run's settings as the output file records them (``resume`` requires
    equality): what the step used — the fitter's snapshot, not the live grid."""
    grid, keep_max = prep.grid, o.posterior_keep_max_candidates
    return {
        "format": "jaxgrid.fit_batch/1",
        "n_rows": int(X.shape[0]),
        "grid": {
            "n_models": grid.n_models,
            "observable_names": grid.observable_names,
            "target_names": grid.target_names,
            "digest": prep.digest,
        },
        "catalog_digest": array_digest(X, S, np.zeros(0) if U is None else U),
        "likelihood": type(prep.likelihood_given).__name__,
        "likelihood_digest": prep.likelihood_digest,
        "prior": type(prep.prior).__name__,
        "prior_digest": prep.prior_digest,
        "use_standardised": prep.use_standardised,
        "standardiser": prep.standardiser,
        "binner": None if o.binner is None else _binner_info(o.binner),
        "stats_for": names,
        "stats_bins": [b.tolist() for b in bins],
        "find_multimodal": bool(o.find_multimodal),
        "use_kde_for_stats": bool(o.use_kde_for_stats),
        "return_pdf_for_stats": bool(o.return_pdf_for_stats),
        "posterior_keep_mass": float(o.posterior_keep_mass),
        "posterior_keep_min_candidates": o.keep_min,
        "posterior_keep_max_candidates": None if keep_max is None else int(keep_max),
        "posterior_keep_ties": bool(o.posterior_keep_ties),
        "list_k": sizes.list_k,
        "fallback_to_full_grid": bool(o.fallback_to_full_grid),
        "return_candidates": bool(o.return_candidates),
        # chunk composition and device split can change float rounding: part of resume
        "chunk_size": sizes.chunk_size,
        "devices": f"{sizes.n_dev} x {jax.default_backend()}",
        "version": __import__("jaxgrid").__version__,
    }


def _binner_info(binner) -> Any:
    info = getattr(binner, "info", None)
    try:
        return json.loads(json.dumps(info() if callable(info) else type(binner).__name__))
    except TypeError:
        return type(binner).__name__
