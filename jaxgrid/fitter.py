"""`GridFitter`: fits catalog rows against a `ModelGrid` (host orchestration).

The fitter takes a snapshot of the grid on construction — observables in the
likelihood's space (z-scored when ``use_standardised``), native observables,
targets, log grid weights — as an immutable device-side `GridData`, and runs
the pure posterior of ``jaxgrid.prob`` on it.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .binning_single import as_batched
from .core.bins import check_edges
from .core.checks import cast_overflows, float_dtype, is_traced, masked_to_nan
from .core.data import GridData
from .core.reductions import histogram_density, weighted_histogram
from .grid import ModelGrid
from .prepared import PreparedGrid
from .prob.likelihoods import AbstractLikelihood, GaussianProductLikelihood
from .prob.posterior import log_posterior_terms, normalise_log_weights
from .prob.priors import AbstractPrior, FlatPrior, ObservableDependentPrior

__all__ = ["GridFitter", "GridData"]

logger = logging.getLogger("jaxgrid")


def _host_cast(value):
    arr = np.asarray(value)
    if not np.issubdtype(arr.dtype, np.floating) and not np.issubdtype(arr.dtype, np.integer):
        return arr  # let jnp.asarray report it
    return cast_overflows(arr, float_dtype())


@eqx.filter_jit
def _row_log_weights(data: GridData, likelihood, prior, x, sigma, upper, cand):
    """Unnormalised log posterior of one native row over all models or ``cand``."""
    xs, ss = data.to_likelihood_space(x, sigma)
    if cand is None:
        models, native, targets, log_w = (
            data.models,
            data.models_native,
            data.targets,
            data.log_weights,
        )
    else:
        models, native = data.models[cand], data.models_native[cand]
        targets, log_w = data.targets[cand], data.log_weights[cand]
    lw = log_posterior_terms(xs, ss, models, targets, likelihood, prior, None, upper, native, x)
    return lw + log_w


class GridFitter:
    """Posterior inference of catalog rows over a `ModelGrid`.

    Args:
        grid: the model library.
        likelihood: an `AbstractLikelihood` (default `GaussianProductLikelihood()`).
        prior: an `AbstractPrior` or `ObservableDependentPrior` (default
            `FlatPrior()`); target/observable names are resolved on the grid.
        use_standardised: evaluate the likelihood on z-scored observables
            (x, models and sigma divided by each observable's sd). The grid's
            standardiser is fitted only if it is not fitted yet — a fit the
            user made (e.g. on a mask) is kept. The fitter snapshots it now.
            Observable-dependent priors always receive native observables.

    Example:
        >>> fitter = GridFitter(grid, GaussianProductLikelihood(), FlatPrior())
        >>> dens, centres = fitter.posterior_over_target(x, s, "logM", np.linspace(7, 12, 51))
    """

    def __init__(
        self,
        grid: ModelGrid,
        likelihood: AbstractLikelihood | None = None,
        prior: AbstractPrior | ObservableDependentPrior | None = None,
        use_standardised: bool = True,
    ):
        if not isinstance(grid, ModelGrid):
            raise TypeError(f"GridFitter: `grid` must be a ModelGrid, got {type(grid).__name__}.")
        likelihood = GaussianProductLikelihood() if likelihood is None else likelihood
        prior = FlatPrior() if prior is None else prior
        if not isinstance(likelihood, AbstractLikelihood):
            raise TypeError(
                f"GridFitter: `likelihood` must be an AbstractLikelihood (e.g. "
                f"GaussianProductLikelihood()), got {type(likelihood).__name__}."
            )
        if not isinstance(prior, AbstractPrior | ObservableDependentPrior):
            raise TypeError(
                "GridFitter: `prior` must be a prior (e.g. FlatPrior()), got "
                f"{type(prior).__name__}."
            )
        if use_standardised and type(likelihood).scale_free:
            raise ValueError(
                f"GridFitter: {type(likelihood).__name__} fits a free amplitude and needs native "
                "fluxes; pass use_standardised=False."
            )
        if grid.has_model_noise and not type(likelihood).supports_model_noise:
            raise ValueError(
                f"GridFitter: the grid has a per-model noise model (model_sigma/model_bias) and "
                f"{type(likelihood).__name__} does not use one; use GaussianProductLikelihood, "
                "NumbaGaussianProductLikelihood or ScaledGaussianLikelihood, or drop the noise "
                "model (grid.with_model_noise())."
            )
        self.grid = grid
        self.use_standardised = bool(use_standardised)
        if self.use_standardised and not grid.standardiser.is_fitted:
            grid.fit_standardiser()
            logger.info("GridFitter: fitted the grid's observable standardiser.")
        self.likelihood = likelihood
        #: everything derived from the grid, once (`jaxgrid.prepared.PreparedGrid`)
        self.prepared = PreparedGrid(grid, likelihood, prior, self.use_standardised)
        self.prior = self.prepared.prior

    @property
    def data(self) -> GridData:
        """The device snapshot of the grid (`PreparedGrid.data`)."""
        return self.prepared.data

    @property
    def likelihood_in_space(self) -> AbstractLikelihood:
        """The likelihood resolved on the grid, in the space it is evaluated in."""
        return self.prepared.likelihood

    @property
    def row_mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        """float64 snapshot of the standardiser (the batch fitter z-scores rows with it)."""
        return self.prepared.mean_std

    # -------------------------------------------------------------- checks
    def _row(self, x_native, sigma_native, upper_limits, candidate_idx):
        p = self.grid.n_observables
        # masked entries are missing bands (NaN), as read_catalog reads them
        x_native = masked_to_nan(x_native, "x_native")
        sigma_native = masked_to_nan(sigma_native, "sigma_native")
        x, s = (
            # concrete values are cast on the host (beyond float32's range: inf, checked below)
            jnp.asarray(v if is_traced(v) else _host_cast(v), dtype=float_dtype())
            for v in (x_native, sigma_native)
        )
        for arr, name in ((x, "x_native"), (s, "sigma_native")):
            if arr.shape != (p,):
                raise ValueError(
                    f"`{name}` must have shape ({p},) — one value per observable "
                    f"{self.grid.observable_names} — got {arr.shape}."
                )
        if not is_traced(x_native):
            xv = np.asarray(x)
            if np.any(np.isinf(xv)):
                raise ValueError(
                    "`x_native` has infinite values (or values beyond the float range, "
                    f"{np.finfo(xv.dtype).max:.3g}); use NaN for a missing band."
                )
        if not is_traced(sigma_native):
            sv = np.asarray(s)
            # checked after the cast: a tiny error that rounds to 0 is a zero error
            if np.any(np.isinf(sv)) or np.any(sv <= 0):
                raise ValueError(
                    "`sigma_native` must be positive and finite (NaN marks a missing band); "
                    f"got {sv.tolist()}."
                )
        upper = None
        if upper_limits is not None:
            upper = np.asarray(upper_limits)
            if upper.dtype != bool or upper.shape != (p,):
                raise ValueError(
                    f"`upper_limits` must be a bool array of shape ({p},), got "
                    f"{upper.dtype} {upper.shape}."
                )
            upper = jnp.asarray(upper)
        cand = None
        if candidate_idx is not None:
            cand = np.asarray(candidate_idx)
            if cand.ndim != 1 or not np.issubdtype(cand.dtype, np.integer) or cand.size == 0:
                raise ValueError("`candidate_idx` must be a non-empty 1-D array of model indices.")
            if cand.min() < 0 or cand.max() >= self.grid.n_models:
                raise IndexError(f"`candidate_idx` has indices outside [0, {self.grid.n_models}).")
            cand = jnp.asarray(cand)
        return x, s, upper, cand

    def _log_weights(self, x_native, sigma_native, candidate_idx, upper_limits):
        x, s, upper, cand = self._row(x_native, sigma_native, upper_limits, candidate_idx)
        return _row_log_weights(self.data, self.likelihood_in_space, self.prior, x, s, upper, cand)

    # ------------------------------------------------------------- results
    def posterior_over_models(
        self, x_native, sigma_native, candidate_idx=None, upper_limits=None
    ) -> Float[Array, " cand"]:
        """Posterior weights (Nc,) of the models (or of ``candidate_idx``), summing to 1.

        NaN or a masked entry (``np.ma``) in ``x_native``/``sigma_native`` marks a
        missing band; infinite values (also beyond the float range) and zero or
        negative errors raise ``ValueError``. ``upper_limits`` (P,) bool flags
        observables whose value is a limit (see ``jaxgrid.prob.likelihoods``). A
        row with no usable observable gets all-zero weights and a warning.
        """
        lw = self._log_weights(x_native, sigma_native, candidate_idx, upper_limits)
        w, log_z = normalise_log_weights(lw)
        _warn_if_unusable(log_z)
        return w

    def log_evidence(self, x_native, sigma_native, candidate_idx=None, upper_limits=None) -> Array:
        """``log Z`` of the row (a JAX scalar; differentiable w.r.t. the row)."""
        from jax.scipy.special import logsumexp

        return logsumexp(self._log_weights(x_native, sigma_native, candidate_idx, upper_limits))

    def posterior_over_target(
        self, x_native, sigma_native, target_col, bins, candidate_idx=None, upper_limits=None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Posterior density of one target on ``bins``: ``(density (K,), centres (K,))``.

        ``bins``: K+1 strictly increasing edges in the target's units. The
        density is normalised over the in-range mass (``sum density * width
        = 1``). With no in-range mass the density is NaN and a warning says
        why — never a made-up uniform.
        """
        col = self.grid.target_index(target_col)
        edges = check_edges(bins, "bins", "posterior_over_target")
        lw = self._log_weights(x_native, sigma_native, candidate_idx, upper_limits)
        w, log_z = normalise_log_weights(lw)
        _warn_if_unusable(log_z)
        x, s, upper, cand = self._row(x_native, sigma_native, upper_limits, candidate_idx)
        pick = slice(None) if cand is None else cand
        values = self.data.targets[pick, col]
        lik = self.likelihood_in_space
        if col in lik.extensive_cols():  # e.g. logM + log10(amplitude), per model
            xs, ss = self.data.to_likelihood_space(x, s)
            values = values + lik.target_shift(xs, ss, self.data.models[pick], upper)
        e = jnp.asarray(edges, dtype=float_dtype())
        mass = weighted_histogram(values, w, e)
        density = np.asarray(histogram_density(mass, e), dtype=np.float64)
        if np.isfinite(float(log_z)) and not np.any(np.isfinite(density)):
            warnings.warn(
                f"posterior_over_target: no posterior mass of {self.grid.target_names[col]!r} "
                f"inside the bins [{edges[0]}, {edges[-1]}]; the density is NaN.",
                RuntimeWarning,
                stacklevel=2,
            )
        return density, 0.5 * (edges[1:] + edges[:-1])

    def corner_for_targets(self, x_native, sigma_native, target_cols, **kwargs):
        """Corner plot of one object's posterior (see `jaxgrid.plots.corner_for_targets`;
        needs the ``plot`` extra). Returns ``(fig, axes, summary)``."""
        from .plots import corner_for_targets

        return corner_for_targets(self, x_native, sigma_native, target_cols, **kwargs)

    def fit_batch(
        self,
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
        max_memory_gb: float | None = None,
        memcheck_sample: int | None = None,
        safety_margin: float | None = None,
        tasks_per_worker: int | None = None,
    ):
        """Fit a catalog: posterior, truncation and summaries for every row, in chunks.

        Each fixed-size chunk of rows runs through **one** jitted step (compiled
        once per configuration; ``jaxgrid.core.step``), sharded over all local
        devices. Results come back in object order.

        Options (keywords as in BESTA; see docs/batch.md):

        * ``X_native, SIG_native``: (M, P) observed values and 1-sigma errors in
          native units (arrays, or astropy Tables with columns named as the
          grid's observables). NaN or a masked entry (``np.ma``, astropy masked
          columns) marks a missing band; infinite values (also beyond the float
          range after the cast to float32), zero or negative errors are treated
          as missing and flagged (``Status.BAD_INPUT``). An empty (0-row)
          catalog gives an empty result in every return mode.
        * ``binner``: optional candidate preselector following the binner
          protocol of ``jaxgrid.binning`` (e.g. `KDTreeBinner`); None
          fits every row against the whole grid. A BESTA-style binner with only
          ``candidates(y, sigma)`` is called once per row
          (`jaxgrid.binning_single.SingleObjectBinner`, pool of 1024). Rows the binner cannot
          serve (no candidate, or flagged by it) are fitted against the
          full grid and flagged ``Status.FULL_GRID_FALLBACK`` — or, with
          ``fallback_to_full_grid=False``, flagged ``NO_CANDIDATES``. A row
          with a model index outside ``[0, N)`` under a True mask is flagged
          ``NO_CANDIDATES | BAD_INPUT`` (NaN summaries); binner output of the
          wrong shape or dtype raises.
        * ``n_jobs``: host threads preparing chunks (candidate queries) ahead of
          the device; ``backend``: accepted for BESTA compatibility (only
          threads are used); any integer or None works (<= 0: one thread), a
          non-integer ``n_jobs`` is refused.
        * ``stats_for``: target names or indices to summarise; ``stats_bins``: one
          edge array per entry (None: 200 edges over each target's grid
          range). Mismatched bins raise ``ValueError``.
        * ``find_multimodal``: count modes (maxima of the binned density, edge
          bins included, plateaus once, rises and falls under 1e-3 of the peak
          ignored: `jaxgrid.core.reductions.count_modes`); else ``nmodes = 1``.
        * ``use_kde_for_stats``: weighted Gaussian KDE (Scott bandwidth from the
          effective sample size) at the bin centres instead of the
          histogram; one effective sample falls back to the histogram
          (``Status.KDE_FALLBACK``).
        * ``return_pdf_for_stats``: include each target's density on its bins.
        * ``verbose / progress``: a tqdm bar (shown after ~2 s); ``progress`` may
          also be a callable ``(done, total)``.
        * ``posterior_keep_mass, posterior_keep_min_candidates,
          posterior_keep_max_candidates, posterior_keep_ties``: truncation —
          keep the fewest highest-weight models whose mass reaches
          ``keep_mass``, at least ``min`` (default 128, capped by a smaller
          ``max``; an explicit ``min`` above ``max`` is refused), at most
          ``max`` (only when given:
          the kept set has no implementation cap, from 1 model to the whole
          grid), ties at the cut in index order or all kept if asked (not
          with a ``max``, as BESTA); renormalised. Off when
          ``keep_mass >= 0.9999`` and no max: stats and candidate lists then
          cover every model. When your ``max`` binds first, ``mass_kept``
          says so (``Status.MASS_CAP``).
        * ``return_mode``: ``"iter"`` (lazy per-object dicts), ``"list"``,
          ``"chunks"`` (lazy per-chunk dicts of arrays: the fast path),
          ``"table"`` (astropy Table, one row per object).
        * ``output_hdf5_*``: write results into an HDF5 group (layout in
          ``jaxgrid.io.results``), crash-safely: chunks are committed to a
          journal beside the file, the group is assembled atomically when the
          run ends (``flush_every``: rows between journal fsyncs);
          ``write_only`` runs at once, returns nothing to iterate. With
          ``return_mode="iter"`` the file advances only as the iterator is
          consumed.
        * ``dry_run``: validate everything, compute nothing, create no file.
        * ``chunk_size``: rows per step (default from the memory budget and N;
          rounded up to a multiple of the device count). Counts (``chunk_size``,
          candidate counts, ``n_jobs``, ``output_hdf5_flush_every``, block size,
          ``memory_budget_bytes`` >= 0) must be integers: anything else raises
          before any file is opened.
        * ``resume``: continue an unfinished journal or an existing group
          written with the same configuration (chunk size included),
          recomputing every chunk with a row not yet written.
        * ``upper_limits``: (M, P) bool, values that are limits.
        * ``ids``: optional (M,) object ids for the table.
        * ``return_candidates``: False drops the per-object candidate lists;
          with truncation off (``posterior_keep_mass >= 0.9999``, no max) the
          step then needs no top-k at all (full-PDF photo-z runs).
        * ``model_block_size, memory_budget_bytes``: the full-grid path blocks
          the model axis so a chunk's temporaries stay within the budget
          (default 512 MiB on CPU, a quarter of GPU memory); results
          are exact for any blocking.
        * BESTA's memory and scheduling keywords: ``max_memory_gb`` sets the
          memory budget (``memory_budget_bytes``, when that is not given);
          ``memcheck_sample``, ``safety_margin``, ``tasks_per_worker`` mean nothing
          here (the step's memory is computed, not sampled; chunks are scheduled
          on the device) — accepted, a warning once per session, ignored.

        Per-object dicts hold ``m, level, candidates, post_models, truncation,
        stats, posts_target, log_evidence, chi2_min, best, status`` (see
        docs/batch.md); each target's stats include ``mass_in_bins``, the
        fraction of the kept mass inside its bins (``"chunks"``: a (rows, D)
        array). Status codes: ``jaxgrid.Status`` (``LOW_MASS_IN_BINS``
        below `jaxgrid.core.status.MIN_MASS_IN_BINS`; ``POOR_FIT`` for a chi2_min
        with survival probability below 1e-6 for the row's bands).
        """
        from .batch import BatchOptions, fit_batch

        settings = dict(locals())  # the keywords above: BatchOptions' fields, BESTA's
        for name in ("self", "X_native", "SIG_native", "BatchOptions", "fit_batch"):
            settings.pop(name)
        besta = {k: settings.pop(k) for k in _BESTA_ONLY}
        settings["binner"] = as_batched(binner)  # a BESTA binner with only candidates()
        settings["memory_budget_bytes"] = _besta_memory(besta, memory_budget_bytes)
        return fit_batch(self, X_native, SIG_native, BatchOptions(**settings))


#: BESTA's fit_batch keywords with no BatchOptions field (see `GridFitter.fit_batch`).
_BESTA_ONLY = ("max_memory_gb", "memcheck_sample", "safety_margin", "tasks_per_worker")
_warned_besta: set[str] = set()


def _besta_memory(besta: dict[str, Any], memory_budget_bytes):
    """The memory budget from BESTA's ``max_memory_gb``; a one-time warning for BESTA's
    keywords that mean nothing here."""
    ignored = sorted(k for k in _BESTA_ONLY[1:] if besta[k] is not None and k not in _warned_besta)
    if ignored:
        _warned_besta.update(ignored)
        warnings.warn(
            f"fit_batch: BESTA's {ignored} mean nothing in jaxgrid (memory is computed, chunks "
            "run on the device) and are ignored; this warning is shown once.",
            UserWarning,
            stacklevel=3,
        )
    gb = besta["max_memory_gb"]
    if gb is None or memory_budget_bytes is not None:
        return memory_budget_bytes
    if isinstance(gb, bool) or not isinstance(gb, int | float) or not gb > 0:
        raise ValueError(f"fit_batch: `max_memory_gb` must be a positive number, got {gb!r}.")
    return int(gb * 2**30)


def _warn_if_unusable(log_z: Array) -> None:
    if is_traced(log_z):
        return
    if not np.isfinite(float(log_z)):
        warnings.warn(
            "this row has no usable observable (or every model is excluded): log evidence is "
            "-inf, weights are zero and densities NaN.",
            RuntimeWarning,
            stacklevel=3,
        )
