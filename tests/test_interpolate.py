import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgrid import ModelGrid


def _lattice(f, n=15):
    a, b = np.meshgrid(np.linspace(0, 1, n), np.linspace(-2, 2, n), indexing="ij")
    t = np.column_stack([a.ravel(), b.ravel()])
    return ModelGrid(
        f(t),
        t,
        ["o1", "o2", "o3"],
        ["a", "b"],
        check_boundaries=lambda q: (q[:, 0] >= 0) & (q[:, 0] <= 1),
    )


def affine(t):
    return t @ np.array([[1.0, -2.0, 0.5], [0.3, 0.1, -1.0]]) + np.array([2.0, 0.0, 1.0])


def smooth(t):
    return np.column_stack(
        [np.sin(2 * t[:, 0]) + t[:, 1] ** 2, np.exp(0.3 * t[:, 1]), t[:, 0] * t[:, 1]]
    )


def test_local_linear_reproduces_affine_maps(x64):
    grid = _lattice(affine)
    q = np.random.default_rng(0).uniform([0.05, -1.8], [0.95, 1.8], (50, 2))
    got = np.asarray(grid.interpolate_observables(q, mode="local_linear", k=8, ridge=0.0))
    np.testing.assert_allclose(got, affine(q), rtol=1e-10, atol=1e-10)


def test_nearest_and_exact_matches(x64):
    grid = _lattice(smooth)
    t = np.asarray(grid.targets)
    q = t[[3, 17, 100]]
    for mode in ("nearest", "idw", "local_linear"):
        got = np.asarray(grid.interpolate_observables(q, mode=mode, k=6))
        np.testing.assert_allclose(
            got, np.asarray(grid.observables)[[3, 17, 100]], rtol=1e-6, atol=1e-6
        )
    near = np.asarray(grid.interpolate_observables(q + 1e-3, mode="nearest"))
    np.testing.assert_array_equal(near, np.asarray(grid.observables)[[3, 17, 100]])


def test_idw_matches_reference(x64):
    grid = _lattice(smooth)
    q = np.array([[0.33, 0.41], [0.71, -1.13]])
    got = np.asarray(grid.interpolate_observables(q, mode="idw", k=5, p=2.0))
    t = np.asarray(grid.targets)
    z = (t - t.mean(0)) / t.std(0)
    qz = (q - t.mean(0)) / t.std(0)
    for r in range(2):
        d = np.linalg.norm(z - qz[r], axis=1)
        nb = np.argsort(d)[:5]
        w = 1 / d[nb] ** 2
        np.testing.assert_allclose(
            got[r], w @ np.asarray(grid.observables)[nb] / w.sum(), rtol=1e-10
        )


def test_gradient_wrt_query_matches_finite_differences(x64):
    grid = _lattice(smooth, n=25)

    def f(q):
        return jnp.sum(grid.interpolate_observables(q[None], mode="local_linear", k=9)[0] ** 2)

    q0 = jnp.array([0.52, 0.37])
    g = np.asarray(jax.grad(f)(q0))
    eps = 1e-6
    for j in range(2):
        d = jnp.zeros(2).at[j].set(eps)
        fd = (f(q0 + d) - f(q0 - d)) / (2 * eps)
        assert g[j] == pytest.approx(float(fd), rel=1e-5)
    assert np.all(np.isfinite(np.asarray(jax.jit(f)(q0))))


def test_fill_values_and_errors():
    grid = _lattice(smooth)
    q = np.array([[1.5, 0.0], [np.nan, 0.0], [0.5, 0.0]])
    got = np.asarray(grid.interpolate_observables(q, mode="idw", fill_value=-1.0))
    assert np.all(got[:2] == -1.0) and np.all(got[2] != -1.0)
    with pytest.raises(ValueError, match="k >= Q \\+ 1"):
        grid.interpolate_observables(q, mode="local_linear", k=2)
    with pytest.raises(ValueError, match="mode"):
        grid.interpolate_observables(q, mode="cubic")
    with pytest.raises(ValueError, match="targets_query"):
        grid.interpolate_observables(np.zeros((2, 3)))


def test_besta_calling_conventions():
    """BESTA's conventions: default mode local_linear, `method=` alias, k clipped to
    the grid size, a 1-D query is one row."""
    grid = _lattice(smooth)
    q = np.array([[0.31, 0.47]])
    default = np.asarray(grid.interpolate_observables(q))
    np.testing.assert_array_equal(
        default, np.asarray(grid.interpolate_observables(q, mode="local_linear"))
    )
    np.testing.assert_array_equal(
        np.asarray(grid.interpolate_observables(q, method="idw", k=6)),
        np.asarray(grid.interpolate_observables(q, mode="idw", k=6)),
    )
    np.testing.assert_array_equal(np.asarray(grid.interpolate_observables(q[0])), default)
    n = grid.n_models
    np.testing.assert_array_equal(
        np.asarray(grid.interpolate_observables(q, mode="idw", k=10 * n)),
        np.asarray(grid.interpolate_observables(q, mode="idw", k=n)),
    )
    with pytest.raises(ValueError, match="`k`"):
        grid.interpolate_observables(q, k=0)


def _local_linear_reference(t, y, q, k, p=2.0, eps=1e-12, ridge=1e-8, mean=None, sd=None):
    """float64 NumPy: the k nearest in z-scored targets, weights 1 / (d^p + eps),
    least squares on [1, t - q] with a ridge on the normal equations (BESTA's)."""
    mean = t.mean(0) if mean is None else mean
    sd = t.std(0) if sd is None else sd
    tz, qz = (t - mean) / sd, (q - mean) / sd
    out = []
    for row in qz:
        d = np.sqrt(np.sum((tz - row) ** 2, axis=1))
        nb = np.argsort(d, kind="stable")[:k]
        w = 1.0 / (d[nb] ** p + eps)
        X = np.column_stack([np.ones(k), tz[nb] - row])
        beta = np.linalg.solve((X * w[:, None]).T @ X + ridge * np.eye(X.shape[1]),
                               (X * w[:, None]).T @ y[nb])  # fmt: skip
        out.append(beta[0])
    return np.array(out)


def test_local_linear_is_weighted_and_uses_the_target_standardiser(x64):
    rng = np.random.default_rng(0)
    t = rng.uniform(0, 1, (400, 2))
    grid = ModelGrid(smooth(t), t, ["o1", "o2", "o3"], ["a", "b"])
    q = np.array([[0.31, 0.47], [0.7, 0.2], [0.5, 0.9]])
    got = np.asarray(grid.interpolate_observables(q))
    np.testing.assert_allclose(got, _local_linear_reference(t, smooth(t), q, 32), rtol=1e-9)
    grid.fit_target_standardiser(mask=t[:, 0] < 0.3)  # distances in the fitted z-scores
    s = grid.target_standardiser
    want = _local_linear_reference(t, smooth(t), q, 32, mean=s.mean, sd=s.std)
    np.testing.assert_allclose(np.asarray(grid.interpolate_observables(q)), want, rtol=1e-9)
