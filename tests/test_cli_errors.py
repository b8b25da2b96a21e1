"""The command line's bad-input boundary: typed settings, checked config files, and one line
on stderr with exit code 2 (never a traceback) for unreadable files and unusable outputs.

Most tests call ``jaxgrid.cli.main`` in-process (an uncaught exception fails the test, as a
traceback would); a subprocess is used where the exit code and the traceback text matter.
"""

import errno
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from jaxgrid import GridFitter, ModelGrid
from jaxgrid.cli import SETTABLE, main
from jaxgrid.demo import make_demo_files


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_errors")
    make_demo_files(folder, n_objects=40)
    return folder


def base(demo, out):
    return ["fit", "--grid", str(demo / "grid.h5"), "--catalog", str(demo / "catalog.fits"),
            "--out", str(out), "--quiet"]  # fmt: skip


def run(capsys, *argv):
    """``main(argv)`` in-process: (exit code, stdout, stderr)."""
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def one_line_error(rc, err, *needles):
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxgrid: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert "Traceback" not in err


@pytest.fixture
def captured(monkeypatch):
    """Replace GridFitter.fit_batch with a recorder: what the CLI would pass to it."""
    calls = []

    def record(self, X, S, **kw):
        calls.append(kw)
        return []

    monkeypatch.setattr(GridFitter, "fit_batch", record)
    return calls


# ----------------------------------------------------------------- typed settings
@pytest.mark.parametrize(
    "text,want",
    [("false", False), ("FALSE", False), ("0", False), ("No", False),
     ("true", True), ("True", True), ("1", True), ("yes", True)],
)  # fmt: skip
def test_set_booleans_are_parsed(demo, tmp_path, capsys, captured, text, want):
    rc, _, err = run(
        capsys, *base(demo, tmp_path / "o.h5"), "--dry-run",
        "--set", f"posterior_keep_ties={text}", "--set", f"find_multimodal={text}",
    )  # fmt: skip
    assert rc == 0, err
    assert captured[0]["posterior_keep_ties"] is want and captured[0]["find_multimodal"] is want


def test_set_values_get_their_types(demo, tmp_path, capsys, captured):
    rc, _, err = run(
        capsys, *base(demo, tmp_path / "o.h5"), "--dry-run",
        "--set", "posterior_keep_mass=0.9", "--set", "chunk_size=64",
        "--set", "memory_budget_bytes=1e8", "--set", "posterior_keep_max_candidates=none",
        "--set", "output_hdf5_compression=None", "--set", "output_hdf5_group=/run1",
    )  # fmt: skip
    assert rc == 0, err
    kw = captured[0]
    assert kw["posterior_keep_mass"] == 0.9 and kw["chunk_size"] == 64
    assert kw["memory_budget_bytes"] == 100_000_000 and type(kw["memory_budget_bytes"]) is int
    assert kw["posterior_keep_max_candidates"] is None and kw["output_hdf5_compression"] is None
    assert kw["output_hdf5_group"] == "/run1"


def test_set_false_reaches_the_output_file(demo, tmp_path, capsys):
    """End to end: ``--set posterior_keep_ties=false`` is stored as false, not True."""
    out = tmp_path / "o.h5"
    rc, _, err = run(capsys, *base(demo, out), "--set", "posterior_keep_ties=false")
    assert rc == 0, err
    with h5py.File(out) as f:
        cfg = json.loads(f["fit_batch"].attrs["configuration"])
    assert cfg["posterior_keep_ties"] is False


@pytest.mark.parametrize(
    "setting,needles",
    [
        ("posterior_keep_ties=maybe", ["posterior_keep_ties", "boolean", "'maybe'"]),
        ("posterior_keep_mass=abc", ["posterior_keep_mass", "a number", "'abc'"]),
        ("posterior_keep_mass=nan", ["posterior_keep_mass", "a number"]),
        ("chunk_size=abc", ["chunk_size", "an integer"]),
        ("chunk_size=1.5", ["chunk_size", "an integer"]),
        ("n_jobs=abc", ["n_jobs", "an integer"]),
        ("output_hdf5_flush_every=often", ["output_hdf5_flush_every", "an integer"]),
        ("posterior_keep_min_candidates=12.5", ["posterior_keep_min_candidates", "integer"]),
        ("memory_budget_bytes=-1", ["memory_budget_bytes", ">= 0"]),
        ("output_hdf5_flush_every=0", ["output_hdf5_flush_every", ">= 1"]),
        ("chunk_size=0", ["`chunk_size` must be >= 1"]),
    ],
)
@pytest.mark.parametrize("dry", [False, True])
def test_bad_settings_name_the_key_and_touch_no_file(demo, tmp_path, capsys, setting, needles, dry):
    out = tmp_path / "o.h5"
    rc, _, err = run(capsys, *base(demo, out), "--set", setting, *(["--dry-run"] if dry else []))
    one_line_error(rc, err, *needles)
    assert not out.exists()  # validated before any file is created


def test_chunk_size_flag_zero_is_refused_like_set(demo, tmp_path, capsys):
    out = tmp_path / "o.h5"
    rc, _, err_flag = run(capsys, *base(demo, out), "--chunk-size", 0)
    one_line_error(rc, err_flag, "chunk_size")
    rc, _, err_set = run(capsys, *base(demo, out), "--set", "chunk_size=0")
    assert err_flag == err_set and not out.exists()


def test_min_above_max_candidates_is_refused(demo, tmp_path, capsys):
    out = tmp_path / "o.h5"
    rc, _, err = run(
        capsys, *base(demo, out),
        "--set", "posterior_keep_min_candidates=64", "--set", "posterior_keep_max_candidates=32",
    )  # fmt: skip
    one_line_error(rc, err, "posterior_keep_min_candidates", "posterior_keep_max_candidates")
    assert not out.exists()


def test_failed_setting_leaves_no_group_that_blocks_the_next_run(demo, tmp_path, capsys):
    out = tmp_path / "o.h5"
    rc, _, err = run(capsys, *base(demo, out), "--set", "n_jobs=abc")
    one_line_error(rc, err, "n_jobs")
    rc, _, err = run(capsys, *base(demo, out), "--set", "n_jobs=2")
    assert rc == 0, err


# ----------------------------------------------------------------- the config file
def config(tmp_path, text):
    p = tmp_path / "cfg.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "text,needles",
    [
        ("colums = {}\n", ["unknown key(s) ['colums']", "'columns'", "'fit'"]),
        ("[fitt]\nchunk_size = 8\n", ["unknown key(s) ['fitt']", "'binner'"]),
        ("[fit]\nchunksize = 8\n", ["[fit]", "['chunksize']", "'chunk_size'"]),
        ("[columns]\nobservable = ['a']\n", ["[columns]", "['observable']", "'observables'"]),
        ("[binner]\nk = 8\n", ["[binner]", "['k']", "'target_k'"]),
        ('[fit]\nchunk_size = "abc"\n', ["[fit]", "chunk_size must be an integer", "'abc'"]),
        ("[fit]\nchunk_size = 1.5\n", ["[fit]", "chunk_size must be an integer"]),
        ('[fit]\nposterior_keep_mass = "0.9"\n', ["posterior_keep_mass must be a number"]),
        ('[fit]\nposterior_keep_ties = "false"\n', ["posterior_keep_ties must be a boolean"]),
        ("[fit]\nn_jobs = true\n", ["n_jobs must be an integer"]),
        ('[fit]\noutput_hdf5_flush_every = "x"\n', ["output_hdf5_flush_every", "integer"]),
        ('stats = "logM"\n', ["stats must be a list of strings", "'logM'"]),
        ("fit = 3\n", ["'fit' must be a table"]),
        ("[columns]\nobservables = 3\n", ["[columns]", "observables must be a table"]),
        ("[columns]\nerrors = ['mag_u_err']\n", ["[columns] errors", "1 columns for 5"]),
        ("[columns]\nid = 1\n", ["[columns]", "id must be a string"]),
    ],
)
def test_bad_config_is_refused_naming_the_key(demo, tmp_path, capsys, text, needles):
    out = tmp_path / "o.h5"
    rc, _, err = run(capsys, *base(demo, out), "--config", config(tmp_path, text))
    one_line_error(rc, err, *needles)
    assert not out.exists()


def test_config_columns_as_lists_and_typed_fit_values(demo, tmp_path, capsys, captured):
    from jaxgrid.demo import BANDS

    text = (
        f"stats = ['logM']\n[columns]\nobservables = {list(BANDS)}\n"
        f"errors = {[b + '_err' for b in BANDS]}\nid = 'id'\n"
        "[fit]\nposterior_keep_ties = false\nchunk_size = 16\nposterior_keep_mass = 1\n"
        "posterior_keep_max_candidates = 'none'\n"
    )
    rc, _, err = run(capsys, *base(demo, tmp_path / "o.h5"), "--dry-run",
                     "--config", config(tmp_path, text))  # fmt: skip
    assert rc == 0, err
    kw = captured[0]
    assert kw["posterior_keep_ties"] is False and kw["chunk_size"] == 16
    assert kw["posterior_keep_mass"] == 1.0 and kw["posterior_keep_max_candidates"] is None
    assert kw["stats_for"] == ["logM"]


def test_every_settable_key_has_a_type():
    assert {kind.rstrip("?") for kind in SETTABLE.values()} <= {"int", "float", "bool", "str"}


# ----------------------------------------------------------------- --stats
def test_infinite_stats_range_is_an_error_without_a_numpy_warning(demo, tmp_path, capsys):
    # warnings are errors in the test run: a RuntimeWarning from linspace would escape main()
    rc, _, err = run(capsys, *base(demo, tmp_path / "o.h5"), "--stats", "logM:-inf:12:10")
    one_line_error(rc, err, "logM:-inf:12:10", "finite")


# ----------------------------------------------------------------- unreadable inputs
def _corrupt(tmp_path, demo, kind):
    if kind == "h5":
        p = tmp_path / "bad.h5"
        p.write_bytes(b"not an hdf5 file" * 64)
    elif kind == "fits":
        p = tmp_path / "bad.fits"
        ModelGrid.load_auto(demo / "grid.h5").to_fits_table(tmp_path / "ok.fits")
        data = (tmp_path / "ok.fits").read_bytes()
        p.write_bytes(data[: len(data) // 2])
    else:
        p = tmp_path / "bad.pkl"
        ModelGrid.load_auto(demo / "grid.h5").to_pickle(tmp_path / "ok.pkl")
        data = (tmp_path / "ok.pkl").read_bytes()
        p.write_bytes(data[: len(data) // 2])
    return p


@pytest.mark.parametrize("kind", ["h5", "fits", "pkl"])
def test_corrupt_grid_is_one_line(demo, tmp_path, capsys, kind):
    bad = _corrupt(tmp_path, demo, kind)
    argv = base(demo, tmp_path / "o.h5")
    argv[argv.index("--grid") + 1] = str(bad)
    rc, _, err = run(capsys, *argv)
    one_line_error(rc, err, str(bad))
    rc, _, err = run(capsys, "info", bad)
    one_line_error(rc, err, str(bad))


def test_corrupt_catalog_is_one_line(demo, tmp_path, capsys):
    data = (demo / "catalog.fits").read_bytes()
    bad = tmp_path / "cat.fits"
    bad.write_bytes(data[: len(data) // 2])
    argv = base(demo, tmp_path / "o.h5")
    argv[argv.index("--catalog") + 1] = str(bad)
    rc, _, err = run(capsys, *argv)
    one_line_error(rc, err, str(bad), "truncated")
    h5 = tmp_path / "cat.h5"
    h5.write_bytes(b"\0" * 1000)
    argv[argv.index("--catalog") + 1] = str(h5)
    rc, _, err = run(capsys, *argv)
    one_line_error(rc, err, str(h5))


def test_missing_catalog_group_is_one_line(demo, tmp_path, capsys):
    from astropy.table import Table

    cat = Table.read(demo / "catalog.fits")
    h5 = tmp_path / "cat.h5"
    with h5py.File(h5, "w") as f:
        for c in cat.colnames:
            f[f"photometry/{c}"] = np.asarray(cat[c])
    argv = base(demo, tmp_path / "o.h5")
    argv[argv.index("--catalog") + 1] = str(h5)
    rc, _, err = run(capsys, *argv, "--hdf5-group", "phot")
    one_line_error(rc, err, "no group 'phot'", "photometry")


def test_corrupt_file_in_a_subprocess_exit_2_and_debug_traceback(demo, tmp_path):
    bad = _corrupt(tmp_path, demo, "pkl")
    cmd = [sys.executable, "-m", "jaxgrid"]
    proc = subprocess.run([*cmd, "info", str(bad)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and str(bad) in proc.stderr
    proc = subprocess.run(
        [*cmd, "--debug", "info", str(bad)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0 and "Traceback" in proc.stderr


# ----------------------------------------------------------------- the output location
@pytest.mark.parametrize("dry", [False, True])
def test_out_is_a_directory(demo, tmp_path, capsys, dry):
    rc, _, err = run(capsys, *base(demo, tmp_path), *(["--dry-run"] if dry else []))
    one_line_error(rc, err, str(tmp_path), "is a directory")


@pytest.mark.parametrize("dry", [False, True])
def test_out_in_a_missing_directory(demo, tmp_path, capsys, dry):
    out = tmp_path / "nope" / "o.h5"
    rc, _, err = run(capsys, *base(demo, out), *(["--dry-run"] if dry else []))
    one_line_error(rc, err, "no such directory", str(tmp_path / "nope"))


@pytest.mark.parametrize("dry", [False, True])
def test_out_not_writable(demo, tmp_path, capsys, monkeypatch, dry):
    """Simulated: the tests run as root, for whom chmod does not stop writes, so os.access
    reports the folder as read-only (as it does on a read-only file system)."""
    real = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if str(p) == str(tmp_path) else real(p, mode)
    )
    rc, _, err = run(capsys, *base(demo, tmp_path / "o.h5"), *(["--dry-run"] if dry else []))
    one_line_error(rc, err, "not writable", str(tmp_path))


@pytest.mark.parametrize(
    "exc",
    [
        OSError(errno.EROFS, "Read-only file system", "/data/o.h5"),
        OSError(errno.ENOSPC, "No space left on device", "/data/o.h5"),
        OSError("Unable to create file (unable to lock file)"),
    ],
)
def test_os_errors_while_writing_are_one_line(demo, tmp_path, capsys, monkeypatch, exc):
    """Simulated at the write: the fit raises the OSError a full or read-only disk gives."""

    def fail(self, *a, **kw):
        raise exc

    monkeypatch.setattr(GridFitter, "fit_batch", fail)
    rc, _, err = run(capsys, *base(demo, tmp_path / "o.h5"))
    one_line_error(rc, err, exc.strerror or str(exc))
    if exc.filename:
        assert exc.filename in err


def test_output_held_by_another_writer_is_one_line(demo, tmp_path, capsys):
    """A lock of a writer on another host (not checkable from here): refused, exit 2."""
    out = tmp_path / "o.h5"
    lock = tmp_path / "o.h5.lock"
    lock.write_text(json.dumps({"pid": 1, "host": "elsewhere.example", "start": None}))
    rc, _, err = run(capsys, *base(demo, out))
    one_line_error(rc, err, "elsewhere.example", "lock")
    assert lock.exists() and not out.exists()


def test_resume_with_overwrite_and_an_existing_group_name_the_flags(demo, tmp_path, capsys):
    out = tmp_path / "o.h5"
    rc, _, err = run(capsys, *base(demo, out), "--resume", "--overwrite")
    one_line_error(rc, err, "--overwrite", "--resume")
    assert not out.exists()
    rc, _, err = run(capsys, *base(demo, out))
    assert rc == 0, err
    rc, _, err = run(capsys, *base(demo, out))
    one_line_error(rc, err, "already has group", "--overwrite", "--resume")
    rc, _, err = run(capsys, *base(demo, out), "--overwrite")  # --overwrite replaces it
    assert rc == 0, err


def test_an_existing_fits_output_needs_overwrite(demo, tmp_path, capsys):
    out = tmp_path / "o.fits"
    rc, _, err = run(capsys, *base(demo, out), "--format", "fits")
    assert rc == 0, err
    rc, _, err = run(capsys, *base(demo, out), "--format", "fits")
    one_line_error(rc, err, "exists", "--overwrite")
    rc, _, err = run(capsys, *base(demo, out), "--format", "fits", "--overwrite")
    assert rc == 0, err
