"""Plots render (Agg) and show the right content: legends, metrics equal to
jaxgrid.metrics' on the same arrays, density vs points, labels inside the saved
figure, no overlapping tick labels."""

import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402
from matplotlib.contour import QuadContourSet  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402

from jaxgrid import GridFitter, ModelGrid  # noqa: E402
from jaxgrid.metrics import photoz_metrics, pit_cvm, pit_ks  # noqa: E402
from jaxgrid.plots import (  # noqa: E402
    DENSITY_THRESHOLD,
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


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _metrics(ax) -> dict[str, float]:
    """The numbers of the metrics box, by the name before ``=``."""
    (text,) = [t for t in ax.texts if t.get_gid() == "jaxgrid-metrics"]
    out = {}
    for line in text.get_text().splitlines():
        name, value = line.split(" = ")
        out[name.strip()] = float(re.sub(r"[ %,]", "", value))
    return out


def _legend(ax_or_fig) -> list[str]:
    leg = ax_or_fig.get_legend() if hasattr(ax_or_fig, "get_legend") else ax_or_fig.legends[0]
    assert leg is not None, "no legend drawn"
    return [t.get_text() for t in leg.get_texts()]


def _texts(fig):
    """Every drawn, non-empty text of the figure's visible axes and legends, with its
    window extent: axis labels, titles, tick labels in view, legend and metrics texts."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    out = []
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            locs = axis.get_majorticklocs()
            for loc, tick in zip(locs, axis.get_major_ticks(len(locs)), strict=True):
                lab = tick.label1
                if lo <= loc <= hi and lab.get_visible() and lab.get_text():
                    out.append(lab)
            if axis.label.get_text():
                out.append(axis.label)
        out += [t for t in (ax.title,) if t.get_text()]
        out += [t for t in ax.texts if t.get_visible()]
        if ax.get_legend() is not None:
            out += ax.get_legend().get_texts()
    for leg in fig.legends:
        out += leg.get_texts()
    return [(t, t.get_window_extent(r)) for t in out], r


def _check_layout(fig, tmp_path, name):
    """Saved without bbox_inches="tight", nothing is cut off, and no two texts overlap."""
    fig.savefig(tmp_path / f"{name}.png")
    texts, r = _texts(fig)
    assert texts
    inside = fig.bbox.padded(0.5)
    for t, bb in texts:
        assert inside.contains(bb.x0, bb.y0) and inside.contains(bb.x1, bb.y1), (
            f"{t.get_text()!r} is cut off: {bb} outside {fig.bbox}"
        )
    tight = fig.get_tightbbox(r)  # inches
    w, h = fig.get_size_inches()
    assert tight.x0 >= -0.01 and tight.y0 >= -0.01 and tight.x1 <= w + 0.01
    assert tight.y1 <= h + 0.01
    for k, (t1, b1) in enumerate(texts):
        for t2, b2 in texts[k + 1 :]:
            inter = Bbox.intersection(b1, b2)
            assert inter is None or inter.width * inter.height < 1.0, (
                f"{t1.get_text()!r} overlaps {t2.get_text()!r}"
            )


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
    q0 = np.interp([0.16, 0.5, 0.84], cdf, t[order, 0])
    np.testing.assert_allclose(summary["q"][0], q0)
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


def test_corner_labels_legend_and_layout(fitter, tmp_path):
    x = np.array([0.5, 1.1, 0.3])
    s = np.array([0.1, 0.15, 0.2])
    fig, axes, summary = fitter.corner_for_targets(
        x, s, ["a", "b", "c"], true_target_vals=[0.4, np.nan, 0.1], bins=[20, 35, 12]
    )
    assert _legend(fig) == ["quantiles 16/50/84 %", "best model", "mean", "truth"]
    assert len(axes[1, 1].lines) == 3 + 1 + 1  # no truth line for the unknown b
    # each diagonal is titled "name = median^{+up}_{-down}" with the weighted quantiles
    w = np.asarray(fitter.posterior_over_models(x, s), np.float64)
    t = np.asarray(fitter.grid.targets, np.float64)
    for i, name in enumerate("abc"):
        title = axes[i, i].get_title()
        m = re.fullmatch(rf"{name} = \$([-\d.]+)\^\{{\+([\d.]+)\}}_\{{-([\d.]+)\}}\$", title)
        assert m, title
        lo, med, hi = weighted_quantiles(t[:, i], w, [0.16, 0.5, 0.84])
        ndec = len(m.group(1).split(".")[1]) if "." in m.group(1) else 0
        tol = 0.51 * 10.0**-ndec + 1e-12
        assert float(m.group(1)) == pytest.approx(med, abs=tol)
        assert float(m.group(2)) == pytest.approx(hi - med, abs=tol)
        assert float(m.group(3)) == pytest.approx(med - lo, abs=tol)
        assert summary["median"][i] == pytest.approx(med)
    # tick labels only on the outer panels; every axis named on the outer panels
    assert [axes[2, j].get_xlabel() for j in range(3)] == ["a", "b", "c"]
    assert [axes[i, 0].get_ylabel() for i in (1, 2)] == ["b", "c"]
    assert not any(lab.get_visible() for lab in axes[1, 0].get_xticklabels())
    assert not any(lab.get_visible() for lab in axes[2, 1].get_yticklabels())
    _check_layout(fig, tmp_path, "corner")


def test_corner_one_target_and_bad_truth(fitter, tmp_path):
    fig, axes, _ = fitter.corner_for_targets(
        np.array([0.5, 1.1, 0.3]), np.array([0.1, 0.15, 0.2]), ["b"], true_target_vals=[0.9]
    )
    assert axes.shape == (1, 1) and "truth" in _legend(axes[0, 0])
    _check_layout(fig, tmp_path, "corner1")
    with pytest.raises(ValueError, match="true_target_vals"):
        fitter.corner_for_targets(
            np.array([0.5, 1.1, 0.3]),
            np.array([0.1, 0.15, 0.2]),
            ["a", "b"],
            true_target_vals=[0.1],
        )


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


def test_pit_histogram_band_legend_metrics(tmp_path):
    pit = np.random.default_rng(2).uniform(size=4000) ** 1.3
    ax, counts, (lo, hi) = pit_histogram(np.concatenate([pit, [np.nan]]), bins=20)
    assert counts.sum() == 4000 and lo == pytest.approx(200 - np.sqrt(4000 * 0.05 * 0.95))
    assert hi == pytest.approx(200 + np.sqrt(4000 * 0.05 * 0.95))
    np.testing.assert_array_equal(counts, np.histogram(pit, bins=20, range=(0, 1))[0])
    assert _legend(ax) == ["PIT", "uniform ± 1σ"]
    m = _metrics(ax)
    assert m["N"] == 4000
    assert m["KS"] == pytest.approx(pit_ks(pit), abs=5.1e-5)
    cvm = pit_cvm(pit)
    assert m["CvM"] == pytest.approx(cvm, rel=1e-3)
    assert ax.get_ylim()[1] > counts.max()  # head room: the box does not hide the bars
    _check_layout(ax.figure, tmp_path, "pit")
    ax, _, _ = pit_histogram(pit, show_metrics=False, legend=False, band_sigma=2)
    assert ax.get_legend() is None and not ax.texts


def test_zphot_scatter_below_threshold_with_metrics(tmp_path):
    rng = np.random.default_rng(3)
    zt = rng.uniform(0, 3, 500)
    zp = zt + rng.normal(0, 0.05, 500) * (1 + zt)
    zp[:20] = rng.uniform(0, 3, 20)  # some outliers
    zp[20] = np.nan  # excluded everywhere
    ax = zphot_vs_ztrue(zt, zp)
    assert not [c for c in ax.collections if isinstance(c, PolyCollection)]
    dots = [ln for ln in ax.get_lines() if ln.get_marker() == "."]
    assert len(dots) == 1 and len(dots[0].get_xdata()) == 499
    assert _legend(ax) == ["objects", "1:1", "|Δz|/(1+z) = 0.15"]
    ok = np.isfinite(zp)
    assert ax.get_xlim() == pytest.approx((0, max(zt.max(), zp[ok].max())))
    ref = photoz_metrics(zt, zp)
    m = _metrics(ax)
    assert m["N"] == ref["n"] == 499
    assert m["bias"] == pytest.approx(ref["bias"], abs=5.1e-5)
    assert m[r"$\sigma_\mathrm{NMAD}$"] == pytest.approx(ref["nmad"], abs=5.1e-5)
    assert m["outliers"] == pytest.approx(100 * ref["outlier_fraction"], abs=5.1e-3)
    assert ref["outlier_fraction"] > 0.01
    _check_layout(ax.figure, tmp_path, "zphot_scatter")
    ax = zphot_vs_ztrue(zt, zp, outlier_cut=0.1, show_metrics=False)
    assert not ax.texts and _legend(ax)[-1] == "|Δz|/(1+z) = 0.1"
    assert _metrics(zphot_vs_ztrue(zt, zp, outlier_cut=0.1))["outliers"] == pytest.approx(
        100 * photoz_metrics(zt, zp, outlier_cut=0.1)["outlier_fraction"], abs=5.1e-3
    )


def test_zphot_density_above_threshold_and_override(tmp_path):
    rng = np.random.default_rng(4)
    n = DENSITY_THRESHOLD + 1
    zt = rng.uniform(0, 2, n)
    zp = zt + rng.normal(0, 0.03, n)
    ax = zphot_vs_ztrue(zt, zp)
    (hb,) = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert hb.get_array().sum() == n  # every object counted once, no dots drawn
    assert not [ln for ln in ax.get_lines() if ln.get_marker() == "."]
    assert len(ax.figure.axes) == 2  # the colour bar
    assert _legend(ax) == ["1:1", "|Δz|/(1+z) = 0.15"]
    assert _metrics(ax)["N"] == n
    _check_layout(ax.figure, tmp_path, "zphot_hexbin")
    # overridable either way
    ax = zphot_vs_ztrue(zt, zp, kind="scatter")
    assert not [c for c in ax.collections if isinstance(c, PolyCollection)]
    ax = zphot_vs_ztrue(zt[:100], zp[:100], kind="hexbin", colorbar=False)
    assert [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(ax.figure.axes) == 1
    ax = zphot_vs_ztrue(zt[:100], zp[:100], density_threshold=50)
    assert [c for c in ax.collections if isinstance(c, PolyCollection)]


def test_zphot_bad_input():
    with pytest.raises(ValueError, match="`kind`"):
        zphot_vs_ztrue([0.1], [0.1], kind="dots")
    with pytest.raises(ValueError, match="differ"):
        zphot_vs_ztrue([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="no object"):
        zphot_vs_ztrue([np.nan], [0.1])


def test_posterior_plot(tmp_path):
    ax = plot_posterior_over_target(np.ones(10) / 2, np.linspace(0.1, 1.9, 10), truth=1.0)
    assert len(ax.lines) == 2 and ax.get_legend() is None
    ax = plot_posterior_over_target(
        np.ones(10) / 2, np.linspace(0.1, 1.9, 10), truth=1.0, label="galaxy 1", xlabel="z"
    )
    assert _legend(ax) == ["galaxy 1", "truth"] and ax.get_xlabel() == "z"
    _check_layout(ax.figure, tmp_path, "posterior")


def test_corner_besta_keywords(fitter):
    """figsize, suptitle, color, alpha_hist, alpha_mesh and kappa_sigma_edges (BESTA's):
    the zoomed range is median -/+ kappa x the 16/84 % distances, clipped to the models."""
    x, s = np.array([0.5, 1.1, 0.3]), np.array([0.1, 0.15, 0.2])
    fig, axes, summary = fitter.corner_for_targets(
        x, s, ["a", "b"], bins=20, figsize=(5.0, 4.0), suptitle="obj 7", color="C4",
        kappa_sigma_edges=2.0, alpha_hist=0.3, alpha_mesh=0.5,
    )  # fmt: skip
    assert tuple(fig.get_size_inches()) == (5.0, 4.0)
    assert fig.get_suptitle() == "obj 7"
    patch = axes[0, 0].patches[0]
    assert patch.get_alpha() == 0.3
    assert matplotlib.colors.to_hex(patch.get_facecolor()) == matplotlib.colors.to_hex("C4")
    assert axes[1, 0].collections[0].get_alpha() == 0.5
    w = np.asarray(fitter.posterior_over_models(x, s), np.float64)
    t = np.asarray(fitter.grid.targets, np.float64)
    for i in range(2):
        lo, med, hi = weighted_quantiles(t[:, i], w / w.sum(), [0.16, 0.5, 0.84])
        want = (max(med - 2 * (med - lo), t[:, i].min()), min(med + 2 * (hi - med), t[:, i].max()))
        assert axes[i, i].get_xlim() == pytest.approx(want)
    with pytest.raises(ValueError, match="kappa_sigma_edges"):
        fitter.corner_for_targets(x, s, ["a"], kappa_sigma_edges=0.0)
