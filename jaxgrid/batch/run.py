"""Running a plan: chunks to the device(s), candidate queries on host threads, results in order."""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import logging
from collections import deque
from collections.abc import Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..core.checks import float_dtype
from ..core.data import standardise_rows
from ..core.schema import TARGET_STATS
from ..core.status import Status, is_bad
from ..core.step import Chunk, StepConfig, chunk_step, pool_log_weights
from .plan import BatchPlan

logger = logging.getLogger("jaxgrid")


def _level_rows(level, n: int) -> np.ndarray:
    """The binner's level per row: None -> -1, one int for the chunk, or an (n,) array."""
    if level is None:
        return np.full(n, -1, np.int64)
    a = np.asarray(level)
    if a.ndim == 0:
        return np.full(n, int(a), np.int64)
    if a.shape != (n,):
        raise ValueError(
            f"binner.batch_candidates returned level {a.shape} for {n} rows; it must be "
            "None, an int or one int per row."
        )
    return np.where(a < 0, -1, a).astype(np.int64)


def _check_candidates(idx: Any, mask: Any, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The binner's ``(idx, mask)`` for ``n`` rows as int64 and bool (n, k) arrays.
    Output malformed as a whole (shape, dtype) raises; indices outside the grid are
    checked per row by the caller, which flags those rows."""
    idx, mask = np.asarray(idx), np.asarray(mask)
    if idx.shape != (n, k) or mask.shape != (n, k):
        raise ValueError(
            f"binner.batch_candidates returned idx {idx.shape} and mask {mask.shape} for {n} "
            f"rows; both must be ({n}, {k}) (rows, binner.n_candidates)."
        )
    if not np.issubdtype(idx.dtype, np.integer):
        raise TypeError(
            f"binner.batch_candidates returned {idx.dtype} indices; they must be integer model "
            "indices (e.g. idx.astype(np.int64))."
        )
    if mask.dtype != bool and not (
        np.issubdtype(mask.dtype, np.integer) and np.isin(mask, (0, 1)).all()
    ):
        raise TypeError(
            f"binner.batch_candidates returned a {mask.dtype} mask; it must be bool (True = a "
            "valid candidate)."
        )
    return idx.astype(np.int64), mask.astype(bool)


# ---------------------------------------------------------------- execution
class _Prepared(NamedTuple):
    """A chunk prepared on the host: the step's arrays (``dtype``), the binner's
    level, host flags per row and the rows (with their arrays) of its fallback chunk."""

    arrays: dict[str, Any]
    level: Any
    extra_flags: np.ndarray
    fb_rows: np.ndarray | None
    fb_arrays: dict[str, Any] | None

    @property
    def host(self):
        return (self.arrays, self.fb_arrays)


class _Runner:
    """Dispatches chunks to the device(s) and collects host results in order."""

    def __init__(self, fitter, plan: BatchPlan, binner, n_jobs: int):
        self.fitter, self.plan, self.binner = fitter, plan, binner
        self.n_jobs = max(1, int(n_jobs) if n_jobs and int(n_jobs) > 0 else 1)
        # Data parallelism over local devices: each device gets an equal slice of
        # the chunk and runs the *same* single-device program, so results are
        # bitwise identical to a one-device run (GSPMD sharding would partition
        # the program differently and change float rounding).
        self.devices = jax.local_devices()
        self.datas = [jax.device_put(plan.data, d) for d in self.devices]
        self._full_datas = None  # the padded full grid, built on first fallback
        # Read on the calling thread: JAX's x64 setting is thread-local (``with
        # jax.enable_x64(True):``), and chunks are prepared on worker threads.
        self.dtype = float_dtype()

    def _split(self, arrays: dict[str, Any]) -> list[Chunk]:
        """Equal row slices of the chunk arrays, one per device."""
        per = self.plan.chunk_size // len(self.devices)
        return [
            Chunk(
                **{
                    k: None if v is None else jax.device_put(v[i * per : (i + 1) * per], dev)
                    for k, v in arrays.items()
                }
            )
            for i, dev in enumerate(self.devices)
        ]

    def _dispatch(self, config: StepConfig, datas, parts: list[Chunk]):
        # asynchronous dispatch: the devices run concurrently
        return [
            chunk_step(
                config,
                data,
                self.fitter.prepared.likelihood,
                self.fitter.prior,
                self.plan.params,
                part,
            )
            for data, part in zip(datas, parts, strict=True)
        ]

    def _full_grid_datas(self):
        if self._full_datas is None:
            fc = self.plan.full_config
            padded = self.fitter.prepared.padded(fc.n_blocks, fc.block_size)
            self._full_datas = [jax.device_put(padded, d) for d in self.devices]
        return self._full_datas

    def _prepare(self, rows: np.ndarray) -> _Prepared:
        """A chunk's host arrays (worker threads: NumPy only, no JAX call — JAX's
        dtype settings are thread-local; `_to_devices` moves them on the caller's)."""
        plan, c = self.plan, self.plan.chunk_size
        n = rows.size
        p = plan.X.shape[1]
        dt = self.dtype
        x = np.full((c, p), np.nan)
        s = np.full((c, p), np.nan)
        x[:n], s[:n] = plan.X[rows], plan.S[rows]
        upper = None
        if plan.U is not None:
            upper = np.zeros((c, p), bool)
            upper[:n] = plan.U[rows]
        cand = cmask = None
        level = None
        extra_flags = np.zeros(n, np.int32)
        if self.binner is not None:
            k = plan.config.block_size
            fb = None
            if n:
                # (idx, mask, level) or (idx, mask, level, fallback rows): returned, not read
                # back from the binner's attributes (chunks are prepared on worker threads)
                found = self.binner.batch_candidates(plan.X[rows], plan.S[rows])
                idx, mask, level = found[:3]
                fb = found[3] if len(found) > 3 else None
            else:  # an empty catalog: nothing to ask the binner
                idx, mask = np.zeros((0, k), np.int64), np.zeros((0, k), bool)
            idx, mask = _check_candidates(idx, mask, n, k)
            fallback = ~mask.any(axis=1)
            if fb is not None:
                fallback |= np.asarray(fb, bool)[:n]
            # indices outside the grid (a custom binner's bug): the row is not fitted on
            # a clamped model but flagged — no candidates, BAD_INPUT, NaN summaries
            off_grid = (idx < 0) | (idx >= self.fitter.grid.n_models)
            outside = (mask & off_grid).any(axis=1)
            outside &= ~fallback  # a fallback row's candidates are not used anyway
            if outside.any():
                logger.warning(
                    "fit_batch: the binner returned model indices outside [0, %d) for %d "
                    "rows; they are flagged NO_CANDIDATES | BAD_INPUT.",
                    self.fitter.grid.n_models,
                    int(outside.sum()),
                )
                extra_flags[outside] |= int(Status.BAD_INPUT)
            cand = np.zeros((c, k), np.int32)
            cmask = np.zeros((c, k), bool)
            cand[:n] = np.where(off_grid, 0, idx)  # masked padding too: any int is allowed
            cmask[:n] = mask & ~outside[:, None]
            cmask[:n][fallback] = False
        mean_std = self.fitter.prepared.mean_std
        xd, sd = standardise_rows(plan.data, mean_std, x, s, dt)
        arrays = dict(x=xd, sigma=sd, upper=upper, cand=cand, cand_mask=cmask)
        fb_rows = fb_arrays = None
        if self.binner is not None and plan.full_config is not None and fallback.any():
            # rows the binner could not serve: the whole grid, in a chunk of their own
            fb_rows = np.flatnonzero(fallback)
            extra_flags[fb_rows] |= int(Status.FULL_GRID_FALLBACK)
            take = np.zeros(c, np.int64)
            take[: fb_rows.size] = fb_rows
            fvalid = np.arange(c) < fb_rows.size
            fx, fs = standardise_rows(
                plan.data,
                mean_std,
                np.where(fvalid[:, None], x[take], np.nan),
                np.where(fvalid[:, None], s[take], np.nan),
                dt,
            )
            fb_arrays = dict(
                x=fx,
                sigma=fs,
                upper=None if upper is None else upper[take] & fvalid[:, None],
                cand=None,
                cand_mask=None,
            )
        return _Prepared(arrays, level, extra_flags, fb_rows, fb_arrays)

    def _to_devices(self, prep: _Prepared) -> tuple[list[Chunk], list[Chunk] | None]:
        """The chunk's (and its fallback chunk's) device slices; on the calling thread."""
        fb_parts = None if prep.fb_rows is None else self._split(prep.fb_arrays)
        return self._split(prep.arrays), fb_parts

    def chunk_parts(self, rows: np.ndarray) -> list[Chunk]:
        """The device slices `chunk_step` gets for catalog ``rows`` (at most one chunk),
        as `run` builds them; for benchmarks and tests of the step alone."""
        return self._to_devices(self._prepare(rows))[0]

    def run(self, todo: np.ndarray) -> Iterator[dict[str, Any]]:
        """Yield host results per chunk, in order, one chunk behind the device."""
        plan, c = self.plan, self.plan.chunk_size
        if plan.X.shape[0] == 0:
            # an empty catalog: one empty chunk through the same step (one all-padding
            # chunk), so every field comes back with its dtype and trailing shape
            prep = self._prepare(todo[:0])
            outs = self._dispatch(plan.config, self.datas, self._to_devices(prep)[0])
            yield self._collect(todo[:0], prep.level, prep.extra_flags, outs, None, prep.host)
            return
        starts = range(0, todo.size, c)
        pending: deque = deque()
        with cf.ThreadPoolExecutor(max_workers=self.n_jobs) as pool:
            futures = deque(pool.submit(self._prepare, todo[s : s + c]) for s in list(starts)[:2])
            next_start = 2 * c
            for s in starts:
                rows = todo[s : s + c]
                prep = futures.popleft().result()
                if next_start < todo.size:
                    futures.append(pool.submit(self._prepare, todo[next_start : next_start + c]))
                    next_start += c
                parts, fb_parts = self._to_devices(prep)
                outs = self._dispatch(plan.config, self.datas, parts)
                fb = None
                if prep.fb_rows is not None:
                    fb = (
                        prep.fb_rows,
                        self._dispatch(plan.full_config, self._full_grid_datas(), fb_parts),
                    )
                pending.append((rows, prep.level, prep.extra_flags, outs, fb, prep.host))
                if len(pending) > 1:
                    yield self._collect(*pending.popleft())
            while pending:
                yield self._collect(*pending.popleft())

    def _collect(self, rows, level, extra, outs, fb, host_arrays) -> dict[str, Any]:
        """Host arrays of a chunk (the device's dtypes; no per-object work, few copies)."""
        n = rows.size
        plan = self.plan
        host = _gather(outs)
        level_rows = _level_rows(level, n)
        fb_rows = None
        if fb is not None:
            fb_rows, fb_outs = fb
            full = _gather(fb_outs)
            width = max(host.cand_idx.shape[1], full.cand_idx.shape[1])
            host, full = _widen_lists(host, width), _widen_lists(full, width)
            full = dataclasses.replace(
                full, pool_lw=np.full(host.pool_lw.shape, -np.inf, host.pool_lw.dtype)
            )

            def splice(a, b):
                a = np.array(a)
                a[fb_rows] = b[: fb_rows.size]
                return a

            host = jax.tree_util.tree_map(splice, host, full)
            level_rows[fb_rows] = -1
        status = (np.asarray(host.status[:n]) | plan.host_flags[rows] | extra).astype(np.int32)
        bad = is_bad(status)
        res = {
            "m": rows,
            "status": status,
            "level": level_rows,
            "keep_mass": np.full(n, plan.keep["keep_mass"]),
            "pdf": [p[:n] for p in host.pdf],
        }
        for f in (
            "log_evidence",
            "chi2_min",
            "best",
            "n_before",
            "n_after",
            "cov",
            "mass_kept",
            "mass_dropped",
            "cut_weight",
            "ess_before",
            "ess_after",
            *TARGET_STATS,
        ):
            res[f] = getattr(host, f)[:n]
        res["log_evidence"] = self._host_log_evidence(host, rows, bad)
        if plan.keep["return_candidates"]:
            idx, w, off = self._candidate_lists(host, n, bad, host_arrays, fb_rows)
        else:
            idx, w, off = np.zeros(0, np.int64), np.zeros(0), np.zeros(n + 1, np.int64)
        res["candidate_idx"], res["candidate_w"], res["candidate_offsets"] = idx, w, off
        return res

    def _host_log_evidence(self, host, rows, bad) -> np.ndarray:
        """float64 ``log_evidence``. Rows refined relative to a reference model (``ref``:
        far from every model, log Z of -1e5 and less) get log Z relative to it (device)
        plus that one model's log weight, its log L evaluated in float64 here when the
        likelihood has a host evaluation (`AbstractLikelihood.host_log_likelihood_rows`):
        the device's float32 value would be off by several nats."""
        n = rows.size
        lz = np.asarray(host.log_evidence[:n], np.float64).copy()
        ref = np.asarray(host.ref[:n], np.int64)
        todo = np.flatnonzero((ref >= 0) & ~bad)
        if todo.size == 0:
            return lz
        plan = self.plan
        mean, std = self.fitter.prepared.mean_std
        r = rows[todo]
        x = (plan.X[r] - mean) / std
        s = plan.S[r] / std
        models = self.fitter.prepared.likelihood_models64(ref[todo])
        upper = None if plan.U is None else plan.U[r]
        ll = self.fitter.prepared.likelihood.host_log_likelihood_rows(x, s, models, upper)
        if ll is None:  # no host evaluation: the device's float32 value
            return lz
        rel = np.asarray(host.log_evidence_rel[:n], np.float64)[todo]
        lw = ll + np.asarray(host.ref_log_prior[:n], np.float64)[todo]
        ok = np.isfinite(lw) & np.isfinite(rel)
        lz[todo[ok]] = rel[ok] + lw[ok]
        return lz

    def _candidate_lists(self, host, n, bad, host_arrays, fb_rows):
        """Every row's kept models as flat ragged arrays ``(idx, w, offsets)``: row ``i``'s
        are ``idx[offsets[i]:offsets[i+1]]``, descending weight. The device lists the
        first ``list_k``; rows that keep more are listed here from their log weights
        (`pool_log_weights`, the step's arithmetic), sorted on the host."""
        plan = self.plan
        lengths = np.where(bad, 0, np.asarray(host.n_after[:n], np.int64))
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        width = host.cand_idx.shape[1]
        row_list = np.full(n, plan.config.list_k, np.int64)
        if fb_rows is not None:
            row_list[fb_rows] = plan.full_config.list_k
        over = lengths > row_list
        idx = np.empty(offsets[-1], np.int64)
        w = np.empty(offsets[-1], np.float64)
        if plan.config.host_order:  # the pool's log weights came back: order them here
            pooled = lengths > 0  # every row of the pools, ordered in float64 alike
            if fb_rows is not None:
                pooled[fb_rows] = False
            self._order_pools(
                host.pool_lw[:n], host_arrays[0]["cand"][:n], pooled, lengths, offsets, idx, w
            )
            over &= ~pooled
        listed = ~over
        if plan.config.host_order:
            listed &= ~pooled  # already written from the pools
        short = np.arange(width)[None, :] < np.where(listed, lengths, 0)[:, None]
        r, c = np.nonzero(short)
        dest = offsets[r] + c
        idx[dest] = host.cand_idx[:n][r, c]
        w[dest] = host.cand_w[:n][r, c]
        if over.any():
            main_over = over.copy()
            arrays, fb_arrays = host_arrays
            if fb_rows is not None:
                main_over[fb_rows] = False
                fb_over = np.flatnonzero(over[fb_rows])  # positions in the fallback chunk
                if fb_over.size:
                    fb_ref = np.full(plan.chunk_size, -1, np.int32)
                    fb_ref[: fb_rows.size] = host.ref[fb_rows]
                    self._list_long(
                        plan.full_config,
                        dict(fb_arrays, ref=fb_ref),
                        fb_over,
                        fb_rows[fb_over],
                        lengths,
                        offsets,
                        idx,
                        w,
                    )
            pos = np.flatnonzero(main_over)
            if pos.size:
                main = dict(arrays, ref=np.asarray(host.ref, np.int32))
                self._list_long(plan.config, main, pos, pos, lengths, offsets, idx, w)
        return idx, w, offsets

    @staticmethod
    def _order_pools(pool_lw, cand, rows, lengths, offsets, idx, w):
        """Kept models of ``rows`` (bool) from their pools' log weights, vectorised: a
        stable sort by ``-lw`` (ties in pool order), the first ``n_after`` of each."""
        if not rows.any():
            return
        lw = np.asarray(pool_lw, np.float64)[rows]
        order = np.argsort(-lw, axis=1, kind="stable")
        lens = lengths[rows]
        r, c = np.nonzero(np.arange(lw.shape[1])[None, :] < lens[:, None])
        pos = order[r, c]
        vals = lw[r, pos]
        p = np.exp(vals - lw[r, order[r, 0]])
        dest = offsets[np.flatnonzero(rows)][r] + c
        idx[dest] = np.asarray(cand)[rows][r, pos]
        w[dest] = p / np.bincount(r, p, minlength=lens.size)[r]

    def _list_long(self, config, arrays, pos, rows, lengths, offsets, idx, w):
        """List the kept models of chunk rows ``pos`` (result rows ``rows``) into the flat
        arrays: their log weights over the whole pool, sorted by (-lw, pool order)."""
        fitter = self.fitter
        data = self._full_grid_datas()[0] if config is self.plan.full_config else self.datas[0]
        dev = self.devices[0]
        chunk = Chunk(
            **{k: None if v is None else jax.device_put(v, dev) for k, v in arrays.items()}
        )
        lik, prior = fitter.prepared.likelihood, fitter.prior
        parts = [
            np.asarray(pool_log_weights(config, data, lik, prior, chunk, jnp.int32(b)))[pos]
            for b in range(config.n_blocks)
        ]
        lw = np.concatenate(parts, axis=1).astype(np.float64)
        order = np.argsort(-lw, axis=1, kind="stable")
        for j, i in enumerate(rows):
            k = int(lengths[i])
            o = order[j, :k]
            v = lw[j, o]
            p = np.exp(v - v[0])
            pool = o if arrays["cand"] is None else arrays["cand"][pos[j], o]
            idx[offsets[i] : offsets[i] + k] = pool
            w[offsets[i] : offsets[i] + k] = p / p.sum()


def _widen_lists(out, width: int):
    """The chunk output with its candidate lists padded to ``width`` columns."""
    pad = width - out.cand_idx.shape[1]
    if pad == 0:
        return out
    return dataclasses.replace(
        out,
        cand_idx=np.pad(out.cand_idx, ((0, 0), (0, pad)), constant_values=-1),
        cand_w=np.pad(out.cand_w, ((0, 0), (0, pad))),
    )


def _gather(outs):
    """Device outputs of the per-device slices -> one host ChunkOutput."""
    parts = jax.device_get(outs)
    if len(parts) == 1:
        return jax.tree_util.tree_map(np.asarray, parts[0])
    return jax.tree_util.tree_map(lambda *a: np.concatenate(a), *parts)


def chunks_to_redo(written: np.ndarray, chunk_size: int) -> np.ndarray:
    """Rows of every chunk (``[k c, (k+1) c)``) with a row not yet written: a resumed
    run computes each row in the same chunk as an uninterrupted one (chunk
    composition can change float rounding), so the files are identical."""
    m = written.size
    open_chunks = (
        np.flatnonzero(np.add.reduceat(written == 0, np.arange(0, m, chunk_size)) > 0)
        if m
        else np.zeros(0, np.int64)
    )
    if open_chunks.size == 0:
        return np.zeros(0, np.int64)
    rows = (open_chunks[:, None] * chunk_size + np.arange(chunk_size)[None, :]).ravel()
    return rows[rows < m]
