"""`truncate_posterior_mass` (BESTA's `_truncate_posterior_mass`): float64 sort-based
reference on random rows (ties, zeros, every bound), BESTA's documented cases, and
agreement with fit_batch's kept sets (the same rule)."""

import numpy as np
import pytest
from conftest import make_grid

from jaxgrid import GridFitter, _truncate_posterior_mass, truncate_posterior_mass


def _reference(w, keep_mass, kmin, kmax, ties):
    """The kept indices by a plain float64 sort (ties by index)."""
    p = np.asarray(w, float) / np.sum(w)
    order = np.argsort(-p, kind="stable")
    cum = np.cumsum(p[order])
    n_valid = int(np.count_nonzero(p))
    if keep_mass >= 0.9999 and kmax is None:
        return np.arange(p.size)
    need = p.size if keep_mass >= 1.0 else 1 + int(np.sum(cum < keep_mass))
    cap = p.size if kmax is None else min(kmax, p.size)
    n = max(1, min(max(need, kmin), cap, n_valid))
    if ties and kmax is None:
        n = int(np.sum(p[order] >= p[order][n - 1]))
    return order[:n]


def test_random_rows_match_the_sort_reference():
    rng = np.random.default_rng(3)
    for trial in range(300):
        n = int(rng.integers(1, 60))
        w = rng.gamma(0.3, size=n)
        if trial % 3 == 0:  # exact ties and zero weights
            w = np.round(w * 4) / 4
        if not w.any():
            w[0] = 1.0
        keep_mass = float(rng.choice([0.0, 0.3, 0.68, 0.9, 0.99, 0.9999, 1.0]))
        kmin = int(rng.integers(0, 8))
        kmax = None if rng.random() < 0.5 else int(rng.integers(max(kmin, 1), 30))
        ties = bool(rng.random() < 0.4)
        got, gw, meta = truncate_posterior_mass(
            np.arange(n) + 100, w, keep_mass=keep_mass, min_candidates=kmin,
            max_candidates=kmax, keep_ties=ties,
        )  # fmt: skip
        want = _reference(w, keep_mass, kmin, kmax, ties)
        if keep_mass >= 0.9999 and kmax is None:
            np.testing.assert_array_equal(got, np.arange(n) + 100)  # off: input order
        else:
            np.testing.assert_array_equal(got, want + 100, err_msg=f"trial {trial}")
        p = w / w.sum()
        np.testing.assert_allclose(gw, p[got - 100] / p[got - 100].sum(), rtol=1e-14)
        np.testing.assert_allclose(meta["mass_kept"], p[got - 100].sum(), rtol=1e-14)
        assert meta["n_after"] == got.size and meta["n_before"] == n
        np.testing.assert_allclose(meta["ess_before"], 1 / np.sum(p**2), rtol=1e-12)


def test_besta_documented_cases():
    idx = np.arange(6)
    w = np.array([0.5, 0.2, 0.1, 0.1, 0.05, 0.05])
    kept, kw, meta = _truncate_posterior_mass(idx, w, keep_mass=0.75, min_candidates=2)
    assert kept.tolist() == [0, 1, 2] and meta["mass_kept"] >= 0.75
    np.testing.assert_allclose(kw.sum(), 1.0)
    assert meta["cut_weight"] == 0.1
    # a max wins over keep_mass, and switches ties off (as BESTA)
    w2 = np.array([0.4, 0.3, 0.15, 0.15, 0.0, 0.0])
    kept, _, meta = _truncate_posterior_mass(idx, w2, keep_mass=1.0, max_candidates=2)
    assert kept.tolist() == [0, 1] and meta["n_after"] == 2
    kept, _, _ = _truncate_posterior_mass(idx, w2, keep_mass=0.8, keep_ties=True, max_candidates=3)
    assert kept.tolist() == [0, 1, 2]
    kept, _, _ = _truncate_posterior_mass(idx, w2, keep_mass=0.8, keep_ties=True)
    assert kept.tolist() == [0, 1, 2, 3]
    # tolerant ties: 0.149 counts as tied with 0.151 at rtol 2e-2
    w3 = np.array([0.4, 0.3, 0.151, 0.149])
    assert _truncate_posterior_mass(np.arange(4), w3, keep_mass=0.8)[0].tolist() == [0, 1, 2]
    kept, _, _ = _truncate_posterior_mass(
        np.arange(4), w3, keep_mass=0.8, keep_ties=True, tie_rtol=2e-2
    )
    assert kept.tolist() == [0, 1, 2, 3]
    # unnormalised weights are normalised; empty input and max 0 keep nothing
    kept, kw, meta = truncate_posterior_mass(np.arange(3), [5.0, 3.0, 2.0], keep_mass=0.75)
    assert kept.tolist() == [0, 1] and np.isclose(meta["mass_kept"], 0.8)
    kept, kw, meta = truncate_posterior_mass(np.arange(0), [], keep_mass=0.9)
    assert kept.size == 0 and meta["n_after"] == 0 and meta["mass_dropped"] == 1.0
    assert truncate_posterior_mass(idx, w, keep_mass=0.9, max_candidates=0)[0].size == 0


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"w": [0.5, np.nan]}, "finite"),
        ({"w": [0.5, -0.1]}, "non-negative"),
        ({"cand_idx": np.arange(3)}, "entries"),
        ({"min_candidates": -1}, "min_candidates"),
        ({"max_candidates": 2.5}, "max_candidates"),
        ({"keep_mass": np.nan}, "keep_mass"),
        ({"tie_rtol": -1.0}, "tie_rtol"),
    ],
)
def test_bad_arguments_are_named(kw, match):
    args = {"cand_idx": np.arange(2), "w": [0.5, 0.5], "keep_mass": 0.9, **kw}
    with pytest.raises(ValueError, match=match):
        truncate_posterior_mass(args.pop("cand_idx"), args.pop("w"), **args)


@pytest.mark.parametrize("ties", [False, True])
def test_agrees_with_fit_batch(rng, ties):
    """The helper on a row's whole posterior keeps what fit_batch keeps."""
    grid = make_grid(rng, n=400, p=3, q=2)
    fitter = GridFitter(grid)
    X = np.asarray(grid.observables)[:12] + rng.normal(0, 0.8, (12, 3))
    S = np.full_like(X, 0.6)
    kw = dict(return_mode="list", verbose=False)
    full = fitter.fit_batch(X, S, posterior_keep_mass=1.0, **kw)
    cut = fitter.fit_batch(
        X, S, posterior_keep_mass=0.9, posterior_keep_min_candidates=5,
        posterior_keep_ties=ties, **kw,
    )  # fmt: skip
    for f, c in zip(full, cut, strict=True):
        post = np.zeros(grid.n_models)
        post[f["candidates"]] = f["post_models"]
        kept, kw_, meta = truncate_posterior_mass(
            np.arange(grid.n_models), post, keep_mass=0.9, min_candidates=5, keep_ties=ties
        )
        np.testing.assert_array_equal(kept, c["candidates"])
        np.testing.assert_allclose(kw_, c["post_models"], rtol=2e-5, atol=1e-7)
        np.testing.assert_allclose(meta["mass_kept"], c["truncation"]["mass_kept"], rtol=1e-5)
