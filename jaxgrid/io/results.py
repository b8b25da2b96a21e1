"""Streaming HDF5 output of batch fits: `GridFitHDF5Writer` and `read_fit_results`.

Layout under the group (M = catalog rows, D = summarised targets)::

    configuration                      attribute: JSON of the run's settings
    index/m (M,)                       object index
    index/status (M,) int8             0 not written, 1 ok, -1 failed/flagged
    index/flags (M,) int32             engine Status bit flags (see jaxgrid.engine.Status)
    truncation/{level, n_before, n_after, mass_kept, mass_dropped, cut_weight,
                ess_before, ess_after} (M,)
    candidates/candidates, candidates/post_models   variable length per row
    stats/<target>/{bins, mean, std, map, median, lo68, hi68, nmodes[, posts_target (M, K)]}
    stats/cov/{keys (D,), cov (M, D, D)}
    log_evidence, chi2_min, best (M,)

Every dataset is created at full size when the file is opened, so a chunk's
write never reshapes the file; ``index/status`` is set to 1/-1 only after the
chunk's data, and flushed with it: after an interruption, rows whose status is
not 1 are exactly those to recompute (``resume=True``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

__all__ = ["GridFitHDF5Writer", "read_fit_results", "TRUNCATION_FIELDS", "STAT_FIELDS"]

TRUNCATION_FIELDS = (
    "level",
    "n_before",
    "n_after",
    "mass_kept",
    "mass_dropped",
    "cut_weight",
    "ess_before",
    "ess_after",
)
STAT_FIELDS = ("mean", "std", "map", "median", "lo68", "hi68", "nmodes")
_INT_FIELDS = {"level", "n_before", "n_after", "nmodes"}


class GridFitHDF5Writer:
    """Writes batch-fit results into an HDF5 group, chunk by chunk.

    Args:
        path: the HDF5 file (created if needed).
        group: the group to write.
        n_rows: catalog length M (datasets are created at full size).
        configuration: JSON-able dict of the run's settings (stored as the
            group's ``configuration`` attribute; ``resume`` requires equality).
        stats_targets: names of summarised targets; ``stats_bins`` their edges.
        return_pdf: also store ``posts_target`` (M, K) per target.
        overwrite: replace an existing group. resume: reopen an existing group
            with the same configuration (``ValueError`` otherwise).
        compression: HDF5 filter of the fixed-size datasets (``compression_opts`` its level).
        flush_every: flush to disk after at least this many rows.

    Use as a context manager; ``write(rows, results)`` stores a chunk,
    ``mark_failed(rows)`` flags rows (status -1) without results.
    """

    def __init__(
        self,
        path: str | Path,
        group: str,
        n_rows: int,
        configuration: dict[str, Any],
        stats_targets: list[str] = (),
        stats_bins: list[np.ndarray] = (),
        return_pdf: bool = False,
        overwrite: bool = False,
        resume: bool = False,
        compression: str | None = "gzip",
        compression_opts: int | None = 4,
        flush_every: int = 256,
    ):
        self.path, self.group_name, self.n_rows = Path(path), group, int(n_rows)
        self.stats_targets = list(stats_targets)
        self.flush_every = max(1, int(flush_every))
        self._since_flush = 0
        config_text = json.dumps(configuration, sort_keys=True)
        # a chunk cache large enough to hold the partly written compressed chunks:
        # each write covers a few hundred rows of chunks of up to ~1 MiB
        self._file = h5py.File(self.path, "a", rdcc_nbytes=64 * 2**20, rdcc_nslots=10007)
        try:
            if group in self._file:
                if resume:
                    g = self._file[group]
                    stored = g.attrs.get("configuration")
                    if stored != config_text:
                        raise ValueError(
                            f"resume: group {group!r} in {self.path} was written with a different "
                            "configuration (grid, catalog, likelihood, prior or fit settings); "
                            "resume with the same settings, or pass output_hdf5_overwrite=True."
                        )
                    self._g = g
                    return
                if not overwrite:
                    raise ValueError(
                        f"{self.path} already has group {group!r}; pass "
                        "output_hdf5_overwrite=True to replace it, resume=True to continue it, "
                        "or choose another output_hdf5_group."
                    )
                del self._file[group]
            self._g = self._create(
                config_text, stats_bins, return_pdf, compression, compression_opts
            )
            self._file.flush()
        except BaseException:
            self._file.close()
            raise

    def _create(self, config_text, stats_bins, return_pdf, compression, opts):
        g = self._file.create_group(self.group_name)
        g.attrs["configuration"] = config_text
        m = self.n_rows
        kw = {"compression": compression, "compression_opts": opts} if compression else {}

        def dset(name, shape, dtype, fill):
            # chunks of at most 4096 rows and ~1 MiB (a wide PDF row is kilobytes):
            # larger compressed chunks are recompressed whole on every partial write
            row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize
            chunk_rows = max(1, min(m, 4096, 2**20 // max(row_bytes, 1)))
            return g.create_dataset(
                name,
                shape=shape,
                dtype=dtype,
                fillvalue=fill,
                chunks=(chunk_rows,) + tuple(shape[1:]),
                **kw,
            )

        g.create_dataset("index/m", data=np.arange(m, dtype=np.int64), **kw)
        dset("index/status", (m,), np.int8, 0)
        dset("index/flags", (m,), np.int32, 0)
        for f in TRUNCATION_FIELDS:
            if f in _INT_FIELDS:
                dset(f"truncation/{f}", (m,), np.int64, -1)
            else:
                dset(f"truncation/{f}", (m,), np.float64, np.nan)
        vl_int = h5py.vlen_dtype(np.dtype(np.int64))
        vl_flt = h5py.vlen_dtype(np.dtype(np.float64))
        g.create_dataset("candidates/candidates", shape=(m,), dtype=vl_int)
        g.create_dataset("candidates/post_models", shape=(m,), dtype=vl_flt)
        for name, edges in zip(self.stats_targets, stats_bins, strict=True):
            g.create_dataset(f"stats/{name}/bins", data=np.asarray(edges, np.float64))
            for f in STAT_FIELDS:
                if f in _INT_FIELDS:
                    dset(f"stats/{name}/{f}", (m,), np.int32, -1)
                else:
                    dset(f"stats/{name}/{f}", (m,), np.float64, np.nan)
            if return_pdf:
                dset(f"stats/{name}/posts_target", (m, len(edges) - 1), np.float64, np.nan)
        d = len(self.stats_targets)
        if d:
            g.create_dataset("stats/cov/keys", data=np.array(self.stats_targets, dtype="S"))
            dset("stats/cov/cov", (m, d, d), np.float64, np.nan)
        dset("log_evidence", (m,), np.float64, np.nan)
        dset("chi2_min", (m,), np.float64, np.nan)
        dset("best", (m,), np.int64, -1)
        return g

    # ------------------------------------------------------------------ API
    def status(self) -> np.ndarray:
        """The (M,) ``index/status`` column as stored now."""
        return self._g["index/status"][...]

    def write(self, rows: np.ndarray, res: dict[str, Any]) -> None:
        """Store results for catalog ``rows`` (sorted ints). ``res`` holds host arrays
        keyed like the per-chunk results of ``fit_batch(return_mode="chunks")``:
        candidate lists come flat as ``candidate_idx``/``candidate_w`` with
        ``candidate_offsets`` (rows + 1): row ``i``'s are ``[off[i]:off[i+1]]`` (or, without
        offsets, padded (rows, width) arrays of which the first ``n_after`` count)."""
        g = self._g
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return
        sel = _selection(rows)
        for f in TRUNCATION_FIELDS:
            g[f"truncation/{f}"][sel] = res[f]
        cands = np.empty(rows.size, dtype=object)
        posts = np.empty(rows.size, dtype=object)
        idx = np.asarray(res["candidate_idx"], dtype=np.int64)
        w = np.asarray(res["candidate_w"], dtype=np.float64)
        if "candidate_offsets" in res:
            off = np.asarray(res["candidate_offsets"]).tolist()
            for i in range(rows.size):
                cands[i], posts[i] = idx[off[i] : off[i + 1]], w[off[i] : off[i + 1]]
        else:  # padded (rows, width) lists, the first n_after of each row kept
            for i, k in enumerate(np.asarray(res["n_after"]).tolist()):
                cands[i], posts[i] = idx[i, :k], w[i, :k]
        # write_direct: h5py's __setitem__ mis-broadcasts equal-length vlen rows
        g["candidates/candidates"].write_direct(cands, dest_sel=np.s_[sel])
        g["candidates/post_models"].write_direct(posts, dest_sel=np.s_[sel])
        for j, name in enumerate(self.stats_targets):
            for f in STAT_FIELDS:
                g[f"stats/{name}/{f}"][sel] = res[f][:, j]
            if f"stats/{name}/posts_target" in g:
                g[f"stats/{name}/posts_target"][sel] = res["pdf"][j]
        if self.stats_targets:
            g["stats/cov/cov"][sel] = res["cov"]
        for f in ("log_evidence", "chi2_min", "best"):
            g[f][sel] = res[f]
        g["index/flags"][sel] = res["status"]
        # status last: a row counts as written only once its data is in the file
        g["index/status"][sel] = np.where(res["bad"], -1, 1).astype(np.int8)
        self._since_flush += rows.size
        if self._since_flush >= self.flush_every:
            self.flush()

    def mark_failed(self, rows: np.ndarray, flags: int | np.ndarray = 0) -> None:
        """Flag ``rows`` as failed (status -1) without results."""
        sel = _selection(np.asarray(rows, dtype=np.int64))
        self._g["index/flags"][sel] = flags
        self._g["index/status"][sel] = -1

    def flush(self) -> None:
        self._file.flush()
        self._since_flush = 0

    def close(self) -> None:
        if self._file.id.valid:
            self._file.flush()
            self._file.close()

    def __enter__(self) -> GridFitHDF5Writer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _selection(rows: np.ndarray):
    """A contiguous slice when possible (fast in h5py), else the sorted index array."""
    if rows.size and rows[-1] - rows[0] + 1 == rows.size:
        return slice(int(rows[0]), int(rows[-1]) + 1)
    return rows


def read_fit_results(path: str | Path, group: str = "/fit_batch") -> dict[str, Any]:
    """Read a whole result group back into nested dicts of NumPy arrays."""
    out: dict[str, Any] = {}
    with h5py.File(path, "r") as f:
        if group not in f:
            raise KeyError(f"read_fit_results: {path} has no group {group!r}.")
        g = f[group]
        out["configuration"] = json.loads(g.attrs["configuration"])

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = obj[...]

        g.visititems(visit)
    return out
