"""Shared by the output tests: read a result group, compare two files, run the worker."""

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
from conftest import make_grid

from jaxgrid import GridFitter

HERE = Path(__file__).parent
WORKER = [sys.executable, str(HERE / "batch_worker.py"), "write"]


def read_group(path, group="/fit_batch"):
    out = {}
    with h5py.File(path, "r") as f:
        g = f[group]
        out["configuration"] = g.attrs["configuration"]

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = obj[...]

        g.visititems(visit)
    return out


def assert_same_file(a_path, b_path, group="/fit_batch"):
    a, b = read_group(a_path, group), read_group(b_path, group)
    assert a.keys() == b.keys()
    assert a.pop("configuration") == b.pop("configuration")
    for key in a:
        if a[key].dtype == object:  # variable-length candidate lists
            assert len(a[key]) == len(b[key]), key
            for u, v in zip(a[key], b[key], strict=True):
                np.testing.assert_array_equal(u, v, err_msg=key)
        elif a[key].dtype.names:  # the flat table (compound): per column, NaN == NaN
            assert a[key].dtype == b[key].dtype, key
            for col in a[key].dtype.names:
                np.testing.assert_array_equal(a[key][col], b[key][col], err_msg=f"{key}.{col}")
        else:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert (a["index/written"] != 0).all()


def run_worker(path, *args, env=None, timeout=300):
    return subprocess.run(
        WORKER + [str(path), *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def small_problem(rng):
    """A 200-model grid, 40 rows, write-only keywords: (fitter, X, S, kw)."""
    grid = make_grid(rng, n=200, p=3, q=2)
    X = np.asarray(grid.observables, np.float64)[:40] + rng.normal(0, 0.3, (40, 3))
    S = np.full_like(X, 0.3)
    kw = dict(
        stats_for=["t0"],
        stats_bins=[np.linspace(0, 10, 21)],
        verbose=False,
        chunk_size=8,
        output_hdf5_write_only=True,
    )
    return GridFitter(grid), X, S, kw
