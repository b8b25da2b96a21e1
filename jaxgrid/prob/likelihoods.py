"""Likelihoods: ``log L(x | m_i, sigma)`` for one catalog row against many models.

Each likelihood is an ``eqx.Module`` whose ``log_likelihood(x, sigma, models,
upper=None)`` handles **one** row (``x``, ``sigma``: (P,)) against ``models``
(Nc, P) and returns (Nc,); batch rows with ``jax.vmap``.

Missing data: an observable whose value or error is NaN (or whose bandwidth is
not positive) is left out of that row's likelihood. A row with no usable
observable gets ``-inf`` for every model — the fitter reports it, never NaN.

Upper limits: ``upper`` (P,) bool flags observables whose value is a limit.
A flagged observable contributes the probability that the model lies on the
allowed side of the limit instead of the Gaussian term:

* ``limit_kind="flux"`` (fluxes, sizes — larger is brighter): the true value
  is below the limit, ``log Phi((limit - m) / h)``;
* ``limit_kind="magnitude"`` (magnitudes — larger is fainter): the object is
  *fainter* than the limit, ``log Phi((m - limit) / h)``.

``Phi`` is the standard normal CDF (``jax.scipy.special.log_ndtr``).

Units: all arguments are in the space the likelihood sees — standardised units
when `GridFitter` runs with ``use_standardised=True`` (``bandwidth_floor`` is
therefore in those units too). Native-unit parameters (``s_min``) are mapped
by ``to_standardised``.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.special import log_ndtr
from jaxtyping import Array, ArrayLike, Bool, Float

from ..core.checks import float_dtype, scalar_param

__all__ = [
    "AbstractLikelihood",
    "GaussianProductLikelihood",
    "CensoredSizeLikelihood",
    "CompositeLikelihood",
    "NumbaGaussianProductLikelihood",
    "split_model_noise",
]

_LOG_2PI = math.log(2.0 * math.pi)
_LIMIT_KINDS = ("flux", "magnitude")


def _check_limit_kind(kind: str, owner: str) -> str:
    if kind not in _LIMIT_KINDS:
        raise ValueError(f"{owner}: `limit_kind` must be one of {_LIMIT_KINDS}, got {kind!r}.")
    return kind


class AbstractLikelihood(eqx.Module, strict=True):
    """Declares ``log_likelihood_and_chi2(x (P,), sigma (P,), models (Nc, P), upper=None)
    -> (log L (Nc,), chi2 (Nc,))`` and the hooks below; ``log_likelihood`` and
    ``__call__`` (``log L`` alone) are final.

    A concrete likelihood implements every abstract method (none is optional: strict
    Equinox modules never override a concrete method, so there are no defaults to
    inherit). One that has nothing to say returns: ``chi2 = -2 log L`` and
    ``chi2_dof = -1`` (not a chi-square statistic), the plain difference from
    `_plain_log_likelihood_ratio`, ``None`` from ``host_log_likelihood_rows``, itself
    from ``resolve``/``to_standardised``, ``()`` from ``extensive_cols`` and zeros from
    ``target_shift``.

    ``scale_free`` likelihoods (free amplitude) must see native values: the
    fitter refuses them with ``use_standardised=True``.
    """

    scale_free: ClassVar[bool] = False
    #: handles a grid's per-model noise model: ``models`` then arrive as (Nc, 3P)
    #: ``[observables, model_sigma, model_bias]`` (`split_model_noise`); the fitter
    #: refuses a grid with one for a likelihood without this
    supports_model_noise: ClassVar[bool] = False

    @abc.abstractmethod
    def log_likelihood_and_chi2(
        self,
        x: Float[Array, " obs"],
        sigma: Float[Array, " obs"],
        models: Float[Array, "cand obs"],
        upper: Bool[Array, " obs"] | None = None,
    ) -> tuple[Float[Array, " cand"], Float[Array, " cand"]]:
        """``(log L, chi2)`` of one row against each model (``log L = -inf``: row unusable).

        ``chi2`` is reported as ``chi2_min`` by the batch fitter: Gaussian likelihoods
        return the plain ``sum_j ((m_ij - x_j) / h_j)^2`` over the row's usable,
        non-limit bands, computed in the same pass as ``log L``.
        """

    def log_likelihood(
        self,
        x: Float[Array, " obs"],
        sigma: Float[Array, " obs"],
        models: Float[Array, "cand obs"],
        upper: Bool[Array, " obs"] | None = None,
    ) -> Float[Array, " cand"]:
        """Log-likelihood of one row against each model (``-inf``: row unusable)."""
        return self.log_likelihood_and_chi2(x, sigma, models, upper)[0]

    @abc.abstractmethod
    def log_likelihood_ratio(
        self, x, sigma, models, ref: Float[Array, " obs"], upper=None, delta=None
    ) -> Float[Array, " cand"]:
        """``log L(models) - log L(ref)`` per model, for one reference model ``ref`` (P,).

        The batch step uses it for rows far from every model (``|log L|`` of 1e5 and
        more), where float32 ``log L`` values themselves carry rounding of order 0.01
        and more. The plain difference is `_plain_log_likelihood_ratio`. Gaussian
        likelihoods evaluate it from differences to the reference model, accurate to
        float32 rounding of the *difference* whatever the size of ``log L``; ``delta``
        (Nc, P), when given, is ``models - ref`` computed more accurately by the caller
        (from native values: z-scored models carry their own rounding).
        """

    @abc.abstractmethod
    def host_log_likelihood_rows(self, x, sigma, models, upper=None) -> np.ndarray | None:
        """float64 NumPy ``log L`` of row ``r`` of ``x``/``sigma`` (R, P) against model row
        ``r`` of ``models`` (R, P), or None when this likelihood has none.

        The batch fitter uses it for rows far from every model: their log Z is the
        float32 log Z relative to the best model plus the best model's log weight, whose
        float32 value (``|log L|`` of 1e5 and more) would be off by several nats."""

    @abc.abstractmethod
    def chi2_dof(self, x, sigma, upper=None) -> Array:
        """Degrees of freedom of this row's ``chi2`` (the bands in it less the
        fitted parameters), or ``-1`` when ``chi2`` is not a chi-square statistic.
        The batch fitter flags ``POOR_FIT`` from it."""

    @abc.abstractmethod
    def resolve(self, target_names: Sequence[str]) -> AbstractLikelihood:
        """This likelihood with target names replaced by indices (extensive targets)."""

    @abc.abstractmethod
    def extensive_cols(self) -> tuple[int, ...]:
        """Target columns shifted per (object, model) by `target_shift`."""

    @abc.abstractmethod
    def target_shift(self, x, sigma, models, upper=None) -> Float[Array, " cand"]:
        """Per-model shift of the extensive targets (``log10`` of an amplitude)."""

    @abc.abstractmethod
    def to_standardised(self, mean: np.ndarray, std: np.ndarray) -> AbstractLikelihood:
        """This likelihood with native-unit parameters mapped to z-scored units."""

    def __call__(self, x, sigma, models, upper=None):
        return self.log_likelihood(x, sigma, models, upper)


def _plain_log_likelihood_ratio(lik: AbstractLikelihood, x, sigma, models, ref, upper):
    """``log L(models) - log L(ref)`` as the plain difference of ``lik``'s float32 values."""
    ll = lik.log_likelihood(x, sigma, models, upper)
    return ll - lik.log_likelihood(x, sigma, ref[None, :], upper)[0]


def _no_shift(models: Float[Array, "cand obs"]) -> Float[Array, " cand"]:
    """`AbstractLikelihood.target_shift` of a likelihood without extensive targets."""
    return jnp.zeros(models.shape[0], dtype=models.dtype)


def split_model_noise(
    x: Float[Array, " obs"], models: Float[Array, "cand cols"]
) -> tuple[Array, Array | None, Array | None]:
    """``(mean, model_sigma, model_bias)`` of ``models``: a grid with a per-model noise
    model reaches the likelihood as (Nc, 3P) ``[observables, model_sigma, model_bias]``
    (`jaxgrid.ModelGrid` ``model_sigma``/``model_bias``, in the likelihood's units), the
    mean being ``observables + model_bias``; plain (Nc, P) models give
    ``(models, None, None)``. Decided from the static shapes (P = ``x.shape[-1]``)."""
    p = x.shape[-1]
    if models.shape[-1] == p:
        return models, None, None
    if models.shape[-1] != 3 * p:
        raise ValueError(
            f"models have {models.shape[-1]} columns for a row of {p} observables; expected "
            f"{p}, or {3 * p} with a per-model noise model."
        )
    bias = models[..., 2 * p :]
    return models[..., :p] + bias, models[..., p : 2 * p], bias


def _gaussian_sums(
    x: Float[Array, " obs"],
    sigma: Float[Array, " obs"],
    models: Float[Array, "cand obs"],
    upper: Bool[Array, " obs"] | None,
    floor: Array,
    scale: Array,
    limit_kind: str,
    normalised: bool = True,
) -> tuple[Float[Array, " cand"], Float[Array, " cand"], Array]:
    """``(log L (Nc,), chi2 (Nc,), any usable band)`` of one row (without the
    Gaussians' normalisation ``-1/2 sum log(2 pi h^2)`` when not ``normalised``).

    The loop runs over the (few) bands, so every operation is an (Nc,)-vector
    op that XLA fuses into one pass over the models; under ``vmap`` the model
    columns are shared by all rows. Residuals are evaluated directly — exact
    at high S/N, no matrix-product expansion.
    """
    h = jnp.maximum(scale * sigma, floor)
    usable = jnp.isfinite(x) & jnp.isfinite(h) & (h > 0)
    gauss = usable if upper is None else usable & ~upper
    # Safe stand-ins keep masked entries (and their gradients) free of NaN.
    xs = jnp.where(usable, x, 0.0)
    hs = jnp.where(usable, h, 1.0)
    const = -0.5 * jnp.sum(jnp.where(gauss, jnp.log(2.0 * jnp.pi * hs**2), 0.0))
    const = const if normalised else 0.0
    sign = 1.0 if limit_kind == "flux" else -1.0
    mu, sm, _ = split_model_noise(x, models)
    chi2 = jnp.zeros(mu.shape[0], dtype=mu.dtype)
    limits = jnp.zeros(mu.shape[0], dtype=mu.dtype)
    norm = 0.0  # the per-model normalisation of model errors (none without)
    inv_h = 1.0 / hs  # multiply, not divide, in the (models,) loop
    for j in range(mu.shape[1]):
        r = (mu[:, j] - xs[j]) * inv_h[j]
        if sm is not None:
            # a model error in quadrature: h_ij^2 = h_j^2 + s_ij^2; its normalisation
            # -1/2 log(h_ij^2 / h_j^2) differs between models, so it stays unnormalised too
            q = (sm[:, j] * inv_h[j]) ** 2
            r = r * lax.rsqrt(1.0 + q)
            norm = norm + jnp.where(gauss[j], -0.5 * jnp.log1p(q), 0.0)
        chi2 = chi2 + jnp.where(gauss[j], r * r, 0.0)
        if upper is not None:
            limits = limits + jnp.where(upper[j] & usable[j], log_ndtr(-sign * r), 0.0)
    return const + norm - 0.5 * chi2 + limits, chi2, jnp.any(usable)


def _gaussian_bands(x, sigma, upper, floor, scale):
    """``(h, usable, gauss)`` of one row, as in `_gaussian_sums`."""
    h = jnp.maximum(scale * sigma, floor)
    usable = jnp.isfinite(x) & jnp.isfinite(h) & (h > 0)
    gauss = usable if upper is None else usable & ~upper
    return h, usable, gauss


def _gaussian_ratio(x, sigma, models, ref, upper, floor, scale, limit_kind, delta) -> Array:
    """``log L_i - log L_ref`` of `_gaussian_sums`, from differences to the reference:
    ``r_i^2 - r_ref^2 = d (d + 2 c)`` with ``d = (m_i - m_ref) / h`` and
    ``c = (m_ref - x) / h`` per band. Near the reference (the models that carry
    weight) ``d`` is small and exact to float32 rounding, so the difference is
    accurate even when ``r^2`` is 1e5 (a band far from every model); the
    normalisation constant cancels."""
    h, usable, gauss = _gaussian_bands(x, sigma, upper, floor, scale)
    xs = jnp.where(usable, x, 0.0)
    inv_h = 1.0 / jnp.where(usable, h, 1.0)
    sign = 1.0 if limit_kind == "flux" else -1.0
    mu, sm, bias = split_model_noise(x, models)
    r_mu, r_sm, r_bias = split_model_noise(x, ref[None, :])
    out = jnp.zeros(mu.shape[0], dtype=mu.dtype)
    for j in range(mu.shape[1]):
        if delta is None:
            d = (mu[:, j] - r_mu[0, j]) * inv_h[j]
        elif bias is None:
            d = delta[:, j] * inv_h[j]
        else:  # the caller's accurate observables difference, plus the biases'
            d = (delta[:, j] + (bias[:, j] - r_bias[0, j])) * inv_h[j]
        c = (r_mu[0, j] - xs[j]) * inv_h[j]
        if sm is None:
            term = -0.5 * d * (d + 2.0 * c)
            r, r_ref = (mu[:, j] - xs[j]) * inv_h[j], c
        else:
            # r_i^2 - r_ref^2 = (d^2 + 2 d c) / v_i + c^2 (v_ref - v_i) / (v_i v_ref) in units
            # of h^2, v = 1 + (s / h)^2, v_ref - v_i from (s_ref - s_i)(s_ref + s_i)
            a, b = sm[:, j] * inv_h[j], r_sm[0, j] * inv_h[j]
            v, v_ref = 1.0 + a * a, 1.0 + b * b
            dv = (b - a) * (b + a)
            term = -0.5 * ((d * (d + 2.0 * c)) / v + c * c * dv / (v * v_ref))
            # -1/2 log(v / v_ref): log1p of the small relative change when the two
            # are close, the difference of the logs when they are not (v << v_ref)
            near = jnp.abs(dv) <= 0.5 * v_ref
            lv = jnp.where(
                near,
                jnp.log1p(jnp.clip(-dv / v_ref, -0.5, 0.5)),
                jnp.log1p(a * a) - jnp.log1p(b * b),
            )
            term = term - 0.5 * lv
            r, r_ref = (mu[:, j] - xs[j]) * inv_h[j] * lax.rsqrt(v), c * lax.rsqrt(v_ref)
        out = out + jnp.where(gauss[j], term, 0.0)
        if upper is not None:
            lim = log_ndtr(-sign * r) - log_ndtr(-sign * r_ref)
            out = out + jnp.where(upper[j] & usable[j], lim, 0.0)
    return out


def _gaussian_ratio_or_unusable(lik, x, sigma, models, ref, upper, delta) -> Array:
    """`_gaussian_ratio` of a Gaussian-product likelihood ``lik`` (``-inf``: row unusable)."""
    floor, scale = lik.bandwidth_floor, lik.scale
    _, usable, _ = _gaussian_bands(x, sigma, upper, floor, scale)
    out = _gaussian_ratio(x, sigma, models, ref, upper, floor, scale, lik.limit_kind, delta)
    return jnp.where(jnp.any(usable), out, -jnp.inf)


def _gaussian_dof(lik, x, sigma, upper) -> Array:
    """The chi2 degrees of freedom of a Gaussian-product likelihood: its Gaussian bands."""
    _, _, gauss = _gaussian_bands(x, sigma, upper, lik.bandwidth_floor, lik.scale)
    return jnp.sum(gauss).astype(jnp.int32)


def _host_gaussian_rows(
    x, sigma, models, upper, floor, scale, limit_kind, normalised=True
) -> np.ndarray:
    """`_gaussian_sums` in float64 NumPy, row ``r`` against model ``r`` (R, P) -> (R,)."""
    from scipy.special import log_ndtr as np_log_ndtr

    f64 = np.float64
    x, sigma, models = (np.asarray(a, f64) for a in (x, sigma, models))
    with np.errstate(invalid="ignore", over="ignore"):
        h = np.maximum(float(scale) * sigma, float(floor))
        # values beyond float32's range are missing bands on the device too
        big = np.finfo(np.float32).max
        usable = np.isfinite(x) & np.isfinite(h) & (h > 0) & (np.abs(x) <= big)
        up = np.zeros_like(usable) if upper is None else np.asarray(upper, bool)
        gauss = usable & ~up
        hs = np.where(usable, h, 1.0)
        p = x.shape[1]
        mu, sm = models[:, :p], None
        if models.shape[1] == 3 * p:  # [observables, model_sigma, model_bias]
            mu, sm = models[:, :p] + models[:, 2 * p :], models[:, p : 2 * p]
        v = hs**2 if sm is None else hs**2 + sm**2
        r = (mu - np.where(usable, x, 0.0)) / np.sqrt(v)
        const = -0.5 * np.sum(np.where(gauss, np.log(2.0 * np.pi * hs**2), 0.0), axis=1)
        const = const if normalised else 0.0
        const = const - 0.5 * np.sum(np.where(gauss, np.log(v / hs**2), 0.0), axis=1)
        chi2 = np.sum(np.where(gauss, r * r, 0.0), axis=1)
        sign = 1.0 if limit_kind == "flux" else -1.0
        lim = np.sum(np.where(up & usable, np_log_ndtr(-sign * r), 0.0), axis=1)
    return np.where(usable.any(axis=1), const - 0.5 * chi2 + lim, -np.inf)


class GaussianProductLikelihood(AbstractLikelihood, strict=True):
    """Product of independent Gaussians with a bandwidth floor.

    ``h_j = max(scale * sigma_j, bandwidth_floor)``;
    ``log L_i = -1/2 [sum_j log(2 pi h_j^2) + sum_j (m_ij - x_j)^2 / h_j^2]``
    over the row's usable observables (see module docs for missing data and
    upper limits).

    A grid with a per-model noise model (`jaxgrid.ModelGrid` ``model_sigma`` s_ij,
    ``model_bias`` b_ij) compares the row with ``m_ij + b_ij`` under
    ``h_ij^2 = h_j^2 + s_ij^2`` (normalisation, chi2 and upper limits alike).

    Example:
        >>> lik = GaussianProductLikelihood(bandwidth_floor=0.01)
        >>> lik.log_likelihood(jnp.zeros(2), jnp.ones(2), jnp.zeros((3, 2))).shape
        (3,)
    """

    bandwidth_floor: Array
    scale: Array
    limit_kind: str = eqx.field(static=True)
    supports_model_noise: ClassVar[bool] = True

    def __init__(self, bandwidth_floor: ArrayLike = 0.0, scale: ArrayLike = 1.0, limit_kind="flux"):
        owner = "GaussianProductLikelihood"
        self.bandwidth_floor = scalar_param(bandwidth_floor, "bandwidth_floor", owner, nonneg=True)
        self.scale = scalar_param(scale, "scale", owner, positive=True)
        self.limit_kind = _check_limit_kind(limit_kind, owner)

    def log_likelihood_and_chi2(self, x, sigma, models, upper=None):
        ll, chi2, any_usable = _gaussian_sums(
            x, sigma, models, upper, self.bandwidth_floor, self.scale, self.limit_kind
        )
        return jnp.where(any_usable, ll, -jnp.inf), chi2

    def host_log_likelihood_rows(self, x, sigma, models, upper=None):
        return _host_gaussian_rows(
            x, sigma, models, upper, self.bandwidth_floor, self.scale, self.limit_kind
        )

    def log_likelihood_ratio(self, x, sigma, models, ref, upper=None, delta=None):
        return _gaussian_ratio_or_unusable(self, x, sigma, models, ref, upper, delta)

    def chi2_dof(self, x, sigma, upper=None):
        return _gaussian_dof(self, x, sigma, upper)

    def resolve(self, target_names):
        return self

    def extensive_cols(self):
        return ()

    def target_shift(self, x, sigma, models, upper=None):
        return _no_shift(models)

    def to_standardised(self, mean, std):
        return self  # the floor is in the likelihood's units already


class NumbaGaussianProductLikelihood(AbstractLikelihood, strict=True):
    """BESTA's name for the *unnormalised* Gaussian product:
    ``log L_i = -1/2 sum_j (m_ij - x_j)^2 / h_j^2`` (no ``log(2 pi h^2)`` term).

    The dropped term is one constant per row, so posteriors, kept sets and every
    summary equal `GaussianProductLikelihood`'s; only ``log_evidence`` differs (by
    that constant). JAX, like every jaxgrid likelihood: no numba. ``prefer_batch``
    (BESTA's batching hint) is accepted and means nothing here.

    Example:
        >>> lik = NumbaGaussianProductLikelihood(bandwidth_floor=1e-3)
        >>> lik.log_likelihood(jnp.zeros(2), jnp.ones(2), jnp.zeros((3, 2))).tolist()
        [0.0, 0.0, 0.0]
    """

    bandwidth_floor: Array
    scale: Array
    limit_kind: str = eqx.field(static=True)
    prefer_batch: bool = eqx.field(static=True)
    supports_model_noise: ClassVar[bool] = True

    def __init__(
        self,
        bandwidth_floor: ArrayLike = 0.0,
        scale: ArrayLike = 1.0,
        prefer_batch: bool = False,
        limit_kind: str = "flux",
    ):
        owner = "NumbaGaussianProductLikelihood"
        self.bandwidth_floor = scalar_param(bandwidth_floor, "bandwidth_floor", owner, nonneg=True)
        self.scale = scalar_param(scale, "scale", owner, positive=True)
        self.limit_kind = _check_limit_kind(limit_kind, owner)
        self.prefer_batch = bool(prefer_batch)

    def log_likelihood_and_chi2(self, x, sigma, models, upper=None):
        ll, chi2, any_usable = _gaussian_sums(
            x, sigma, models, upper, self.bandwidth_floor, self.scale, self.limit_kind, False
        )
        return jnp.where(any_usable, ll, -jnp.inf), chi2

    def host_log_likelihood_rows(self, x, sigma, models, upper=None):
        return _host_gaussian_rows(
            x, sigma, models, upper, self.bandwidth_floor, self.scale, self.limit_kind, False
        )

    def log_likelihood_ratio(self, x, sigma, models, ref, upper=None, delta=None):
        return _gaussian_ratio_or_unusable(self, x, sigma, models, ref, upper, delta)

    def chi2_dof(self, x, sigma, upper=None):
        return _gaussian_dof(self, x, sigma, upper)

    def resolve(self, target_names):
        return self

    def extensive_cols(self):
        return ()

    def target_shift(self, x, sigma, models, upper=None):
        return _no_shift(models)

    def to_standardised(self, mean, std):
        return self


class CensoredSizeLikelihood(AbstractLikelihood, strict=True):
    """Gaussian photometry plus a left-censored size (object unresolved).

    ``log L_i = Gaussian(x[phot], m_i[phot]) + log Phi((s_min - s_i) / h_s)``
    where ``s_i = m_i[size_index]`` is the model size, ``s_min`` the
    resolution limit (**native units**; mapped by ``to_standardised``) and
    ``h_s = max(scale * sigma[size_index], bandwidth_floor)``. The censoring
    term is left out when ``h_s`` is not usable (NaN error and no floor).
    """

    phot_indices: tuple[int, ...] = eqx.field(static=True)
    size_index: int = eqx.field(static=True)
    s_min: Array
    bandwidth_floor: Array
    scale: Array
    limit_kind: str = eqx.field(static=True)

    def __init__(
        self,
        phot_indices: Sequence[int],
        size_index: int,
        s_min: ArrayLike,
        bandwidth_floor: ArrayLike = 0.0,
        scale: ArrayLike = 1.0,
        limit_kind: str = "flux",
    ):
        owner = "CensoredSizeLikelihood"
        phot = tuple(int(i) for i in phot_indices)
        if len(set(phot)) != len(phot) or any(i < 0 for i in phot):
            raise ValueError(f"{owner}: `phot_indices` must be distinct non-negative ints.")
        if int(size_index) in phot or int(size_index) < 0:
            raise ValueError(f"{owner}: `size_index` must be a non-negative index not in phot.")
        self.phot_indices = phot
        self.size_index = int(size_index)
        self.s_min = jnp.asarray(s_min, dtype=float_dtype())
        self.bandwidth_floor = scalar_param(bandwidth_floor, "bandwidth_floor", owner, nonneg=True)
        self.scale = scalar_param(scale, "scale", owner, positive=True)
        self.limit_kind = _check_limit_kind(limit_kind, owner)

    def to_standardised(self, mean, std):
        i = self.size_index
        return eqx.tree_at(lambda s: s.s_min, self, (self.s_min - mean[i]) / std[i])

    def log_likelihood_and_chi2(self, x, sigma, models, upper=None):
        phot = list(self.phot_indices)
        up = None if upper is None else upper[jnp.asarray(phot)]
        ll, chi2, any_usable = _gaussian_sums(
            x[jnp.asarray(phot)],
            sigma[jnp.asarray(phot)],
            models[:, phot],
            up,
            self.bandwidth_floor,
            self.scale,
            self.limit_kind,
        )
        h = jnp.maximum(self.scale * sigma[self.size_index], self.bandwidth_floor)
        size_ok = jnp.isfinite(h) & (h > 0)
        hs = jnp.where(size_ok, h, 1.0)
        censor = jnp.where(size_ok, log_ndtr((self.s_min - models[:, self.size_index]) / hs), 0.0)
        return jnp.where(any_usable | size_ok, ll + censor, -jnp.inf), chi2

    def chi2_dof(self, x, sigma, upper=None):
        phot = jnp.asarray(self.phot_indices)
        up = None if upper is None else upper[phot]
        _, _, gauss = _gaussian_bands(x[phot], sigma[phot], up, self.bandwidth_floor, self.scale)
        return jnp.sum(gauss).astype(jnp.int32)

    def log_likelihood_ratio(self, x, sigma, models, ref, upper=None, delta=None):
        return _plain_log_likelihood_ratio(self, x, sigma, models, ref, upper)

    def host_log_likelihood_rows(self, x, sigma, models, upper=None):
        return None

    def resolve(self, target_names):
        return self

    def extensive_cols(self):
        return ()

    def target_shift(self, x, sigma, models, upper=None):
        return _no_shift(models)


class CompositeLikelihood(AbstractLikelihood, strict=True):
    """Sum of likelihood terms (each sees the full row): ``log L = sum_k log L_k``."""

    terms: tuple[AbstractLikelihood, ...]

    def __init__(self, terms: Sequence[AbstractLikelihood]):
        terms = tuple(terms)
        if not terms:
            raise ValueError("CompositeLikelihood: `terms` is empty; give at least one likelihood.")
        for t in terms:
            if not isinstance(t, AbstractLikelihood):
                raise TypeError(
                    f"CompositeLikelihood: every term must be a likelihood, got {type(t).__name__}."
                )
        self.terms = terms

    def to_standardised(self, mean, std):
        return CompositeLikelihood([t.to_standardised(mean, std) for t in self.terms])

    def log_likelihood_and_chi2(self, x, sigma, models, upper=None):
        ll, chi2 = self.terms[0].log_likelihood_and_chi2(x, sigma, models, upper)
        for t in self.terms[1:]:
            ll_t, chi2_t = t.log_likelihood_and_chi2(x, sigma, models, upper)
            ll, chi2 = ll + ll_t, chi2 + chi2_t
        return ll, chi2

    def host_log_likelihood_rows(self, x, sigma, models, upper=None):
        parts = [t.host_log_likelihood_rows(x, sigma, models, upper) for t in self.terms]
        if any(p is None for p in parts):
            return None
        return np.sum(parts, axis=0)

    def log_likelihood_ratio(self, x, sigma, models, ref, upper=None, delta=None):
        out = self.terms[0].log_likelihood_ratio(x, sigma, models, ref, upper, delta)
        for t in self.terms[1:]:
            out = out + t.log_likelihood_ratio(x, sigma, models, ref, upper, delta)
        return out

    def chi2_dof(self, x, sigma, upper=None):
        dofs = [t.chi2_dof(x, sigma, upper) for t in self.terms]
        total = sum(dofs[1:], dofs[0])
        known = jnp.all(jnp.stack([d >= 0 for d in dofs]))
        return jnp.where(known, total, -1).astype(jnp.int32)

    def resolve(self, target_names):
        return self

    def extensive_cols(self):
        return ()

    def target_shift(self, x, sigma, models, upper=None):
        return _no_shift(models)
