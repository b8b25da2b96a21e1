"""Template x filter x redshift model grids for photo-z and SED fitting (host NumPy).

`build_template_grid` turns template spectra (F_lambda) and filter curves into
a `ModelGrid` of AB **photon-counting** band fluxes (or magnitudes) on a
redshift grid, with targets ``z`` and ``type``.

Conventions (standard photometry):

* band flux density ``<f_nu> = int f_nu T dlambda/lambda / int T dlambda/lambda``
  and ``m_AB = -2.5 log10(<f_nu> / 3631 Jy)`` (Oke & Gunn 1983);
* a template given as ``F_lambda`` has ``f_nu ∝ lambda^2 F_lambda``;
* observed at redshift z: ``F_lambda,obs(lambda) ∝ F_lambda,rest(lambda / (1+z))``
  — the overall normalisation (distance, mass) is left free; fit it with an
  amplitude (e.g. ``ScaledGaussianLikelihood``);
* optional intergalactic attenuation: Madau (1995, ApJ 441, 18) — Lyman
  series line blanketing (coefficients A = 3.6e-3, 1.7e-3, 1.2e-3, 9.3e-4 for
  Ly alpha..delta, ``tau = A (lambda_obs / lambda_j)^3.46``) and the
  approximation to photoelectric absorption by the Lyman continuum
  (his footnote 3), as implemented in many photo-z codes.

Fluxes come out in arbitrary but **common** units across templates (each
template as given in its file); magnitudes are ``-2.5 log10`` of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .grid import ModelGrid

__all__ = [
    "read_sed",
    "read_filter",
    "band_fnu",
    "madau95_transmission",
    "build_template_grid",
    "magnitudes_to_fluxes",
    "pivot_wavelength",
    "template_error_sigma",
]

_LYMAN = np.array([1215.67, 1025.72, 972.54, 949.74])  # Ly alpha..delta, Angstrom
_MADAU_A = np.array([3.6e-3, 1.7e-3, 1.2e-3, 9.3e-4])
_LYLIMIT = 911.75


def _read_two_columns(path: str | Path, what: str) -> tuple[np.ndarray, np.ndarray]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what}: no such file {path}.")
    data = np.loadtxt(path, comments="#", usecols=(0, 1), ndmin=2)
    return _sorted_curve(data[:, 0], data[:, 1], f"{what}: {path}")


def _sorted_curve(wave: Any, value: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    """A curve in increasing wavelength, repeated wavelengths dropped (files and tuples alike:
    `np.interp` silently returns garbage for a descending grid)."""
    wave = np.asarray(wave, np.float64).reshape(-1)
    value = np.asarray(value, np.float64).reshape(-1)
    if wave.shape != value.shape:
        raise ValueError(f"{what}: wavelength {wave.shape} and values {value.shape} differ.")
    if not (np.all(np.isfinite(wave)) and np.all(np.isfinite(value))):
        raise ValueError(f"{what}: wavelengths and values must be finite.")
    order = np.argsort(wave, kind="stable")
    wave, value = wave[order], value[order]
    keep = np.concatenate([[True], np.diff(wave) > 0])  # drop repeated wavelengths
    if keep.sum() < 2:
        raise ValueError(f"{what} needs at least two distinct wavelengths.")
    return wave[keep], value[keep]


def _passband(wf: np.ndarray, tf: np.ndarray, trim: float, what: str) -> slice:
    """The filter samples that matter: transmission above ``trim`` x its peak, plus one
    sample on each side (so the trapezoid rule sees the edges)."""
    if not np.any(tf > 0):
        raise ValueError(f"{what}: the filter has no positive transmission (all <= 0).")
    on = np.flatnonzero(tf > trim * tf.max())
    return slice(max(on[0] - 1, 0), min(on[-1] + 2, wf.size))


def read_sed(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Two columns: wavelength (Angstrom) and F_lambda (any normalisation)."""
    return _read_two_columns(path, "read_sed")


def read_filter(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Two columns: wavelength (Angstrom) and transmission (photon counting)."""
    return _read_two_columns(path, "read_filter")


def madau95_transmission(wave_obs: Any, z: Any) -> np.ndarray:
    """IGM transmission ``exp(-tau)`` of Madau (1995) at observed wavelengths.

    ``wave_obs`` (..., L) in Angstrom, ``z`` broadcastable to it. Lyman series
    blanketing plus the Lyman-continuum approximation below 912 (1+z) A.
    """
    lam = np.asarray(wave_obs, np.float64)
    zz = np.asarray(z, np.float64)
    xem = 1.0 + zz
    tau = np.zeros(np.broadcast(lam, zz).shape)
    for lj, aj in zip(_LYMAN, _MADAU_A, strict=True):
        tau = tau + np.where(lam < lj * xem, aj * (lam / lj) ** 3.46, 0.0)
    xc = lam / _LYLIMIT
    cont = (
        0.25 * xc**3 * (xem**0.46 - xc**0.46)
        + 9.4 * xc**1.5 * (xem**0.18 - xc**0.18)
        - 0.7 * xc**3 * (xc ** (-1.32) - xem ** (-1.32))
        - 0.023 * (xem**1.68 - xc**1.68)
    )
    tau = tau + np.where(lam < _LYLIMIT * xem, np.maximum(cont, 0.0), 0.0)
    return np.exp(-tau)


def band_fnu(
    sed: tuple[Any, Any], filt: tuple[Any, Any], z: Any, igm: str | None = None, trim: float = 1e-6
) -> np.ndarray:
    """Photon-counting band ``<f_nu>`` of one template through one filter at each ``z``.

    Integrates on the filter's own wavelength grid (trapezoid rule), where
    the template is linearly interpolated at ``lambda / (1+z)`` (zero outside
    its range: `build_template_grid` refuses templates that do not cover a
    filter). Curves may come in any wavelength order. Returns (Nz,) in the
    template's units times Angstrom^2.

    Raises:
        ValueError: a filter without positive transmission, or a curve with fewer than
            two distinct (finite) wavelengths.
    """
    ws, fs = _sorted_curve(*sed, "band_fnu: the template")
    wf, tf = _sorted_curve(*filt, "band_fnu: the filter")
    band = _passband(wf, tf, trim, "band_fnu")
    wf, tf = wf[band], tf[band]
    zz = np.atleast_1d(np.asarray(z, np.float64))
    rest = wf[None, :] / (1.0 + zz[:, None])  # (Nz, L)
    flam = np.interp(rest.ravel(), ws, fs, left=0.0, right=0.0).reshape(rest.shape)
    if igm == "madau95":
        flam = flam * madau95_transmission(wf[None, :], zz[:, None])
    elif igm is not None:
        raise ValueError(f"`igm` must be None or 'madau95', got {igm!r}.")
    fnu = flam * wf[None, :] ** 2  # f_nu ∝ lambda^2 F_lambda(lambda_obs)
    num = np.trapezoid(fnu * tf / wf, wf, axis=1)
    den = np.trapezoid(tf / wf, wf)
    return num / den


def build_template_grid(
    seds: Sequence[Any],
    filters: Sequence[Any],
    z: Any,
    *,
    n_interp: int = 0,
    igm: str | None = None,
    output: str = "flux",
    filter_names: Sequence[str] | None = None,
    template_names: Sequence[str] | None = None,
) -> ModelGrid:
    """A `ModelGrid` of every template at every redshift through every filter.

    Args:
        seds: template spectra: file paths (`read_sed`) or ``(wave, F_lambda)`` pairs.
        filters: filter curves: file paths (`read_filter`) or ``(wave, T)`` pairs.
        z: the redshift grid (1-D).
        n_interp: templates linearly interpolated (in band flux) between each
            consecutive pair, as BPZ does; their ``type`` is fractional.
        igm: None or ``"madau95"``.
        output: ``"flux"`` (band ``<f_nu>``, common arbitrary units) or ``"mag"``
            (``-2.5 log10`` of it; ``inf`` where a template has no flux).
        filter_names: observable names (default: the file stems).
        template_names: stored in ``meta["templates"]`` (default: file stems).

    Returns:
        A grid with ``N = n_types x Nz`` models (type-major), targets
        ``["z", "type"]``, and meta recording the settings.

    Raises:
        ValueError: a template that does not span a filter's passband (rest frame
            ``lambda / (1+z)``) at every ``z`` of the grid — it would count as zero flux
            there; the message names both and the range needed — or a filter without
            positive transmission. Curves may come in any wavelength order.
    """
    if output not in ("flux", "mag"):
        raise ValueError(f"`output` must be 'flux' or 'mag', got {output!r}.")
    if int(n_interp) < 0:
        raise ValueError("`n_interp` must be >= 0.")
    zz = np.asarray(z, np.float64).reshape(-1)
    if zz.size == 0 or np.any(~np.isfinite(zz)) or np.any(zz < 0):
        raise ValueError("`z` must be a non-empty 1-D array of finite redshifts >= 0.")
    if not len(seds) or not len(filters):
        raise ValueError("give at least one template and one filter.")
    fnames = (
        list(filter_names)
        if filter_names is not None
        else [
            Path(f).stem if isinstance(f, (str, Path)) else f"band{i}"
            for i, f in enumerate(filters)
        ]
    )
    tnames = (
        list(template_names)
        if template_names is not None
        else [
            Path(s).stem if isinstance(s, (str, Path)) else f"template{i}"
            for i, s in enumerate(seds)
        ]
    )
    if len(fnames) != len(filters) or len(tnames) != len(seds):
        raise ValueError(
            f"{len(fnames)} filter_names for {len(filters)} filters or {len(tnames)} "
            f"template_names for {len(seds)} templates; give one name each."
        )
    sed_data = [
        read_sed(s) if isinstance(s, (str, Path)) else _sorted_curve(*s, f"template {n!r}")
        for s, n in zip(seds, tnames, strict=True)
    ]
    filt_data = [
        read_filter(f) if isinstance(f, (str, Path)) else _sorted_curve(*f, f"filter {n!r}")
        for f, n in zip(filters, fnames, strict=True)
    ]
    _check_coverage(sed_data, filt_data, tnames, fnames, zz)
    flux = np.stack(
        [np.stack([band_fnu(s, f, zz, igm=igm) for f in filt_data], axis=1) for s in sed_data]
    )  # (T, Nz, P)
    types = np.arange(len(sed_data), dtype=np.float64)
    if n_interp and len(sed_data) > 1:
        fr = np.arange(1, n_interp + 1) / (n_interp + 1)
        blocks, tvals = [flux[:1]], [types[:1]]
        for i in range(len(sed_data) - 1):
            mid = (1 - fr)[:, None, None] * flux[i] + fr[:, None, None] * flux[i + 1]
            blocks += [mid, flux[i + 1 : i + 2]]
            tvals += [i + fr, types[i + 1 : i + 2]]
        flux, types = np.concatenate(blocks), np.concatenate(tvals)
    obs = flux.reshape(-1, flux.shape[-1])
    if output == "mag":
        with np.errstate(divide="ignore"):
            obs = np.where(obs > 0, -2.5 * np.log10(np.where(obs > 0, obs, 1.0)), np.inf)
        if not np.all(np.isfinite(obs)):
            raise ValueError(
                "some template has no flux in some band at some z; use "
                "output='flux' (zero flux is a valid model) or trim the z grid."
            )
    targets = np.column_stack([np.tile(zz, types.size), np.repeat(types, zz.size)])
    meta = {
        "templates": tnames,
        "filters": fnames,
        "n_interp": int(n_interp),
        "igm": igm,
        "output": output,
        "z_min": float(zz.min()),
        "z_max": float(zz.max()),
        "n_z": int(zz.size),
    }
    return ModelGrid(obs, targets, fnames, ["z", "type"], meta=meta)


def _check_coverage(sed_data, filt_data, tnames, fnames, zz, trim: float = 1e-6) -> None:
    """Refuse a template that does not span a filter's passband at every redshift of the grid:
    outside its range the template counts as zero, which gives silently wrong (low or
    zero) model fluxes. (The bundled templates cover the bundled filters for any z >= 0.)"""
    for (wf, tf), fname in zip(filt_data, fnames, strict=True):
        on = tf > trim * tf.max() if np.any(tf > 0) else None
        if on is None:
            raise ValueError(f"filter {fname!r} has no positive transmission (all <= 0).")
        blue, red = wf[on].min(), wf[on].max()
        need_lo, need_hi = blue / (1.0 + zz.max()), red / (1.0 + zz.min())  # rest frame
        for (ws, _), tname in zip(sed_data, tnames, strict=True):
            if ws[0] > need_lo or ws[-1] < need_hi:
                raise ValueError(
                    f"template {tname!r} ({ws[0]:g}-{ws[-1]:g} A) does not cover filter "
                    f"{fname!r} ({blue:g}-{red:g} A observed) at every z in "
                    f"[{zz.min():g}, {zz.max():g}]: it needs rest-frame {need_lo:g}-"
                    f"{need_hi:g} A. Extend the template, or trim the z grid or the filter."
                )


def magnitudes_to_fluxes(X: Any, SIG: Any, upper: Any = None, zero_point: float = 31.4):
    """AB magnitudes (as `read_catalog` returns them) -> fluxes for flux-space fits.

    Detected values: ``f = 10^(-0.4 (m - zp))`` and ``sigma_f = f sigma_m ln10/2.5``.
    Upper limits (``upper``; the value is the 1-sigma limiting magnitude):
    ``f = 0`` and ``sigma_f`` = the limit's flux, flagged. ``zero_point`` 31.4
    gives nJy. Missing values stay NaN. Returns ``(F, SF, upper)``.
    """
    from .transforms import mag_to_flux, magerr_to_fluxerr

    X = np.asarray(X, np.float64)
    SIG = np.asarray(SIG, np.float64)
    up = np.zeros(X.shape, bool) if upper is None else np.asarray(upper, bool)
    F = mag_to_flux(X, zero_point=zero_point)
    SF = magerr_to_fluxerr(X, SIG, zero_point=zero_point)
    F = np.where(up, 0.0, F)
    SF = np.where(up, mag_to_flux(X, zero_point=zero_point), SF)
    return F, SF, up


def pivot_wavelength(filt: Any) -> float:
    """Pivot wavelength (Angstrom) of a photon-counting filter, a file or a
    ``(wave, transmission)`` pair: ``sqrt(int T lambda dlambda / int T / lambda dlambda)``
    (Tokunaga & Vacca 2005, PASP 117, 421, eq. A11)."""
    wave, trans = read_filter(filt) if isinstance(filt, str | Path) else filt
    wf, tf = _sorted_curve(wave, trans, "pivot_wavelength: the filter")
    band = _passband(wf, tf, 1e-6, "pivot_wavelength")
    wf, tf = wf[band], tf[band]
    return float(np.sqrt(np.trapezoid(tf * wf, wf) / np.trapezoid(tf / wf, wf)))


def template_error_sigma(
    grid: ModelGrid,
    wavelengths: Sequence[float],
    tef: Any,
    z_target: str = "z",
    fluxes: bool = True,
) -> np.ndarray:
    """A template error function as a per-model noise model: (N, P) ``model_sigma``.

    A template error function (TEF; EAZY, Brammer et al. 2008, ApJ 686, 1503, sect.
    2.3; FAST++) is a fractional model error that depends on the **rest-frame**
    wavelength: at model ``i`` (redshift ``z_i``) band ``j`` (pivot ``lambda_j``, see
    `pivot_wavelength`) it is ``tef(lambda_j / (1 + z_i))``. For a flux grid the error
    is that fraction of the model's flux, ``tef * |f_ij|`` (scaled with the fitted
    amplitude by `ScaledGaussianLikelihood`); for a magnitude grid (``fluxes=False``)
    it is the fraction in magnitudes, ``2.5 / ln 10 * tef``.

    Args:
        grid: a template x redshift grid (e.g. `build_template_grid`'s).
        wavelengths: (P,) each observable's (observed-frame) pivot wavelength, Angstrom.
        tef: a callable ``rest wavelength (Angstrom) -> fraction`` (vectorised), or a
            ``(wave, fraction)`` pair, interpolated linearly and held constant beyond
            its ends.
        z_target: the grid's redshift target.
        fluxes: the grid's observables are fluxes (else AB magnitudes).

    Returns:
        (N, P) float64: ``grid.with_model_noise(model_sigma=...)`` takes it.
    """
    lam = np.asarray(wavelengths, np.float64).reshape(-1)
    if lam.shape != (grid.n_observables,) or not np.all(np.isfinite(lam) & (lam > 0)):
        raise ValueError(
            f"template_error_sigma: `wavelengths` must be {grid.n_observables} positive "
            f"pivot wavelengths (Angstrom), one per observable; got {lam.shape}."
        )
    z = np.asarray(grid.get_target(z_target), np.float64)
    rest = lam[None, :] / (1.0 + z[:, None])
    if callable(tef):
        frac = np.asarray(tef(rest), np.float64)
    else:
        wave, value = _sorted_curve(*tef, "template_error_sigma: `tef`")
        frac = np.interp(rest, wave, value)
    if frac.shape != rest.shape or not np.all(np.isfinite(frac) & (frac >= 0)):
        raise ValueError(
            "template_error_sigma: `tef` must give a finite fraction >= 0 at every rest-frame "
            f"wavelength (shape {rest.shape})."
        )
    if fluxes:
        return frac * np.abs(np.asarray(grid.observables, np.float64))
    return 2.5 / np.log(10.0) * frac
