"""Reuse across runs: copy forward last night's ok answers whose request and document are unchanged.

``--reuse PATH`` (repeatable, globs such as ``out/*``; ``reuse = [...]`` in a job
file) names earlier output folders. Their journals (every outcome, whatever was
compacted) give, per request, the newest ``ok`` answer and the document metadata
it was asked under. A row of tonight's manifest is a *candidate* when an earlier
answer has its ``reuse_key`` (the request_id's hash with the signed URL parameters
of ``[reuse] ignore_query`` left out: the model, system message, parameters, schema
and message content must be the same) and, with ``--max-age``, is young enough.

A candidate is reused, with no chat request, only when its document is unchanged
(:func:`unchanged`): tonight's HEAD and the stored metadata share a strong ETag;
or, when either has no strong ETag (none, or a weak ``W/`` one), both have a
Last-Modified and a size and they are equal. No metadata tonight (HEAD failed or
timed out) or none stored means "ask again". Failed rows are never reused.

A reused row carries the answer, its token and cost columns, ``http_status``,
``response_id``, ``gateway_request_id`` and the original ``started_at`` /
``completed_at`` (so ``--max-age`` counts from when it was really asked, however
many nights it was copied); ``attempts`` is 0, ``latency_ms`` null, the document
columns are tonight's, ``run_id`` is tonight's and ``reused_from`` the run that
paid for it. Its tokens and cost are not spent tonight: ``_run.json`` counts them
as ``reused`` and ``cost_saved_usd``.

Memory: the index holds 4 int64 numbers per earlier answer (32 bytes; :class:`ReuseIndex`), never the
answers; they are read back from the earlier journals in batches of
:data:`BATCH` decisions, row group by row group, when written (:class:`ReuseSink`).
"""

from __future__ import annotations

import glob
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .arrowutil import filled, numeric, string_scalar, to_numpy
from .docmeta import DocMeta
from .errors import StorageError, UsageError
from .journal import is_log, iter_log, journal_files
from .records import Outcome, Row, Status, copied_outcome
from .schema import JOURNAL_SCHEMA
from .storage import JOURNAL_DIR

log = logging.getLogger("docpipe")

#: Reuse decisions gathered before their answers are read and journaled.
BATCH = 4096
_NO_TIME = np.iinfo(np.int64).min
_INDEX_COLUMNS = ["reuse_key", "status", "completed_at", "doc_etag", "doc_last_modified", "doc_bytes"]
_CARRIED = ["answer", "finish_reason", "response_model", "prompt_tokens", "completion_tokens", "total_tokens",
            "usage_estimated", "http_status", "started_at", "completed_at", "response_id", "gateway_request_id",
            "cost_usd", "run_id", "reused_from", "model", "models_tried"]  # fmt: skip


def source_folders(patterns: Sequence[str], out: str | None) -> list[Path]:
    """The folders ``--reuse`` names, globs expanded, tonight's own ``out`` left out.
    A plain path that does not exist is a usage error; a glob matching nothing is not
    (the first night of ``--reuse out/*``)."""
    found: dict[Path, None] = {}
    mine = Path(out).resolve() if out else None
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern))
            if not matches:
                log.warning("--reuse %s: no folder matches; nothing to reuse from it", pattern)
        elif not os.path.isdir(pattern):
            raise UsageError(f"--reuse {pattern!r}: not a folder")
        else:
            matches = [pattern]
        for m in matches:
            p = Path(m).resolve()
            if p != mine and p.is_dir():
                found[p] = None
    return list(found)


class ReuseIndex:
    """Per reuse_key, the newest ok answer of the earlier runs and the document it was asked under.

    Four int64 columns, sorted by ``keys`` (32 bytes an earlier answer): ``keys``; ``etag``,
    the hash of the strong ETag stored with the answer (0: none, or a weak one); ``stamp``,
    a 64-bit mix of its Last-Modified and size (0: either missing); ``at``, where the answer
    is (:func:`_at`: the folder's number and the record's position in its journal)."""

    def __init__(self, folders: Sequence[Path], *, max_age: float | None, now: float | None = None) -> None:
        self.sources: list[list[Path]] = []
        cutoff = None if max_age is None else round(((now or time.time()) - max_age) * 1e6)
        parts: list[dict[str, np.ndarray]] = []
        for folder in folders:
            files = journal_files(folder / JOURNAL_DIR)
            if not files:
                log.warning("--reuse %s: no journal (not a docpipe output folder?); nothing to reuse from it", folder)
                continue
            parts.append(_scan(files, len(self.sources), cutoff))
            self.sources.append(files)
        # peak memory is what a million-row index costs: no array is kept beside its copy
        # (one folder's arrays are used as they are, columns are gathered one at a time)
        cols = parts.pop() if len(parts) == 1 else _concat(parts) if parts else _empty()
        del parts
        # newest first within a key, then the first of each key ("completed" only chose
        # the newest answer; --max-age was applied while scanning)
        completed = cols.pop("completed")
        np.negative(completed, out=completed)
        order = np.lexsort((completed, cols["key"]))
        del completed
        keys = cols["key"][order]
        first = np.ones(len(keys), dtype=np.bool_)
        np.not_equal(keys[1:], keys[:-1], out=first[1:])
        del keys
        keep = order[first]
        del order, first
        for k in list(cols):
            cols[k] = cols[k][keep]
        del keep
        self.keys, self.etag, self.stamp, self.at = cols["key"], cols["etag"], cols["stamp"], cols["at"]

    def __len__(self) -> int:
        return len(self.keys)

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Each key's candidate (an index into this index), or -1."""
        if not len(self.keys):
            return np.full(len(keys), -1, dtype=np.int64)
        i = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return np.where(self.keys[i] == keys, i, -1)

    def unchanged(self, c: int, meta: DocMeta | None) -> bool:
        """The matching rule of the module docstring, for candidate ``c`` and tonight's metadata."""
        if meta is None:
            return False
        stored = int(self.etag[c])
        if meta.strong_etag and stored:
            return etag_hash(meta.etag) == stored
        stamp = stamp_of(meta.last_modified, meta.size)
        return stamp != 0 and stamp == int(self.stamp[c])


def etag_hash(etag: str | None) -> int:
    """A strong ETag's 64-bit hash for :attr:`ReuseIndex.etag` (0: none, or weak). Python's
    string hash: the index is built and read in one process."""
    if not etag or etag.startswith("W/"):
        return 0
    return hash(etag) or 1


_M64 = (1 << 64) - 1
_C1, _C2 = 0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53  # MurmurHash3's 64-bit finalizer


def _fmix(x: int) -> int:
    x ^= x >> 33
    x = (x * _C1) & _M64
    x ^= x >> 33
    x = (x * _C2) & _M64
    return x ^ (x >> 33)


def stamp_of(last_modified: float | None, size: int | None) -> int:
    """Last-Modified (epoch seconds) and size as one 64-bit number (0: either missing); the
    same as :func:`_stamps` computes for stored answers. Two different pairs share one with
    a chance of 2**-64, as two requests share a reuse_key."""
    if last_modified is None or size is None or size < 0:
        return 0
    v = _fmix((_fmix(round(last_modified * 1e6) & _M64) + size) & _M64)
    v = v - (1 << 64) if v >= 1 << 63 else v
    return v or 1


def _fmix_np(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint64(33))
    x *= np.uint64(_C1)
    x ^= x >> np.uint64(33)
    x *= np.uint64(_C2)
    x ^= x >> np.uint64(33)
    return x


def _stamps(lm_us: np.ndarray, size: np.ndarray) -> np.ndarray:
    """:func:`stamp_of` of each (Last-Modified in microseconds, size); missing: ``_NO_TIME`` / -1."""
    with np.errstate(over="ignore"):
        out = _fmix_np(_fmix_np(lm_us.astype(np.uint64)) + size.astype(np.uint64)).view(np.int64)
    out[out == 0] = 1
    out[(lm_us == _NO_TIME) | (size < 0)] = 0
    return out


#: Bits of :attr:`ReuseIndex.at` for the position in a folder's journal (the folder's number above).
_POS_BITS = 40


def _at(src: int, positions: np.ndarray) -> np.ndarray:
    return positions.astype(np.int64) | np.int64(src << _POS_BITS)


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One array per column of ``parts`` (emptied as it goes: one column's copy at a time)."""
    out: dict[str, np.ndarray] = {}
    for k in list(parts[0]):
        out[k] = np.concatenate([p.pop(k) for p in parts])
    return out


def _empty() -> dict[str, np.ndarray]:
    return {k: np.zeros(0, dtype=np.int64) for k in ("key", "completed", "etag", "stamp", "at")}


def _chunks(files: list[Path]) -> Iterator[pa.Table | pa.RecordBatch]:
    """The index columns of one folder's journal, in order, a row group (or a log's batch) at
    a time; a part written before a column existed gets it as nulls. Row groups read one by
    one on this thread: the threaded batch reader keeps ~30 MB more (1M records) afterwards."""
    for p in files:
        try:
            if is_log(p):
                for batch in iter_log(p):
                    yield batch.select(_INDEX_COLUMNS)
                continue
            part = pq.ParquetFile(p)
            present = [c for c in _INDEX_COLUMNS if c in part.schema_arrow.names]
            for g in range(part.num_row_groups):
                table = part.read_row_group(g, columns=present, use_threads=False)
                for c in _INDEX_COLUMNS:
                    if c not in present:
                        table = table.append_column(
                            JOURNAL_SCHEMA.field(c), pa.nulls(table.num_rows, JOURNAL_SCHEMA.field(c).type)
                        )
                yield table
        except (pa.ArrowInvalid, OSError) as e:
            raise StorageError(f"{p}: journal file is unreadable: {e}") from None


def _scan(files: list[Path], src: int, cutoff: int | None) -> dict[str, np.ndarray]:
    """The ok answers with a reuse_key (younger than ``cutoff``) of one folder's journal."""
    import pyarrow.compute as pc

    out: dict[str, list[np.ndarray]] = {k: [] for k in _empty()}
    pos = 0
    for chunk in _chunks(files):
        n = chunk.num_rows
        ok = _np(pc.equal(chunk.column("status"), string_scalar(Status.OK.value)), False)
        ok &= _np(pc.is_valid(chunk.column("reuse_key")), False)
        done = _np(pc.cast(chunk.column("completed_at"), pa.int64()), _NO_TIME)
        if cutoff is not None:
            ok &= done >= cutoff
        where = np.flatnonzero(ok)
        if len(where):
            sel = numeric(where.astype(np.int64))
            etags: list[Any] = chunk.column("doc_etag").take(sel).to_pylist()
            out["key"].append(_np(chunk.column("reuse_key").take(sel), 0))
            out["completed"].append(done[where])
            out["etag"].append(np.fromiter(map(etag_hash, etags), dtype=np.int64, count=len(etags)))
            lm = _np(pc.cast(chunk.column("doc_last_modified").take(sel), pa.int64()), _NO_TIME)
            out["stamp"].append(_stamps(lm, _np(chunk.column("doc_bytes").take(sel), -1)))
            out["at"].append(_at(src, where + pos))
        pos += n
    found: dict[str, np.ndarray] = {}
    for k in list(out):  # one column's lists and its array at a time
        v = out.pop(k)
        found[k] = np.concatenate(v) if v else _empty()[k]
        del v
    return found


def _np(array: Any, fill: Any) -> np.ndarray:
    """An Arrow bool or integer array as numpy, nulls replaced by ``fill``, built from buffers:
    ``to_numpy()`` and a Python fill value make pyarrow import pandas (+45 MB and 0.4 s in a
    run that reuses; issue 12's memory target)."""
    return to_numpy(filled(array, fill), np.bool_ if isinstance(fill, bool) else np.int64)


class _Source:
    """Random access, by position, to the records of one earlier folder's journal."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files
        self.starts: list[int] = []  # first position of each file
        self._cache: tuple[Any, pa.Table] | None = None  # the last row group (or log) read
        self._file: tuple[int, pq.ParquetFile] | None = None  # the last Parquet part opened
        self._groups: dict[int, list[int]] = {}
        pos = 0
        for i, f in enumerate(files):
            self.starts.append(pos)
            if is_log(f):
                pos += sum(b.num_rows for b in iter_log(f))
            else:
                meta = pq.ParquetFile(f).metadata
                groups = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
                self._groups[i] = list(np.cumsum([0, *groups]))
                pos += sum(groups)

    def take(self, positions: np.ndarray) -> list[dict[str, Any]]:
        """The carried columns of the records at ``positions`` (sorted), as dicts."""
        out: list[dict[str, Any]] = []
        file_of = np.searchsorted(self.starts, positions, side="right") - 1
        for i in np.unique(file_of):
            local = positions[file_of == i] - self.starts[i]
            if is_log(self.files[i]):
                out += _records(self._table(int(i), -1).take(numeric(local.astype(np.int64))))
                continue
            bounds = self._groups[i]
            group_of = np.searchsorted(bounds, local, side="right") - 1
            for g in np.unique(group_of):
                rows = local[group_of == g] - bounds[g]
                out += _records(self._table(int(i), int(g)).take(numeric(rows.astype(np.int64))))
        return out

    def _table(self, i: int, group: int) -> pa.Table:
        """Row group ``group`` of file ``i`` (a whole log when -1); the last one read is kept."""
        if self._cache is None or self._cache[0] != (i, group):
            # a folder written before a column existed (model, models_tried) lacks it: read what is there
            if group < 0:
                whole = pa.Table.from_batches(list(iter_log(self.files[i])))
                table = whole.select([c for c in _CARRIED if c in whole.column_names])
            else:
                if self._file is None or self._file[0] != i:
                    self._file = (i, pq.ParquetFile(self.files[i]))
                file = self._file[1]
                present = [c for c in _CARRIED if c in file.schema_arrow.names]
                table = file.read_row_group(group, columns=present)
            self._cache = ((i, group), table)
        return self._cache[1]


def _records(table: pa.Table) -> list[dict[str, Any]]:
    """``table``'s rows as dicts, built column by column, times as epoch seconds: a third of
    the CPU of ``Table.to_pylist``, which goes through a row view and makes a datetime per time
    (what a night that reuses a million answers spends most on after its HEADs)."""
    columns: list[list[Any]] = []
    for col in table.columns:
        if pa.types.is_timestamp(col.type):
            per_second = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[col.type.unit]
            columns.append([None if v is None else v / per_second for v in col.cast(pa.int64()).to_pylist()])
        else:
            columns.append(col.to_pylist())
    names = table.column_names
    return [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]


class ReuseSink:
    """Reuse decisions, turned into outcomes in batches (answers read back from the earlier journals)."""

    def __init__(self, index: ReuseIndex) -> None:
        self.index = index
        self.sources = [_Source(files) for files in index.sources]
        self.pending: list[tuple[int, Row, DocMeta]] = []

    def add(self, c: int, row: Row, meta: DocMeta) -> bool:
        """Note a decision; True when a batch is ready for :meth:`take`."""
        self.pending.append((c, row, meta))
        return len(self.pending) >= BATCH

    def take(self) -> list[tuple[int, Row, DocMeta]]:
        """The decisions noted so far, for :meth:`outcomes`."""
        pending, self.pending = self.pending, []
        return pending

    def outcomes(self, pending: list[tuple[int, Row, DocMeta]]) -> list[Outcome]:
        """The outcomes of ``pending`` decisions (blocking I/O: run it in a thread, one at a time)."""
        if not pending:
            return []
        at = self.index.at[np.array([c for c, _, _ in pending], dtype=np.int64)]
        src, pos = at >> _POS_BITS, at & ((1 << _POS_BITS) - 1)
        found: dict[int, dict[str, Any]] = {}
        for s in np.unique(src):
            mine = np.flatnonzero(src == s)
            order = mine[np.argsort(pos[mine], kind="stable")]
            for k, record in zip(order.tolist(), self.sources[int(s)].take(pos[order]), strict=True):
                found[k] = record
        return [_outcome(found[k], row, meta) for k, (_, row, meta) in enumerate(pending)]


def _outcome(old: dict[str, Any], row: Row, meta: DocMeta) -> Outcome:
    return copied_outcome(old, row.request_id, row.index, reused_from=old["reused_from"] or old["run_id"],
                          doc_etag=meta.etag, doc_last_modified=meta.last_modified, doc_bytes=meta.size,
                          reuse_key=row.reuse_key)  # fmt: skip
