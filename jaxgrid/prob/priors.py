"""Priors over the grid's targets: ``log pi(t_i)`` for every candidate model.

Two kinds, told apart by type (never by probing):

* `AbstractPrior`: ``log_prob_for_models(targets (Nc, Q)) -> (Nc,)``; depends
  on the models' targets only.
* `AbstractObservableDependentPrior` (also known by its former name
  `ObservableDependentPrior`): ``log_prob_for_models(targets, observables, x)``
  where ``observables`` (Nc, P) are the models' **native** observables and
  ``x`` (P,) the object's **native** observed row. Kind (a) uses the models'
  observables (e.g. p(z | model magnitude)); kind (b) uses the observed row
  (e.g. p(z | observed magnitude)); the fitter vmaps the row in.

All formulas are exact, normalised densities in the target's own units, and
``-inf`` outside their support. Hyperparameters are array fields, so they can
be differentiated and changed without recompiling. ``target_col`` accepts a
name or an index; names are resolved against the grid by ``resolve``
(`GridFitter` does it for you).

Empirical priors are immutable: ``fit_from_targets`` / ``fit_from_grid``
**return** the fitted prior (``prior = prior.fit_from_targets(grid)``).
"""

import abc
import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from equinox import AbstractVar
from jaxtyping import Array, ArrayLike, Float

from ..core.bins import bin_index, check_edges, host_bin_index
from ..core.checks import float_dtype, is_traced, scalar_param

__all__ = [
    "AbstractPrior",
    "AbstractObservableDependentPrior",
    "ObservableDependentPrior",
    "FlatPrior",
    "GaussianPrior1D",
    "UniformPrior1D",
    "DeltaPrior1D",
    "ExponentialPrior1D",
    "ExponentialTruncatedPrior1D",
    "PowerLawPrior1D",
    "EmpiricalHistogramPrior1D",
    "EmpiricalFlatteningPriorND",
    "MagDependentRedshiftPrior",
    "CompositePrior",
    "ObservableCompositePrior",
    "prior_log_prob",
    "resolve_column",
]

Column = str | int


def _is_grid(value: Any) -> bool:
    """A model grid (duck-typed: the host's `ModelGrid` is not imported by the core)."""
    return all(hasattr(value, a) for a in ("get_target", "get_observable", "target_names"))


def resolve_column(col: Column, names: Sequence[str] | None, what: str, owner: str) -> int:
    """The index of column ``col`` (a name or an index) in ``names``; ``owner`` and
    ``what`` name it in the error."""
    if isinstance(col, (int, np.integer)) and not isinstance(col, bool):
        if names is not None and not -len(names) <= int(col) < len(names):
            raise IndexError(f"{owner}: {what} index {col} out of range for {list(names)}.")
        return int(col) if names is None else int(col) % len(names)
    if isinstance(col, str):
        if names is None:
            raise ValueError(
                f"{owner}: {what} {col!r} is a name; give the grid's names (target_names=...) "
                "or use an integer index."
            )
        if col not in names:
            raise KeyError(f"{owner}: unknown {what} {col!r}; known: {list(names)}.")
        return list(names).index(col)
    raise TypeError(f"{owner}: {what} must be a name or an int, got {type(col).__name__}.")


def _column(col: Column, owner: str) -> int:
    if isinstance(col, str):
        raise ValueError(
            f"{owner}: target column {col!r} is unresolved; call prior.resolve(target_names) "
            "(GridFitter does this) or pass an integer index."
        )
    return col


def _target_values(targets: Any, col: Column, owner: str) -> np.ndarray:
    """Host float64 values of one target from a ModelGrid, (N, Q) or (N,) array."""
    if _is_grid(targets):
        return np.asarray(targets.get_target(col), dtype=np.float64)
    arr = np.asarray(targets, dtype=np.float64)
    if arr.ndim == 1:
        return arr
    if arr.ndim != 2:
        raise ValueError(f"{owner}: `targets` must be (N,) or (N, Q), got shape {arr.shape}.")
    return arr[:, _column(col, owner)]


def _optional_array(a: Any) -> Array | None:
    return None if a is None else jnp.asarray(a, dtype=float_dtype())


def _fit_weights(weights: Any, n: int, owner: str) -> np.ndarray:
    if weights is None:
        return np.ones(n)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"{owner}: `weights` must be ({n},) finite and non-negative.")
    return w


# ------------------------------------------------------------------ bases
# Strict Equinox modules: abstract or final, and no concrete method is overridden, so
# `resolve` is declared abstract and every concrete prior implements it.
class AbstractPrior(eqx.Module, strict=True):
    """Declares ``log_prob_for_models(targets (Nc, Q)) -> (Nc,)`` and ``resolve``."""

    @abc.abstractmethod
    def log_prob_for_models(self, targets: Float[Array, "cand targets"]) -> Float[Array, " cand"]:
        """Log prior density of each model's targets."""

    @abc.abstractmethod
    def resolve(self, target_names: Sequence[str], observable_names=None) -> "AbstractPrior":
        """This prior with column names replaced by indices into the grid's columns
        (itself when it names no column)."""


class AbstractObservableDependentPrior(eqx.Module, strict=True):
    """Declares ``log_prob_for_models(targets (Nc,Q), observables (Nc,P), x (P,)) -> (Nc,)``
    and ``resolve``.

    ``observables`` are the candidate models' native observables and ``x`` the
    object's native observed row (NaN where missing).
    """

    @abc.abstractmethod
    def log_prob_for_models(
        self,
        targets: Float[Array, "cand targets"],
        observables: Float[Array, "cand obs"] | None = None,
        x: Float[Array, " obs"] | None = None,
    ) -> Float[Array, " cand"]:
        """Log prior density of each model given the models' observables and the
        observed row ``x``; a prior that needs one that is not given raises
        ``ValueError`` (as BESTA's observable-dependent priors)."""

    @abc.abstractmethod
    def resolve(self, target_names, observable_names=None) -> "AbstractObservableDependentPrior":
        """This prior with column names replaced by indices into the grid's columns."""


#: The former name of `AbstractObservableDependentPrior` (the same class).
ObservableDependentPrior = AbstractObservableDependentPrior


def require_input(value, name: str, owner: str):
    """``value``, or a ``ValueError`` telling the caller to pass ``name``."""
    if value is None:
        raise ValueError(
            f"{owner}.log_prob_for_models: this prior depends on {name}; pass "
            f"log_prob_for_models(targets, observables=..., x=...) (GridFitter does)."
        )
    return value


def prior_log_prob(prior, targets, observables, x) -> Float[Array, " cand"]:
    """``log pi`` for either kind of prior (dispatch on the type)."""
    if isinstance(prior, AbstractObservableDependentPrior):
        return prior.log_prob_for_models(targets, observables, x)
    if isinstance(prior, AbstractPrior):
        return prior.log_prob_for_models(targets)
    raise TypeError(
        f"prior must be an AbstractPrior or AbstractObservableDependentPrior, got {prior!r}."
    )


class _AbstractPrior1D(AbstractPrior, strict=True):
    """Abstract base of priors on one target column (``target_col``, a static field of
    each concrete prior)."""

    # (this file has no `from __future__ import annotations`: Equinox does not read a
    # stringified AbstractVar)
    target_col: AbstractVar[Column]

    def resolve(self, target_names, observable_names=None):
        owner = type(self).__name__
        return dataclasses.replace(
            self, target_col=resolve_column(self.target_col, target_names, "target", owner)
        )

    def _t(self, targets: Array) -> Array:
        return targets[:, _column(self.target_col, type(self).__name__)]


# --------------------------------------------------------- analytic priors
class FlatPrior(AbstractPrior, strict=True):
    """``log pi = 0`` for every model (the grid sampling itself is the prior)."""

    def log_prob_for_models(self, targets):
        return jnp.zeros(targets.shape[0], dtype=targets.dtype)

    def resolve(self, target_names, observable_names=None):
        return self


class GaussianPrior1D(_AbstractPrior1D, strict=True):
    """``log pi(t) = -1/2 ((t - mu)/sigma)^2 - log(sigma) - 1/2 log(2 pi)``."""

    target_col: Column = eqx.field(static=True)
    mu: Array
    sigma: Array

    def __init__(self, target_col: Column, mu: ArrayLike, sigma: ArrayLike):
        self.target_col = target_col
        self.mu = scalar_param(mu, "mu", "GaussianPrior1D")
        self.sigma = scalar_param(sigma, "sigma", "GaussianPrior1D", positive=True)

    def log_prob_for_models(self, targets):
        z = (self._t(targets) - self.mu) / self.sigma
        return -0.5 * z**2 - jnp.log(self.sigma) - 0.5 * math.log(2.0 * math.pi)


def _inside(t: Array, low: Array, high: Array, logp: Array) -> Array:
    return jnp.where((t >= low) & (t <= high), logp, -jnp.inf)


def _check_range(low, high, owner: str, lo_name="low", hi_name="high") -> None:
    if not (is_traced(low) or is_traced(high)) and not float(np.asarray(high)) > float(
        np.asarray(low)
    ):
        raise ValueError(f"{owner}: need `{hi_name}` > `{lo_name}`, got {low}, {high}.")


class UniformPrior1D(_AbstractPrior1D, strict=True):
    """``pi(t) = 1 / (high - low)`` on ``[low, high]``, 0 outside."""

    target_col: Column = eqx.field(static=True)
    low: Array
    high: Array

    def __init__(self, target_col: Column, low: ArrayLike, high: ArrayLike):
        _check_range(low, high, "UniformPrior1D")
        self.target_col = target_col
        self.low = scalar_param(low, "low", "UniformPrior1D")
        self.high = scalar_param(high, "high", "UniformPrior1D")

    def log_prob_for_models(self, targets):
        t = self._t(targets)
        return _inside(t, self.low, self.high, -jnp.log(self.high - self.low))


class DeltaPrior1D(_AbstractPrior1D, strict=True):
    """A delta function made usable on a grid: uniform on ``value ± tolerance``.

    ``pi(t) = 1 / (2 tolerance)`` for ``|t - value| <= tolerance``, 0 outside.
    """

    target_col: Column = eqx.field(static=True)
    value: Array
    tolerance: Array

    def __init__(self, target_col: Column, value: ArrayLike, tolerance: ArrayLike = 1e-6):
        self.target_col = target_col
        self.value = scalar_param(value, "value", "DeltaPrior1D")
        self.tolerance = scalar_param(tolerance, "tolerance", "DeltaPrior1D", positive=True)

    def log_prob_for_models(self, targets):
        t = self._t(targets)
        lo, hi = self.value - self.tolerance, self.value + self.tolerance
        return _inside(t, lo, hi, -jnp.log(2.0 * self.tolerance))


class ExponentialPrior1D(_AbstractPrior1D, strict=True):
    """``pi(t) = exp(-t / scale) / scale`` for ``t >= 0``."""

    target_col: Column = eqx.field(static=True)
    scale: Array

    def __init__(self, target_col: Column, scale: ArrayLike):
        self.target_col = target_col
        self.scale = scalar_param(scale, "scale", "ExponentialPrior1D", positive=True)

    def log_prob_for_models(self, targets):
        t = self._t(targets)
        return jnp.where(t >= 0, -t / self.scale - jnp.log(self.scale), -jnp.inf)


class ExponentialTruncatedPrior1D(_AbstractPrior1D, strict=True):
    """``pi(t) = exp(-t/scale) / (scale (1 - exp(-t_max/scale)))`` on ``[0, t_max]``."""

    target_col: Column = eqx.field(static=True)
    scale: Array
    t_max: Array

    def __init__(self, target_col: Column, scale: ArrayLike, t_max: ArrayLike):
        owner = "ExponentialTruncatedPrior1D"
        self.target_col = target_col
        self.scale = scalar_param(scale, "scale", owner, positive=True)
        self.t_max = scalar_param(t_max, "t_max", owner, positive=True)

    def log_prob_for_models(self, targets):
        t = self._t(targets)
        log_norm = jnp.log(self.scale) + jnp.log(-jnp.expm1(-self.t_max / self.scale))
        return _inside(t, 0.0, self.t_max, -t / self.scale - log_norm)


class PowerLawPrior1D(_AbstractPrior1D, strict=True):
    """``pi(t) = t^alpha / Z`` on ``[t_min, t_max]``.

    ``Z = (t_max^(alpha+1) - t_min^(alpha+1)) / (alpha+1)``, evaluated stably
    as ``t_min^b expm1(b L) / b`` with ``b = alpha + 1``, ``L = log(t_max /
    t_min)``; at ``alpha = -1`` this is the log-uniform ``Z = L`` (the limit,
    not a division by zero). ``t_min = 0`` is allowed for ``alpha > -1``.
    """

    target_col: Column = eqx.field(static=True)
    alpha: Array
    t_min: Array
    t_max: Array

    def __init__(self, target_col: Column, alpha: ArrayLike, t_min: ArrayLike, t_max: ArrayLike):
        owner = "PowerLawPrior1D"
        _check_range(t_min, t_max, owner, "t_min", "t_max")
        self.target_col = target_col
        self.alpha = scalar_param(alpha, "alpha", owner)
        self.t_min = scalar_param(t_min, "t_min", owner, nonneg=True)
        self.t_max = scalar_param(t_max, "t_max", owner, positive=True)
        if not (is_traced(alpha) or is_traced(t_min)):
            if float(np.asarray(t_min)) == 0.0 and float(np.asarray(alpha)) <= -1.0:
                raise ValueError(
                    f"{owner}: alpha <= -1 is not integrable from t_min = 0; use t_min > 0."
                )

    def _log_norm(self) -> Array:
        b = self.alpha + 1.0
        pos = self.t_min > 0
        tmin = jnp.where(pos, self.t_min, 1.0)
        L = jnp.log(self.t_max / tmin)
        small = jnp.abs(b * L) < 1e-6
        b_safe = jnp.where(small, 1.0, b)
        # log(expm1(bL)/b) > its series near b = 0 (double-where keeps grads finite).
        log_ratio = jnp.where(
            small, jnp.log(L) + jnp.log1p(0.5 * b * L), jnp.log(jnp.expm1(b_safe * L) / b_safe)
        )
        general = b * jnp.log(tmin) + log_ratio
        b_pos = jnp.where(b > 0, b, 1.0)
        from_zero = b * jnp.log(self.t_max) - jnp.log(b_pos)
        return jnp.where(pos, general, from_zero)

    def log_prob_for_models(self, targets):
        t = self._t(targets)
        t_safe = jnp.where(t > 0, t, 1.0)
        a_log_t = jnp.where(
            t > 0, self.alpha * jnp.log(t_safe), jnp.where(self.alpha == 0, 0.0, -jnp.inf)
        )
        return _inside(t, self.t_min, self.t_max, a_log_t - self._log_norm())


# -------------------------------------------------------- empirical priors
class EmpiricalHistogramPrior1D(_AbstractPrior1D, strict=True):
    """Piecewise-constant density learned from a sample of one target.

    ``fit_from_targets`` histograms the (weighted) values over ``edges``
    (values outside take the edge bins): bin mass ``m_k``, density
    ``d_k = max(m_k / width_k, density_floor)``, renormalised so
    ``sum_k d_k width_k = 1``. ``log pi(t) = log d_{bin(t)}``, edge bins for
    values outside. Stores ``log_mass`` (fitted masses) and ``log_density``.
    """

    target_col: Column = eqx.field(static=True)
    edges: Array
    log_mass: Array | None
    log_density: Array | None
    density_floor: float = eqx.field(static=True)

    def __init__(
        self,
        target_col: Column,
        edges: ArrayLike,
        density_floor: float = 1e-12,
        log_mass: ArrayLike | None = None,
        log_density: ArrayLike | None = None,
    ):
        owner = "EmpiricalHistogramPrior1D"
        self.target_col = target_col
        self.edges = jnp.asarray(check_edges(edges, "edges", owner), dtype=float_dtype())
        self.density_floor = float(density_floor)
        if not self.density_floor >= 0:
            raise ValueError(f"{owner}: `density_floor` must be >= 0.")
        self.log_mass = _optional_array(log_mass)
        self.log_density = _optional_array(log_density)

    def fit_from_targets(self, targets: Any, weights: Any = None) -> "EmpiricalHistogramPrior1D":
        """The fitted prior, from a ModelGrid, an (N, Q) or an (N,) array of targets."""
        owner = "EmpiricalHistogramPrior1D"
        t = _target_values(targets, self.target_col, owner)
        w = _fit_weights(weights, t.size, owner)
        edges = np.asarray(self.edges, dtype=np.float64)
        k = edges.size - 1
        mass = np.bincount(host_bin_index(t, edges, "clamp"), weights=w, minlength=k)
        if mass.sum() <= 0:
            raise ValueError(f"{owner}: no weight to fit (empty sample or all weights zero).")
        mass = mass / mass.sum()
        dens = np.maximum(mass / np.diff(edges), self.density_floor)
        dens = dens / np.sum(dens * np.diff(edges))
        with np.errstate(divide="ignore"):
            log_mass = np.log(mass)
        return dataclasses.replace(self, log_mass=log_mass, log_density=np.log(dens))

    def log_prob_for_models(self, targets):
        if self.log_density is None:
            raise RuntimeError(
                "EmpiricalHistogramPrior1D is not fitted: prior = prior.fit_from_targets(grid)."
            )
        return self.log_density[bin_index(self._t(targets), self.edges, "clamp")]


class EmpiricalFlatteningPriorND(AbstractPrior, strict=True):
    """Inverse-occupancy prior that cancels uneven grid sampling in target space.

    With (weighted) counts ``n_c`` of the fit sample per cell ``c`` of volume
    ``V_c`` (``n`` = total weight), the sampling density is
    ``rho_c = max(n_c, count_floor) / (n V_c)``, floored at ``density_floor``.
    The prior is ``pi(t) = (1 / rho_{c(t)}) / sum_{c: n_c > 0} V_c / rho_c`` —
    a density normalised over the occupied cells — so grid density x prior
    is uniform over the occupied region.

    * ``mode="joint"``: cells of the D-dimensional histogram;
    * ``mode="factorised"``: product of the D one-dimensional versions.

    Values outside the edges take the edge bins.
    """

    target_cols: tuple[Column, ...] = eqx.field(static=True)
    edges_list: tuple[Array, ...]
    log_table: Array | None
    mode: str = eqx.field(static=True)
    density_floor: float = eqx.field(static=True)
    count_floor: float = eqx.field(static=True)

    def __init__(
        self,
        target_cols: Sequence[Column],
        edges_list: Sequence[ArrayLike],
        mode: str = "factorised",
        density_floor: float = 1e-12,
        count_floor: float = 1e-3,
        log_table: ArrayLike | None = None,
    ):
        owner = "EmpiricalFlatteningPriorND"
        cols = tuple(target_cols)
        if isinstance(target_cols, (str, int)) or not cols:
            raise ValueError(f"{owner}: `target_cols` must be a non-empty list of columns.")
        if len(edges_list) != len(cols):
            raise ValueError(
                f"{owner}: {len(cols)} target_cols but {len(edges_list)} edge arrays in "
                "`edges_list`; give one edge array per column."
            )
        if mode not in ("factorised", "joint"):
            raise ValueError(f"{owner}: `mode` must be 'factorised' or 'joint', got {mode!r}.")
        if not (density_floor >= 0 and count_floor > 0):
            raise ValueError(f"{owner}: need density_floor >= 0 and count_floor > 0.")
        self.target_cols = cols
        self.edges_list = tuple(
            jnp.asarray(check_edges(e, f"edges_list[{i}]", owner), dtype=float_dtype())
            for i, e in enumerate(edges_list)
        )
        self.mode = mode
        self.density_floor = float(density_floor)
        self.count_floor = float(count_floor)
        self.log_table = None if log_table is None else jnp.asarray(log_table, dtype=float_dtype())

    def resolve(self, target_names, observable_names=None):
        owner = type(self).__name__
        cols = tuple(resolve_column(c, target_names, "target", owner) for c in self.target_cols)
        return dataclasses.replace(self, target_cols=cols)

    def _table(self, t: np.ndarray, w: np.ndarray, edges: list[np.ndarray]) -> np.ndarray:
        shape = tuple(e.size - 1 for e in edges)
        idx = tuple(host_bin_index(t[:, d], e, "clamp") for d, e in enumerate(edges))
        counts = np.zeros(shape)
        np.add.at(counts, idx, w)
        vol = np.ones(shape)
        for d, e in enumerate(edges):
            s = [1] * len(edges)
            s[d] = -1
            vol = vol * np.diff(e).reshape(s)
        rho = np.maximum(np.maximum(counts, self.count_floor) / (w.sum() * vol), self.density_floor)
        norm = np.sum((vol / rho)[counts > 0])
        return -np.log(rho) - np.log(norm)

    def fit_from_targets(self, targets: Any, weights: Any = None) -> "EmpiricalFlatteningPriorND":
        """The fitted prior, from a ModelGrid or an (N, Q) targets array."""
        owner = type(self).__name__
        if _is_grid(targets):
            t = np.stack(
                [np.asarray(targets.get_target(c), np.float64) for c in self.target_cols], 1
            )
        else:
            arr = np.asarray(targets, dtype=np.float64)
            if arr.ndim != 2:
                raise ValueError(f"{owner}: `targets` must be (N, Q), got {arr.shape}.")
            t = arr[:, [_column(c, owner) for c in self.target_cols]]
        w = _fit_weights(weights, t.shape[0], owner)
        if w.sum() <= 0:
            raise ValueError(f"{owner}: no weight to fit (empty sample or all weights zero).")
        edges = [np.asarray(e, dtype=np.float64) for e in self.edges_list]
        if self.mode == "joint":
            table = self._table(t, w, edges).reshape(-1)
        else:
            table = np.concatenate([self._table(t[:, [d]], w, [e]) for d, e in enumerate(edges)])
        return dataclasses.replace(self, log_table=table)

    def log_prob_for_models(self, targets):
        if self.log_table is None:
            raise RuntimeError(
                "EmpiricalFlatteningPriorND is not fitted: prior = prior.fit_from_targets(grid)."
            )
        owner = type(self).__name__
        idx = [
            bin_index(targets[:, _column(c, owner)], e, "clamp")
            for c, e in zip(self.target_cols, self.edges_list, strict=True)
        ]
        sizes = [e.shape[0] - 1 for e in self.edges_list]
        if self.mode == "joint":
            flat = jnp.ravel_multi_index(tuple(idx), tuple(sizes), mode="clip")
            return self.log_table[flat]
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        return sum(self.log_table[o + i] for o, i in zip(offsets, idx, strict=True))


class MagDependentRedshiftPrior(AbstractObservableDependentPrior, strict=True):
    """``p(z | m)``: redshift prior conditional on a magnitude, learned from the grid.

    ``fit_from_grid`` makes the 2-D (weighted) histogram of the models'
    magnitude (observable ``mag_observable_index``) and redshift (target
    ``z_col``) over ``m_edges`` x ``z_edges`` (values outside take edge bins).
    Each magnitude row becomes a density in z, floored at ``density_floor``
    and renormalised (``sum_k p_k dz_k = 1``); an empty magnitude row uses the
    marginal p(z).

    ``magnitude_from="models"`` (kind a): each model's own magnitude picks its
    row. ``magnitude_from="observed"`` (kind b): the object's observed
    magnitude ``x[mag_observable_index]`` picks one row for all models; a
    missing (NaN) magnitude falls back to the marginal p(z).
    """

    z_col: Column = eqx.field(static=True)
    mag_observable_index: Column = eqx.field(static=True)
    z_edges: Array
    m_edges: Array
    log_table: Array | None
    log_marginal: Array | None
    density_floor: float = eqx.field(static=True)
    magnitude_from: str = eqx.field(static=True)

    def __init__(
        self,
        z_col: Column,
        mag_observable_index: Column,
        z_edges: ArrayLike,
        m_edges: ArrayLike,
        density_floor: float = 1e-12,
        magnitude_from: str = "models",
        log_table: ArrayLike | None = None,
        log_marginal: ArrayLike | None = None,
    ):
        owner = "MagDependentRedshiftPrior"
        if magnitude_from not in ("models", "observed"):
            raise ValueError(f"{owner}: `magnitude_from` must be 'models' or 'observed'.")
        self.z_col = z_col
        self.mag_observable_index = mag_observable_index
        self.z_edges = jnp.asarray(check_edges(z_edges, "z_edges", owner), dtype=float_dtype())
        self.m_edges = jnp.asarray(check_edges(m_edges, "m_edges", owner), dtype=float_dtype())
        self.density_floor = float(density_floor)
        self.magnitude_from = magnitude_from
        self.log_table = _optional_array(log_table)
        self.log_marginal = _optional_array(log_marginal)

    def resolve(self, target_names, observable_names=None):
        owner = type(self).__name__
        mag = self.mag_observable_index
        if isinstance(mag, str) or observable_names is not None:
            mag = resolve_column(mag, observable_names, "observable", owner)
        return dataclasses.replace(
            self,
            z_col=resolve_column(self.z_col, target_names, "target", owner),
            mag_observable_index=mag,
        )

    def _density(self, counts: np.ndarray, dz: np.ndarray) -> np.ndarray:
        p = np.maximum(counts / (counts.sum() * dz), self.density_floor)
        return p / np.sum(p * dz)

    def fit_from_grid(self, observables: Any, targets: Any = None, weights: Any = None):
        """The fitted prior from a ModelGrid, or from (N, P) observables and (N, Q) targets."""
        owner = type(self).__name__
        if _is_grid(observables):
            grid = observables
            weights = grid.weights if weights is None else weights
            m = np.asarray(grid.get_observable(self.mag_observable_index), np.float64)
            z = np.asarray(grid.get_target(self.z_col), np.float64)
        else:
            if targets is None:
                raise ValueError(f"{owner}: give `targets` with the observables array.")
            obs = np.asarray(observables, dtype=np.float64)
            m = obs[:, _column(self.mag_observable_index, owner)]
            z = _target_values(targets, self.z_col, owner)
        w = _fit_weights(None if weights is None else np.asarray(weights), z.size, owner)
        ze, me = np.asarray(self.z_edges, np.float64), np.asarray(self.m_edges, np.float64)
        counts = np.zeros((me.size - 1, ze.size - 1))
        np.add.at(counts, (host_bin_index(m, me, "clamp"), host_bin_index(z, ze, "clamp")), w)
        if counts.sum() <= 0:
            raise ValueError(f"{owner}: no weight to fit.")
        dz = np.diff(ze)
        marginal = self._density(counts.sum(axis=0), dz)
        rows = [self._density(c, dz) if c.sum() > 0 else marginal for c in counts]
        return dataclasses.replace(
            self, log_table=np.log(np.stack(rows)), log_marginal=np.log(marginal)
        )

    def log_prob_for_models(self, targets, observables=None, x=None):
        if self.log_table is None:
            raise RuntimeError(
                "MagDependentRedshiftPrior is not fitted: prior = prior.fit_from_grid(grid)."
            )
        owner = type(self).__name__
        iz = bin_index(targets[:, _column(self.z_col, owner)], self.z_edges, "clamp")
        mcol = _column(self.mag_observable_index, owner)
        if self.magnitude_from == "models":
            observables = require_input(observables, "the models' observables", owner)
            return self.log_table[bin_index(observables[:, mcol], self.m_edges, "clamp"), iz]
        m_obs = require_input(x, "the observed row x", owner)[mcol]
        m_safe = jnp.where(jnp.isfinite(m_obs), m_obs, 0.0)
        row = self.log_table[bin_index(m_safe, self.m_edges, "clamp")]
        return jnp.where(jnp.isfinite(m_obs), row[iz], self.log_marginal[iz])


# -------------------------------------------------------------- composites
def _composite_weights(n: int, weights, owner: str) -> tuple[float, ...]:
    if weights is None:
        return (1.0,) * n
    w = tuple(float(v) for v in weights)
    if len(w) != n:
        raise ValueError(f"{owner}: {n} priors but {len(w)} weights.")
    if any(not math.isfinite(v) or v < 0 for v in w):
        raise ValueError(f"{owner}: `weights` must be finite and non-negative, got {w}.")
    return w


def _weighted_sum(terms, weights, n_models: int, dtype) -> Array:
    total = jnp.zeros(n_models, dtype=dtype)
    for lp, wk in zip(terms, weights, strict=True):
        total = total + (lp if wk == 1.0 else wk * lp)
    return total


class CompositePrior(AbstractPrior, strict=True):
    """``log pi = sum_k w_k log pi_k`` over plain priors (zero-weight terms skipped).

    Observable-dependent members are rejected (``TypeError``): use
    `ObservableCompositePrior` for those.
    """

    priors: tuple[AbstractPrior, ...]
    weights: tuple[float, ...] = eqx.field(static=True)

    def __init__(self, priors: Sequence[AbstractPrior], weights: Sequence[float] | None = None):
        priors = tuple(priors)
        for p in priors:
            if isinstance(p, AbstractObservableDependentPrior):
                raise TypeError(
                    f"CompositePrior: {type(p).__name__} depends on observables; use "
                    "ObservableCompositePrior to combine it."
                )
            if not isinstance(p, AbstractPrior):
                raise TypeError(f"CompositePrior: {p!r} is not a prior.")
        self.weights = _composite_weights(len(priors), weights, "CompositePrior")
        self.priors = priors

    def resolve(self, target_names, observable_names=None):
        return CompositePrior(
            [p.resolve(target_names, observable_names) for p in self.priors], self.weights
        )

    def log_prob_for_models(self, targets):
        kept = [(p, w) for p, w in zip(self.priors, self.weights, strict=True) if w != 0.0]
        terms = [p.log_prob_for_models(targets) for p, _ in kept]
        return _weighted_sum(terms, [w for _, w in kept], targets.shape[0], targets.dtype)


class ObservableCompositePrior(AbstractObservableDependentPrior, strict=True):
    """``log pi = sum_k w_k log pi_k`` over plain and observable-dependent priors."""

    priors: tuple[AbstractPrior | AbstractObservableDependentPrior, ...]
    weights: tuple[float, ...] = eqx.field(static=True)

    def __init__(self, priors, weights: Sequence[float] | None = None):
        priors = tuple(priors)
        for p in priors:
            if not isinstance(p, AbstractPrior | AbstractObservableDependentPrior):
                raise TypeError(f"ObservableCompositePrior: {p!r} is not a prior.")
        self.weights = _composite_weights(len(priors), weights, "ObservableCompositePrior")
        self.priors = priors

    def resolve(self, target_names, observable_names=None):
        return ObservableCompositePrior(
            [p.resolve(target_names, observable_names) for p in self.priors], self.weights
        )

    def log_prob_for_models(self, targets, observables=None, x=None):
        # each member asks for what it needs (ValueError from it when missing)
        kept = [(p, w) for p, w in zip(self.priors, self.weights, strict=True) if w != 0.0]
        terms = [prior_log_prob(p, targets, observables, x) for p, _ in kept]
        return _weighted_sum(terms, [w for _, w in kept], targets.shape[0], targets.dtype)
