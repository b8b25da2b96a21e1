"""Free-amplitude Gaussian likelihood in flux space (photo-z / SED fitting).

Models carry a free normalisation ``a >= 0`` (mass, luminosity): the object
is compared with ``a m_i``. Per row, over the Gaussian bands,

    A = sum m^2/s^2,  B = sum f m/s^2,  C = sum f^2/s^2,
    chi2(a) = A a^2 - 2 B a + C,   a* = B / A,   chi2_min = C - B^2 / A.

* ``mode="profile"``: ``log L = -chi2(a*)/2`` with ``a*`` clipped at 0
  (BPZ, EAZY, LePhare);
* ``mode="marginal"``: the exact integral over ``a >= 0`` with a flat prior,
  ``int_0^inf exp(-chi2(a)/2) da = exp(-chi2_min/2) sqrt(2 pi / A) Phi(B / sqrt(A))``
  (``Phi`` the standard normal CDF, evaluated as ``log_ndtr``): models that fit
  only with a poorly constrained amplitude are penalised by the ``sqrt(2 pi / A)``
  width, and models needing a negative amplitude by ``Phi``.

Both include ``-1/2 sum log(2 pi s^2)`` over the bands used.

Non-detections (``upper`` flags; the row's value is ignored and its error is
the 1-sigma flux limit ``s_lim``):

* ``"zero_flux"`` (BPZ): a Gaussian band with ``f = 0 +- s_lim``, part of
  the amplitude fit;
* ``"censored"``: the amplitude is fitted on the detected bands only, then
  each non-detection adds ``log Phi((n s_lim - a* m) / s_lim)`` with
  ``n = nondetection_nsigma`` — the probability that the model's flux falls
  below the detection threshold (``a*`` the profile amplitude, in both modes).

Error floors on detected bands: ``error_floor_mag`` in quadrature in
magnitudes (``s -> sqrt(s^2 + (f ln10/2.5 floor)^2)``, the usual zero-point
floor) and ``error_floor_frac`` as a fractional flux floor
(``s -> sqrt(s^2 + (frac f)^2)``).

``extensive_targets``: targets that scale with the amplitude (e.g. ``logM``,
``logSFR`` in dex): per (object, model) they are shifted by ``log10 a*``
before any summary, so masses come out per object (CIGALE / FAST++ style).

Per-model noise (`jaxgrid.ModelGrid` ``model_sigma`` s_ij, ``model_bias`` b_ij, both
at the model's unit amplitude): the object is compared with ``a (m_i + b_i)`` under
variances ``s_j^2 + (a s_ij)^2`` — the model's error scales with it — taken at the
amplitude ``a`` fitted without the model error (one reweighting; the sums ``A, B, C``
and the normalisation are then per model, and the profile / marginal formulas above
are applied with those variances). A template error function (`jaxgrid.photometry.
template_error_sigma`) is such an ``s_ij``: EAZY (Brammer et al. 2008, eq. 3) evaluates
the same fractional error at the observed flux instead of the fitted model's.

Use with ``GridFitter(..., use_standardised=False)``: z-scoring fluxes would
break the amplitude model (the fitter refuses it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar, NamedTuple

import equinox as eqx
import jax.numpy as jnp
from jax import lax
from jax.scipy.special import log_ndtr
from jaxtyping import Array, ArrayLike, Bool, Float

from ..core.checks import scalar_param
from .likelihoods import AbstractLikelihood, _plain_log_likelihood_ratio, split_model_noise

__all__ = ["ScaledGaussianLikelihood"]

_LN10_OVER_2_5 = math.log(10.0) / 2.5
_HI = lax.Precision.HIGHEST


class _AmplitudeTerms(NamedTuple):
    """One row's amplitude fit against each model, in the rescaled units of
    `ScaledGaussianLikelihood._amplitude_terms` (fluxes and errors over ``c``, each
    model over ``d``)."""

    m: Float[Array, "cand obs"]  #: models over their largest band value ``d``
    s2s: Float[Array, " obs"]  #: squared errors over ``c^2``
    gauss: Bool[Array, " obs"]  #: bands in the Gaussian amplitude fit
    censored: Bool[Array, " obs"]  #: non-detections added as censored terms
    A: Float[Array, " cand"]  #: ``sum m^2 / s^2``
    A_safe: Float[Array, " cand"]  #: ``A``, 1 where it is not positive
    B: Float[Array, " cand"]  #: ``sum f m / s^2``
    C: Float[Array, "*cand"]  #: ``sum f^2 / s^2`` (per model with model errors)
    a_prime: Float[Array, " cand"]  #: the profile amplitude (>= 0) in rescaled units
    const: Float[Array, "*cand"]  #: ``-1/2 sum log(2 pi s^2)`` over the Gaussian bands (native)
    log_scale: Float[Array, " cand"]  #: ``log(c / d)``: ``a* = a' c / d``
    s2m: Float[Array, "cand obs"] | None  #: ``s2s`` plus the model errors (None: none)


class ScaledGaussianLikelihood(AbstractLikelihood, strict=True):
    """Gaussian likelihood of ``a m_i`` with a free amplitude ``a >= 0`` (see module docs)."""

    error_floor_mag: ArrayLike
    error_floor_frac: ArrayLike
    nondetection_nsigma: ArrayLike
    mode: str = eqx.field(static=True)
    nondetection: str = eqx.field(static=True)
    extensive_targets: tuple = eqx.field(static=True)
    scale_free: ClassVar[bool] = True
    supports_model_noise: ClassVar[bool] = True

    def __init__(
        self,
        mode: str = "marginal",
        error_floor_mag: ArrayLike = 0.0,
        error_floor_frac: ArrayLike = 0.0,
        nondetection: str = "censored",
        nondetection_nsigma: ArrayLike = 1.0,
        extensive_targets: Sequence[str | int] = (),
    ):
        owner = "ScaledGaussianLikelihood"
        if mode not in ("marginal", "profile"):
            raise ValueError(f"{owner}: `mode` must be 'marginal' or 'profile', got {mode!r}.")
        if nondetection not in ("censored", "zero_flux"):
            raise ValueError(
                f"{owner}: `nondetection` must be 'censored' or 'zero_flux', got {nondetection!r}."
            )
        self.mode = mode
        self.nondetection = nondetection
        self.error_floor_mag = scalar_param(error_floor_mag, "error_floor_mag", owner, nonneg=True)
        self.error_floor_frac = scalar_param(
            error_floor_frac, "error_floor_frac", owner, nonneg=True
        )
        self.nondetection_nsigma = scalar_param(
            nondetection_nsigma, "nondetection_nsigma", owner, positive=True
        )
        if isinstance(extensive_targets, (str, int)):
            extensive_targets = (extensive_targets,)
        self.extensive_targets = tuple(extensive_targets)

    def resolve(self, target_names):
        from .priors import resolve_column

        cols = tuple(
            resolve_column(c, target_names, "target", "ScaledGaussianLikelihood")
            for c in self.extensive_targets
        )
        return ScaledGaussianLikelihood(
            self.mode,
            self.error_floor_mag,
            self.error_floor_frac,
            self.nondetection,
            self.nondetection_nsigma,
            cols,
        )

    def extensive_cols(self) -> tuple[int, ...]:
        return tuple(c for c in self.extensive_targets if isinstance(c, int))

    # ---------------------------------------------------------------- core
    def _bands(self, x, sigma, upper):
        usable = jnp.isfinite(sigma) & (sigma > 0)
        limit = jnp.zeros_like(usable) if upper is None else upper & usable
        detected = usable & ~limit & jnp.isfinite(x)
        f = jnp.where(detected, x, 0.0)
        s2 = jnp.where(usable, sigma, 1.0) ** 2
        s2 = (
            s2 + (_LN10_OVER_2_5 * self.error_floor_mag * f) ** 2 + (self.error_floor_frac * f) ** 2
        )
        if self.nondetection == "zero_flux":
            gauss = detected | limit  # a non-detection is f = 0 +- s_lim
            censored = jnp.zeros_like(limit)
        else:
            gauss, censored = detected, limit
        return f, s2, gauss, censored

    def _amplitude_terms(self, x, sigma, models, upper):
        """Sums in rescaled units — fluxes and errors divided by the row's largest error
        ``c``, each model by its largest band value ``d`` — so float32 neither
        overflows nor underflows whatever the flux units (nJy or maggies); the
        chi^2 is unchanged and the amplitude is ``a* = a' c / d``."""
        f, s2, gauss, censored = self._bands(x, sigma, upper)
        used = gauss | censored
        c2 = jnp.max(jnp.where(used, s2, 0.0))
        c2 = jnp.where(c2 > 0, c2, 1.0)
        mu, sm, _ = split_model_noise(x, models)
        d = jnp.max(jnp.abs(mu), axis=-1)
        d = jnp.where(d > 0, d, 1.0)
        m = mu / d[:, None]  # row-independent: computed once per chunk under vmap
        fs, s2s = f / jnp.sqrt(c2), s2 / c2
        w = jnp.where(gauss, 1.0 / s2s, 0.0)
        # A = sum_j m_j^2 w_j, B = sum_j m_j f_j w_j as matrix products: batched over
        # rows they are two GEMMs, computed once (written as band loops, XLA re-fuses
        # them into every consumer and computes them ~3 times).
        A = jnp.dot(w, (m * m).T, precision=_HI)
        B = jnp.dot(fs * w, m.T, precision=_HI)
        C = jnp.sum(fs**2 * w)
        A_safe = jnp.where(A > 0, A, 1.0)
        a_prime = jnp.maximum(jnp.where(A > 0, B / A_safe, 0.0), 0.0)
        const = -0.5 * jnp.sum(jnp.where(gauss, jnp.log(2.0 * jnp.pi * s2), 0.0))
        s2m = None
        if sm is not None:
            # The model's error scales with its amplitude: variances s_j^2 + (a s_ij)^2 at
            # the amplitude fitted without it (one reweighting), then the sums again.
            s2m = s2s + (a_prime[:, None] * sm / d[:, None]) ** 2
            wm = jnp.where(gauss, 1.0 / s2m, 0.0)
            A = jnp.sum(m * m * wm, axis=-1)
            B = jnp.sum(m * fs * wm, axis=-1)
            C = jnp.sum(fs**2 * wm, axis=-1)
            A_safe = jnp.where(A > 0, A, 1.0)
            a_prime = jnp.maximum(jnp.where(A > 0, B / A_safe, 0.0), 0.0)
            const = const - 0.5 * jnp.sum(jnp.where(gauss, jnp.log(s2m / s2s), 0.0), axis=-1)
        log_scale = 0.5 * jnp.log(c2) - jnp.log(d)  # log(c / d): a* = a' c / d
        return _AmplitudeTerms(
            m, s2s, gauss, censored, A, A_safe, B, C, a_prime, const, log_scale, s2m
        )

    def log_likelihood_and_chi2(self, x, sigma, models, upper=None):
        t = self._amplitude_terms(x, sigma, models, upper)
        A, B, a_prime = t.A, t.B, t.a_prime
        chi2_best = jnp.maximum(t.C - 2.0 * B * a_prime + A * a_prime**2, 0.0)
        if self.mode == "profile":
            ll = t.const - 0.5 * chi2_best
        else:
            chi2_min = jnp.maximum(t.C - jnp.where(A > 0, B**2 / t.A_safe, 0.0), 0.0)
            ll = (
                t.const
                - 0.5 * chi2_min
                + 0.5 * jnp.log(2.0 * jnp.pi / t.A_safe)
                + log_ndtr(B / jnp.sqrt(t.A_safe))
                + t.log_scale  # da = (c / d) da'
            )
            ll = jnp.where(A > 0, ll, t.const - 0.5 * t.C)  # a model dark in every band
        if self.nondetection == "censored" and upper is not None:
            s_lim = jnp.sqrt(t.s2s)  # the threshold is the observation's, n s_lim
            s_tot = s_lim if t.s2m is None else jnp.sqrt(t.s2m)
            lim = log_ndtr((self.nondetection_nsigma * s_lim - a_prime[:, None] * t.m) / s_tot)
            ll = ll + jnp.sum(jnp.where(t.censored, lim, 0.0), axis=-1)
        any_band = jnp.any(t.gauss | t.censored)
        return jnp.where(any_band, ll, -jnp.inf), chi2_best

    def log_likelihood_ratio(self, x, sigma, models, ref, upper=None, delta=None):
        return _plain_log_likelihood_ratio(self, x, sigma, models, ref, upper)

    def host_log_likelihood_rows(self, x, sigma, models, upper=None):
        return None

    def to_standardised(self, mean, std):
        return self  # scale free: the fitter never standardises its rows

    def chi2_dof(self, x, sigma, upper=None):
        """The Gaussian bands (non-detections included with ``"zero_flux"``) less the
        fitted amplitude."""
        _, _, gauss, _ = self._bands(x, sigma, upper)
        return jnp.maximum(jnp.sum(gauss) - 1, 0).astype(jnp.int32)

    def target_shift(self, x, sigma, models, upper=None):
        """``log10 a*`` per model, added to extensive targets. A model whose best
        amplitude is 0 gets ``log10(1e-30) + log10(c/d)`` (far outside any bins) —
        such models fit worse than any dimmed one and carry negligible weight."""
        t = self._amplitude_terms(x, sigma, models, upper)
        return jnp.log10(jnp.maximum(t.a_prime, 1e-30)) + t.log_scale / jnp.log(10.0)
