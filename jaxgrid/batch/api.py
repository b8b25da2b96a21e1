"""fit_batch: the public entry point of batch fitting."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..io.flat import as_ids
from ..io.results import GridFitHDF5Writer, check_output
from .options import BatchOptions
from .plan import plan_batch
from .results import _object_dicts, _public_chunks, _table, _Unconsumed
from .run import _Runner, chunks_to_redo

logger = logging.getLogger("jaxgrid")


def fit_batch(fitter, X_native, SIG_native, options: BatchOptions):
    """`GridFitter.fit_batch`'s implementation: plan, then run and shape the results
    as ``options.return_mode`` asks (see the method for every setting)."""
    o = options
    plan = plan_batch(fitter, X_native, SIG_native, o)
    ids = as_ids(o.ids, plan.X.shape[0])  # int64 or str, one per row
    if o.output_hdf5_path is not None:
        check_output(o.output_hdf5_path, o.output_hdf5_group, o.output_hdf5_overwrite, o.resume)
    if o.dry_run:
        logger.info(
            "fit_batch dry run: %d rows, chunk %d, config %s",
            plan.X.shape[0],
            plan.chunk_size,
            plan.config,
        )
        return [] if o.return_mode in ("list", "table") else iter(())
    meta = fitter.grid.meta
    units = meta.get("units") if isinstance(meta, dict) else None
    units = units if isinstance(units, dict) else None
    chunks = _chunks(fitter, plan, o, ids, units)
    if o.output_hdf5_write_only:
        for _ in chunks:
            pass
        return [] if o.return_mode in ("list", "table") else iter(())
    if o.return_mode == "chunks":
        return _public_chunks(chunks, plan)
    if o.return_mode == "table":
        return _table(list(chunks), plan, ids, units)
    objects = (d for res in chunks for d in _object_dicts(res, plan))
    if o.return_mode == "list":
        return list(objects)
    if o.output_hdf5_path is not None:
        return _Unconsumed(objects, o.output_hdf5_path)
    return objects


def _open_writer(plan, o: BatchOptions, m: int, ids, units) -> GridFitHDF5Writer:
    return GridFitHDF5Writer(
        o.output_hdf5_path,
        o.output_hdf5_group,
        m,
        plan.configuration,
        plan.stats_names,
        plan.stats_bins,
        plan.return_pdf,
        overwrite=o.output_hdf5_overwrite,
        resume=o.resume,
        compression=o.output_hdf5_compression,
        compression_opts=o.output_hdf5_compression_opts,
        flush_every=o.output_hdf5_flush_every,
        ids=ids,
        units=units,
    )


def _chunks(fitter, plan, o: BatchOptions, ids, units) -> Iterator[dict[str, Any]]:
    """The run, lazily: chunk result dicts in row order (with ``id`` when ``ids`` are
    given), each committed to the output file's journal (if any) before it is handed
    on; the file is assembled at the end, also after an exception (what was committed
    is kept)."""
    writer = None
    m = plan.X.shape[0]
    todo = np.arange(m)
    progress = o.progress
    show = o.verbose if progress is None else bool(progress)
    callback = progress if callable(progress) else None
    try:
        if o.output_hdf5_path is not None:
            writer = _open_writer(plan, o, m, ids, units)
            if o.resume:
                todo = chunks_to_redo(writer.written(), plan.chunk_size)
                logger.info("fit_batch resume: %d of %d rows left.", todo.size, m)
        bar = _progress_bar(todo.size, show and callback is None)
        done = 0
        t0 = time.perf_counter()
        for res in _Runner(fitter, plan, o.binner, o.n_jobs).run(todo):
            if ids is not None:
                res["id"] = ids[res["m"]]
            if writer is not None:
                writer.write(res["m"], res)  # one journal record per chunk
            done += res["m"].size
            if bar is not None:
                bar.update(res["m"].size)
            if callback is not None:
                callback(done, todo.size)
            yield res
        if bar is not None:
            bar.close()
        dt = time.perf_counter() - t0
        logger.info(
            "fit_batch: %d rows in %.2f s (%.0f objects/s).",
            done,
            dt,
            done / dt if dt > 0 else float("nan"),
        )
    except BaseException:
        if writer is not None:
            writer.close(raise_errors=False)  # assemble what is committed; keep the error
        raise
    if writer is not None:
        writer.close()


def _progress_bar(total: int, show: bool):
    if not show or total == 0:
        return None
    from tqdm.auto import tqdm

    # delay: runs shorter than ~2 s print nothing
    return tqdm(total=total, unit="obj", desc="fit_batch", delay=2.0, smoothing=0.1)
