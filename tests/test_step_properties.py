"""Property tests of the batch step (hypothesis): random small grids, catalogs with
missing bands, bad errors and upper limits, random truncation settings, the whole
grid or a binner's candidates, chunks that do not divide the catalog — each row
agrees with the float64 NumPy reference (`tests/reference.py`), and no row's result
depends on the other rows of its chunk.

Run in float64 inside ``jax.enable_x64(True)`` (a context manager: the setting is
thread-local, which fit_batch must honour on its worker threads too). Shapes come
from a few fixed buckets, so the step compiles a bounded number of times."""

import jax
import numpy as np
import reference as ref
from batch_helpers import BruteForceKNN, assert_row_matches, row_log_weights
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxgrid import GridFitter, ModelGrid
from jaxgrid.core.status import BAD_STATUS, Status

#: (models, observables, targets): the extremes of N 1..60, P 1..5, Q 1..3
SHAPES = [(1, 1, 1), (9, 2, 2), (60, 5, 3)]
CHUNK = 5  # never divides the row counts below that are not multiples of 5
EDGES = np.linspace(0.0, 1.0, 11)
SETTINGS = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,  # reproducible in CI
    suppress_health_check=[HealthCheck.too_slow],
)


@st.composite
def problems(draw):
    n, p, q = draw(st.sampled_from(SHAPES))
    return dict(
        n=n,
        p=p,
        q=q,
        seed=draw(st.integers(0, 2**31 - 1)),
        m=draw(st.integers(1, 12)),
        keep_mass=draw(st.sampled_from([0.5, 0.9, 0.99, 1.0])),
        keep_min=draw(st.integers(1, 8)),
        binner=n > 1 and draw(st.booleans()),  # one model: nothing to preselect
        weights=draw(st.booleans()),
        nan_frac=draw(st.sampled_from([0.0, 0.2, 0.5])),
        upper_frac=draw(st.sampled_from([0.0, 0.3])),
    )


def _setup(pb):
    """The grid, catalog (X, S, U) and binner of a drawn problem."""
    rng = np.random.default_rng(pb["seed"])
    n, p, q, m = pb["n"], pb["p"], pb["q"], pb["m"]
    # targets fixed per shape: the whole grid's histogram layout (static in the step,
    # planned from the targets' bins) stays the same, so each bucket compiles once
    tgt = np.random.default_rng(n).uniform(0.0, 1.0, (n, q))
    obs = 20.0 + tgt @ rng.normal(0, 1, (q, p)) + 0.3 * rng.normal(size=(n, p))
    w = rng.uniform(0.2, 2.0, n) if pb["weights"] else None
    grid = ModelGrid(obs, tgt, [f"b{i}" for i in range(p)], [f"t{i}" for i in range(q)], weights=w)
    X = obs[rng.integers(0, n, m)] + rng.normal(0, 0.3, (m, p))
    S = rng.uniform(0.1, 0.5, (m, p))
    X[rng.random((m, p)) < pb["nan_frac"]] = np.nan  # missing bands
    S[rng.random((m, p)) < pb["nan_frac"] / 4] = -1.0  # bad errors: flagged, then missing
    S[rng.random((m, p)) < pb["nan_frac"] / 4] = np.nan
    U = rng.random((m, p)) < pb["upper_frac"]
    binner = BruteForceKNN(grid, max(1, n // 3)) if pb["binner"] else None
    return grid, X, S, U, binner


def _fit(fitter, X, S, U, binner, pb):
    q = fitter.grid.n_targets
    return fitter.fit_batch(
        X,
        S,
        upper_limits=U,
        binner=binner,
        stats_for=list(range(q)),
        stats_bins=[EDGES] * q,
        return_mode="list",
        verbose=False,
        chunk_size=CHUNK,
        posterior_keep_mass=pb["keep_mass"],
        posterior_keep_min_candidates=pb["keep_min"],
        return_pdf_for_stats=True,
    )


@SETTINGS
@given(problems())
def test_rows_match_the_float64_reference(pb):
    with jax.enable_x64(True):  # the grid too: float64 models
        grid, X, S, U, binner = _setup(pb)
        q = grid.n_targets
        fitter = GridFitter(grid, use_standardised=False)
        res = _fit(fitter, X, S, U, binner, pb)
    assert [r["m"] for r in res] == list(range(pb["m"]))
    # the binner sees the rows as fit_batch hands them over: bad values are missing
    X_in = np.where(S <= 0, np.nan, X)
    cands = None if binner is None else binner.batch_candidates(X_in, S)[0]
    for i, r in enumerate(res):
        flagged = bool(np.any(S[i] <= 0))
        assert bool(r["status"] & Status.BAD_INPUT) == flagged
        lw = row_log_weights(grid, X[i], S[i], upper=U[i])
        cand = np.arange(grid.n_models) if cands is None else cands[i]
        if not np.isfinite(lw).any():  # no usable band (or no model weight)
            assert r["status"] & BAD_STATUS
            continue
        assert not r["status"] & BAD_STATUS
        want = ref.batch_row_reference(
            lw[cand],
            cand,
            np.asarray(grid.targets, np.float64)[cand],
            keep_mass=pb["keep_mass"],
            keep_min=pb["keep_min"],
            cap=None,
            stats_cols=tuple(range(q)),
            edges=[EDGES] * q,
        )
        assert_row_matches(r, want, [f"t{c}" for c in range(q)], tuple(range(q)))


@SETTINGS
@given(problems(), st.randoms(use_true_random=False))
def test_a_row_does_not_depend_on_the_other_rows(pb, rnd):
    """Permuting the catalog and adding a row without any band changes no row's result
    (chunks are composed differently; equal to float64 rounding)."""
    with jax.enable_x64(True):
        grid, X, S, U, binner = _setup(pb)
    perm = np.arange(pb["m"])
    rnd.shuffle(perm)
    at = rnd.randrange(pb["m"] + 1)  # where the bad row goes
    X2 = np.insert(X[perm], at, np.nan, axis=0)
    S2 = np.insert(S[perm], at, 0.2, axis=0)
    U2 = np.insert(U[perm], at, False, axis=0)
    with jax.enable_x64(True):
        fitter = GridFitter(grid, use_standardised=False)
        one = _fit(fitter, X, S, U, binner, pb)
        two = _fit(fitter, X2, S2, U2, binner, pb)
    assert two[at]["status"] & Status.NO_OBSERVABLES
    del two[at]
    for j, i in enumerate(perm):
        a, b = one[i], two[j]
        assert a["status"] == b["status"]
        np.testing.assert_array_equal(a["candidates"], b["candidates"])
        np.testing.assert_allclose(a["post_models"], b["post_models"], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(a["log_evidence"], b["log_evidence"], rtol=1e-12)
        assert a["truncation"]["n_after"] == b["truncation"]["n_after"]
        for c in range(grid.n_targets):
            sa, sb = a["stats"][f"t{c}"], b["stats"][f"t{c}"]
            for k in ("mean", "std", "median", "lo68", "hi68"):
                np.testing.assert_allclose(sa[k], sb[k], rtol=1e-10, atol=1e-12, err_msg=k)


def test_enable_x64_context_fits_in_float64(rng):
    """Under ``with jax.enable_x64(True):`` (thread-local) fit_batch computes in float64
    end to end: chunks prepared on worker threads are not rounded to float32."""
    n, p = 200, 3
    tgt = rng.uniform(0.0, 1.0, (n, 1))
    obs = 20.0 + tgt @ rng.normal(0, 1, (1, p)) + 0.3 * rng.normal(size=(n, p))
    # values whose float32 rounding moves log Z by ~1e-6 relative: far above float64's
    X = obs[:12] + 1e-4 * np.pi + rng.normal(0, 0.01, (12, p))
    S = np.full_like(X, 0.01 * np.e)
    with jax.enable_x64(True):
        grid = ModelGrid(obs, tgt, [f"b{i}" for i in range(p)], ["t"])
        fitter = GridFitter(grid, use_standardised=False)
        res = fitter.fit_batch(
            X,
            S,
            stats_for=["t"],
            stats_bins=[EDGES],
            return_mode="list",
            verbose=False,
            chunk_size=5,
            posterior_keep_mass=1.0,
        )
    for r, x, s in zip(res, X, S, strict=True):
        lw = row_log_weights(grid, x, s)
        want = ref.batch_row_reference(
            lw,
            np.arange(n),
            grid.targets,
            keep_mass=1.0,
            keep_min=128,
            cap=None,
            stats_cols=(0,),
            edges=[EDGES],
        )
        np.testing.assert_allclose(r["log_evidence"], want["log_evidence"], rtol=1e-12)
        np.testing.assert_allclose(
            r["stats"]["t"]["mean"], want["stats"][0]["mean"], rtol=1e-11, atol=1e-13
        )
