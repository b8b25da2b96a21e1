"""Bundled data: a small real photo-z sample, templates and LSST filters.

``photoz/`` — from LSST DESC RAIL (``pz-rail-base``, MIT licence): 10,225
cosmoDC2 galaxies with 10-year LSST mock photometry
(``dc2_training_9816.hdf5``, group ``photometry``), the 8 classic BPZ
templates (``SED/``) and the LSST total-throughput curves (``FILTER/``).
See ``photoz/README.md``.
"""

from pathlib import Path

__all__ = ["data_path", "DC2_TRAINING"]

_ROOT = Path(__file__).parent


def data_path(*parts: str) -> Path:
    """Path of a bundled file, e.g. ``data_path("photoz", "FILTER", "DC2LSST_r.res")``."""
    path = _ROOT.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"no bundled data file {path.relative_to(_ROOT)}.")
    return path


DC2_TRAINING = _ROOT / "photoz" / "dc2_training_9816.hdf5"
