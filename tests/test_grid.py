import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_grid

from jaxgrid import LinearStandardiser, ModelGrid


def test_basic_properties(rng):
    g = make_grid(rng, n=50, p=3, q=2, weights=True, meta={"library": "test"})
    assert (g.n_models, g.n_observables, g.n_targets) == (50, 3, 2)
    assert g.observables.dtype == jnp.float32 and isinstance(g.observables, jnp.ndarray)
    np.testing.assert_array_equal(np.asarray(g.get_target("t1")), np.asarray(g.targets[:, 1]))
    with pytest.raises(KeyError, match=r"known targets: \['t0', 't1'\]"):
        g.get_target("logM")


def test_float64_when_x64_enabled(x64, rng):
    g = make_grid(rng, n=5)
    assert g.observables.dtype == jnp.float64


@pytest.mark.parametrize(
    "kwargs,msg",
    [
        ({"observables": np.zeros(5)}, "`observables` must be 2-D"),
        ({"targets": np.zeros((5, 2, 1))}, "`targets` must be 2-D"),
        ({"targets": np.zeros((4, 2))}, "has 5 models .* but `targets` has 4"),
        (
            {"observable_names": ["a", "b"]},
            "`observable_names` has 2 names but `observables` has 3",
        ),
        ({"target_names": ["x"]}, "`target_names` has 1 names"),
        ({"observable_names": ["a", "a", "b"]}, r"duplicate observable names \['a'\]"),
        ({"target_names": ["x", "x"]}, r"duplicate target names \['x'\]"),
        ({"weights": np.ones(4)}, r"`weights` must have shape \(5,\)"),
        ({"weights": -np.ones(5)}, "non-negative"),
        ({"observables": np.full((5, 3), np.nan)}, "`observables` has 15 non-finite"),
        ({"targets": np.array([[1, np.inf]] * 5)}, "`targets` has 5 non-finite"),
        ({"observables": np.zeros((0, 3)), "targets": np.zeros((0, 2))}, "empty"),
        ({"meta": {"f": object()}}, "JSON"),
        ({"check_boundaries": 3}, "callable"),
    ],
)
def test_validation_errors(kwargs, msg):
    args = dict(
        observables=np.zeros((5, 3)),
        targets=np.zeros((5, 2)),
        observable_names=["a", "b", "c"],
        target_names=["x", "y"],
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=msg):
        ModelGrid(**args)


def test_select_rows_columns_and_standardisers(rng):
    def inside(t):
        return t[:, 0] > 0

    g = make_grid(rng, n=40, p=4, q=3, weights=True, meta={"a": 1})
    g.check_boundaries = inside
    g.fit_standardiser()
    g.fit_target_standardiser()
    mask = np.zeros(40, bool)
    mask[::3] = True
    s = g.select(mask, observables=["mag_2", 0], targets=[2])
    assert s.observable_names == ["mag_2", "mag_0"] and s.target_names == ["t2"]
    np.testing.assert_array_equal(
        np.asarray(s.observables), np.asarray(g.observables)[mask][:, [2, 0]]
    )
    np.testing.assert_array_equal(np.asarray(s.weights), np.asarray(g.weights)[mask])
    assert s.meta == {"a": 1} and s.check_boundaries is inside
    np.testing.assert_array_equal(s.standardiser.mean, g.standardiser.mean[[2, 0]])
    np.testing.assert_array_equal(s.target_standardiser.std, g.target_standardiser.std[[2]])
    s2 = g.select([1, 2], standardisers=False)
    assert not s2.standardiser.is_fitted and s2.n_models == 2


def test_standardiser_fit_reference(rng):
    v = rng.normal(3, 2, size=(100, 3))
    v[5, 1] = np.nan
    v[:, 2] = 7.0
    s = LinearStandardiser().fit(v)
    np.testing.assert_allclose(s.mean[:2], np.nanmean(v[:, :2], axis=0), rtol=1e-14)
    np.testing.assert_allclose(s.std[:2], np.nanstd(v[:, :2], axis=0, ddof=0), rtol=1e-14)
    assert s.mean[2] == 7.0 and s.std[2] == 1.0  # zero std replaced by 1
    z = s.transform(v)
    np.testing.assert_allclose(s.inverse_transform(z), v, rtol=1e-14)
    # host: float64 NumPy out, also for a (concrete) JAX input; traced: JAX in its dtype
    zh = s.transform(jnp.asarray(v, jnp.float32))
    assert isinstance(zh, np.ndarray) and zh.dtype == np.float64
    np.testing.assert_allclose(zh, (v.astype(np.float32) - s.mean) / s.std, rtol=1e-14)
    zj = jax.jit(s.transform)(jnp.asarray(v, jnp.float32))
    assert isinstance(zj, jax.Array) and zj.dtype == jnp.float32
    np.testing.assert_allclose(zj, zh, rtol=1e-5, atol=1e-6)
    assert s.sd is s.std and s.is_fit
    assert LinearStandardiser.from_dict(s.to_dict()) == s


def test_standardiser_unfitted_and_mask(rng):
    with pytest.raises(RuntimeError, match="not fitted"):
        LinearStandardiser().transform(np.zeros((2, 2)))
    g = make_grid(rng, n=30, p=2)
    mask = np.arange(30) < 10
    g.fit_standardiser(mask)
    np.testing.assert_allclose(
        g.standardiser.mean, np.asarray(g.observables, np.float64)[:10].mean(0), rtol=1e-6
    )
    np.testing.assert_allclose(
        g.inverse_transform_observables(g.transform_observables(np.asarray(g.observables))),
        np.asarray(g.observables),
        rtol=1e-5,
    )
