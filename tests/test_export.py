import numpy as np
import pytest
import qp
from astropy.table import Table
from conftest import make_grid

from jaxgrid import GridFitter, ModelGrid
from jaxgrid.io import results_to_table, to_qp, write_results

EDGES = [np.linspace(0.0, 10.0, 21), np.linspace(0.0, 10.0, 11)]


@pytest.fixture
def fitted(rng, tmp_path):
    g = make_grid(rng, n=300, p=3, q=2)
    grid = ModelGrid(
        g.observables, g.targets, g.observable_names, ["z", "age"], meta={"units": {"age": "Gyr"}}
    )
    fitter = GridFitter(grid)
    X = np.asarray(grid.observables, np.float64)[:25] + rng.normal(0, 0.3, (25, 3))
    S = np.full_like(X, 0.3)
    X[3] = np.nan
    path = tmp_path / "fit.h5"
    kw = dict(
        stats_for=["z", "age"],
        stats_bins=EDGES,
        verbose=False,
        chunk_size=8,
        return_pdf_for_stats=True,
    )
    objs = fitter.fit_batch(X, S, return_mode="list", output_hdf5_path=path, **kw)
    chunks = list(fitter.fit_batch(X, S, return_mode="chunks", **kw))
    table = fitter.fit_batch(X, S, return_mode="table", ids=np.arange(1000, 1025), **kw)
    return objs, chunks, table, path


def test_tables_from_every_source_agree(fitted):
    objs, chunks, table, path = fitted
    t_obj = results_to_table(objs)
    t_chk = results_to_table(chunks)
    t_h5 = results_to_table(path)
    for t in (t_obj, t_chk, t_h5):
        assert len(t) == 25
        for col in ("m", "status", "log_evidence", "best", "z_mean", "age_hi68", "z_nmodes"):
            np.testing.assert_array_equal(np.asarray(t[col]), np.asarray(table[col]), err_msg=col)
    assert list(table["id"]) == list(range(1000, 1025))
    assert str(table["age_mean"].unit) == "Gyr" and table["z_mean"].unit is None


def test_write_results_round_trip(fitted, tmp_path):
    table = fitted[2]
    for name in ("r.fits", "r.h5"):
        write_results(table, tmp_path / name)
        back = Table.read(tmp_path / name, **({"path": "results"} if name.endswith("h5") else {}))
        assert back.colnames == table.colnames
        for c in table.colnames:
            np.testing.assert_array_equal(np.asarray(back[c]), np.asarray(table[c]))
        assert back["age_median"].unit == table["age_median"].unit
    with pytest.raises(ValueError, match=".fits or .h5"):
        write_results(table, tmp_path / "r.csv")


def test_qp_round_trip(fitted, tmp_path):
    objs, chunks, _, path = fitted
    ens = to_qp(path, "z")
    assert ens.npdf == 24  # the all-NaN row 3 is left out
    ok = [o for o in objs if o["m"] != 3]
    np.testing.assert_array_equal(ens.ancil["m"], [o["m"] for o in ok])
    np.testing.assert_array_equal(ens.ancil["zmode"], [o["stats"]["z"]["map"] for o in ok])
    np.testing.assert_array_equal(ens.ancil["zmedian"], [o["stats"]["z"]["median"] for o in ok])
    ens.write_to(str(tmp_path / "z_qp.hdf5"))
    back = qp.read(str(tmp_path / "z_qp.hdf5"))
    assert back.npdf == 24
    np.testing.assert_allclose(back.objdata["pdfs"], ens.objdata["pdfs"])
    np.testing.assert_array_equal(back.metadata["bins"].ravel(), EDGES[0])
    # the histogram densities evaluate back to the stored posts_target
    centres = 0.5 * (EDGES[0][1:] + EDGES[0][:-1])
    np.testing.assert_allclose(
        back.pdf(centres), np.stack([o["posts_target"]["z"] for o in ok]), rtol=1e-6, atol=1e-9
    )
    from_chunks = to_qp(chunks, "z", bins=EDGES[0])
    np.testing.assert_allclose(from_chunks.objdata["pdfs"], ens.objdata["pdfs"])
    with pytest.raises(KeyError, match="not among"):
        to_qp(chunks, "mass", bins=EDGES[0])
    with pytest.raises(ValueError, match="edges"):
        to_qp(chunks, "age", bins=EDGES[0])
