"""jaxgrid: Bayesian inference over a finite, precomputed model grid, on JAX."""

from ._version import __version__ as __version__
from .core.status import Status as Status
from .fitter import GridFitter as GridFitter
from .grid import ModelGrid as ModelGrid
from .transforms import LinearStandardiser as LinearStandardiser
