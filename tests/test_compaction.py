"""Compaction: manifest order, latest outcome wins, nothing paid for is ever dropped."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipeline import run
from pipeline.compaction import compact
from pipeline.manifest import Manifest
from pipeline.rundir import RunDir

from .conftest import fast_config, make_rows, write_csv


def test_small_chunks_give_the_same_table_as_one_chunk(tmp_path: Path, sim) -> None:
    server = sim(fault_rate=0.3, retry_after_s=None, fault_kinds=("500", "truncated"))
    manifest = write_csv(tmp_path / "m.csv", make_rows(100))
    cfg = fast_config(manifest, tmp_path / "out", server)
    run(cfg)
    before = pd.read_parquet(tmp_path / "out" / "results.parquet")
    run_dir = RunDir(tmp_path / "out")
    assert compact(run_dir, Manifest(str(manifest), cfg), chunk_rows=7) == 100
    after = pd.read_parquet(tmp_path / "out" / "results.parquet")
    pd.testing.assert_frame_equal(before, after)
    assert [p.suffix for p in run_dir.parts()] == [".parquet"]


def test_rows_dropped_from_the_manifest_keep_their_paid_answers(tmp_path: Path, sim) -> None:
    server = sim()
    rows = make_rows(50)
    manifest = write_csv(tmp_path / "m.csv", rows)
    run(fast_config(manifest, tmp_path / "out", server))
    write_csv(manifest, rows[:30])
    run(fast_config(manifest, tmp_path / "out", server))
    assert len(pd.read_parquet(tmp_path / "out" / "results.parquet")) == 30
    journal = RunDir(tmp_path / "out").parts()
    assert sum(pq.read_metadata(p).num_rows for p in journal) == 50  # orphans kept
    write_csv(manifest, rows)
    before = server.stats()["requests"]
    summary = run(fast_config(manifest, tmp_path / "out", server))
    assert summary.ok == 50 and server.stats()["requests"] == before


def test_identical_rows_share_one_outcome(tmp_path: Path, sim) -> None:
    server = sim()
    rows = make_rows(10)
    rows[7] = dict(rows[2])
    manifest = write_csv(tmp_path / "m.csv", rows)
    summary = run(fast_config(manifest, tmp_path / "out", server))
    df = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert summary.exit_code == 0 and len(df) == 10
    assert df.loc[7, "request_id"] == df.loc[2, "request_id"] and df.loc[7, "answer"] == df.loc[2, "answer"]


@pytest.mark.parametrize("scope", [{"limit": 60}, {"shard": (2, 3)}])
def test_placing_by_position_matches_each_row_with_its_own_answer(tmp_path: Path, sim, scope) -> None:
    # compaction places outcomes on rows by position: with the run's id hashes, with
    # hashes it computes itself, and in small chunks, every row gets its own answer
    server = sim()
    manifest = write_csv(tmp_path / "m.csv", make_rows(100))
    cfg = fast_config(manifest, tmp_path / "out", server, **scope)
    summary = run(cfg)
    before = pd.read_parquet(tmp_path / "out" / "results.parquet")
    fresh = Manifest(str(manifest), cfg)
    assert fresh.id_hashes is None
    assert compact(RunDir(tmp_path / "out"), fresh, chunk_rows=7) == len(before) == summary.ok
    after = pd.read_parquet(tmp_path / "out" / "results.parquet")
    pd.testing.assert_frame_equal(before, after)
    rows = [(r.request_id, r.file_url) for batch in Manifest(str(manifest), cfg).rows() for r in batch]
    assert list(zip(after["request_id"], after["file_url"], strict=True)) == rows  # each id on its own row
    journal = RunDir(tmp_path / "out").read_journal(["request_id", "answer"]).to_pandas()
    assert dict(zip(after["request_id"], after["answer"], strict=True)) == dict(
        zip(journal["request_id"], journal["answer"], strict=True)
    )


def test_compaction_begun_while_the_log_grows_ends_as_one_done_at_the_end(tmp_path: Path, sim) -> None:
    # issue 10: the runner starts compaction's journal pass once every row is dispatched
    # (Compactor.spill up to the whole lines written so far) and finishes it after the
    # last answer; a row answered in both parts keeps its later outcome
    import asyncio

    from pipeline.compaction import Compactor
    from pipeline.journal import JournalWriter
    from pipeline.records import Completion, Failure, make_outcome

    manifest = write_csv(tmp_path / "m.csv", make_rows(60))
    out = tmp_path / "out"
    cfg = fast_config(manifest, out, sim())
    assert run(cfg.replace(limit=20)).ok == 20  # an earlier run's part comes first in the journal
    m = Manifest(str(manifest), cfg)
    rows = [r for batch in m.rows() for r in batch]  # the run's walk: id hashes for compaction
    run_dir = RunDir(out)
    ok = Completion("late answer", "stop", "m", "x", 1, 1, 2, None, 200)

    def outcome(i: int, failed: bool):  # type: ignore[no-untyped-def]
        failure = Failure("server_error", "boom", 500, None) if failed else None
        return make_outcome(rows[i], None if failed else ok, failure=failure, started=1.0, completed=2.0,
                            attempts=1, latency=0.1, cost=None)  # fmt: skip

    async def night() -> None:
        journal = JournalWriter(run_dir, "run-2", "m")
        for i in range(10, 40):
            journal.add(outcome(i, failed=i < 20))
        await journal.flush()
        compactor = Compactor(run_dir, m)
        await asyncio.to_thread(compactor.spill, journal.path, journal.position)
        assert journal.position[1] == 30
        for i in [*range(10, 20), *range(40, 60)]:  # rows 10-19 again: now answered
            journal.add(outcome(i, failed=False))
        await journal.flush()
        journal.close()
        with compactor:
            assert await asyncio.to_thread(compactor.finish) == 60

    asyncio.run(night())
    df = pd.read_parquet(out / "results.parquet")
    assert list(df["status"]) == ["ok"] * 60
    assert list(df["answer"][10:]) == ["late answer"] * 50 and "late answer" not in set(df["answer"][:10])
    assert [p.suffix for p in run_dir.parts()] == [".parquet"]  # folded into one part
    assert not (run_dir.journal / ".spill").exists()
