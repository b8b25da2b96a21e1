"""Planning a batch: validated settings, the step configuration, the file configuration."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..core.checks import cast_overflows, float_dtype, masked_to_nan
from ..core.data import GridData
from ..core.reductions import bin_index
from ..core.status import POOR_FIT_PROBABILITY, Status
from ..core.step import StepConfig, StepParams, model_bins
from .layouts import bin_constant_values, histogram_layout

logger = logging.getLogger("jaxgrid")

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


def _binner_info(binner) -> Any:
    info = getattr(binner, "info", None)
    try:
        return json.loads(json.dumps(info() if callable(info) else type(binner).__name__))
    except TypeError:
        return type(binner).__name__
