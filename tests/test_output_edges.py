"""The result writer at its edges (issue 13, found by adversarial testing of the journal
writer): a kill while a resumed group is copied, racing takeovers of a stale lock, files
holding more than our group (links, references, dimension scales, modes, symlinks),
malformed rows from a standalone caller, group names, and the messages a user reads."""

import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from output_helpers import assert_same_file, run_worker, small_problem

from jaxgrid.cli import main as cli_main
from jaxgrid.io import results as results_mod
from jaxgrid.io import results_to_table
from jaxgrid.io.results import (
    GridFitHDF5Writer,
    OutputInUseError,
    journal_path,
    read_fit_results,
)


@pytest.fixture
def small(rng):
    return small_problem(rng)


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("clean") / "clean.h5"
    proc = run_worker(path)
    assert proc.returncode == 0, proc.stderr
    return path


def _writer(path, n=10, **kw):
    return GridFitHDF5Writer(path, "/g", n, {"x": 1}, **kw)


def _chunk(rows):
    """A minimal valid result chunk for `_writer` (no targets)."""
    n = len(rows)
    res = {"bad": np.zeros(n, bool), "status": np.zeros(n, np.int32)}
    res |= {f: np.arange(n, dtype=float) for f in results_mod.TRUNCATION_FIELDS}
    res |= {"log_evidence": np.ones(n), "chi2_min": np.ones(n), "best": np.arange(n)}
    res["candidate_idx"], res["candidate_w"] = np.arange(2 * n), np.full(2 * n, 0.5)
    res["candidate_offsets"] = np.arange(0, 2 * n + 1, 2)
    return res


# ------------------------------------------------------------- resume of a complete group
def test_kill_while_a_resumed_group_is_copied_loses_nothing(tmp_path, clean_run):
    """The group's rows go into a journal that appears only when complete: a kill
    meanwhile leaves the group as the record, and the next resume recomputes only the
    rows it lacks."""
    path = tmp_path / "out.h5"
    shutil.copy(clean_run, path)
    with h5py.File(path, "a") as f:
        f["fit_batch/index/written"][32:64] = 0  # two chunks of 16 not written
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    proc = run_worker(path, "resume", env=dict(os.environ, JAXGRID_TEST_CRASH="import:1"))
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not journal_path(path, "/fit_batch").exists()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before  # the group untouched
    proc = run_worker(path, "resume")
    assert proc.returncode == 0, proc.stderr
    done = [int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("done")]
    assert done[-1] == 32  # only the rows the group lacked
    assert_same_file(path, clean_run)


def test_resuming_a_complete_group_changes_nothing(tmp_path, small):
    fitter, X, S, kw = small
    path = tmp_path / "out.h5"
    fitter.fit_batch(X, S, output_hdf5_path=path, **kw)
    before = os.stat(path)
    fitter.fit_batch(X, S, output_hdf5_path=path, resume=True, **kw)
    after = os.stat(path)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert not journal_path(path, "/fit_batch").exists()
    assert not Path(f"{path}.lock").exists()


# ------------------------------------------------------------------------- stale locks
def test_a_takeover_never_deletes_the_lock_another_contender_just_took(tmp_path):
    """Contender B judged the lock stale and waits for its flock; meanwhile A removes
    the stale lock and takes its own. B must then leave A's lock alone."""
    lock = results_mod._OutputLock(tmp_path / "out.h5")
    stale = {"pid": 2**22 + 7, "host": socket.gethostname(), "start": "1"}
    lock.path.write_text(json.dumps(stale))
    fd = os.open(lock.path, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # A holds the stale lock's inode
    b = threading.Thread(target=lock._remove_stale, args=(stale,))
    b.start()
    time.sleep(0.3)  # B has opened the same inode and waits for the flock
    lock.path.unlink()  # A removes the stale lock ...
    a_owner = {"pid": os.getpid(), "host": socket.gethostname(), "start": "A"}
    lock.path.write_text(json.dumps(a_owner))  # ... and takes its own
    os.close(fd)
    b.join(timeout=10)
    assert json.loads(lock.path.read_text()) == a_owner


RACER = """
import json, sys, time
from pathlib import Path
from jaxgrid.io import results
lock = results._OutputLock(Path(sys.argv[1]))
go = Path(sys.argv[1] + ".go")
print("ready", flush=True)
while not go.exists():
    time.sleep(0.005)
try:
    lock.acquire()
except results.OutputInUseError:
    print("refused", flush=True)
    sys.exit(0)
print("held", flush=True)
time.sleep(1.5)  # hold it while the others try
lock.release()
"""


def test_racing_processes_take_a_stale_lock_over_one_at_a_time(tmp_path):
    path = tmp_path / "out.h5"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = {"pid": dead.pid, "host": socket.gethostname(), "start": "1"}
    Path(f"{path}.lock").write_text(json.dumps(stale))
    racers = [
        subprocess.Popen([sys.executable, "-c", RACER, str(path)], stdout=subprocess.PIPE)
        for _ in range(6)
    ]
    for p in racers:  # every racer imported and waits for the start
        assert p.stdout.readline().strip() == b"ready"
    Path(f"{path}.go").touch()
    said = [p.communicate(timeout=120)[0].decode().split() for p in racers]
    assert sorted(w for s in said for w in s) == ["held"] + ["refused"] * 5, said
    assert not Path(f"{path}.lock").exists()


# ----------------------------------------------------------- a file with other content
def _file_with_other_content(path):
    with h5py.File(path, "w") as f:
        f.attrs["survey"] = "DC2"
        d = f.create_group("data")
        d["x"] = np.arange(5.0)
        d["t"] = np.linspace(0, 1, 5)
        d["t"].make_scale("time")
        d["x"].dims[0].attach_scale(d["t"])
        d.attrs["ref"] = d["x"].ref
        f["soft"] = h5py.SoftLink("/data/x")
        f["dangling"] = h5py.SoftLink("/nowhere")
        f["external"] = h5py.ExternalLink("missing.h5", "/y")
        f["hard"] = d["x"]
    os.chmod(path, 0o640)


def _assert_other_content(path):
    with h5py.File(path, "r") as f:
        assert f.attrs["survey"] == "DC2"
        d = f["data"]
        assert d["x"].dims[0][0] == d["t"]  # the dimension scale is still attached
        np.testing.assert_array_equal(f[d.attrs["ref"]][...], np.arange(5.0))
        assert f.get("soft", getlink=True).path == "/data/x"
        assert f.get("dangling", getlink=True).path == "/nowhere"
        ext = f.get("external", getlink=True)
        assert (ext.filename, ext.path) == ("missing.h5", "/y")
        np.testing.assert_array_equal(f["hard"][...], np.arange(5.0))
    assert os.stat(path).st_mode & 0o777 == 0o640


def test_other_content_of_the_file_survives_every_assembly(tmp_path, small):
    fitter, X, S, kw = small
    path = tmp_path / "out.h5"
    ref = tmp_path / "ref.h5"
    fitter.fit_batch(X, S, output_hdf5_path=ref, **kw)
    _file_with_other_content(path)
    fitter.fit_batch(X, S, output_hdf5_path=path, **kw)
    _assert_other_content(path)
    assert_same_file(path, ref)
    with h5py.File(path, "a") as f:
        f["fit_batch"].attrs["note"] = "mine"
        f["fit_batch/index/written"][8:16] = 0
    fitter.fit_batch(X, S, output_hdf5_path=path, resume=True, **kw)
    fitter.fit_batch(X, S, output_hdf5_path=path, output_hdf5_overwrite=True, **kw)
    _assert_other_content(path)
    assert_same_file(path, ref)
    with h5py.File(path, "r") as f:
        assert f["fit_batch"].attrs["note"] == "mine"  # the user's attribute is kept


def test_a_file_of_only_our_group_keeps_its_mode(tmp_path, small):
    fitter, X, S, kw = small
    path = tmp_path / "out.h5"
    fitter.fit_batch(X, S, output_hdf5_path=path, **kw)
    os.chmod(path, 0o600)
    fitter.fit_batch(X, S, output_hdf5_path=path, output_hdf5_overwrite=True, **kw)
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_a_symlinked_output_stays_a_link(tmp_path, small):
    fitter, X, S, kw = small
    real = tmp_path / "store" / "real.h5"
    real.parent.mkdir()
    link = tmp_path / "out.h5"
    link.symlink_to(real)
    fitter.fit_batch(X, S, output_hdf5_path=link, **kw)
    assert link.is_symlink() and real.is_file()
    assert read_fit_results(link)["index/written"].all()
    fitter.fit_batch(X, S, output_hdf5_path=link, output_hdf5_overwrite=True, **kw)
    assert link.is_symlink()
    assert sorted(p.name for p in real.parent.iterdir()) == ["real.h5"]


def test_leftovers_of_a_killed_assembly_are_removed_with_glob_characters(tmp_path, small):
    fitter, X, S, kw = small
    path = tmp_path / "out[1].h5"
    leftover = tmp_path / "out[1].h5.tmp-99999"
    leftover.write_bytes(b"half an HDF5 file")
    fitter.fit_batch(X, S, output_hdf5_path=path, **kw)
    assert not leftover.exists()


# ------------------------------------------------------------------- interrupted runs
def test_an_overwrite_interrupted_before_its_first_chunk_keeps_the_old_group(tmp_path):
    path = tmp_path / "out.h5"
    with _writer(path) as w:
        w.write(np.arange(10), _chunk(range(10)))
    keep = tmp_path / "keep.h5"
    shutil.copy(path, keep)
    with pytest.raises(KeyboardInterrupt), _writer(path, overwrite=True):
        raise KeyboardInterrupt
    assert_same_file(path, keep, "/g")


def test_reading_while_a_journal_is_pending_says_so(tmp_path, small, caplog):
    fitter, X, S, kw = small

    def stop(done, total):
        if done >= 16:
            raise KeyboardInterrupt

    path = tmp_path / "out.h5"
    with pytest.raises(KeyboardInterrupt):
        fitter.fit_batch(X, S, output_hdf5_path=path, progress=stop, **kw)
    jpath = str(journal_path(path, "/fit_batch"))
    with caplog.at_level(logging.WARNING, logger="jaxgrid"):
        results_to_table(path)
    assert jpath in caplog.text
    other = tmp_path / "never.h5"
    w = GridFitHDF5Writer(other, "/g", 10, {"x": 1})
    w.write(np.arange(4), _chunk(range(4)))
    w._journal.close()  # the process dies: the journal stays, no file
    w._lock.release()
    with pytest.raises(FileNotFoundError, match="journal"):
        read_fit_results(other, "/g")
    with h5py.File(other, "w") as f:  # now the file exists, with another group only
        f["h/x"] = np.arange(3)
    with pytest.raises(KeyError, match="unfinished run .*journal"):
        read_fit_results(other, "/g")


# ------------------------------------------------------------------ standalone callers
@pytest.mark.parametrize(
    "rows,match",
    [
        ([3, 1, 2], "strictly increasing"),
        ([1, 1, 2], "strictly increasing"),
        ([8, 9, 10], r"in \[0, 10\)"),
        ([-1, 0, 1], r"in \[0, 10\)"),
        ([[0, 1, 2]], "1-D array of integer"),
        ([0.0, 1.0, 2.0], "1-D array of integer"),
    ],
)
def test_malformed_rows_are_refused(tmp_path, rows, match):
    with _writer(tmp_path / "o.h5") as w:
        with pytest.raises((ValueError, TypeError), match=match):
            w.write(rows, _chunk(range(3)))
        failed = _chunk(range(3)) | {"bad": np.ones(3, bool), "status": np.ones(3, np.int32)}
        with pytest.raises((ValueError, TypeError), match=match):
            w.write(rows, failed)  # failed rows go through the same check
        assert not w.written().any()


def test_malformed_candidate_offsets_are_refused(tmp_path):
    with _writer(tmp_path / "o.h5") as w:
        res = _chunk(range(3))
        res["candidate_offsets"] = np.array([0, 2, 1, 6])
        with pytest.raises(ValueError, match="non-decreasing offsets"):
            w.write(np.arange(3), res)
        res["candidate_offsets"] = np.array([0, 2, 4, 7])
        with pytest.raises(ValueError, match="non-decreasing offsets"):
            w.write(np.arange(3), res)


def test_write_after_close_is_refused(tmp_path):
    w = _writer(tmp_path / "o.h5")
    w.close()
    with pytest.raises(RuntimeError, match="is closed"):
        w.write(np.arange(2), _chunk(range(2)))


def test_standalone_resume_checks_rows_targets_and_pdfs(tmp_path):
    path = tmp_path / "o.h5"
    w = _writer(path)
    w.write(np.arange(4), _chunk(range(4)))
    w._journal.close()  # killed: the journal stays
    w._lock.release()
    with pytest.raises(ValueError, match="n_rows"):
        _writer(path, n=12, resume=True)
    with pytest.raises(ValueError, match="return_pdf"):
        _writer(path, resume=True, return_pdf=True)
    with _writer(path, resume=True) as w:
        np.testing.assert_array_equal(w.written(), [1] * 4 + [0] * 6)
        w.write(np.arange(4, 10), _chunk(range(6)))
    assert read_fit_results(path, "/g")["index/written"].all()


def test_a_second_writer_in_the_same_process_is_refused_before_the_journal(tmp_path, small):
    fitter, X, S, kw = small
    path = tmp_path / "out.h5"
    with GridFitHDF5Writer(path, "/fit_batch", 40, {"x": 1}):
        with pytest.raises(OutputInUseError, match="another writer of this process"):
            fitter.fit_batch(X, S, output_hdf5_path=path, **kw)


def test_disk_full_while_creating_the_lock_is_a_clear_error(tmp_path, monkeypatch):
    real = Path.write_text

    def full(self, *a, **kw):
        if ".lock." in self.name:
            self.write_bytes(b'{"pid": ')  # a partial private file
            raise OSError(28, "No space left on device", str(self))
        return real(self, *a, **kw)

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError, match="not enough disk space") as err:
        _writer(tmp_path / "o.h5")
    assert err.value.errno == 28
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ----------------------------------------------------------------------- group names
def test_group_names_get_their_own_journals_and_the_root_is_refused(tmp_path):
    path = tmp_path / "o.h5"
    assert journal_path(path, "/a/b") != journal_path(path, "/a.b")
    assert journal_path(path, "a/b/") == journal_path(path, "/a/b")
    for group in ("/", "", "//"):
        with pytest.raises(ValueError, match="root"):
            GridFitHDF5Writer(path, group, 3, {"x": 1})
    w = GridFitHDF5Writer(path, "/a/b", 10, {"x": 1})
    w.write(np.arange(2), _chunk(range(2)))
    w._journal.close()  # killed: /a/b's journal stays
    w._lock.release()
    with GridFitHDF5Writer(path, "/a.b", 10, {"x": 1}) as v:  # not blocked by /a/b's
        v.write(np.arange(10), _chunk(range(10)))
    with pytest.raises(ValueError, match="unfinished run of group '/a/b'"):
        GridFitHDF5Writer(path, "/a/b", 10, {"x": 1})


def test_cli_info_on_a_standalone_group_and_a_pending_journal(tmp_path, capsys):
    path = tmp_path / "o.h5"
    with _writer(path) as w:
        w.write(np.arange(4), _chunk(range(4)))
    w = _writer(path, resume=True)
    w.write(np.arange(4, 6), _chunk(range(2)))
    w._journal.close()  # killed after a chunk: the journal holds newer rows
    w._lock.release()
    assert cli_main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "result group /g: 10 rows, 4 written" in out
    assert str(journal_path(path, "/g")) in out


def test_a_private_lock_file_left_by_a_killed_process_is_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = tmp_path / f"o.h5.lock.{socket.gethostname()}.{dead.pid}"
    left.write_text("{}")
    with _writer(tmp_path / "o.h5"):
        pass
    assert not left.exists()
