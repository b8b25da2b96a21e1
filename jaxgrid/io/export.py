"""Exporting batch-fit results: astropy Tables (FITS/HDF5) and qp ensembles.

* `results_to_table` — one row per object from ``fit_batch`` output (per-object
  dicts, per-chunk dicts) or from an HDF5 result group; target summaries
  carry units when given (``units=`` or the grid's ``meta["units"]``).
* `write_results` — a table to FITS or HDF5.
* `to_qp` — a ``qp.Ensemble`` (optional extra ``qp``: package ``qp-prob``) of
  one target's stored PDFs in the histogram representation, with the point
  estimates photo-z tools read from ``ancil``: ``zmode`` (MAP), ``zmean``,
  ``zmedian`` (plus ``m``, the object index, and ``status``).
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
from .results import pending_note, read_index

logger = logging.getLogger("jaxgrid")

__all__ = ["results_to_table", "write_results", "read_results", "to_qp"]


def _from_chunks(chunks: list[dict[str, Any]], names: list[str]) -> dict[str, np.ndarray]:
    out = {"m": np.concatenate([c["m"] for c in chunks]).astype(np.int64)}
    return out | table_from_chunks(chunks, names)


def _from_objects(objs: list[dict[str, Any]], names: list[str]) -> dict[str, np.ndarray]:
    out = {"m": np.array([o["m"] for o in objs], np.int64)}
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
    result file (``group``; rows not yet written are left out). ``ids`` (M,)
    maps ``m`` to catalog ids. ``units`` maps target names to unit strings.
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
    if ids is not None:
        t["id"] = np.asarray(ids)[np.asarray(t["m"])]
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


def write_results(
    table: Table, path: str | Path, overwrite: bool = False, hdf5_path: str = "results"
) -> None:
    """Write a results table to ``.fits`` (binary table, with CHECKSUM/DATASUM
    cards) or ``.h5``/``.hdf5`` (dataset ``hdf5_path``, units and meta kept).
    `read_results` reads either back (verifying the FITS checksums)."""
    name = str(path).lower()
    if name.endswith((".fits", ".fit", ".fts")):
        from astropy.io import fits

        hdu = fits.table_to_hdu(table)
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path, overwrite=overwrite, checksum=True)
    elif name.endswith((".h5", ".hdf5")):
        table.write(path, format="hdf5", path=hdf5_path, overwrite=overwrite, serialize_meta=True)
    else:
        raise ValueError(f"write_results: use a .fits or .h5/.hdf5 path, got {path!s}.")


def read_results(path: str | Path, hdf5_path: str = "results") -> Table:
    """Read a table written by `write_results`; a FITS file whose CHECKSUM/DATASUM
    cards do not match raises ``ValueError``."""
    name = str(path).lower()
    if name.endswith((".fits", ".fit", ".fts")):
        from astropy.io import fits

        from ..grid_format import verify_fits_checksum

        with fits.open(path) as hdul:
            verify_fits_checksum(hdul[1], path, "read_results")
            table = Table.read(hdul[1], format="fits", character_as_bytes=False)
        return table.copy(copy_data=True)
    if name.endswith((".h5", ".hdf5")):
        return Table.read(path, path=hdf5_path)
    raise ValueError(f"read_results: use a .fits or .h5/.hdf5 path, got {path!s}.")


def to_qp(
    source: Any,
    target: str,
    *,
    group: str = "/fit_batch",
    stats_for: list[str] | None = None,
    bins: Iterable[float] | None = None,
):
    """A ``qp.Ensemble`` (histogram representation) of one target's PDFs.

    ``source``: an HDF5 result file written with ``return_pdf_for_stats=True``
    (``group``), or the per-chunk dicts of ``return_mode="chunks"`` (then give
    ``bins``, the target's edges). Rows without a valid PDF (flagged rows) are
    left out; ``ancil`` holds ``m`` and ``status`` to match them back, and
    ``zmode`` (MAP), ``zmean``, ``zmedian``. ``qp.read`` reads back what
    ``ensemble.write_to(path)`` writes.
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
            point = {k: g[f"{base}/{k}"][...] for k in ("map", "mean", "median")}
    else:
        chunks = list(source)
        names = list(stats_for or (chunks[0]["stats_for"] if chunks else []))
        if target not in names:
            raise KeyError(f"to_qp: {target!r} is not among the summarised targets {names}.")
        if bins is None:
            raise ValueError("to_qp: give `bins` (the target's edges) with chunk results.")
        j = names.index(target)
        edges = np.asarray(bins, np.float64)
        pdfs = np.concatenate([c["pdf"][j] for c in chunks])
        m = np.concatenate([c["m"] for c in chunks])
        status = np.concatenate([c["status"] for c in chunks])
        point = {k: np.concatenate([c[k][:, j] for c in chunks]) for k in ("map", "mean", "median")}
    if pdfs.shape[1] != edges.size - 1:
        raise ValueError(
            f"to_qp: {pdfs.shape[1]} PDF bins for {target!r} but {edges.size} edges given."
        )
    good = np.all(np.isfinite(pdfs), axis=1)
    ens = qp.Ensemble(qp.hist, data={"bins": edges, "pdfs": pdfs[good]})
    ens.set_ancil(
        {
            "m": np.asarray(m)[good],
            "status": np.asarray(status)[good],
            "zmode": point["map"][good],
            "zmean": point["mean"][good],
            "zmedian": point["median"][good],
        }
    )
    return ens
