"""Durable file operations: atomic replacement, folder fsync, the folder lock.

A file that readers may see is never written in place: it is written to a temp
file in the same folder (``.<name>.<random>.tmp``, swept by the next run), fsync'd,
renamed over the old one, and the folder is fsync'd, so a crash at any moment
leaves the old file or the new one. Temp files are created with mode 0666 and
the caller's umask applies, as for any file the user's tools create.

Crash points: :func:`checkpoint` marks the moments between the steps above. It
does nothing unless a hook was installed with :func:`set_checkpoint_hook`, which
only the crash-test harness (``tests/crashpoint.py``) does, in its own process.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import StorageError
from .memory import arrow_pool
from .schema import dictionary_columns

#: File names inside an output folder (underscore or dot: ``pd.read_parquet(OUT)`` skips them).
RESULTS_FILE = "results.parquet"
RUN_FILE = "_run.json"
REPORT_FILE = "_report.html"  # underscore: pd.read_parquet(OUT) skips it, as it skips _run.json
JOURNAL_DIR = "_journal"
LOCK_FILE = ".lock"
TEMP_GLOB = ".*.tmp"

#: Rows per Parquet row group: a reader (resume, compaction) decodes one at a time.
ROW_GROUP_ROWS = 16384

CheckpointHook = Callable[[str], None]
_checkpoint_hook: CheckpointHook | None = None


def set_checkpoint_hook(hook: CheckpointHook | None) -> CheckpointHook | None:
    """Install ``hook(point)`` to be called at every :func:`checkpoint`; returns the
    previous one. For the crash-test harness only: production code never calls it."""
    global _checkpoint_hook
    previous, _checkpoint_hook = _checkpoint_hook, hook
    return previous


def checkpoint(point: str) -> None:
    """A named moment on a write path where a crash must leave a recoverable folder
    (``before-replace:<file name>``, ``fold``). A no-op unless a hook is installed."""
    if _checkpoint_hook is not None:
        _checkpoint_hook(point)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable (best effort: some file
    systems cannot fsync a folder, and then there is nothing more to do)."""
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


def unlink_quietly(path: str | os.PathLike[str]) -> None:
    """Remove a file if it is there; a file already gone is not an error."""
    with contextlib.suppress(OSError):
        os.unlink(path)


def create_temp(folder: Path, stem: str) -> tuple[int, Path]:
    """A new, empty temp file ``folder/.<stem>.<random>.tmp`` open for writing."""
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC
    while True:
        tmp = folder / f".{stem}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:  # a name drawn twice: draw again
            continue


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Yield a temp path next to ``path``; on a clean exit the temp file is fsync'd and
    renamed over ``path`` and the folder fsync'd. On an exception it is removed and
    ``path`` is untouched."""
    fd, tmp = create_temp(path.parent, path.name)
    os.close(fd)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        checkpoint(f"before-replace:{path.name}")
        os.replace(tmp, path)
    except BaseException:
        unlink_quietly(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write temp, fsync, rename, fsync folder: readers see the old file or the new one."""
    with replacing(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_table(path: Path, tables: Iterable[pa.Table | pa.RecordBatch], schema: pa.Schema) -> int:
    """Stream tables into the Parquet file ``path`` atomically (zstd, bounded row
    groups); returns the rows written."""
    rows = 0
    dictionary: Any = dictionary_columns(schema)  # the stubs allow only a bool; pyarrow takes column names
    with (
        replacing(path) as tmp,
        pq.ParquetWriter(
            tmp, schema, compression="zstd", use_dictionary=dictionary, memory_pool=arrow_pool()
        ) as writer,
    ):
        for t in tables:
            if t.num_rows:
                table = pa.Table.from_batches([t], schema=schema) if isinstance(t, pa.RecordBatch) else t
                writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
                rows += t.num_rows
    return rows


class FolderLock:
    """An exclusive ``flock`` on a file: one writer per output folder. The kernel drops
    it when the process dies, so a crashed run never leaves a stale lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise StorageError naming the folder another run holds it in."""
        if self._fd is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StorageError(f"{self.path.parent}: another docpipe run is writing to this folder") from None
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (closing the file releases the flock)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
