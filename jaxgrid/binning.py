"""Candidate preselection on the host: the binner protocol and the binners.

`KDTreeBinner` (a KD-tree), `HashedGridBinner` (a hashed uniform grid of cells),
`RectBinner` (multi-level rectangular cells) and `NestedBinner` (primary cells,
then a child binner per cell) live in ``binning_kdtree``, ``binning_hashed``,
``binning_rect`` and ``binning_nested``; ``binning_common`` holds what they
share.

For a large grid most models have negligible weight for a given object; a
KD-tree over (some of) the grid observables picks, per object, the models
near it in observable space, and `GridFitter.fit_batch` evaluates only those.

**Binner protocol** — what ``fit_batch(binner=...)`` needs; any object with
these members works:

* ``n_candidates: int`` — the fixed number K of candidates per row;
* ``batch_candidates(Y (M, P), SIG (M, P)) -> (idx (M, K) int, mask (M, K)
  bool, level)`` — native rows in, candidate model indices out (``mask``
  false for padding); ``level`` is None, an int or an (M,) int array (one per
  row, -1 for none), stored with the results;
* ``batch_candidates`` may return a fourth element, ``fallback`` (M,) bool:
  rows the selector could not serve (they are fitted against the full grid
  and flagged ``Status.FULL_GRID_FALLBACK``); rows with an all-false mask
  are treated the same way (`KDTreeBinner` uses that; its
  ``last_fallback_rows`` attribute is a diagnostic fit_batch does not read);
* optionally ``info() -> dict`` (JSON-able; stored in the output file's
  configuration).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from .binning_common import DEFAULT_MAX_CANDIDATES
from .binning_hashed import HashedGridBinner
from .binning_kdtree import KDTreeBinner
from .binning_nested import NestedBinner
from .binning_rect import RectBinner

__all__ = [
    "DEFAULT_MAX_CANDIDATES",
    "Binner",
    "HashedGridBinner",
    "KDTreeBinner",
    "NestedBinner",
    "RectBinner",
]


@runtime_checkable
class Binner(Protocol):
    """The binner protocol (see module docs)."""

    n_candidates: int

    def batch_candidates(self, Y: Any, SIG: Any) -> tuple[np.ndarray, np.ndarray, Any]: ...
