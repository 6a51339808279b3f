"""The outcome journal: append one JSON line per outcome, read logs and parts back, repair.

::

    OUT/_journal/log-000000007.jsonl       this run's outcomes, appended as they come
                 part-000000006.parquet    earlier outcomes, folded by compaction
                 rejected-000000005.jsonl  lines of log 5 that could not be read, set aside

The log is written with a plain ``write()`` the moment an outcome exists and
fsync'd every second (:class:`JournalWriter`). Why a log and not a Parquet part
per second: the ``write()`` puts the line in the kernel at once, so ``kill -9``
loses *nothing* that came back (only requests still in flight are paid twice),
while the once-a-second fsync bounds what a power cut can take.

Reading (:func:`iter_log`) is vectorised: the log is cut at line ends into chunks
of about 1 MiB, each parsed by pyarrow's JSON reader into
:func:`~pipeline.memory.arrow_pool` (see there why). A chunk holding a line
longer than pyarrow's block is parsed again as one block, so answers of any size
come back. A chunk that still fails is parsed line by line: a line that is not
one journal record (garbage, a torn write in the middle, a record with no
request_id or status) is skipped with a warning, and its row counts as not done,
so the next run asks it again. A torn last line (a crash mid-write) is ignored.

Repair (:func:`repair_log`, under the folder lock, when a run starts) makes that
permanent: the torn last line is cut off and unreadable lines move to
``rejected-<seq>.jsonl`` next to the log, so no line can make a folder
unrecoverable and none is lost without a trace. Logs only outlive a run that
crashed (compaction folds them into a part), so the extra read costs nothing on
a normal night.

Logs and parts share one sequence; the latest outcome for a ``request_id`` wins,
ordered by sequence and then by line (:func:`latest_per_id`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from .arrowutil import int_codes, numeric
from .errors import StorageError
from .memory import arrow_pool
from .records import Outcome
from .schema import JOURNAL_SCHEMA, TS, dictionary_columns
from .storage import checkpoint, fsync_dir, replacing, unlink_quietly

log = logging.getLogger(__name__)

_FILE = re.compile(r"^(part|log)-(\d{9})\.(parquet|jsonl)$")
_LOG_SUFFIX = ".jsonl"

#: Bytes read per chunk of log; pyarrow parses each chunk in 256 KiB blocks on all cores,
#: into :func:`~pipeline.memory.arrow_pool`. Issue 10, 10 000-row folder: 4 MiB chunks in
#: Arrow's default pool took the journal pass of compaction from 110 to 142 MB peak, 1 MiB
#: chunks into the system pool to 121-124 (on one thread 121: not worth the cores).
CHUNK_BYTES = 1 << 20
_BLOCK_BYTES = 256 << 10

#: How log lines are typed when parsed (timestamps travel as epoch microseconds).
_LOG_SCHEMA = pa.schema([pa.field(f.name, pa.int64()) if f.type == TS else f for f in JOURNAL_SCHEMA])


# -------------------------------------------------------------------------- files


def journal_files(folder: Path) -> list[Path]:
    """Journal files (logs and parts) in sequence order."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(2)), p) for p in folder.iterdir() if (m := _FILE.match(p.name))]
    return [p for _, p in sorted(found)]


def seq_of(path: Path) -> int:
    """The sequence number of a journal file."""
    m = _FILE.match(path.name)
    if m is None:
        raise ValueError(f"{path}: not a journal file name")
    return int(m.group(2))


def next_seq(folder: Path) -> int:
    """The sequence number the next log or part in ``folder`` takes."""
    files = journal_files(folder)
    return seq_of(files[-1]) + 1 if files else 1


def log_path(folder: Path, seq: int) -> Path:
    return folder / f"log-{seq:09d}{_LOG_SUFFIX}"


def rejected_path(log: Path) -> Path:
    """Where the unreadable lines of ``log`` are set aside."""
    return log.with_name(f"rejected-{seq_of(log):09d}{_LOG_SUFFIX}")


def is_log(path: Path) -> bool:
    return path.suffix == _LOG_SUFFIX


def iter_files(
    files: list[Path], columns: list[str] | None = None, log_span: LogSpan | None = None
) -> Iterator[pa.RecordBatch]:
    """Every record of the journal files ``files``, in order, in bounded batches;
    of the log ``log_span`` names, only the lines it spans."""
    for p in files:
        try:
            if is_log(p):
                span = log_span if log_span is not None and log_span.path == p else LogSpan(p)
                for batch in iter_log(p, span):
                    yield batch.select(columns) if columns else batch
            else:
                yield from _iter_part(pq.ParquetFile(p, pre_buffer=False), columns)
        except (pa.ArrowInvalid, OSError) as e:
            raise StorageError(f"{p}: journal file is unreadable: {e}") from None


@dataclass(frozen=True)
class LogSpan:
    """Whole lines of a journal log: bytes ``start`` to ``stop`` (None: to the end), the
    first of them line number ``first_line``. A log still being written is read up to
    what its writer reported (:attr:`JournalWriter.position`), the rest later."""

    path: Path
    start: int = 0
    stop: int | None = None
    first_line: int = 1


def latest_per_id(table: pa.Table) -> pa.Table:
    """The last row of each request_id, in the order those last rows appear."""
    if table.num_rows == 0:
        return table
    import pyarrow.compute as pc  # at the run's end only: import time and ~9 MB count before the first request

    pool = arrow_pool()
    ids = table["request_id"].combine_chunks(memory_pool=pool).dictionary_encode()
    codes = int_codes(ids.indices)
    _, first_in_reversed = np.unique(codes[::-1], return_index=True)
    positions = np.sort(len(codes) - 1 - first_in_reversed)
    return pc.take(table, numeric(positions.astype(np.int64)), memory_pool=pool)


# -------------------------------------------------------------------------- reading


def iter_log(path: Path, span: LogSpan | None = None) -> Iterator[pa.RecordBatch]:
    """A journal log (or the lines ``span`` names) in typed batches. Unreadable lines
    are skipped with a warning; a torn last line (crash mid-write) is ignored."""
    span = span if span is not None else LogSpan(path)
    skipped: list[int] = []
    with open(path, "rb") as f:
        f.seek(span.start)
        for first_line, chunk in _chunks(f, span.first_line, None if span.stop is None else span.stop - span.start):
            table = _parse(chunk)
            if table is None:
                table, bad = _parse_lines(chunk)
                skipped += [first_line + i for i, _ in bad]
            yield from table.cast(JOURNAL_SCHEMA).to_batches()
    if skipped:
        log.warning("%s: skipped %d unreadable journal line(s) (line %s%s); their rows count as not done",
                    path, len(skipped), skipped[0], ", ..." if len(skipped) > 1 else "")  # fmt: skip


def _iter_part(pf: pq.ParquetFile, columns: list[str] | None) -> Iterator[pa.RecordBatch]:
    """A part's records; a part written before a column existed gets it as nulls."""
    wanted = columns if columns is not None else JOURNAL_SCHEMA.names
    present = set(pf.schema_arrow.names)
    if all(n in present for n in wanted):
        yield from pf.iter_batches(batch_size=8192, columns=columns, use_threads=False)
        return
    for batch in pf.iter_batches(batch_size=8192, columns=[n for n in wanted if n in present], use_threads=False):
        arrays = [batch.column(n) if n in present else pa.nulls(batch.num_rows, JOURNAL_SCHEMA.field(n).type)
                  for n in wanted]  # fmt: skip
        yield pa.RecordBatch.from_arrays(arrays, schema=pa.schema([JOURNAL_SCHEMA.field(n) for n in wanted]))


def _chunks(f: IO[bytes], line: int = 1, limit: int | None = None) -> Iterator[tuple[int, bytes]]:
    """(number of its first line, bytes) for runs of whole lines of about CHUNK_BYTES,
    reading at most ``limit`` bytes; a line longer than that is one chunk. Bytes after
    the last newline are not yielded."""
    pending: list[bytes] = []
    left = -1 if limit is None else limit
    while left and (data := f.read(CHUNK_BYTES if left < 0 else min(CHUNK_BYTES, left))):
        left -= len(data) if left > 0 else 0
        cut = data.rfind(b"\n") + 1
        if cut == 0:  # inside a long line: keep reading until it ends
            pending.append(data)
            continue
        chunk = b"".join([*pending, data[:cut]]) if pending else data[:cut]
        pending = [data[cut:]] if cut < len(data) else []
        yield line, chunk
        line += chunk.count(b"\n")


def _parse(lines: bytes) -> pa.Table | None:
    """Whole lines as one table in the log schema, or None when any line is not
    exactly one record, with a request_id and a status, in valid UTF-8."""
    table = _read_json(lines, _BLOCK_BYTES)
    if table is None and len(lines) > _BLOCK_BYTES:
        table = _read_json(lines, len(lines) + 1)  # a line longer than a block: as one block
    if table is None or table.num_rows != lines.count(b"\n"):  # blank lines; two records on a line
        return None
    if table["request_id"].null_count or table["status"].null_count:
        return None
    try:
        table.validate(full=True)  # the JSON parser passes invalid UTF-8 inside strings through
    except pa.ArrowInvalid:
        return None
    return table


def _read_json(lines: bytes, block_size: int) -> pa.Table | None:
    import pyarrow.json as pj  # only when a log is read back: import time counts before the first request

    try:
        return pj.read_json(
            pa.BufferReader(lines),  # type: ignore[arg-type]  # the stubs omit NativeFile
            read_options=pj.ReadOptions(block_size=block_size),
            parse_options=pj.ParseOptions(explicit_schema=_LOG_SCHEMA, unexpected_field_behavior="ignore"),
            memory_pool=arrow_pool(),
        )
    except (ValueError, pa.ArrowException):  # ArrowInvalid; UnicodeDecodeError in a key
        return None


def _parse_lines(chunk: bytes) -> tuple[pa.Table, list[tuple[int, bytes]]]:
    """The readable lines of a chunk as one table, and (offset, line) of the others."""
    good: list[pa.Table] = []
    bad: list[tuple[int, bytes]] = []
    for i, line in enumerate(chunk.split(b"\n")[:-1]):
        if not line.strip():
            continue
        table = _parse(line + b"\n")
        if table is None:
            bad.append((i, line))
        else:
            good.append(table)
    table = pa.concat_tables(good).combine_chunks() if good else _LOG_SCHEMA.empty_table()
    return table, bad


# -------------------------------------------------------------------------- repair


def repair_log(path: Path) -> None:
    """Make a log of a crashed run whole; the caller holds the folder lock.

    A torn last line is cut off, unless it is a whole record that lost only its
    newline. Lines that cannot be read move to :func:`rejected_path`, with a warning.
    """
    _cut_torn_tail(path)
    with open(path, "rb") as f:
        # a chunk the fast parse refuses may hold only blank lines, which readers skip
        if not any(_parse(chunk) is None and _parse_lines(chunk)[1] for _, chunk in _chunks(f)):
            return
    _set_aside(path)


def _cut_torn_tail(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "rb+") as f:
        end = size
        while end > 0:  # find the last newline, however long the last line is
            start = max(0, end - _BLOCK_BYTES)
            f.seek(start)
            at = f.read(end - start).rfind(b"\n")
            if at >= 0:
                keep = start + at + 1
                break
            end = start
        else:
            keep = 0
        if keep == size:
            return
        f.seek(keep)
        tail = f.read()
        if _parse(tail + b"\n") is not None:  # a whole record; only the newline is missing
            f.write(b"\n")
        else:
            log.info("%s: dropped a torn last line of %d bytes (a crash mid-write)", path, size - keep)
            f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())


def _set_aside(path: Path) -> None:
    """Rewrite ``path`` without its unreadable lines, which are appended to the
    rejected file first (a crash in between leaves them in both, never in neither)."""
    target = rejected_path(path)
    rejected: list[int] = []
    with replacing(path) as tmp, open(path, "rb") as src, open(tmp, "wb") as dst, open(target, "ab") as aside:
        for first_line, chunk in _chunks(src):
            if _parse(chunk) is not None:
                dst.write(chunk)
                continue
            bad = dict(_parse_lines(chunk)[1])
            for i, line in enumerate(chunk.split(b"\n")[:-1]):
                if i in bad:
                    aside.write(line + b"\n")
                    rejected.append(first_line + i)
                elif line.strip():
                    dst.write(line + b"\n")
        aside.flush()
        os.fsync(aside.fileno())
    log.warning("%s: %d unreadable journal line(s) (line %s%s) set aside in %s; their rows will be asked again",
                path, len(rejected), rejected[0], ", ..." if len(rejected) > 1 else "",
                target.name)  # fmt: skip


# -------------------------------------------------------------------------- folding


@contextlib.contextmanager
def folding(folder: Path, old: list[Path]) -> Iterator[pq.ParquetWriter]:
    """A writer for the part that replaces the journal files ``old``. On a clean exit
    the part is made durable under the next sequence number before ``old`` goes, so a
    crash in between leaves duplicates that resolve to the same latest outcome."""
    part = folder / f"part-{next_seq(folder):09d}.parquet"
    dictionary: Any = dictionary_columns(JOURNAL_SCHEMA)  # the stubs allow only a bool; pyarrow takes names
    with replacing(part) as tmp, pq.ParquetWriter(tmp, JOURNAL_SCHEMA, compression="zstd",
                                                  use_dictionary=dictionary) as writer:  # fmt: skip
        yield writer
    checkpoint("fold")
    for p in old:
        unlink_quietly(p)
    fsync_dir(folder)


# -------------------------------------------------------------------------- writing


class HasJournal(Protocol):
    """What a JournalWriter needs of an output folder."""

    @property
    def journal(self) -> Path: ...


_FIELDS = [n for n in JOURNAL_SCHEMA.names if n not in ("run_id", "model", "models_tried")]


class JournalWriter:
    """Appends one JSON line per outcome to this run's log in the loop tick it arrives
    (one ``write()`` per tick), and fsyncs it every ``flush_interval`` in a worker
    thread (the loop never waits on the fsync). A failed write calls ``on_error``
    at once and makes every later ``add`` raise StorageError, so the run stops
    before it pays for answers it could not keep."""

    def __init__(self, run_dir: HasJournal, run_id: str, model: str) -> None:
        self.path = log_path(run_dir.journal, next_seq(run_dir.journal))
        self.model = model
        self._prefix = orjson.dumps({"run_id": run_id})[:-1] + b","
        try:
            # 0666: the umask applies, as to any file the user's tools create
            self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o666)
        except OSError as e:
            raise StorageError(f"{self.path}: cannot open the journal: {e.strerror or e}") from None
        fsync_dir(run_dir.journal)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="docpipe-journal")
        self.written = 0
        self.position = (0, 0)  # (bytes, lines) of the log handed to the kernel: whole lines
        self._unsynced = 0
        self._pending: list[bytes] = []
        self.error: StorageError | None = None
        self.on_error: Callable[[StorageError], None] | None = None

    def add(self, outcome: Outcome) -> None:
        """Queue one outcome; it reaches the kernel at the end of this loop tick."""
        if self.error is not None:
            raise self.error
        o = outcome
        record = {n: getattr(o, n) for n in _FIELDS}
        record["model"] = o.model or self.model
        # a row sent to no model (invalid input, a document too large to embed) tried none
        tried = o.models_tried if o.models_tried is not None else ((record["model"],) if o.attempts else ())
        record["models_tried"] = list(tried)
        record["started_at"] = round(o.started_at * 1e6)
        record["completed_at"] = round(o.completed_at * 1e6)
        if o.doc_last_modified is not None:
            record["doc_last_modified"] = round(o.doc_last_modified * 1e6)
        self._pending.append(self._prefix + orjson.dumps(record)[1:] + b"\n")
        self.written += 1
        self._unsynced += 1
        if len(self._pending) == 1:
            # one write() for all outcomes of this loop iteration: a write per outcome
            # cost ~80 us when it queued behind the once-a-second fsync
            asyncio.get_running_loop().call_soon(self._write_pending)

    def _write_pending(self) -> None:
        if not self._pending or self._fd is None:
            return
        data = b"".join(self._pending)
        lines = len(self._pending)
        self._pending.clear()
        try:
            n = os.write(self._fd, data)
        except OSError as e:
            self.error = StorageError(f"{self.path}: cannot write the journal: {e.strerror or e}")
        else:
            if n != len(data):  # disk full: stop here; the torn line is cut off by the next run
                self.error = StorageError(f"{self.path}: cannot write the journal: disk full (short write)")
            else:
                self.position = (self.position[0] + n, self.position[1] + lines)
        if self.error is not None and self.on_error is not None:
            self.on_error(self.error)

    async def flush(self) -> None:
        """Make everything written so far survive a power cut."""
        self._write_pending()
        if self.error is not None:
            raise self.error
        if not self._unsynced or self._fd is None:
            return
        self._unsynced = 0
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, os.fsync, self._fd)
        except OSError as e:
            raise StorageError(f"{self.path}: cannot sync the journal: {e.strerror or e}") from None

    def flush_sync(self) -> None:
        """Write and fsync what is queued, from outside the loop (signals, shutdown)."""
        self._write_pending()
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.fsync(self._fd)

    def close(self) -> None:
        """Flush and close; a log nobody wrote to is removed."""
        self._executor.shutdown(wait=True)
        if self._fd is not None:
            self.flush_sync()
            os.close(self._fd)
            self._fd = None
            if self.written == 0:
                unlink_quietly(self.path)
