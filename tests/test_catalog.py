import h5py
import numpy as np
import pandas as pd
import pytest
from astropy.table import MaskedColumn, Table

from jaxgrid import ModelGrid
from jaxgrid.data import DC2_TRAINING as DC2
from jaxgrid.io import SentinelPolicy, ValueFlag, read_catalog
from jaxgrid.transforms import (
    AB_ZERO_POINTS,
    flux_to_mag,
    fluxerr_to_magerr,
    mag_to_flux,
    magerr_to_fluxerr,
)


def _cols():
    return {
        "g": np.array([20.0, np.nan, 99.0, -99.0, 21.0, 22.0]),
        "g_err": np.array([0.1, 0.1, 26.5, 0.1, 0.0, np.nan]),
        "r": np.array([19.5, 19.6, 19.7, 19.8, 19.9, 99.0]),
        "r_err": np.array([0.05, 0.05, 0.05, 0.05, 0.05, -1.0]),
        "objid": np.arange(100, 106),
    }


def test_sentinel_policy_each_case():
    c = read_catalog(_cols(), ["g", "r"], ["g_err", "r_err"], id_col="objid")
    F = ValueFlag
    np.testing.assert_array_equal(
        c.flags[:, 0], [F.OK, F.MISSING, F.NONDETECTION, F.UNOBSERVED, F.BAD_ERROR, F.BAD_ERROR]
    )
    assert c.X[0, 0] == 20.0 and c.SIG[0, 0] == 0.1
    assert np.isnan(c.X[1, 0]) and np.isnan(c.SIG[1, 0])
    # 99: an upper limit at the limiting magnitude held by the error column
    assert c.upper[2, 0] and c.X[2, 0] == 26.5 and c.SIG[2, 0] == pytest.approx(1.0857362)
    assert np.isnan(c.X[3, 0]) and np.isnan(c.X[4, 0]) and np.isnan(c.X[5, 0])
    # a 99 whose error column is unusable cannot be a limit: missing
    assert c.flags[5, 1] == F.NONDETECTION and not c.upper[5, 1] and np.isnan(c.X[5, 1])
    np.testing.assert_array_equal(c.ids, np.arange(100, 106))
    assert c.observable_names == ["g", "r"]


def test_policy_variants():
    c = read_catalog(
        _cols(),
        ["g", "r"],
        ["g_err", "r_err"],
        policy=SentinelPolicy(nondetection="missing", unobserved_value=None),
    )
    assert not c.upper.any() and np.isnan(c.X[2, 0])
    assert c.flags[3, 0] == ValueFlag.OK and c.X[3, 0] == -99.0  # -99 taken literally
    with pytest.raises(ValueError, match="nondetection"):
        SentinelPolicy(nondetection="drop")


def test_sources_agree(tmp_path):
    cols = _cols()
    ref = read_catalog(cols, {"mag_g": "g", "mag_r": "r"}, {"mag_g": "g_err", "mag_r": "r_err"})
    Table(cols).write(tmp_path / "c.fits")
    with h5py.File(tmp_path / "c.h5", "w") as f:
        for k, v in cols.items():
            f[f"phot/{k}"] = v
    sources = [
        (tmp_path / "c.fits", {}),
        (tmp_path / "c.h5", {"hdf5_group": "phot"}),
        (Table(cols), {}),
        (pd.DataFrame(cols), {}),
    ]
    for src, kw in sources:
        got = read_catalog(
            src, {"mag_g": "g", "mag_r": "r"}, {"mag_g": "g_err", "mag_r": "r_err"}, **kw
        )
        np.testing.assert_array_equal(got.X, ref.X)
        np.testing.assert_array_equal(got.SIG, ref.SIG)
        np.testing.assert_array_equal(got.flags, ref.flags)


def test_masked_values_are_missing():
    t = Table({"g": MaskedColumn([20.0, 21.0], mask=[False, True]), "e": [0.1, 0.1]})
    c = read_catalog(t, ["g"], ["e"])
    assert c.flags[1, 0] == ValueFlag.MISSING and np.isnan(c.X[1, 0])


def test_grid_order_and_explicit_upper_limits():
    grid = ModelGrid(np.zeros((2, 2)), np.zeros((2, 1)), ["mag_r", "mag_g"], ["z"])
    cols = _cols()
    cols["r_lim"] = np.array([0, 1, 0, 0, 0, 0])
    c = read_catalog(
        cols,
        {"mag_g": "g", "mag_r": "r"},
        {"mag_g": "g_err", "mag_r": "r_err"},
        grid=grid,
        upper_limits={"mag_r": "r_lim"},
    )
    assert c.observable_names == ["mag_r", "mag_g"] and c.X[0, 0] == 19.5
    assert c.upper[1, 0] and not c.upper[0, 0]
    arr = np.zeros((6, 2), bool)
    arr[0, 1] = True
    c2 = read_catalog(
        cols,
        {"mag_g": "g", "mag_r": "r"},
        {"mag_g": "g_err", "mag_r": "r_err"},
        grid=grid,
        upper_limits=arr,
    )
    assert c2.upper[0, 1]


def test_real_dc2_catalog():
    bands = "ugrizy"
    c = read_catalog(
        DC2,
        {f"mag_{b}": f"mag_{b}_lsst" for b in bands},
        {f"mag_{b}": f"mag_err_{b}_lsst" for b in bands},
        id_col="id",
        hdf5_group="photometry",
    )
    assert c.X.shape == (10225, 6) and c.ids.size == 10225
    with h5py.File(DC2) as f:
        n99 = int(np.sum(f["photometry/mag_u_lsst"][...] == 99.0))
        lim = f["photometry/mag_err_u_lsst"][...][f["photometry/mag_u_lsst"][...] == 99.0]
    assert c.upper[:, 0].sum() == n99 == 714
    np.testing.assert_allclose(c.X[c.upper[:, 0], 0], lim)
    assert np.isfinite(c.X[:, 2]).all()  # r band always detected


@pytest.mark.parametrize(
    "call,exc,msg",
    [
        (
            lambda: read_catalog(_cols(), ["g", "x"], ["g_err", "r_err"]),
            KeyError,
            "unknown column 'x'",
        ),
        (lambda: read_catalog(_cols(), ["g", "r"], ["g_err"]), ValueError, "one error column per"),
        (
            lambda: read_catalog({"g": [1.0, 2.0], "e": [0.1]}, ["g"], ["e"]),
            ValueError,
            "different lengths",
        ),
        (
            lambda: read_catalog({"g": [np.nan, 99.0], "e": [0.1, np.nan]}, ["g"], ["e"]),
            ValueError,
            "no usable value",
        ),
        (lambda: read_catalog(_cols(), ["g"], ["g_err"], id_col="nope"), KeyError, "id column"),
        (lambda: read_catalog("missing.fits", ["g"], ["e"]), FileNotFoundError, "no such file"),
        (lambda: read_catalog(DC2, ["g"], ["e"]), ValueError, "hdf5_group"),
    ],
)
def test_bad_inputs(call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()


def test_magnitude_flux_helpers():
    m = np.array([0.0, 23.9, 31.4, 25.0])
    np.testing.assert_allclose(mag_to_flux(m, "Jy"), 3631.0 * 10 ** (-0.4 * m), rtol=1e-12)
    np.testing.assert_allclose(mag_to_flux(23.9, "uJy"), 1.0, rtol=1e-3)  # 23.9 AB = 1 uJy
    np.testing.assert_allclose(mag_to_flux(31.4, "nJy"), 1.0, rtol=1e-3)
    np.testing.assert_allclose(mag_to_flux(m, "maggies"), 10 ** (-0.4 * m), rtol=1e-12)
    np.testing.assert_allclose(flux_to_mag(mag_to_flux(m, "nJy"), "nJy"), m, atol=1e-12)
    assert np.isnan(flux_to_mag(np.array([-1.0]))[0])
    np.testing.assert_allclose(mag_to_flux(m, zero_point=30.0), 10 ** (-0.4 * (m - 30.0)))
    f = mag_to_flux(25.0, "nJy")
    fe = magerr_to_fluxerr(25.0, 0.1, "nJy")
    assert fe == pytest.approx(f * 0.1 * np.log(10) / 2.5)
    assert fluxerr_to_magerr(f, fe) == pytest.approx(0.1)
    assert AB_ZERO_POINTS["nJy"] == pytest.approx(31.4, abs=1e-3)
    import jax.numpy as jnp

    assert isinstance(mag_to_flux(jnp.asarray(m), "nJy"), jnp.ndarray)
    with pytest.raises(ValueError, match="unknown flux unit"):
        mag_to_flux(m, "erg")
