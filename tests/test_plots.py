"""Plots render (Agg) and show the right content; metrics match definitions."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.contour import QuadContourSet  # noqa: E402

from jaxgrid import GridFitter, ModelGrid  # noqa: E402
from jaxgrid.metrics import photoz_metrics, pit_from_binned, pit_ks  # noqa: E402
from jaxgrid.plots import (  # noqa: E402
    hpd_levels,
    pit_histogram,
    plot_posterior_over_target,
    weighted_quantiles,
    zphot_vs_ztrue,
)


@pytest.fixture
def fitter():
    # a 3-target lattice; observables linear in the targets
    a, b, c = np.meshgrid(
        np.linspace(0, 1, 21), np.linspace(0, 2, 31), np.linspace(-1, 1, 11), indexing="ij"
    )
    t = np.column_stack([a.ravel(), b.ravel(), c.ravel()])
    obs = t @ np.array([[1.0, 0.3, 0.0], [0.2, 1.0, 0.1], [0.0, 0.4, 1.0]])
    grid = ModelGrid(obs, t, ["o1", "o2", "o3"], ["a", "b", "c"])
    return GridFitter(grid, use_standardised=False)


def test_corner_plot_content_and_summary(fitter, tmp_path):
    x = np.array([0.5, 1.1, 0.3])
    s = np.array([0.1, 0.15, 0.2])
    fig, axes, summary = fitter.corner_for_targets(
        x, s, ["a", "b", "c"], true_target_vals=[0.4, 0.9, 0.1], bins=[20, 35, 12]
    )
    fig.savefig(tmp_path / "corner.png")
    assert (tmp_path / "corner.png").stat().st_size > 10_000
    assert axes.shape == (3, 3)
    assert sum(ax.get_visible() for ax in axes.ravel()) == 6  # lower triangle + diagonal
    # reference summary from the weights
    w = np.asarray(fitter.posterior_over_models(x, s), np.float64)
    t = np.asarray(fitter.grid.targets, np.float64)
    mean = w @ t / w.sum()
    np.testing.assert_allclose(summary["mean"], mean, rtol=1e-5)
    wn = w / w.sum()
    cov = ((t - mean).T * wn) @ (t - mean) / (1 - np.sum(wn**2))
    np.testing.assert_allclose(summary["cov"], cov, rtol=1e-4)
    np.testing.assert_allclose(np.diag(summary["corr"]), 1.0, rtol=1e-6)
    order = np.argsort(t[:, 0], kind="stable")
    cdf = np.cumsum(wn[order]) - 0.5 * wn[order]
    np.testing.assert_allclose(summary["q"][0], np.interp([0.16, 0.5, 0.84], cdf, t[order, 0]))
    assert summary["names"] == ["a", "b", "c"]
    # diagonal: quantile, best and mean lines (+ truth)
    assert len(axes[1, 1].lines) == 3 + 1 + 1 + 1
    # 2-D panels: HPD contours at the enclosed-mass thresholds, x and y bins differ
    ax = axes[2, 1]
    contours = [c for c in ax.collections if isinstance(c, QuadContourSet)] or [
        c for c in getattr(ax, "_children", []) if isinstance(c, QuadContourSet)
    ]
    assert contours, "no contour set drawn"
    np.testing.assert_allclose(contours[0].levels, summary["levels"][(2, 1)])
    H, _, _ = np.histogram2d(
        t[:, 1],
        t[:, 2],
        bins=[np.linspace(t[:, 1].min(), t[:, 1].max(), 36), np.linspace(-1, 1, 13)],
        weights=wn,
    )
    np.testing.assert_allclose(
        summary["levels"][(2, 1)], np.sort(np.unique(hpd_levels(H, (0.68, 0.95)))), rtol=1e-6
    )
    plt.close(fig)


def test_hpd_levels_enclose_the_mass():
    rng = np.random.default_rng(0)
    m = rng.exponential(size=(30, 40))
    for level in (0.5, 0.68, 0.95):
        thr = hpd_levels(m, [level])[0]
        inside = m[m >= thr].sum() / m.sum()
        assert inside >= level
        assert m[m > thr].sum() / m.sum() < level  # the smallest such set


def test_weighted_quantiles_equal_weights_match_numpy():
    v = np.random.default_rng(1).normal(size=1001)
    got = weighted_quantiles(v, np.ones_like(v), [0.1, 0.5, 0.9])
    # the midpoint rule is Hyndman & Fan's type 5 ("hazen")
    np.testing.assert_allclose(got, np.quantile(v, [0.1, 0.5, 0.9], method="hazen"), rtol=1e-12)


def test_pit_histogram_band(tmp_path):
    pit = np.random.default_rng(2).uniform(size=4000)
    ax, counts, (lo, hi) = pit_histogram(pit, bins=20)
    assert counts.sum() == 4000 and lo == pytest.approx(200 - np.sqrt(4000 * 0.05 * 0.95))
    assert hi == pytest.approx(200 + np.sqrt(4000 * 0.05 * 0.95))
    ax.figure.savefig(tmp_path / "pit.png")
    plt.close(ax.figure)


def test_zphot_plot_and_posterior_plot(tmp_path):
    zt = np.random.default_rng(3).uniform(0, 3, 500)
    ax = zphot_vs_ztrue(zt, zt + 0.01)
    assert len(ax.lines) == 4 and ax.get_xlim() == pytest.approx((0, zt.max() + 0.01), abs=0.02)
    plt.close(ax.figure)
    ax = plot_posterior_over_target(np.ones(10) / 2, np.linspace(0.1, 1.9, 10), truth=1.0)
    assert len(ax.lines) == 2
    plt.close(ax.figure)


def test_photoz_metrics_definitions():
    zt = np.array([0.1, 0.5, 1.0, 2.0, np.nan])
    ze = np.array([0.11, 0.5, 1.5, 2.1, 1.0])
    m = photoz_metrics(zt, ze)
    d = (ze[:4] - zt[:4]) / (1 + zt[:4])
    assert m["bias"] == pytest.approx(np.median(d))
    assert m["nmad"] == pytest.approx(1.4826 * np.median(np.abs(d - np.median(d))))
    assert m["outlier_fraction"] == pytest.approx(0.25) and m["n_excluded"] == 1


def test_pit_from_binned_and_ks():
    edges = np.linspace(0, 2, 21)
    dens = np.full((3, 20), 0.5)  # uniform on [0, 2]
    pit = pit_from_binned(edges, dens, [0.5, 1.0, 3.0])
    np.testing.assert_allclose(pit, [0.25, 0.5, 1.0])
    np.testing.assert_allclose(
        pit_from_binned(edges, dens * np.diff(edges), [0.5, 1.0, 3.0], kind="mass"), pit
    )
    assert np.isnan(pit_from_binned(edges, np.zeros((1, 20)), [1.0])[0])
    u = np.random.default_rng(4).uniform(size=5000)
    assert pit_ks(u) < 0.03 and pit_ks(u**2) > 0.2


def test_pit_cvm_and_coverage():
    from scipy import stats

    from jaxgrid.metrics import coverage, pit_cvm

    u = np.random.default_rng(6).uniform(size=3000)
    assert pit_cvm(u) * len(u) == pytest.approx(
        stats.cramervonmises(u, "uniform").statistic, rel=1e-9
    )
    # Gaussian PDFs with the right width cover ~68% / 95%; too narrow ones less
    rng = np.random.default_rng(7)
    edges = np.linspace(-6, 6, 241)
    c = 0.5 * (edges[1:] + edges[:-1])
    truth = rng.normal(size=4000)
    right = np.exp(-0.5 * c[None] ** 2) * np.ones((4000, 1))
    narrow = np.exp(-0.5 * (c[None] / 0.5) ** 2) * np.ones((4000, 1))
    cov = coverage(edges, right, truth)
    assert cov[0.68] == pytest.approx(0.68, abs=0.03) and cov[0.95] == pytest.approx(
        0.95, abs=0.015
    )
    assert coverage(edges, narrow, truth)[0.68] < 0.45
