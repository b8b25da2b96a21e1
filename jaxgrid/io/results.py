"""Crash-safe HDF5 output of batch fits: `GridFitHDF5Writer` and `read_fit_results`.

Layout of a result group (M = catalog rows, D = summarised targets)::

    configuration                      attribute: JSON of the run's settings
    configuration/ (group)             attribute ``json``: the same settings plus BESTA's
                                       keys (M, P, group, return_pdf_for_stats,
                                       stats_keys), where BESTA's readers look
    format                             attribute: "jaxgrid.fit_results/2"
    index/m (M,)                       object index
    index/id (M,)                      catalog ids (with ``ids=``): int64, or fixed-width
                                       UTF-8 strings (`read_fit_results` gives ``str``)
    index/written (M,) int8            0 not written, 1 ok, -1 flagged (no summaries)
    index/status (M,) int32            engine Status bit flags (see jaxgrid.Status)
    truncation/{level, n_before, n_after, mass_kept, mass_dropped, cut_weight,
                ess_before, ess_after} (M,)
    candidates/candidates, candidates/post_models   variable length per row
    stats/<target>/{bins, mean, std, map, median, lo68, hi68, nmodes, mass_in_bins[,
                    posts_target (M, K)]}
    stats/cov/{keys (D,), cov (M, D, D)}
    log_evidence, chi2_min, best (M,)
    table (written rows,)              the flat per-object table (compound dataset) and
    table.__table_column_meta__        its astropy metadata: ``Table.read(file,
                                       path="<group>/table")`` reads it without jaxgrid

Files written before format 2 called the written column ``index/status`` and the
flags ``index/flags``; `read_fit_results` and `read_index` return the new names for
both.

How nothing is lost
-------------------
HDF5 itself is not crash safe: a process killed while the library updates its
metadata, or a full disk, can leave a file that no longer opens. So the HDF5 file
is never written in place. While a run goes on, each chunk's results are appended
to a *journal* beside it (``<file>.<group>.journal``) as one framed record
(magic, length, CRC-32, then the chunk's arrays), made durable with ``fsync`` at
least every ``flush_every`` rows. A record whose frame or checksum is incomplete is
a torn tail: it is cut off when the journal is reopened, and its rows count as not
written. When the writer closes, the group is assembled from the journal into a new
file ``<file>.tmp-<pid>``, which then atomically replaces the file: a file holding
only this group is written afresh; one with other content is copied byte for byte
and only this group is replaced in the copy (links, references and dimension scales
elsewhere stay intact; the group's own extra attributes are kept). A kill at any
instant therefore leaves either the old file or the new one, and the journal;
``resume=True`` continues from the journal. Resuming a group assembled earlier
copies its rows into a new journal that appears, by rename, only once complete.
Once every row is written the journal is deleted. While a journal exists the file
needs about twice the result size on disk; both steps check the free space first
and raise `OSError` (ENOSPC) naming the path and the bytes needed.

A lock file ``<file>.lock`` (pid, host, process start time) keeps a second writer off
the same file even where HDF5 file locking is disabled; a lock whose process is gone
(same host) is taken over, contenders serialising on ``flock``. A symlinked output
is followed: lock, journal and replacement act on the file it names.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import glob
import io
import json
import logging
import os
import shutil
import socket
import struct
import time
import urllib.parse
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..core.schema import TARGET_STATS, TRUNCATION_FIELDS, hdf5_datasets
from ..core.status import is_bad
from .flat import (
    ID_DATASET,
    TABLE_DATASET,
    as_ids,
    ids_digest,
    read_ids,
    table_columns_of,
    write_ids,
    write_table,
)

__all__ = [
    "GridFitHDF5Writer",
    "GridFitStatsSpec",
    "OutputInUseError",
    "read_fit_results",
    "read_index",
    "journal_path",
    "pending_journal",
    "pending_note",
    "group_name",
    "check_output",
    "TRUNCATION_FIELDS",
    "STAT_FIELDS",
]

logger = logging.getLogger("jaxgrid")

FORMAT = "jaxgrid.fit_results/2"
#: per-target summaries (`jaxgrid.core.schema.TARGET_STATS`)
STAT_FIELDS = TARGET_STATS
_CANDIDATES = ("candidates/candidates", "candidates/post_models")
_FLAGS_HINT = (
    "output_hdf5_overwrite=True (CLI: --overwrite) to replace it, resume=True "
    "(CLI: --resume) to continue it, or another output_hdf5_group"
)


class OutputInUseError(RuntimeError):
    """Another live process holds the output file's lock."""


def read_index(g: h5py.Group) -> tuple[np.ndarray, np.ndarray]:
    """``(written, status)`` of a result group: written 0/1/-1 per row and the engine's
    Status flags, from format 2 (``index/written``, ``index/status``) or older files
    (``index/status`` = written, ``index/flags`` = flags)."""
    if "index/written" in g:
        return g["index/written"][...], g["index/status"][...]
    return g["index/status"][...], g["index/flags"][...]


def group_name(group: str) -> str:
    """``group`` as an absolute HDF5 path; the root itself is refused (it holds the
    file's other groups, which a result group must not replace)."""
    if not isinstance(group, str):
        raise TypeError(f"`output_hdf5_group` must be a string, got {group!r}.")
    name = "/" + "/".join(part for part in group.split("/") if part)
    if name == "/":
        raise ValueError(
            f"`output_hdf5_group` {group!r} is the file's root; name a group below it, "
            "e.g. '/fit_batch'."
        )
    return name


def journal_path(path: str | Path, group: str) -> Path:
    """The journal of ``group`` beside ``path`` (exists while a run is unfinished). The
    group name is percent-encoded, so that no two groups share a journal."""
    path = Path(path)
    slug = urllib.parse.quote(group_name(group).strip("/"), safe="")
    return path.with_name(f"{path.name}.{slug}.journal")


def _real(path: str | Path) -> Path:
    """The file a (possibly symlinked) output path names: the lock, the journal and the
    atomic replacement all act on it, not on the link."""
    return Path(os.path.realpath(path))


def pending_journal(path: str | Path, group: str) -> Path | None:
    """The journal of an unfinished run of ``group`` beside ``path``, or None."""
    j = journal_path(_real(path), group)
    return j if j.exists() else None


# ------------------------------------------------------------------------------------ lock
def _start_time(pid: int) -> str | None:
    """The process start time (clock ticks since boot) from /proc, or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    now = _start_time(pid)
    return start is None or now is None or now == start  # a reused pid is not the owner


class _OutputLock:
    """An exclusive lock file of the library's own holding the owner's pid, host and
    process start time (independent of HDF5 file locking)."""

    def __init__(self, path: Path):
        self.path = path.with_name(path.name + ".lock")
        self.held = False

    def _owner(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text() or "{}")
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    @staticmethod
    def _stale(owner: dict[str, Any]) -> bool:
        """The owner is a process of this host that is gone (a lock from another host
        cannot be checked from here, and an unreadable one is nobody's we know)."""
        return (
            owner.get("host") == socket.gethostname()
            and isinstance(owner.get("pid"), int)
            and not _alive(owner["pid"], owner.get("start"))
        )

    def _in_use(self, owner: dict[str, Any]) -> OutputInUseError:
        if owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
            who = "another writer of this process (close it first)"
        elif owner:
            who = f"pid {owner.get('pid')} on host {owner.get('host')} since {owner.get('since')}"
        else:
            who = "an unknown process"
        return OutputInUseError(
            f"{self.path.with_suffix('')} is being written by {who} (lock file {self.path}); "
            "wait for that run to end, or, if it is gone, delete the lock file."
        )

    def refuse_if_held(self) -> None:
        """Raise `OutputInUseError` if a live (or unverifiable) writer holds the lock."""
        owner = self._owner()
        if owner is not None and not self._stale(owner):
            raise self._in_use(owner)

    def acquire(self) -> _OutputLock:
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "start": _start_time(os.getpid()),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        # the lock appears with its content or not at all: a private file, hard-linked
        # to the lock name (link(2) fails if the name exists; atomic, NFS included)
        mine = self.path.with_name(f"{self.path.name}.{me['host']}.{me['pid']}")
        for left in glob.glob(glob.escape(f"{self.path}.{me['host']}.") + "*"):
            pid = left.rsplit(".", 1)[1]  # a private file of a process killed right here
            if pid.isdigit() and not _alive(int(pid), None):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(left)
        try:
            try:
                mine.write_text(json.dumps(me))
            except OSError as err:
                if err.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise _no_space(self.path, 4096, cause=err.strerror) from err
                raise
            return self._take(me, mine)
        finally:
            with contextlib.suppress(FileNotFoundError):
                mine.unlink()

    def _take(self, me: dict[str, Any], mine: Path) -> _OutputLock:
        for _ in range(3):
            try:
                os.link(mine, self.path)
            except FileExistsError:
                owner = self._owner()
                if owner is None:
                    continue  # released meanwhile
                if not self._stale(owner):
                    raise self._in_use(owner) from None
                self._remove_stale(owner)
                continue
            self.held = True
            self._me = me
            return self
        raise OutputInUseError(f"could not take the lock {self.path}; try again.")

    def _remove_stale(self, owner: dict[str, Any]) -> None:
        """Delete the lock file if it still is the stale ``owner``'s. Contenders for a
        stale lock serialise on ``flock`` of the lock file's inode, and each deletes only
        the inode it holds: none can delete a lock that another has just taken."""
        try:
            fd = os.open(self.path, os.O_RDWR)
        except PermissionError:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            with contextlib.suppress(OSError):  # no flock (some network file systems)
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                return
            try:
                still = json.loads(os.pread(fd, 1 << 16, 0) or b"{}") == owner
            except ValueError:
                still = False
            if same and still:
                os.unlink(self.path)
                logger.info("jaxgrid: took over the stale lock %s (%s).", self.path, owner)
        finally:
            os.close(fd)  # releases the flock

    def release(self) -> None:
        if self.held and self._owner() == self._me:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self.held = False


# --------------------------------------------------------------------------------- journal
_MAGIC = b"JGJ1"
_FRAME = struct.Struct("<4sBQI")  # magic, kind, payload length, CRC-32 of the payload
_HEADER, _CHUNK = 1, 2


def _no_space(
    path: Path, needed: int, free: int | None = None, cause: str = "", later: int = 0
) -> OSError:
    have = f", {free:,} free" if free is not None else ""
    why = f" ({cause})" if cause else ""
    more = (
        f"; assembling the file when the run ends needs about {later:,} bytes more" if later else ""
    )
    return OSError(
        errno.ENOSPC,
        f"not enough disk space for {path}: about {needed:,} bytes needed{have}{why}{more}. "
        "Free space (or move the output), then resume (resume=True / --resume): "
        "nothing committed is lost.",
        str(path),
    )


def _check_space(path: Path, needed: int, later: int = 0) -> None:
    free = shutil.disk_usage(path.parent).free
    if free < needed:
        raise _no_space(path, needed, free, later=later)


class _Journal:
    """Append-only framed records; a torn tail is cut when the journal is opened."""

    def __init__(self, path: Path, header: dict[str, Any], fd: int, size: int):
        self.path, self.header, self._fd, self.size = path, header, fd, size
        self._unsynced = 0
        self.later = 0  # bytes the assembly will need at the end (for error messages)

    @staticmethod
    def _frame(kind: int, payload: bytes) -> bytes:
        return _FRAME.pack(_MAGIC, kind, len(payload), zlib.crc32(payload)) + payload

    @classmethod
    def create(cls, path: Path, header: dict[str, Any], fill=None) -> _Journal:
        """A new journal: its header, then what ``fill(journal)`` appends (the rows of
        an earlier group being continued), written under a temporary name and renamed
        into place once durable — a kill meanwhile leaves no journal, only the group."""
        data = cls._frame(_HEADER, json.dumps(header, sort_keys=True).encode())
        tmp = path.with_name(path.name + ".new")
        _check_space(path, len(data) + 2**16)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
        except OSError as err:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise _no_space(path, len(data), cause=err.strerror) from err
            raise
        journal = cls(tmp, header, os.open(tmp, os.O_RDWR | os.O_APPEND), len(data))
        try:
            if fill is not None:
                fill(journal)
            journal.sync()
            os.replace(tmp, path)
        except BaseException:
            journal.close()
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        journal.path = path
        _fsync_dir(path.parent)
        return journal

    @classmethod
    def open(cls, path: Path) -> _Journal:
        """Reopen a journal for appending; its torn tail (if any) is cut off."""
        with open(path, "rb") as f:
            records = list(_scan(f))
        if not records or records[0][0] != _HEADER:
            raise ValueError(
                f"{path} is not a jaxgrid results journal (or its header is damaged); "
                "delete it and rerun with output_hdf5_overwrite=True (CLI: --overwrite)."
            )
        end = records[-1][2]
        if end < path.stat().st_size:
            logger.info("jaxgrid: cut a torn record off %s at byte %d.", path, end)
            os.truncate(path, end)
        header = json.loads(records[0][1])
        return cls(path, header, os.open(path, os.O_RDWR | os.O_APPEND), end)

    def append(self, payload: bytes, sync: bool) -> None:
        data = self._frame(_CHUNK, payload)
        _check_space(self.path, len(data) + 2**16, later=self.later)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            if sync:
                os.fsync(self._fd)
        except OSError as err:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self.size)  # the record never happened
            if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise _no_space(self.path, len(data), cause=err.strerror, later=self.later) from err
            raise
        self.size += len(data)

    def sync(self) -> None:
        os.fsync(self._fd)

    def records(self) -> Iterator[dict[str, np.ndarray]]:
        """The chunk records, in commit order, as dicts of arrays."""
        with open(self.path, "rb") as f:
            for kind, payload, _ in _scan(f):
                if kind == _CHUNK:
                    yield _unpack(payload)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _scan(f) -> Iterator[tuple[int, bytes, int]]:
    """``(kind, payload, end offset)`` of each complete record; stops at a torn one."""
    while True:
        head = f.read(_FRAME.size)
        if len(head) < _FRAME.size:
            return
        magic, kind, length, crc = _FRAME.unpack(head)
        if magic != _MAGIC:
            return
        payload = f.read(length)
        if len(payload) < length or zlib.crc32(payload) != crc:
            return
        yield kind, payload, f.tell()


def _pack(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k.replace("/", ":"): v for k, v in arrays.items()})
    return buf.getvalue()


def _unpack(payload: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(payload), allow_pickle=False) as z:
        return {k.replace(":", "/"): z[k] for k in z.files}


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ---------------------------------------------------------------------------------- checks
def check_output(path: str | Path, group: str, overwrite: bool, resume: bool) -> None:
    """Refuse an output that cannot be used, before any work: ``resume`` with
    ``overwrite``, the root group, a directory, a missing or read-only folder, an
    unreadable existing file, a live writer's lock, an existing group or unfinished
    journal without ``overwrite``/``resume``."""
    if overwrite and resume:
        raise ValueError(
            "choose one of output_hdf5_overwrite=True (CLI: --overwrite, start again) and "
            "resume=True (CLI: --resume, continue)."
        )
    group = group_name(group)
    path = _real(path)
    if path.is_dir():
        raise IsADirectoryError(
            errno.EISDIR, f"the output {path} is a directory; give a file name", str(path)
        )
    if not path.parent.is_dir():
        raise FileNotFoundError(
            errno.ENOENT, f"the output folder {path.parent} does not exist", str(path.parent)
        )
    if not os.access(path.parent, os.W_OK):
        raise PermissionError(
            errno.EACCES, f"the output folder {path.parent} is not writable", str(path.parent)
        )
    _OutputLock(path).refuse_if_held()
    if path.exists():
        try:
            with h5py.File(path, "r") as f:
                exists = group in f
        except OSError as err:
            raise OSError(
                errno.EIO,
                f"the existing output {path} cannot be read as HDF5 ({err}); move it away "
                "or choose another output path",
                str(path),
            ) from None
    else:
        exists = False
    if overwrite or resume:
        return
    if journal_path(path, group).exists():
        raise ValueError(
            f"{path}: an unfinished run of group {group!r} left its journal "
            f"{journal_path(path, group)}; pass {_FLAGS_HINT}."
        )
    if exists:
        raise ValueError(f"{path} already has group {group!r}; pass {_FLAGS_HINT}.")


# ---------------------------------------------------------------------------------- writer
@dataclasses.dataclass(frozen=True)
class GridFitStatsSpec:
    """One summarised target of a result group (BESTA's name): its ``key`` (the group
    ``stats/<key>``) and bin ``bins`` (K+1 edges). `GridFitHDF5Writer` takes a list
    of them as ``stats_targets``."""

    key: str
    bins: Any

    def __post_init__(self):
        if not isinstance(self.key, str) or not self.key or "/" in self.key:
            raise ValueError(
                f"GridFitStatsSpec: `key` must be a name without '/', got {self.key!r}."
            )
        bins = np.asarray(self.bins, dtype=np.float64)
        if bins.ndim != 1 or bins.size < 2 or not np.all(np.diff(bins) > 0):
            raise ValueError(
                f"GridFitStatsSpec({self.key!r}): `bins` must be >= 2 increasing edges."
            )
        object.__setattr__(self, "bins", bins)


class GridFitHDF5Writer:
    """Writes batch-fit results into an HDF5 group, chunk by chunk, crash-safely.

    Args:
        path: the HDF5 file (created if needed; its other groups are kept). A
            symlink is followed: the file it names is written.
        group: the group to write (not the root).
        n_rows: catalog length M.
        configuration: JSON-able dict of the run's settings (stored as the
            group's ``configuration`` attribute; ``resume`` requires equality).
        stats_targets: names of summarised targets; ``stats_bins`` their edges (or
            `GridFitStatsSpec` objects, BESTA's form, carrying both).
        return_pdf: also store ``posts_target`` (M, K) per target.
        overwrite: replace an existing group. resume: continue an existing group or
            unfinished journal with the same configuration, rows, targets, bins and
            ``return_pdf`` (``ValueError`` otherwise).
        compression: HDF5 filter of the fixed-size datasets (``compression_opts`` its level).
        ids: optional (M,) catalog ids (integers or strings; `jaxgrid.io.flat.as_ids`),
            stored as ``index/id`` and in the flat table; a resume must give the same
            ids (or none, if the run had none), else ``ValueError``.
        units: optional ``{target: unit}`` for the flat table's summary columns.
        flush_every: ``fsync`` the journal after at least this many rows (every chunk
            is written to the journal at once: a killed process loses nothing written;
            this bounds what a power loss can take).

    Use as a context manager; ``write(rows, results)`` commits a chunk (rows whose
    ``status`` has a `BAD_STATUS` flag are written -1, "flagged"). The HDF5 group is
    (re)assembled when the writer closes normally; closing on an exception leaves
    the file as it was and the journal for a resume. See the module docstring.
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
        ids: Any = None,
        units: dict[str, str] | None = None,
    ):
        check_output(path, group, overwrite, resume)
        if stats_targets and all(isinstance(t, GridFitStatsSpec) for t in stats_targets):
            stats_targets, stats_bins = (
                [t.key for t in stats_targets],
                [t.bins for t in stats_targets],
            )
        self.ids = as_ids(ids, int(n_rows))
        self.units = dict(units) if isinstance(units, dict) else None
        self.path, self.group_name, self.n_rows = _real(path), group_name(group), int(n_rows)
        self.stats_targets = list(stats_targets)
        self.stats_bins = [np.asarray(b, np.float64) for b in stats_bins]
        self.return_pdf = bool(return_pdf)
        self.compression, self.compression_opts = compression, compression_opts
        self.flush_every = max(1, int(flush_every))
        self._fields = hdf5_datasets(self.stats_targets, self.stats_bins, self.return_pdf)
        self._since_sync = 0
        self._config_text = json.dumps(configuration, sort_keys=True)
        self._header = {
            "format": FORMAT,
            "group": self.group_name,
            "configuration": self._config_text,
            "n_rows": self.n_rows,
            "stats_targets": self.stats_targets,
            "stats_bins": [b.tolist() for b in self.stats_bins],
            "return_pdf": self.return_pdf,
            "ids": ids_digest(self.ids),  # absent (None) in journals from before ids
        }
        self._lock = _OutputLock(self.path).acquire()
        self._journal = None
        self._continue_group = False  # the group is imported into a journal at the first write
        self._closed = False
        self._appended = 0  # rows committed by this writer
        try:
            # leftovers of a killed assembly or import (we hold the lock)
            jpath = journal_path(self.path, self.group_name)
            for stale in glob.glob(glob.escape(str(self.path)) + ".tmp-*"):
                Path(stale).unlink()
            with contextlib.suppress(FileNotFoundError):
                jpath.with_name(jpath.name + ".new").unlink()
            self._written = np.zeros(self.n_rows, np.int8)
            self._open_journal(jpath, resume)
        except BaseException:
            if self._journal is not None:
                self._journal.close()
            self._lock.release()
            raise

    def _open_journal(self, jpath: Path, resume: bool) -> None:
        if jpath.exists() and resume:
            self._journal = _Journal.open(jpath)
            self._same_header(self._journal.header, jpath)
            for rec in self._journal.records():
                self._written[rec["rows"]] = rec["index/written"]
            return
        if resume and self.path.exists():
            with h5py.File(self.path, "r") as f:
                if self.group_name in f:
                    self._check_group(f[self.group_name])
                    self._written[:] = read_index(f[self.group_name])[0]
                    # nothing is copied until a row is written: resuming a complete
                    # group changes nothing
                    self._continue_group = True
                    return
        self._journal = _Journal.create(jpath, self._header)

    def _same_header(self, stored: dict[str, Any], where: Path) -> None:
        _same_configuration(
            stored.get("configuration", ""), self._config_text, self.group_name, where
        )
        self._same_ids(stored.get("ids") == self._header["ids"], stored.get("ids"), where)
        keys = [k for k in self._header if k != "format" and stored.get(k) != self._header[k]]
        if keys:
            raise ValueError(
                f"resume: {where} was written for other {', '.join(keys)} than this writer's "
                f"({', '.join(f'{k}={self._header[k]!r}' for k in keys)[:300]}); resume with "
                "the same ones, or overwrite (output_hdf5_overwrite=True, CLI: --overwrite)."
            )

    def _check_group(self, g: h5py.Group) -> None:
        """An existing group can be continued: same configuration, every dataset there,
        ``n_rows`` rows."""
        _same_configuration(
            g.attrs.get("configuration", ""), self._config_text, self.group_name, self.path
        )
        new = "index/written" in g
        for name in [name for name, *_ in self._fields] + list(_CANDIDATES):
            stored = name
            if not new and name in ("index/written", "index/status"):
                stored = {"index/written": "index/status", "index/status": "index/flags"}[name]
            if stored not in g:
                raise ValueError(
                    f"resume: group {self.group_name!r} in {self.path} lacks the dataset "
                    f"{stored!r} (damaged, or not written by jaxgrid); rerun with "
                    "output_hdf5_overwrite=True (CLI: --overwrite)."
                )
        if "index/m" in g and g["index/m"].shape != (self.n_rows,):
            raise ValueError(
                f"resume: group {self.group_name!r} in {self.path} has "
                f"{g['index/m'].shape[0]} rows, this writer {self.n_rows}; resume with the "
                "same catalog, or overwrite (output_hdf5_overwrite=True, CLI: --overwrite)."
            )
        stored = read_ids(g)
        same = (stored is None and self.ids is None) or (
            stored is not None
            and self.ids is not None
            and stored.dtype.kind == self.ids.dtype.kind
            and np.array_equal(stored, self.ids)
        )
        self._same_ids(same, ids_digest(stored), self.path)

    def _same_ids(self, same: bool, stored: dict[str, Any] | None, where: Path) -> None:
        """Refuse a resume whose ids differ from the run's (or are given / missing)."""
        if same:
            return
        mine = self._header["ids"]

        def say(d):
            if d is None:
                return "no ids"
            return f"{d['n']} {d['kind']} ids (sha256 {d['sha256'][:12]})"

        raise ValueError(
            f"resume: group {self.group_name!r} ({where}) was written with {say(stored)}, "
            f"this run has {say(mine)}; resume with the same ids (CLI: the same --id-col), "
            "or overwrite (output_hdf5_overwrite=True, CLI: --overwrite)."
        )

    def _journal_for_writing(self) -> _Journal:
        if self._closed:
            raise RuntimeError(
                f"GridFitHDF5Writer for {self.path} ({self.group_name}) is closed; open a new "
                "one with resume=True to write more rows."
            )
        if self._journal is None:  # continuing a group: its rows go into the new journal
            jpath = journal_path(self.path, self.group_name)
            with h5py.File(self.path, "r") as f:
                g = f[self.group_name]
                self._journal = _Journal.create(
                    jpath, self._header, fill=lambda j: self._import(g, j)
                )
        return self._journal

    def _import(self, g: h5py.Group, journal: _Journal) -> None:
        """The written rows of an earlier group as journal records."""
        names = [name for name, *_ in self._fields]
        written, status = read_index(g)
        rows = np.flatnonzero(written != 0)
        for s in range(0, rows.size, 4096):
            r = rows[s : s + 4096]
            arrays = {"rows": r, "index/written": written[r], "index/status": status[r]}
            for name in names[2:]:
                arrays[name] = g[name][r]
            idx, w = g[_CANDIDATES[0]][r], g[_CANDIDATES[1]][r]
            arrays["cand_off"] = np.concatenate([[0], np.cumsum([len(a) for a in idx])])
            arrays["cand_idx"] = np.concatenate([np.zeros(0, np.int64), *idx]).astype(np.int64)
            arrays["cand_w"] = np.concatenate([np.zeros(0), *w]).astype(np.float64)
            journal.append(_pack(arrays), sync=False)

    # ------------------------------------------------------------------ API
    def written(self) -> np.ndarray:
        """(M,) int8: 1 written, -1 flagged, 0 not yet written (this run and earlier)."""
        return self._written.copy()

    status = written  # the name before format 2

    def _rows(self, rows: Any) -> np.ndarray:
        r = np.asarray(rows)
        if r.ndim != 1 or (r.size and not np.issubdtype(r.dtype, np.integer)):
            raise TypeError(
                f"`rows` must be a 1-D array of integer catalog rows, got {r.dtype} {r.shape}."
            )
        r = r.astype(np.int64)
        if r.size and (r[0] < 0 or r[-1] >= self.n_rows or np.any(np.diff(r) <= 0)):
            raise ValueError(
                f"`rows` must be strictly increasing catalog rows in [0, {self.n_rows}) "
                f"(sorted, no repeats); got {r[:8].tolist()}{' ...' if r.size > 8 else ''}."
            )
        return r

    def write(self, rows: np.ndarray, res: dict[str, Any]) -> None:
        """Commit results for catalog ``rows`` (strictly increasing ints). ``res``
        holds host arrays keyed like the per-chunk results of
        ``fit_batch(return_mode="chunks")``: candidate lists come flat as
        ``candidate_idx``/``candidate_w`` with ``candidate_offsets`` (rows + 1): row
        ``i``'s are ``[off[i]:off[i+1]]`` (or, without offsets, padded (rows, width)
        arrays of which the first ``n_after`` count)."""
        rows = self._rows(rows)
        if rows.size == 0:
            return
        # a row without summaries: a `BAD_STATUS` flag (or ``bad``, from older callers)
        bad = is_bad(np.asarray(res["status"])) | np.asarray(res.get("bad", False), bool)
        arrays = {
            "rows": rows,
            "index/written": np.where(bad, -1, 1).astype(np.int8),
            "index/status": np.asarray(res["status"], np.int32),
        }
        for f in TRUNCATION_FIELDS:
            arrays[f"truncation/{f}"] = res[f]
        for j, name in enumerate(self.stats_targets):
            for f in STAT_FIELDS:
                if f == "mass_in_bins" and f not in res:  # optional for a writer's caller
                    arrays[f"stats/{name}/{f}"] = np.full(rows.size, np.nan)
                    continue
                arrays[f"stats/{name}/{f}"] = np.asarray(res[f])[:, j]
            if self.return_pdf:
                arrays[f"stats/{name}/posts_target"] = res["pdf"][j]
        if self.stats_targets:
            arrays["stats/cov/cov"] = res["cov"]
        for f in ("log_evidence", "chi2_min", "best"):
            arrays[f] = res[f]
        idx = np.asarray(res["candidate_idx"], dtype=np.int64)
        w = np.asarray(res["candidate_w"], dtype=np.float64)
        if "candidate_offsets" in res:
            off = np.asarray(res["candidate_offsets"], np.int64)
        else:  # padded (rows, width) lists, the first n_after of each row kept
            k = np.asarray(res["n_after"], np.int64)
            keep = np.arange(idx.shape[1])[None, :] < k[:, None]
            idx, w = idx[keep], w[keep]
            off = np.concatenate([[0], np.cumsum(k)])
        if (
            off.shape != (rows.size + 1,)
            or off[0] != 0
            or np.any(np.diff(off) < 0)
            or off[-1] != idx.size
            or w.shape != idx.shape
        ):
            raise ValueError(
                f"candidate lists: `candidate_offsets` must be {rows.size + 1} non-decreasing "
                f"offsets from 0 to len(candidate_idx) ({idx.size}), and `candidate_w` as long "
                f"as `candidate_idx`; got offsets {off.shape}, weights {w.shape}."
            )
        arrays["cand_idx"], arrays["cand_w"], arrays["cand_off"] = idx.ravel(), w.ravel(), off
        for name, dtype, _, shape in self._fields:
            arrays[name] = np.asarray(arrays[name], dtype).reshape((rows.size, *shape))
        self._append(rows, arrays)

    def _append(self, rows: np.ndarray, arrays: dict[str, np.ndarray]) -> None:
        journal = self._journal_for_writing()
        journal.later = journal.size + self._group_bytes()  # named if the disk fills
        self._since_sync += rows.size
        sync = self._since_sync >= self.flush_every
        journal.append(_pack(arrays), sync)
        if sync:
            self._since_sync = 0
        self._written[rows] = arrays["index/written"]
        self._appended += rows.size

    def _sync(self) -> None:
        if self._journal is not None:
            self._journal.sync()
        self._since_sync = 0

    def flush(self) -> None:
        """Make every committed chunk durable (``fsync`` the journal)."""
        self._sync()

    def close(self, raise_errors: bool = True) -> None:
        """Assemble the group into the file, delete the journal once every row is
        written, release the lock. With ``raise_errors=False`` (the writer closing on
        another error, e.g. Ctrl-C) a failed assembly is logged, and a writer that
        committed nothing leaves the file as it was (an overwrite interrupted before its
        first chunk does not replace the old group); the journal keeps every committed
        chunk for a resume."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._journal is None:
                return  # a group continued without a new row: nothing changed
            self._sync()
            if not raise_errors and not self._appended:
                return
            self._assemble()
            if (self._written != 0).all():
                self._journal.close()
                self._journal.path.unlink()
                _fsync_dir(self.path.parent)
        except Exception as err:
            if raise_errors:
                raise
            logger.warning(
                "jaxgrid: %s not updated (%s); the results so far are kept in %s: resume "
                "(resume=True / --resume) to finish.",
                self.path,
                err,
                self._journal.path,
            )
        finally:
            if self._journal is not None:
                self._journal.close()
            self._lock.release()

    def __enter__(self) -> GridFitHDF5Writer:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(raise_errors=exc_type is None)

    def _besta_configuration(self) -> str:
        """BESTA's ``configuration/json``: the settings with BESTA's default keys."""
        cfg = json.loads(self._config_text)
        grid = cfg.get("grid") if isinstance(cfg.get("grid"), dict) else {}
        names = grid.get("observable_names")
        cfg.setdefault("M", self.n_rows)
        cfg.setdefault("P", len(names) if isinstance(names, list) else None)
        cfg.setdefault("group", self.group_name)
        cfg.setdefault("return_pdf_for_stats", self.return_pdf)
        cfg.setdefault("stats_keys", self.stats_targets or None)
        return json.dumps(cfg, ensure_ascii=True)

    # ------------------------------------------------------------- assembly
    def _existing(self) -> tuple[bool, dict[str, Any]]:
        """(whether the file holds anything but this group, the group's own attributes
        other than ours) of the current file."""
        if not self.path.exists():
            return False, {}
        with h5py.File(self.path, "r") as f:
            attrs = {}
            if self.group_name in f and isinstance(f[self.group_name], h5py.Group):
                attrs = {
                    k: v
                    for k, v in f[self.group_name].attrs.items()
                    if k not in ("configuration", "format")
                }
            node, others = f, False
            for part in self.group_name.strip("/").split("/"):
                others |= len(node.attrs) > 0 or any(k != part for k in node)
                if part not in node or not isinstance(node[part], h5py.Group):
                    others |= len(node) > 0
                    break
                node = node[part]
        return others, attrs

    def _group_bytes(self) -> int:
        """About the size of the assembled group (uncompressed), plus a margin."""
        row_bytes = sum(
            np.dtype(dt).itemsize * int(np.prod(shape, dtype=np.int64))
            for _, dt, _, shape in self._fields
        )
        # the flat <group>/table repeats the per-object columns (one compound row each)
        table = np.dtype([(c, dt) for c, _, dt in table_columns_of(self.stats_targets, self.ids)])
        return self.n_rows * (row_bytes + table.itemsize + 64) + 2**20

    def _assemble(self) -> None:
        others, attrs = self._existing()
        # a file with other content is copied byte for byte (links, references and
        # dimension scales intact) and only this group is replaced in the copy
        other = self.path.stat().st_size if others else 0
        needed = self._journal.size + self._group_bytes() + other
        tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
        _check_space(tmp, needed)
        try:
            if others:
                shutil.copyfile(self.path, tmp)
            with h5py.File(
                tmp, "r+" if others else "w", rdcc_nbytes=64 * 2**20, rdcc_nslots=10007
            ) as out:
                if self.group_name in out:
                    del out[self.group_name]
                g = self._create(out)
                for k, v in attrs.items():
                    g.attrs[k] = v
                for rec in self._journal.records():
                    self._replay(g, rec)
                self._write_table(g)
            if self.path.exists():
                shutil.copymode(self.path, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            _fsync_dir(self.path.parent)
        except BaseException as err:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise _no_space(self.path, needed, cause=str(err)) from err
            raise

    def _create(self, f: h5py.File) -> h5py.Group:
        g = f.require_group(self.group_name)
        g.attrs["configuration"] = self._config_text
        g.attrs["format"] = FORMAT
        g.create_group("configuration").attrs["json"] = self._besta_configuration()
        m = self.n_rows
        kw = {}
        if self.compression and m > 0:  # an empty dataset cannot be chunked
            kw = {"compression": self.compression, "compression_opts": self.compression_opts}
        g.create_dataset("index/m", data=np.arange(m, dtype=np.int64), **kw)
        if self.ids is not None:
            write_ids(g, self.ids, **kw)
        for name, dtype, fill, shape in self._fields:
            # chunks of at most 4096 rows and ~1 MiB (a wide PDF row is kilobytes)
            row_bytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            chunk_rows = max(1, min(m, 4096, 2**20 // max(row_bytes, 1)))
            g.create_dataset(
                name,
                shape=(m, *shape),
                dtype=dtype,
                fillvalue=fill,
                chunks=(chunk_rows, *shape) if m > 0 else None,
                **kw,
            )
        g.create_dataset(_CANDIDATES[0], shape=(m,), dtype=h5py.vlen_dtype(np.dtype(np.int64)))
        g.create_dataset(_CANDIDATES[1], shape=(m,), dtype=h5py.vlen_dtype(np.dtype(np.float64)))
        for name, edges in zip(self.stats_targets, self.stats_bins, strict=True):
            g.create_dataset(f"stats/{name}/bins", data=edges)
        if self.stats_targets:
            g.create_dataset("stats/cov/keys", data=np.array(self.stats_targets, dtype="S"))
        return g

    def _write_table(self, g: h5py.Group) -> None:
        """The flat per-object table of the assembled rows (`jaxgrid.io.flat`)."""
        kw = {}
        if self.compression:
            kw = {"compression": self.compression, "compression_opts": self.compression_opts}
        written, status = read_index(g)
        write_table(g, self.stats_targets, self.ids, written, status, self.units, **kw)

    def _replay(self, g: h5py.Group, rec: dict[str, np.ndarray]) -> None:
        rows = rec["rows"]
        sel = _selection(rows)
        for name, *_ in self._fields:
            g[name][sel] = rec[name]
        off = rec["cand_off"].tolist()
        cands = np.empty(rows.size, dtype=object)
        posts = np.empty(rows.size, dtype=object)
        idx, w = rec["cand_idx"], rec["cand_w"]
        for i in range(rows.size):
            cands[i], posts[i] = idx[off[i] : off[i + 1]], w[off[i] : off[i + 1]]
        # write_direct: h5py's __setitem__ mis-broadcasts equal-length vlen rows
        g[_CANDIDATES[0]].write_direct(cands, dest_sel=np.s_[sel])
        g[_CANDIDATES[1]].write_direct(posts, dest_sel=np.s_[sel])


def _same_configuration(stored: str, current: str, group: str, where: Path) -> None:
    if stored == current:
        return
    try:
        a, b = json.loads(stored), json.loads(current)
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    except (TypeError, ValueError):
        keys = ["(unreadable stored configuration)"]
    raise ValueError(
        f"resume: group {group!r} ({where}) was written with a different configuration "
        f"(differs in: {', '.join(keys)}); resume with the same grid, catalog, likelihood, "
        "prior and fit settings (chunk size included), or pass output_hdf5_overwrite=True "
        "(CLI: --overwrite)."
    )


def _selection(rows: np.ndarray):
    """A contiguous slice when possible (fast in h5py), else the sorted index array."""
    if rows.size and rows[-1] - rows[0] + 1 == rows.size:
        return slice(int(rows[0]), int(rows[-1]) + 1)
    return rows


def pending_note(path: str | Path, group: str) -> str:
    """A sentence about an unfinished run's journal of ``group`` beside ``path``, or ""."""
    j = pending_journal(path, group)
    if j is None:
        return ""
    return (
        f"an unfinished run of {group_name(group)!r} keeps its newer results in the journal "
        f"{j}: resume it (resume=True / --resume) to write them into {path}"
    )


def read_fit_results(path: str | Path, group: str = "/fit_batch") -> dict[str, Any]:
    """Read a whole result group back into a dict of NumPy arrays keyed by dataset
    path (format-2 names also for older files: ``index/written``, ``index/status``;
    ``index/id``, when stored, as int64 or ``str``; the flat ``table`` is left out:
    read it with `results_to_table` or astropy)."""
    out: dict[str, Any] = {}
    note = pending_note(path, group)
    if not Path(path).exists():
        raise FileNotFoundError(
            errno.ENOENT,
            f"read_fit_results: no file {path}" + (f"; {note}" if note else ""),
            str(path),
        )
    if note:
        logger.warning("jaxgrid: %s: %s.", path, note)
    with h5py.File(path, "r") as f:
        if group not in f:
            raise KeyError(
                f"read_fit_results: {path} has no group {group!r}"
                + (f"; {note}" if note else "")
                + "."
            )
        g = f[group]
        out["configuration"] = json.loads(g.attrs["configuration"])

        def visit(name, obj):
            # the flat table repeats the other datasets, for readers without jaxgrid
            if isinstance(obj, h5py.Dataset) and not name.startswith(TABLE_DATASET):
                out[name] = obj[...]

        g.visititems(visit)
        out["index/written"], out["index/status"] = read_index(g)
        out.pop("index/flags", None)
        if ID_DATASET in g:
            out[ID_DATASET] = read_ids(g)
    return out
