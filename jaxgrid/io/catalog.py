"""Reading catalogs as astronomers store them: `read_catalog` and the sentinel policy.

A catalog becomes ``X`` (M, P) values, ``SIG`` (M, P) 1-sigma errors, ``ids``,
per-value ``flags`` (`ValueFlag`) and ``upper`` (M, P) upper-limit flags, in
the column order of the observables asked for (or of the grid's).

Sentinels (`SentinelPolicy`, defaults follow the common photo-z convention,
e.g. LSST DESC / BPZ catalogs):

* NaN, inf or a masked value -> missing (``ValueFlag.MISSING``);
* ``-99`` -> not observed (``ValueFlag.UNOBSERVED``), missing;
* ``99`` -> non-detection: the error column holds the 1-sigma limiting
  magnitude. With ``nondetection="upper_limit"`` (default) the value becomes
  that limit, flagged in ``upper``, with error ``nondetection_sigma``
  (default 2.5/ln 10 = 1.0857 mag, the magnitude error of a 1-sigma
  detection); with ``"missing"`` the band is dropped (``ValueFlag.NONDETECTION``);
* an error that is NaN, inf or <= 0 (zero included: a zero error is invalid, not
  "no error") with a finite value -> missing (``ValueFlag.BAD_ERROR``).

Missing values come out as NaN in both ``X`` and ``SIG``, which the
likelihoods leave out of the fit.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .flat import as_ids

__all__ = ["ValueFlag", "SentinelPolicy", "Catalog", "read_catalog"]


class ValueFlag(enum.IntEnum):
    """What happened to each catalog value."""

    OK = 0
    MISSING = 1  #: NaN, inf or masked
    UNOBSERVED = 2  #: the "not observed" sentinel (-99)
    NONDETECTION = 3  #: the non-detection sentinel (99): upper limit or dropped
    BAD_ERROR = 4  #: error NaN, inf or <= 0


@dataclasses.dataclass(frozen=True)
class SentinelPolicy:
    """How catalog conventions map to missing values and upper limits (see module docs)."""

    nondetection_value: float | None = 99.0
    unobserved_value: float | None = -99.0
    nondetection: str = "upper_limit"
    nondetection_sigma: float = 2.5 / np.log(10.0)
    tolerance: float = 1e-6

    def __post_init__(self):
        if self.nondetection not in ("upper_limit", "missing"):
            raise ValueError("SentinelPolicy: `nondetection` must be 'upper_limit' or 'missing'.")
        if not self.nondetection_sigma > 0:
            raise ValueError("SentinelPolicy: `nondetection_sigma` must be positive.")


class Catalog(NamedTuple):
    """Arrays of a catalog, ready for ``fit_batch(X, SIG, upper_limits=upper)``."""

    X: np.ndarray
    SIG: np.ndarray
    ids: np.ndarray | None
    flags: np.ndarray
    upper: np.ndarray
    observable_names: list[str]


def _column_map(spec: Any, what: str) -> dict[str, str]:
    if isinstance(spec, str):
        raise TypeError(f"`{what}` must be a list of column names or a dict, not one string.")
    if isinstance(spec, Mapping):
        return {str(k): str(v) for k, v in spec.items()}
    return {str(c): str(c) for c in spec}


def _open_source(source: Any, hdf5_group: str | None, hdu: int | str):
    """A ``{name: column}`` view of the source, its length, and its column names."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"read_catalog: no such file {path}.")
        name = path.name.lower()
        if name.endswith((".fits", ".fit", ".fts", ".fits.gz")):
            from astropy.table import Table

            from .._fits import fits_read_errors

            with fits_read_errors(path, "read_catalog"):
                table = Table.read(path, hdu=hdu)
            return _open_source(table, hdf5_group, hdu)
        if name.endswith((".h5", ".hdf5")):
            import h5py

            with h5py.File(path, "r") as f:
                if hdf5_group and hdf5_group not in f:
                    raise KeyError(
                        f"read_catalog: {path} has no group {hdf5_group!r}; groups: "
                        f"{[k for k in f if isinstance(f[k], h5py.Group)]}."
                    )
                group = f[hdf5_group] if hdf5_group else f
                cols = {k: group[k][...] for k in group if isinstance(group[k], h5py.Dataset)}
            if not cols:
                raise ValueError(
                    f"read_catalog: no column datasets in {path}:{hdf5_group or '/'}; pass "
                    f"hdf5_group= (groups: {_groups(path)})."
                )
            return cols
        raise ValueError(
            f"read_catalog: cannot read {path}; use FITS or HDF5, a Table, "
            "a DataFrame or a dict of arrays."
        )
    if hasattr(source, "colnames"):  # astropy Table
        return {c: source[c] for c in source.colnames}
    if hasattr(source, "columns") and hasattr(source, "to_numpy"):  # pandas DataFrame
        return {str(c): source[c].to_numpy() for c in source.columns}
    if isinstance(source, Mapping):
        return dict(source)
    raise TypeError(f"read_catalog: unsupported source {type(source).__name__}.")


def _length_message(lengths: dict[str, int], source: Any) -> str:
    """Which of the columns read disagree in length, and where they come from."""
    by_length: dict[int, list[str]] = {}
    for c, n in lengths.items():
        by_length.setdefault(n, []).append(c)
    where = f" of {source}" if isinstance(source, (str, Path)) else ""
    parts = "; ".join(f"{n} rows: {sorted(names)[:8]}" for n, names in sorted(by_length.items()))
    return (
        f"read_catalog: the columns read{where} have different lengths ({parts}); every column "
        "(HDF5: every dataset of the group) must have one entry per object."
    )


def _groups(path: Path) -> list[str]:
    import h5py

    with h5py.File(path, "r") as f:
        return [k for k in f if isinstance(f[k], h5py.Group)]


def _values(cols: dict[str, Any], name: str) -> tuple[np.ndarray, np.ndarray]:
    """Float values of a column and its mask (True = masked)."""
    if name not in cols:
        raise KeyError(f"read_catalog: unknown column {name!r}; columns: {sorted(cols)}.")
    col = cols[name]
    mask = (
        np.asarray(np.ma.getmaskarray(col))
        if np.ma.isMaskedArray(col) or hasattr(col, "mask")
        else None
    )
    data = np.ma.getdata(col) if mask is not None else col
    try:
        arr = np.asarray(data, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(
            f"read_catalog: column {name!r} is not numeric (dtype {np.asarray(data).dtype}); "
            "give a column of numbers (NaN for missing values)."
        ) from None
    if mask is None or mask.shape != arr.shape:
        mask = np.zeros(arr.shape, bool)
    return arr, mask


def _used_columns(omap, emap, id_col, upper_limits) -> list[str]:
    used = [*omap.values(), *emap.values()]
    if id_col is not None:
        used.append(id_col)
    if isinstance(upper_limits, Mapping):
        used.extend(str(c) for c in upper_limits.values())
    return list(dict.fromkeys(used))


def _length(cols: dict[str, Any], used: list[str], source: Any) -> int:
    """The common length of the columns read (other columns, e.g. 2-D ones, are not
    looked at). A used column must hold one value per row."""
    lengths = {}
    for c in used:
        if c not in cols:
            continue  # reported with its role (value, error, id, limit) when read
        shape = np.shape(cols[c])
        if len(shape) == 0 or int(np.prod(shape[1:], dtype=np.int64)) != 1:
            raise ValueError(
                f"read_catalog: column {c!r} has shape {shape}; a catalog column must hold one "
                "value per row (split a multi-band column into one column per band)."
            )
        lengths[c] = shape[0]
    if len(set(lengths.values())) > 1:
        raise ValueError(_length_message(lengths, source))
    return next(iter(lengths.values()), 0)


def read_catalog(
    source: Any,
    observables: Sequence[str] | Mapping[str, str],
    errors: Sequence[str] | Mapping[str, str],
    id_col: str | None = None,
    upper_limits: Any = None,
    *,
    grid=None,
    policy: SentinelPolicy | None = None,
    hdf5_group: str | None = None,
    hdu: int | str = 1,
    require_values: bool = True,
) -> Catalog:
    """Read a catalog into fit-ready arrays.

    Args:
        source: FITS or HDF5 path (HDF5: a group of column datasets, chosen
            with ``hdf5_group``), astropy Table, pandas DataFrame or dict of
            arrays.
        observables: value columns, as a list (names = columns) or
            ``{observable_name: column}``.
        errors: the matching 1-sigma error columns (list in the same order, or
            ``{observable_name: column}``).
        id_col: optional id column.
        upper_limits: explicit limits on top of the sentinels: a
            ``{observable_name: bool column}`` map or an (M, P) bool array.
        grid: a `ModelGrid`; the observables must be its observable names, and
            the columns come out in the grid's order.
        policy: a `SentinelPolicy` (default: the photo-z convention).
        require_values: raise when a column has no usable value (set False for
            a chunk of a larger catalog, where that can happen legitimately).

    Raises:
        KeyError: an unknown column.
        ValueError: mismatched names or lengths, or a column with no usable value.
    """
    policy = SentinelPolicy() if policy is None else policy
    omap = _column_map(observables, "observables")
    emap = _column_map(errors, "errors")
    if not isinstance(errors, Mapping):
        if len(emap) != len(omap):
            raise ValueError(
                f"read_catalog: {len(omap)} observables but {len(emap)} error columns; give one "
                "error column per observable."
            )
        emap = dict(zip(omap, emap.values(), strict=True))
    if set(emap) != set(omap):
        raise ValueError(
            f"read_catalog: the error map names {sorted(emap)} but the observables are "
            f"{sorted(omap)}."
        )
    names = list(omap)
    if grid is not None:
        if set(names) != set(grid.observable_names):
            raise ValueError(
                f"read_catalog: observables {sorted(names)} do not match the grid's "
                f"{grid.observable_names}; map each grid observable to a column."
            )
        names = list(grid.observable_names)
    cols = _open_source(source, hdf5_group, hdu)
    m = _length(cols, _used_columns(omap, emap, id_col, upper_limits), source)
    p = len(names)
    X = np.full((m, p), np.nan)
    SIG = np.full((m, p), np.nan)
    flags = np.zeros((m, p), np.int8)
    upper = np.zeros((m, p), bool)
    tol = policy.tolerance
    for j, name in enumerate(names):
        v, vmask = _values(cols, omap[name])
        e, emask = _values(cols, emap[name])
        missing = vmask | ~np.isfinite(v)
        unobs = ~missing & (
            np.isclose(v, policy.unobserved_value, rtol=0, atol=tol)
            if policy.unobserved_value is not None
            else False
        )
        nondet = ~missing & (
            np.isclose(v, policy.nondetection_value, rtol=0, atol=tol)
            if policy.nondetection_value is not None
            else False
        )
        bad_err = emask | ~np.isfinite(e) | (e <= 0)
        ok = ~(missing | unobs | nondet | bad_err)
        X[ok, j], SIG[ok, j] = v[ok], e[ok]
        flags[missing, j] = ValueFlag.MISSING
        flags[unobs, j] = ValueFlag.UNOBSERVED
        flags[~missing & ~unobs & ~nondet & bad_err, j] = ValueFlag.BAD_ERROR
        flags[nondet, j] = ValueFlag.NONDETECTION
        if policy.nondetection == "upper_limit":
            lim = nondet & ~bad_err  # the error column holds the limiting magnitude
            X[lim, j] = e[lim]
            SIG[lim, j] = policy.nondetection_sigma
            upper[lim, j] = True
        if require_values and m and not np.any(ok | upper[:, j]):
            raise ValueError(
                f"read_catalog: column {omap[name]!r} ({name}) has no usable value (all "
                "missing, sentinel or bad error); drop it from `observables`."
            )
    if upper_limits is not None:
        if isinstance(upper_limits, Mapping):
            for name, col in upper_limits.items():
                if name not in names:
                    raise KeyError(f"read_catalog: upper_limits names unknown observable {name!r}.")
                flag, _ = _values(cols, col)
                upper[:, names.index(name)] |= flag.astype(bool) & np.isfinite(
                    X[:, names.index(name)]
                )
        else:
            u = np.asarray(upper_limits)
            if u.dtype != bool or u.shape != (m, p):
                raise ValueError(f"read_catalog: `upper_limits` must be a ({m}, {p}) bool array.")
            upper |= u & np.isfinite(X)
    ids = None
    if id_col is not None:
        if id_col not in cols:
            raise KeyError(f"read_catalog: unknown id column {id_col!r}; columns: {sorted(cols)}.")
        ids = as_ids(np.ma.asarray(cols[id_col]).reshape(-1), name=f"id column {id_col!r}")
    return Catalog(X, SIG, ids, flags, upper, names)
