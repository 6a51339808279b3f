"""Compaction: rebuild ``results.parquet`` from the journal, in manifest order, in bounded memory.

1. One pass over the manifest (in scope: after --shard/--limit) gives every row's
   request_id hash, in order (8 bytes a row).
2. One pass over the journal, in sequence order, sends each outcome to the spill
   file of the manifest chunk (``chunk_rows`` rows) where its id first appears;
   outcomes for ids no longer in the manifest go to an orphan spill.
3. A second pass over the manifest, chunk by chunk, joins each chunk with its
   spill file (latest outcome per id) and appends a row group to results.parquet;
   the same latest outcomes, plus the orphans, stream into the folded journal part.

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
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .arrowutil import numeric, string_scalar
from .idset import IdIndex, hash_ids
from .journal import latest_per_id
from .rundir import RunDir
from .schema import INPUT_COLUMNS, JOURNAL_SCHEMA, OUTCOME_COLUMNS, output_schema
from .storage import ROW_GROUP_ROWS, atomic_write_table
from .structured.columns import answer_columns
from .structured.spec import METADATA_KEY, Spec

CHUNK_ROWS = 16384


def compact(run_dir: RunDir, manifest: Any, chunk_rows: int = CHUNK_ROWS, spec: Spec | None = None) -> int:
    """Rebuild results.parquet and fold the journal; returns the rows written.

    ``spec``: a structured job's answer schema; its typed columns follow the standard
    ones (pipeline/structured/columns.py)."""
    schema, spec = _schema(manifest, spec)
    index = IdIndex.of(hash_ids(ids) for _batch, ids, _c in manifest.views())
    if index.has_duplicates:
        return _compact_in_memory(run_dir, manifest, schema, spec)
    old = run_dir.parts()
    spill = run_dir.journal / ".spill"
    shutil.rmtree(spill, ignore_errors=True)
    spill.mkdir()
    try:
        _spill(run_dir, index, spill, chunk_rows)
        with nullcontext() if run_dir.is_folded(old) else run_dir.folding(old) as fold:
            joined = _joined(manifest, spill, chunk_rows, schema, fold, spec)
            rows = atomic_write_table(run_dir.results, joined, schema)
            orphans = _latest_of(spill / "orphans.arrow")
            if fold is not None and orphans is not None:
                fold.write_table(orphans)
    finally:
        shutil.rmtree(spill, ignore_errors=True)
    return rows


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


def _spill(run_dir: RunDir, index: IdIndex, spill: Path, chunk_rows: int) -> None:
    # Arrow IPC streams, not Parquet: a writer holds no page buffers, so the many spill
    # files a million-row manifest needs (one per chunk) cost no memory while open
    writers: dict[int, tuple[pa.NativeFile, pa.ipc.RecordBatchStreamWriter]] = {}
    try:
        for batch in run_dir.iter_journal():
            chunk = index.positions(hash_ids(batch.column("request_id"))) // chunk_rows
            chunk[chunk < 0] = -1
            for k in np.unique(chunk):
                part = batch.filter(numeric(chunk == k))
                if int(k) not in writers:
                    name = "orphans" if k < 0 else f"chunk-{int(k):07d}"
                    sink = pa.OSFile(str(spill / f"{name}.arrow"), "wb")
                    writers[int(k)] = (sink, pa.ipc.new_stream(sink, JOURNAL_SCHEMA))
                writers[int(k)][1].write_batch(part)
    finally:
        for file, stream in writers.values():
            stream.close()
            file.close()


def _latest_of(path: Path) -> pa.Table | None:
    """Latest outcome per id of one spill file (written in journal order)."""
    if not path.exists():
        return None
    with pa.OSFile(str(path), "rb") as source:
        return latest_per_id(pa.ipc.open_stream(source).read_all())


def _chunks(manifest: Any, chunk_rows: int) -> Iterator[tuple[int, pa.Table, pa.Array[Any]]]:
    """The manifest in scope, re-cut into chunks of exactly ``chunk_rows`` rows."""
    pending: list[tuple[pa.RecordBatch, pa.Array[Any]]] = []
    size = 0
    k = 0
    for batch, ids, _c in manifest.views():
        while batch.num_rows:
            take = min(batch.num_rows, chunk_rows - size)
            pending.append((batch.slice(0, take), ids.slice(0, take)))
            batch, ids = batch.slice(take), ids.slice(take)
            size += take
            if size == chunk_rows:
                yield k, *_concat(pending)
                pending, size, k = [], 0, k + 1
    if pending:
        yield k, *_concat(pending)


def _concat(pending: list[tuple[pa.RecordBatch, pa.Array[Any]]]) -> tuple[pa.Table, pa.Array[Any]]:
    table = pa.Table.from_batches([b for b, _ in pending])
    ids = pa.chunked_array([i for _, i in pending], pa.string()).combine_chunks()
    return table, ids


def _joined(
    manifest: Any, spill: Path, chunk_rows: int, schema: pa.Schema, fold: pq.ParquetWriter | None, spec: Spec | None
) -> Iterator[pa.Table]:
    for k, table, ids in _chunks(manifest, chunk_rows):
        outcomes = _latest_of(spill / f"chunk-{k:07d}.arrow")
        if outcomes is None:
            continue
        if fold is not None:
            fold.write_table(outcomes)
        yield join(table, ids, outcomes, manifest.columns, schema, spec)


def join(table: pa.Table, ids: pa.Array[Any], outcomes: pa.Table, cols: Any, schema: pa.Schema,
         spec: Spec | None = None) -> pa.Table:  # fmt: skip
    """Manifest rows that have an outcome, with its columns, in manifest order."""
    where = pc.index_in(ids, value_set=outcomes["request_id"].combine_chunks())
    has = pc.is_valid(where)
    table, ids, where = table.filter(has), ids.filter(has), where.filter(has)
    taken = outcomes.select(OUTCOME_COLUMNS).take(where)
    arrays: list[pa.Array[Any] | pa.ChunkedArray[Any]] = [ids, _text(table[cols.file_url]), _text(table[cols.question])]
    for src, name in zip(cols.passthrough, cols.output_names, strict=True):
        arrays.append(table[src].cast(schema.field(name).type))
    arrays += [taken[n] for n in OUTCOME_COLUMNS]
    if spec is not None:
        arrays += answer_columns(spec, taken["answer"], pc.equal(taken["status"], string_scalar("ok")).fill_null(False))
    return pa.Table.from_arrays(arrays, schema=schema)


def _text(col: pa.ChunkedArray[Any]) -> pa.ChunkedArray[Any]:
    return col if pa.types.is_string(col.type) else col.cast(pa.string())


def _compact_in_memory(run_dir: RunDir, manifest: Any, schema: pa.Schema, spec: Spec | None) -> int:
    latest = run_dir.latest()

    def tables() -> Iterator[pa.Table]:
        for _k, table, ids in _chunks(manifest, CHUNK_ROWS):
            yield join(table, ids, latest, manifest.columns, schema, spec)

    rows = atomic_write_table(run_dir.results, tables(), schema)
    old = run_dir.parts()
    if not run_dir.is_folded(old):
        with run_dir.folding(old) as fold:
            fold.write_table(latest, row_group_size=ROW_GROUP_ROWS)
    return rows
