"""Point-estimate and calibration metrics (host NumPy).

Redshift metrics follow the photo-z community's definitions, with
``d = (z_est - z_true) / (1 + z_true)``: bias = median(d),
sigma_NMAD = 1.4826 median(|d - median(d)|), outlier fraction = mean(|d| > 0.15),
rmse = sqrt(mean(d^2)). PIT = the CDF of an object's PDF at its true value;
a calibrated estimator gives uniform PIT.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["photoz_metrics", "pit_from_binned", "pit_ks", "pit_cvm", "coverage"]


def photoz_metrics(z_true: Any, z_est: Any, outlier_cut: float = 0.15) -> dict[str, float]:
    """``{bias, nmad, outlier_fraction, outlier, rmse, n, n_excluded}`` (``outlier``:
    BESTA's name of ``outlier_fraction``); rows with a non-finite ``z_true`` or
    ``z_est`` are excluded and counted."""
    zt = np.asarray(z_true, np.float64)
    ze = np.asarray(z_est, np.float64)
    if zt.shape != ze.shape:
        raise ValueError(f"photoz_metrics: z_true {zt.shape} and z_est {ze.shape} differ.")
    ok = np.isfinite(zt) & np.isfinite(ze)
    d = (ze[ok] - zt[ok]) / (1.0 + zt[ok])
    if d.size == 0:
        nan = float("nan")
        return {
            "bias": nan,
            "nmad": nan,
            "outlier_fraction": nan,
            "outlier": nan,
            "rmse": nan,
            "n": 0,
            "n_excluded": int(zt.size),
        }
    med = np.median(d)
    return {
        "bias": float(med),
        "nmad": float(1.4826 * np.median(np.abs(d - med))),
        "outlier_fraction": float(np.mean(np.abs(d) > outlier_cut)),
        "outlier": float(np.mean(np.abs(d) > outlier_cut)),
        "rmse": float(np.sqrt(np.mean(d**2))),
        "n": int(d.size),
        "n_excluded": int(np.sum(~ok)),
    }


def pit_from_binned(edges: Any, pdfs: Any, truth: Any, kind: str = "density") -> np.ndarray:
    """PIT of each row: its binned distribution's CDF at ``truth``.

    ``pdfs`` (M, K) on ``edges`` (K+1,) are **densities** (``kind="density"``,
    as ``posts_target``) or per-bin **masses** (``kind="mass"``); each row is
    normalised. The CDF is piecewise linear within bins (uniform density per
    bin); truths below/above the edges give 0/1; rows without mass give NaN.
    """
    e = np.asarray(edges, np.float64)
    p = np.atleast_2d(np.asarray(pdfs, np.float64))
    t = np.asarray(truth, np.float64).reshape(-1)
    if kind not in ("density", "mass"):
        raise ValueError("pit_from_binned: `kind` must be 'density' or 'mass'.")
    if p.shape[1] != e.size - 1 or p.shape[0] != t.size:
        raise ValueError(
            f"pit_from_binned: pdfs {p.shape} do not match {e.size} edges and {t.size} truths."
        )
    mass = p * np.diff(e) if kind == "density" else p
    tot = mass.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cdf = np.concatenate([np.zeros((p.shape[0], 1)), np.cumsum(mass, axis=1)], 1) / tot[:, None]
    out = np.array([np.interp(ti, e, ci) for ti, ci in zip(t, cdf, strict=True)])
    return np.where((tot > 0) & np.isfinite(t), out, np.nan)


def pit_ks(pit: Any) -> float:
    """Kolmogorov-Smirnov distance of the (finite) PIT values from uniform:
    ``max_i max(i/n - u_(i), u_(i) - (i-1)/n)`` (``scipy.stats.kstest(pit, "uniform")``'s
    statistic). NaN without finite values."""
    v = np.sort(np.asarray(pit, np.float64)[np.isfinite(pit)])
    if v.size == 0:
        return float("nan")
    n = v.size
    i = np.arange(1, n + 1)
    return float(max(np.max(i / n - v), np.max(v - (i - 1) / n)))


def pit_cvm(pit: Any) -> float:
    """Cramér-von Mises statistic of the (finite) PIT values against uniform.

    ``T = 1/(12 n) + sum_i ((2i - 1)/(2n) - u_(i))^2`` over the sorted values
    ``u_(i)`` — the convention of ``scipy.stats.cramervonmises(pit, "uniform")``
    and of qp's PIT CvM metric (it grows with ``n`` for a miscalibrated
    estimator: ``T / n`` estimates ``omega^2``). NaN without finite values.
    """
    v = np.sort(np.asarray(pit, np.float64)[np.isfinite(pit)])
    n = v.size
    if n == 0:
        return float("nan")
    i = np.arange(1, n + 1)
    return float(1.0 / (12 * n) + np.sum(((2 * i - 1) / (2 * n) - v) ** 2))


def coverage(edges: Any, pdfs: Any, truth: Any, levels=(0.68, 0.95), kind: str = "density"):
    """Fraction of truths inside each central credible interval of binned PDFs.

    For level ``c`` the interval is between the ``(1-c)/2`` and ``(1+c)/2``
    quantiles, i.e. ``|PIT - 1/2| <= c/2``. Works for any target. Returns
    ``{level: fraction}`` over rows with a finite PIT; calibrated posteriors give
    ``fraction ~= level``.
    """
    pit = pit_from_binned(edges, pdfs, truth, kind=kind)
    ok = np.isfinite(pit)
    return {float(c): float(np.mean(np.abs(pit[ok] - 0.5) <= c / 2)) for c in levels}
