"""Shaping chunk results for the user: per-object dicts, tables, public chunk dicts."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from ..core.schema import TARGET_STATS, TRUNCATION_KEYS, cast
from .plan import BatchPlan

logger = logging.getLogger("jaxgrid")


def _object_dicts(res: dict[str, Any], plan: BatchPlan) -> Iterator[dict[str, Any]]:
    """The per-object dicts of a chunk. Every column is converted to Python values in
    one vectorised call per chunk (``tolist``), so the loop only builds the dicts."""
    names = plan.stats_names
    off = res["candidate_offsets"].tolist()
    idx, w = res["candidate_idx"], res["candidate_w"]
    cands = [idx[a:b] for a, b in zip(off[:-1], off[1:], strict=True)]
    posts = [w[a:b] for a, b in zip(off[:-1], off[1:], strict=True)]
    trunc = [cast(k, res[k]).tolist() for k in TRUNCATION_KEYS]
    trunc_rows = [
        dict(zip(TRUNCATION_KEYS, vals, strict=True)) for vals in zip(*trunc, strict=True)
    ]
    level = [None if v < 0 else v for v in res["level"].tolist()]
    ms = res["m"].tolist()
    lz = cast("log_evidence", res["log_evidence"]).tolist()
    c2 = cast("chi2_min", res["chi2_min"]).tolist()
    best = cast("best", res["best"]).tolist()
    status = cast("status", res["status"]).tolist()
    ids = res["id"].tolist() if "id" in res else None
    stat_rows = None
    if names:
        per = {f: cast(f, res[f]).T.tolist() for f in TARGET_STATS}
        fields = TARGET_STATS
        by_target = [
            [
                dict(zip(fields, v, strict=True))
                for v in zip(*(per[f][j] for f in fields), strict=True)
            ]
            for j in range(len(names))
        ]
        stat_rows = list(zip(*by_target, strict=True))
        cov = list(res["cov"])
        pdfs = list(zip(*(list(p) for p in res["pdf"]), strict=True)) if plan.return_pdf else None
    for i in range(len(ms)):
        d: dict[str, Any] = {
            "m": ms[i],
            "level": level[i],
            "candidates": cands[i],
            "post_models": posts[i],
            "truncation": trunc_rows[i],
            "log_evidence": lz[i],
            "chi2_min": c2[i],
            "best": best[i],
            "status": status[i],
        }
        if ids is not None:
            d["id"] = ids[i]
        if stat_rows is not None:
            stats: dict[str, Any] = dict(zip(names, stat_rows[i], strict=True))
            stats["cov"] = cov[i]
            d["stats"] = stats
            if pdfs is not None:
                d["posts_target"] = dict(zip(names, pdfs[i], strict=True))
        yield d


def _table(results: list[dict[str, Any]], plan: BatchPlan, ids, units):
    from ..io.export import results_to_table

    return results_to_table(results, plan.stats_names, ids=ids, units=units)


class _Unconsumed:
    """The ``"iter"`` iterator of a run with an output file: the run (and the file)
    advance only as it is consumed, so dropping it unstarted warns."""

    def __init__(self, it: Iterator[dict[str, Any]], path):
        self._it, self._path, self._started = it, path, False

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, Any]:
        self._started = True
        return next(self._it)

    def close(self) -> None:
        self._started = True
        self._it.close()

    def __del__(self):
        if not self._started:
            logger.warning(
                "fit_batch: the return_mode='iter' iterator for %s was never consumed, so "
                "nothing was fitted or written; iterate it, or pass "
                "output_hdf5_write_only=True or return_mode='list'.",
                self._path,
            )


def _public_chunks(it, plan) -> Iterator[dict[str, Any]]:
    for res in it:
        out = dict(res)
        out["stats_for"] = plan.stats_names
        out["stats_bins"] = plan.stats_bins  # one edge array per target (to_qp needs them)
        yield out
