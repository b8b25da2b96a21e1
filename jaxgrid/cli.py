"""The ``jaxgrid`` command line: ``fit``, ``demo``, ``info``.

User mistakes (missing file, unknown column, mismatched bands, bad option)
print one line, ``jaxgrid: error: ...``, and exit with code 2; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["main", "build_parser"]

#: fit_batch keywords that ``--set key=value`` and ``[fit]`` in --config may change
SETTABLE = {
    "posterior_keep_mass",
    "posterior_keep_min_candidates",
    "posterior_keep_max_candidates",
    "posterior_keep_ties",
    "find_multimodal",
    "use_kde_for_stats",
    "return_pdf_for_stats",
    "chunk_size",
    "output_hdf5_group",
    "output_hdf5_compression",
    "output_hdf5_flush_every",
    "model_block_size",
    "memory_budget_bytes",
    "fallback_to_full_grid",
    "n_jobs",
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
        help="summarise a target on NBINS bins over [LO, HI] (or just TARGET)",
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


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _load_config(path: str | None) -> dict[str, Any]:
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
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"config {p} is not valid TOML: {err}") from None


def _pairs(items: list[str] | None, what: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        name, sep, col = item.partition("=")
        out[name] = col if sep else name
    return out


def _stats(specs: list[str], grid) -> tuple[list[str], list[Any]]:
    import numpy as np

    names, bins = [], []
    for spec in specs:
        parts = spec.split(":")
        name = parts[0]
        if name not in grid.target_names:
            raise UserError(f"--stats: unknown target {name!r}; grid targets: {grid.target_names}")
        if len(parts) == 1:
            t = np.asarray(grid.get_target(name), np.float64)
            edges = np.linspace(t.min(), t.max(), 101)
        elif len(parts) == 4:
            try:
                lo, hi, n = float(parts[1]), float(parts[2]), int(parts[3])
            except ValueError:
                raise UserError(f"--stats {spec!r}: expected TARGET:LO:HI:NBINS") from None
            if not hi > lo or n < 1:
                raise UserError(f"--stats {spec!r}: need HI > LO and NBINS >= 1")
            edges = np.linspace(lo, hi, n + 1)
        else:
            raise UserError(f"--stats {spec!r}: expected TARGET or TARGET:LO:HI:NBINS")
        names.append(name)
        bins.append(edges)
    return names, bins


def cmd_fit(args) -> int:
    import numpy as np

    from . import GridFitter, ModelGrid
    from .binning import KDTreeBinner
    from .io import read_catalog, results_to_table, to_qp, write_results
    from .prob import GaussianProductLikelihood

    config = _load_config(args.config)
    for path, what in ((args.grid, "grid"), (args.catalog, "catalog")):
        if not Path(path).exists():
            raise UserError(f"no such {what} file {path}")
    grid = ModelGrid.load_auto(args.grid)
    columns = config.get("columns", {})
    obs = (
        _pairs(args.observables, "observables")
        or dict(columns.get("observables", {}))
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
        or dict(columns.get("errors", {}))
        or {n: f"{c}_err" for n, c in obs.items()}
    )
    missing_err = sorted(set(obs) - set(errs))
    if missing_err:
        raise UserError(f"no error column for {missing_err}; give --errors NAME=COLUMN")
    cat = read_catalog(
        args.catalog,
        obs,
        errs,
        id_col=args.id_col or columns.get("id"),
        grid=grid,
        hdf5_group=args.hdf5_group or columns.get("hdf5_group"),
    )
    names, bins = _stats(args.stats or config.get("stats", []), grid)
    settings = dict(config.get("fit", {}))
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--set {item!r}: expected KEY=VALUE")
        settings[key] = _parse_value(value)
    bad = sorted(set(settings) - SETTABLE)
    if bad:
        raise UserError(f"unknown setting(s) {bad}; settable: {sorted(SETTABLE)}")
    if args.chunk_size:
        settings["chunk_size"] = args.chunk_size
    binner = None
    if args.binner == "kdtree":
        bcfg = {"target_k": args.k, **config.get("binner", {})}
        binner = KDTreeBinner(dims=bcfg.pop("dims", list(range(grid.n_observables))), **bcfg)
    out = Path(args.out)
    # fits/qp are exported from an HDF5 run file kept beside them (it makes --resume work)
    h5 = out if args.format == "hdf5" else out.with_name(f"{out.stem}.{args.format}-run.h5")
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
    import h5py
    import numpy as np

    from . import ModelGrid

    path = Path(args.file)
    if not path.exists():
        raise UserError(f"no such file {path}")
    if path.suffix.lower() in (".h5", ".hdf5"):
        with h5py.File(path, "r") as f:
            groups = []
            f.visititems(lambda n, o: groups.append(n) if isinstance(o, h5py.Group) else None)
            results = [g for g in groups if "configuration" in f[g].attrs]
            grids = [g for g in groups if "observable_names" in f[g].attrs]
            for g in results:
                cfg = json.loads(f[g].attrs["configuration"])
                from .io.results import read_index

                st, flags = read_index(f[g])
                print(
                    f"result group /{g}: {st.size:,} rows, {int(np.sum(st != 0)):,} written "
                    f"({int(np.sum(st == 1)):,} ok, {int(np.sum(st == -1)):,} flagged, "
                    f"{int(np.sum(st == 0)):,} not written); grid {cfg['grid']['n_models']:,} "
                    f"models; stats {cfg['stats_for']}"
                )
                from .engine import Status

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
    try:
        return handler(args)
    except (UserError, FileNotFoundError, KeyError, ValueError, TypeError) as err:
        if args.debug:
            raise
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"jaxgrid: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
