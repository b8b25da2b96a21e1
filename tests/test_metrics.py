"""Photo-z metrics match their definitions and the statistics users compare against
(scipy.stats, qp)."""

import numpy as np
import pytest
from scipy import stats

from jaxgrid.metrics import coverage, photoz_metrics, pit_cvm, pit_from_binned, pit_ks


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


@pytest.mark.parametrize("power", [1.0, 1.7])
def test_pit_ks_and_cvm_equal_scipy(power):
    """The statistics users compare against: scipy's (and qp's, which calls scipy), not
    divided by N (a miscalibrated PIT of 10,000 objects gives CvM ~ 100s, KS ~ 0.2)."""
    u = np.random.default_rng(6).uniform(size=3000) ** power
    with_nan = np.concatenate([u, [np.nan, np.inf]])  # non-finite values are ignored
    assert pit_cvm(with_nan) == pytest.approx(
        stats.cramervonmises(u, "uniform").statistic, rel=1e-12
    )
    assert pit_ks(with_nan) == pytest.approx(stats.kstest(u, "uniform").statistic, rel=1e-12)
    assert np.isnan(pit_cvm([np.nan])) and np.isnan(pit_ks([]))


def test_pit_and_statistics_equal_qp():
    """External: qp's PIT of a histogram ensemble (piecewise-linear CDF, like ours) and its
    KS / CvM metrics, on the same binned PDFs and truths (some outside the bins)."""
    import qp
    from qp.metrics.pit import PIT

    rng = np.random.default_rng(0)
    edges = np.linspace(0, 3, 61)
    c = 0.5 * (edges[1:] + edges[:-1])
    mu = rng.uniform(0.5, 2.5, 300)
    truth = mu + rng.normal(0, 0.25, 300)  # wider than the PDFs: not calibrated
    pdf = np.exp(-0.5 * ((c[None] - mu[:, None]) / 0.2) ** 2)
    pdf /= (pdf * np.diff(edges)).sum(1, keepdims=True)
    qp_pit = PIT(qp.Ensemble(qp.hist, data={"bins": edges, "pdfs": pdf}), truth)
    pit = pit_from_binned(edges, pdf, truth)
    np.testing.assert_allclose(pit, qp_pit.pit_samps, atol=1e-12)
    assert pit_cvm(pit) == pytest.approx(qp_pit.evaluate_PIT_CvM().statistic, rel=1e-10)
    assert pit_ks(pit) == pytest.approx(qp_pit.evaluate_PIT_KS().statistic, rel=1e-10)


def test_coverage():
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
