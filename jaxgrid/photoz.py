"""Photo-z recipes on files (host layer): template grids from a spec, trained BPZ priors.

What the ``jaxgrid build-grid`` / ``train-prior`` / ``fit --prior FILE`` commands do, as
functions:

* `bundled_templates`, `bundled_filters`, `read_sed_list`, `redshift_grid`: the inputs of
  a template grid (the bundled 8 CWW+SB templates and 6 LSST filters by default);
* `build_grid`: `jaxgrid.photometry.build_template_grid`, and records in the grid's meta
  what its observables are (``observable_kind``: ``"flux"`` or ``"magnitude"``), that
  their normalisation is free (``normalisation = "free"``) and the templates' BPZ broad
  types (``broad_types``) when known;
* `observable_kind`, `free_normalisation`: the rule that tells what a grid holds (below);
* `save_prior` / `load_prior`: a `BPZPrior`'s parameters and what it was trained on, in a
  JSON file, read back exactly (same float32 parameters, same columns);
* `training_selection`: which training objects a photo-z prior can use.

**What a grid holds** (`observable_kind`), first rule that applies:

1. ``meta["observable_kind"]`` (``"flux"`` / ``"magnitude"``) — written by `build_grid`;
2. ``meta["output"]`` (``"flux"`` / ``"mag"``) of a `build_template_grid` grid (its meta
   also names ``"filters"``);
3. the observable names: all start with ``flux`` (or ``f_``) -> flux; all start with
   ``mag`` -> magnitude (case-insensitive);
4. otherwise unknown (``None``): nothing is checked.

**Free normalisation** (`free_normalisation`): ``meta["normalisation"] == "free"``, or a
`build_template_grid` grid (templates have no absolute scale: fit them with an amplitude,
``ScaledGaussianLikelihood``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .grid import ModelGrid

__all__ = [
    "BUNDLED_BANDS",
    "PRIOR_FORMAT",
    "bundled_templates",
    "bundled_filters",
    "read_sed_list",
    "redshift_grid",
    "build_grid",
    "observable_kind",
    "free_normalisation",
    "training_selection",
    "save_prior",
    "read_prior_file",
    "load_prior",
    "INPUTS",
    "NONDETECTIONS",
    "fit_space",
    "check_inputs",
    "fit_arrays",
    "make_likelihood",
    "normalisation_warning",
    "default_band",
    "read_column",
]

BUNDLED_BANDS = "ugrizy"
#: the ``format`` entry of a prior file (`save_prior`)
PRIOR_FORMAT = "jaxgrid-bpz-prior"
_PRIOR_VERSION = 1
_PARAMS = ("alpha", "z0", "km", "f", "k")


def read_sed_list(path: str | Path) -> list[Path]:
    """The template files named in a BPZ-style ``.list`` file (one name per line, ``#``
    comments), relative to the list's folder unless absolute.

    Raises:
        FileNotFoundError: the list, or a template it names, does not exist.
        ValueError: the list names no template.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such template list {path}")
    names = [ln.split("#")[0].strip() for ln in path.read_text().splitlines()]
    files = [Path(n) if Path(n).is_absolute() else path.parent / n for n in names if n]
    if not files:
        raise ValueError(f"template list {path} names no template")
    for f in files:
        if not f.exists():
            raise FileNotFoundError(f"template list {path} names {f.name}: no such file {f}")
    return files


def bundled_templates() -> list[Path]:
    """The 8 bundled CWW+SB templates (``CWWSB4.list``: El, Sbc, Scd, Im, SB3, SB2, 2 SSPs)."""
    from .data import data_path

    return read_sed_list(data_path("photoz", "SED", "CWWSB4.list"))


def bundled_filters(bands: str = BUNDLED_BANDS) -> list[Path]:
    """The bundled LSST total-throughput curves ``DC2LSST_<b>.res`` for ``bands``."""
    from .data import data_path

    return [data_path("photoz", "FILTER", f"DC2LSST_{b}.res") for b in bands]


def redshift_grid(z_min: float = 0.0, z_max: float = 3.0, dz: float = 0.01) -> np.ndarray:
    """``z_min, z_min + dz, ..., z_max`` (``z_max`` included when on the step), rounded to
    6 decimals — the demo's grid for the defaults (301 redshifts).

    Raises:
        ValueError: non-finite values, ``z_min < 0``, ``dz <= 0`` or ``z_max < z_min``.
    """
    vals = (z_min, z_max, dz)
    if not all(math.isfinite(v) for v in vals) or z_min < 0 or dz <= 0 or z_max < z_min:
        raise ValueError(
            f"redshift grid: need finite 0 <= z_min <= z_max and dz > 0, got z_min={z_min}, "
            f"z_max={z_max}, dz={dz}"
        )
    return np.round(np.arange(z_min, z_max + dz / 2, dz), 6)


def build_grid(
    seds: Sequence[Any],
    filters: Sequence[Any],
    z: Any,
    *,
    n_interp: int = 0,
    igm: str | None = "madau95",
    output: str = "flux",
    filter_names: Sequence[str] | None = None,
    template_names: Sequence[str] | None = None,
    broad_types: Sequence[int] | None = None,
) -> ModelGrid:
    """`build_template_grid`, with the grid's kind recorded in its meta (module docs).

    ``broad_types``: the BPZ broad type (0 E/S0, 1 spiral, 2 irregular/starburst) of each
    template, stored as ``meta["broad_types"]`` for a BPZ prior on this grid.

    Raises:
        ValueError: as `build_template_grid`, or ``broad_types`` of the wrong length or
            values.
    """
    from .photometry import build_template_grid

    grid = build_template_grid(
        seds,
        filters,
        z,
        n_interp=n_interp,
        igm=igm,
        output=output,
        filter_names=filter_names,
        template_names=template_names,
    )
    meta = dict(grid.meta)
    meta["observable_kind"] = "flux" if output == "flux" else "magnitude"
    meta["normalisation"] = "free"
    if broad_types is not None:
        bt = [int(b) for b in broad_types]
        if len(bt) != len(seds) or any(b not in (0, 1, 2) for b in bt):
            raise ValueError(
                f"broad types {bt}: give one of 0 (E/S0), 1 (spiral), 2 (irr/SB) per template "
                f"({len(seds)} templates)"
            )
        meta["broad_types"] = bt
    grid.meta = meta  # checked JSON-able by ModelGrid: ints and strings only added here
    return grid


def _meta(grid) -> dict:
    return grid.meta if isinstance(grid.meta, dict) else {}


def observable_kind(grid) -> str | None:
    """``"flux"``, ``"magnitude"`` or None (unknown): what the grid's observables are,
    by the rule of the module docs."""
    meta = _meta(grid)
    kind = meta.get("observable_kind")
    if kind in ("flux", "magnitude"):
        return kind
    if "filters" in meta and meta.get("output") in ("flux", "mag"):
        return "flux" if meta["output"] == "flux" else "magnitude"
    names = [n.lower() for n in grid.observable_names]
    if names and all(n.startswith(("flux", "f_")) for n in names):
        return "flux"
    if names and all(n.startswith("mag") for n in names):
        return "magnitude"
    return None


def free_normalisation(grid) -> bool:
    """Whether the grid's models have no absolute scale (module docs)."""
    meta = _meta(grid)
    if meta.get("normalisation") == "free":
        return True
    return "templates" in meta and "filters" in meta and meta.get("output") in ("flux", "mag")


def training_selection(z_true: Any, z_grid: Any) -> tuple[np.ndarray, dict[str, int]]:
    """Which training objects a photo-z BPZ prior can learn from, and why others cannot.

    Returns ``(keep, excluded)``: ``keep`` (N,) bool; ``excluded`` counts
    ``not_finite`` (true z NaN/inf), ``outside`` (more than half a step outside the grid's
    redshifts: `fit_bpz_prior_photoz` leaves them out) and ``nearest_z0`` (nearest grid
    redshift is 0, where the BPZ prior vanishes, so the object's log score is -inf).
    """
    z = np.asarray(z_true, np.float64).reshape(-1)
    zg = np.unique(np.asarray(z_grid, np.float64))
    step = float(np.median(np.diff(zg))) if zg.size > 1 else 1.0
    finite = np.isfinite(z)
    zf = np.where(finite, z, 0.0)
    inside = finite & (zf >= zg[0] - step / 2) & (zf <= zg[-1] + step / 2)
    # nearest grid redshift (ties to the lower one), without an (N, G) array
    if zg.size == 1:
        nearest = np.full_like(zf, zg[0])
    else:
        hi = np.clip(np.searchsorted(zg, zf), 1, zg.size - 1)
        lo = hi - 1
        nearest = np.where(np.abs(zf - zg[lo]) <= np.abs(zg[hi] - zf), zg[lo], zg[hi])
    at_zero = inside & (nearest <= 0)
    keep = inside & ~at_zero
    excluded = {
        "not_finite": int(np.sum(~finite)),
        "outside": int(np.sum(finite & ~inside)),
        "nearest_z0": int(np.sum(at_zero)),
    }
    return keep, excluded


def save_prior(prior, path: str | Path, trained_on: dict[str, Any] | None = None) -> None:
    """Write a `BPZPrior` (parameters, broad types, reference band, zero point, missing-m0
    value) and ``trained_on`` (any JSON-able description) to a JSON file.

    The parameters are written as the prior holds them (float32 by default, as exact
    decimal strings of their float64 value), so `load_prior` gives the same prior.
    """
    from .prob.bpz import BPZPrior

    if not isinstance(prior, BPZPrior):
        raise TypeError(f"save_prior: `prior` must be a BPZPrior, got {type(prior).__name__}.")
    ref = prior.ref_observable
    if not isinstance(ref, str):
        raise ValueError(
            "save_prior: give the prior with its reference band as a name (e.g. 'flux_i'), "
            "not a resolved column index."
        )
    record = {
        "format": PRIOR_FORMAT,
        "version": _PRIOR_VERSION,
        "params": {n: np.asarray(getattr(prior, n), np.float64).tolist() for n in _PARAMS},
        "dtype": str(np.asarray(prior.alpha).dtype),
        "broad_types": np.asarray(prior.broad_of_template).astype(int).tolist(),
        "ref_observable": ref,
        "z_col": prior.z_col,
        "type_col": prior.type_col,
        "flux_zero_point": prior.flux_zero_point,
        "m0_missing": prior.m0_missing,
        "trained_on": trained_on or {},
    }
    Path(path).write_text(json.dumps(record, indent=2) + "\n")


def read_prior_file(path: str | Path) -> dict[str, Any]:
    """The checked record of a prior file (see `save_prior`).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a jaxgrid prior file (not JSON, other format, missing entries).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such prior file {path}")
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"prior file {path} is not JSON ({err}); write it with "
                         "`jaxgrid train-prior`") from None  # fmt: skip
    if not isinstance(record, dict) or record.get("format") != PRIOR_FORMAT:
        raise ValueError(
            f'{path} is not a jaxgrid prior file (no "format": "{PRIOR_FORMAT}"); write it '
            "with `jaxgrid train-prior`"
        )
    if record.get("version") != _PRIOR_VERSION:
        raise ValueError(
            f"prior file {path} has version {record.get('version')!r}; this jaxgrid reads "
            f"version {_PRIOR_VERSION}"
        )
    params = record.get("params")
    if not isinstance(params, dict) or set(params) != set(_PARAMS):
        raise ValueError(f"prior file {path}: 'params' must hold {list(_PARAMS)}")
    for key in ("broad_types", "ref_observable"):
        if key not in record:
            raise ValueError(f"prior file {path}: no {key!r} entry")
    return record


def load_prior(
    path: str | Path,
    grid,
    *,
    ref_observable: str | None = None,
    flux_zero_point: Any = "file",
):
    """The `BPZPrior` of a prior file for ``grid`` (its redshifts and types).

    ``ref_observable`` (default: the file's) and ``flux_zero_point`` (default ``"file"``:
    the file's; None: the reference band is a magnitude) may be changed for a fit whose
    inputs differ from the training's. Returns ``(prior, record)``.

    Raises:
        FileNotFoundError, ValueError: see `read_prior_file`; the grid's types do not match
            the file's broad types (`BPZPrior.for_grid`).
    """
    from .prob.bpz import BPZPrior

    record = read_prior_file(path)
    zp = record.get("flux_zero_point") if flux_zero_point == "file" else flux_zero_point
    prior = BPZPrior.for_grid(
        grid,
        ref_observable or record["ref_observable"],
        params={n: tuple(v) for n, v in record["params"].items()},
        broad_types=record["broad_types"],
        z_col=record.get("z_col", "z"),
        type_col=record.get("type_col", "type"),
        flux_zero_point=zp,
        m0_missing=record.get("m0_missing", 25.0),
    )
    return prior, record


# ----------------------------------------------------------------- fit inputs and models
#: ``--inputs``: what the fit compares with the grid, and where it comes from
INPUTS = {
    "magnitudes": "the catalog's magnitudes, fitted as magnitudes",
    "fluxes": "the catalog's AB magnitudes converted to fluxes at the zero point",
    "flux-columns": "the catalog's columns already hold fluxes (grid units), fitted as they are",
}
NONDETECTIONS = ("censored", "zero_flux")
_LN10_OVER_2_5 = math.log(10.0) / 2.5


def fit_space(inputs: str) -> str:
    """``"magnitude"`` or ``"flux"``: the space a fit with these ``inputs`` runs in."""
    if inputs not in INPUTS:
        raise ValueError(f"--inputs must be one of {list(INPUTS)}, got {inputs!r}")
    return "magnitude" if inputs == "magnitudes" else "flux"


def check_inputs(grid, inputs: str) -> None:
    """Refuse inputs of the other kind than the grid's (`observable_kind`; unknown: no
    check).

    Raises:
        ValueError: magnitudes on a flux grid, or fluxes on a magnitude grid, naming the fix.
    """
    kind, space = observable_kind(grid), fit_space(inputs)
    if kind is None or kind == space:
        return
    if kind == "flux":
        raise ValueError(
            f"the grid holds fluxes ({', '.join(grid.observable_names)}) but --inputs "
            "magnitudes fits the catalog's magnitudes as they are; pass --inputs fluxes to "
            "convert them (AB zero point --zero-point, default 31.4: nJy), or --inputs "
            "flux-columns if the catalog's columns hold fluxes"
        )
    raise ValueError(
        f"the grid holds magnitudes ({', '.join(grid.observable_names)}) but --inputs "
        f"{inputs} fits fluxes; pass --inputs magnitudes, or build a flux grid "
        "(jaxgrid build-grid --output flux)"
    )


def fit_arrays(
    X: Any,
    SIG: Any,
    upper: Any,
    *,
    inputs: str,
    likelihood: str,
    nondetection: str = "censored",
    error_floor_mag: float = 0.0,
    zero_point: float = 31.4,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """`read_catalog` arrays -> the ``(X, SIG, upper)`` a fit with these settings takes.

    * ``inputs="fluxes"``: `magnitudes_to_fluxes` (non-detections ``0 +- s_lim``, the
      1-sigma limit's flux); ``"flux-columns"``: a non-detection's value (the limit, as
      `read_catalog` reads it) becomes ``0 +- limit``; ``"magnitudes"``: as read.
    * ``likelihood="gaussian"`` (fixed amplitude): ``nondetection="censored"`` keeps the
      limits as upper limits (in fluxes: value and width ``s_lim``, i.e. ``log Phi((s_lim -
      m) / s_lim)``, as `ScaledGaussianLikelihood`'s censored term with one sigma);
      ``"zero_flux"`` fits ``0 +- s_lim`` as a measurement (fluxes only). The error floor
      is added here, in quadrature on detected bands: ``sqrt(s^2 + floor^2)`` in
      magnitudes, ``sqrt(s^2 + (f ln10/2.5 floor)^2)`` in fluxes.
    * ``likelihood="scaled"``: fluxes only; limits as ``0 +- s_lim`` flagged (the
      likelihood applies ``nondetection`` and its own error floor).

    Raises:
        ValueError: a combination that has no meaning (named, with the fix).
    """
    space = fit_space(inputs)
    if likelihood not in ("gaussian", "scaled"):
        raise ValueError(f"--likelihood must be 'gaussian' or 'scaled', got {likelihood!r}")
    if nondetection not in NONDETECTIONS:
        raise ValueError(f"--nondetection must be one of {NONDETECTIONS}, got {nondetection!r}")
    if not (math.isfinite(error_floor_mag) and error_floor_mag >= 0):
        raise ValueError(f"--error-floor-mag must be a number >= 0, got {error_floor_mag}")
    if space == "magnitude" and likelihood == "scaled":
        raise ValueError(
            "--likelihood scaled fits a free flux amplitude and needs flux inputs: pass "
            "--inputs fluxes (a flux grid) or use --likelihood gaussian"
        )
    if space == "magnitude" and nondetection == "zero_flux":
        raise ValueError(
            "--nondetection zero_flux (flux 0 +- the limit) needs flux inputs: pass --inputs "
            "fluxes, or use --nondetection censored with magnitudes"
        )
    X = np.asarray(X, np.float64)
    SIG = np.asarray(SIG, np.float64)
    up = np.zeros(X.shape, bool) if upper is None else np.asarray(upper, bool)
    if inputs == "fluxes":
        from .photometry import magnitudes_to_fluxes

        if not (math.isfinite(zero_point)):
            raise ValueError(f"--zero-point must be a finite number, got {zero_point}")
        X, SIG, up = magnitudes_to_fluxes(X, SIG, up, zero_point=zero_point)
    elif inputs == "flux-columns":
        X, SIG = np.where(up, 0.0, X), np.where(up, X, SIG)
    if space == "flux" and likelihood == "gaussian":
        if nondetection == "censored":
            X = np.where(up, SIG, X)  # the censored term at the 1-sigma limit
        else:
            up = np.zeros_like(up)  # 0 +- s_lim: a measurement
    if likelihood == "gaussian" and error_floor_mag > 0:
        det = ~up & np.isfinite(X)
        extra = (
            error_floor_mag
            if space == "magnitude"
            else np.abs(X) * _LN10_OVER_2_5 * (error_floor_mag)
        )
        SIG = np.where(det, np.hypot(SIG, extra), SIG)
    return X, SIG, (up if up.any() else None)


def make_likelihood(
    likelihood: str,
    inputs: str,
    *,
    amplitude_mode: str = "profile",
    nondetection: str = "censored",
    error_floor_mag: float = 0.0,
):
    """The likelihood of a fit with these settings (see `fit_arrays` for the data side):
    ``"gaussian"`` -> `GaussianProductLikelihood` (limits of the fit's space);
    ``"scaled"`` -> `ScaledGaussianLikelihood(amplitude_mode, error_floor_mag,
    nondetection)`."""
    from .prob import GaussianProductLikelihood, ScaledGaussianLikelihood

    space = fit_space(inputs)
    if likelihood == "gaussian":
        return GaussianProductLikelihood(limit_kind=space)
    return ScaledGaussianLikelihood(
        mode=amplitude_mode, error_floor_mag=error_floor_mag, nondetection=nondetection
    )


def normalisation_warning(grid, likelihood: str, inputs: str) -> str | None:
    """The warning for a fixed-amplitude likelihood on a grid whose normalisation is free
    (`free_normalisation`), or None."""
    if likelihood != "gaussian" or not free_normalisation(grid):
        return None
    what = "magnitudes" if fit_space(inputs) == "magnitude" else "fluxes"
    return (
        f"the grid's normalisation is free (a template grid: its models have no absolute "
        f"scale) but --likelihood gaussian compares absolute {what}, so the fit is set by the "
        "templates' arbitrary scale; fit a flux grid with --likelihood scaled (free amplitude)"
    )


def default_band(grid, band: str | None) -> str:
    """The reference band of a BPZ prior: ``band``, else the grid's ``flux_i`` or ``mag_i``.

    Raises:
        ValueError: ``band`` is not a grid observable, or no default exists.
    """
    names = list(grid.observable_names)
    if band is None:
        band = next((n for n in ("flux_i", "mag_i") if n in names), None)
        if band is None:
            raise ValueError(
                f"the BPZ prior needs a reference band: pass --prior-band NAME, one of {names}"
            )
    if band not in names:
        raise ValueError(f"--prior-band {band!r} is not a grid observable; choose one of {names}")
    return band


def read_column(path: str | Path, column: str, hdf5_group: str | None = None) -> np.ndarray:
    """One numeric column (e.g. the true redshifts) of a FITS or HDF5 catalog, float64.

    Raises:
        FileNotFoundError, KeyError (unknown column or group), ValueError (other format).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such catalog file {path}")
    name = path.name.lower()
    if name.endswith((".h5", ".hdf5")):
        import h5py

        with h5py.File(path, "r") as f:
            if hdf5_group and hdf5_group not in f:
                raise KeyError(f"{path} has no group {hdf5_group!r}")
            g = f[hdf5_group] if hdf5_group else f
            if column not in g or not isinstance(g[column], h5py.Dataset):
                cols = sorted(k for k in g if isinstance(g[k], h5py.Dataset))
                raise KeyError(f"unknown column {column!r} in {path}; columns: {cols}")
            values = g[column][...]
    elif name.endswith((".fits", ".fit", ".fts", ".fits.gz")):
        from astropy.table import Table

        table = Table.read(path)
        if column not in table.colnames:
            raise KeyError(f"unknown column {column!r} in {path}; columns: {table.colnames}")
        values = np.ma.filled(np.ma.asarray(table[column], np.float64), np.nan)
    else:
        raise ValueError(f"cannot read {path}: use a FITS or HDF5 catalog")
    return np.asarray(values, np.float64).reshape(-1)
