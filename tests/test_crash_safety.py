"""Nothing lost: kill -9 at random instants, torn journal records, a kill during
assembly, a full disk, a second writer, stale locks (issue 13, section 1)."""

import errno
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import make_grid
from output_helpers import WORKER, assert_same_file, run_worker, small_problem

from jaxgrid.cli import main as cli_main
from jaxgrid.io import results as results_mod
from jaxgrid.io import results_to_table
from jaxgrid.io.results import (
    GridFitHDF5Writer,
    OutputInUseError,
    journal_path,
    read_fit_results,
)


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    """The uninterrupted run every interrupted one must equal."""
    path = tmp_path_factory.mktemp("clean") / "clean.h5"
    proc = run_worker(path)
    assert proc.returncode == 0, proc.stderr
    assert not journal_path(path, "/fit_batch").exists()
    assert not Path(f"{path}.lock").exists()
    return path


def assert_readable_or_absent(path):
    """The atomic replace: after any kill the file is absent or a complete HDF5 file."""
    if path.exists():
        with h5py.File(path, "r") as f:
            if "fit_batch" in f:
                f["fit_batch/index/written"][...]


def test_kill_at_random_instants_then_resume_equals_uninterrupted_run(tmp_path, clean_run):
    """15 SIGKILLs at random instants (start-up, compilation, journal writes, assembly,
    exit), three chains of five kills, each run resuming the one killed before it."""
    rnd = random.Random(13)
    kills = 0
    for chain in range(3):
        path = tmp_path / f"chain{chain}.h5"
        for _ in range(5):
            proc = subprocess.Popen(
                WORKER + [str(path), "resume", "sleep"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            if rnd.random() < 0.2:
                time.sleep(rnd.uniform(0.0, 2.0))  # during import / compilation
            else:
                proc.stdout.readline()  # the first chunk is written: kill in the write phase
                time.sleep(rnd.uniform(0.0, 0.6))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
            proc.stdout.close()
            kills += proc.returncode == -signal.SIGKILL
            assert_readable_or_absent(path)
        done = run_worker(path, "resume")
        assert done.returncode == 0, done.stderr
        assert_same_file(path, clean_run)
        assert not journal_path(path, "/fit_batch").exists()
        assert not Path(f"{path}.lock").exists()
    assert kills >= 11  # most runs were really killed (not finished first)


@pytest.mark.parametrize("crash", ["record:1", "record:7", "assemble"])
def test_kill_inside_a_record_or_the_assembly(tmp_path, clean_run, crash):
    path = tmp_path / "out.h5"
    # a finished file of another group must survive the crash untouched
    with h5py.File(path, "w") as f:
        f["keep/me"] = np.arange(5)
        f.attrs["note"] = "user data"
    env = dict(os.environ, JAXGRID_TEST_CRASH=crash)
    proc = run_worker(path, env=env)
    assert proc.returncode == -signal.SIGKILL
    with h5py.File(path, "r") as f:  # the old file, intact
        np.testing.assert_array_equal(f["keep/me"][...], np.arange(5))
        assert "fit_batch" not in f
    jpath = journal_path(path, "/fit_batch")
    assert jpath.exists()
    if crash == "assemble":
        assert list(tmp_path.glob("out.h5.tmp-*"))  # the half-assembled file
    proc = run_worker(path, "resume")
    assert proc.returncode == 0, proc.stderr
    assert not list(tmp_path.glob("out.h5.tmp-*"))
    assert_same_file(path, clean_run)
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["keep/me"][...], np.arange(5))
        assert f.attrs["note"] == "user data"


def test_a_second_writer_is_refused_without_hdf5_locking(tmp_path, clean_run):
    path = tmp_path / "out.h5"
    env = dict(os.environ, HDF5_USE_FILE_LOCKING="FALSE")
    first = subprocess.Popen(
        WORKER + [str(path), "pause"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    assert first.stdout.readline().startswith(b"done")  # the first writer is writing
    second = run_worker(path, "resume", env=env)
    Path(f"{path}.go").touch()  # let the first one finish
    assert second.returncode != 0
    assert "is being written by pid" in second.stderr and "lock" in second.stderr
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert_same_file(path, clean_run)


# ----------------------------------------------------------------------- in-process
@pytest.fixture
def small(rng):
    return small_problem(rng)


def test_stale_lock_is_taken_over_live_or_foreign_lock_refused(tmp_path, small):
    fitter, X, S, kw = small
    path = tmp_path / "out.h5"
    lock = Path(f"{path}.lock")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "start": "1"}))
    fitter.fit_batch(X, S, output_hdf5_path=path, **kw)  # stale (dead pid): taken over
    assert not lock.exists()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start = results_mod._start_time(sleeper.pid)
        lock.write_text(
            json.dumps({"pid": sleeper.pid, "host": socket.gethostname(), "start": start})
        )
        with pytest.raises(OutputInUseError, match=f"pid {sleeper.pid}"):
            fitter.fit_batch(X, S, output_hdf5_path=path, output_hdf5_overwrite=True, **kw)
    finally:
        sleeper.kill()
        sleeper.wait()
    lock.write_text(json.dumps({"pid": 1, "host": "elsewhere.example", "start": None}))
    with pytest.raises(OutputInUseError, match="elsewhere.example"):
        fitter.fit_batch(X, S, output_hdf5_path=path, output_hdf5_overwrite=True, **kw)
    lock.unlink()


def _reference(fitter, X, S, kw, path):
    fitter.fit_batch(X, S, output_hdf5_path=path, **kw)
    return path


def test_disk_full_in_a_journal_write_then_resume(tmp_path, small, monkeypatch):
    """Simulated ENOSPC at the write call (the real file system case is the tmpfs test
    below): a clear OSError naming the path and the bytes, then a resume loses nothing."""
    fitter, X, S, kw = small
    ref = _reference(fitter, X, S, kw, tmp_path / "ref.h5")
    path = tmp_path / "out.h5"
    real_write, calls = os.write, [0]

    def full_write(fd, data):
        calls[0] += 1
        if calls[0] > 3:
            n = real_write(fd, bytes(data[: len(data) // 3]))  # part, then the disk is full
            if n:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(results_mod.os, "write", full_write)
    with pytest.raises(OSError, match="not enough disk space for .*journal.*bytes needed") as e:
        fitter.fit_batch(X, S, output_hdf5_path=path, **kw)
    assert e.value.errno == errno.ENOSPC
    # what the end of the run needs too: at least the assembled group's datasets
    later = int(str(e.value).split("needs about ")[1].split(" bytes more")[0].replace(",", ""))
    assert later > 40 * (8 * 20 + 8 * 8)
    monkeypatch.setattr(results_mod.os, "write", real_write)
    fitter.fit_batch(X, S, output_hdf5_path=path, resume=True, **kw)
    assert_same_file(path, ref)


def test_too_little_free_space_is_refused_before_writing(tmp_path, small, monkeypatch):
    fitter, X, S, kw = small
    ref = _reference(fitter, X, S, kw, tmp_path / "ref.h5")
    path = tmp_path / "out.h5"
    usage = shutil.disk_usage(tmp_path)
    free = [10**12]

    def disk_usage(p):
        return type(usage)(usage.total, usage.used, free[0])

    monkeypatch.setattr(results_mod.shutil, "disk_usage", disk_usage)

    def fill_disk(done, total):
        if done >= 24:
            free[0] = 100

    with pytest.raises(OSError, match=r"about [\d,]+ bytes needed, 100 free"):
        fitter.fit_batch(X, S, output_hdf5_path=path, progress=fill_disk, **kw)
    assert not path.exists()  # the assembly was refused too: no half file
    free[0] = 10**12
    fitter.fit_batch(X, S, output_hdf5_path=path, resume=True, **kw)
    assert_same_file(path, ref)


TMPFS_SCRIPT = textwrap.dedent(
    """
    set -u
    mount -t tmpfs -o size=400k tmpfs "$D" || exit 77
    "$PY" "$W" write "$D/out.h5" > "$O/first.out" 2> "$O/first.err"; echo $? > "$O/first.rc"
    ls -la "$D" > "$O/ls.txt"
    mount -o remount,size=64m "$D" || exit 78
    "$PY" "$W" write "$D/out.h5" resume > "$O/second.out" 2> "$O/second.err"
    echo $? > "$O/second.rc"
    cp "$D/out.h5" "$O/out.h5" 2>/dev/null
    exit 0
    """
)


def test_disk_full_on_a_real_small_file_system(tmp_path, clean_run):
    """A 400 kB tmpfs mounted in a private user + mount namespace (skipped where the
    system forbids it): the run fails with a clear OSError, no crash; after the file
    system grows, a resume completes with nothing lost."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1): the simulated ENOSPC test covers this")
    mnt, out = tmp_path / "mnt", tmp_path / "out"
    mnt.mkdir()
    out.mkdir()
    env = dict(os.environ, D=str(mnt), O=str(out), PY=sys.executable, W=WORKER[1])
    cmd = ["unshare", "--user", "--map-root-user", "--mount", "bash", "-c", TMPFS_SCRIPT]
    if os.geteuid() == 0:
        cmd = ["unshare", "--mount", "bash", "-c", TMPFS_SCRIPT]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode in (1, 77, 78) and not (out / "first.rc").exists():
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()[:200]})")
    assert proc.returncode == 0, proc.stderr
    first_rc = int((out / "first.rc").read_text())
    err = (out / "first.err").read_text()
    assert first_rc == 1, err  # a Python exception, not a signal (139 = segfault)
    assert "OSError" in err and "not enough disk space" in err and "bytes needed" in err
    assert int((out / "second.rc").read_text()) == 0, (out / "second.err").read_text()
    assert_same_file(out / "out.h5", clean_run)


def test_resume_fingerprint_includes_chunk_size(tmp_path, small):
    fitter, X, S, kw = small
    path = tmp_path / "out.h5"
    fitter.fit_batch(X, S, output_hdf5_path=path, **kw)
    with pytest.raises(ValueError, match="differs in: chunk_size"):
        fitter.fit_batch(X, S, output_hdf5_path=path, resume=True, **{**kw, "chunk_size": 16})


def test_resume_and_overwrite_together_are_refused(tmp_path, small):
    fitter, X, S, kw = small
    with pytest.raises(ValueError, match="choose one of output_hdf5_overwrite"):
        fitter.fit_batch(
            X,
            S,
            output_hdf5_path=tmp_path / "o.h5",
            resume=True,
            output_hdf5_overwrite=True,
            **kw,
        )
    assert not (tmp_path / "o.h5").exists()


def test_unfinished_journal_needs_resume_or_overwrite(tmp_path, small, monkeypatch):
    fitter, X, S, kw = small
    ref = _reference(fitter, X, S, kw, tmp_path / "ref.h5")
    path = tmp_path / "out.h5"

    def stop(done, total):
        if done >= 16:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fitter.fit_batch(X, S, output_hdf5_path=path, progress=stop, **kw)
    # the rows committed before the interruption are readable at once
    assert journal_path(path, "/fit_batch").exists()
    with h5py.File(path, "r") as f:
        assert (f["fit_batch/index/written"][...] != 0).sum() >= 16
    with pytest.raises(ValueError, match="unfinished run .*--resume"):
        fitter.fit_batch(X, S, output_hdf5_path=path, **kw)
    fitter.fit_batch(X, S, output_hdf5_path=path, resume=True, **kw)
    assert_same_file(path, ref)


def test_resume_of_a_group_lacking_a_dataset_names_it(tmp_path, small):
    fitter, X, S, kw = small
    path = tmp_path / "out.h5"
    fitter.fit_batch(X, S, output_hdf5_path=path, **kw)
    with h5py.File(path, "a") as f:
        f["fit_batch/index/written"][8:16] = 0
        del f["fit_batch/stats/t0/median"]
    with pytest.raises(ValueError, match="lacks the dataset 'stats/t0/median'"):
        fitter.fit_batch(X, S, output_hdf5_path=path, resume=True, **kw)
    assert not journal_path(path, "/fit_batch").exists()  # nothing left behind


def test_old_format_files_read_with_the_new_names(tmp_path, small, capsys):
    fitter, X, S, kw = small
    path = tmp_path / "out.h5"
    fitter.fit_batch(X, S, output_hdf5_path=path, **kw)
    new = read_fit_results(path)
    with h5py.File(path, "a") as f:  # rewrite the index as format 1 named it
        g = f["fit_batch"]
        written, status = g["index/written"][...], g["index/status"][...]
        del g["index/written"], g["index/status"]
        g["index/status"], g["index/flags"] = written, status
    old = read_fit_results(path)
    np.testing.assert_array_equal(old["index/written"], new["index/written"])
    np.testing.assert_array_equal(old["index/status"], new["index/status"])
    assert "index/flags" not in old
    # the table export and `jaxgrid info` read the old names too
    t_old = results_to_table(path)
    np.testing.assert_array_equal(t_old["status"], new["index/status"])
    np.testing.assert_array_equal(t_old["m"], np.flatnonzero(new["index/written"] != 0))
    assert cli_main(["info", str(path)]) == 0
    n_ok = int((new["index/written"] == 1).sum())
    assert f"({n_ok:,} ok, " in capsys.readouterr().out
    # a file from before `mass_in_bins`: NaN in the table
    with h5py.File(path, "a") as f:
        del f["fit_batch/stats/t0/mass_in_bins"]
    assert np.isnan(results_to_table(path)["t0_mass_in_bins"]).all()


def test_resume_of_an_old_format_group(tmp_path, small):
    fitter, X, S, kw = small
    path, ref = tmp_path / "out.h5", tmp_path / "ref.h5"
    fitter.fit_batch(X, S, output_hdf5_path=ref, **kw)
    fitter.fit_batch(X, S, output_hdf5_path=path, **kw)
    with h5py.File(path, "a") as f:  # format 1 names, rows 8..15 not written
        g = f["fit_batch"]
        written, status = g["index/written"][...], g["index/status"][...]
        written[8:16] = 0
        del g["index/written"], g["index/status"]
        g["index/status"], g["index/flags"] = written, status
    fitter.fit_batch(X, S, output_hdf5_path=path, resume=True, **kw)
    assert_same_file(path, ref)  # assembled with the new names


def test_iter_mode_with_an_output_warns_when_never_consumed(tmp_path, small, caplog):
    fitter, X, S, kw = small
    kw = {k: v for k, v in kw.items() if k != "output_hdf5_write_only"}
    it = fitter.fit_batch(X, S, output_hdf5_path=tmp_path / "o.h5", return_mode="iter", **kw)
    with caplog.at_level("WARNING", logger="jaxgrid"):
        del it
    assert any("never consumed" in r.message for r in caplog.records)
    assert not (tmp_path / "o.h5").exists()
    caplog.clear()
    it = fitter.fit_batch(X, S, output_hdf5_path=tmp_path / "o.h5", return_mode="iter", **kw)
    assert len(list(it)) == 40
    with caplog.at_level("WARNING", logger="jaxgrid"):
        del it
    assert not caplog.records
    assert (read_fit_results(tmp_path / "o.h5")["index/written"] == 1).all()


def test_empty_writer_gives_a_valid_empty_group(tmp_path):
    path = tmp_path / "e.h5"
    with GridFitHDF5Writer(path, "/g", 0, {"a": 1}, ["t"], [np.linspace(0, 1, 3)], True):
        pass
    f = read_fit_results(path, "/g")
    assert f["index/written"].shape == (0,) and f["stats/t/posts_target"].shape == (0, 2)
    assert f["candidates/candidates"].shape == (0,)


# ------------------------------------------------------------------ FITS checksums
def _flip_a_data_byte(path):
    from astropy.io import fits

    with fits.open(path) as hdul:
        offset = hdul[1].fileinfo()["datLoc"] + 10
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x40]))


def test_fits_grid_checksums_are_written_and_verified(tmp_path, rng):
    from astropy.io import fits

    from jaxgrid import ModelGrid

    grid = make_grid(rng, n=50, p=3, q=2)
    path = tmp_path / "g.fits"
    grid.to_fits_table(path)
    grid.to_fits_table(path, hdu_name="SECOND")  # appended in update mode: summed too
    with fits.open(path) as hdul:
        for hdu in hdul[1:]:
            assert "CHECKSUM" in hdu.header and "DATASUM" in hdu.header
    back = ModelGrid.from_fits_table(path)
    np.testing.assert_array_equal(np.asarray(back.observables), np.asarray(grid.observables))
    _flip_a_data_byte(path)
    with pytest.raises(ValueError, match="fails its DATASUM .* check: the file is damaged"):
        ModelGrid.from_fits_table(path)
    plain = tmp_path / "plain.fits"
    grid.to_fits_table(plain, checksum=False)
    with fits.open(plain) as hdul:
        assert "CHECKSUM" not in hdul[1].header
    ModelGrid.from_fits_table(plain)  # no cards: nothing to verify


def test_fits_results_checksums(tmp_path, small):
    from jaxgrid.io import read_results, results_to_table, write_results

    fitter, X, S, kw = small
    kw = {k: v for k, v in kw.items() if k != "output_hdf5_write_only"}
    table = results_to_table(fitter.fit_batch(X, S, return_mode="list", **kw), ["t0"])
    path = tmp_path / "r.fits"
    write_results(table, path)
    back = read_results(path)
    np.testing.assert_array_equal(np.asarray(back["t0_mean"]), np.asarray(table["t0_mean"]))
    _flip_a_data_byte(path)
    with pytest.raises(ValueError, match="read_results: .* fails its DATASUM"):
        read_results(path)
