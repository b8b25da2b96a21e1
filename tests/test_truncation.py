"""`jaxgrid.core.truncation`: the threshold rule against a float64 NumPy sort, row by row."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgrid.core.truncation import (
    Limits,
    float_key,
    kept_mask,
    key_float,
    select_search,
    select_sorted,
)


def sorted_rule(lw, keep_mass, keep_min, keep_max, ties):
    """Kept indices by a stable float64 sort (ties in index order)."""
    lw = np.asarray(lw, np.float64)
    order = np.argsort(-lw, kind="stable")
    n_valid = int(np.isfinite(lw).sum())
    w = np.exp(lw - np.max(lw))
    cum = np.cumsum(w[order]) / w.sum()
    need = 1 + int(np.sum(cum < keep_mass))
    n = max(1, min(max(need, keep_min), keep_max, n_valid))
    if ties:
        n = int(np.sum(lw >= lw[order[n - 1]]))
    return np.sort(order[:n])


def _limits(lw, keep_mass, keep_min, keep_max, ties):
    m = jnp.max(lw, axis=-1)
    W = jnp.sum(jnp.exp(lw - m[..., None]), axis=-1)
    return m, Limits(keep_mass * W, jnp.int32(keep_min), jnp.int32(keep_max), ties)


def _search(lw, limits, m):
    finite = jnp.isfinite(lw)
    w = jnp.where(finite, jnp.exp(lw - m[:, None]), 0.0)

    def stats_at(t):
        ge, gt = lw >= t[:, None], lw > t[:, None]
        return (
            jnp.sum(ge, 1),
            jnp.sum(jnp.where(ge, w, 0.0), 1),
            jnp.sum(gt, 1),
            jnp.sum(jnp.where(gt, w, 0.0), 1),
        )

    n_valid = jnp.sum(finite, 1)
    lo = jnp.min(jnp.where(finite, lw, jnp.inf), 1)
    return select_search(stats_at, lo, m, m, limits, n_valid), n_valid


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("keep", [(0.99, 1, 10**9), (0.5, 40, 10**9), (0.999, 5, 300)])
def test_search_equals_sort(x64, rng, keep, ties):
    keep_mass, keep_min, keep_max = keep
    rows = []
    for width in (0.05, 1.0, 30.0):  # narrow to flat posteriors
        lw = -0.5 * (rng.normal(size=2000) / width) ** 2
        lw[rng.uniform(size=2000) < 0.1] = -np.inf  # excluded models
        lw[:300] = np.round(lw[:300], 1)  # many exact ties
        rows.append(lw)
    lw = jnp.asarray(np.array(rows))
    ties = ties and keep_max > 10**8
    m, limits = _limits(lw, keep_mass, keep_min, keep_max, ties)
    sel, _ = _search(lw, limits, m)
    mask = np.asarray(kept_mask(lw, sel))
    for i, row in enumerate(np.asarray(lw)):
        want = sorted_rule(row, keep_mass, keep_min, keep_max, ties)
        np.testing.assert_array_equal(np.flatnonzero(mask[i]), want)
        assert int(sel.n_keep[i]) == want.size


def test_sorted_list_agrees_and_knows_when_it_cannot(x64, rng):
    lw = jnp.asarray(-0.5 * (rng.normal(size=(6, 3000)) / np.geomspace(0.01, 3, 6)[:, None]) ** 2)
    m, limits = _limits(lw, 0.99, 10, 10**9, False)
    vals, pos = jax.lax.top_k(lw, 128)
    sel_l, fits = jax.vmap(
        lambda v, m_r, kw, n: select_sorted(v, m_r, limits._replace(keep_w=kw), n)
    )(vals, m, limits.keep_w, jnp.full(6, 3000))
    sel_s, _ = _search(lw, limits, m)
    fits = np.asarray(fits)
    assert fits[0] and not fits[-1]  # narrow rows fit in 128, the flattest does not
    for i in np.flatnonzero(fits):
        assert int(sel_l.n_keep[i]) == int(sel_s.n_keep[i])
        assert float(sel_l.t[i]) == float(sel_s.t[i])


def test_float_keys_are_ordered_and_invertible(rng):
    x = np.concatenate(
        [rng.normal(0, 1e3, 500), [0.0, -0.0, 1e-40, -1e-40, 3.4e38, -3.4e38, np.inf, -np.inf]]
    ).astype(np.float32)
    k = np.asarray(float_key(jnp.asarray(x)))
    order = np.argsort(k, kind="stable")
    assert np.all(np.diff(x[order]) >= 0)
    np.testing.assert_array_equal(np.asarray(key_float(jnp.asarray(k), jnp.float32)), x)
