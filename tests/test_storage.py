"""Durable file operations: atomic replacement, permissions, the folder lock, crash points."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import storage
from pipeline.errors import StorageError
from pipeline.rundir import RunDir
from pipeline.storage import FolderLock, atomic_write_bytes, atomic_write_table

from .conftest import ROOT


def umask() -> int:
    """This process's umask, read without changing it (Linux)."""
    for entry in Path("/proc/self/status").read_text().splitlines():
        if entry.startswith("Umask:"):
            return int(entry.split()[1], 8)
    pytest.skip("no /proc/self/status")


@pytest.fixture
def points() -> Iterator[list[str]]:
    """The checkpoints passed, in order (a recording hook, removed afterwards)."""
    seen: list[str] = []
    previous = storage.set_checkpoint_hook(seen.append)
    yield seen
    storage.set_checkpoint_hook(previous)


def test_atomic_write_bytes_replaces_with_normal_permissions_and_no_temp_left(tmp_path: Path) -> None:
    target = tmp_path / "info.json"
    target.write_bytes(b"old")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask()  # the umask applies, as for any file
    assert list(tmp_path.glob(storage.TEMP_GLOB)) == []


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "results.parquet"
    atomic_write_table(target, [pa.table({"n": [1, 2]})], pa.schema([("n", pa.int64())]))

    def tables() -> Iterator[pa.Table]:
        yield pa.table({"n": [3]})
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write_table(target, tables(), pa.schema([("n", pa.int64())]))
    assert pq.read_table(target)["n"].to_pylist() == [1, 2]
    assert list(tmp_path.glob(storage.TEMP_GLOB)) == []


def test_atomic_write_table_counts_rows_of_tables_and_batches(tmp_path: Path) -> None:
    schema = pa.schema([("n", pa.int64())])
    batch = pa.record_batch([pa.array([4, 5])], schema=schema)
    rows = atomic_write_table(tmp_path / "t.parquet", [pa.table({"n": [1, 2, 3]}), batch, schema.empty_table()], schema)
    assert rows == 5 and pq.read_table(tmp_path / "t.parquet")["n"].to_pylist() == [1, 2, 3, 4, 5]


def test_checkpoint_comes_after_the_temp_is_durable_and_before_the_target_changes(tmp_path: Path) -> None:
    target = tmp_path / "results.parquet"
    target.write_bytes(b"old")
    seen: list[tuple[str, bytes, int]] = []

    def hook(point: str) -> None:
        temps = list(tmp_path.glob(".results.parquet.*.tmp"))
        seen.append((point, target.read_bytes(), len(temps)))

    previous = storage.set_checkpoint_hook(hook)
    try:
        atomic_write_bytes(target, b"new")
    finally:
        storage.set_checkpoint_hook(previous)
    assert seen == [("before-replace:results.parquet", b"old", 1)]


def test_checkpoints_are_a_no_op_without_a_hook(tmp_path: Path) -> None:
    storage.checkpoint("fold")  # nothing installed: nothing happens
    atomic_write_bytes(tmp_path / "x", b"1")
    assert (tmp_path / "x").read_bytes() == b"1"


def test_folding_passes_its_checkpoints_in_order(tmp_path: Path, points: list[str]) -> None:
    rd = RunDir(tmp_path / "out")
    rd.prepare()
    try:
        old = rd.journal / "log-000000001.jsonl"
        old.write_bytes(b"")
        with rd.folding([old]):
            pass
    finally:
        rd.release()
    assert points == ["before-replace:part-000000002.parquet", "fold"]
    assert not old.exists()


def test_folder_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    first, second = FolderLock(tmp_path / ".lock"), FolderLock(tmp_path / ".lock")
    first.acquire()
    with pytest.raises(StorageError, match=f"{tmp_path}: another docpipe run is writing to this folder"):
        second.acquire()
    first.release()
    second.acquire()
    second.release()


def test_prepare_sweeps_temp_files_a_crash_left(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "_journal").mkdir(parents=True)
    (out / ".results.parquet.abc123.tmp").write_bytes(b"half")
    (out / "_journal" / ".part-000000002.parquet.def456.tmp").write_bytes(b"half")
    rd = RunDir(out)
    rd.prepare()
    rd.release()
    assert list(out.rglob(storage.TEMP_GLOB)) == []


def test_importing_and_using_the_storage_modules_never_touches_the_umask(tmp_path: Path) -> None:
    code = f"""
import os
calls = []
real = os.umask
os.umask = lambda mask: calls.append(mask) or real(mask)
from pathlib import Path
import pipeline.compaction, pipeline.runner, pipeline.summary
from pipeline.rundir import RunDir
from pipeline.storage import atomic_write_bytes
rd = RunDir({str(tmp_path / "out")!r})
rd.prepare()
rd.write_run_info({{"ok": 1}})
rd.release()
assert calls == [], calls
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_library_reads_no_environment_variable_for_crash_points() -> None:
    sources = "".join(p.read_text() for p in (ROOT / "pipeline").rglob("*.py"))
    assert "PAUSE_AT" not in sources and "os.umask" not in sources
