import json

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from conftest import make_grid

from jaxgrid import ModelGrid
from jaxgrid.io import load_auto


def assert_same_grid(a: ModelGrid, b: ModelGrid):
    np.testing.assert_array_equal(np.asarray(a.observables), np.asarray(b.observables))
    np.testing.assert_array_equal(np.asarray(a.targets), np.asarray(b.targets))
    assert a.observables.dtype == b.observables.dtype
    assert a.observable_names == b.observable_names and a.target_names == b.target_names
    if a.weights is None:
        assert b.weights is None
    else:
        np.testing.assert_array_equal(np.asarray(a.weights), np.asarray(b.weights))
    assert a.meta == b.meta
    assert a.standardiser == b.standardiser
    assert a.target_standardiser == b.target_standardiser


@pytest.fixture(params=[True, False], ids=["weighted", "unweighted"])
def grid(request, rng):
    g = make_grid(rng, n=64, p=3, q=2, weights=request.param, meta={"lib": "BC03", "imf": [1, 2]})
    g.fit_standardiser(np.arange(64) < 40)
    if request.param:
        g.fit_target_standardiser()
    return g


def test_fits_round_trip(tmp_path, grid):
    path = tmp_path / "grid.fits"
    grid.to_fits_table(path)
    assert_same_grid(grid, ModelGrid.from_fits_table(path))
    h = fits.getheader(path, "MODELGRID")
    assert h["NMODELS"] == 64 and h["NOBS"] == 3 and h["NTGT"] == 2
    assert h["OBSNAME"] == "mag_0,mag_1,mag_2" and json.loads(h["META"]) == grid.meta


def test_fits_append_and_replace(tmp_path, grid, rng):
    path = tmp_path / "grid.fits"
    grid.to_fits_table(path)
    other = make_grid(rng, n=10, p=2, q=1)
    other.to_fits_table(path, hdu_name="SMALL")
    assert_same_grid(grid, ModelGrid.from_fits_table(path, table_hdu="MODELGRID"))
    assert_same_grid(other, ModelGrid.from_fits_table(path, table_hdu="SMALL"))
    with pytest.raises(ValueError, match="overwrite=True"):
        other.to_fits_table(path)
    other.to_fits_table(path, overwrite=True)
    assert_same_grid(other, ModelGrid.from_fits_table(path, table_hdu="MODELGRID"))


def test_fits_foreign_table_with_column_maps(tmp_path, rng):
    n = 20
    t = Table(
        {
            "G": rng.normal(size=n),
            "R": rng.normal(size=n),
            "LOGM": rng.normal(size=n),
            "W": rng.uniform(size=n),
        }
    )
    path = tmp_path / "foreign.fits"
    t.write(path)
    with pytest.raises(ValueError, match="observable_cols and target_cols"):
        ModelGrid.from_fits_table(path)
    mask = np.arange(n) % 2 == 0
    g = ModelGrid.from_fits_table(
        path,
        observable_cols={"mag_g": "G", "mag_r": "R"},
        target_cols=["LOGM"],
        weight_col="W",
        row_mask=mask,
    )
    assert g.observable_names == ["mag_g", "mag_r"] and g.n_models == 10
    np.testing.assert_allclose(
        np.asarray(g.get_target("LOGM")), np.asarray(t["LOGM"])[mask], rtol=1e-6
    )
    np.testing.assert_allclose(np.asarray(g.weights), np.asarray(t["W"])[mask], rtol=1e-6)
    with pytest.raises(KeyError, match="not in"):
        ModelGrid.from_fits_table(path, observable_cols=["G", "X"], target_cols=["LOGM"])


def test_hdf5_round_trip(tmp_path, grid):
    path = tmp_path / "grid.h5"
    grid.to_hdf5(path, group="/lib/run1")
    assert_same_grid(grid, ModelGrid.from_hdf5(path, group="/lib/run1"))
    with pytest.raises(ValueError, match="overwrite=True"):
        grid.to_hdf5(path, group="/lib/run1")
    grid.to_hdf5(path, group="/lib/run1", overwrite=True)
    part = ModelGrid.from_hdf5(path, group="/lib/run1", row_slice=(5, 15))
    np.testing.assert_array_equal(np.asarray(part.observables), np.asarray(grid.observables)[5:15])
    sub = ModelGrid.from_hdf5(
        path,
        group="/lib/run1",
        observable_dsets=["observables/mag_2"],
        target_dsets={"mass": "targets/t0"},
    )
    assert sub.observable_names == ["observables/mag_2"] and sub.target_names == ["mass"]
    assert sub.standardiser.mean[0] == grid.standardiser.mean[2]


def test_pickle_round_trip(tmp_path, grid):
    path = tmp_path / "grid.pkl"
    grid.to_pickle(path)
    assert_same_grid(grid, ModelGrid.from_pickle(path))


def test_pickle_type_checked(tmp_path):
    import pickle

    path = tmp_path / "other.pkl"
    path.write_bytes(pickle.dumps({"hello": 1}))
    with pytest.raises(TypeError, match="does not hold a jaxgrid ModelGrid"):
        ModelGrid.from_pickle(path)


def test_pickle_drops_unpicklable_boundary_check(tmp_path, rng):
    g = make_grid(rng, n=5)
    g.check_boundaries = lambda t: t[:, 0] > 0
    with pytest.warns(UserWarning, match="cannot be pickled"):
        g.to_pickle(tmp_path / "g.pkl")
    assert ModelGrid.from_pickle(tmp_path / "g.pkl").check_boundaries is None


@pytest.mark.parametrize("suffix", [".fits", ".fits.gz", ".fts", ".h5", ".hdf5", ".pkl", ".pickle"])
def test_load_auto(tmp_path, grid, suffix):
    path = tmp_path / f"grid{suffix}"
    if suffix in (".h5", ".hdf5"):
        grid.to_hdf5(path)
    elif suffix in (".pkl", ".pickle"):
        grid.to_pickle(path)
    else:
        grid.to_fits_table(path)
    assert_same_grid(grid, load_auto(path))
    assert_same_grid(grid, ModelGrid.load_auto(path))


def test_load_auto_unknown_suffix(tmp_path):
    with pytest.raises(ValueError, match=r"supported suffixes: \['.fits'"):
        load_auto(tmp_path / "grid.csv")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        ModelGrid.from_hdf5(tmp_path / "nope.h5")


def test_name_clash_rejected(tmp_path):
    g = ModelGrid(np.zeros((2, 1)), np.zeros((2, 1)), ["z"], ["z"])
    with pytest.raises(ValueError, match="both observables and targets"):
        g.to_fits_table(tmp_path / "x.fits")
