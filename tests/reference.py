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


# ------------------------------------------------------------ batch reference
def hist_summary(t, w, edges, find_multimodal=False):
    """Histogram stats as specified: mean/std at bin centres, MAP centre, CDF quantiles."""
    mass = np.zeros(edges.size - 1)
    for ti, wi in zip(t, w):
        if edges[0] <= ti <= edges[-1]:
            k = min(np.searchsorted(edges, ti, side="right") - 1, edges.size - 2)
            mass[k] += wi
    return summary_from_mass(mass, edges, find_multimodal)


def summary_from_mass(mass, edges, find_multimodal=False):
    tot = mass.sum()
    nan = float("nan")
    if tot <= 0:
        return dict(
            mean=nan,
            std=nan,
            map=nan,
            median=nan,
            lo68=nan,
            hi68=nan,
            nmodes=-1,
            density=np.full(mass.size, nan),
        )
    p = mass / tot
    c = 0.5 * (edges[1:] + edges[:-1])
    mean = np.sum(p * c)
    std = np.sqrt(np.sum(p * (c - mean) ** 2))
    cdf = np.concatenate([[0.0], np.cumsum(p)])

    def quant(q):
        for k in range(mass.size):
            if cdf[k + 1] >= q:
                lo, hi = cdf[k], cdf[k + 1]
                frac = (q - lo) / (hi - lo) if hi > lo else 0.0
                return edges[k] + min(max(frac, 0.0), 1.0) * (edges[k + 1] - edges[k])
        return edges[-1]

    nmodes = count_modes(p / np.diff(edges)) if find_multimodal else 1
    return dict(
        mean=mean,
        std=std,
        map=c[np.argmax(mass)],
        median=quant(0.5),
        lo68=quant(0.16),
        hi68=quant(0.84),
        nmodes=nmodes,
        density=p / np.diff(edges),
    )


def count_modes(density, floor=1e-3):
    """Modes of a binned density as documented: bins below floor x peak are empty;
    walking the bins (0 after the last), a mode is a fall of more than floor x peak
    below the highest value since the last minimum, after which a rise of more than
    that above the lowest value since starts the next one."""
    d = np.asarray(density, float)
    peak = d.max()
    if not peak > 0:
        return 0
    tol = floor * peak
    d = np.where(d >= tol, d, 0.0)
    rising, ext, modes = True, 0.0, 0
    for v in list(d) + [0.0]:
        if rising:
            if ext - v > tol:
                modes, rising, ext = modes + 1, False, v
            else:
                ext = max(ext, v)
        elif v - ext > tol:
            rising, ext = True, v
        else:
            ext = min(ext, v)
    return modes


def batch_row_reference(
    lw,
    cand_ids,
    targets,
    *,
    keep_mass,
    keep_min,
    cap,
    ties=False,
    stats_cols=(),
    edges=(),
    find_multimodal=False,
    kde=False,
    n_keep=None,
):
    """Float64 reference of one row of fit_batch given its candidates' log weights.
    ``n_keep`` forces the kept count (to check a row whose cut lies within float32
    rounding of keep_mass at the count the engine chose)."""
    force = n_keep
    lw = np.asarray(lw, float)
    order = np.argsort(-lw, kind="stable")
    finite = np.isfinite(lw)
    n_valid = int(finite.sum())
    lz = special.logsumexp(lw)
    w = np.exp(lw - lz)
    ws = w[order]
    cum = np.cumsum(ws)
    # `cap` is the user's posterior_keep_max_candidates (None: no bound)
    truncate = not (keep_mass >= 0.9999 and cap is None)
    cap_eff = lw.size if cap is None else min(cap, lw.size)
    if truncate:
        need = lw.size if keep_mass >= 1.0 else 1 + int(np.sum(cum < keep_mass))
        n_keep = min(max(need, keep_min), cap_eff)
        n_keep = max(1, min(n_keep, n_valid))
        if ties and cap is None:  # as BESTA: a count bound switches ties off
            n_keep = int(np.sum(lw[order] >= lw[order][n_keep - 1]))
        if force is not None:
            n_keep = force
        kept = order[:n_keep]
        mass_kept = ws[:n_keep].sum()
        cut = ws[n_keep - 1]
        stat_idx, stat_w = kept, w[kept] / mass_kept
    else:
        n_keep = n_valid
        kept = order[:n_keep]
        mass_kept, cut = 1.0, 0.0
        stat_idx, stat_w = np.arange(lw.size)[finite], w[finite]
    post = w[kept] / w[kept].sum()
    out = dict(
        candidates=np.asarray(cand_ids)[kept],
        post_models=post,
        log_evidence=lz,
        best=np.asarray(cand_ids)[order[0]],
        n_before=n_valid,
        n_after=n_keep,
        mass_kept=mass_kept,
        mass_dropped=1 - mass_kept,
        cut_weight=cut,
        ess_before=1.0 / np.sum(w**2),
        ess_after=(1.0 / np.sum(post**2)) if truncate else 1.0 / np.sum(w**2),
    )
    t_all = np.asarray(targets, float)
    stats = {}
    for col, e in zip(stats_cols, edges):
        tv = t_all[stat_idx, col]
        if kde:
            kt, kw = t_all[kept, col], post
            if 1.0 / np.sum(kw**2) > 1 + 1e-6 and np.ptp(kt) > 0:
                c = 0.5 * (e[1:] + e[:-1])
                dens = stats_mod.gaussian_kde(kt, weights=kw)(c)
                stats[col] = summary_from_mass(dens * np.diff(e), e, find_multimodal)
                continue
        stats[col] = hist_summary(tv, stat_w, e, find_multimodal)
    out["stats"] = stats
    if len(stats_cols):
        tt = t_all[stat_idx][:, list(stats_cols)]
        wn = stat_w / stat_w.sum()
        denom = 1.0 - np.sum(wn**2)
        mu = wn @ tt
        d = tt - mu
        out["cov"] = (d.T * wn) @ d / denom if denom > 0 else np.full((tt.shape[1],) * 2, np.nan)
    return out


stats_mod = stats


def gaussian_loglike_noise(
    x,
    sigma,
    models,
    model_sigma,
    model_bias,
    floor=0.0,
    scale=1.0,
    upper=None,
    limit_kind="flux",
    normalised=True,
):
    """Gaussian product with a per-model noise model, one model at a time: the object
    ``x +- h`` against the model's ``m + b`` with the model's own error ``s`` in
    quadrature, ``h_ij^2 = max(scale sigma_j, floor)^2 + s_ij^2``. ``normalised=False``
    drops only the row's constant ``-1/2 sum_j log(2 pi h_j^2)``."""
    x, sigma = np.asarray(x, float), np.asarray(sigma, float)
    models = np.asarray(models, float)
    out = np.zeros(models.shape[0])
    for i in range(models.shape[0]):
        used, total = 0, 0.0
        for j in range(x.size):
            h = max(scale * sigma[j], floor) if np.isfinite(sigma[j]) else np.nan
            if not (np.isfinite(x[j]) and np.isfinite(h) and h > 0):
                continue
            used += 1
            var = h**2 + model_sigma[i, j] ** 2
            mu = models[i, j] + model_bias[i, j]
            if upper is not None and upper[j]:
                z = (x[j] - mu) if limit_kind == "flux" else (mu - x[j])
                total += stats.norm.logcdf(z / math.sqrt(var))
            else:
                total += stats.norm.logpdf(x[j], mu, math.sqrt(var))
                if not normalised:
                    total += 0.5 * math.log(2 * math.pi * h**2)
        out[i] = total if used else -np.inf
    return out


def scaled_loglike_noise(f, s, models, model_sigma, model_bias, mode="profile"):
    """Free-amplitude Gaussian with a per-model noise model, per model, detections only:
    the amplitude ``a0`` fitted without the model error, variances
    ``s_j^2 + (a0 s_ij)^2``, then the profile maximum over ``a >= 0`` or the integral
    over ``a >= 0`` (numerical quadrature) of ``N(f | a (m + b), var)``."""
    f, s = np.asarray(f, float), np.asarray(s, float)
    out = np.zeros(models.shape[0])
    for i in range(models.shape[0]):
        m = models[i] + model_bias[i]
        a0 = max(np.sum(f * m / s**2) / np.sum(m**2 / s**2), 0.0)
        var = s**2 + (a0 * model_sigma[i]) ** 2
        const = -0.5 * np.sum(np.log(2 * np.pi * var))

        def chi2(a, m=m, var=var):
            return np.sum((f - a * m) ** 2 / var)

        a1 = max(np.sum(f * m / var) / np.sum(m**2 / var), 0.0)
        if mode == "profile":
            out[i] = const - 0.5 * chi2(a1)
            continue
        shift = chi2(a1)
        hi = a1 + 40.0 / math.sqrt(np.sum(m**2 / var))  # the integrand is ~0 beyond
        val, _ = integrate.quad(
            lambda a, shift=shift, chi2=chi2: np.exp(-(chi2(a) - shift) / 2),
            0,
            hi,
            points=[a1] if a1 > 0 else None,
            epsabs=0,
            epsrel=1e-12,
            limit=200,
        )
        out[i] = const - 0.5 * shift + np.log(val)
    return out
