"""LSST DESC RAIL stages (extra ``rail``): `JaxgridInformer` and `JaxgridEstimator`.

RAIL finds them as ``rail.estimation.algos.jaxgrid`` (the namespace shim at the
repository root, shipped in the wheel); this module is the implementation and the
only place in jaxgrid that imports RAIL.

* `JaxgridInformer` trains the BPZ prior ``p(z, T | m0)`` for the photo-z log score of
  a training catalog with true redshifts (`jaxgrid.prob.BPZPrior.fit_photoz`), or,
  with ``train_prior=False``, keeps the HDF-N parameters. The model is a pickled dict
  (`MODEL_KIND`): the prior parameters, the grid recipe they belong to and what the
  training used.
* `JaxgridEstimator` fits every object against a template x redshift grid with the
  recommended settings of `jaxgrid.demo.run_photoz_demo` (the bundled CWW+SB
  templates with 5 interpolated between each pair, RAIL's z grid, Madau IGM,
  profile amplitude, zero-flux non-detections, 0.1 mag floor, BPZ prior on
  ``ref_band``); every choice is a stage option. The grid and the fitter are built
  once per stage (first chunk) and every chunk runs through the same compiled step
  (one fixed jaxgrid chunk size, the tail padded). Output: one qp ensemble per chunk
  (``qp.hist`` on bins centred on the z grid, or ``qp.interp`` at the grid
  redshifts), ancil ``zmode``, ``zmean``, ``zmedian``, ``status``, ``id``.

Magnitudes (RAIL's inputs) become nJy fluxes (`jaxgrid.photometry.magnitudes_to_fluxes`,
zero point 31.4): a value equal to ``nondetect_val`` (NaN included, when it is NaN)
is a non-detection, flux ``0 +- sigma_lim`` with ``sigma_lim`` the flux of the band's
1-sigma limiting magnitude (``mag_limits``, or the error column with
``limit_source="err_bands"``, the BPZ file convention); ``nonobserved_val``, other
non-finite values and non-positive errors drop the band for that object.

MPI: ceci gives each rank its own chunks and its own stage instance; the stage keeps
its grid and fitter on the instance (no state shared between ranks or stages), and the
compiled step lives in the rank's process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import qp
from ceci.config import StageParameter as Param
from rail.core.common_params import SharedParams
from rail.estimation.estimator import CatEstimator
from rail.estimation.informer import CatInformer

from ._version import __version__
from .photoz import read_sed_list, training_selection
from .prob.bpz import CWWSB4_BROAD_TYPES, HDFN

__all__ = ["JaxgridInformer", "JaxgridEstimator", "MODEL_KIND", "magnitudes_to_rail_fluxes"]

MODEL_KIND = "jaxgrid.rail.bpz_prior"  #: the ``kind`` entry of an informer's model dict
MODEL_VERSION = 1
ZERO_POINT = 31.4  #: AB zero point of the internal fluxes (nJy)
_PRIOR_PARAMS = ("alpha", "z0", "km", "f", "k")


def _grid_options() -> dict[str, Param]:
    """The options both stages share (fresh copies: ceci parameters are mutable)."""
    return dict(
        bands=SharedParams.copy_param("bands"),
        err_bands=SharedParams.copy_param("err_bands"),
        ref_band=SharedParams.copy_param("ref_band"),
        nondetect_val=SharedParams.copy_param("nondetect_val"),
        nonobserved_val=SharedParams.copy_param("nonobserved_val"),
        mag_limits=SharedParams.copy_param("mag_limits"),
        zmin=SharedParams.copy_param("zmin"),
        zmax=SharedParams.copy_param("zmax"),
        nzbins=SharedParams.copy_param("nzbins"),
        filter_list=SharedParams.copy_param("filter_list"),
        limit_source=Param(
            str,
            "mag_limits",
            msg="1-sigma limit of a non-detection: 'mag_limits' (RAIL) or 'err_bands' "
            "(the error column holds the limiting magnitude, BPZ files)",
        ),
        sed_dir=Param(str, "", msg="folder of the SED files ('' = jaxgrid's bundled ones)"),
        sed_list=Param(str, "CWWSB4.list", msg="file in sed_dir naming the templates, in order"),
        filter_dir=Param(str, "", msg="folder of the <filter_list>.res files ('' = bundled LSST)"),
        broad_types=Param(
            list,
            list(CWWSB4_BROAD_TYPES),
            msg="BPZ broad type of each template: 0 E/S0, 1 spiral, 2 irregular/starburst",
        ),
        igm=Param(str, "madau95", msg="IGM attenuation: 'madau95' or 'none'"),
        likelihood_mode=Param(str, "profile", msg="free amplitude: 'profile' or 'marginal'"),
        nondetection=Param(str, "zero_flux", msg="non-detections: 'zero_flux' or 'censored'"),
        error_floor_mag=Param(float, 0.1, msg="error floor in magnitudes (in quadrature)"),
    )


def _check_config(cfg) -> None:
    """Refuse inconsistent options with the option's name and the fix."""
    bands, errs, filters = list(cfg.bands), list(cfg.err_bands), list(cfg.filter_list)
    if not bands or len(errs) != len(bands) or len(filters) != len(bands):
        raise ValueError(
            f"jaxgrid RAIL stage: `bands` ({len(bands)}), `err_bands` ({len(errs)}) and "
            f"`filter_list` ({len(filters)}) need one entry per band, in the same order."
        )
    if cfg.ref_band not in bands:
        raise ValueError(
            f"jaxgrid RAIL stage: `ref_band` {cfg.ref_band!r} is not one of `bands` {bands}."
        )
    if cfg.limit_source not in ("mag_limits", "err_bands"):
        raise ValueError(
            f"jaxgrid RAIL stage: `limit_source` must be 'mag_limits' or 'err_bands', "
            f"got {cfg.limit_source!r}."
        )
    if cfg.limit_source == "mag_limits":
        missing = [b for b in bands if b not in cfg.mag_limits]
        if missing:
            raise ValueError(
                f"jaxgrid RAIL stage: `mag_limits` has no limiting magnitude for {missing}; "
                "add them, or set limit_source='err_bands'."
            )
    if cfg.igm not in ("madau95", "none"):
        raise ValueError(f"jaxgrid RAIL stage: `igm` must be 'madau95' or 'none', not {cfg.igm!r}.")
    if not (cfg.nzbins >= 2 and 0.0 <= cfg.zmin < cfg.zmax):
        raise ValueError(
            "jaxgrid RAIL stage: the z grid needs `nzbins` >= 2 and 0 <= `zmin` < `zmax`; got "
            f"zmin={cfg.zmin}, zmax={cfg.zmax}, nzbins={cfg.nzbins}."
        )


def _z_grid(cfg) -> tuple[np.ndarray, np.ndarray]:
    """RAIL's redshift grid ``linspace(zmin, zmax, nzbins)`` and the bin edges centred on it."""
    z = np.linspace(cfg.zmin, cfg.zmax, cfg.nzbins)
    half = 0.5 * (z[1] - z[0])
    return z, np.append(z - half, z[-1] + half)


def _recipe(cfg, n_interp: int) -> dict[str, Any]:
    """What the grid is made of, as plain values (stored in the model)."""
    from .data import data_path

    sed_dir = Path(cfg.sed_dir) if cfg.sed_dir else data_path("photoz", "SED")
    filter_dir = Path(cfg.filter_dir) if cfg.filter_dir else data_path("photoz", "FILTER")
    list_file = sed_dir / cfg.sed_list
    if not list_file.is_file():
        raise FileNotFoundError(
            f"jaxgrid RAIL stage: `sed_list` {cfg.sed_list!r} is not a file in `sed_dir` {sed_dir}."
        )
    seds = [path.name for path in read_sed_list(list_file)]
    if len(cfg.broad_types) != len(seds):
        raise ValueError(
            f"jaxgrid RAIL stage: `broad_types` has {len(cfg.broad_types)} entries for the "
            f"{len(seds)} templates of {list_file}; give one broad type per template."
        )
    return {
        "sed_dir": str(sed_dir),
        "seds": seds,
        "filter_dir": str(filter_dir),
        "filters": list(cfg.filter_list),
        "bands": list(cfg.bands),
        "ref_band": cfg.ref_band,
        "broad_types": [int(b) for b in cfg.broad_types],
        "z": _z_grid(cfg)[0].tolist(),
        "n_interp": int(n_interp),
        "igm": None if cfg.igm == "none" else cfg.igm,
    }


def _build_grid(recipe: dict[str, Any]):
    from .photometry import build_template_grid

    return build_template_grid(
        [Path(recipe["sed_dir"]) / s for s in recipe["seds"]],
        [Path(recipe["filter_dir"]) / f"{f}.res" for f in recipe["filters"]],
        np.asarray(recipe["z"]),
        n_interp=recipe["n_interp"],
        igm=recipe["igm"],
        filter_names=[f"flux_{b}" for b in recipe["bands"]],
        template_names=[Path(s).stem for s in recipe["seds"]],
    )


def _likelihood(cfg):
    from .prob import ScaledGaussianLikelihood

    return ScaledGaussianLikelihood(
        mode=cfg.likelihood_mode,
        nondetection=cfg.nondetection,
        error_floor_mag=cfg.error_floor_mag,
    )


def _bpz_prior(grid, recipe: dict[str, Any], params: dict[str, Any] | None = None):
    from .prob import BPZPrior

    return BPZPrior.for_grid(
        grid,
        f"flux_{recipe['ref_band']}",
        params=params,
        broad_types=recipe["broad_types"],
        flux_zero_point=ZERO_POINT,
    )


def magnitudes_to_rail_fluxes(data, cfg) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(F, SF, upper)`` nJy fluxes of a RAIL table chunk (see the module docs for the
    sentinels); ``cfg`` holds ``bands, err_bands, nondetect_val, nonobserved_val,
    mag_limits, limit_source``. Missing values are NaN; non-detections ``0 +- sigma_lim``."""
    from .photometry import magnitudes_to_fluxes

    cols = []
    for band, err in zip(cfg.bands, cfg.err_bands, strict=True):
        for c in (band, err):
            if c not in data:
                raise KeyError(f"jaxgrid RAIL stage: the input has no column {c!r}.")
        m = np.asarray(data[band], np.float64)
        e = np.asarray(data[err], np.float64)
        nd = float(cfg.nondetect_val)
        nondet = np.isnan(m) if np.isnan(nd) else np.isclose(m, nd)
        unobs = ~nondet & (np.isclose(m, float(cfg.nonobserved_val)) | ~np.isfinite(m))
        good = ~nondet & ~unobs & np.isfinite(e) & (e > 0)
        if cfg.limit_source == "mag_limits":
            lim = np.full(m.shape, float(cfg.mag_limits[band]))
        else:
            lim = e
        limited = nondet & np.isfinite(lim)  # a limit that is not a number: band dropped
        x = np.where(good, m, np.where(limited, lim, np.nan))
        s = np.where(good, e, np.where(limited, 2.5 / np.log(10.0), np.nan))
        cols.append((x, s, limited))
    X, S, U = (np.column_stack(v) for v in zip(*cols, strict=True))
    return magnitudes_to_fluxes(X, S, U, zero_point=ZERO_POINT)


class JaxgridInformer(CatInformer):
    """Train jaxgrid's BPZ prior for the photo-z log score (or keep HDF-N).

    The prior is trained on the grid without interpolated templates
    (``train_n_interp``; the broad types are the same at any interpolation) with
    `jaxgrid.prob.BPZPrior.fit_photoz`. Training objects whose true redshift is
    outside the z grid, or nearest its z = 0 point (where the prior vanishes),
    are left out and counted in the model's ``training`` entry.
    """

    name = "JaxgridInformer"
    entrypoint_function = "inform"
    config_options = CatInformer.config_options.copy()
    config_options.update(
        _grid_options(),
        redshift_col=SharedParams.copy_param("redshift_col"),
        train_prior=Param(
            bool, True, msg="train the BPZ prior (False: the model holds the HDF-N prior)"
        ),
        train_n_interp=Param(int, 0, msg="interpolated templates of the training grid"),
        stiffness=Param(float, 0.2, msg="Gaussian pull towards the HDF-N parameters"),
        maxiter=Param(int, 200, msg="L-BFGS iterations"),
        free=Param(list, list(_PRIOR_PARAMS), msg="parameter groups to fit ('f' with 'k')"),
    )

    def run(self) -> None:
        cfg = self.config
        _check_config(cfg)
        data = self.get_data("input")
        if cfg.hdf5_groupname:
            data = data[cfg.hdf5_groupname]
        recipe = _recipe(cfg, cfg.train_n_interp)
        params = {k: np.asarray(v, np.float64) for k, v in HDFN.items()}
        training: dict[str, Any] = {"trained": bool(cfg.train_prior)}
        if cfg.train_prior:
            params, training = self._train(data, recipe)
        recipe.pop("n_interp")  # the estimator's grid chooses its own
        self.model = {
            "kind": MODEL_KIND,
            "version": MODEL_VERSION,
            "jaxgrid_version": __version__,
            "params": {k: np.asarray(params[k], np.float64).tolist() for k in _PRIOR_PARAMS},
            "recipe": recipe,
            "training": training,
        }
        self.add_data("model", self.model)

    def _train(self, data, recipe):
        from .fitter import GridFitter

        cfg = self.config
        if cfg.redshift_col not in data:
            raise KeyError(
                f"JaxgridInformer: the training data has no redshift column "
                f"{cfg.redshift_col!r} (option `redshift_col`)."
            )
        grid = _build_grid(recipe)
        F, SF, U = magnitudes_to_rail_fluxes(data, cfg)
        z = np.asarray(data[cfg.redshift_col], np.float64)
        # off the z grid, NaN, or nearest grid redshift 0 (the prior is -inf there, so the
        # log score would be -inf): left out and counted
        ok, excluded = training_selection(z, recipe["z"])
        hdfn = _bpz_prior(grid, recipe)
        fitter = GridFitter(grid, _likelihood(cfg), hdfn, use_standardised=False)
        fit = hdfn.fit_photoz(
            fitter,
            F[ok],
            SF[ok],
            z[ok],
            U[ok],
            maxiter=int(cfg.maxiter),
            free=tuple(cfg.free),
            stiffness=float(cfg.stiffness),
        )
        training = {
            "trained": True,
            "n_objects": int(z.size),
            "n_used": int(ok.sum()),
            "n_outside_grid": excluded["outside"] + excluded["not_finite"],
            "n_not_finite": excluded["not_finite"],
            "n_at_z0": excluded["nearest_z0"],
            "n_interp": int(recipe["n_interp"]),
            "stiffness": float(cfg.stiffness),
            "maxiter": int(cfg.maxiter),
            "free": list(cfg.free),
        }
        return {k: getattr(fit, k) for k in _PRIOR_PARAMS}, training


class JaxgridEstimator(CatEstimator):
    """Photo-z PDFs from jaxgrid's template fit (see the module docs and docs/rail.md)."""

    name = "JaxgridEstimator"
    entrypoint_function = "estimate"
    config_options = CatEstimator.config_options.copy()
    config_options.update(
        _grid_options(),
        n_interp=Param(int, 5, msg="templates interpolated between each consecutive pair"),
        prior=Param(
            str, "model", msg="'model' (the informer's prior), 'hdfn' or 'flat' (no prior)"
        ),
        pdf_type=Param(
            str, "hist", msg="'hist' (bins centred on the z grid) or 'interp' (grid points)"
        ),
        fit_chunk_size=Param(
            int, 0, msg="rows per jaxgrid step (0: jaxgrid's default for a RAIL chunk)"
        ),
    )

    def __init__(self, args: Any, **kwargs: Any) -> None:
        super().__init__(args, **kwargs)
        self._setup: dict[str, Any] | None = None  # grid, fitter, bins: built on chunk 1

    def _build(self) -> dict[str, Any]:
        """The grid, fitter and fixed step size of this stage (once, on the first chunk)."""
        from .batch.options import BatchOptions
        from .batch.plan import _sizes
        from .fitter import GridFitter
        from .prob import FlatPrior

        cfg = self.config
        _check_config(cfg)
        if cfg.prior not in ("model", "hdfn", "flat"):
            raise ValueError(
                f"JaxgridEstimator: `prior` must be 'model', 'hdfn' or 'flat', got {cfg.prior!r}."
            )
        if cfg.pdf_type not in ("hist", "interp"):
            raise ValueError(
                f"JaxgridEstimator: `pdf_type` must be 'hist' or 'interp', got {cfg.pdf_type!r}."
            )
        recipe = _recipe(cfg, cfg.n_interp)
        grid = _build_grid(recipe)
        if cfg.prior == "flat":
            prior = FlatPrior()
        elif cfg.prior == "hdfn":
            prior = _bpz_prior(grid, recipe)
        else:
            prior = _bpz_prior(grid, recipe, self._model_params(recipe))
        fitter = GridFitter(grid, _likelihood(cfg), prior, use_standardised=False)
        z, edges = _z_grid(cfg)
        opts = dict(posterior_keep_mass=1.0, return_candidates=False)
        step = int(cfg.fit_chunk_size)
        if step <= 0:  # jaxgrid's default for a full RAIL chunk, kept for the tail too
            step = _sizes(grid.n_models, None, int(cfg.chunk_size), BatchOptions(**opts)).chunk_size
        return {"fitter": fitter, "z": z, "edges": edges, "opts": opts, "chunk_size": step}

    def _model_params(self, recipe: dict[str, Any]) -> dict[str, Any]:
        model = self.model
        if not (isinstance(model, dict) and model.get("kind") == MODEL_KIND):
            raise ValueError(
                "JaxgridEstimator: prior='model' needs a model written by JaxgridInformer "
                f"(got {type(model).__name__}); pass `model=`, or set prior='hdfn' or 'flat'."
            )
        trained = model["recipe"]
        for key in ("ref_band", "seds", "broad_types"):
            if trained[key] != recipe[key]:
                raise ValueError(
                    f"JaxgridEstimator: the model's prior was trained with {key}="
                    f"{trained[key]!r}, this stage has {recipe[key]!r}; use the same setting "
                    "or retrain."
                )
        return model["params"]

    def _process_chunk(self, start: int, end: int, data, first: bool) -> None:
        from .core.status import is_bad

        if self._setup is None:
            self._setup = self._build()
        s = self._setup
        F, SF, U = magnitudes_to_rail_fluxes(data, self.config)
        chunks = list(
            s["fitter"].fit_batch(
                F,
                SF,
                upper_limits=U,
                stats_for=["z"],
                stats_bins=[s["edges"]],
                return_pdf_for_stats=True,
                return_mode="chunks",
                chunk_size=s["chunk_size"],
                verbose=False,
                **s["opts"],
            )
        )
        status = np.concatenate([c["status"] for c in chunks]).astype(np.int32)
        pdf = np.concatenate([c["pdf"][0] for c in chunks]).astype(np.float64)

        def stat(name):
            return np.concatenate([c[name][:, 0] for c in chunks]).astype(np.float64)

        # qp refuses non-finite PDFs: a bad row (its status says why; NaN point
        # estimates) carries the uniform density over the grid, i.e. no information
        bad = is_bad(status) | ~np.all(np.isfinite(pdf), axis=1)
        edges = s["edges"]
        pdf[bad] = 1.0 / (edges[-1] - edges[0])
        if self.config.pdf_type == "hist":
            ens = qp.Ensemble(qp.hist, data=dict(bins=edges, pdfs=pdf))
        else:
            ens = qp.Ensemble(qp.interp, data=dict(xvals=s["z"], yvals=pdf))
        id_col = self.config.id_col
        ids = np.asarray(data[id_col]) if id_col in data else np.arange(start, end)
        ancil = {"zmode": stat("map"), "zmean": stat("mean"), "zmedian": stat("median")}
        ens.set_ancil({**ancil, "status": status, "id": ids})
        self._do_chunk_output(ens, start, end, first, data=data)
