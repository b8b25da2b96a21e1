"""Scale-out on Dask (optional extra ``dask``): fit partitioned catalogs on a cluster.

Survey catalogs arrive partitioned (Parquet files, HATS/LSDB catalogs). Each
Dask task fits one partition with `fit_partition`; `fit_dataframe` maps it
over a Dask DataFrame with a declared output schema.

* **What travels.** The task graph carries a small, picklable `FitSpec`,
  never device arrays: the grid as a *file path* (``ModelGrid.load_auto``) or
  as a `TemplateGrid` *recipe* (SED and filter files, redshift grid,
  ``n_interp``, IGM) that each worker builds with
  `jaxgrid.photometry.build_template_grid`; any likelihood and prior (they are
  ``eqx.Module``s and pickle; a grid-dependent prior may be given as a
  function ``grid -> prior``, called on the worker); the summary settings; and
  the input convention (``inputs="magnitudes"``: AB magnitude columns are
  converted to fluxes with `jaxgrid.photometry.magnitudes_to_fluxes`,
  ``zero_point`` 31.4 = nJy, so a survey catalog of magnitudes fits a flux
  grid).
* **One grid build per worker.** Each worker process builds (or loads) a grid
  the first time it sees it, and the fitter (and KD-tree) the first time it
  sees a spec; both stay — on its device — in process-wide caches, and every
  later partition reuses them and the compiled step.
* **Output.** Per row: ``<id column>`` (if given: numeric ids as int64, any
  other ids — strings — as they are; a missing/NaN or non-integral numeric id
  is refused with a ``ValueError``), ``status``,
  ``log_evidence``, ``chi2_min``, ``best``, ``n_after``, ``mass_kept`` and per
  summarised target ``<t>_{mean,std,map,median,lo68,hi68,nmodes,mass_in_bins}``; with
  ``spec.return_pdf`` also ``<t>_pdf``, a list column of densities on the
  target's bin edges (``spec.bins_json()``, written into Parquet metadata by
  `to_parquet`). Rows keep the partition's index. The values are those of a
  single-process `GridFitter.fit_batch` on the same rows and settings (tested
  row for row on a 2-worker ``LocalCluster``, Gaussian and photo-z fits).
* **Failures.** A bad row gets a status flag and NaN summaries; an empty
  partition returns an empty frame with the schema; a worker that dies
  mid-task is restarted by its nanny and Dask reruns the task (tested).

LSDB/HATS (an ``lsdb.Catalog`` is partitioned by sky position, so it needs
``ra``/``dec`` columns): ``catalog.map_partitions(fit_partition, spec,
columns)`` — without ``meta``: lsdb calls `fit_partition` on its empty
template partition, which returns the schema (with lsdb's spatial index)
without building a fitter — then ``.write_catalog(path)``.
GPU clusters: one worker per GPU (``dask_cuda.LocalCUDACluster``), and set
``XLA_PYTHON_CLIENT_MEM_FRACTION`` (or ``..._PREALLOCATE=false``) so JAX
shares the card with the worker; SLURM via ``dask_jobqueue.SLURMCluster``.
Nothing GPU-specific is needed on the CPU.

Example (photo-z of a magnitude catalog with the bundled templates)::

    spec = FitSpec.make(
        TemplateGrid.bundled(z=np.arange(0.0, 3.001, 0.01), n_interp=5),
        likelihood=ScaledGaussianLikelihood(mode="profile", nondetection="zero_flux"),
        prior=lambda grid: BPZPrior.hdfn(grid, "flux_i", flux_zero_point=31.4),
        inputs="magnitudes", use_standardised=False,
        stats_for=["z"], stats_bins=[np.arange(-0.005, 3.006, 0.01)],
    )
    columns = Columns.make({f"flux_{b}": f"mag_{b}" for b in "ugrizy"},
                           {f"flux_{b}": f"magerr_{b}" for b in "ugrizy"}, id="objectId")
    result = fit_dataframe(dd.read_parquet("catalog/"), spec, columns)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .core.schema import table_columns, table_from_chunks, target_columns
from .io.flat import as_ids

if TYPE_CHECKING:
    from .prob.likelihoods import AbstractLikelihood
    from .prob.priors import AbstractObservableDependentPrior, AbstractPrior

__all__ = [
    "FitSpec",
    "TemplateGrid",
    "Columns",
    "fit_partition",
    "fit_dataframe",
    "output_meta",
    "to_parquet",
]

_CACHE: dict[str, Any] = {}  # spec key -> (fitter, binner, stats bins), per worker process
_GRIDS: dict[str, Any] = {}  # grid key -> ModelGrid, per worker process
_BUILDS = {"grid": 0, "fitter": 0}  # how often this process built each (tests read it)
_LOCK = threading.Lock()
INPUTS = ("native", "magnitudes")
BUNDLED_PHOTOZ_BANDS = "ugrizy"


@dataclasses.dataclass(frozen=True)
class TemplateGrid:
    """A recipe for a template x filter x redshift grid, built on each worker.

    Small and picklable: it holds file *names*, not arrays. `build` calls
    `jaxgrid.photometry.build_template_grid` with these settings, so a worker
    builds the same grid the driver would (each worker once: the grid is cached
    per process).

    Args:
        seds, filters: template spectra and filter curves: file paths every
            worker can read, or (``package_data=True``) names of files bundled with
            jaxgrid (``jaxgrid/data/photoz/SED`` and ``.../FILTER``), resolved
            on the worker.
        z: the redshift grid.
        n_interp, igm, output, filter_names, template_names: as
            `build_template_grid`.

    Example::

        recipe = TemplateGrid.bundled(z=np.arange(0.0, 3.001, 0.05), n_interp=0)
        grid = recipe.build()  # 8 templates x 61 z, observables flux_u..flux_y
    """

    seds: tuple[str, ...]
    filters: tuple[str, ...]
    z: tuple[float, ...]
    n_interp: int = 0
    igm: str | None = None
    output: str = "flux"
    filter_names: tuple[str, ...] | None = None
    template_names: tuple[str, ...] | None = None
    package_data: bool = False

    @classmethod
    def make(
        cls,
        seds: Sequence[str | Path],
        filters: Sequence[str | Path],
        z: Any,
        *,
        n_interp: int = 0,
        igm: str | None = None,
        output: str = "flux",
        filter_names: Sequence[str] | None = None,
        template_names: Sequence[str] | None = None,
        package_data: bool = False,
    ) -> TemplateGrid:
        """A recipe from ordinary lists and arrays (paths become strings, ``z`` a tuple)."""
        if isinstance(seds, str | Path) or isinstance(filters, str | Path):
            raise TypeError("TemplateGrid: `seds` and `filters` are lists of files, not one path.")
        zz = np.asarray(z, np.float64).reshape(-1)
        if zz.size == 0 or not np.all(np.isfinite(zz)) or np.any(zz < 0):
            raise ValueError("TemplateGrid: `z` must be a non-empty 1-D array of redshifts >= 0.")
        return cls(
            tuple(str(s) for s in seds),
            tuple(str(f) for f in filters),
            tuple(float(v) for v in np.round(zz, 10)),
            int(n_interp),
            igm,
            output,
            None if filter_names is None else tuple(filter_names),
            None if template_names is None else tuple(template_names),
            bool(package_data),
        )

    @classmethod
    def bundled(
        cls, z: Any, *, n_interp: int = 0, igm: str | None = "madau95", bands: str = "ugrizy"
    ) -> TemplateGrid:
        """The bundled 8 CWW+SB templates through the bundled LSST filters.

        The grid of `jaxgrid.demo.photoz_setup`: observables ``flux_<band>``,
        targets ``z`` and ``type``.
        """
        from .data import data_path

        names = data_path("photoz", "SED", "CWWSB4.list").read_text().split()
        unknown = set(bands) - set(BUNDLED_PHOTOZ_BANDS)
        if unknown or not bands:
            raise ValueError(
                f"TemplateGrid.bundled: `bands` must be letters of {BUNDLED_PHOTOZ_BANDS!r}, "
                f"got {bands!r}."
            )
        return cls.make(
            names,
            [f"DC2LSST_{b}.res" for b in bands],
            z,
            n_interp=n_interp,
            igm=igm,
            filter_names=[f"flux_{b}" for b in bands],
            template_names=[n.removesuffix(".sed") for n in names],
            package_data=True,
        )

    def files(self) -> tuple[list[Path], list[Path]]:
        """The template and filter files (bundled names resolved in this process)."""
        if not self.package_data:
            return [Path(s) for s in self.seds], [Path(f) for f in self.filters]
        from .data import data_path

        return (
            [data_path("photoz", "SED", s) for s in self.seds],
            [data_path("photoz", "FILTER", f) for f in self.filters],
        )

    def build(self):
        """The `ModelGrid` (`jaxgrid.photometry.build_template_grid` with these settings)."""
        from .photometry import build_template_grid

        seds, filters = self.files()
        return build_template_grid(
            seds,
            filters,
            np.asarray(self.z, np.float64),
            n_interp=self.n_interp,
            igm=self.igm,
            output=self.output,
            filter_names=self.filter_names,
            template_names=self.template_names,
        )


def _pickle(obj: Any) -> bytes:
    """Bytes of ``obj`` as Dask ships it (cloudpickle: lambdas and local functions too)."""
    try:
        import cloudpickle
    except ImportError:  # pragma: no cover - cloudpickle comes with dask
        return pickle.dumps(obj)
    return cloudpickle.dumps(obj)


@dataclasses.dataclass(frozen=True, eq=False)
class FitSpec:
    """What a worker needs to build its fitter: small, picklable, hashable.

    Args:
        grid_path: the grid: a file any worker can read (``ModelGrid.load_auto``),
            or a `TemplateGrid` recipe each worker builds (once per process).
        stats_for: targets to summarise; stats_bins: their edges (lists).
        limit_kind, bandwidth_floor: settings of the default likelihood,
            ``GaussianProductLikelihood(bandwidth_floor, limit_kind)``, used when
            ``likelihood`` is None.
        use_standardised: as `GridFitter` (``False`` for flux-space photo-z).
        binner: ``None`` or `KDTreeBinner` keyword settings (e.g.
            ``{"dims": [1, 2, 3], "target_k": 256}``).
        fit_kwargs: extra `fit_batch` keywords (truncation, chunk size...),
            as a tuple of ``(key, value)`` pairs.
        return_pdf: add a ``<target>_pdf`` list column per target.
        likelihood: any `AbstractLikelihood` (e.g. ``ScaledGaussianLikelihood(...)``);
            None: the Gaussian above.
        prior: any prior module (e.g. ``BPZPrior.hdfn(grid, "flux_i", ...)``), or a
            function ``grid -> prior`` called on the worker with its grid (for
            priors built from the grid, without the grid on the driver);
            None: flat. Functions travel by cloudpickle, as Dask ships them.
        inputs: ``"native"``: the value/error columns are the grid's observables
            as they are; ``"magnitudes"``: they are AB magnitudes and errors,
            converted (after the 99/-99 sentinels of `read_catalog`: a
            non-detection's error is its 1-sigma limiting magnitude) to fluxes
            with `jaxgrid.photometry.magnitudes_to_fluxes` at ``zero_point``.
        zero_point: AB zero point of the fluxes for ``inputs="magnitudes"``
            (31.4: nJy).

    Raises:
        TypeError: a likelihood or prior that is not one (names the argument).
        ValueError: an unknown ``inputs``, or Gaussian settings given together
            with a ``likelihood`` (set them on the likelihood instead).
    """

    grid_path: str | TemplateGrid
    stats_for: tuple[str, ...] = ()
    stats_bins: tuple[tuple[float, ...], ...] = ()
    limit_kind: str = "magnitude"
    bandwidth_floor: float = 0.0
    use_standardised: bool = True
    binner: tuple[tuple[str, Any], ...] | None = None
    fit_kwargs: tuple[tuple[str, Any], ...] = ()
    return_pdf: bool = False
    likelihood: AbstractLikelihood | None = None
    prior: AbstractPrior | AbstractObservableDependentPrior | Callable[[Any], Any] | None = None
    inputs: str = "native"
    zero_point: float = 31.4

    def __post_init__(self):
        from .grid import ModelGrid
        from .prob.likelihoods import AbstractLikelihood
        from .prob.priors import AbstractObservableDependentPrior, AbstractPrior

        if isinstance(self.grid_path, ModelGrid):
            raise TypeError(
                "FitSpec: `grid_path` is a file path or a TemplateGrid recipe, not a ModelGrid "
                "(workers build their own): save it with grid.to_hdf5(path) and pass the path."
            )
        if not isinstance(self.grid_path, str | TemplateGrid):
            raise TypeError(
                "FitSpec: `grid_path` must be a grid file path (str) or a TemplateGrid, got "
                f"{type(self.grid_path).__name__}; FitSpec.make converts Path objects."
            )
        if self.likelihood is not None:
            if not isinstance(self.likelihood, AbstractLikelihood):
                raise TypeError(
                    "FitSpec: `likelihood` must be an AbstractLikelihood (e.g. "
                    f"ScaledGaussianLikelihood()), got {type(self.likelihood).__name__}."
                )
            if self.limit_kind != "magnitude" or self.bandwidth_floor != 0.0:
                raise ValueError(
                    "FitSpec: `limit_kind` and `bandwidth_floor` configure the default Gaussian "
                    "likelihood; with `likelihood` given, set them on that likelihood instead."
                )
        priors = AbstractPrior | AbstractObservableDependentPrior
        if self.prior is not None and not (isinstance(self.prior, priors) or callable(self.prior)):
            raise TypeError(
                "FitSpec: `prior` must be a prior (e.g. BPZPrior.hdfn(grid, ...)) or a function "
                f"grid -> prior, got {type(self.prior).__name__}."
            )
        if self.inputs not in INPUTS:
            raise ValueError(f"FitSpec: `inputs` must be one of {INPUTS}, got {self.inputs!r}.")
        if not np.isfinite(self.zero_point):
            raise ValueError("FitSpec: `zero_point` must be a finite AB zero point (31.4: nJy).")
        # the cache key is fixed here, on the driver, and travels with the spec
        object.__setattr__(self, "_key", self._make_key())

    @classmethod
    def make(cls, grid_path, stats_for=(), stats_bins=(), binner=None, fit_kwargs=None, **kw):
        """Build a spec from ordinary lists/dicts (``grid_path``: a path or a `TemplateGrid`)."""
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
            str(grid_path) if isinstance(grid_path, str | Path) else grid_path,
            tuple(stats_for),
            bins,
            binner=b,
            fit_kwargs=tuple(sorted((fit_kwargs or {}).items())),
            **kw,
        )

    def _make_key(self) -> str:
        plain = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("grid_path", "likelihood", "prior")
        }
        plain["grid"] = _grid_key(self.grid_path)
        digest = hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode())
        for module in (self.likelihood, self.prior):
            digest.update(b"|" + (b"" if module is None else _pickle(module)))
        return digest.hexdigest()

    def key(self) -> str:
        """A digest of every setting (the worker caches' key; also Dask's token)."""
        return self._key

    def __eq__(self, other):
        return isinstance(other, FitSpec) and self.key() == other.key()

    def __hash__(self):
        return hash(self.key())

    def __dask_tokenize__(self):
        return self.key()

    def bins_json(self) -> str:
        """``{target: edges}`` as JSON (stored with the PDFs)."""
        return json.dumps(
            {t: list(e) for t, e in zip(self.stats_for, self.stats_bins, strict=True)}
        )


def _grid_key(grid: str | TemplateGrid) -> str:
    if isinstance(grid, TemplateGrid):
        return "recipe:" + json.dumps(dataclasses.asdict(grid), sort_keys=True)
    return "file:" + grid


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


def _grid_for(source: str | TemplateGrid):
    """The worker-local grid of ``source``, loaded or built once per process (call with _LOCK)."""
    key = _grid_key(source)
    grid = _GRIDS.get(key)
    if grid is None:
        from .grid import ModelGrid

        grid = source.build() if isinstance(source, TemplateGrid) else ModelGrid.load_auto(source)
        _GRIDS[key] = grid
        _BUILDS["grid"] += 1
    return grid


def _fitter_for(spec: FitSpec):
    """The worker-local (fitter, binner, stats bins) for ``spec``, built once per process."""
    key = spec.key()
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            return hit
        from .binning import KDTreeBinner
        from .fitter import GridFitter
        from .prob import GaussianProductLikelihood

        grid = _grid_for(spec.grid_path)
        lik = spec.likelihood
        if lik is None:
            lik = GaussianProductLikelihood(
                bandwidth_floor=spec.bandwidth_floor, limit_kind=spec.limit_kind
            )
        prior = spec.prior
        if prior is not None and not isinstance(prior, _prior_types()):
            prior = prior(grid)  # a function grid -> prior, called here on the worker
        fitter = GridFitter(grid, lik, prior, use_standardised=spec.use_standardised)
        binner = None
        if spec.binner is not None:
            binner = KDTreeBinner(
                **{k: list(v) if isinstance(v, tuple) else v for k, v in spec.binner}
            ).fit(grid)
        hit = (fitter, binner, [np.asarray(e) for e in spec.stats_bins])
        _CACHE[key] = hit
        _BUILDS["fitter"] += 1
        return hit


def _prior_types():
    from .prob.priors import AbstractObservableDependentPrior, AbstractPrior

    return (AbstractPrior, AbstractObservableDependentPrior)


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
    return as_ids(ids.to_numpy(), name=f"id column {col!r}")


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
    With ``spec.inputs == "magnitudes"`` the magnitudes (and the limits of
    non-detections and of ``columns.upper`` flags) then become fluxes with
    `jaxgrid.photometry.magnitudes_to_fluxes` at ``spec.zero_point``.
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
    X, SIG = cat.X, cat.SIG
    if spec.inputs == "magnitudes":
        from .photometry import magnitudes_to_fluxes

        X, SIG, upper = magnitudes_to_fluxes(X, SIG, upper, zero_point=spec.zero_point)
    kw = dict(spec.fit_kwargs)
    chunks = list(
        fitter.fit_batch(
            X,
            SIG,
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
