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

Memory: the index holds 6 numbers per earlier answer (~51 bytes), never the
answers; they are read back from the earlier journals in batches of
:data:`BATCH` decisions, row group by row group, when written (:class:`ReuseSink`).
"""

from __future__ import annotations

import glob
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .arrowutil import numeric, string_scalar
from .docmeta import DocMeta
from .errors import UsageError
from .journal import is_log, iter_files, iter_log, journal_files
from .records import Outcome, Row, Status, copied_outcome
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
    """Per reuse_key, the newest ok answer of the earlier runs and the document it was asked under."""

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
        # newest first within a key, then the first of each key
        order = np.lexsort((-cols["completed"], cols["key"]))
        keys = cols["key"][order]
        first = np.ones(len(keys), dtype=np.bool_)
        first[1:] = keys[1:] != keys[:-1]
        keep = order[first]
        del order, keys, first
        # "completed" only chose the newest answer; --max-age was applied while scanning
        del cols["completed"]
        for k in list(cols):
            cols[k] = cols[k][keep]
        self.cols = cols
        self.keys = self.cols["key"]

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
        cols = self.cols
        if meta.strong_etag and cols["strong"][c]:
            return bool(hash(meta.etag) == cols["etag"][c])
        if meta.last_modified is None or meta.size is None or cols["size"][c] < 0 or cols["lm"][c] == _NO_TIME:
            return False
        return bool(cols["lm"][c] == round(meta.last_modified * 1e6) and cols["size"][c] == meta.size)


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One array per column of ``parts`` (emptied as it goes: one column's copy at a time)."""
    out: dict[str, np.ndarray] = {}
    for k in list(parts[0]):
        out[k] = np.concatenate([p.pop(k) for p in parts])
    return out


def _empty() -> dict[str, np.ndarray]:
    i64 = np.zeros(0, dtype=np.int64)
    return {"key": i64, "completed": i64, "etag": i64, "strong": np.zeros(0, dtype=np.bool_), "lm": i64,
            "size": i64, "src": np.zeros(0, dtype=np.int16), "pos": i64}  # fmt: skip


def _scan(files: list[Path], src: int, cutoff: int | None) -> dict[str, np.ndarray]:
    """The ok answers with a reuse_key (younger than ``cutoff``) of one folder's journal."""
    import pyarrow.compute as pc

    out: dict[str, list[np.ndarray]] = {k: [] for k in _empty()}
    pos = 0
    for batch in iter_files(files, _INDEX_COLUMNS):
        n = batch.num_rows
        ok = _np(pc.equal(batch.column("status"), string_scalar(Status.OK.value)), False)
        ok &= _np(pc.is_valid(batch.column("reuse_key")), False)
        done = _np(pc.cast(batch.column("completed_at"), pa.int64()), _NO_TIME)
        if cutoff is not None:
            ok &= done >= cutoff
        where = np.flatnonzero(ok)
        if len(where):
            sel = numeric(where.astype(np.int64))
            etags: list[Any] = batch.column("doc_etag").take(sel).to_pylist()
            out["key"].append(_np(batch.column("reuse_key").take(sel), 0))
            out["completed"].append(done[where])
            out["etag"].append(np.fromiter((hash(e) if e else 0 for e in etags), dtype=np.int64, count=len(etags)))
            out["strong"].append(np.fromiter((bool(e) and not str(e).startswith("W/") for e in etags),
                                             dtype=np.bool_, count=len(etags)))  # fmt: skip
            out["lm"].append(_np(pc.cast(batch.column("doc_last_modified").take(sel), pa.int64()), _NO_TIME))
            out["size"].append(_np(batch.column("doc_bytes").take(sel), -1))
            out["src"].append(np.full(len(where), src, dtype=np.int16))
            out["pos"].append(where.astype(np.int64) + pos)
        pos += n
    found: dict[str, np.ndarray] = {}
    for k in list(out):  # one column's lists and its array at a time
        v = out.pop(k)
        found[k] = np.concatenate(v) if v else _empty()[k]
        del v
    return found


def _np(array: Any, fill: Any) -> np.ndarray:
    """An Arrow array as numpy, nulls replaced by ``fill``."""
    return np.asarray(array.fill_null(fill).to_numpy(zero_copy_only=False))


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
        cols = self.index.cols
        cand = np.array([c for c, _, _ in pending], dtype=np.int64)
        src, pos = cols["src"][cand], cols["pos"][cand]
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
