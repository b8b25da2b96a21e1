"""Bad input at the file and argument boundary: each low-level failure (NumPy, astropy, h5py,
raw KeyError/IndexError) replaced by an error that names the file, column or argument.

| input                                         | outcome                                   |
|-----------------------------------------------|-------------------------------------------|
| FITS grid with a column name > 68 characters  | ValueError naming the column, the limit   |
| truncated / non-FITS grid or catalog file     | ValueError: file named, "truncated"       |
| HDF5 catalog datasets of different lengths    | ValueError naming the file and datasets   |
| a string catalog column                       | ValueError naming the column and dtype    |
| a missing catalog ``hdf5_group``              | KeyError naming the group and the groups  |
| ``KDTreeBinner.load`` on a foreign file       | ValueError: "not a saved KDTreeBinner"    |
| non-integral / negative / crossed counts in   | ValueError/TypeError naming the argument, |
| ``fit_batch`` (chunk_size, candidates, ...)   | before any output file is created         |
"""

import warnings

import h5py
import numpy as np
import pytest

from jaxgrid import GridFitter, ModelGrid
from jaxgrid.binning import KDTreeBinner
from jaxgrid.io import read_catalog
from jaxgrid.io.grid_files import read_fits, write_fits


def _grid(rng, names=("a", "b"), n=300):
    return ModelGrid(rng.normal(size=(n, len(names))), rng.normal(size=(n, 1)), list(names), ["t"])


# ----------------------------------------------------------------- FITS
def test_long_fits_column_name_is_refused_before_writing(rng, tmp_path):
    long = "x" * 69
    grid = _grid(rng, names=(long, "b"))
    with pytest.raises(ValueError, match=rf"\['{long}'\] are longer than FITS allows \(68"):
        write_fits(grid, tmp_path / "g.fits")
    assert not (tmp_path / "g.fits").exists()
    write_fits(_grid(rng, names=("x" * 68, "b")), tmp_path / "ok.fits")  # the limit itself
    # quotes count twice in a header card
    with pytest.raises(ValueError, match="longer than FITS allows"):
        write_fits(_grid(rng, names=("'" * 35, "b")), tmp_path / "q.fits")


@pytest.mark.parametrize("keep", [0.5, 0.1, 0.02])
def test_truncated_fits_grid_names_the_file(rng, tmp_path, keep):
    write_fits(_grid(rng, n=3000), tmp_path / "g.fits")
    data = (tmp_path / "g.fits").read_bytes()
    bad = tmp_path / "cut.fits"
    bad.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ValueError, match=r"from_fits_table: .*cut\.fits.*truncated or corrupt"):
        read_fits(bad)


def test_not_a_fits_file(tmp_path):
    bad = tmp_path / "junk.fits"
    bad.write_bytes(b"plain text, not FITS\n" * 200)
    with pytest.raises(ValueError, match=r"junk\.fits as FITS; the file is truncated or corrupt"):
        read_fits(bad)


def test_sound_fits_still_reads_and_missing_hdu_is_a_key_error(rng, tmp_path):
    grid = _grid(rng)
    write_fits(grid, tmp_path / "g.fits")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = read_fits(tmp_path / "g.fits")
    np.testing.assert_array_equal(np.asarray(back.observables), np.asarray(grid.observables))
    with pytest.raises(KeyError, match="has no HDU 'NOPE'"):
        read_fits(tmp_path / "g.fits", table_hdu="NOPE")


def test_truncated_fits_catalog_names_the_file(tmp_path):
    from astropy.table import Table

    n = 4000
    Table({"a": np.ones(n), "a_err": np.full(n, 0.1)}).write(tmp_path / "c.fits")
    data = (tmp_path / "c.fits").read_bytes()
    (tmp_path / "cut.fits").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"read_catalog: .*cut\.fits.*truncated"):
        read_catalog(tmp_path / "cut.fits", ["a"], ["a_err"])


# ----------------------------------------------------------------- catalogs
def test_hdf5_catalog_datasets_of_different_lengths(tmp_path):
    path = tmp_path / "c.h5"
    with h5py.File(path, "w") as f:
        f["a"], f["a_err"] = np.ones(5), np.ones(5)
        f["b"], f["b_err"] = np.ones(4), np.ones(4)
    with pytest.raises(ValueError, match=r"c\.h5 have different lengths") as err:
        read_catalog(path, ["a", "b"], ["a_err", "b_err"])
    assert "4 rows: ['b', 'b_err']" in str(err.value) and "5 rows: ['a', 'a_err']" in str(err.value)


@pytest.mark.parametrize("col", ["a", "a_err"])
def test_string_catalog_column_names_the_column(col):
    source = {"a": np.ones(3), "a_err": np.full(3, 0.1)}
    source[col] = np.array(["x", "y", "z"])
    with pytest.raises(ValueError, match=rf"column '{col}' is not numeric \(dtype <U1\)"):
        read_catalog(source, ["a"], ["a_err"])


def test_missing_hdf5_group_names_it_and_the_groups(tmp_path):
    path = tmp_path / "c.h5"
    with h5py.File(path, "w") as f:
        f["photometry/a"], f["photometry/a_err"] = np.ones(3), np.ones(3)
    with pytest.raises(KeyError, match=r"has no group 'phot'; groups: \['photometry'\]"):
        read_catalog(path, ["a"], ["a_err"], hdf5_group="phot")
    cat = read_catalog(path, ["a"], ["a_err"], hdf5_group="photometry")
    assert cat.X.shape == (3, 1)


# ----------------------------------------------------------------- binner files
def test_kdtree_binner_load_refuses_foreign_files(rng, tmp_path):
    np.savez(tmp_path / "other.npz", x=np.ones(3))
    np.savez(tmp_path / "text.npz", meta=np.array("not json"))
    np.save(tmp_path / "bare.npy", np.ones(3))
    (tmp_path / "junk.npz").write_bytes(b"junk" * 10)
    for name in ("other.npz", "text.npz", "bare.npy", "junk.npz"):
        with pytest.raises(ValueError, match=rf"{name} is not a saved KDTreeBinner"):
            KDTreeBinner.load(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        KDTreeBinner.load(tmp_path / "none.npz")
    b = KDTreeBinner(dims=[0, 1], target_k=10).fit(_grid(rng))
    b.save(tmp_path / "b.npz")
    assert KDTreeBinner.load(tmp_path / "b.npz").settings() == b.settings()


# ----------------------------------------------------------------- fit_batch arguments
@pytest.fixture
def fit(rng):
    grid = _grid(rng, n=400)
    fitter = GridFitter(grid)
    X = rng.normal(size=(20, 2))
    S = np.full_like(X, 0.3)
    return fitter, X, S


@pytest.mark.parametrize(
    "kw,err,msg",
    [
        ({"chunk_size": 16.5}, ValueError, "`chunk_size` must be an integer"),
        ({"chunk_size": "16"}, TypeError, "`chunk_size` must be an integer"),
        ({"chunk_size": 0}, ValueError, "`chunk_size` must be >= 1"),
        ({"posterior_keep_min_candidates": 8.5}, ValueError, "posterior_keep_min_candidates"),
        ({"posterior_keep_max_candidates": 9.9}, ValueError, "posterior_keep_max_candidates"),
        ({"posterior_keep_max_candidates": True}, TypeError, "posterior_keep_max_candidates"),
        ({"memory_budget_bytes": -1}, ValueError, "`memory_budget_bytes` must be >= 0"),
        ({"model_block_size": 2.5}, ValueError, "`model_block_size` must be an integer"),
        ({"n_jobs": "abc"}, TypeError, "`n_jobs` must be an integer"),
        ({"output_hdf5_flush_every": 0}, ValueError, "`output_hdf5_flush_every` must be >= 1"),
        ({"posterior_keep_mass": "abc"}, TypeError, "`posterior_keep_mass` must be a number"),
        (
            {"posterior_keep_min_candidates": 64, "posterior_keep_max_candidates": 32},
            ValueError,
            r"`posterior_keep_min_candidates` \(64\) > `posterior_keep_max_candidates` \(32\)",
        ),
    ],
)
def test_fit_batch_refuses_bad_counts_before_any_file(fit, tmp_path, kw, err, msg):
    fitter, X, S = fit
    out = tmp_path / "o.h5"
    with pytest.raises(err, match=msg):
        fitter.fit_batch(X, S, output_hdf5_path=out, return_mode="list", verbose=False, **kw)
    assert not out.exists()


def test_integral_floats_and_the_default_minimum_under_a_small_max(fit):
    fitter, X, S = fit
    a = fitter.fit_batch(X, S, chunk_size=8, return_mode="chunks", verbose=False)
    b = fitter.fit_batch(X, S, chunk_size=8.0, return_mode="chunks", verbose=False)
    for ca, cb in zip(a, b, strict=True):
        np.testing.assert_array_equal(np.asarray(ca["log_evidence"]), cb["log_evidence"])
    # the default minimum (128) is a floor that a smaller explicit max caps, as before
    res = fitter.fit_batch(X, S, posterior_keep_max_candidates=5, return_mode="list", verbose=False)
    assert max(r["truncation"]["n_after"] for r in res) <= 5
    explicit = fitter.fit_batch(
        X, S, posterior_keep_max_candidates=5, posterior_keep_min_candidates=5,
        return_mode="list", verbose=False,
    )  # fmt: skip
    for r, e in zip(res, explicit, strict=True):
        np.testing.assert_array_equal(r["candidates"], e["candidates"])


def test_hdf5_grid_datasets_of_different_lengths(rng, tmp_path):
    path = tmp_path / "g.h5"
    _grid(rng, n=50).to_hdf5(path)
    with h5py.File(path, "a") as f:
        del f["modelgrid/observables/b"]
        f["modelgrid/observables/b"] = np.ones(49)
    with pytest.raises(ValueError, match=r"from_hdf5: .*lengths differ.*'observables/b': 49"):
        ModelGrid.load_auto(path)
