"""Exporting batch-fit results: astropy Tables (FITS/HDF5/Parquet) and qp ensembles.

* `results_to_table` — one row per object from ``fit_batch`` output (per-object
  dicts, per-chunk dicts) or from an HDF5 result group; ``id`` from the results
  (``fit_batch(ids=...)``) or ``ids=``; target summaries carry units when given
  (``units=`` or the grid's ``meta["units"]``).
* `write_results` / `read_results` — a table to and from FITS, HDF5 or Parquet.
* `to_qp` — a ``qp.Ensemble`` (optional extra ``qp``: package ``qp-prob``) of
  one target's stored PDFs in the histogram representation, with ``ancil``:
  ``m`` (object index), ``id`` (when known), ``status`` and the point estimates
  ``<target>_mode`` (MAP), ``<target>_mean``, ``<target>_median`` (for ``z`` also
  ``zmode``, ``zmean``, ``zmedian``, the names RAIL reads).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table

from ..core.schema import (
    FIELDS,
    TABLE_FIELDS,
    TARGET_FIELDS,
    cast,
    table_columns,
    table_from_chunks,
)
from .flat import as_ids, ids_for_rows, read_ids
from .results import pending_note, read_index

logger = logging.getLogger("jaxgrid")

__all__ = ["results_to_table", "write_results", "read_results", "to_qp"]


def _from_chunks(chunks: list[dict[str, Any]], names: list[str]) -> dict[str, np.ndarray]:
    out = {"m": np.concatenate([c["m"] for c in chunks]).astype(np.int64)}
    if all("id" in c for c in chunks):
        out["id"] = as_ids(np.concatenate([np.asarray(c["id"]) for c in chunks]))
    return out | table_from_chunks(chunks, names)


def _from_objects(objs: list[dict[str, Any]], names: list[str]) -> dict[str, np.ndarray]:
    out = {"m": np.array([o["m"] for o in objs], np.int64)}
    if all("id" in o for o in objs):
        out["id"] = as_ids(np.array([o["id"] for o in objs]))
    for f in TABLE_FIELDS:  # truncation fields sit in each object's "truncation" dict
        where = "truncation" if FIELDS[f].group == "truncation" else None
        out[f] = cast(f, [o[where][f] if where else o[f] for o in objs])
    for name in names:
        for f in TARGET_FIELDS:
            out[f"{name}_{f.name}"] = cast(f.name, [o["stats"][name][f.name] for o in objs])
    return out


def _result_group(f, path, group: str, who: str):
    """``f[group]``, with a word about an unfinished run's journal (newer results)."""
    note = pending_note(path, group)
    if group not in f:
        raise KeyError(f"{who}: {path} has no group {group!r}" + (f"; {note}." if note else "."))
    if note:
        logger.warning("jaxgrid: %s: %s.", path, note)
    return f[group]


def _from_hdf5(path, group: str) -> tuple[dict[str, np.ndarray], list[str]]:
    import h5py

    with h5py.File(path, "r") as f:
        g = _result_group(f, path, group, "results_to_table")
        written, status = read_index(g)
        written = written != 0
        names = [k.decode() for k in g["stats/cov/keys"][...]] if "stats/cov/keys" in g else []
        out = {"m": g["index/m"][...][written]}
        ids = read_ids(g)
        if ids is not None:
            out["id"] = ids[written]
        for f_ in TABLE_FIELDS:
            values = status if f_ == "status" else g[FIELDS[f_].dataset()][...]
            out[f_] = cast(f_, values[written])
        for name in names:
            for f_ in TARGET_FIELDS:
                key = f_.dataset(name)
                if key not in g:  # a file from before the field existed (mass_in_bins)
                    out[f"{name}_{f_.name}"] = np.full(int(written.sum()), f_.fill, f_.dtype)
                    continue
                out[f"{name}_{f_.name}"] = cast(f_.name, g[key][...][written])
    return out, names


def results_to_table(
    results: Any,
    stats_for: list[str] | None = None,
    *,
    ids: Any = None,
    units: Mapping[str, str] | None = None,
    group: str = "/fit_batch",
) -> Table:
    """One row per object: ``m`` (and ``id``), ``status``, ``log_evidence``,
    ``chi2_min``, ``best``, ``n_after``, ``mass_kept`` and, per summarised
    target, ``<target>_{mean,std,map,median,lo68,hi68,nmodes,mass_in_bins}``.

    ``results``: a list of per-object dicts (``return_mode="iter"/"list"``),
    an iterable of per-chunk dicts (``"chunks"``), or the path of an HDF5
    result file (``group``; rows not yet written are left out). The ``id``
    column (int64 or ``str``) comes from the results when the run had
    ``fit_batch(ids=...)`` (the file's ``index/id``, the dicts' ``id``); ``ids``
    (M,) overrides it, mapping ``m`` to catalog ids. ``units`` maps target names
    to unit strings.
    """
    if isinstance(results, (str, Path)):
        cols, names = _from_hdf5(results, group)
    else:
        items = list(results)
        names = list(stats_for or [])
        if items and "stats_for" in items[0]:
            names = list(items[0]["stats_for"])
        elif items and "stats" in items[0] and not names:
            names = [k for k in items[0]["stats"] if k != "cov"]
        if not items:  # every column, no rows
            cols = {"m": np.zeros(0, np.int64)}
            cols |= {c: np.zeros(0, f.dtype) for c, f in table_columns(names)}
        elif "truncation" in items[0]:
            cols = _from_objects(items, names)
        else:
            cols = _from_chunks(items, names)
    t = Table()
    t["m"] = cols.pop("m")
    stored = cols.pop("id", None)
    if ids is not None:
        t["id"] = ids_for_rows(ids, np.asarray(t["m"]))
    elif stored is not None:
        t["id"] = stored
    for k, v in cols.items():
        t[k] = v
    for name in names:
        unit = (units or {}).get(name)
        if unit:
            for f in TARGET_FIELDS:
                if f.target_unit:  # not the counts and fractions
                    t[f"{name}_{f.name}"].unit = unit
    t.meta["STATSFOR"] = ",".join(names)  # a FITS-safe header keyword
    return t


_FITS = (".fits", ".fit", ".fts")
_HDF5 = (".h5", ".hdf5")
_PARQUET = (".parquet", ".pq")


def write_results(
    table: Table, path: str | Path, overwrite: bool = False, hdf5_path: str = "results"
) -> None:
    """Write a results table to ``.fits`` (binary table, with CHECKSUM/DATASUM
    cards; text columns must be ASCII, else ``ValueError``), ``.h5``/``.hdf5``
    (dataset ``hdf5_path``, units and meta kept) or ``.parquet``/``.pq`` (Apache
    Parquet via pyarrow, units and meta kept; pandas ``read_parquet`` reads it too).
    `read_results` reads each back (verifying the
    FITS checksums; string columns such as ``id`` come back as ``str``)."""
    name = str(path).lower()
    if name.endswith(_FITS):
        from astropy.io import fits

        for c in table.colnames:  # FITS text is ASCII (FITS standard 4.0, section 7.3)
            v = np.asarray(table[c])
            if v.dtype.kind == "U" and v.size and not all(str(x).isascii() for x in v.ravel()):
                raise ValueError(
                    f"write_results: column {c!r} has non-ASCII text, which FITS cannot "
                    "store; write .parquet or .h5 instead (both keep UTF-8)."
                )
        hdu = fits.table_to_hdu(table)
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path, overwrite=overwrite, checksum=True)
    elif name.endswith(_HDF5):
        table.write(path, format="hdf5", path=hdf5_path, overwrite=overwrite, serialize_meta=True)
    elif name.endswith(_PARQUET):
        if Path(path).exists() and not overwrite:
            raise FileExistsError(f"write_results: {path} exists; pass overwrite=True.")
        table.write(path, format="parquet", overwrite=overwrite)
    else:
        raise ValueError(
            f"write_results: use a .parquet/.pq, .fits or .h5/.hdf5 path, got {path!s}."
        )


def read_results(path: str | Path, hdf5_path: str = "results") -> Table:
    """Read a table written by `write_results`; a FITS file whose CHECKSUM/DATASUM
    cards do not match raises ``ValueError``."""
    name = str(path).lower()
    if name.endswith(_FITS):
        from astropy.io import fits

        from ..grid_format import verify_fits_checksum

        with fits.open(path) as hdul:
            verify_fits_checksum(hdul[1], path, "read_results")
            table = Table.read(hdul[1], format="fits", character_as_bytes=False)
        return table.copy(copy_data=True)
    if name.endswith(_HDF5):
        return Table.read(path, path=hdf5_path, character_as_bytes=False)
    if name.endswith(_PARQUET):
        return Table.read(path, format="parquet")
    raise ValueError(f"read_results: use a .parquet/.pq, .fits or .h5/.hdf5 path, got {path!s}.")


def _point_names(target: str) -> dict[str, str]:
    """ancil name -> stored summary of a target's point estimates."""
    out = {f"{target}_mode": "map", f"{target}_mean": "mean", f"{target}_median": "median"}
    if target == "z":  # the names RAIL's estimators and metrics read
        out |= {"zmode": "map", "zmean": "mean", "zmedian": "median"}
    return out


def _qp_from_memory(items: list[dict[str, Any]], target: str, stats_for, bins):
    """(edges, pdfs, m, ids or None, status, point) of in-memory results."""
    if items and "truncation" in items[0]:  # per-object dicts
        names = list(stats_for or [k for k in items[0].get("stats", {}) if k != "cov"])
        if target not in names:
            raise KeyError(f"to_qp: {target!r} is not among the summarised targets {names}.")
        if "posts_target" not in items[0]:
            raise KeyError("to_qp: the results carry no PDFs; fit with return_pdf_for_stats=True.")
        if bins is None:
            raise ValueError("to_qp: give `bins` (the target's edges) with per-object results.")
        pdfs = np.stack([np.asarray(o["posts_target"][target], np.float64) for o in items])
        m = np.array([o["m"] for o in items], np.int64)
        ids = np.array([o["id"] for o in items]) if all("id" in o for o in items) else None
        status = np.array([o["status"] for o in items], np.int32)
        point = {
            k: np.array([o["stats"][target][k] for o in items], np.float64)
            for k in ("map", "mean", "median")
        }
        return np.asarray(bins, np.float64), pdfs, m, ids, status, point
    names = list(stats_for or (items[0]["stats_for"] if items else []))
    if target not in names:
        raise KeyError(f"to_qp: {target!r} is not among the summarised targets {names}.")
    j = names.index(target)
    if bins is None:
        if not items or "stats_bins" not in items[0]:
            raise ValueError("to_qp: give `bins` (the target's edges) with chunk results.")
        bins = items[0]["stats_bins"][j]
    if any("pdf" not in c or c["pdf"] is None or len(c["pdf"]) <= j for c in items):
        raise KeyError("to_qp: the chunks carry no PDFs; fit with return_pdf_for_stats=True.")
    pdfs = np.concatenate([np.asarray(c["pdf"][j], np.float64) for c in items])
    m = np.concatenate([c["m"] for c in items])
    ids = None
    if items and all("id" in c for c in items):
        ids = np.concatenate([np.asarray(c["id"]) for c in items])
    status = np.concatenate([c["status"] for c in items])
    point = {k: np.concatenate([c[k][:, j] for c in items]) for k in ("map", "mean", "median")}
    return np.asarray(bins, np.float64), pdfs, m, ids, status, point


def to_qp(
    source: Any,
    target: str,
    *,
    group: str = "/fit_batch",
    stats_for: list[str] | None = None,
    bins: Iterable[float] | None = None,
    ids: Any = None,
):
    """A ``qp.Ensemble`` (histogram representation) of one target's PDFs.

    ``source``: an HDF5 result file written with ``return_pdf_for_stats=True``
    (``group``); or in-memory results of such a run: the per-chunk dicts of
    ``return_mode="chunks"`` (they carry ``stats_for`` and ``stats_bins``; older
    or hand-made chunks need ``stats_for``/``bins``), or the per-object dicts of
    ``"list"``/``"iter"`` (give ``bins``, the target's edges). Rows without a valid
    PDF (flagged rows) are left out. ``ancil`` holds ``m`` and ``status`` to match
    them back, ``id`` (int64 or ``str``) when the run had ``ids=`` (``ids``, one per
    catalog row, overrides it), and ``<target>_mode`` (MAP), ``<target>_mean``,
    ``<target>_median`` — for the target ``z`` also ``zmode``, ``zmean``,
    ``zmedian``. ``qp.read`` reads back what ``ensemble.write_to(path)`` writes.

    Example::

        chunks = list(fitter.fit_batch(X, S, return_mode="chunks", stats_for=["z"],
                                       return_pdf_for_stats=True, ids=ids))
        to_qp(chunks, "z").write_to("z_qp.hdf5")
    """
    try:
        import qp
    except ImportError as err:  # pragma: no cover - depends on the optional extra
        raise ImportError("to_qp needs the optional extra: pip install 'jaxgrid[qp]'.") from err
    if isinstance(source, (str, Path)):
        import h5py

        with h5py.File(source, "r") as f:
            g = _result_group(f, source, group, "to_qp")
            base = f"stats/{target}"
            if f"{base}/posts_target" not in g:
                raise KeyError(
                    f"to_qp: {source}:{group} has no PDFs for {target!r}; fit with "
                    "return_pdf_for_stats=True."
                )
            edges = g[f"{base}/bins"][...]
            pdfs = g[f"{base}/posts_target"][...]
            m, status = g["index/m"][...], read_index(g)[1]
            stored = read_ids(g)
            point = {k: g[f"{base}/{k}"][...] for k in ("map", "mean", "median")}
    else:
        edges, pdfs, m, stored, status, point = _qp_from_memory(
            list(source), target, stats_for, bins
        )
    if pdfs.shape[1] != edges.size - 1:
        raise ValueError(
            f"to_qp: {pdfs.shape[1]} PDF bins for {target!r} but {edges.size} edges given."
        )
    m = np.asarray(m, np.int64)
    if ids is not None:
        stored = ids_for_rows(ids, m)
    elif stored is not None:
        stored = as_ids(stored)
    good = np.all(np.isfinite(pdfs), axis=1)
    ens = qp.Ensemble(qp.hist, data={"bins": edges, "pdfs": pdfs[good]})
    ancil = {"m": m[good]}
    if stored is not None:
        ancil["id"] = stored[good]
    ancil["status"] = np.asarray(status)[good]
    for key, field in _point_names(target).items():
        ancil[key] = np.asarray(point[field])[good]
    ens.set_ancil(ancil)
    return ens
