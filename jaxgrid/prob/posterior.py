"""Posterior weights of the models for one row — pure, differentiable JAX.

    log p(i | x) = log L(x | m_i, sigma) + log pi(t_i [, x]) + log w_i - log Z(x)
    log Z(x)     = logsumexp_i(log L + log pi + log w)

``x``, ``sigma`` and ``models`` are in the space the likelihood sees (native or
standardised); observable-dependent priors receive the native model
observables ``models_native`` and the native row ``x_native`` (both default
to ``models`` and ``x``, i.e. a native-space fit).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
from jax.scipy.special import logsumexp
from jaxtyping import Array, Bool, Float

from .likelihoods import AbstractLikelihood
from .priors import AbstractObservableDependentPrior, AbstractPrior, prior_log_prob

__all__ = [
    "log_weights_and_chi2",
    "log_posterior_terms",
    "posterior_over_models",
    "log_evidence",
    "normalise_log_weights",
]


def _resolved(prior, target_names: Sequence[str] | None):
    return prior if target_names is None else prior.resolve(target_names)


def log_posterior_terms(
    x: Float[Array, " obs"],
    sigma: Float[Array, " obs"],
    models: Float[Array, "cand obs"],
    targets: Float[Array, "cand targets"],
    likelihood: AbstractLikelihood,
    prior: AbstractPrior | AbstractObservableDependentPrior,
    model_weights: Float[Array, " cand"] | None = None,
    upper: Bool[Array, " obs"] | None = None,
    models_native: Float[Array, "cand obs"] | None = None,
    x_native: Float[Array, " obs"] | None = None,
    target_names: Sequence[str] | None = None,
) -> Float[Array, " cand"]:
    """Unnormalised ``log L + log pi + log w`` per model (``-inf`` = excluded)."""
    if not isinstance(likelihood, AbstractLikelihood):
        raise TypeError(f"`likelihood` must be an AbstractLikelihood, got {likelihood!r}.")
    prior = _resolved(prior, target_names)
    if models_native is None:  # (Nc, 3P) models carry a noise model: observables first
        models_native = models[..., : jnp.shape(x)[-1]]
    x_native = x if x_native is None else x_native
    lw = likelihood.log_likelihood(x, sigma, models, upper)
    lw = lw + prior_log_prob(prior, targets, models_native, x_native)
    if model_weights is not None:
        # log(0) = -inf excludes the model; its gradient is never needed.
        lw = lw + jnp.log(model_weights)
    # NaN can only come from a user-supplied prior/likelihood; treat as excluded.
    return jnp.where(jnp.isnan(lw), -jnp.inf, lw)


def normalise_log_weights(lw: Float[Array, " cand"]) -> tuple[Float[Array, " cand"], Array]:
    """``(weights, log Z)``; all-``-inf`` input gives zero weights and ``log Z = -inf``."""
    log_z = logsumexp(lw)
    finite = jnp.isfinite(log_z)
    w = jnp.exp(lw - jnp.where(finite, log_z, 0.0))
    return jnp.where(finite, w, 0.0), log_z


def posterior_over_models(
    x: Any = None,
    sigma: Any = None,
    models: Any = None,
    targets: Any = None,
    likelihood: AbstractLikelihood | None = None,
    prior: AbstractPrior | AbstractObservableDependentPrior | None = None,
    model_weights: Any = None,
    upper: Any = None,
    models_native: Any = None,
    x_native: Any = None,
    target_names: Sequence[str] | None = None,
    *,
    sigma_native: Any = None,
    X_models: Any = None,
    targets_models: Any = None,
    observables_models: Any = None,
    prior_needs_observables: bool | None = None,
) -> Float[Array, " cand"]:
    """Normalised posterior weights (Nc,) of the models, summing to 1.

    A row whose weights are all zero (no usable observable, or every model
    excluded) gets all-zero weights — never NaN. Grid weights enter as
    ``log w`` (zero weight = excluded).

    BESTA's keywords work too: ``x_native`` (the row, when ``x`` is not given),
    ``sigma_native``, ``X_models``, ``targets_models``, ``observables_models`` (=
    ``models_native``); ``prior_needs_observables`` is accepted and not needed (the
    prior's type says it).

    Example:
        >>> w = posterior_over_models(x, s, grid.observables, grid.targets,
        ...                           GaussianProductLikelihood(), FlatPrior())
    """
    if x is None:  # BESTA's call: the row is x_native, in the likelihood's units
        x = x_native
    sigma = sigma_native if sigma is None else sigma
    models = X_models if models is None else models
    targets = targets_models if targets is None else targets
    models_native = observables_models if models_native is None else models_native
    given = {"x": x, "sigma": sigma, "models": models, "targets": targets}
    given.update(likelihood=likelihood, prior=prior)
    missing = [k for k, v in given.items() if v is None]
    if missing:
        raise TypeError(f"posterior_over_models: missing {missing}.")
    lw = log_posterior_terms(
        x,
        sigma,
        models,
        targets,
        likelihood,
        prior,
        model_weights,
        upper,
        models_native,
        x_native,
        target_names,
    )
    return normalise_log_weights(lw)[0]


def log_evidence(
    x: Any,
    sigma: Any,
    models: Any,
    targets: Any,
    likelihood: AbstractLikelihood,
    prior: AbstractPrior | AbstractObservableDependentPrior,
    model_weights: Any = None,
    upper: Any = None,
    models_native: Any = None,
    x_native: Any = None,
    target_names: Sequence[str] | None = None,
) -> Array:
    """``log Z(x) = logsumexp_i(log L + log pi + log w)`` (``-inf`` for an unusable row)."""
    lw = log_posterior_terms(
        x,
        sigma,
        models,
        targets,
        likelihood,
        prior,
        model_weights,
        upper,
        models_native,
        x_native,
        target_names,
    )
    return logsumexp(lw)


def log_weights_and_chi2(
    lik, prior, data, x, sigma, upper, models, native, targets, log_w, valid, ref=None
):
    """``(lw, chi2)`` of one row against a set of models (``-inf`` = excluded): the
    arithmetic of the batch step and of the training objectives.

    ``data``: a `jaxgrid.core.GridData` (the row's space: ``to_likelihood_space``,
    ``native_row``, ``obs_std``); ``valid``: models to keep (bool, or True).

    ``ref``: ``(model, native, targets, log_w)`` of one reference model: the log
    weights are then ``lw - lw_ref``, computed from differences to it (accurate
    for rows far from every model; ``chi2`` is not computed, zeros)."""
    xs, ss = data.to_likelihood_space(x, sigma)
    xn = data.native_row(x)
    if ref is None:
        ll, chi2 = lik.log_likelihood_and_chi2(xs, ss, models, upper)
        lw = ll + prior_log_prob(prior, targets, native, xn) + log_w
    else:
        r_model, r_native, r_targets, r_log_w = ref
        # model - reference from the native values (exact for close models), then scaled
        delta = (native - r_native) / data.obs_std
        ll = lik.log_likelihood_ratio(xs, ss, models, r_model, upper, delta)
        lp = prior_log_prob(prior, targets, native, xn)
        lp_ref = prior_log_prob(prior, r_targets[None], r_native[None], xn)[0]
        lw = ll + (lp - lp_ref) + (log_w - r_log_w)
        chi2 = jnp.zeros_like(lw)
    lw = jnp.where(valid & ~jnp.isnan(lw), lw, -jnp.inf)
    return lw, jnp.where(jnp.isfinite(lw), chi2, jnp.inf)
