"""fit_batch: the public entry point of batch fitting."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from ..io.results import GridFitHDF5Writer, check_output
from .plan import DEFAULT_KEEP_MIN, RETURN_MODES, _check_options, plan_batch
from .results import _object_dicts, _public_chunks, _table, _Unconsumed
from .run import _Runner, chunks_to_redo

logger = logging.getLogger("jaxgrid")


def fit_batch(
    fitter,
    X_native,
    SIG_native,
    binner=None,
    n_jobs: int = 1,
    backend: str = "thread",
    stats_for: Sequence[str | int] | None = None,
    stats_bins: Sequence[Any] | None = None,
    find_multimodal: bool = False,
    use_kde_for_stats: bool = False,
    return_pdf_for_stats: bool = False,
    verbose: bool = True,
    posterior_keep_mass: float = 0.99,
    posterior_keep_min_candidates: int | None = None,
    posterior_keep_max_candidates: int | None = None,
    posterior_keep_ties: bool = False,
    return_mode: str = "iter",
    output_hdf5_path=None,
    output_hdf5_group: str = "/fit_batch",
    output_hdf5_overwrite: bool = False,
    output_hdf5_compression: str | None = "gzip",
    output_hdf5_compression_opts: int | None = 4,
    output_hdf5_flush_every: int = 256,
    output_hdf5_write_only: bool = False,
    dry_run: bool = False,
    *,
    chunk_size: int | None = None,
    resume: bool = False,
    progress: bool | Callable[[int, int], None] | None = None,
    upper_limits=None,
    ids=None,
    model_block_size: int | None = None,
    memory_budget_bytes: int | None = None,
    fallback_to_full_grid: bool = True,
    return_candidates: bool = True,
):
    """See `GridFitter.fit_batch` (this is its implementation)."""
    if return_mode not in RETURN_MODES:
        raise ValueError(f"`return_mode` must be one of {RETURN_MODES}, got {return_mode!r}.")
    if backend not in ("thread", "threads", "threading", "loky", "process", "sequential"):
        logger.info("fit_batch: backend=%r is accepted for compatibility and ignored.", backend)
    if resume and output_hdf5_path is None:
        raise ValueError("`resume=True` needs `output_hdf5_path` (the file to continue).")
    if output_hdf5_write_only and output_hdf5_path is None:
        raise ValueError("`output_hdf5_write_only=True` needs `output_hdf5_path`.")
    _check_options(
        {
            "chunk_size": chunk_size,
            "n_jobs": n_jobs,
            "output_hdf5_flush_every": output_hdf5_flush_every,
            "model_block_size": model_block_size,
            "memory_budget_bytes": memory_budget_bytes,
            "posterior_keep_min_candidates": posterior_keep_min_candidates,
            "posterior_keep_max_candidates": posterior_keep_max_candidates,
            "posterior_keep_mass": posterior_keep_mass,
        }
    )
    if posterior_keep_min_candidates is None:  # the default floor, capped by a smaller max
        posterior_keep_min_candidates = DEFAULT_KEEP_MIN
    plan = plan_batch(
        fitter,
        X_native,
        SIG_native,
        binner=binner,
        stats_for=stats_for,
        stats_bins=stats_bins,
        find_multimodal=find_multimodal,
        use_kde_for_stats=use_kde_for_stats,
        return_pdf_for_stats=return_pdf_for_stats,
        keep_mass=posterior_keep_mass,
        keep_min=posterior_keep_min_candidates,
        keep_max=posterior_keep_max_candidates,
        keep_ties=posterior_keep_ties,
        chunk_size=chunk_size,
        upper_limits=upper_limits,
        model_block_size=model_block_size,
        memory_budget=memory_budget_bytes,
        fallback_to_full_grid=fallback_to_full_grid,
        return_candidates=return_candidates,
    )
    if ids is not None and len(ids) != plan.X.shape[0]:
        raise ValueError(f"`ids` has {len(ids)} entries for {plan.X.shape[0]} rows.")
    if output_hdf5_path is not None:
        check_output(output_hdf5_path, output_hdf5_group, output_hdf5_overwrite, resume)
    if dry_run:
        logger.info(
            "fit_batch dry run: %d rows, chunk %d, config %s",
            plan.X.shape[0],
            plan.chunk_size,
            plan.config,
        )
        return [] if return_mode in ("list", "table") else iter(())

    def chunks() -> Iterator[dict[str, Any]]:
        writer = None
        m = plan.X.shape[0]
        todo = np.arange(m)
        show = verbose if progress is None else bool(progress)
        callback = progress if callable(progress) else None
        try:
            if output_hdf5_path is not None:
                writer = GridFitHDF5Writer(
                    output_hdf5_path,
                    output_hdf5_group,
                    m,
                    plan.configuration,
                    plan.stats_names,
                    plan.stats_bins,
                    plan.return_pdf,
                    overwrite=output_hdf5_overwrite,
                    resume=resume,
                    compression=output_hdf5_compression,
                    compression_opts=output_hdf5_compression_opts,
                    flush_every=output_hdf5_flush_every,
                )
                if resume:
                    todo = chunks_to_redo(writer.written(), plan.chunk_size)
                    logger.info("fit_batch resume: %d of %d rows left.", todo.size, m)
            bar = _progress_bar(todo.size, show and callback is None)
            done = 0
            t0 = time.perf_counter()
            for res in _Runner(fitter, plan, binner, n_jobs).run(todo):
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

    if output_hdf5_write_only:
        for _ in chunks():
            pass
        return [] if return_mode in ("list", "table") else iter(())
    if return_mode == "chunks":
        return _public_chunks(chunks(), plan)
    if return_mode == "table":
        units = fitter.grid.meta.get("units") if isinstance(fitter.grid.meta, dict) else None
        return _table(list(chunks()), plan, ids, units if isinstance(units, dict) else None)
    objects = (d for res in chunks() for d in _object_dicts(res, plan))
    if return_mode == "list":
        return list(objects)
    if output_hdf5_path is not None:
        return _Unconsumed(objects, output_hdf5_path)
    return objects


def _progress_bar(total: int, show: bool):
    if not show or total == 0:
        return None
    from tqdm.auto import tqdm

    # delay: runs shorter than ~2 s print nothing
    return tqdm(total=total, unit="obj", desc="fit_batch", delay=2.0, smoothing=0.1)
