"""Object ids and the flat per-object table of a result group (host side).

* **Ids** (`as_ids`): one id per catalog row, integers (stored as int64) or strings
  (stored as fixed-width UTF-8, read back as ``str``). A result group keeps them in
  ``index/id`` (`write_ids`, `read_ids`).
* **The flat table** (`write_table`): ``<group>/table``, one row per written object
  with the columns of `jaxgrid.io.results_to_table` (``m``, ``id``, ``status``, ...,
  ``<target>_<stat>``), a compound HDF5 dataset with its astropy metadata beside it
  (``table.__table_column_meta__``), exactly as ``Table.write(..., path=...,
  serialize_meta=True)`` writes one: ``astropy.table.Table.read(file,
  path="<group>/table")`` reads it without jaxgrid (string ids come back as bytes
  unless ``character_as_bytes=False``). It is written block by block from the
  assembled group, so memory stays bounded for any catalog length.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import h5py
import numpy as np

from ..core.schema import FIELDS, TABLE_FIELDS, TARGET_FIELDS

__all__ = [
    "ID_DATASET",
    "TABLE_DATASET",
    "as_ids",
    "ids_for_rows",
    "ids_digest",
    "write_ids",
    "read_ids",
]

ID_DATASET = "index/id"
TABLE_DATASET = "table"
_BLOCK = 65536  # rows per block of the flat table


def as_ids(ids: Any, n_rows: int | None = None, name: str = "ids") -> np.ndarray | None:
    """``ids`` as a 1-D int64 array (integers, or floats with integral values) or a
    ``str`` array (strings, or UTF-8 bytes); None stays None.

    Raises ``ValueError`` for a wrong length (``n_rows``), masked/missing entries,
    non-integral or out-of-range numbers, and ``TypeError`` for other kinds (bools,
    mixed objects)."""
    if ids is None:
        return None
    if np.ma.isMaskedArray(ids) and np.ma.getmaskarray(ids).any():
        raise ValueError(f"`{name}` has masked (missing) entries; give every row an id.")
    a = np.asarray(np.ma.getdata(ids))
    if a.ndim != 1:
        raise ValueError(f"`{name}` must be 1-D (one id per row), got shape {a.shape}.")
    if n_rows is not None and a.shape[0] != n_rows:
        raise ValueError(f"`{name}` has {a.shape[0]} entries for {n_rows} rows.")
    if a.dtype.kind == "O":
        a = _from_objects(a, name)
    kind = a.dtype.kind
    if kind == "b":
        raise TypeError(f"`{name}` must be integers or strings, got booleans.")
    if kind == "u":
        if a.size and a.max() > np.iinfo(np.int64).max:
            raise ValueError(f"`{name}`: ids above 2**63 - 1 do not fit int64.")
        return a.astype(np.int64)
    if kind == "i":
        return a.astype(np.int64)
    if kind == "f":
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(a) | (a != np.round(a)) | (np.abs(a) >= 2.0**63)
        if bad.any():
            raise ValueError(
                f"`{name}` has missing (NaN) or non-integral numeric ids "
                f"({a[bad][:3].tolist()}); ids must be integers or strings."
            )
        return a.astype(np.int64)
    if kind == "S":
        try:
            return np.char.decode(a, "utf-8") if a.size else a.astype(str)
        except UnicodeDecodeError as err:
            raise ValueError(f"`{name}`: byte ids must be UTF-8 ({err}).") from None
    if kind == "U":
        return a
    raise TypeError(f"`{name}` must be integers or strings, got dtype {a.dtype}.")


def _from_objects(a: np.ndarray, name: str) -> np.ndarray:
    items = a.tolist()
    if all(isinstance(v, str) for v in items):
        return np.array(items, dtype=str) if items else np.zeros(0, str)
    if all(isinstance(v, bytes) for v in items):
        return np.array(items, dtype=bytes)
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in items):
        return np.array(items, dtype=np.int64)
    kinds = sorted({type(v).__name__ for v in items})
    raise TypeError(f"`{name}` must be all integers or all strings, got {kinds}.")


def ids_for_rows(ids: Any, m: np.ndarray, name: str = "ids") -> np.ndarray:
    """``ids`` (one per catalog row) picked at the catalog rows ``m``; refuses, naming
    ``name``, ids that do not cover every row."""
    a = as_ids(ids, name=name)
    m = np.asarray(m, np.int64)
    if m.size and int(m.max()) >= a.shape[0]:
        raise ValueError(
            f"`{name}` has {a.shape[0]} entries but the results hold catalog row "
            f"{int(m.max())}; give one id per catalog row."
        )
    return a[m]


def ids_digest(ids: np.ndarray | None) -> dict[str, Any] | None:
    """A short JSON-able fingerprint of (normalised) ids: kind, count and SHA-256."""
    if ids is None:
        return None
    kind = "int" if ids.dtype.kind == "i" else "str"
    h = hashlib.sha256(kind.encode())
    if kind == "int":
        h.update(np.ascontiguousarray(ids, "<i8").tobytes())
    else:  # UTF-8 with a length before each id: the same ids give the same digest
        for v in ids.tolist():  # whatever the width of the NumPy string dtype
            b = v.encode("utf-8")
            h.update(len(b).to_bytes(8, "little") + b)
    return {"kind": kind, "n": int(ids.size), "sha256": h.hexdigest()}


def _stored(ids: np.ndarray) -> tuple[np.ndarray, Any]:
    """(data, HDF5 dtype) of ids: int64, or fixed-width UTF-8 bytes."""
    if ids.dtype.kind == "i":
        return ids, np.int64
    data = np.char.encode(ids, "utf-8") if ids.size else np.zeros(0, "S1")
    width = max(1, data.dtype.itemsize)
    return data.astype(f"S{width}"), h5py.string_dtype("utf-8", length=width)


def write_ids(g: h5py.Group, ids: np.ndarray, **kw) -> None:
    """Store ids as ``index/id`` (int64, or fixed-width UTF-8 strings)."""
    data, dtype = _stored(ids)
    ds = g.create_dataset(ID_DATASET, shape=data.shape, dtype=dtype, **(kw if ids.size else {}))
    if data.size:
        # the bytes are UTF-8 already: written with the file's type, HDF5 converts nothing
        # (it has no conversion from NumPy's ASCII-flagged bytes to a UTF-8 string type)
        ds.id.write(h5py.h5s.ALL, h5py.h5s.ALL, data, mtype=ds.id.get_type())


def read_ids(g: h5py.Group) -> np.ndarray | None:
    """The group's ``index/id`` (int64 or ``str``), or None for a group without ids."""
    if ID_DATASET not in g:
        return None
    data = g[ID_DATASET][...]
    if data.dtype.kind == "S":
        return np.char.decode(data, "utf-8") if data.size else np.zeros(0, str)
    return data.astype(np.int64)


def table_columns_of(
    names: Sequence[str], ids: np.ndarray | None
) -> list[tuple[str, str | None, np.dtype]]:
    """``(column, dataset in the group or None, dtype)`` of the flat table, in order."""
    cols: list[tuple[str, str | None, np.dtype]] = [("m", "index/m", np.dtype(np.int64))]
    if ids is not None:
        cols.append(("id", ID_DATASET, _stored(ids)[0].dtype))
    for f in TABLE_FIELDS:
        cols.append((f, FIELDS[f].dataset(), np.dtype(FIELDS[f].dtype)))
    for name in names:
        for f in TARGET_FIELDS:
            cols.append((f"{name}_{f.name}", f.dataset(name), np.dtype(f.dtype)))
    return cols


def write_table(
    g: h5py.Group,
    names: Sequence[str],
    ids: np.ndarray | None,
    written: np.ndarray,
    status: np.ndarray,
    units: Mapping[str, str] | None = None,
    **kw,
) -> None:
    """Write ``<group>/table`` (and its astropy metadata) from the group's datasets:
    the rows with ``written`` != 0, in row order, with ``status`` (both (M,), as
    `jaxgrid.io.results.read_index` gives them) and the columns of
    `jaxgrid.io.results_to_table` (values bitwise equal). ``kw``: HDF5 filter."""
    from astropy.io.misc.hdf5 import meta_path
    from astropy.table import Table, meta

    written = np.asarray(written) != 0
    cols = table_columns_of(names, ids)
    dtype = np.dtype([(c, dt) for c, _, dt in cols])
    n = int(written.sum())
    chunks = (max(1, min(n, _BLOCK, 2**20 // dtype.itemsize)),) if n else None
    dset = g.create_dataset(
        TABLE_DATASET, shape=(n,), dtype=dtype, chunks=chunks, **(kw if n else {})
    )
    stored_ids = None if ids is None else _stored(ids)[0]
    pos = 0
    for start in range(0, written.size, _BLOCK):
        sl = slice(start, min(written.size, start + _BLOCK))
        keep = written[sl]
        k = int(keep.sum())
        if not k:
            continue
        block = np.empty(k, dtype)
        for col, ds, _ in cols:
            if col == "id":
                block[col] = stored_ids[sl][keep]
            elif col == "status":
                block[col] = status[sl][keep]
            else:
                block[col] = g[ds][sl][keep]
        dset[pos : pos + k] = block
        pos += k
    # the metadata astropy writes beside a table (column units, the table's meta)
    head = Table(np.zeros(0, dtype))
    head.meta["STATSFOR"] = ",".join(names)
    for name in names:
        unit = (units or {}).get(name)
        if unit:
            for f in TARGET_FIELDS:
                if f.target_unit:
                    head[f"{name}_{f.name}"].unit = unit
    lines = np.array([h.encode("utf-8") for h in meta.get_yaml_from_table(head)])
    g.create_dataset(meta_path(TABLE_DATASET), data=lines)
