"""Grid files and dicts written by the real BESTA 0.6.2 load in jaxgrid with arrays,
names, weights, meta and standardisers identical (tests/data/besta, made by
tests/data/besta/make_besta_files.py), and jaxgrid writes what BESTA's readers look for."""

import importlib.util
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from astropy.io import fits

from jaxgrid import LinearStandardiser, ModelGrid

DATA = Path(__file__).parent / "data" / "besta"
_spec = importlib.util.spec_from_file_location("make_besta_files", DATA / "make_besta_files.py")
made = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(made)
OBS, TGT, W = made.expected_arrays()
STD = json.loads((DATA / "besta_standardisers.json").read_text())


def _same_grid(grid, weights, fitted):
    f32 = np.float32  # the grid's working dtype
    np.testing.assert_array_equal(np.asarray(grid.observables), OBS.astype(f32))
    np.testing.assert_array_equal(np.asarray(grid.targets), TGT.astype(f32))
    assert grid.observable_names == made.NAMES[0] and grid.target_names == made.NAMES[1]
    if weights:
        np.testing.assert_array_equal(np.asarray(grid.weights), W.astype(f32))
    else:
        assert grid.weights is None
    assert grid.meta == made.META
    if fitted:
        # float64 and bit-identical to BESTA's
        for std, key in ((grid.standardiser, "observables"), (grid.target_standardiser, "targets")):
            assert std.is_fit
            np.testing.assert_array_equal(std.mean, STD[key]["mean"])
            np.testing.assert_array_equal(std.sd, STD[key]["sd"])
    else:
        assert not grid.standardiser.is_fit and not grid.target_standardiser.is_fit


@pytest.mark.parametrize(
    "name, weights, fitted",
    [("besta_plain.h5", False, False), ("besta_fitted.h5", True, True)],
)
def test_besta_hdf5_files_load(name, weights, fitted):
    _same_grid(ModelGrid.from_hdf5(DATA / name), weights, fitted)
    _same_grid(ModelGrid.load_auto(DATA / name), weights, fitted)


@pytest.mark.parametrize(
    "name, weights", [("besta_plain.fits", False), ("besta_fitted.fits", True)]
)
def test_besta_fits_files_load_with_their_meta(name, weights):
    # BESTA's FITS tables carry no standardisers; the meta is a HIERARCH card
    grid = ModelGrid.from_fits_table(DATA / name)
    _same_grid(grid, weights, fitted=False)
    assert ModelGrid.from_fits_table(DATA / name, meta_key="MODELGRID_META").meta == made.META
    with pytest.raises(KeyError, match="NOPE"):
        ModelGrid.from_fits_table(DATA / name, meta_key="NOPE")


def test_besta_explicit_dataset_lists_load_standardisers_too():
    grid = ModelGrid.from_hdf5(
        DATA / "besta_fitted.h5",
        observable_dsets=["observables/o1", "observables/mag"],
        target_dsets={"y": "targets/y"},
        weight_dset="weights",
    )
    assert grid.observable_names == ["observables/o1", "observables/mag"]
    np.testing.assert_array_equal(
        grid.standardiser.mean, np.array(STD["observables"]["mean"])[[0, 2]]
    )
    np.testing.assert_array_equal(grid.target_standardiser.sd, np.array(STD["targets"]["sd"])[[1]])


def test_besta_to_dict_output_loads():
    d = json.loads((DATA / "besta_fitted_dict.json").read_text())
    _same_grid(ModelGrid.from_dict(d), weights=True, fitted=True)
    boundary = lambda q: q[:, 0] < 0.5  # noqa: E731
    assert ModelGrid.from_dict(d, check_boundaries=boundary).check_boundaries is boundary


def test_besta_standardiser_dicts():
    s = LinearStandardiser.from_dict(STD["observables"])  # {"mean", "sd"}: fitted
    np.testing.assert_array_equal(s.sd, STD["observables"]["sd"])
    assert not LinearStandardiser.from_dict({"mean": None, "sd": None}).is_fit
    assert not LinearStandardiser.from_dict({"is_fit": False, "mean": [1.0], "sd": [1.0]}).is_fit
    with pytest.raises(ValueError, match="to_dict"):
        LinearStandardiser.from_dict({"loc": [0.0]})
    # jaxgrid's dicts carry BESTA's keys, so BESTA's from_dict reads them
    d = LinearStandardiser(mean=[1.0, 2.0], sd=[3.0, 4.0]).to_dict()
    assert d["is_fit"] and d["sd"] == [3.0, 4.0] and d["mean"] == [1.0, 2.0]


def test_to_dict_round_trip_in_besta_layout():
    grid = ModelGrid(OBS, TGT, *made.NAMES, weights=W, meta=made.META)
    grid.fit_standardiser()
    d = grid.to_dict()
    assert set(d) == {
        "observables", "targets", "observable_names", "target_names", "weights", "meta",
        "standardisers", "check_boundaries_key",
    }  # fmt: skip
    assert d["standardisers"]["observables"]["is_fit"] is True
    assert d["standardisers"]["targets"]["is_fit"] is False
    back = ModelGrid.from_dict(d)
    np.testing.assert_array_equal(np.asarray(back.observables), np.asarray(grid.observables))
    assert back.standardiser == grid.standardiser and not back.target_standardiser.is_fit
    with pytest.raises(ValueError, match="lacks"):
        ModelGrid.from_dict({"observables": OBS})


def test_jaxgrid_files_have_what_besta_reads(tmp_path):
    """BESTA's from_hdf5 / from_fits_table read these keys (besta/grid/grid.py 0.6.2)."""
    grid = ModelGrid(OBS, TGT, *made.NAMES, weights=W, meta=made.META)
    grid.fit_standardiser()
    grid.to_hdf5(tmp_path / "g.h5", compression_opts=4, chunks=True)
    with h5py.File(tmp_path / "g.h5") as f:
        g = f["modelgrid"]
        assert json.loads(g.attrs["observable_names"]) == made.NAMES[0]
        assert json.loads(g.attrs["meta"]) == made.META
        assert g.attrs["n_models"] == 20 and g.attrs["n_targets"] == 2
        std = json.loads(g.attrs["standardisers"])["observables"]
        assert std["is_fit"] and std["sd"] == grid.standardiser.sd.tolist()
        assert g["observables/mag"].compression_opts == 4
        assert g["weights"].shape == (20,)
    grid.to_fits_table(tmp_path / "g.fits", meta_key="MODELGRID_META")
    h = fits.getheader(tmp_path / "g.fits", 1)
    assert h["OBSNAME"] == "o1,o2,mag" and json.loads(h["MODELGRID_META"]) == made.META
    assert "weight" in fits.getdata(tmp_path / "g.fits", 1).names
    assert ModelGrid.from_fits_table(tmp_path / "g.fits").meta == made.META
    grid.to_hdf5(tmp_path / "nometa.h5", include_meta=False)
    assert ModelGrid.from_hdf5(tmp_path / "nometa.h5").meta == {}


@pytest.mark.parametrize("name", ["besta_no_targets.h5", "besta_no_targets.fits"])
def test_besta_grid_without_targets_loads(name):
    grid = ModelGrid.load_auto(DATA / name)
    assert grid.n_targets == 0 and grid.target_names == []
    np.testing.assert_array_equal(np.asarray(grid.observables), OBS.astype(np.float32))
    assert grid.meta == {"kind": "observables only"}


def test_besta_pickle_gets_a_clear_error():
    with pytest.raises(TypeError, match="BESTA pickle.*to_hdf5"):
        ModelGrid.from_pickle(DATA / "besta_grid.pkl")


def test_besta_dict_with_numpy_meta():
    d = json.loads((DATA / "besta_fitted_dict.json").read_text())
    d["meta"] = {"arr": np.arange(3), "x": np.float32(1.5), "nested": {"v": np.int64(2)}}
    assert ModelGrid.from_dict(d).meta == {"arr": [0, 1, 2], "x": 1.5, "nested": {"v": 2}}
