"""Independent float64 NumPy/SciPy references for the likelihoods, priors and posteriors.

Written from the formulas in the issue and DESIGN.md, not from jaxgrid's code.
"""

import math

import numpy as np
from scipy import integrate, special, stats


def gaussian_loglike(x, sigma, models, floor=0.0, scale=1.0, upper=None, limit_kind="flux"):
    x = np.asarray(x, float)
    sigma = np.asarray(sigma, float)
    models = np.asarray(models, float)
    out = np.zeros(models.shape[0])
    used = 0
    for j in range(x.size):
        h = max(scale * sigma[j], floor) if np.isfinite(sigma[j]) else np.nan
        if not (np.isfinite(x[j]) and np.isfinite(h) and h > 0):
            continue
        used += 1
        if upper is not None and upper[j]:
            if limit_kind == "flux":
                out += stats.norm.logcdf((x[j] - models[:, j]) / h)
            else:
                out += stats.norm.logcdf((models[:, j] - x[j]) / h)
        else:
            out += -0.5 * (np.log(2 * np.pi * h**2) + (models[:, j] - x[j]) ** 2 / h**2)
    if used == 0:
        return np.full(models.shape[0], -np.inf)
    return out


def logsumexp(a):
    return special.logsumexp(a)


def posterior(logl, logprior, weights=None):
    lw = np.asarray(logl, float) + np.asarray(logprior, float)
    if weights is not None:
        with np.errstate(divide="ignore"):
            lw = lw + np.log(weights)
    lz = special.logsumexp(lw)
    return np.exp(lw - lz), lz


def gaussian_logpdf(t, mu, s):
    return stats.norm.logpdf(t, mu, s)


def uniform_logpdf(t, lo, hi):
    with np.errstate(divide="ignore"):
        return np.log(stats.uniform.pdf(t, lo, hi - lo))


def exponential_logpdf(t, scale):
    with np.errstate(divide="ignore"):
        return np.log(stats.expon.pdf(t, scale=scale))


def truncexp_logpdf(t, scale, tmax):
    with np.errstate(divide="ignore"):
        return np.log(stats.truncexpon.pdf(t, b=tmax / scale, scale=scale))


def powerlaw_logpdf(t, alpha, tmin, tmax):
    t = np.asarray(t, float)
    z, _ = integrate.quad(lambda u: u**alpha, tmin, tmax, epsabs=0, epsrel=1e-13, limit=200)
    inside = (t >= tmin) & (t <= tmax)
    with np.errstate(divide="ignore", invalid="ignore"):
        val = alpha * np.log(t) - math.log(z)
    return np.where(inside, val, -np.inf)


def weighted_hist_density(values, weights, edges):
    mass, _ = np.histogram(values, bins=edges, weights=weights)
    tot = mass.sum()
    if tot <= 0:
        return np.full(mass.size, np.nan)
    return mass / (tot * np.diff(edges))
