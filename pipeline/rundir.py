"""The output folder a run writes: its paths, lock, journal and run metadata.

::

    OUT/results.parquet   one row per manifest row that has an outcome, manifest order
    OUT/_run.json         run metadata (underscore: pd.read_parquet(OUT) must skip it)
    OUT/_journal/         the outcome journal (see :mod:`pipeline.journal`)
    OUT/.lock             held while a run writes here

:class:`RunDir` joins the durable file operations of :mod:`pipeline.storage`
and the journal of :mod:`pipeline.journal` into what the runner, compaction,
``validate`` and ``summary`` need of one folder.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from . import journal
from .arrowutil import string_scalar
from .errors import StorageError
from .idset import IdIndex, hash_ids
from .schema import JOURNAL_SCHEMA
from .storage import (
    JOURNAL_DIR,
    LOCK_FILE,
    RESULTS_FILE,
    RUN_FILE,
    TEMP_GLOB,
    FolderLock,
    atomic_write_bytes,
    unlink_quietly,
)


class RunDir:
    """An output folder: its journal files, results file and metadata."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.journal = self.path / JOURNAL_DIR
        self.results = self.path / RESULTS_FILE
        self.run_file = self.path / RUN_FILE
        self._lock = FolderLock(self.path / LOCK_FILE)

    # -- setup ---------------------------------------------------------------

    def prepare(self) -> None:
        """Create the folder, prove it writable, take the lock, sweep stale temp files,
        and repair the logs a crashed run left (torn last line, unreadable lines)."""
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
        self._lock.acquire()
        for folder in (self.path, self.journal):
            for p in folder.glob(TEMP_GLOB):
                unlink_quietly(p)
        for p in self.parts():
            if journal.is_log(p):
                try:
                    journal.repair_log(p)
                except OSError as e:
                    raise StorageError(f"{p}: cannot repair the journal: {e.strerror or e}") from None

    def release(self) -> None:
        """Drop the folder lock."""
        self._lock.release()

    # -- journal -------------------------------------------------------------

    def parts(self) -> list[Path]:
        """Journal files (logs and parts) in sequence order."""
        return journal.journal_files(self.journal)

    def next_seq(self) -> int:
        return journal.next_seq(self.journal)

    def log_path(self, seq: int) -> Path:
        return journal.log_path(self.journal, seq)

    def iter_journal(self, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        """Every journal record in sequence order, in bounded batches."""
        return journal.iter_files(self.parts(), columns)

    def read_journal(self, columns: list[str] | None = None) -> pa.Table:
        """The whole journal as one table (every record, not only the latest)."""
        schema = JOURNAL_SCHEMA if columns is None else pa.schema([JOURNAL_SCHEMA.field(c) for c in columns])
        return pa.Table.from_batches(list(self.iter_journal(columns)), schema=schema)

    def latest(self, columns: list[str] | None = None) -> pa.Table:
        """The newest outcome per request_id (whole table in memory: for small folders
        and the id/status columns; compaction streams instead)."""
        return journal.latest_per_id(self.read_journal(columns))

    def skip_index(self, retry_failed: bool, prior: pa.Table | None = None) -> IdIndex:
        """The request_ids a run must not send again: all with an outcome, or only the
        ok ones under --retry-failed. 8 bytes per id, no per-row Python objects kept."""
        latest = self.latest(["request_id", "status"]) if prior is None else prior
        if retry_failed and latest.num_rows:
            # here only: importing pyarrow.compute takes 0.1-0.2 s (it parses every kernel's
            # docstring), which a fresh run would spend before its first request
            import pyarrow.compute as pc

            latest = latest.filter(pc.equal(latest["status"], string_scalar("ok")))
        return IdIndex(hash_ids(latest["request_id"]))

    @staticmethod
    def is_folded(files: list[Path]) -> bool:
        """Nothing to fold: no journal, or already the one part a fold leaves."""
        return not files or (len(files) == 1 and not journal.is_log(files[0]))

    def folding(self, old: list[Path]) -> contextlib.AbstractContextManager[pq.ParquetWriter]:
        """A writer for the part that replaces the journal files ``old`` (see
        :func:`pipeline.journal.folding`)."""
        return journal.folding(self.journal, old)

    # -- metadata ------------------------------------------------------------

    def write_run_info(self, info: dict[str, Any]) -> None:
        """Replace ``_run.json`` atomically."""
        atomic_write_bytes(self.run_file, json.dumps(info, indent=2, default=str).encode())

    def read_run_info(self) -> dict[str, Any] | None:
        """``_run.json``, or None when it is missing or unreadable."""
        try:
            info = json.loads(self.run_file.read_text())
        except (OSError, ValueError):
            return None
        return info if isinstance(info, dict) else None
