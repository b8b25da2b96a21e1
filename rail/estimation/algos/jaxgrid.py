"""RAIL's name for jaxgrid's stages: ``from rail.estimation.algos.jaxgrid import
JaxgridInformer, JaxgridEstimator`` (implementation: `jaxgrid.rail_stages`).

``rail/`` and ``rail/estimation/algos/`` are namespace packages shared with
pz-rail-base: no ``__init__.py`` here.
"""

from jaxgrid.rail_stages import JaxgridEstimator, JaxgridInformer

__all__ = ["JaxgridInformer", "JaxgridEstimator"]
