"""The ``jaxgrid`` command line: ``fit``, ``build-grid``, ``train-prior``, ``demo``, ``info``.

User mistakes (missing file, unknown column, mismatched bands, bad option)
print one line, ``jaxgrid: error: ...``, and exit with code 2; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import pickle
import sys
from pathlib import Path
from typing import Any

__all__ = ["main", "build_parser"]

#: fit_batch keywords that ``--set key=value`` and ``[fit]`` in --config may change, and
#: their types ("?" = may also be ``none``; in TOML, which has no null, the string "none")
SETTABLE = {
    "posterior_keep_mass": "float",
    "posterior_keep_min_candidates": "int",
    "posterior_keep_max_candidates": "int?",
    "posterior_keep_ties": "bool",
    "find_multimodal": "bool",
    "use_kde_for_stats": "bool",
    "return_pdf_for_stats": "bool",
    "chunk_size": "int",
    "output_hdf5_group": "str",
    "output_hdf5_compression": "str?",
    "output_hdf5_flush_every": "int",
    "model_block_size": "int?",
    "memory_budget_bytes": "int?",
    "fallback_to_full_grid": "bool",
    "n_jobs": "int",
}
#: what ``--config`` may hold: top-level keys, and the keys of its tables
CONFIG_KEYS = {"columns", "fit", "binner", "stats"}
COLUMN_KEYS = {"observables", "errors", "id", "hdf5_group"}
_TRUE, _FALSE = {"true", "1", "yes"}, {"false", "0", "no"}
_TYPE_WORDS = {
    "float": "a number",
    "int": "an integer",
    "bool": "a boolean (true/false/1/0/yes/no)",
    "str": "a string",
}


class UserError(Exception):
    """A mistake in the command line or its inputs (exit code 2, one line)."""


def _settable_epilog() -> str:
    """The ``--set`` keys with their types, for ``jaxgrid fit --help``."""
    width = max(map(len, SETTABLE))
    lines = [f"  {k:<{width}}  {_type_word(v)}" for k, v in SETTABLE.items()]
    return "--set KEY=VALUE keys (also the [fit] table of --config):\n" + "\n".join(lines)


def _add_column_options(f: argparse.ArgumentParser) -> None:
    f.add_argument(
        "--observables",
        nargs="+",
        metavar="NAME[=COLUMN]",
        help="catalog value columns per grid observable (default: the grid's names)",
    )
    f.add_argument(
        "--errors",
        nargs="+",
        metavar="NAME=COLUMN",
        help="error columns (default: <value column>_err)",
    )
    f.add_argument("--hdf5-group", help="catalog HDF5 group holding the columns")


def _add_model_options(f: argparse.ArgumentParser) -> None:
    """Inputs, likelihood and prior: shared by ``fit`` and ``train-prior``."""
    from .photoz import INPUTS, NONDETECTIONS

    g = f.add_argument_group("inputs, likelihood and prior")
    g.add_argument(
        "--inputs",
        choices=list(INPUTS),
        help="what the fit compares with the grid: "
        + "; ".join(f"{k}: {v}" for k, v in INPUTS.items())
        + " (default: magnitudes, or flux-columns with --limit-kind flux)",
    )
    g.add_argument(
        "--zero-point",
        type=float,
        default=31.4,
        help="AB zero point of the fluxes (--inputs fluxes, and the BPZ prior's reference "
        "magnitude from a flux); 31.4 gives nJy (default)",
    )
    g.add_argument(
        "--likelihood",
        choices=["gaussian", "scaled"],
        default="gaussian",
        help="gaussian: fixed amplitude (GaussianProductLikelihood); scaled: free amplitude "
        "(ScaledGaussianLikelihood, flux inputs)",
    )
    g.add_argument(
        "--amplitude-mode",
        choices=["profile", "marginal"],
        help="free amplitude of --likelihood scaled: best fit or marginalised (default profile)",
    )
    g.add_argument(
        "--nondetection",
        choices=list(NONDETECTIONS),
        default="censored",
        help="non-detections: censored (probability below the limit) or zero_flux (flux 0 +- "
        "the limit, BPZ's convention; flux inputs)",
    )
    g.add_argument(
        "--error-floor-mag",
        type=float,
        default=0.0,
        help="error floor in magnitudes, added in quadrature to detected bands",
    )
    g.add_argument(
        "--prior",
        default="flat",
        metavar="flat|bpz-hdfn|FILE",
        help="flat; the BPZ prior with the HDF-N parameters; or a prior file written by "
        "jaxgrid train-prior",
    )
    g.add_argument(
        "--prior-band",
        metavar="NAME",
        help="grid observable of the BPZ prior's reference magnitude (default: flux_i or "
        "mag_i; a prior file: its own)",
    )
    g.add_argument(
        "--broad-types",
        metavar="B,B,...",
        help="BPZ broad type (0 E/S0, 1 spiral, 2 irr/SB) of each template (default: the grid's "
        "meta, else the bundled 8 templates' 0,1,1,2,2,2,2,2)",
    )
    g.add_argument(
        "--limit-kind",
        choices=["magnitude", "flux"],
        help="what an upper limit means for this catalog's values (older spelling of --inputs "
        "magnitudes / flux-columns)",
    )


def build_parser() -> argparse.ArgumentParser:
    from ._version import __version__

    p = argparse.ArgumentParser(
        prog="jaxgrid",
        description="Bayesian inference over a precomputed model grid (JAX).",
    )
    p.add_argument("--version", action="version", version=f"jaxgrid {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    f = sub.add_parser(
        "fit",
        help="fit a catalog against a grid",
        epilog=_settable_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    f.add_argument("--grid", required=True, help="grid file (.h5/.fits/.pkl)")
    f.add_argument("--catalog", required=True, help="catalog (.fits or .h5)")
    f.add_argument("--out", required=True, help="output file (.h5, or .fits with --format fits)")
    f.add_argument("--config", help="TOML file: [columns], [fit] and [binner] tables")
    f.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"fit_batch setting, e.g. posterior_keep_mass=0.95 ({len(SETTABLE)} keys, listed "
        "below with their types)",
    )
    _add_column_options(f)
    f.add_argument("--id-col", help="catalog id column")
    f.add_argument(
        "--stats",
        nargs="+",
        default=[],
        metavar="TARGET:LO:HI:NBINS",
        help="summarise a target on NBINS bins over [LO, HI] (or just TARGET: 199 bins over "
        "the grid range)",
    )
    f.add_argument("--binner", choices=["none", "kdtree"], default="none")
    f.add_argument("--k", type=int, default=256, help="KD-tree neighbours (--binner kdtree)")
    f.add_argument("--chunk-size", type=int)
    f.add_argument("--resume", action="store_true", help="continue an interrupted run")
    f.add_argument("--overwrite", action="store_true", help="replace existing results")
    f.add_argument("--dry-run", action="store_true", help="validate and describe, compute nothing")
    f.add_argument("--format", choices=["hdf5", "fits", "qp"], default="hdf5")
    f.add_argument(
        "--no-candidates",
        action="store_true",
        help="store no per-object candidate lists (always so with --format fits/qp)",
    )
    f.add_argument(
        "--keep-run-file",
        action="store_true",
        help="--format fits/qp: keep the HDF5 run file <stem>.<format>-run.h5 after the export",
    )
    _add_model_options(f)
    f.add_argument("--quiet", action="store_true", help="no progress bar")

    b = sub.add_parser("build-grid", help="template x filter x redshift grid file (photo-z)")
    b.add_argument("--out", required=True, help="grid file (.h5/.hdf5 or .fits)")
    b.add_argument(
        "--bundled",
        action="store_true",
        help="the bundled 8 CWW+SB templates and LSST ugrizy filters (names flux_<b>)",
    )
    b.add_argument(
        "--seds", nargs="+", metavar="FILE", help="template files (F_lambda), or one .list file"
    )
    b.add_argument("--filters", nargs="+", metavar="FILE", help="filter curves")
    b.add_argument("--filter-names", nargs="+", metavar="NAME", help="observable names")
    b.add_argument("--z-min", type=float, default=0.0)
    b.add_argument("--z-max", type=float, default=3.0)
    b.add_argument("--dz", type=float, default=0.01)
    b.add_argument("--z-file", help="redshifts, one per line (instead of --z-min/max/dz)")
    b.add_argument("--n-interp", type=int, default=0, help="templates interpolated per pair")
    b.add_argument("--igm", choices=["madau95", "none"], default="madau95")
    b.add_argument("--output", choices=["flux", "mag"], default="flux", help="observables")
    b.add_argument("--broad-types", metavar="B,B,...", help="BPZ broad type of each template")
    b.add_argument("--overwrite", action="store_true")

    t = sub.add_parser(
        "train-prior",
        help="train the BPZ prior for the photo-z log score on a catalog with true redshifts",
    )
    t.add_argument("--grid", required=True, help="grid file (a template grid: targets z, type)")
    t.add_argument("--catalog", required=True, help="training catalog (.fits or .h5)")
    t.add_argument("--out", required=True, help="prior file (.json)")
    t.add_argument("--z-col", default="redshift", help="true redshift column (default redshift)")
    t.add_argument("--config", help="TOML file: its [columns] table (as for fit)")
    _add_column_options(t)
    t.add_argument(
        "--stiffness",
        type=float,
        default=0.2,
        help="Gaussian pull towards the starting parameters, per object (default 0.2)",
    )
    t.add_argument("--maxiter", type=int, default=200, help="L-BFGS iterations (default 200)")
    t.add_argument(
        "--free",
        default="alpha,z0,km,f,k",
        help="parameter groups to fit (f with k), comma-separated (default all)",
    )
    t.add_argument("--chunk-size", type=int, default=512, help="rows per likelihood chunk")
    t.add_argument("--overwrite", action="store_true")
    _add_model_options(t)
    t.set_defaults(prior="bpz-hdfn")  # the starting point of the training

    d = sub.add_parser("demo", help="photo-z of the bundled DC2 sample; prints metrics")
    d.add_argument("--out", default="jaxgrid-demo", help="folder for the demo files")
    d.add_argument(
        "--synthetic",
        action="store_true",
        help="the synthetic stellar-population demo instead (KD-tree, HDF5)",
    )
    d.add_argument("--n", type=int, default=3000, help="objects in the synthetic demo")

    i = sub.add_parser("info", help="describe a grid or a result file")
    i.add_argument("file")
    return p


def _type_word(kind: str) -> str:
    word = _TYPE_WORDS[kind.rstrip("?")]
    return f"{word} or none" if kind.endswith("?") else word


def _setting_from_text(key: str, text: str) -> Any:
    """``--set KEY=TEXT``: TEXT converted to KEY's type, or a `UserError` naming KEY."""
    kind = SETTABLE[key]
    low = text.strip().lower()
    if kind.endswith("?") and low in ("none", "null"):
        return None
    base = kind.rstrip("?")
    if base == "str":
        return text
    if base == "bool":
        if low in _TRUE or low in _FALSE:
            return low in _TRUE
    else:
        try:
            value = float(text)
        except ValueError:
            value = None
        if value is not None and math.isfinite(value):
            if base == "float":
                return value
            try:
                return int(text)  # exact for any integer literal
            except ValueError:
                if value.is_integer():
                    return int(value)  # 1e6
    raise UserError(f"--set {key}={text}: {key} must be {_type_word(kind)}, got {text!r}.")


def _setting_from_toml(key: str, value: Any, where: str) -> Any:
    """A ``[fit]`` value checked against KEY's type (TOML has no null: "none" means None)."""
    kind = SETTABLE[key]
    base = kind.rstrip("?")
    if kind.endswith("?") and isinstance(value, str) and value.strip().lower() == "none":
        return None
    ok = {
        "str": isinstance(value, str),
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value),
    }[base]
    if base == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    if not ok:
        raise UserError(
            f"{where}: {key} must be {_type_word(kind)}, got {value!r} ({type(value).__name__})."
        )
    return float(value) if base == "float" else value


def _unknown_keys(table: dict[str, Any], known, where: str) -> None:
    bad = sorted(set(table) - set(known))
    if bad:
        raise UserError(f"{where}: unknown key(s) {bad}; known keys: {sorted(known)}.")


def _load_config(path: str | None) -> dict[str, Any]:
    """Read and check ``--config``: unknown keys and wrongly typed values are refused."""
    if not path:
        return {}
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    p = Path(path)
    if not p.exists():
        raise UserError(f"no such config file {p}")
    try:
        config = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"config {p} is not valid TOML: {err}") from None
    _unknown_keys(config, CONFIG_KEYS, f"config {p}")
    for table in ("columns", "fit", "binner"):
        if table in config and not isinstance(config[table], dict):
            raise UserError(f"config {p}: {table!r} must be a table ([{table}]).")
    stats = config.get("stats", [])
    if not isinstance(stats, list) or not all(isinstance(x, str) for x in stats):
        raise UserError(
            f'config {p}: stats must be a list of strings, e.g. stats = ["logM:7:12:50", '
            f'"z"], got {stats!r}.'
        )
    columns = config.get("columns", {})
    _unknown_keys(columns, COLUMN_KEYS, f"config {p} [columns]")
    for key in ("id", "hdf5_group"):
        if key in columns and not isinstance(columns[key], str):
            raise UserError(f"config {p} [columns]: {key} must be a string, got {columns[key]!r}.")
    for key in ("observables", "errors"):
        spec = columns.get(key)
        if spec is None:
            continue
        names = list(spec.values()) + list(spec) if isinstance(spec, dict) else spec
        if not isinstance(spec, (dict, list)) or not all(isinstance(x, str) for x in names):
            raise UserError(
                f'config {p} [columns]: {key} must be a table {{grid name = "column"}} or a '
                f"list of column names, got {spec!r}."
            )
    fit = config.get("fit", {})
    _unknown_keys(fit, SETTABLE, f"config {p} [fit]")
    config["fit"] = {k: _setting_from_toml(k, v, f"config {p} [fit]") for k, v in fit.items()}
    from .binning import KDTreeBinner

    binner_keys = set(inspect.signature(KDTreeBinner.__init__).parameters) - {"self"}
    _unknown_keys(config.get("binner", {}), binner_keys, f"config {p} [binner]")
    return config


def _pairs(items: list[str] | None, what: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        name, sep, col = item.partition("=")
        out[name] = col if sep else name
    return out


def _stats(specs: list[str], grid) -> tuple[list[str], list[Any]]:
    import numpy as np

    from .core.bins import default_edges

    names, bins = [], []
    for spec in specs:
        parts = spec.split(":")
        name = parts[0]
        if name not in grid.target_names:
            raise UserError(f"--stats: unknown target {name!r}; grid targets: {grid.target_names}")
        if len(parts) == 1:
            edges = default_edges(grid.get_target(name))
        elif len(parts) == 4:
            try:
                lo, hi, n = float(parts[1]), float(parts[2]), int(parts[3])
            except ValueError:
                raise UserError(f"--stats {spec!r}: expected TARGET:LO:HI:NBINS") from None
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise UserError(f"--stats {spec!r}: LO and HI must be finite numbers")
            if not hi > lo or n < 1:
                raise UserError(f"--stats {spec!r}: need HI > LO and NBINS >= 1")
            edges = np.linspace(lo, hi, n + 1)
        else:
            raise UserError(f"--stats {spec!r}: expected TARGET or TARGET:LO:HI:NBINS")
        names.append(name)
        bins.append(edges)
    return names, bins


def _config_columns(spec: Any, obs: dict[str, str] | None, key: str) -> dict[str, str]:
    """``[columns] observables/errors``: a table ``{grid name: column}`` or a list of columns
    (observables: names = columns; errors: in the order of the observables)."""
    if not spec:
        return {}
    if isinstance(spec, dict):
        return dict(spec)
    if obs is None:
        return {c: c for c in spec}
    if len(spec) != len(obs):
        raise UserError(
            f"config [columns] {key}: {len(spec)} columns for {len(obs)} observables "
            f'{list(obs)}; give one per observable, or a table {{grid name = "column"}}.'
        )
    return dict(zip(obs, spec, strict=True))


def _read(what: str, path: str, load):
    """Run a reader; an unreadable file (corrupt, truncated, not ours) is a `UserError`."""
    try:
        return load()
    except (OSError, pickle.UnpicklingError, EOFError) as err:
        raise UserError(f"cannot read {what} file {path}: {_os_message(err)}") from err


def _os_message(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return f"{err.strerror}" + (f" ({err.filename})" if err.filename else "")
    return str(err) or type(err).__name__


def _check_output(path: Path, what: str) -> None:
    """Refuse an output path that cannot be written, before any work (and any file) is done."""
    if path.is_dir():
        raise UserError(f"{what} {path} is a directory; give a file name inside it")
    parent = path.parent
    if not parent.is_dir():
        raise UserError(f"{what} {path}: no such directory {parent}; create it first")
    target = path if path.exists() else parent
    if not os.access(target, os.W_OK):
        raise UserError(
            f"{what} {path}: {target} is not writable (permissions or a read-only file "
            "system); choose another location"
        )


def _settings(args, config) -> dict[str, Any]:
    settings = dict(config.get("fit", {}))
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--set {item!r}: expected KEY=VALUE")
        if key not in SETTABLE:
            raise UserError(f"--set: unknown setting {key!r}; settable: {sorted(SETTABLE)}")
        settings[key] = _setting_from_text(key, value)
    if args.chunk_size is not None:  # --chunk-size 0 is refused like --set chunk_size=0
        settings["chunk_size"] = args.chunk_size
    return settings


def _read_columns(args, config, grid):
    """The catalog as `read_catalog` reads it, with the columns of the command line /
    config mapped to the grid's observables."""
    from .io import read_catalog

    columns = config.get("columns", {})
    obs = (
        _pairs(args.observables, "observables")
        or _config_columns(columns.get("observables"), None, "observables")
        or {n: n for n in grid.observable_names}
    )
    unknown = sorted(set(obs) - set(grid.observable_names))
    if unknown or set(obs) != set(grid.observable_names):
        raise UserError(
            f"observables {sorted(obs)} do not match the grid's {grid.observable_names}"
            + (f" (unknown: {unknown})" if unknown else "")
        )
    errs = (
        _pairs(args.errors, "errors")
        or _config_columns(columns.get("errors"), obs, "errors")
        or {n: f"{c}_err" for n, c in obs.items()}
    )
    missing_err = sorted(set(obs) - set(errs))
    if missing_err:
        raise UserError(f"no error column for {missing_err}; give --errors NAME=COLUMN")
    return _read(
        "catalog",
        args.catalog,
        lambda: read_catalog(
            args.catalog,
            obs,
            errs,
            id_col=getattr(args, "id_col", None) or columns.get("id"),
            grid=grid,
            hdf5_group=args.hdf5_group or columns.get("hdf5_group"),
        ),
    )


def _inputs(args) -> str:
    """``--inputs``, with the older ``--limit-kind`` as its default."""
    implied = {"magnitude": "magnitudes", "flux": "flux-columns"}
    if args.inputs is None:
        return implied[args.limit_kind or "magnitude"]
    if args.limit_kind is not None:
        from .photoz import fit_space

        if fit_space(args.inputs) != args.limit_kind:
            raise UserError(
                f"--limit-kind {args.limit_kind} contradicts --inputs {args.inputs}; drop "
                "--limit-kind (--inputs says what the values are)"
            )
    return args.inputs


def _broad_types(args, grid) -> list[int] | None:
    if args.broad_types:
        try:
            return [int(b) for b in args.broad_types.split(",")]
        except ValueError:
            raise UserError(
                f"--broad-types {args.broad_types!r}: expected integers 0/1/2 separated by "
                "commas, one per template"
            ) from None
    meta = grid.meta if isinstance(grid.meta, dict) else {}
    return meta.get("broad_types")


def _model(args, grid, *, training: bool = False):
    """``(likelihood, prior, inputs, use_standardised, warning)`` from the command line,
    checked against the grid (the free-normalisation warning is printed by the caller, once
    every input is checked: a mistake stays one line)."""
    from .photoz import (
        check_inputs,
        default_band,
        fit_space,
        load_prior,
        make_likelihood,
        normalisation_warning,
    )

    inputs = _inputs(args)
    check_inputs(grid, inputs)
    if args.amplitude_mode is not None and args.likelihood != "scaled":
        raise UserError("--amplitude-mode is an option of --likelihood scaled (free amplitude)")
    lik = make_likelihood(
        args.likelihood,
        inputs,
        amplitude_mode=args.amplitude_mode or "profile",
        nondetection=args.nondetection,
        error_floor_mag=args.error_floor_mag,
    )
    zp = args.zero_point if fit_space(inputs) == "flux" else None
    prior = None
    if args.prior == "flat":
        if training:
            raise UserError("train-prior trains a BPZ prior: --prior bpz-hdfn or a prior FILE")
    elif args.prior == "bpz-hdfn":
        from .prob import BPZPrior
        from .prob.bpz import CWWSB4_BROAD_TYPES

        prior = BPZPrior.for_grid(
            grid,
            default_band(grid, args.prior_band),
            broad_types=_broad_types(args, grid) or CWWSB4_BROAD_TYPES,
            flux_zero_point=zp,
        )
    else:
        if not Path(args.prior).exists():
            raise UserError(
                f"--prior {args.prior!r}: neither flat, bpz-hdfn nor an existing prior file"
            )
        if args.broad_types:
            raise UserError("--broad-types: a prior file holds its own broad types")
        band = args.prior_band and default_band(grid, args.prior_band)
        prior, _ = load_prior(args.prior, grid, ref_observable=band, flux_zero_point=zp)
        if prior.ref_observable not in grid.observable_names:
            raise UserError(
                f"--prior {args.prior}: the prior's reference band {prior.ref_observable!r} is "
                f"not an observable of this grid {grid.observable_names}; pass --prior-band "
                "NAME, or train a prior for this grid (jaxgrid train-prior)"
            )
    use_std = args.likelihood == "gaussian" and prior is None  # as before this option
    return lik, prior, inputs, use_std, normalisation_warning(grid, args.likelihood, inputs)


def _warn(warning: str | None) -> None:
    if warning:
        print(f"jaxgrid: warning: {warning}", file=sys.stderr)


def _fit_data(args, cat, inputs):
    from .photoz import fit_arrays

    return fit_arrays(
        cat.X,
        cat.SIG,
        cat.upper,
        inputs=inputs,
        likelihood=args.likelihood,
        nondetection=args.nondetection,
        error_floor_mag=args.error_floor_mag,
        zero_point=args.zero_point,
    )


def cmd_fit(args) -> int:
    import numpy as np

    from . import GridFitter, ModelGrid
    from .binning import KDTreeBinner
    from .io import results_to_table, to_qp, write_results

    config = _load_config(args.config)
    settings = _settings(args, config)
    for path, what in ((args.grid, "grid"), (args.catalog, "catalog")):
        if not Path(path).exists():
            raise UserError(f"no such {what} file {path}")
    out = Path(args.out)
    # fits/qp are exported from an HDF5 run file beside them: it makes --resume work after
    # an interruption, and is deleted after a successful export unless --keep-run-file
    h5 = out if args.format == "hdf5" else out.with_name(f"{out.stem}.{args.format}-run.h5")
    _check_output(out, "--out")
    if h5 != out:
        _check_output(h5, f"the run file of --format {args.format}")
        if out.exists() and not (args.overwrite or args.resume):
            raise UserError(f"--out {out} exists; pass --overwrite to replace it")
    grid = _read("grid", args.grid, lambda: ModelGrid.load_auto(args.grid))
    lik, prior, inputs, use_std, warning = _model(args, grid)
    cat = _read_columns(args, config, grid)
    if (
        args.format == "fits"
        and cat.ids is not None
        and cat.ids.dtype.kind == "U"
        and not all(v.isascii() for v in cat.ids.tolist())
    ):  # FITS text is ASCII: refuse before the fit, not after it
        raise UserError(
            f"--id-col {args.id_col}: non-ASCII ids cannot go into a FITS table; use "
            "--format hdf5 (its <group>/table reads with astropy) or ASCII ids"
        )
    X, SIG, upper = _fit_data(args, cat, inputs)
    names, bins = _stats(args.stats or config.get("stats", []), grid)
    binner = None
    if args.binner == "kdtree":
        bcfg = {"target_k": args.k, **config.get("binner", {})}
        binner = KDTreeBinner(dims=bcfg.pop("dims", list(range(grid.n_observables))), **bcfg)
    fitter = GridFitter(grid, lik, prior, use_standardised=use_std)
    qp_files = {name: out.with_name(f"{out.stem}_{name}.qp.hdf5") for name in names}
    if args.format == "qp":
        settings["return_pdf_for_stats"] = True
        if not names:
            raise UserError("--format qp needs --stats (the PDFs to export)")
        for path in qp_files.values():  # what --format qp writes (not --out itself)
            _check_output(path, "--format qp output")
            if path.exists() and not (args.overwrite or args.resume):
                raise UserError(f"{path} exists; pass --overwrite to replace it")
    kw = dict(
        binner=binner,
        stats_for=names or None,
        stats_bins=bins or None,
        upper_limits=upper,
        ids=cat.ids,
        output_hdf5_path=h5,
        output_hdf5_overwrite=args.overwrite,
        resume=args.resume,
        verbose=not args.quiet,
        # fits/qp export no candidate lists: the run file need not hold them
        return_candidates=not (args.no_candidates or args.format != "hdf5"),
        **settings,
    )
    if args.dry_run:
        if binner is not None:
            binner.fit(grid)
        fitter.fit_batch(X, SIG, dry_run=True, **kw)
        _warn(warning)
        print(
            f"jaxgrid fit (dry run): {X.shape[0]:,} objects x {grid.n_models:,} models, "
            f"observables {grid.observable_names} ({inputs}), likelihood {args.likelihood}, "
            f"prior {args.prior}, stats {names or 'none'}, binner {args.binner}, output {out} "
            f"({args.format}); inputs are valid."
        )
        return 0
    _warn(warning)
    if binner is not None:
        binner.fit(grid)
    fitter.fit_batch(X, SIG, output_hdf5_write_only=True, **kw)
    group = settings.get("output_hdf5_group", "/fit_batch")
    if args.format == "fits":
        table = results_to_table(
            h5,
            group=group,
            units=grid.meta.get("units") if isinstance(grid.meta, dict) else None,
        )
        write_results(table, out, overwrite=True)
    elif args.format == "qp":
        for name, target_out in qp_files.items():
            to_qp(h5, name, group=group).write_to(str(target_out))
            print(f"  {name}: {target_out}")
    table = results_to_table(h5, group=group)
    status = np.asarray(table["status"])
    kept = ""
    if h5 != out:
        if args.keep_run_file:
            kept = f"; run file {h5} kept"
        else:
            h5.unlink()  # exported: the run file was only there for --resume
    where = ", ".join(map(str, qp_files.values())) if args.format == "qp" else out
    print(
        f"jaxgrid fit: {len(table):,} objects written to {where} ({args.format}); "
        f"{int(np.sum(status == 0)):,} ok, {int(np.sum(status != 0)):,} flagged{kept}"
    )
    return 0


def _z_grid(args):
    import numpy as np

    from .photoz import redshift_grid

    if args.z_file:
        path = Path(args.z_file)
        if not path.exists():
            raise UserError(f"no such --z-file {path}")
        try:
            z = np.loadtxt(path, comments="#", ndmin=1).astype(np.float64).reshape(-1)
        except ValueError as err:
            raise UserError(f"--z-file {path}: not a column of numbers ({err})") from None
        return z
    return redshift_grid(args.z_min, args.z_max, args.dz)


def cmd_build_grid(args) -> int:
    from .photoz import BUNDLED_BANDS, build_grid, bundled_filters, bundled_templates, read_sed_list
    from .prob.bpz import CWWSB4_BROAD_TYPES

    out = Path(args.out)
    _check_output(out, "--out")
    suffix = out.name.lower()
    if not suffix.endswith((".h5", ".hdf5", ".fits", ".fit", ".fts")):
        raise UserError(f"--out {out}: use a .h5/.hdf5 or .fits grid file name")
    if out.exists() and not args.overwrite:
        raise UserError(f"--out {out} exists; pass --overwrite to replace it")
    if args.bundled and (args.seds or args.filters):
        raise UserError("--bundled uses the bundled templates and filters: drop --seds/--filters")
    if not args.bundled and not (args.seds and args.filters):
        raise UserError("give --seds and --filters, or --bundled for the bundled ones")
    broad = None
    if args.bundled:
        seds, filters = bundled_templates(), bundled_filters()
        prefix = "flux" if args.output == "flux" else "mag"
        names = args.filter_names or [f"{prefix}_{b}" for b in BUNDLED_BANDS]
        broad = list(CWWSB4_BROAD_TYPES)
    else:
        seds = [Path(s) for s in args.seds]
        if len(seds) == 1 and seds[0].suffix == ".list":
            seds = read_sed_list(seds[0])
        for path in [*seds, *map(Path, args.filters)]:
            if not path.exists():
                raise UserError(f"no such template or filter file {path}")
        filters = [Path(f) for f in args.filters]
        names = args.filter_names
    if args.broad_types:
        broad = _broad_types(args, None)
    z = _z_grid(args)
    grid = build_grid(
        seds,
        filters,
        z,
        n_interp=args.n_interp,
        igm=None if args.igm == "none" else args.igm,
        output=args.output,
        filter_names=names,
        broad_types=broad,
    )
    if suffix.endswith((".h5", ".hdf5")):
        grid.to_hdf5(out, overwrite=args.overwrite)
    else:
        grid.to_fits_table(out, overwrite=args.overwrite)
    print(
        f"jaxgrid build-grid: {grid.n_models:,} models ({len(seds)} templates, "
        f"{args.n_interp} interpolated per pair, {z.size} redshifts {z.min():g}-{z.max():g}, "
        f"IGM {args.igm}) x {grid.n_observables} bands {grid.observable_names} "
        f"({args.output}) written to {out}"
    )
    return 0


def cmd_train_prior(args) -> int:
    import numpy as np

    from . import GridFitter, ModelGrid
    from ._version import __version__
    from .photoz import read_column, save_prior, training_selection

    out = Path(args.out)
    _check_output(out, "--out")
    if out.exists() and not args.overwrite:
        raise UserError(f"--out {out} exists; pass --overwrite to replace it")
    for path, what in ((args.grid, "grid"), (args.catalog, "catalog")):
        if not Path(path).exists():
            raise UserError(f"no such {what} file {path}")
    free = tuple(x.strip() for x in args.free.split(",") if x.strip())
    grid = _read("grid", args.grid, lambda: ModelGrid.load_auto(args.grid))
    lik, start, inputs, _, warning = _model(args, grid, training=True)
    config = _load_config(args.config)
    other = sorted(k for k in config if k != "columns" and config[k])
    if other:
        raise UserError(f"--config {args.config}: train-prior reads only [columns], not {other}")
    cat = _read_columns(args, config, grid)
    X, SIG, upper = _fit_data(args, cat, inputs)
    group = args.hdf5_group or config.get("columns", {}).get("hdf5_group")
    z_true = read_column(args.catalog, args.z_col, group)
    if z_true.size != X.shape[0]:
        raise UserError(f"--z-col {args.z_col}: {z_true.size} values for {X.shape[0]} objects")
    _warn(warning)
    keep, excluded = training_selection(z_true, start.z_grid)
    zg = np.asarray(start.z_grid, np.float64)
    reasons = {
        "nearest_z0": "true z nearest the grid's z = 0, where the BPZ prior is 0",
        "outside": f"true z outside the grid's redshifts [{zg[0]:g}, {zg[-1]:g}]",
        "not_finite": "no finite true z",
    }
    for key, n in excluded.items():
        if n:
            print(f"jaxgrid train-prior: {n:,} objects left out: {reasons[key]}")
    fitter = GridFitter(grid, lik, start, use_standardised=False)
    up = None if upper is None else upper[keep]
    trained = start.fit_photoz(
        fitter,
        X[keep],
        SIG[keep],
        z_true[keep],
        up,
        maxiter=args.maxiter,
        chunk_size=args.chunk_size,
        free=free,
        stiffness=args.stiffness,
    )
    meta = grid.meta if isinstance(grid.meta, dict) else {}
    trained_on = {
        "catalog": str(Path(args.catalog).resolve()),
        "hdf5_group": group,
        "z_col": args.z_col,
        "n_objects": int(X.shape[0]),
        "n_used": int(keep.sum()),
        "excluded": excluded,
        "grid": {
            "file": str(Path(args.grid).resolve()),
            "n_models": grid.n_models,
            "observables": list(grid.observable_names),
            **{
                k: meta[k]
                for k in ("templates", "n_interp", "igm", "z_min", "z_max", "n_z")
                if k in meta
            },
        },  # fmt: skip
        "inputs": inputs,
        "zero_point": args.zero_point,
        "likelihood": args.likelihood,
        "amplitude_mode": args.amplitude_mode or "profile",
        "nondetection": args.nondetection,
        "error_floor_mag": args.error_floor_mag,
        "start": args.prior,
        "stiffness": args.stiffness,
        "maxiter": args.maxiter,
        "free": list(free),
        "jaxgrid": __version__,
    }
    save_prior(trained, out, trained_on)
    print(
        f"jaxgrid train-prior: BPZ prior trained on {int(keep.sum()):,} of {X.shape[0]:,} "
        f"objects (reference band {trained.ref_observable}) written to {out}"
    )
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo, run_photoz_demo

    if args.synthetic:
        run_demo(args.out, n_objects=args.n, verbose=True)
    else:
        run_photoz_demo(args.out, verbose=True)
    return 0


def cmd_info(args) -> int:
    path = Path(args.file)
    if not path.exists():
        raise UserError(f"no such file {path}")
    try:
        return _info(path)
    except (OSError, pickle.UnpicklingError, EOFError) as err:  # corrupt, truncated, not ours
        raise UserError(f"cannot read {path}: {_os_message(err)}") from err


def _info(path: Path) -> int:
    import h5py
    import numpy as np

    from . import ModelGrid

    if path.suffix.lower() in (".h5", ".hdf5"):
        with h5py.File(path, "r") as f:
            groups = []
            f.visititems(lambda n, o: groups.append(n) if isinstance(o, h5py.Group) else None)
            results = [g for g in groups if "configuration" in f[g].attrs]
            grids = [g for g in groups if "observable_names" in f[g].attrs]
            for g in results:
                cfg = json.loads(f[g].attrs["configuration"])
                from .io.results import pending_note, read_index

                st, flags = read_index(f[g])
                n_models = (cfg.get("grid") or {}).get("n_models")
                models = f"; grid {n_models:,} models" if isinstance(n_models, int) else ""
                stats = f"; stats {cfg['stats_for']}" if "stats_for" in cfg else ""
                print(
                    f"result group /{g}: {st.size:,} rows, {int(np.sum(st != 0)):,} written "
                    f"({int(np.sum(st == 1)):,} ok, {int(np.sum(st == -1)):,} flagged, "
                    f"{int(np.sum(st == 0)):,} not written){models}{stats}"
                )
                note = pending_note(path, "/" + g)
                if note:
                    print(f"  {note}")
                from .core.status import Status

                counts = {s.name: int(np.sum((flags & int(s)) != 0)) for s in Status if s}
                print(f"  status flags: {({k: v for k, v in counts.items() if v}) or 'none'}")
        for g in grids:
            _describe_grid(ModelGrid.from_hdf5(path, group="/" + g), f"grid group /{g}")
        if not results and not grids:
            raise UserError(f"{path} holds neither a jaxgrid grid nor fit results")
        return 0
    try:
        grid = ModelGrid.load_auto(path)
    except ValueError as err:
        raise UserError(str(err)) from None
    _describe_grid(grid, f"grid {path}")
    return 0


def _describe_grid(grid, title: str) -> None:
    import numpy as np

    print(
        f"{title}: {grid.n_models:,} models, {grid.n_observables} observables, "
        f"{grid.n_targets} targets, {'weighted' if grid.weights is not None else 'unweighted'}"
    )
    t = np.asarray(grid.targets, np.float64)
    o = np.asarray(grid.observables, np.float64)
    for j, n in enumerate(grid.observable_names):
        print(f"  observable {n}: [{o[:, j].min():.4g}, {o[:, j].max():.4g}]")
    for j, n in enumerate(grid.target_names):
        print(f"  target {n}: [{t[:, j].min():.4g}, {t[:, j].max():.4g}]")
    if grid.meta:
        print(f"  meta: {json.dumps(grid.meta)[:200]}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = {
        "fit": cmd_fit,
        "build-grid": cmd_build_grid,
        "train-prior": cmd_train_prior,
        "demo": cmd_demo,
        "info": cmd_info,
    }[args.command]
    from .io import OutputInUseError

    try:
        return handler(args)
    except (
        UserError,
        OutputInUseError,
        OSError,
        pickle.UnpicklingError,
        EOFError,
        KeyError,
        ValueError,
        TypeError,
    ) as err:
        # one line (and exit 2) for every mistake in the inputs or the environment:
        # unreadable files, a full or read-only disk, bad settings; --debug: the traceback
        if args.debug:
            raise
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        if isinstance(err, OSError) and not isinstance(err, FileNotFoundError):
            msg = _os_message(err)
        text = " ".join(str(msg).split()) or type(err).__name__
        print(f"jaxgrid: error: {text}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
