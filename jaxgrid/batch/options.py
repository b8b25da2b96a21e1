"""`BatchOptions`: every setting of `GridFitter.fit_batch`, validated in one place.

The field names are `GridFitter.fit_batch`'s keywords (BESTA's names where BESTA
has the setting); `tests/test_batch_options.py` checks that the method's
signature and these fields agree, defaults included.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["BatchOptions", "RETURN_MODES", "DEFAULT_KEEP_MIN"]

logger = logging.getLogger("jaxgrid")

RETURN_MODES = ("iter", "list", "chunks", "table")
DEFAULT_KEEP_MIN = 128  # posterior_keep_min_candidates when not given (a smaller max caps it)
_BACKENDS = ("thread", "threads", "threading", "loky", "process", "sequential")


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


@dataclasses.dataclass(frozen=True)
class BatchOptions:
    """The settings of one `fit_batch` run (see `GridFitter.fit_batch` for each)."""

    binner: Any = None
    n_jobs: int = 1
    backend: str = "thread"
    stats_for: Sequence[str | int] | None = None
    stats_bins: Sequence[Any] | None = None
    find_multimodal: bool = False
    use_kde_for_stats: bool = False
    return_pdf_for_stats: bool = False
    verbose: bool = True
    posterior_keep_mass: float = 0.99
    posterior_keep_min_candidates: int | None = None
    posterior_keep_max_candidates: int | None = None
    posterior_keep_ties: bool = False
    return_mode: str = "iter"
    output_hdf5_path: Any = None
    output_hdf5_group: str = "/fit_batch"
    output_hdf5_overwrite: bool = False
    output_hdf5_compression: str | None = "gzip"
    output_hdf5_compression_opts: int | None = 4
    output_hdf5_flush_every: int = 256
    output_hdf5_write_only: bool = False
    dry_run: bool = False
    chunk_size: int | None = None
    resume: bool = False
    progress: bool | Callable[[int, int], None] | None = None
    upper_limits: Any = None
    ids: Any = None
    model_block_size: int | None = None
    memory_budget_bytes: int | None = None
    fallback_to_full_grid: bool = True
    return_candidates: bool = True

    def __post_init__(self):
        """Refuse inconsistent or mistyped settings before any file is opened."""
        if self.return_mode not in RETURN_MODES:
            raise ValueError(
                f"`return_mode` must be one of {RETURN_MODES}, got {self.return_mode!r}."
            )
        if self.backend not in _BACKENDS:
            logger.info(
                "fit_batch: backend=%r is accepted for compatibility and ignored.", self.backend
            )
        if self.resume and self.output_hdf5_path is None:
            raise ValueError("`resume=True` needs `output_hdf5_path` (the file to continue).")
        if self.output_hdf5_write_only and self.output_hdf5_path is None:
            raise ValueError("`output_hdf5_write_only=True` needs `output_hdf5_path`.")
        _integer(self.chunk_size, "chunk_size", 1, optional=True)
        _integer(self.n_jobs, "n_jobs", optional=True)  # None, 0 and -1: one thread
        _integer(self.output_hdf5_flush_every, "output_hdf5_flush_every", 1)
        _integer(self.model_block_size, "model_block_size", 1, optional=True)
        _integer(self.memory_budget_bytes, "memory_budget_bytes", 0, optional=True)
        kmin, kmax = self.posterior_keep_min_candidates, self.posterior_keep_max_candidates
        _integer(kmin, "posterior_keep_min_candidates", 1, optional=True)
        _integer(kmax, "posterior_keep_max_candidates", 1, optional=True)
        if kmin is not None and kmax is not None and int(kmin) > int(kmax):
            raise ValueError(
                f"`posterior_keep_min_candidates` ({kmin}) > `posterior_keep_max_candidates` "
                f"({kmax}): the minimum kept count cannot exceed the maximum; lower the minimum."
            )
        mass = self.posterior_keep_mass
        if isinstance(mass, (bool, np.bool_)) or not isinstance(mass, (int, float, np.number)):
            raise TypeError(f"`posterior_keep_mass` must be a number in (0, 1], got {mass!r}.")

    @property
    def keep_min(self) -> int:
        """The kept-count floor: `DEFAULT_KEEP_MIN` when not given."""
        k = self.posterior_keep_min_candidates
        return DEFAULT_KEEP_MIN if k is None else int(k)

    @property
    def truncate(self) -> bool:
        """Whether the posterior is truncated at all (off at keep_mass >= 0.9999, no max)."""
        return not (
            float(self.posterior_keep_mass) >= 0.9999 and self.posterior_keep_max_candidates is None
        )
