"""`SingleObjectBinner`: a BESTA-style binner with only ``candidates()`` in ``fit_batch``.

BESTA's custom binners implement one method, ``candidates(y, sigma) -> (idx, level)``
for one object. jaxgrid's binner protocol (`jaxgrid.binning`) is batched:
``n_candidates`` (the fixed pool size K) and ``batch_candidates(Y, SIG)``.
`SingleObjectBinner` adapts the first to the second: it calls ``candidates`` once
per row (a Python loop on the host — batching the binner itself is faster) and pads
each list to K. A row whose list is empty or longer than K is fitted against the
full grid and flagged ``Status.FULL_GRID_FALLBACK`` (a one-time warning names
``max_candidates``); nothing is cut silently. ``fit_batch`` wraps such a binner
automatically.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

__all__ = ["SingleObjectBinner", "DEFAULT_POOL"]

logger = logging.getLogger("jaxgrid")
DEFAULT_POOL = 1024  # K when the user gives none (KDTreeBinner's radius-mode default)


class SingleObjectBinner:
    """Batches a binner that only has ``candidates(y, sigma) -> (idx, level)``.

    Args:
        binner: the object with ``candidates``; called as ``candidates(y, sigma)``
            per catalog row (native units, NaN for missing values).
        max_candidates: K, the longest list a row may have (rows above it use the
            full grid, flagged).

    Example:
        >>> pool = SingleObjectBinner(my_binner, max_candidates=256)
        >>> idx, mask, level, fallback = pool.batch_candidates(X, S)
    """

    def __init__(self, binner: Any, max_candidates: int = DEFAULT_POOL):
        if not callable(getattr(binner, "candidates", None)):
            raise TypeError(
                f"SingleObjectBinner: {type(binner).__name__} has no candidates(y, sigma) method."
            )
        if isinstance(max_candidates, bool) or not isinstance(max_candidates, int | np.integer):
            raise ValueError(
                f"SingleObjectBinner: `max_candidates` must be an int, got {max_candidates!r}."
            )
        if max_candidates < 1:
            raise ValueError("SingleObjectBinner: `max_candidates` must be >= 1.")
        self.binner = binner
        self.n_candidates = int(max_candidates)
        self._warned = False

    def info(self) -> dict[str, Any]:
        inner = getattr(self.binner, "info", None)
        return {
            "kind": "SingleObjectBinner",
            "binner": inner() if callable(inner) else type(self.binner).__name__,
            "max_candidates": self.n_candidates,
        }

    def batch_candidates(self, Y, SIG):
        """``(idx (M, K), mask (M, K), level (M,), fallback (M,))`` from one
        ``candidates`` call per row (``level`` -1 where a row gave none)."""
        Y, SIG = np.asarray(Y), np.asarray(SIG)
        m, k = Y.shape[0], self.n_candidates
        idx = np.zeros((m, k), dtype=np.int64)
        mask = np.zeros((m, k), dtype=bool)
        fallback = np.zeros(m, dtype=bool)
        levels = np.full(m, -1, dtype=np.int64)
        too_long = 0
        for r in range(m):  # the user's per-object call: this loop is the adapter's job
            got = self.binner.candidates(Y[r], SIG[r])
            cand, level = got if isinstance(got, tuple) else (got, None)
            cand = np.asarray(cand).reshape(-1)
            if level is not None:
                levels[r] = int(level)
            if cand.size == 0 or cand.size > k:
                fallback[r] = True
                too_long += cand.size > k
                continue
            if not np.issubdtype(cand.dtype, np.integer):
                raise ValueError(
                    f"{type(self.binner).__name__}.candidates returned {cand.dtype} indices; "
                    "model indices must be integers."
                )
            idx[r, : cand.size], mask[r, : cand.size] = cand, True
        if too_long and not self._warned:
            self._warned = True
            logger.warning(
                "%s.candidates gave %d row(s) more than max_candidates=%d models: they are "
                "fitted against the full grid (Status.FULL_GRID_FALLBACK). Pass a larger "
                "SingleObjectBinner(binner, max_candidates=...) as the binner.",
                type(self.binner).__name__,
                too_long,
                k,
            )
        return idx, mask, levels, fallback


def as_batched(binner: Any) -> Any:
    """``binner`` itself when it follows the batched protocol (or is None), else a
    `SingleObjectBinner` around its ``candidates`` (with a one-time note)."""
    if binner is None or (
        hasattr(binner, "n_candidates") and callable(getattr(binner, "batch_candidates", None))
    ):
        return binner
    if callable(getattr(binner, "candidates", None)):
        logger.info(
            "fit_batch: %s has only candidates(y, sigma); it is called once per row. A "
            "batch_candidates(Y, SIG) method (see jaxgrid.binning) would be faster.",
            type(binner).__name__,
        )
        return SingleObjectBinner(binner)
    return binner  # the plan's protocol check names what is missing
