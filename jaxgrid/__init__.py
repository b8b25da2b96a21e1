"""jaxgrid: Bayesian inference over a finite, precomputed model grid, on JAX."""

from ._version import __version__ as __version__
from .binning import KDTreeBinner as KDTreeBinner
from .core.status import Status as Status
from .fitter import GridFitter as GridFitter
from .grid import ModelGrid as ModelGrid
from .io.results import GridFitStatsSpec as GridFitStatsSpec
from .prob import AbstractLikelihood as AbstractLikelihood
from .prob import AbstractObservableDependentPrior as AbstractObservableDependentPrior
from .prob import AbstractPrior as AbstractPrior

# BESTA's `from besta.grid import *` names: every likelihood, prior and posterior helper
from .prob import BPZPrior as BPZPrior
from .prob import CensoredSizeLikelihood as CensoredSizeLikelihood
from .prob import CompositeLikelihood as CompositeLikelihood
from .prob import CompositePrior as CompositePrior
from .prob import DeltaPrior1D as DeltaPrior1D
from .prob import EmpiricalFlatteningPriorND as EmpiricalFlatteningPriorND
from .prob import EmpiricalHistogramPrior1D as EmpiricalHistogramPrior1D
from .prob import ExponentialPrior1D as ExponentialPrior1D
from .prob import ExponentialTruncatedPrior1D as ExponentialTruncatedPrior1D
from .prob import FlatPrior as FlatPrior
from .prob import GaussianPrior1D as GaussianPrior1D
from .prob import GaussianProductLikelihood as GaussianProductLikelihood
from .prob import MagDependentRedshiftPrior as MagDependentRedshiftPrior
from .prob import NumbaGaussianProductLikelihood as NumbaGaussianProductLikelihood
from .prob import ObservableCompositePrior as ObservableCompositePrior
from .prob import ObservableDependentPrior as ObservableDependentPrior
from .prob import PowerLawPrior1D as PowerLawPrior1D
from .prob import ScaledGaussianLikelihood as ScaledGaussianLikelihood
from .prob import UniformPrior1D as UniformPrior1D
from .prob import log_evidence as log_evidence
from .prob import log_posterior_terms as log_posterior_terms
from .prob import normalise_log_weights as normalise_log_weights
from .prob import posterior_over_models as posterior_over_models
from .prob import prior_log_prob as prior_log_prob
from .transforms import LinearStandardiser as LinearStandardiser
from .truncate import _truncate_posterior_mass as _truncate_posterior_mass
from .truncate import truncate_posterior_mass as truncate_posterior_mass
