"""The file formats of `ModelGrid`: FITS tables, HDF5 groups, pickles.

The host grid container (`jaxgrid.grid`) calls these; readers build the grid with
the class they are given (``cls``), so this module never imports the container.
The public functions are `jaxgrid.io.read_fits` etc.

Every writer stores arrays, names, weights, the per-model noise model
(``model_sigma``/``model_bias``: HDF5 groups of one dataset per observable, FITS
columns ``<observable>__model_sigma`` listed in the JGNOISE card, dict/pickle keys),
meta and fitted standardisers;
the matching reader restores all of them (round trips are tested). The
optional ``check_boundaries`` callable is code, not data: only pickles keep it.

BESTA's (0.6.2) files read too, with everything they hold: its HDF5 layout is
jaxgrid's (standardisers as ``{"is_fit", "mean", "sd"}``), its FITS tables keep
the meta under ``MODELGRID_META`` (a HIERARCH card) and no standardisers; its
``ModelGrid.to_dict()`` dicts are `grid_from_dict`'s input (tests/data/besta holds
files the real BESTA wrote).
"""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from astropy.io import fits
from astropy.table import Table

from ._fits import fits_read_errors
from .transforms import LinearStandardiser

__all__ = [
    "write_fits",
    "read_fits",
    "write_hdf5",
    "read_hdf5",
    "write_pickle",
    "read_pickle",
    "load_auto",
    "grid_to_dict",
    "grid_from_dict",
    "SUPPORTED_SUFFIXES",
]

SUPPORTED_SUFFIXES = {
    "fits": (".fits", ".fit", ".fts", ".fits.gz"),
    "hdf5": (".h5", ".hdf5"),
    "pickle": (".pkl", ".pickle"),
}
_PICKLE_FORMAT = "jaxgrid.ModelGrid/1"
_FITS_NAME_MAX = 68
_META_KEYS = ("META", "MODELGRID_META")  # jaxgrid's, BESTA's


def _standardisers_json(grid: Any) -> str:
    return json.dumps(
        {"observables": grid.standardiser.to_dict(), "targets": grid.target_standardiser.to_dict()}
    )


def _restore_standardisers(grid: Any, text: str | dict | None, ocols=None, tcols=None) -> None:
    if not text:
        return
    d = json.loads(text) if isinstance(text, str) else text
    obs = LinearStandardiser.from_dict(d.get("observables") or {"fitted": False})
    tgt = LinearStandardiser.from_dict(d.get("targets") or {"fitted": False})
    # Only keep a stored fit when it still describes the loaded columns.
    if obs.is_fitted and ocols is not None:
        obs = obs.select(ocols) if max(ocols, default=-1) < obs.n_columns else LinearStandardiser()
    if tgt.is_fitted and tcols is not None:
        tgt = tgt.select(tcols) if max(tcols, default=-1) < tgt.n_columns else LinearStandardiser()
    if obs.is_fitted and obs.n_columns == grid.n_observables:
        grid.standardiser = obs
    if tgt.is_fitted and tgt.n_columns == grid.n_targets:
        grid.target_standardiser = tgt


def _column_map(spec: Any, what: str) -> dict[str, str] | None:
    """Normalise a column spec (None, list of names, or {new_name: source}) to a dict."""
    if spec is None:
        return None
    if isinstance(spec, str):
        raise TypeError(f"`{what}` must be a list of column names or a dict, not one string.")
    if isinstance(spec, dict):
        return {str(k): str(v) for k, v in spec.items()}
    return {str(c): str(c) for c in spec}


def _check_writable_names(grid: Any, forbidden: str, fmt: str) -> None:
    names = grid.observable_names + grid.target_names
    clash = sorted(set(grid.observable_names) & set(grid.target_names))
    if clash:
        raise ValueError(
            f"{fmt}: names {clash} are both observables and targets; one column each is "
            "needed in the file — rename one of them (grid.select + a new ModelGrid)."
        )
    if "weight" in names or "weights" in names:
        raise ValueError(f"{fmt}: 'weight'/'weights' is reserved for the grid weights column.")
    bad = [n for n in names if any(ch in n for ch in forbidden)]
    if bad:
        raise ValueError(f"{fmt}: column names {bad} contain one of {list(forbidden)}.")
    if fmt == "to_fits_table":
        # a FITS column name (TTYPEn) must fit one header card: 68 characters, quotes doubled
        long = [n for n in names if len(n.replace("'", "''")) > _FITS_NAME_MAX]
        if long:
            raise ValueError(
                f"{fmt}: column names {long} are longer than FITS allows ({_FITS_NAME_MAX} "
                "characters); rename them, or write HDF5 (to_hdf5), which has no such limit."
            )


# -------------------------------------------------------------------- FITS
def write_fits(
    grid: Any,
    path: str | Path,
    hdu_name: str = "MODELGRID",
    overwrite: bool = False,
    include_meta: bool = True,
    checksum: bool = True,
    meta_key: str = "META",
) -> None:
    """Write ``grid`` as a FITS binary table HDU named ``hdu_name``.

    Columns: each observable, each target, then ``weight`` (only when the grid
    has weights). Header: NMODELS, NOBS, NTGT, OBSNAME and TGTNAME
    (comma-joined names), JGSTD (standardisers, JSON) and, with
    ``include_meta``, META (the meta dict, JSON; long values use FITS
    CONTINUE cards; ``meta_key`` names another key, e.g. BESTA's
    ``MODELGRID_META``, written as a HIERARCH card).

    If ``path`` exists, the HDU is appended, or replaced when an HDU of that
    name exists and ``overwrite`` is true (``ValueError`` otherwise).
    ``checksum`` writes the FITS CHECKSUM and DATASUM cards (FITS standard 4.0,
    appendix J), which `read_fits` verifies.
    """
    _check_writable_names(grid, ",", "to_fits_table")
    cols = {n: np.asarray(grid.observables[:, i]) for i, n in enumerate(grid.observable_names)}
    cols.update({n: np.asarray(grid.targets[:, i]) for i, n in enumerate(grid.target_names)})
    if grid.weights is not None:
        cols["weight"] = np.asarray(grid.weights)
    noise = _noise_parts(grid)
    for part, arr in noise.items():
        for i, n in enumerate(grid.observable_names):
            cols[_noise_col(n, part)] = arr[:, i]
    hdu = fits.BinTableHDU(Table(cols), name=hdu_name)
    h = hdu.header
    h["NMODELS"] = grid.n_models
    h["NOBS"] = grid.n_observables
    h["NTGT"] = grid.n_targets
    h["OBSNAME"] = ",".join(grid.observable_names)
    h["TGTNAME"] = ",".join(grid.target_names)
    h["JGSTD"] = _standardisers_json(grid)
    h["JGNOISE"] = ",".join(noise)  # the noise-model parts stored (columns <name>__<part>)
    if include_meta:
        if not isinstance(meta_key, str) or not meta_key:
            raise ValueError(
                f"to_fits_table: `meta_key` must be a non-empty string, got {meta_key!r}."
            )
        key = meta_key if len(meta_key) <= 8 else f"HIERARCH {meta_key}"
        h[key] = json.dumps(grid.meta)
    path = Path(path)
    if not path.exists():
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path, checksum=checksum)
        return
    if checksum:
        hdu.add_checksum()
    with fits.open(path, mode="update", checksum=checksum) as hdul:
        names = [x.name for x in hdul]
        if hdu_name.upper() in names:
            if not overwrite:
                raise ValueError(
                    f"to_fits_table: {path} already has an HDU named {hdu_name!r}; pass "
                    "overwrite=True to replace it or choose another hdu_name."
                )
            hdul[names.index(hdu_name.upper())] = hdu
        else:
            hdul.append(hdu)
        hdul.flush()


def verify_fits_checksum(hdu, path, what: str) -> None:
    """``ValueError`` when ``hdu`` carries CHECKSUM/DATASUM cards that do not match
    its header and data (a damaged file); HDUs without the cards pass."""
    bad = []
    if "DATASUM" in hdu.header and hdu.verify_datasum() == 0:
        bad.append("DATASUM (the data)")
    if "CHECKSUM" in hdu.header and hdu.verify_checksum() == 0:
        bad.append("CHECKSUM (header and data)")
    if bad:
        raise ValueError(
            f"{what}: HDU {hdu.name!r} of {path} fails its {' and '.join(bad)} check: the "
            "file is damaged; restore or rewrite it."
        )


def read_fits(
    path: str | Path,
    observable_cols: Any = None,
    target_cols: Any = None,
    weight_col: str | None = None,
    row_mask: Any = None,
    table_hdu: int | str = 1,
    meta_key: str | None = None,
    *,
    cls: type,
) -> Any:
    """Read a `ModelGrid` from a FITS table.

    With a jaxgrid- or BESTA-written HDU (header OBSNAME/TGTNAME) everything is
    automatic; the meta is read from ``meta_key`` (default: ``META``, else
    BESTA's ``MODELGRID_META``). For any other table give ``observable_cols`` and ``target_cols``
    as lists of column names or ``{new_name: source_column}`` maps, and
    optionally ``weight_col``. ``row_mask`` (bool per row) keeps a subset.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"from_fits_table: no such file {path}.")
    with fits_read_errors(path, "from_fits_table"), fits.open(path) as hdul:
        try:
            hdu = hdul[table_hdu]
        except (KeyError, IndexError):
            raise KeyError(
                f"from_fits_table: {path} has no HDU {table_hdu!r}; HDUs: {[h.name for h in hdul]}."
            ) from None
        if not isinstance(hdu, fits.BinTableHDU | fits.TableHDU):
            raise ValueError(f"from_fits_table: HDU {table_hdu!r} of {path} is not a table.")
        verify_fits_checksum(hdu, path, "from_fits_table")
        header = hdu.header.copy()
        table = Table(hdu.data, copy=True)
    written = "OBSNAME" in header and "TGTNAME" in header
    omap, tmap = (
        _column_map(observable_cols, "observable_cols"),
        _column_map(target_cols, "target_cols"),
    )
    if omap is None or tmap is None:
        if not written:
            raise ValueError(
                f"from_fits_table: HDU {table_hdu!r} of {path} was not written by jaxgrid; pass "
                "observable_cols and target_cols (lists of names or {new: source} maps)."
            )
        onames, tnames = _names(header["OBSNAME"]), _names(header["TGTNAME"])
        omap = omap or {n: n for n in onames}
        tmap = tmap or {n: n for n in tnames}
        if weight_col is None and "weight" in table.colnames:
            weight_col = "weight"
    missing = [
        c for c in [*omap.values(), *tmap.values(), weight_col] if c and c not in table.colnames
    ]
    if missing:
        raise KeyError(
            f"from_fits_table: columns {missing} not in {path}; columns: {table.colnames}."
        )
    rows = slice(None) if row_mask is None else _mask(row_mask, len(table), "row_mask")
    n = len(np.arange(len(table))[rows])
    obs = _columns([np.asarray(table[c])[rows] for c in omap.values()], n)
    tgt = _columns([np.asarray(table[c])[rows] for c in tmap.values()], n)
    w = None if weight_col is None else np.asarray(table[weight_col])[rows]
    meta = _fits_meta(header, meta_key, path)
    noise = {}
    for part in _names(header.get("JGNOISE", "")) if written else []:
        srcs = [_noise_col(c, part) for c in omap.values()]
        if all(c in table.colnames for c in srcs):
            noise[part] = _columns([np.asarray(table[c])[rows] for c in srcs], n)
        else:
            warnings.warn(
                f"from_fits_table: {path} lists a {part} noise model without columns for "
                "every observable read; it is not loaded.",
                stacklevel=3,
            )
    grid = cls(obs, tgt, list(omap), list(tmap), weights=w, meta=meta, **noise)
    if written:
        onames, tnames = _names(header["OBSNAME"]), _names(header["TGTNAME"])
        ocols = [onames.index(c) if c in onames else 10**9 for c in omap.values()]
        tcols = [tnames.index(c) if c in tnames else 10**9 for c in tmap.values()]
        _restore_standardisers(grid, header.get("JGSTD"), ocols, tcols)
    return grid


def _names(text: str) -> list[str]:
    """Comma-joined names (an empty string: none, as a grid without targets)."""
    return [s for s in str(text).split(",") if s]


def _columns(cols: list, n: int) -> np.ndarray:
    """(n, len(cols)) from 1-D columns; (n, 0) when there are none (BESTA writes grids
    without targets)."""
    return np.stack(cols, axis=1) if cols else np.empty((n, 0))


def _group_rows(g, used: list[str]) -> int:
    if used:
        return int(g[used[0]].shape[0])
    return int(g.attrs.get("n_models", 0))


def _fits_meta(header, meta_key: str | None, path) -> dict:
    keys = _META_KEYS if meta_key is None else (meta_key,)
    for key in keys:
        if key in header:
            try:
                meta = json.loads(header[key])
            except (TypeError, ValueError) as err:
                raise ValueError(
                    f"from_fits_table: the {key} header card of {path} is not JSON ({err}); "
                    "pass meta_key= to read another card, or fix the file."
                ) from None
            return meta if isinstance(meta, dict) else {"meta": meta}
    if meta_key is not None:
        raise KeyError(f"from_fits_table: {path} has no {meta_key!r} header card.")
    return {}


def _mask(mask: Any, n: int, what: str) -> np.ndarray:
    m = np.asarray(mask)
    if m.dtype != bool or m.shape != (n,):
        raise ValueError(f"`{what}` must be a bool array of shape ({n},), got {m.dtype} {m.shape}.")
    return m


# -------------------------------------------------------------------- HDF5
def write_hdf5(
    grid: Any,
    path: str | Path,
    group: str = "/modelgrid",
    overwrite: bool = False,
    compression: str | None = "gzip",
    compression_opts: int | None = None,
    chunks: Any = True,
    include_meta: bool = True,
) -> None:
    """Write ``grid`` under an HDF5 group.

    Layout (BESTA's): ``<group>/observables/<name>`` and ``<group>/targets/<name>``
    (one dataset per column), ``<group>/weights`` when weighted; JSON attributes
    ``observable_names``, ``target_names``, ``meta`` (unless not ``include_meta``),
    ``standardisers``; ``n_models``, ``n_observables``, ``n_targets``.
    An existing group is replaced only with ``overwrite=True``. ``compression``,
    ``compression_opts`` (gzip level) and ``chunks`` go to h5py.
    """
    _check_writable_names(grid, "/", "to_hdf5")
    store = {"compression": compression, "chunks": chunks}
    if compression is not None and compression_opts is not None:
        store["compression_opts"] = compression_opts
    with h5py.File(path, "a") as f:
        if group in f:
            if not overwrite:
                raise ValueError(
                    f"to_hdf5: {path} already has group {group!r}; pass overwrite=True to "
                    "replace it or choose another group."
                )
            del f[group]
        g = f.create_group(group)
        for sub, names, arr in (
            ("observables", grid.observable_names, grid.observables),
            ("targets", grid.target_names, grid.targets),
        ):
            sg = g.create_group(sub)
            host = np.asarray(arr)
            for i, n in enumerate(names):
                sg.create_dataset(n, data=host[:, i], **store)
        if grid.weights is not None:
            g.create_dataset("weights", data=np.asarray(grid.weights), **store)
        for part, arr in _noise_parts(grid).items():  # one dataset per observable, as those
            sg = g.create_group(part)
            for i, n in enumerate(grid.observable_names):
                sg.create_dataset(n, data=arr[:, i], **store)
        g.attrs["observable_names"] = json.dumps(grid.observable_names)
        g.attrs["target_names"] = json.dumps(grid.target_names)
        g.attrs["n_models"] = grid.n_models
        g.attrs["n_observables"] = grid.n_observables
        g.attrs["n_targets"] = grid.n_targets
        if include_meta:
            g.attrs["meta"] = json.dumps(grid.meta)
        g.attrs["standardisers"] = _standardisers_json(grid)
        g.attrs["format"] = "jaxgrid.ModelGrid/1"


def read_hdf5(
    path: str | Path,
    group: str = "/modelgrid",
    observable_dsets: Any = None,
    target_dsets: Any = None,
    weight_dset: str | None = None,
    row_slice: slice | tuple[int, int] | None = None,
    *,
    cls: type,
) -> Any:
    """Read a `ModelGrid` from an HDF5 group.

    A jaxgrid-written group is read automatically. Otherwise give
    ``observable_dsets``/``target_dsets`` as dataset paths relative to the
    group (list, or ``{new_name: path}``), and optionally ``weight_dset``.
    ``row_slice`` (a slice or ``(start, stop)``) reads a contiguous subset.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"from_hdf5: no such file {path}.")
    if isinstance(row_slice, tuple):
        row_slice = slice(*row_slice)
    rows = slice(None) if row_slice is None else row_slice
    with h5py.File(path, "r") as f:
        if group not in f:
            raise KeyError(f"from_hdf5: {path} has no group {group!r}; top level: {list(f)}.")
        g = f[group]
        written = "observable_names" in g.attrs
        omap = _column_map(observable_dsets, "observable_dsets")
        tmap = _column_map(target_dsets, "target_dsets")
        if omap is None or tmap is None:
            if not written:
                raise ValueError(
                    f"from_hdf5: group {group!r} of {path} was not written by jaxgrid; pass "
                    "observable_dsets and target_dsets."
                )
            onames = json.loads(g.attrs["observable_names"])
            tnames = json.loads(g.attrs["target_names"])
            omap = omap or {n: f"observables/{n}" for n in onames}
            tmap = tmap or {n: f"targets/{n}" for n in tnames}
            if weight_dset is None and "weights" in g:
                weight_dset = "weights"
        missing = [d for d in [*omap.values(), *tmap.values(), weight_dset] if d and d not in g]
        if missing:
            raise KeyError(f"from_hdf5: datasets {missing} not found under {group!r} in {path}.")
        used = [*omap.values(), *tmap.values(), *([weight_dset] if weight_dset else [])]
        lengths = {d: g[d].shape[0] if g[d].ndim else None for d in used}
        if len(set(lengths.values())) > 1 or None in lengths.values():
            raise ValueError(
                f"from_hdf5: the datasets under {group!r} in {path} must be 1-D with one entry "
                f"per model; their lengths differ: {lengths}."
            )
        n = len(range(*rows.indices(_group_rows(g, used))))
        obs = _columns([g[d][rows] for d in omap.values()], n)
        tgt = _columns([g[d][rows] for d in tmap.values()], n)
        w = None if weight_dset is None else g[weight_dset][rows]
        meta = json.loads(g.attrs["meta"]) if "meta" in g.attrs else {}
        std_text = g.attrs.get("standardisers")
        noise = {}
        for part in _NOISE_PARTS:
            names = [_dset_name(d, "observables") for d in omap.values()]
            dsets = [f"{part}/{nm}" for nm in names if nm is not None]
            if part in g and len(dsets) == len(names) and all(d in g for d in dsets):
                noise[part] = _columns([g[d][rows] for d in dsets], n)
            elif part in g:
                warnings.warn(
                    f"from_hdf5: {group!r} in {path} has a {part} noise model that does not "
                    "cover the observables read (give them as observables/<name>); it is "
                    "not loaded.",
                    stacklevel=3,
                )
        grid = cls(obs, tgt, list(omap), list(tmap), weights=w, meta=meta, **noise)
        if written:
            onames = json.loads(g.attrs["observable_names"])
            tnames = json.loads(g.attrs["target_names"])
            ocols = [_dset_col(d, "observables", onames) for d in omap.values()]
            tcols = [_dset_col(d, "targets", tnames) for d in tmap.values()]
            _restore_standardisers(grid, std_text, ocols, tcols)
    return grid


def _dset_name(dset: str, sub: str) -> str | None:
    prefix = f"{sub}/"
    return dset[len(prefix) :] if dset.startswith(prefix) else None


def _dset_col(dset: str, sub: str, names: list[str]) -> int:
    name = _dset_name(dset, sub)
    return names.index(name) if name in names else 10**9


# ------------------------------------------------------------ noise models
_NOISE_PARTS = ("model_sigma", "model_bias")


def _noise_parts(grid: Any) -> dict[str, np.ndarray]:
    """The grid's per-model noise arrays present, by part name (host)."""
    return {
        part: np.asarray(getattr(grid, part))
        for part in _NOISE_PARTS
        if getattr(grid, part, None) is not None
    }


def _noise_col(name: str, part: str) -> str:
    """The FITS column of observable ``name``'s noise-model ``part``."""
    return f"{name}__{part}"


# ------------------------------------------------------------------ dicts
def grid_to_dict(grid: Any) -> dict[str, Any]:
    """BESTA's ``ModelGrid.to_dict()`` layout: NumPy arrays, names, weights, meta,
    ``standardisers`` (``{"observables": {...}, "targets": {...}}``, each with BESTA's
    ``is_fit``/``mean``/``sd`` keys and jaxgrid's), ``check_boundaries_key``."""
    return {
        "observables": np.asarray(grid.observables),
        "targets": np.asarray(grid.targets),
        "observable_names": list(grid.observable_names),
        "target_names": list(grid.target_names),
        "weights": None if grid.weights is None else np.asarray(grid.weights),
        "meta": json.loads(json.dumps(grid.meta)),
        "standardisers": {
            "observables": grid.standardiser.to_dict(),
            "targets": grid.target_standardiser.to_dict(),
        },
        "check_boundaries_key": grid.meta.get("check_boundaries_key"),
        **_noise_parts(grid),
    }


def grid_from_dict(d: Any, *, cls: type, check_boundaries=None) -> Any:
    """A grid from `grid_to_dict`'s dict or BESTA's (lists or arrays)."""
    if not isinstance(d, dict):
        raise TypeError(f"from_dict: expected a dict made by to_dict(), got {type(d).__name__}.")
    missing = [
        k for k in ("observables", "targets", "observable_names", "target_names") if k not in d
    ]
    if missing:
        raise ValueError(f"from_dict: the dict lacks {missing}; expected one made by to_dict().")
    weights = d.get("weights")
    grid = cls(
        np.asarray(d["observables"], dtype=np.float64),
        np.asarray(d["targets"], dtype=np.float64),
        list(d["observable_names"]),
        list(d["target_names"]),
        weights=None if weights is None else np.asarray(weights, dtype=np.float64),
        meta=_plain(dict(d.get("meta") or {})),
        check_boundaries=check_boundaries,
        **{p: np.asarray(d[p], np.float64) for p in _NOISE_PARTS if d.get(p) is not None},
    )
    _restore_standardisers(grid, d.get("standardisers"))
    return grid


def _plain(v: Any) -> Any:
    """``v`` with NumPy arrays and scalars as lists and Python numbers (BESTA's dicts
    pass its meta through unchanged, NumPy values included): JSON-able meta."""
    if isinstance(v, dict):
        return {str(k): _plain(u) for k, u in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(u) for u in v]
    if isinstance(v, np.ndarray | np.generic):
        return v.tolist()
    return v


# ------------------------------------------------------------------ pickle
def write_pickle(grid: Any, path: str | Path) -> None:
    """Pickle the grid as a versioned dict of NumPy arrays (portable across devices).

    ``check_boundaries`` is kept when it pickles (a module-level function);
    otherwise it is dropped with a warning.
    """
    check = grid.check_boundaries
    if check is not None:
        try:
            pickle.dumps(check)
        except (pickle.PicklingError, AttributeError, TypeError):
            warnings.warn(
                "to_pickle: check_boundaries cannot be pickled (lambda or local function); "
                "it is not saved.",
                stacklevel=3,
            )
            check = None
    payload = {
        "format": _PICKLE_FORMAT,
        "observables": np.asarray(grid.observables),
        "targets": np.asarray(grid.targets),
        "observable_names": grid.observable_names,
        "target_names": grid.target_names,
        "weights": None if grid.weights is None else np.asarray(grid.weights),
        "meta": grid.meta,
        "standardisers": _standardisers_json(grid),
        "check_boundaries": check,
        **_noise_parts(grid),
    }
    with open(path, "wb") as fh:
        pickle.dump(payload, fh, protocol=pickle.HIGHEST_PROTOCOL)


def read_pickle(path: str | Path, *, cls: type) -> Any:
    """Read a grid written by `write_pickle` (``TypeError`` for any other pickle)."""
    with open(path, "rb") as fh:
        try:
            payload = pickle.load(fh)  # noqa: S301 - the user's own file
        except ModuleNotFoundError as err:
            if (err.name or "").split(".")[0] != "besta":
                raise
            raise TypeError(
                f"from_pickle: {path} is a BESTA pickle (it needs BESTA's own class); in "
                "BESTA, write the grid with grid.to_hdf5(path) and load that file."
            ) from None
    if not isinstance(payload, dict) or payload.get("format") != _PICKLE_FORMAT:
        raise TypeError(
            f"from_pickle: {path} does not hold a jaxgrid ModelGrid (got {type(payload).__name__})."
        )
    grid = cls(
        payload["observables"],
        payload["targets"],
        payload["observable_names"],
        payload["target_names"],
        weights=payload["weights"],
        meta=payload["meta"],
        check_boundaries=payload["check_boundaries"],
        **{p: payload[p] for p in _NOISE_PARTS if payload.get(p) is not None},
    )
    _restore_standardisers(grid, payload["standardisers"])
    return grid


def load_auto(path: str | Path, *, cls: type, **kw: Any) -> Any:
    """Load a grid, choosing the reader from the file suffix; ``kw`` go to the reader."""
    name = str(path).lower()
    for fmt, suffixes in SUPPORTED_SUFFIXES.items():
        if name.endswith(suffixes):
            reader = {"fits": read_fits, "hdf5": read_hdf5, "pickle": read_pickle}[fmt]
            return reader(path, cls=cls, **kw)
    supported = [s for group in SUPPORTED_SUFFIXES.values() for s in group]
    raise ValueError(
        f"load_auto: cannot tell the format of {path!s}; supported suffixes: {supported}."
    )
