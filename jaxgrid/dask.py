"""Scale-out on Dask (optional extra ``dask``): fit partitioned catalogs on a cluster.

Survey catalogs arrive partitioned (Parquet files, HATS/LSDB catalogs). Each
Dask task fits one partition with `fit_partition`; `fit_dataframe` maps it
over a Dask DataFrame with a declared output schema.

* **One grid load per worker.** The task graph carries a small, picklable
  `FitSpec` (a grid *path* and settings), never device arrays. Each worker
  process builds the fitter (and the KD-tree) the first time it sees a spec,
  keeps it — on its device — in a process-wide cache, and reuses the
  compiled step for every later partition.
* **Output.** Per row: ``<id column>`` (if given: numeric ids as int64, any
  other ids — strings — as they are; a missing/NaN or non-integral numeric id
  is refused with a ``ValueError``), ``status``,
  ``log_evidence``, ``chi2_min``, ``best``, ``n_after``, ``mass_kept`` and per
  summarised target ``<t>_{mean,std,map,median,lo68,hi68,nmodes,mass_in_bins}``; with
  ``spec.return_pdf`` also ``<t>_pdf``, a list column of densities on the
  target's bin edges (``spec.bins_json()``, written into Parquet metadata by
  `to_parquet`). Rows keep the partition's index.
* **Failures.** A bad row gets a status flag and NaN summaries; an empty
  partition returns an empty frame with the schema; a worker that dies
  mid-task is restarted by its nanny and Dask reruns the task (tested).

LSDB/HATS: ``catalog.map_partitions(fit_partition, spec, columns,
meta=output_meta(spec, columns, id_dtype=...))`` works on an ``lsdb.Catalog`` the
same way (``id_dtype``: the catalog's id dtype, needed for string ids).
GPU clusters: one worker per GPU (``dask_cuda.LocalCUDACluster``), and set
``XLA_PYTHON_CLIENT_MEM_FRACTION`` (or ``..._PREALLOCATE=false``) so JAX
shares the card with the worker; SLURM via ``dask_jobqueue.SLURMCluster``.
Nothing GPU-specific is needed on the CPU.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .core.schema import table_columns, table_from_chunks, target_columns

__all__ = ["FitSpec", "Columns", "fit_partition", "fit_dataframe", "output_meta", "to_parquet"]

_CACHE: dict[str, Any] = {}
_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True)
class FitSpec:
    """What a worker needs to build its fitter: small, picklable, hashable.

    Args:
        grid_path: a grid file any worker can read (``ModelGrid.load_auto``).
        stats_for: targets to summarise; stats_bins: their edges (lists).
        likelihood: ``"gaussian"`` with ``limit_kind`` and ``bandwidth_floor``.
        use_standardised: as `GridFitter`.
        binner: ``None`` or `KDTreeBinner` keyword settings (e.g.
            ``{"dims": [1, 2, 3], "target_k": 256}``).
        fit_kwargs: extra `fit_batch` keywords (truncation, chunk size...),
            as a tuple of ``(key, value)`` pairs.
        return_pdf: add a ``<target>_pdf`` list column per target.
    """

    grid_path: str
    stats_for: tuple[str, ...] = ()
    stats_bins: tuple[tuple[float, ...], ...] = ()
    limit_kind: str = "magnitude"
    bandwidth_floor: float = 0.0
    use_standardised: bool = True
    binner: tuple[tuple[str, Any], ...] | None = None
    fit_kwargs: tuple[tuple[str, Any], ...] = ()
    return_pdf: bool = False

    @classmethod
    def make(cls, grid_path, stats_for=(), stats_bins=(), binner=None, fit_kwargs=None, **kw):
        """Build a spec from ordinary lists/dicts."""
        bins = tuple(tuple(float(v) for v in np.asarray(e, np.float64)) for e in stats_bins)
        if len(bins) != len(tuple(stats_for)):
            raise ValueError("FitSpec: give one edge array per target in stats_for.")
        b = (
            None
            if binner is None
            else tuple(
                sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in binner.items())
            )
        )
        return cls(
            str(grid_path),
            tuple(stats_for),
            bins,
            binner=b,
            fit_kwargs=tuple(sorted((fit_kwargs or {}).items())),
            **kw,
        )

    def key(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, default=str)

    def bins_json(self) -> str:
        """``{target: edges}`` as JSON (stored with the PDFs)."""
        return json.dumps(
            {t: list(e) for t, e in zip(self.stats_for, self.stats_bins, strict=True)}
        )


@dataclasses.dataclass(frozen=True)
class Columns:
    """Catalog columns: ``observables``/``errors`` as ``{grid observable: column}``
    (tuples of pairs), optional ``id`` and ``upper`` flag columns."""

    observables: tuple[tuple[str, str], ...]
    errors: tuple[tuple[str, str], ...]
    id: str | None = None
    upper: tuple[tuple[str, str], ...] = ()

    @classmethod
    def make(
        cls,
        observables: Mapping[str, str] | Sequence[str],
        errors: Mapping[str, str] | Sequence[str],
        id: str | None = None,
        upper: Mapping[str, str] | None = None,
    ) -> Columns:
        obs = dict(observables) if isinstance(observables, Mapping) else {c: c for c in observables}
        err = dict(errors) if isinstance(errors, Mapping) else dict(zip(obs, errors, strict=True))
        return cls(tuple(obs.items()), tuple(err.items()), id, tuple((upper or {}).items()))


def _fitter_for(spec: FitSpec):
    """The worker-local (fitter, binner, stats bins) for ``spec``, built once per process."""
    key = spec.key()
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            return hit
        from .binning import KDTreeBinner
        from .fitter import GridFitter
        from .grid import ModelGrid
        from .prob import GaussianProductLikelihood

        grid = ModelGrid.load_auto(spec.grid_path)
        lik = GaussianProductLikelihood(
            bandwidth_floor=spec.bandwidth_floor, limit_kind=spec.limit_kind
        )
        fitter = GridFitter(grid, lik, use_standardised=spec.use_standardised)
        binner = None
        if spec.binner is not None:
            binner = KDTreeBinner(
                **{k: list(v) if isinstance(v, tuple) else v for k, v in spec.binner}
            ).fit(grid)
        hit = (fitter, binner, [np.asarray(e) for e in spec.stats_bins])
        _CACHE[key] = hit
        return hit


def _pdf_dtype():
    """Arrow ``list<double>``: PDFs stay typed through Dask, pandas and Parquet."""
    import pandas as pd
    import pyarrow as pa

    return pd.ArrowDtype(pa.list_(pa.float64()))


def _id_dtype(dtype: Any) -> Any:
    """The output dtype of an id column: int64 for numeric ids, the input's own otherwise."""
    return np.dtype("int64") if getattr(dtype, "kind", "O") in "iuf" else dtype


def _ids(df, col: str):
    """The partition's ids (see `_id_dtype`); a missing or non-integral numeric id is refused."""
    ids = df[col]
    missing = ids.isna().to_numpy()
    if missing.any():
        raise ValueError(
            f"fit_partition: id column {col!r} has {int(missing.sum())} missing (NaN/None) "
            f"value(s), e.g. at index {list(df.index[missing][:5])}; every object needs an id: "
            "fill or drop those rows, or fit without an id column (Columns.make(id=None))."
        )
    if getattr(ids.dtype, "kind", "O") not in "iuf":
        return ids.array  # strings (or other ids) exactly as given
    if ids.dtype.kind == "f":
        values = ids.to_numpy(np.float64)
        if not np.all(values == np.round(values)):
            raise ValueError(
                f"fit_partition: id column {col!r} holds non-integral numbers (e.g. "
                f"{values[values != np.round(values)][:3].tolist()}); ids must be integers or "
                "strings."
            )
    return ids.to_numpy().astype(np.int64)


def output_meta(spec: FitSpec, columns: Columns, id_dtype: Any = "int64"):
    """The empty pandas DataFrame describing `fit_partition`'s output schema.

    ``id_dtype``: the dtype of the catalog's id column (numeric ids come out as int64,
    strings as they are); `fit_dataframe` passes it from the Dask DataFrame.
    """
    import pandas as pd

    cols: dict[str, Any] = {}
    if columns.id is not None:
        cols[columns.id] = pd.Series(dtype=_id_dtype(pd.api.types.pandas_dtype(id_dtype)))
    cols.update({c: pd.Series(dtype=f.dtype) for c, f in table_columns([])})
    for t in spec.stats_for:
        cols.update({c: pd.Series(dtype=f.dtype) for c, f in target_columns(t)})
        if spec.return_pdf:
            cols[f"{t}_pdf"] = pd.Series(dtype=_pdf_dtype())
    return pd.DataFrame(cols)


def fit_partition(df, spec: FitSpec, columns: Columns):
    """Fit one partition (a pandas DataFrame) and return its result frame.

    Values and errors come from ``columns``; NaN marks a missing band and the
    photo-z sentinels (99 / -99) are applied as in `jaxgrid.io.read_catalog`.
    """
    import pandas as pd

    from .io.catalog import read_catalog

    id_dtype = df.dtypes[columns.id] if columns.id is not None else "int64"
    meta = output_meta(spec, columns, id_dtype)
    ids = _ids(df, columns.id) if columns.id is not None else None  # checked before fitting
    if len(df) == 0:
        return meta.set_index(df.index[:0]) if len(df.index) == 0 else meta
    fitter, binner, bins = _fitter_for(spec)
    source = {c: np.asarray(df[c]) for c in df.columns}
    cat = read_catalog(
        source,
        dict(columns.observables),
        dict(columns.errors),
        id_col=columns.id,
        grid=fitter.grid,
        require_values=False,
    )
    upper = cat.upper
    if columns.upper:
        names = fitter.grid.observable_names
        for name, col in columns.upper:
            j = names.index(name)
            upper[:, j] |= np.asarray(df[col]).astype(bool) & np.isfinite(cat.X[:, j])
    kw = dict(spec.fit_kwargs)
    chunks = list(
        fitter.fit_batch(
            cat.X,
            cat.SIG,
            binner=binner,
            upper_limits=upper,
            stats_for=list(spec.stats_for) or None,
            stats_bins=bins or None,
            return_pdf_for_stats=spec.return_pdf,
            return_mode="chunks",
            verbose=False,
            **kw,
        )
    )
    out: dict[str, Any] = {}
    if ids is not None:
        out[columns.id] = ids

    out |= table_from_chunks(chunks, spec.stats_for)
    for j, t in enumerate(spec.stats_for):
        if spec.return_pdf:
            pdf = np.concatenate([np.asarray(c["pdf"][j]) for c in chunks]).astype(np.float64)
            out[f"{t}_pdf"] = pd.Series(list(pdf), index=df.index, dtype=_pdf_dtype())
    return pd.DataFrame(out, index=df.index)[list(meta.columns)]


def fit_dataframe(ddf, spec: FitSpec, columns: Columns):
    """``ddf.map_partitions(fit_partition, ...)`` with the declared output schema."""
    id_dtype = ddf.dtypes[columns.id] if columns.id is not None else "int64"
    meta = output_meta(spec, columns, id_dtype)
    return ddf.map_partitions(fit_partition, spec, columns, meta=meta)


def to_parquet(result_ddf, path, spec: FitSpec, **kw) -> None:
    """Write results to Parquet, with the PDF bin edges in the file metadata
    (key ``jaxgrid_bins``, JSON ``{target: edges}``). Read the PDF list columns
    back with ``pd.read_parquet(path, dtype_backend="pyarrow")`` (pandas 3's
    default backend cannot rebuild Arrow list dtypes)."""
    result_ddf.to_parquet(path, custom_metadata={"jaxgrid_bins": spec.bins_json()}, **kw)
