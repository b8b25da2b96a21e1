"""The ``jaxgrid`` command line: ``fit``, ``demo``, ``info``.

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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jaxgrid",
        description="Bayesian inference over a precomputed model grid (JAX).",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    f = sub.add_parser("fit", help="fit a catalog against a grid")
    f.add_argument("--grid", required=True, help="grid file (.h5/.fits/.pkl)")
    f.add_argument("--catalog", required=True, help="catalog (.fits or .h5)")
    f.add_argument("--out", required=True, help="output file (.h5, or .fits with --format fits)")
    f.add_argument("--config", help="TOML file: [columns], [fit] and [binner] tables")
    f.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"fit_batch setting, e.g. posterior_keep_mass=0.95 ({len(SETTABLE)} keys)",
    )
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
    f.add_argument("--id-col", help="catalog id column")
    f.add_argument("--hdf5-group", help="catalog HDF5 group holding the columns")
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
        "--limit-kind",
        choices=["magnitude", "flux"],
        default="magnitude",
        help="what an upper limit means for this catalog's values",
    )
    f.add_argument("--quiet", action="store_true", help="no progress bar")

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


def cmd_fit(args) -> int:
    import numpy as np

    from . import GridFitter, ModelGrid
    from .binning import KDTreeBinner
    from .io import read_catalog, results_to_table, to_qp, write_results
    from .prob import GaussianProductLikelihood

    config = _load_config(args.config)
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
    for path, what in ((args.grid, "grid"), (args.catalog, "catalog")):
        if not Path(path).exists():
            raise UserError(f"no such {what} file {path}")
    out = Path(args.out)
    # fits/qp are exported from an HDF5 run file kept beside them (it makes --resume work)
    h5 = out if args.format == "hdf5" else out.with_name(f"{out.stem}.{args.format}-run.h5")
    _check_output(out, "--out")
    if h5 != out:
        _check_output(h5, f"the run file of --format {args.format}")
        if out.exists() and not (args.overwrite or args.resume):
            raise UserError(f"--out {out} exists; pass --overwrite to replace it")
    grid = _read("grid", args.grid, lambda: ModelGrid.load_auto(args.grid))
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
    cat = _read(
        "catalog",
        args.catalog,
        lambda: read_catalog(
            args.catalog,
            obs,
            errs,
            id_col=args.id_col or columns.get("id"),
            grid=grid,
            hdf5_group=args.hdf5_group or columns.get("hdf5_group"),
        ),
    )
    names, bins = _stats(args.stats or config.get("stats", []), grid)
    binner = None
    if args.binner == "kdtree":
        bcfg = {"target_k": args.k, **config.get("binner", {})}
        binner = KDTreeBinner(dims=bcfg.pop("dims", list(range(grid.n_observables))), **bcfg)
    fitter = GridFitter(grid, GaussianProductLikelihood(limit_kind=args.limit_kind))
    if args.format == "qp":
        settings["return_pdf_for_stats"] = True
        if not names:
            raise UserError("--format qp needs --stats (the PDFs to export)")
    kw = dict(
        binner=binner,
        stats_for=names or None,
        stats_bins=bins or None,
        upper_limits=cat.upper,
        output_hdf5_path=h5,
        output_hdf5_overwrite=args.overwrite,
        resume=args.resume,
        verbose=not args.quiet,
        **settings,
    )
    if args.dry_run:
        if binner is not None:
            binner.fit(grid)
        fitter.fit_batch(cat.X, cat.SIG, dry_run=True, **kw)
        print(
            f"jaxgrid fit (dry run): {cat.X.shape[0]:,} objects x {grid.n_models:,} models, "
            f"observables {grid.observable_names}, stats {names or 'none'}, "
            f"binner {args.binner}, output {out} ({args.format}); inputs are valid."
        )
        return 0
    if binner is not None:
        binner.fit(grid)
    fitter.fit_batch(cat.X, cat.SIG, output_hdf5_write_only=True, **kw)
    group = settings.get("output_hdf5_group", "/fit_batch")
    if args.format == "fits":
        table = results_to_table(
            h5,
            group=group,
            ids=cat.ids,
            units=grid.meta.get("units") if isinstance(grid.meta, dict) else None,
        )
        write_results(table, out, overwrite=True)
    elif args.format == "qp":
        for name in names:
            target_out = out.with_name(f"{out.stem}_{name}.qp.hdf5")
            to_qp(h5, name, group=group).write_to(str(target_out))
            print(f"  {name}: {target_out}")
    table = results_to_table(h5, group=group)
    status = np.asarray(table["status"])
    print(
        f"jaxgrid fit: {len(table):,} objects written to {out} ({args.format}); "
        f"{int(np.sum(status == 0)):,} ok, {int(np.sum(status != 0)):,} flagged"
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
    handler = {"fit": cmd_fit, "demo": cmd_demo, "info": cmd_info}[args.command]
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
