"""Every benchmark script runs with ``--smoke`` (tiny sizes, the same code paths) and
prints its table; baselines that are not installed (BESTA, BPZ) are skipped by the
scripts themselves. Each script runs in a subprocess in a temporary folder (scratch
output under ``BENCH_TMP``), never writing into the repository; the subprocesses share
a persistent compilation cache and compile with XLA's optimisations mostly off."""

import concurrent.futures as cf
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"

#: script -> a line of its table's header (or of its table)
SCRIPTS = {
    "fit_batch.py": "speed-up",
    "output.py": "| run | s | objects/s |",
    "profile_step.py": "ns/pair",
    "trace_step.py": "us/chunk",
    "calibrate_dc2.py": "mean log Z",
    "dask_scaling.py": "worker process(es)",
    "photoz_vs_bpz.py": "estimator",
    "photoz_quality.py": "NMAD med",
    "vs_besta.py": "jaxgrid obj/s",
    "binners.py": "| binner | K | candidates/row | recall top-100 |",
}
#: what a script says about the baseline it skipped
SKIPPED = {
    "vs_besta.py": "BESTA not given",
    "photoz_vs_bpz.py": "BPZ skipped",
    "photoz_quality.py": "RAIL skipped",
}


#: slowest first: the scripts run two at a time (the CI machines have 2 cores)
ORDER = sorted(
    SCRIPTS, key=lambda s: s not in ("calibrate_dc2.py", "photoz_vs_bpz.py", "photoz_quality.py")
)


def _bench_files():
    return sorted(p.relative_to(BENCH) for p in BENCH.rglob("*"))


def _run(script, folder, cache):
    folder.mkdir()
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        ),
        PYTHONDONTWRITEBYTECODE="1",  # no __pycache__ in bench/ (trace_step imports siblings)
        BENCH_TMP=str(folder),
        TMPDIR=str(folder),
        JAX_PLATFORMS="cpu",
        JAX_DISABLE_MOST_OPTIMIZATIONS="1",
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        MPLBACKEND="Agg",
    )
    return subprocess.run(
        [sys.executable, str(BENCH / script), "--smoke"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every script's completed process (all run once, two at a time)."""
    root = tmp_path_factory.mktemp("bench_smoke")
    before = _bench_files()
    with cf.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            s: pool.submit(_run, s, root / s.removesuffix(".py"), root / "cache") for s in ORDER
        }
        done = {s: f.result() for s, f in futures.items()}
    assert _bench_files() == before  # nothing written into the repository
    return done


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_script_runs_with_smoke(script, runs):
    proc = runs[script]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert SCRIPTS[script] in proc.stdout, proc.stdout[-3000:]
    if script in SKIPPED:
        assert SKIPPED[script] in proc.stdout
