"""The CPU-friendly kernels of the step (cumsum, argmax, scatter-free histograms)
against NumPy, and fit_batch with each histogram layout against a float64 reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgrid import GridFitter, ModelGrid
from jaxgrid.core.reductions import (
    argmax_last,
    bin_index,
    cumsum_last,
    dense_histogram,
)
from jaxgrid.prepared import histogram_layout


@pytest.mark.parametrize("n", [1, 2, 7, 301, 1024, 1031])
def test_cumsum_last_matches_numpy(rng, n):
    x = rng.random((3, 5, n)).astype(np.float32)
    got = np.asarray(jax.jit(cumsum_last)(jnp.asarray(x)))
    want = np.cumsum(x.astype(np.float64), axis=-1)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6 * n)


def test_cumsum_last_float64(x64, rng):
    x = rng.random((4, 333))
    np.testing.assert_allclose(np.asarray(cumsum_last(jnp.asarray(x))), np.cumsum(x, -1), 1e-13)


def test_argmax_last_first_of_ties_and_all_minus_inf(rng):
    x = rng.integers(0, 5, (50, 40)).astype(np.float32)  # many ties
    x[3] = -np.inf
    x[4, 7:] = np.inf
    got = np.asarray(jax.jit(argmax_last)(jnp.asarray(x)))
    np.testing.assert_array_equal(got, np.argmax(x, axis=-1))


def _numpy_hist(w, bins, k):
    out = np.zeros((w.shape[0], k))
    for j in range(k):
        out[:, j] = w[:, bins == j].sum(1)
    return out


@pytest.mark.parametrize(
    "bins, kind",
    [
        (np.arange(24) // 4, "runs"),  # (6 bins x 4 models), bin-major
        (np.arange(24) % 6, "strided"),  # (4 x 6), e.g. type-major template grids
        (np.array([0, 2, 2, 1, -1, 0, 3, 3, 1, 2]), "gather"),  # irregular, one outside
        (np.array([0] * 20 + [1, 2, 3]), "scatter"),  # padding would be > 2x the work
    ],
)
def test_histogram_layouts_match_numpy(rng, bins, kind):
    k = int(bins.max()) + 1
    layout, index = histogram_layout(bins, k)
    assert layout[0] == kind
    w = rng.random((5, bins.size))
    want = _numpy_hist(w, bins, k)
    if kind == "scatter":
        return
    got = np.asarray(dense_histogram(jnp.asarray(w, jnp.float32), layout, index))
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("order", ["type_major", "z_major", "shuffled"])
def test_fit_batch_with_each_layout_matches_float64_reference(rng, order):
    """A (type x z) grid in three model orders: strided, runs and gather layouts give
    the float64 reference histogram of the posterior over z."""
    nt, nz = 4, 30
    z = np.linspace(0.0, 2.9, nz)
    t, zz = np.meshgrid(np.arange(nt), z, indexing="ij")  # type-major
    t, zz = t.ravel(), zz.ravel()
    if order == "z_major":
        perm = np.lexsort((t, zz))
    elif order == "shuffled":
        perm = rng.permutation(t.size)
    else:
        perm = np.arange(t.size)
    t, zz = t[perm], zz[perm]
    obs = np.column_stack([20 + zz * (1 + 0.3 * b) + 0.5 * t for b in range(3)])
    grid = ModelGrid(obs, np.column_stack([zz, t]), ["a", "b", "c"], ["z", "type"])
    edges = np.linspace(-0.05, 2.95, nz + 1)  # one z value per bin
    X = obs[rng.integers(0, obs.shape[0], 12)] + rng.normal(0, 0.2, (12, 3))
    S = np.full_like(X, 0.2)
    fitter = GridFitter(grid, use_standardised=False)
    out = fitter.fit_batch(
        X,
        S,
        stats_for=["z", "type"],
        stats_bins=[edges, np.arange(nt + 1) - 0.5],  # one value per bin for both
        posterior_keep_mass=1.0,
        return_candidates=False,
        return_pdf_for_stats=True,
        return_mode="list",
        verbose=False,
    )
    for i, r in enumerate(out):
        chi2 = (((X[i] - obs) / S[i]) ** 2).sum(1)
        lw = -0.5 * chi2
        w = np.exp(lw - lw.max())
        mass = np.array([w[np.abs(zz - zc) < 1e-9].sum() for zc in z])
        dens = mass / mass.sum() / np.diff(edges)
        np.testing.assert_allclose(r["posts_target"]["z"], dens, rtol=2e-4, atol=1e-6)
        tt = np.column_stack([zz, t])
        mean = w @ tt / w.sum()
        d = tt - mean
        cov = (w[:, None] * d).T @ d / w.sum() / (1 - (w**2).sum() / w.sum() ** 2)
        np.testing.assert_allclose(r["stats"]["cov"], cov, rtol=1e-4, atol=1e-7)
        assert r["stats"]["type"]["mean"] == pytest.approx(float(mean[1]), rel=1e-4, abs=1e-6)
    bins = np.asarray(bin_index(jnp.asarray(zz, jnp.float32), jnp.asarray(edges, jnp.float32)))
    kind = histogram_layout(bins, nz)[0][0]
    assert kind == {"type_major": "strided", "z_major": "runs", "shuffled": "gather"}[order]


def test_bin_constant_values():
    from jaxgrid.prepared import bin_constant_values

    bins = np.array([0, 0, 2, 2, 2])
    got = bin_constant_values(np.array([1.5, 1.5, 3.0, 3.0, 3.0]), bins, 3)
    np.testing.assert_array_equal(got, [1.5, 0.0, 3.0])  # bin 1 empty
    assert bin_constant_values(np.array([1.5, 1.6, 3.0, 3.0, 3.0]), bins, 3) is None
    assert bin_constant_values(np.array([1.5, 1.5, 3.0]), np.array([0, 0, -1]), 3) is None
