"""Host-side file I/O: grid files (FITS, HDF5, pickle) and batch-fit result files."""

from .catalog import Catalog as Catalog
from .catalog import SentinelPolicy as SentinelPolicy
from .catalog import ValueFlag as ValueFlag
from .catalog import read_catalog as read_catalog
from .export import read_results as read_results
from .export import results_to_table as results_to_table
from .export import to_qp as to_qp
from .export import write_results as write_results
from .grid_files import load_auto as load_auto
from .grid_files import read_fits as read_fits
from .grid_files import read_hdf5 as read_hdf5
from .grid_files import read_pickle as read_pickle
from .grid_files import write_fits as write_fits
from .grid_files import write_hdf5 as write_hdf5
from .grid_files import write_pickle as write_pickle
from .results import GridFitHDF5Writer as GridFitHDF5Writer
from .results import OutputInUseError as OutputInUseError
from .results import read_fit_results as read_fit_results
