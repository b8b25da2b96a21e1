"""L-BFGS (SciPy's L-BFGS-B) on a host objective, with one policy for non-finite points.

Both training objectives of jaxgrid (`jaxgrid.calibrate.calibrate`, and
`fit_bpz_prior` / `fit_bpz_prior_photoz`) are minimised here. Their objectives
can be non-finite in part of the parameter space (a row whose every model is
excluded, float overflow, a prior parameter out of range), and a line search
may try such a point.

The policy, *continue from the last finite point*: at a trial point ``x`` where
the value or the gradient is not finite, the optimiser is told the value and
gradient of a convex quadratic through the last finite point ``x_f`` (value
``f_f``, gradient ``g_f``) along ``d = x - x_f``:

    phi(t) = f_f + t (g_f . d) + a t^2,  a = rise - g_f . d,
    rise   = max(g_f . d, 0) + 0.1 |g_f . d|  (plus a floor above rounding),

reported as ``phi(1) = f_f + rise`` and ``g_f + 2 a d / |d|^2``. Why this one:

* the reported value is strictly above ``f_f``, so the Moré-Thuente line search
  of L-BFGS-B never takes the point as its best one and brackets the step;
* the value and derivative come from one smooth function along the segment, and
  the line search's cubic/quadratic interpolation is exact for a quadratic: it
  proposes the step to phi's minimum, ``0.45 d`` from ``x_f`` — the step is
  about halved toward the last finite point at every non-finite trial, until
  the trial is finite again.

The usual alternative, a huge value (1e10) with a zero gradient, misleads the
same interpolation: a cubic through a huge value puts its minimum a fraction
~1e-11 of the way, so the line search creeps and can spend its 20 evaluations
without leaving the start ("ABNORMAL_TERMINATION_IN_LNSRCH": the optimiser
stops where it began); and a zero gradient at a point the line search accepts
anyway (on its rounding or interval-width warnings) reads as convergence.

The result is always a finite point: should SciPy end on a continued point,
the best finite point seen is returned with ``success=False``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

__all__ = ["LBFGSResult", "minimize_lbfgs"]

#: how far above the last finite value a continued point is reported, per |g_f . d|
_RISE = 0.1


class LBFGSResult(NamedTuple):
    """The outcome of `minimize_lbfgs`.

    Attributes:
        x: (n,) float64, the minimiser found (always a point with a finite value
            and gradient).
        fun: the objective's value at ``x``.
        grad: (n,) its gradient at ``x``.
        n_iterations: L-BFGS iterations.
        n_evaluations: calls of the objective.
        n_nonfinite: calls where the value or the gradient was not finite.
        success: SciPy's verdict (False too when its last point was not finite).
        message: SciPy's message (prefixed when ``x`` had to fall back).
    """

    x: np.ndarray
    fun: float
    grad: np.ndarray
    n_iterations: int
    n_evaluations: int
    n_nonfinite: int
    success: bool
    message: str


class _Continued:
    """The objective as L-BFGS-B sees it: non-finite points continued from the last
    finite one (module docs); remembers the best finite point."""

    def __init__(self, fun):
        self.fun = fun
        self.last = None  # (x, f, g) of the last finite evaluation
        self.best = None  # (x, f, g) of the lowest finite value
        self.seen: dict[bytes, tuple] = {}  # x -> (x, f, g) of finite points, None if continued
        self.n_evaluations = 0
        self.n_nonfinite = 0

    def __call__(self, x):
        x = np.array(x, np.float64)
        f, g = self.fun(x)
        f, g = float(f), np.asarray(g, np.float64).reshape(x.shape)
        self.n_evaluations += 1
        if np.isfinite(f) and np.all(np.isfinite(g)):
            self.last = self.seen[x.tobytes()] = (x, f, g)
            if self.best is None or f < self.best[1]:
                self.best = self.last
            return f, g
        self.n_nonfinite += 1
        if self.last is None:
            raise ValueError(
                "minimize_lbfgs: the objective or its gradient is not finite at the starting "
                "point; start from a point where both are finite."
            )
        self.seen[x.tobytes()] = None
        x_f, f_f, g_f = self.last
        d = x - x_f
        dd = float(d @ d)
        if dd == 0.0:  # same point, now non-finite: report it as no better
            return f_f + _floor(f_f), g_f
        slope = float(g_f @ d)
        rise = max(slope, 0.0) + _RISE * abs(slope) + _floor(f_f)
        a = rise - slope
        return f_f + rise, g_f + (2.0 * a / dd) * d


def _floor(f: float) -> float:
    """A rise that survives rounding next to ``f``."""
    return 1e-12 * (1.0 + abs(f))


def minimize_lbfgs(
    value_and_grad: Callable[[np.ndarray], tuple[float, np.ndarray]],
    x0,
    maxiter: int,
    *,
    gtol: float = 1e-5,
) -> LBFGSResult:
    """Minimise ``value_and_grad(x) -> (f, grad)`` with SciPy's L-BFGS-B (no bounds).

    ``x0`` (n,) and every ``x`` passed to the objective are float64 host arrays;
    ``f`` is a scalar and ``grad`` (n,). Non-finite values or gradients at trial
    points are handled by the policy of the module docs (continued from the last
    finite point: the step is about halved toward it). ``gtol`` is SciPy's
    projected-gradient tolerance.

    Raises ``ValueError`` when the objective or its gradient is not finite at
    ``x0``.

    Example:
        >>> res = minimize_lbfgs(lambda x: (x @ x, 2 * x), np.ones(3), maxiter=50)
        >>> bool(res.success), np.allclose(res.x, 0.0)
        (True, True)
    """
    from scipy.optimize import minimize

    fun = _Continued(value_and_grad)
    res = minimize(
        fun,
        np.array(x0, np.float64),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": int(maxiter), "gtol": gtol},
    )
    # res.fun is SciPy's last evaluation, not always res.x's (after a failed line
    # search SciPy restores x): read the point's own value back
    success, message = bool(res.success), str(res.message)
    x = np.asarray(res.x, np.float64)
    found = fun.seen.get(x.tobytes(), fun.best)
    x, f, g = fun.best if found is None else found
    if found is None:
        success = False
        message = "L-BFGS-B ended on a non-finite point; returning the best finite one. " + message
    return LBFGSResult(
        x=x,
        fun=f,
        grad=g,
        n_iterations=int(res.nit),
        n_evaluations=fun.n_evaluations,
        n_nonfinite=fun.n_nonfinite,
        success=success,
        message=message,
    )
