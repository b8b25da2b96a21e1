"""HDF5 output, resume after SIGKILL, multi-device, progress and logging."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import make_grid

from jaxgrid import GridFitter
from jaxgrid.core.status import Status
from jaxgrid.io.results import GridFitHDF5Writer, read_fit_results

HERE = Path(__file__).parent
EDGES = [np.linspace(0.0, 10.0, 21), np.linspace(0.0, 10.0, 11)]


@pytest.fixture
def setup(rng):
    grid = make_grid(rng, n=300, p=3, q=2)
    X = np.asarray(grid.observables, np.float64)[:30] + rng.normal(0, 0.3, (30, 3))
    S = np.full_like(X, 0.3)
    X[4] = np.nan
    return GridFitter(grid), X, S


def test_hdf5_layout_and_contents_match_returned_results(setup, tmp_path):
    fitter, X, S = setup
    path = tmp_path / "fit.h5"
    res = fitter.fit_batch(
        X,
        S,
        stats_for=["t0", "t1"],
        stats_bins=EDGES,
        return_mode="list",
        verbose=False,
        chunk_size=8,
        return_pdf_for_stats=True,
        output_hdf5_path=path,
        output_hdf5_group="/run1",
    )
    f = read_fit_results(path, "/run1")
    assert f["configuration"]["stats_for"] == ["t0", "t1"]
    np.testing.assert_array_equal(f["index/m"], np.arange(30))
    np.testing.assert_array_equal(f["index/written"], [(-1 if i == 4 else 1) for i in range(30)])
    for i, r in enumerate(res):
        assert f["index/status"][i] == r["status"]
        np.testing.assert_array_equal(f["candidates/candidates"][i], r["candidates"])
        np.testing.assert_array_equal(f["candidates/post_models"][i], r["post_models"])
        assert f["log_evidence"][i] == r["log_evidence"] or (i == 4)
        assert f["best"][i] == r["best"]
        for k in ("n_before", "n_after"):
            assert f[f"truncation/{k}"][i] == r["truncation"][k]
        for k in ("mass_kept", "ess_after", "cut_weight"):
            np.testing.assert_array_equal(f[f"truncation/{k}"][i], r["truncation"][k])
        for name in ("t0", "t1"):
            for k in ("mean", "std", "map", "median", "lo68", "hi68", "nmodes", "mass_in_bins"):
                np.testing.assert_array_equal(f[f"stats/{name}/{k}"][i], r["stats"][name][k])
            np.testing.assert_array_equal(
                f[f"stats/{name}/posts_target"][i], r["posts_target"][name]
            )
        np.testing.assert_array_equal(f["stats/cov/cov"][i], r["stats"]["cov"])
    np.testing.assert_array_equal(f["stats/t1/bins"], EDGES[1])
    assert [k.decode() for k in f["stats/cov/keys"]] == ["t0", "t1"]
    assert f["truncation/level"][0] == -1  # full grid: no binner level


def test_existing_group_needs_overwrite(setup, tmp_path):
    fitter, X, S = setup
    path = tmp_path / "fit.h5"
    kw = dict(verbose=False, output_hdf5_path=path, output_hdf5_write_only=True)
    fitter.fit_batch(X, S, **kw)
    with pytest.raises(ValueError, match="output_hdf5_overwrite=True"):
        fitter.fit_batch(X, S, **kw)
    fitter.fit_batch(X, S, output_hdf5_overwrite=True, **kw)
    fitter.fit_batch(X, S, output_hdf5_group="/other", **kw)
    with h5py.File(path) as f:
        assert {"fit_batch", "other"} <= set(f)


def test_write_only_yields_nothing(setup, tmp_path):
    fitter, X, S = setup
    out = fitter.fit_batch(
        X,
        S,
        verbose=False,
        output_hdf5_path=tmp_path / "a.h5",
        output_hdf5_write_only=True,
        return_mode="list",
    )
    assert out == []
    with h5py.File(tmp_path / "a.h5") as f:
        assert (f["fit_batch/index/written"][...] != 0).all()


def test_resume_with_different_configuration_is_refused(setup, tmp_path):
    fitter, X, S = setup
    path = tmp_path / "fit.h5"
    fitter.fit_batch(X, S, verbose=False, output_hdf5_path=path, output_hdf5_write_only=True)
    with pytest.raises(ValueError, match="different configuration"):
        fitter.fit_batch(
            X,
            S,
            verbose=False,
            output_hdf5_path=path,
            resume=True,
            output_hdf5_write_only=True,
            posterior_keep_mass=0.5,
        )
    X2 = X.copy()
    X2[0, 0] += 1
    with pytest.raises(ValueError, match="different configuration"):
        fitter.fit_batch(
            X2, S, verbose=False, output_hdf5_path=path, resume=True, output_hdf5_write_only=True
        )


def test_resume_computes_only_unwritten_rows(setup, tmp_path):
    fitter, X, S = setup
    path = tmp_path / "fit.h5"
    fitter.fit_batch(
        X, S, verbose=False, output_hdf5_path=path, output_hdf5_write_only=True, chunk_size=8
    )
    with h5py.File(path, "a") as f:
        f["fit_batch/index/written"][10:20] = 0
    done = []
    res = fitter.fit_batch(
        X,
        S,
        verbose=False,
        output_hdf5_path=path,
        resume=True,
        return_mode="list",
        chunk_size=8,
        progress=lambda d, t: done.append(t),
    )
    # every chunk of 8 holding an unwritten row (10..19) is recomputed whole, so each
    # row is fitted in the same chunk as before; the flagged row 4 (written -1) is final
    assert [r["m"] for r in res] == list(range(8, 24)) and done[-1] == 16


# kill -9 and resume: tests/test_crash_safety.py (20 random instants, torn records,
# a kill during assembly, a full disk, a second writer)


def test_two_devices_give_identical_results(tmp_path):
    env = dict(os.environ)
    outs = {}
    for n_dev in (1, 2):
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n_dev}"
        out = tmp_path / f"dev{n_dev}.npz"
        subprocess.run(
            [sys.executable, str(HERE / "batch_worker.py"), "dump", str(out)],
            check=True,
            env=env,
            capture_output=True,
            timeout=300,
        )
        outs[n_dev] = np.load(out)
    assert int(outs[1]["n_devices"]) == 1 and int(outs[2]["n_devices"]) == 2
    for key in set(outs[1].files) - {"n_devices"}:
        np.testing.assert_array_equal(outs[1][key], outs[2][key], err_msg=key)


def test_progress_callback_and_logging(setup, caplog):
    fitter, X, S = setup
    calls = []
    with caplog.at_level(logging.INFO, logger="jaxgrid"):
        list(fitter.fit_batch(X, S, chunk_size=8, progress=lambda d, t: calls.append((d, t))))
    assert calls == [(8, 30), (16, 30), (24, 30), (30, 30)]
    assert any("objects/s" in r.message for r in caplog.records)


def test_silent_when_verbose_off(setup, capsys, caplog):
    fitter, X, S = setup
    with caplog.at_level(logging.WARNING, logger="jaxgrid"):
        list(fitter.fit_batch(X, S, verbose=False))
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_standalone_writer(tmp_path):
    path = tmp_path / "w.h5"
    with GridFitHDF5Writer(path, "/g", 5, {"a": 1}, ["t"], [np.linspace(0, 1, 3)]) as w:
        res = {
            "level": np.array([3, 3]),
            "n_before": np.array([10, 10]),
            "n_after": np.array([2, 1]),
            "mass_kept": np.array([0.9, 1.0]),
            "mass_dropped": np.array([0.1, 0.0]),
            "cut_weight": np.array([0.1, 1.0]),
            "ess_before": np.array([2.0, 1.0]),
            "ess_after": np.array([1.5, 1.0]),
            "candidate_idx": np.array([[4, 2], [7, -1]]),
            "candidate_w": np.array([[0.6, 0.4], [1.0, 0.0]]),
            "mean": np.array([[0.5], [0.2]]),
            "std": np.array([[0.1], [0.0]]),
            "map": np.array([[0.25], [0.25]]),
            "median": np.array([[0.5], [0.2]]),
            "lo68": np.array([[0.3], [0.1]]),
            "hi68": np.array([[0.7], [0.3]]),
            "nmodes": np.array([[1], [1]]),
            "cov": np.zeros((2, 1, 1)),
            "pdf": [np.zeros((2, 2))],
            "log_evidence": np.array([-1.0, -2.0]),
            "chi2_min": np.array([0.5, 0.1]),
            "best": np.array([4, 7]),
            "status": np.array([0, 0]),
            "bad": np.array([False, False]),
        }
        w.write(np.array([1, 3]), res)
        # a failed row as fit_batch hands it to the writer: bad, its status flags, NaN
        # summaries, nothing kept
        failed = {k: np.full((1, *np.shape(v)[1:]), np.nan) for k, v in res.items() if k != "pdf"}
        failed |= {
            "level": np.array([-1]),
            "n_before": np.array([0]),
            "n_after": np.array([0]),
            "best": np.array([-1]),
            "nmodes": np.array([[-1]]),
            "pdf": [np.full((1, 2), np.nan)],
            "candidate_idx": np.zeros(0, np.int64),
            "candidate_w": np.zeros(0),
            "candidate_offsets": np.array([0, 0]),
            "status": np.array([int(Status.NO_OBSERVABLES)], np.int32),
            "bad": np.array([True]),
        }
        w.write(np.array([4]), failed)
    f = read_fit_results(path, "/g")
    np.testing.assert_array_equal(f["index/written"], [0, 1, 0, 1, -1])
    assert f["index/status"][4] == int(Status.NO_OBSERVABLES)
    assert np.isnan(f["stats/t/mean"][4]) and len(f["candidates/candidates"][4]) == 0
    np.testing.assert_array_equal(f["candidates/candidates"][1], [4, 2])
    np.testing.assert_array_equal(f["stats/t/mean"][[1, 3]], [0.5, 0.2])
    assert f["configuration"] == {"a": 1}
