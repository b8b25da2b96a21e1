"""The per-row output schema of a batch fit: every result field once, with its dtype,
fill value, place in the HDF5 file and unit.

Everything that stores or shapes results reads it: the chunk step (`HIST_STATS`), the
result writer (`hdf5_datasets`), the dict shapers (`TRUNCATION_KEYS`), the table
exporter and Dask (`table_columns`, `table_from_chunks`). Integer fields (counts,
indices, ``nmodes``) are typed here, so no consumer special-cases them.

| field | per | dtype | meaning |
| --- | --- | --- | --- |
| status | row | int32 | `jaxgrid.Status` bit flags (0 = ok) |
| level | row | int64 | the binner's level (-1: none / full grid) |
| n_before | row | int64 | models with finite weight in the row's pool |
| n_after | row | int64 | models kept by the truncation |
| keep_mass | row | float64 | the requested kept mass (dicts only) |
| mass_kept | row | float64 | posterior mass of the kept models |
| mass_dropped | row | float64 | 1 - mass_kept |
| cut_weight | row | float64 | normalised weight at the threshold |
| ess_before | row | float64 | effective sample size of the pool |
| ess_after | row | float64 | ... of the kept models |
| log_evidence | row | float64 | log Z (natural log) |
| chi2_min | row | float64 | the smallest chi^2 of the pool |
| best | row | int64 | grid index of the MAP model (-1: none) |
| mean .. hi68 | target | float64 | summaries, in the target's units |
| nmodes | target | int32 | histogram modes (-1: no summary) |
| mass_in_bins | target | float64 | fraction of the kept mass inside the bins |

Rows with a `BAD_STATUS` flag (`jaxgrid.core.status.is_bad`) carry each field's fill,
except ``log_evidence``, which is ``-inf`` (no model has weight); rows not yet written
to a file carry the fill everywhere.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "Field",
    "ROW_FIELDS",
    "TARGET_FIELDS",
    "FIELDS",
    "TARGET_STATS",
    "HIST_STATS",
    "TRUNCATION_FIELDS",
    "TRUNCATION_KEYS",
    "TABLE_FIELDS",
    "RESERVED_KEYS",
    "cast",
    "hdf5_datasets",
    "table_columns",
    "target_columns",
    "table_from_chunks",
]


@dataclasses.dataclass(frozen=True)
class Field:
    """One per-row result field."""

    name: str
    dtype: type  #: dtype in files, tables and result dicts
    fill: Any  #: value of a row without it (bad rows, rows not written)
    per: str = "row"  #: "row" (one value per row) or "target" (one per summarised target)
    group: str = ""  #: HDF5 group of the dataset ("" = the result group itself)
    stored: bool = True  #: written to the HDF5 file
    target_unit: bool = False  #: carries the target's unit

    def dataset(self, target: str | None = None) -> str:
        """The dataset path inside a result group."""
        if self.per == "target":
            return f"stats/{target}/{self.name}"
        return f"{self.group}/{self.name}" if self.group else self.name


_F, _I = np.float64, np.int64
ROW_FIELDS: tuple[Field, ...] = (
    Field("status", np.int32, 0, group="index"),
    Field("level", _I, -1, group="truncation"),
    Field("n_before", _I, -1, group="truncation"),
    Field("n_after", _I, -1, group="truncation"),
    Field("keep_mass", _F, np.nan, group="truncation", stored=False),
    Field("mass_kept", _F, np.nan, group="truncation"),
    Field("mass_dropped", _F, np.nan, group="truncation"),
    Field("cut_weight", _F, np.nan, group="truncation"),
    Field("ess_before", _F, np.nan, group="truncation"),
    Field("ess_after", _F, np.nan, group="truncation"),
    Field("log_evidence", _F, np.nan),
    Field("chi2_min", _F, np.nan),
    Field("best", _I, -1),
)
TARGET_FIELDS: tuple[Field, ...] = (
    *(
        Field(n, _F, np.nan, per="target", target_unit=True)
        for n in ("mean", "std", "map", "median", "lo68", "hi68")
    ),
    Field("nmodes", np.int32, -1, per="target"),
    Field("mass_in_bins", _F, np.nan, per="target"),
)
FIELDS: dict[str, Field] = {f.name: f for f in ROW_FIELDS + TARGET_FIELDS}

#: per-target summaries, in file/table order
TARGET_STATS = tuple(f.name for f in TARGET_FIELDS)
#: the per-target summaries computed from the histogram (`reductions.HistStats`)
HIST_STATS = tuple(n for n in TARGET_STATS if n != "mass_in_bins")
#: the file's ``truncation/`` datasets
TRUNCATION_FIELDS = tuple(f.name for f in ROW_FIELDS if f.group == "truncation" and f.stored)
#: the keys of a per-object dict's ``"truncation"`` entry
TRUNCATION_KEYS = tuple(f.name for f in ROW_FIELDS if f.group == "truncation" and f.name != "level")
#: per-row columns of the tables, in column order (before the per-target ones)
TABLE_FIELDS = ("status", "log_evidence", "chi2_min", "best", "n_after", "mass_kept")
#: keys of a per-object result dict and of its ``stats`` dict: no target may take them
RESERVED_KEYS = frozenset(
    {"m", "level", "candidates", "post_models", "truncation", "stats", "posts_target", "cov"}
    | {f.name for f in ROW_FIELDS if f.group != "truncation"}
)


def cast(name: str, values: Any) -> np.ndarray:
    """``values`` as field ``name``'s dtype."""
    return np.asarray(values, FIELDS[name].dtype)


def hdf5_datasets(
    targets: Sequence[str], bins: Sequence[np.ndarray], return_pdf: bool
) -> list[tuple[str, Any, Any, tuple]]:
    """``(dataset, dtype, fill, per-row shape)`` of every fixed-size per-row dataset of a
    result group (the candidate lists are ragged and separate)."""
    out: list[tuple[str, Any, Any, tuple]] = [("index/written", np.int8, 0, ())]
    for f in ROW_FIELDS:
        if f.stored:
            out.append((f.dataset(), f.dtype, f.fill, ()))
    for name, edges in zip(targets, bins, strict=True):
        for f in TARGET_FIELDS:
            out.append((f.dataset(name), f.dtype, f.fill, ()))
        if return_pdf:
            out.append((f"stats/{name}/posts_target", _F, np.nan, (len(edges) - 1,)))
    if len(targets):
        out.append(("stats/cov/cov", _F, np.nan, (len(targets), len(targets))))
    # the file's historical order: index, truncation, stats, then the root datasets
    order = {"index": 0, "truncation": 1, "stats": 2}
    return sorted(out, key=lambda d: order.get(d[0].split("/")[0], 3))


def table_columns(targets: Sequence[str]) -> list[tuple[str, Field]]:
    """``(column, field)`` of a results table after ``m`` / the id: the row fields, then
    ``<target>_<stat>`` per summarised target."""
    cols = [(n, FIELDS[n]) for n in TABLE_FIELDS]
    for t in targets:
        cols += target_columns(t)
    return cols


def target_columns(target: str) -> list[tuple[str, Field]]:
    """``(column, field)`` of one summarised target's table columns."""
    return [(f"{target}_{f.name}", f) for f in TARGET_FIELDS]


def table_from_chunks(chunks: Iterable[dict[str, Any]], targets: Sequence[str]) -> dict:
    """The table columns (`table_columns`) of per-chunk result dicts, each cast to its
    field's dtype."""
    chunks = list(chunks)
    out = {}
    for n in TABLE_FIELDS:
        out[n] = cast(n, np.concatenate([np.asarray(c[n]) for c in chunks]))
    for j, t in enumerate(targets):
        for f in TARGET_FIELDS:
            v = np.concatenate([np.asarray(c[f.name])[:, j] for c in chunks])
            out[f"{t}_{f.name}"] = cast(f.name, v)
    return out
