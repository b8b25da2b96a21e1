"""Per-row status flags of a fit and the thresholds that raise them."""

from __future__ import annotations

import enum

__all__ = ["Status", "BAD_STATUS", "MIN_MASS_IN_BINS", "POOR_FIT_PROBABILITY", "is_bad"]


class Status(enum.IntFlag):
    """Per-row status bit flags (``0`` = ok; a row's code is the sum of its flags).

    Rows with any of `BAD_STATUS` (``NO_OBSERVABLES | NO_CANDIDATES | ZERO_WEIGHT``)
    have NaN summaries and no candidates; the other flags are warnings. Test a flag
    with ``status & Status.POOR_FIT``; `is_bad` tests the bad ones. One line per
    flag below (each member's docstring).
    """

    OK = 0
    """ok: every summary is valid"""
    NO_OBSERVABLES = 1
    """no band with a finite value and error"""
    NO_CANDIDATES = 2
    """the preselection gave this row no candidate"""
    ZERO_WEIGHT = 4
    """every model has zero posterior weight (log L + log prior = -inf)"""
    KDE_FALLBACK = 8
    """KDE impossible (one effective sample): histogram used instead"""
    MASS_CAP = 16
    """the user's posterior_keep_max_candidates bound before keep_mass was reached"""
    FULL_GRID_FALLBACK = 32
    """preselection failed for this row; the full grid was used"""
    BAD_INPUT = 64
    """invalid inputs were treated as missing bands (infinite values, errors <= 0, values
    beyond float32's range); with NO_CANDIDATES: the binner gave indices off the grid"""
    NO_MASS_IN_BINS = 128
    """a summarised target has no posterior mass inside its bins"""
    LOW_MASS_IN_BINS = 256
    """a summarised target has less than `MIN_MASS_IN_BINS` of the kept mass inside its bins"""
    POOR_FIT = 512
    """chi2_min is implausible for the row's bands: P(chi2_dof >= chi2_min) <
    `POOR_FIT_PROBABILITY`"""


BAD_STATUS = Status.NO_OBSERVABLES | Status.NO_CANDIDATES | Status.ZERO_WEIGHT


def is_bad(status):
    """Rows (NumPy or JAX ``status`` arrays) with a `BAD_STATUS` flag: no summaries."""
    return (status & int(BAD_STATUS)) != 0


#: Rows whose summarised targets have less than this fraction of the kept posterior mass
#: inside their bins are flagged `Status.LOW_MASS_IN_BINS` (their summaries describe
#: only the in-bin part); ``mass_in_bins`` reports the fraction per target.
MIN_MASS_IN_BINS = 0.9
#: `Status.POOR_FIT` when the chi-square survival probability of ``chi2_min`` for the
#: row's degrees of freedom (`AbstractLikelihood.chi2_dof`) is below this.
POOR_FIT_PROBABILITY = 1e-6
