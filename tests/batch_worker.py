"""Runs fit_batch in a child process for the kill/resume and multi-device tests.

usage: python batch_worker.py write OUT.h5 [resume] [sleep] [pause]
       python batch_worker.py dump OUT.npz

``JAXGRID_TEST_CRASH`` makes a writing worker kill itself with SIGKILL at a chosen
instant: ``record:N`` halfway through writing the N-th journal record (a torn
tail), ``assemble`` in the middle of assembling the HDF5 file, ``import:N`` at the
N-th record of a resumed group being copied into a new journal. ``pause`` waits
after the first chunk until ``OUT.h5.go`` exists.
"""

import os
import signal
import sys
import time

import numpy as np


def problem():
    from jaxgrid import GridFitter, ModelGrid
    from jaxgrid.prob import GaussianPrior1D

    rng = np.random.default_rng(2024)
    n, p = 4000, 4
    obs = rng.normal(20, 1.5, (n, p))
    tgt = np.column_stack([rng.uniform(0, 10, n), rng.uniform(0, 3, n)])
    grid = ModelGrid(obs, tgt, ["u", "g", "r", "i"], ["logM", "z"])
    fitter = GridFitter(grid, prior=GaussianPrior1D("z", 1.0, 1.0))
    m = 400
    X = obs[rng.integers(0, n, m)] + rng.normal(0, 0.3, (m, p))
    S = np.full_like(X, 0.3)
    X[10] = np.nan  # a flagged row: written -1 in the file, final (not recomputed)
    X[50, 2] = np.nan
    return fitter, X, S


KW = dict(
    stats_for=["logM", "z"],
    stats_bins=[np.linspace(0, 10, 31), np.linspace(0, 3, 16)],
    return_pdf_for_stats=True,
    find_multimodal=True,
    posterior_keep_mass=0.95,
    posterior_keep_min_candidates=8,
    chunk_size=16,
)


def install_crash(spec: str) -> None:
    from jaxgrid.io import results

    def die():
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    if spec.startswith("record:"):
        target, calls = int(spec.split(":")[1]), [0]
        append = results._Journal.append

        def torn_append(self, payload, sync):
            calls[0] += 1
            if calls[0] == target:
                data = self._frame(results._CHUNK, payload)
                os.write(self._fd, data[: len(data) // 2])
                die()
            append(self, payload, sync)

        results._Journal.append = torn_append
    elif spec == "assemble":
        replay, calls = results.GridFitHDF5Writer._replay, [0]

        def dying_replay(self, g, rec):
            calls[0] += 1
            if calls[0] == 3:
                g.file.flush()
                die()
            replay(self, g, rec)

        results.GridFitHDF5Writer._replay = dying_replay
    elif spec.startswith("import:"):
        target, imp = int(spec.split(":")[1]), results.GridFitHDF5Writer._import

        def dying_import(self, g, journal):
            append, calls = journal.append, [0]

            def counted(payload, sync):
                calls[0] += 1
                if calls[0] == target:
                    die()
                append(payload, sync)

            journal.append = counted
            imp(self, g, journal)

        results.GridFitHDF5Writer._import = dying_import


def main():
    mode, path = sys.argv[1], sys.argv[2]
    if os.environ.get("JAXGRID_TEST_CRASH"):
        install_crash(os.environ["JAXGRID_TEST_CRASH"])
    fitter, X, S = problem()
    if mode == "write":
        resume = "resume" in sys.argv[3:]
        sleep = 0.15 if "sleep" in sys.argv[3:] else 0.0

        go = f"{path}.go" if "pause" in sys.argv[3:] else None  # wait after chunk 1

        def progress(done, total):
            print(f"done {done}", flush=True)
            time.sleep(sleep)
            for _ in range(2400):
                if go is None or os.path.exists(go):
                    break
                time.sleep(0.05)

        fitter.fit_batch(
            X,
            S,
            output_hdf5_path=path,
            output_hdf5_write_only=True,
            resume=resume,
            progress=progress,
            output_hdf5_flush_every=16,
            **KW,
        )
        print("finished", flush=True)
    elif mode == "dump":
        import jax

        # rows per device = chunk_size / devices: pass 8 x the device count so every
        # device runs the same 8-row program as a one-device run
        kw = {**KW, "chunk_size": 8 * jax.local_device_count()}
        chunks = list(fitter.fit_batch(X, S, return_mode="chunks", verbose=False, **kw))
        out = {"n_devices": jax.local_device_count()}
        for key in (
            "log_evidence",
            "chi2_min",
            "best",
            "status",
            "candidate_idx",
            "candidate_w",
            "mean",
            "std",
            "median",
            "lo68",
            "hi68",
            "map",
            "nmodes",
            "cov",
            "mass_kept",
            "ess_before",
            "ess_after",
            "n_after",
        ):
            out[key] = np.concatenate([c[key] for c in chunks])
        np.savez(path, **out)


if __name__ == "__main__":
    main()
