"""Compaction: rebuild ``results.parquet`` from the journal, in manifest order, in bounded memory.

1. Every in-scope row's request_id hash, in order (8 bytes a row): those the run's own
   walk over the manifest recorded (:attr:`Manifest.id_hashes`), else one pass that
   computes them.
2. One pass over the journal, in sequence order, sends each outcome, with the
   position of its row, to the spill file of the manifest chunk (``chunk_rows`` rows)
   where its id first appears; outcomes for ids no longer in the manifest go to an
   orphan spill.
3. A second pass over the manifest, chunk by chunk, places the latest outcome per id
   of the chunk's spill file on its row, by position, and appends a row group to
   results.parquet; the same latest outcomes, plus the orphans, stream into the
   folded journal part. This pass reads the manifest's columns only: no row's
   content or request_id is computed again (the outcome carries its request_id),
   except under ``--shard``, whose scope is drawn from the ids.

Step 2 may begin before the run's last answers (:class:`Compactor`): the runner starts
it once every row was dispatched, in a thread, on the journal lines written so far, and
spills the rest after the last answer. A 10 000-row run at 200 ms went from 0.15-0.18 s
between its last answer and results.parquet to 0.06 s.

Why positions and not a join on the ids: computing a million request_ids (message
content, blake2b) costs ~3 s a pass, and this way compaction computes none after a
run. The cost: two different ids sharing a 64-bit hash would be confused (see
:mod:`pipeline.idset`; two manifest rows doing so are caught and compacted in
memory, by id, below).

Memory holds the id hashes, one chunk of manifest rows and one chunk of outcomes,
never the whole table, whatever the length of the manifest or of the answers.
A manifest that repeats a request (identical rows without ``id``) is compacted
in memory instead, since one outcome must then reach several chunks.

Crash safety: results.parquet and the folded part are each written to a temp
file, fsync'd and renamed; the old journal files are removed only after the
folded part is durable, and a crash in between leaves duplicates that resolve to
the same latest outcome.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .arrowutil import int_codes, numeric, string_scalar
from .idset import IdIndex, hash_ids
from .journal import LogSpan, iter_files, latest_per_id
from .manifest import scoped_batches
from .memory import arrow_pool, trim_heap
from .rundir import RunDir
from .schema import INPUT_COLUMNS, JOURNAL_SCHEMA, OUTCOME_COLUMNS, output_schema
from .storage import ROW_GROUP_ROWS, atomic_write_table
from .structured.columns import answer_columns
from .structured.spec import METADATA_KEY, Spec

#: Manifest rows per chunk of the second pass (a chunk's rows, its outcomes and the table
#: placed from both are what that pass holds), unless the manifest would then need more
#: than :data:`MAX_SPILL_FILES` spill files, each an open file while the journal is routed:
#: then chunks grow to keep that count. 1 000 000 rows (123 files): 16 384-row chunks
#: peaked 18 MB higher in the second pass (153 against 135 MB, docs/compaction_memory.py).
CHUNK_ROWS = 8192
MAX_SPILL_FILES = 512
#: Journal batches between two heap trims in the journal pass (each chunk of the second
#: pass ends with one). Arrow's buffers come from glibc's malloc (pipeline/memory.py), whose
#: freed blocks of varying sizes stay in the process otherwise: 1 000 000 rows, 225 -> 216 MB peak.
TRIM_EVERY = 16
_POS = "__position"  # a spilled outcome's in-scope manifest position
_ID = "__request_id"
_SPILL_SCHEMA = JOURNAL_SCHEMA.append(pa.field(_POS, pa.int64()))


def compact(run_dir: RunDir, manifest: Any, chunk_rows: int | None = None, spec: Spec | None = None) -> int:
    """Rebuild results.parquet and fold the journal; returns the rows written.

    ``spec``: a structured job's answer schema; its typed columns follow the standard
    ones (pipeline/structured/columns.py)."""
    with Compactor(run_dir, manifest, chunk_rows, spec) as compactor:
        return compactor.finish()


class Compactor:
    """One compaction in two steps, so that step 1 (the journal pass, most of the time a
    10 000-row run spends compacting) can start while the run's last requests are in
    flight: :meth:`spill` sends the journal records written so far to the spill files,
    and may be called again as the journal grows; :meth:`finish` spills the rest and
    runs step 3. The runner starts it once every row was dispatched, when the manifest's
    id hashes are complete (:mod:`pipeline.runner`). The log the run is still writing is
    spilled up to the whole lines its writer reported, the rest by the next call.

    One thread at a time (the runner awaits each step); ``close()`` (or the ``with``
    block) removes the spill files whatever happened."""

    def __init__(self, run_dir: RunDir, manifest: Any, chunk_rows: int | None = None, spec: Spec | None = None) -> None:
        self.run_dir = run_dir
        self.manifest = manifest
        self.schema, self.spec = _schema(manifest, spec)
        # the run's own walk over the manifest left them; compaction takes them (the index
        # below holds them sorted: 8 bytes a row that need not stay twice)
        hashes = getattr(manifest, "id_hashes", None)
        if hashes is not None:
            manifest.id_hashes = None
        else:
            hashes = np.concatenate([hash_ids(ids) for _b, ids, _c in manifest.views()] or [np.empty(0, np.int64)])
        self.chunk_rows = chunk_rows or max(CHUNK_ROWS, -(-len(hashes) // MAX_SPILL_FILES))
        index = IdIndex(hashes)
        del hashes
        self.in_memory = index.has_duplicates  # one outcome for several rows: compacted by id
        self._index: IdIndex | None = None if self.in_memory else index
        self.spill_dir = run_dir.journal / ".spill"
        shutil.rmtree(self.spill_dir, ignore_errors=True)
        if not self.in_memory:
            self.spill_dir.mkdir(parents=True)
        # Arrow IPC streams, not Parquet: a writer holds no page buffers, so the many spill
        # files a million-row manifest needs (one per chunk) cost no memory while open
        self._writers: dict[int, tuple[pa.NativeFile, pa.ipc.RecordBatchStreamWriter]] = {}
        self._spilled: list[Path] = []  # journal files spilled whole, in sequence order
        self._rest: LogSpan | None = None  # the log spilled in part: where its unread lines start

    def __enter__(self) -> Compactor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def spill(self, log: Path | None = None, position: tuple[int, int] = (0, 0)) -> None:
        """Spill the journal records not spilled yet, in sequence order; of ``log``, a log
        still being written, only its first ``position`` = (bytes, lines)."""
        if self._index is None:
            return
        for p in self.run_dir.parts()[len(self._spilled) :]:
            span = self._rest if self._rest is not None and self._rest.path == p else LogSpan(p)
            if p == log:  # the newest file: nothing follows it yet
                self._route(iter_files([p], log_span=LogSpan(p, span.start, position[0], span.first_line)))
                self._rest = LogSpan(p, position[0], None, position[1] + 1)
                return
            self._route(iter_files([p], log_span=span))
            self._spilled.append(p)

    def finish(self) -> int:
        """Spill what is left, then build results.parquet and fold the journal; the rows written."""
        run_dir, manifest = self.run_dir, self.manifest
        if self.in_memory:
            return _compact_in_memory(run_dir, manifest, self.schema, self.spec)
        old = run_dir.parts()
        self.spill()
        self._close_writers()
        self._index = None  # 24 bytes a row, not needed from here on
        spill = self.spill_dir
        with nullcontext() if run_dir.is_folded(old) else run_dir.folding(old) as fold:
            joined = _joined(manifest, spill, self.chunk_rows, self.schema, fold, self.spec)
            rows = atomic_write_table(run_dir.results, joined, self.schema)
            orphans = _latest_of(spill / "orphans.arrow")
            if fold is not None and orphans is not None:
                fold.write_table(orphans.drop_columns([_POS]))
        return rows

    def close(self) -> None:
        self._close_writers()
        self._index = None
        shutil.rmtree(self.spill_dir, ignore_errors=True)

    def _route(self, batches: Iterable[pa.RecordBatch]) -> None:
        """Each outcome, with the position of its row, to the spill file of its manifest chunk."""
        assert self._index is not None
        writers, chunk_rows = self._writers, self.chunk_rows
        for routed, batch in enumerate(batches, 1):
            pos = self._index.positions(hash_ids(batch.column("request_id")))
            batch = batch.append_column(_POS, numeric(pos))
            chunk = pos // chunk_rows
            chunk[pos < 0] = -1
            for k in np.unique(chunk):
                part = pc.filter(cast(Any, batch), numeric(chunk == k), memory_pool=arrow_pool())  # stubs: arrays only
                if int(k) not in writers:
                    name = "orphans" if k < 0 else f"chunk-{int(k):07d}"
                    sink = pa.OSFile(str(self.spill_dir / f"{name}.arrow"), "wb")
                    writers[int(k)] = (sink, pa.ipc.new_stream(sink, _SPILL_SCHEMA))
                writers[int(k)][1].write_batch(part)
            if routed % TRIM_EVERY == 0:
                trim_heap()

    def _close_writers(self) -> None:
        writers, self._writers = self._writers, {}
        for file, stream in writers.values():
            stream.close()
            file.close()


def _schema(manifest: Any, spec: Spec | None) -> tuple[pa.Schema, Spec | None]:
    """The results schema, and ``spec`` with its columns renamed away from the names taken."""
    cols = manifest.columns
    fields = [
        pa.field(out, manifest.schema.field(src).type if manifest.format == "parquet" else pa.string())
        for src, out in zip(cols.passthrough, cols.output_names, strict=True)
    ]
    if spec is None:
        return output_schema(fields), None
    spec = spec.renamed([*INPUT_COLUMNS, *OUTCOME_COLUMNS, *cols.output_names])
    meta = {METADATA_KEY: json.dumps(spec.schema).encode()}
    return output_schema(fields, spec.fields(), spec.pandas_dtypes(), meta), spec


def _latest_of(path: Path) -> pa.Table | None:
    """Latest outcome per id of one spill file (written in journal order)."""
    if not path.exists():
        return None
    with pa.OSFile(str(path), "rb", memory_pool=arrow_pool()) as source:
        return latest_per_id(pa.ipc.open_stream(source, memory_pool=arrow_pool()).read_all())


def _recut(batches: Iterable[pa.RecordBatch], chunk_rows: int) -> Iterator[pa.Table]:
    """``batches`` re-cut into tables of exactly ``chunk_rows`` rows (the last may be shorter)."""
    pending: list[pa.RecordBatch] = []
    size = 0
    for batch in batches:
        while batch.num_rows:
            take = min(batch.num_rows, chunk_rows - size)
            pending.append(batch.slice(0, take))
            batch = batch.slice(take)
            size += take
            if size == chunk_rows:
                yield pa.Table.from_batches(pending)
                pending, size = [], 0
    if pending:
        yield pa.Table.from_batches(pending)


def _joined(
    manifest: Any, spill: Path, chunk_rows: int, schema: pa.Schema, fold: pq.ParquetWriter | None, spec: Spec | None
) -> Iterator[pa.Table]:
    for k, table in enumerate(_recut(scoped_batches(manifest, chunk_rows), chunk_rows)):
        outcomes = _latest_of(spill / f"chunk-{k:07d}.arrow")
        if outcomes is None:
            continue
        placed = _placed(table, k * chunk_rows, outcomes, manifest.columns, schema, spec)
        if fold is not None:
            fold.write_table(outcomes.drop_columns([_POS]))
        del outcomes
        yield placed
        del placed
        trim_heap()


def _placed(table: pa.Table, base: int, outcomes: pa.Table, cols: Any, schema: pa.Schema,
            spec: Spec | None) -> pa.Table:  # fmt: skip
    """The rows of a manifest chunk starting at in-scope position ``base`` that have an
    outcome, each with its outcome's columns (``outcomes`` carries every row's position)."""
    local = int_codes(outcomes[_POS].combine_chunks()) - base  # not to_numpy(): it imports pandas
    order = np.argsort(local, kind="stable")
    pool = arrow_pool()
    taken = pc.take(outcomes, numeric(order), memory_pool=pool)
    rows = pc.take(table, numeric(local[order]), memory_pool=pool)
    return _assemble(rows, taken["request_id"], taken, cols, schema, spec)


def join(table: pa.Table, ids: pa.Array[Any], outcomes: pa.Table, cols: Any, schema: pa.Schema,
         spec: Spec | None = None) -> pa.Table:  # fmt: skip
    """Manifest rows that have an outcome, with its columns, in manifest order (by request_id)."""
    where = pc.index_in(ids, value_set=outcomes["request_id"].combine_chunks())
    has = pc.is_valid(where)
    table, ids, where = table.filter(has), ids.filter(has), where.filter(has)
    return _assemble(table, ids, outcomes.take(where), cols, schema, spec)


def _assemble(table: pa.Table, ids: pa.Array[Any] | pa.ChunkedArray[Any], taken: pa.Table, cols: Any,
              schema: pa.Schema, spec: Spec | None) -> pa.Table:  # fmt: skip
    """Results rows from manifest rows and their outcomes, row for row."""
    arrays: list[pa.Array[Any] | pa.ChunkedArray[Any]] = [ids, _text(table[cols.file_url]), _text(table[cols.question])]
    for src, name in zip(cols.passthrough, cols.output_names, strict=True):
        arrays.append(pc.cast(table[src], schema.field(name).type, memory_pool=arrow_pool()))
    arrays += [taken[n] for n in OUTCOME_COLUMNS]
    if spec is not None:
        arrays += answer_columns(spec, taken["answer"], pc.equal(taken["status"], string_scalar("ok")))  # nulls: not ok
    return pa.Table.from_arrays(arrays, schema=schema)


def _text(col: pa.ChunkedArray[Any]) -> pa.ChunkedArray[Any]:
    return col if pa.types.is_string(col.type) else pc.cast(col, pa.string(), memory_pool=arrow_pool())


def _compact_in_memory(run_dir: RunDir, manifest: Any, schema: pa.Schema, spec: Spec | None) -> int:
    latest = run_dir.latest()

    def tables() -> Iterator[pa.Table]:
        with_ids = (batch.append_column(_ID, ids) for batch, ids, _c in manifest.views())
        for table in _recut(with_ids, ROW_GROUP_ROWS):
            yield join(table, table[_ID].combine_chunks(), latest, manifest.columns, schema, spec)

    rows = atomic_write_table(run_dir.results, tables(), schema)
    old = run_dir.parts()
    if not run_dir.is_folded(old):
        with run_dir.folding(old) as fold:
            fold.write_table(latest, row_group_size=ROW_GROUP_ROWS)
    return rows
