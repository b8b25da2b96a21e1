"""Reading and writing `ModelGrid` files (FITS tables, HDF5 groups, pickles): the
public functions. The formats live in `jaxgrid.grid_format`."""

from __future__ import annotations

from ..grid import ModelGrid
from ..grid_format import SUPPORTED_SUFFIXES, write_fits, write_hdf5, write_pickle

__all__ = [
    "write_fits",
    "read_fits",
    "write_hdf5",
    "read_hdf5",
    "write_pickle",
    "read_pickle",
    "load_auto",
    "SUPPORTED_SUFFIXES",
]

#: Read a `ModelGrid` from a FITS table (`jaxgrid.grid_format.read_fits`).
read_fits = ModelGrid.from_fits_table
#: Read a `ModelGrid` from an HDF5 group (`jaxgrid.grid_format.read_hdf5`).
read_hdf5 = ModelGrid.from_hdf5
#: Read a pickled `ModelGrid` (`jaxgrid.grid_format.read_pickle`).
read_pickle = ModelGrid.from_pickle
#: Load a `ModelGrid`, the reader chosen by the file suffix.
load_auto = ModelGrid.load_auto
