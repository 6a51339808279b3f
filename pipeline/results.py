"""The run directory: durable outcome journal, compaction, resume, output schema.

::

    OUT/results.parquet   one row per manifest row that has an outcome, manifest order
    OUT/_run.json         run metadata (underscore: pd.read_parquet(OUT) must skip it)
    OUT/_journal/         log-000000007.jsonl (this run's outcomes, appended as they come)
                          part-000000006.parquet (earlier outcomes, folded)
    OUT/.lock             held while a run writes here

The journal is an append-only log of one JSON line per outcome, written with a
plain ``write()`` the moment the outcome exists and fsync'd every
``flush_interval`` (1 s). Why a log and not a Parquet part per second: the
``write()`` puts the line in the kernel at once, so ``kill -9`` loses *nothing*
that came back (only requests still in flight are paid twice), while the
once-a-second fsync bounds what a power cut can take. A crash mid-line leaves a
torn last line, which the reader drops. Logs are read with pyarrow's vectorised
JSON reader, and after each compaction logs and parts are folded into one
Parquet part (written atomically before the old files go), so the folder does
not grow night after night.

Logs and parts share one sequence; the latest outcome for a ``request_id`` wins,
ordered by sequence and then by line.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
import pyarrow.parquet as pq

from .errors import StorageError
from .idset import IdIndex, hash_ids
from .records import Outcome

RESULTS_FILE = "results.parquet"
RUN_FILE = "_run.json"
JOURNAL_DIR = "_journal"
LOCK_FILE = ".lock"
_PART = re.compile(r"^(part|log)-(\d{9})\.(parquet|jsonl)$")
TS = pa.timestamp("us", tz="UTC")
ROW_GROUP_ROWS = 16384

#: Journal columns, in order; every one is an Outcome field except run_id and model.
JOURNAL_SCHEMA = pa.schema(
    [
        ("request_id", pa.string()),
        ("row_index", pa.int64()),
        ("model", pa.string()),
        ("response_model", pa.string()),
        ("answer", pa.string()),
        ("finish_reason", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("total_tokens", pa.int64()),
        ("usage_estimated", pa.bool_()),
        ("status", pa.string()),
        ("error_type", pa.string()),
        ("error_message", pa.string()),
        ("http_status", pa.int16()),
        ("attempts", pa.int16()),
        ("latency_ms", pa.float64()),
        ("started_at", TS),
        ("completed_at", TS),
        ("response_id", pa.string()),
        ("gateway_request_id", pa.string()),
        ("run_id", pa.string()),
        ("cost_usd", pa.float64()),
    ]
)

#: Columns of results.parquet after request_id, file_url, question and the passthrough ones.
OUTCOME_COLUMNS = [n for n in JOURNAL_SCHEMA.names if n not in ("request_id", "row_index")]
_NULLABLE_INTS = {"prompt_tokens": "Int64", "completion_tokens": "Int64", "total_tokens": "Int64",
                  "http_status": "Int16", "attempts": "Int16"}  # fmt: skip


def pandas_metadata(names: Iterable[str]) -> dict[bytes, bytes]:
    """Schema metadata that makes ``pd.read_parquet`` give nullable Int64/Int16
    token and status columns without any ``dtype_backend`` argument."""
    cols = [
        {"name": n, "field_name": n, "pandas_type": dtype.lower(), "numpy_type": dtype, "metadata": None}
        for n in names
        if (dtype := _NULLABLE_INTS.get(n))
    ]
    meta = {
        "index_columns": [],
        "column_indexes": [],
        "columns": cols,
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.0",
    }
    return {b"pandas": json.dumps(meta).encode()}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write temp, fsync, rename, fsync folder: readers see the old file or the new one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _FILE_MODE)  # mkstemp's 0600 would hide results from other analysts
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise
    fsync_dir(path.parent)


def _fault_pause(point: str) -> None:
    """Fault injection for the crash tests: DOCPIPE_PAUSE_AT=<point> holds the process
    at that point for a minute so a test can kill it there. Inert otherwise."""
    if os.environ.get("DOCPIPE_PAUSE_AT") == point:
        import time

        time.sleep(60)


def atomic_write_table(path: Path, tables: Iterable[pa.Table | pa.RecordBatch], schema: pa.Schema) -> int:
    """Stream tables into ``path`` atomically; returns rows written."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, _FILE_MODE)
    os.close(fd)
    rows = 0
    try:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for t in tables:
                if t.num_rows:
                    if isinstance(t, pa.RecordBatch):
                        t = pa.Table.from_batches([t], schema=schema)
                    # bounded row groups: a reader (resume, compaction) decodes one at a time
                    writer.write_table(t, row_group_size=ROW_GROUP_ROWS)
                    rows += t.num_rows
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        _fault_pause(f"before-replace:{path.name}")
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise
    fsync_dir(path.parent)
    return rows


def _unlink(path: str | Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class RunDir:
    """An output folder: its journal parts, results file and metadata."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.journal = self.path / JOURNAL_DIR
        self.results = self.path / RESULTS_FILE
        self.run_file = self.path / RUN_FILE
        self._lock_fd: int | None = None

    # -- setup ---------------------------------------------------------------

    def prepare(self) -> None:
        """Create the folder, prove it writable, take the lock, sweep stale temp files."""
        try:
            self.journal.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-probe"
            with open(probe, "wb") as f:
                f.write(b"ok")
                f.flush()
                os.fsync(f.fileno())
            probe.unlink()
        except OSError as e:
            raise StorageError(f"{self.path}: output folder is not writable: {e.strerror or e}") from None
        self._lock()
        for folder in (self.path, self.journal):
            for p in folder.glob(".*.tmp"):
                _unlink(p)
        for p in self.parts():
            if p.suffix == ".jsonl":
                repair_log(p)

    def _lock(self) -> None:
        import fcntl

        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StorageError(f"{self.path}: another docpipe run is writing to this folder") from None
        self._lock_fd = fd

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- journal -------------------------------------------------------------

    def parts(self) -> list[Path]:
        """Journal files (logs and parts) in sequence order."""
        if not self.journal.is_dir():
            return []
        found = [(int(m.group(2)), p) for p in self.journal.iterdir() if (m := _PART.match(p.name))]
        return [p for _, p in sorted(found)]

    def next_seq(self) -> int:
        parts = self.parts()
        return int(_PART.match(parts[-1].name).group(2)) + 1 if parts else 1  # type: ignore[union-attr]

    def log_path(self, seq: int) -> Path:
        return self.journal / f"log-{seq:09d}.jsonl"

    def iter_journal(self, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        """Every journal record in sequence order, in bounded batches."""
        for p in self.parts():
            try:
                if p.suffix == ".jsonl":
                    for batch in iter_log(p):
                        yield batch.select(columns) if columns else batch
                else:
                    yield from pq.ParquetFile(p).iter_batches(batch_size=8192, columns=columns)
            except (pa.ArrowInvalid, OSError) as e:
                raise StorageError(f"{p}: journal file is unreadable: {e}") from None

    def read_journal(self, columns: list[str] | None = None) -> pa.Table:
        schema = JOURNAL_SCHEMA if columns is None else pa.schema([JOURNAL_SCHEMA.field(c) for c in columns])
        return pa.Table.from_batches(list(self.iter_journal(columns)), schema=schema)

    def latest(self, columns: list[str] | None = None) -> pa.Table:
        """The newest outcome per request_id (whole table in memory: for small folders
        and the id/status columns; compaction streams instead)."""
        return latest_per_id(self.read_journal(columns))

    def skip_index(self, retry_failed: bool, prior: pa.Table | None = None) -> IdIndex:
        """The request_ids a run must not send again: all with an outcome, or only the
        ok ones under --retry-failed. 8 bytes per id, no per-row Python objects kept."""
        latest = self.latest(["request_id", "status"]) if prior is None else prior
        if retry_failed:
            latest = latest.filter(pc.equal(latest["status"], "ok"))
        return IdIndex(hash_ids(latest["request_id"]))

    @staticmethod
    def is_folded(files: list[Path]) -> bool:
        """Nothing to fold: no journal, or already the one part a fold leaves."""
        return not files or (len(files) == 1 and files[0].suffix == ".parquet")

    @contextmanager
    def folding(self, old: list[Path]) -> Iterator[pq.ParquetWriter]:
        """A writer for the part that replaces the journal files ``old``. On a clean exit
        the part is made durable under the next sequence number before ``old`` goes, so a
        crash in between leaves duplicates that resolve to the same latest outcome."""
        fd, name = tempfile.mkstemp(prefix=".fold.", suffix=".tmp", dir=self.journal)
        os.fchmod(fd, _FILE_MODE)
        os.close(fd)
        tmp = Path(name)
        try:
            with pq.ParquetWriter(tmp, JOURNAL_SCHEMA, compression="zstd") as writer:
                yield writer
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            tmp.replace(self.journal / f"part-{self.next_seq():09d}.parquet")
        except BaseException:
            _unlink(tmp)
            raise
        fsync_dir(self.journal)
        _fault_pause("fold")
        for p in old:
            _unlink(p)
        fsync_dir(self.journal)

    # -- metadata ------------------------------------------------------------

    def write_run_info(self, info: dict[str, Any]) -> None:
        atomic_write_bytes(self.run_file, json.dumps(info, indent=2, default=str).encode())

    def read_run_info(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.run_file.read_text())
        except (OSError, ValueError):
            return None


def latest_per_id(table: pa.Table) -> pa.Table:
    if table.num_rows == 0:
        return table
    ids = table["request_id"].combine_chunks().dictionary_encode()
    codes = ids.indices.to_numpy(zero_copy_only=False)
    reversed_codes = codes[::-1]
    _, first_in_reversed = np.unique(reversed_codes, return_index=True)
    positions = np.sort(len(codes) - 1 - first_in_reversed)
    return table.take(pa.array(positions))


#: How log lines are typed when read back (timestamps travel as epoch microseconds).
_LOG_SCHEMA = pa.schema(
    [pa.field(f.name, pa.int64()) if f.type == TS else f for f in JOURNAL_SCHEMA]
)


def repair_log(path: Path) -> None:
    """Cut a torn last line (a crash mid-write) off a log we hold the lock for."""
    size = path.stat().st_size
    if size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(max(0, size - (1 << 20)))
        tail = f.read()
        if tail.endswith(b"\n"):
            return
        cut = tail.rfind(b"\n")
        keep = size - len(tail) + cut + 1 if cut >= 0 else 0
        if cut < 0 and size > len(tail):
            raise StorageError(f"{path}: journal line longer than 1 MiB; cannot repair")
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())


def iter_log(path: Path) -> Iterator[pa.RecordBatch]:
    """A journal log in batches, typed; a torn last line (crash mid-write) is dropped."""
    size = path.stat().st_size
    if size == 0:
        return
    with open(path, "rb") as f:
        f.seek(max(0, size - 1))
        whole = f.read(1) == b"\n"
    if whole:
        source: Any = str(path)
    else:  # someone else's crashed run, read without the lock: keep the whole lines in memory
        data = path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end == 0:
            return
        source = pa.BufferReader(data[:end])
    reader = pj.open_json(
        source,
        read_options=pj.ReadOptions(block_size=1 << 20),
        parse_options=pj.ParseOptions(explicit_schema=_LOG_SCHEMA, unexpected_field_behavior="ignore"),
    )
    for batch in reader:
        arrays = [batch.column(n).cast(TS) if f.type == TS else batch.column(n)
                  for n, f in zip(JOURNAL_SCHEMA.names, JOURNAL_SCHEMA)]  # fmt: skip
        yield pa.RecordBatch.from_arrays(arrays, schema=JOURNAL_SCHEMA)


_FIELDS = [n for n in JOURNAL_SCHEMA.names if n not in ("run_id", "model")]


class JournalWriter:
    """Appends one JSON line per outcome to this run's log in the loop tick it arrives
    (one ``write()`` per tick), and fsyncs it every ``flush_interval`` in a worker
    thread (the loop never waits on the fsync). A failed write calls ``on_error``
    at once and makes every later ``add`` raise StorageError, so the run stops
    before it pays for answers it could not keep."""

    def __init__(self, run_dir: RunDir, run_id: str, model: str) -> None:
        self.run_dir = run_dir
        self.path = run_dir.log_path(run_dir.next_seq())
        self._prefix = orjson.dumps({"run_id": run_id, "model": model})[:-1] + b","
        try:
            self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, _FILE_MODE)
        except OSError as e:
            raise StorageError(f"{self.path}: cannot open the journal: {e.strerror or e}") from None
        fsync_dir(run_dir.journal)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="docpipe-journal")
        self.written = 0
        self._unsynced = 0
        self._pending: list[bytes] = []
        self.error: StorageError | None = None
        self.on_error: Callable[[StorageError], None] | None = None

    def add(self, outcome: Outcome) -> None:
        if self.error is not None:
            raise self.error
        o = outcome
        record = {n: getattr(o, n) for n in _FIELDS}
        record["started_at"] = round(o.started_at * 1e6)
        record["completed_at"] = round(o.completed_at * 1e6)
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
        self._pending.clear()
        try:
            n = os.write(self._fd, data)
        except OSError as e:
            self.error = StorageError(f"{self.path}: cannot write the journal: {e.strerror or e}")
        else:
            if n != len(data):  # disk full: stop here; the torn line is dropped on read
                self.error = StorageError(f"{self.path}: cannot write the journal: disk full (short write)")
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
        self._write_pending()
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            except OSError:
                pass

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        if self._fd is not None:
            self.flush_sync()
            os.close(self._fd)
            self._fd = None
            if self.written == 0:
                _unlink(self.path)


def output_schema(manifest_fields: Sequence[pa.Field]) -> pa.Schema:
    fields = [pa.field("request_id", pa.string()), pa.field("file_url", pa.string()),
              pa.field("question", pa.string()), *manifest_fields]  # fmt: skip
    fields += [JOURNAL_SCHEMA.field(n) for n in OUTCOME_COLUMNS]
    schema = pa.schema(fields)
    return schema.with_metadata(pandas_metadata(schema.names))
