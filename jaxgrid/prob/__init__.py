"""Likelihoods, priors and single-row posteriors (pure JAX)."""

from .bpz import BPZPrior as BPZPrior
from .likelihoods import AbstractLikelihood as AbstractLikelihood
from .likelihoods import CensoredSizeLikelihood as CensoredSizeLikelihood
from .likelihoods import CompositeLikelihood as CompositeLikelihood
from .likelihoods import GaussianProductLikelihood as GaussianProductLikelihood
from .posterior import log_evidence as log_evidence
from .posterior import log_posterior_terms as log_posterior_terms
from .posterior import normalise_log_weights as normalise_log_weights
from .posterior import posterior_over_models as posterior_over_models
from .priors import AbstractObservableDependentPrior as AbstractObservableDependentPrior
from .priors import AbstractPrior as AbstractPrior
from .priors import CompositePrior as CompositePrior
from .priors import DeltaPrior1D as DeltaPrior1D
from .priors import EmpiricalFlatteningPriorND as EmpiricalFlatteningPriorND
from .priors import EmpiricalHistogramPrior1D as EmpiricalHistogramPrior1D
from .priors import ExponentialPrior1D as ExponentialPrior1D
from .priors import ExponentialTruncatedPrior1D as ExponentialTruncatedPrior1D
from .priors import FlatPrior as FlatPrior
from .priors import GaussianPrior1D as GaussianPrior1D
from .priors import MagDependentRedshiftPrior as MagDependentRedshiftPrior
from .priors import ObservableCompositePrior as ObservableCompositePrior
from .priors import ObservableDependentPrior as ObservableDependentPrior
from .priors import PowerLawPrior1D as PowerLawPrior1D
from .priors import UniformPrior1D as UniformPrior1D
from .priors import prior_log_prob as prior_log_prob
from .scaled import ScaledGaussianLikelihood as ScaledGaussianLikelihood
