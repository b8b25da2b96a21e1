"""Shared pieces of the batch tests: a brute-force binner and reference comparisons."""

import numpy as np
import reference as ref


class BruteForceKNN:
    """A real (exhaustive) K-nearest-neighbour selector following the binner protocol."""

    def __init__(self, grid, k, fallback_rows=None):
        self.obs = np.asarray(grid.observables, np.float64)
        self.n_candidates = k
        self.fallback_rows = fallback_rows
        self.last_fallback_rows = None

    def batch_candidates(self, Y, SIG):
        Y = np.asarray(Y, np.float64)
        ok = np.isfinite(Y)
        d = np.nansum(
            np.where(ok[:, None, :], (self.obs[None] - np.nan_to_num(Y)[:, None, :]) ** 2, 0),
            axis=2,
        )
        idx = np.argsort(d, axis=1, kind="stable")[:, : self.n_candidates]
        mask = np.ones_like(idx, bool)
        return idx, mask, self.n_candidates

    def info(self):
        return {"kind": "brute-force-knn", "k": self.n_candidates}


def row_log_weights(
    grid, x, s, *, prior_logp=None, upper=None, limit_kind="flux", floor=0.0, standardised=False
):
    obs = np.asarray(grid.observables, np.float64)
    if standardised:
        mu, sd = grid.standardiser.mean, grid.standardiser.std
        ll = ref.gaussian_loglike(
            (x - mu) / sd, s / sd, (obs - mu) / sd, floor=floor, upper=upper, limit_kind=limit_kind
        )
    else:
        ll = ref.gaussian_loglike(x, s, obs, floor=floor, upper=upper, limit_kind=limit_kind)
    lw = ll + (0.0 if prior_logp is None else prior_logp)
    if grid.weights is not None:
        with np.errstate(divide="ignore"):
            lw = lw + np.log(np.asarray(grid.weights, np.float64))
    return lw


def chi2_reference(grid, x, s, upper=None):
    obs = np.asarray(grid.observables, np.float64)
    ok = np.isfinite(x) & np.isfinite(s) & (s > 0)
    if upper is not None:
        ok &= ~upper
    return np.sum(((obs[:, ok] - x[ok]) / s[ok]) ** 2, axis=1)


def assert_row_matches(got, want, names, stats_cols, rtol=1e-9, atol=1e-12):
    np.testing.assert_array_equal(got["candidates"], want["candidates"])
    np.testing.assert_allclose(got["post_models"], want["post_models"], rtol=rtol, atol=atol)
    assert got["best"] == want["best"]
    np.testing.assert_allclose(got["log_evidence"], want["log_evidence"], rtol=rtol)
    tr = got["truncation"]
    assert tr["n_before"] == want["n_before"] and tr["n_after"] == want["n_after"]
    for k in ("mass_kept", "mass_dropped", "cut_weight", "ess_before", "ess_after"):
        np.testing.assert_allclose(tr[k], want[k], rtol=rtol * 10, atol=atol, err_msg=k)
    for name, col in zip(names, stats_cols):
        g, w = got["stats"][name], want["stats"][col]
        for k in ("mean", "std", "map", "median", "lo68", "hi68"):
            np.testing.assert_allclose(g[k], w[k], rtol=rtol * 10, atol=1e-9, err_msg=f"{name}.{k}")
        assert g["nmodes"] == w["nmodes"]
        if "posts_target" in got:
            np.testing.assert_allclose(
                got["posts_target"][name], w["density"], rtol=1e-8, atol=1e-9
            )
    if names:
        np.testing.assert_allclose(got["stats"]["cov"], want["cov"], rtol=1e-7, atol=1e-12)
