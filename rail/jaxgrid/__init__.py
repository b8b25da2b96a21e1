"""jaxgrid in the RAIL ecosystem (``rail.core.introspection`` lists it as ``rail.jaxgrid``).

The stages are `rail.estimation.algos.jaxgrid.JaxgridInformer` and
`rail.estimation.algos.jaxgrid.JaxgridEstimator` (see jaxgrid's docs/rail.md).
"""

from jaxgrid._version import __version__
from rail.estimation.algos.jaxgrid import JaxgridEstimator, JaxgridInformer

__all__ = ["__version__", "JaxgridInformer", "JaxgridEstimator"]
