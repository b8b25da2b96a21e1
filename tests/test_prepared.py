"""`PreparedGrid`: what a fitter derives from its grid is built once and is what the
step uses — and what the output file records — whatever happens to the grid later."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from conftest import make_grid

import jaxgrid.prepared as prepared_mod
from jaxgrid import GridFitter, ModelGrid
from jaxgrid.batch import BatchOptions, plan_batch
from jaxgrid.io.results import read_fit_results

EDGES = [np.linspace(0.0, 10.0, 21)]
KW = dict(stats_for=["t0"], stats_bins=EDGES, chunk_size=8, verbose=False)


def _copy(grid: ModelGrid) -> ModelGrid:
    return ModelGrid(
        np.asarray(grid.observables),
        np.asarray(grid.targets),
        grid.observable_names,
        grid.target_names,
    )


@pytest.fixture
def rows(rng):
    grid = make_grid(rng, n=300, p=3, q=1)
    X = np.asarray(grid.observables, np.float64)[:20] + rng.normal(0, 0.3, (20, 3))
    return grid, X, np.full_like(X, 0.3)


def test_refitting_the_standardiser_leaves_the_fit_and_the_file_on_the_snapshot(
    rows, tmp_path, caplog
):
    grid, X, S = rows
    fitter = GridFitter(grid)  # fits the standardiser on every model

    def stored(std):  # what the run configuration keeps (jaxgrid's keys, no BESTA aliases)
        return {k: v for k, v in std.to_dict().items() if k in ("fitted", "mean", "std")}

    snapshot = stored(grid.standardiser)
    before = GridFitter(_copy(grid)).fit_batch(X, S, return_mode="chunks", **KW)
    before = next(iter(before))

    grid.fit_standardiser(mask=np.arange(grid.n_models) < 40)  # a different standardiser
    live = stored(grid.standardiser)
    assert not np.allclose(live["std"], snapshot["std"])

    path = tmp_path / "fit.h5"
    with caplog.at_level(logging.WARNING, logger="jaxgrid"):
        out = next(iter(fitter.fit_batch(X, S, return_mode="chunks", output_hdf5_path=path, **KW)))
    assert "standardiser changed after this GridFitter was built" in caplog.text

    # the step used the snapshot: the same numbers as a fitter that never saw the refit
    for key in ("log_evidence", "mean", "std", "best"):
        np.testing.assert_array_equal(out[key], before[key])
    # and the file says so (resume compares exactly this)
    config = read_fit_results(path)["configuration"]
    assert config["standardiser"] == snapshot
    assert config["standardiser"] != live

    # a new fitter takes the new standardiser, and its configuration says that
    fresh = GridFitter(grid)
    plan = plan_batch(fresh, X, S, BatchOptions(stats_for=["t0"], stats_bins=EDGES, chunk_size=8))
    assert plan.configuration["standardiser"] == live
    np.testing.assert_allclose(np.asarray(plan.data.obs_std), live["std"], rtol=1e-6)


def test_grid_digest_and_layouts_are_computed_once_per_fitter(rows, monkeypatch):
    grid, X, S = rows
    calls = []
    real = prepared_mod.array_digest
    monkeypatch.setattr(prepared_mod, "array_digest", lambda *a: calls.append(1) or real(*a))
    fitter = GridFitter(grid)
    list(fitter.fit_batch(X, S, return_mode="chunks", **KW))
    assert len(calls) == 3  # grid, likelihood, prior (the catalog's is plan_batch's own)
    for _ in range(2):  # e.g. more Dask partitions on one worker's fitter
        list(fitter.fit_batch(X, S, return_mode="chunks", **KW))
    assert len(calls) == 3
    assert len(fitter.prepared._bins) == 1  # model bins for one layout, reused
    # the digest is of the grid's arrays, as files written before expect
    expected = real(grid.observables, grid.targets, np.zeros(0))
    assert fitter.prepared.digest == expected


def test_native_fits_hold_one_copy_of_the_observables(rows):
    grid, _, _ = rows
    fitter = GridFitter(grid, use_standardised=False)
    assert fitter.data.models is fitter.data.models_native
    padded = fitter.prepared.padded(2, 200)
    assert padded.models is padded.models_native
    assert padded.models.shape == (400, 3)
    assert np.all(np.isneginf(np.asarray(padded.log_weights)[300:]))
    standardised = GridFitter(grid)
    assert standardised.data.models is not standardised.data.models_native
