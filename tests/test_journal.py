"""The journal: JournalWriter, the log reader, repair and latest-per-id, on files written here.

Logs are written by the real JournalWriter (or byte for byte as a crash leaves
them); no test sleeps or mocks the file system."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import orjson
import pandas as pd
import pyarrow as pa
import pytest

from pipeline import journal, storage
from pipeline.journal import JournalWriter, iter_log, latest_per_id, rejected_path, repair_log
from pipeline.memory import arrow_pool
from pipeline.records import Outcome
from pipeline.rundir import RunDir
from pipeline.schema import JOURNAL_SCHEMA
from pipeline.simulator import answer_for

from .conftest import TEST_KEY, cli, write_csv

MB = 1 << 20


def outcome(rid: str, status: str = "ok", answer: str | None = "fine", row: int = 0) -> Outcome:
    return Outcome(request_id=rid, row_index=row, status=status, answer=answer, finish_reason="stop",
                   response_model="gpt-4o", prompt_tokens=10, completion_tokens=20, total_tokens=30,
                   usage_estimated=False, error_type=None if status == "ok" else "server_error",
                   error_message=None, http_status=200 if status == "ok" else 500, attempts=1, latency_ms=12.5,
                   started_at=1_700_000_000.25, completed_at=1_700_000_001.5, response_id="chatcmpl-1",
                   gateway_request_id=None, cost_usd=None)  # fmt: skip


async def _write(run_dir: RunDir, outcomes: list[Outcome], run_id: str) -> Path:
    writer = JournalWriter(run_dir, run_id, "gpt-4o-all")
    for o in outcomes:
        writer.add(o)
    await writer.flush()
    writer.close()
    return writer.path


def write_log(run_dir: RunDir, outcomes: list[Outcome], run_id: str = "run-1") -> Path:
    """A log as a run writes it: through JournalWriter, one line per outcome."""
    return asyncio.run(_write(run_dir, outcomes, run_id))


def line(o: Outcome) -> bytes:
    """One journal line, byte for byte as JournalWriter writes it."""
    return orjson.dumps({"run_id": "r", "model": "m", **{
        n: getattr(o, n) for n in JOURNAL_SCHEMA.names if n not in ("run_id", "model", "started_at", "completed_at")
    }, "started_at": 1, "completed_at": 2}) + b"\n"  # fmt: skip


@pytest.fixture
def run_dir(tmp_path: Path) -> Iterator[RunDir]:
    rd = RunDir(tmp_path / "out")
    rd.prepare()
    yield rd
    rd.release()


def ids(batches: Iterator[pa.RecordBatch] | pa.Table) -> list[str]:
    table = batches if isinstance(batches, pa.Table) else pa.Table.from_batches(list(batches), JOURNAL_SCHEMA)
    return table["request_id"].to_pylist()


# -------------------------------------------------------------------------- writer and reader


def test_writer_lines_read_back_typed_with_every_field(run_dir: RunDir) -> None:
    o = outcome("a", answer="héllo\nwörld")
    path = write_log(run_dir, [o, outcome("b", "failed", None, row=1)])
    table = pa.Table.from_batches(list(iter_log(path)))
    assert table.schema == JOURNAL_SCHEMA
    first = table.to_pylist()[0]
    assert first["answer"] == "héllo\nwörld" and first["run_id"] == "run-1" and first["model"] == "gpt-4o-all"
    assert first["started_at"].timestamp() == 1_700_000_000.25 and first["attempts"] == 1
    assert table["status"].to_pylist() == ["ok", "failed"]


@pytest.mark.parametrize("size", [3 * MB, 20 * MB])
def test_answers_of_any_size_round_trip(run_dir: RunDir, size: int) -> None:
    big = "x" * (size - 7) + "the end"
    write_log(run_dir, [outcome("small-1"), outcome("big", answer=big), outcome("small-2")])
    latest = run_dir.latest()
    assert ids(latest) == ["small-1", "big", "small-2"]
    assert latest["answer"][1].as_py() == big


def test_a_big_answer_among_many_small_lines_reads_them_all(run_dir: RunDir) -> None:
    small = [outcome(f"s{i}", answer="y" * 500) for i in range(20_000)]  # several read chunks
    write_log(run_dir, [*small[:10_000], outcome("big", answer="z" * (5 * MB)), *small[10_000:]])
    table = run_dir.read_journal(["request_id", "answer"])
    assert table.num_rows == 20_001 and ids(table)[10_000] == "big"
    assert len(table["answer"][10_000].as_py()) == 5 * MB


def test_a_log_is_parsed_in_chunks_of_at_most_one_mib(run_dir: RunDir, monkeypatch: pytest.MonkeyPatch) -> None:
    # issue 10: 4 MiB chunks parsed on every core left ~30 MB more behind at compaction of 10 000 rows
    path = write_log(run_dir, [outcome(f"r{i}", answer="y" * 600) for i in range(4000)])  # ~3.5 MiB
    chunks: list[int] = []
    parse = journal._parse
    monkeypatch.setattr(journal, "_parse", lambda lines: chunks.append(len(lines)) or parse(lines))
    assert sum(b.num_rows for b in iter_log(path)) == 4000
    assert len(chunks) >= 3 and max(chunks) <= MB + 1000  # a chunk ends at the line end after 1 MiB


def test_reading_a_log_allocates_from_docpipes_pool_not_arrows_default(run_dir: RunDir) -> None:
    # Arrow's default pool (mimalloc) keeps what a parse peaked at, per thread; arrow_pool hands it back
    path = write_log(run_dir, [outcome(f"r{i}", answer="y" * 600) for i in range(2000)])
    default, ours = pa.default_memory_pool(), arrow_pool()
    before, ours_before = default.total_bytes_allocated(), ours.total_bytes_allocated()
    assert sum(b.num_rows for b in iter_log(path)) == 2000
    assert default.total_bytes_allocated() == before
    assert ours.total_bytes_allocated() > ours_before + 1_000_000  # the parse happened, in our pool


def test_empty_log_reads_as_nothing_and_needs_no_repair(run_dir: RunDir) -> None:
    path = journal.log_path(run_dir.journal, 1)
    path.write_bytes(b"")
    assert list(iter_log(path)) == []
    repair_log(path)
    assert path.read_bytes() == b"" and not rejected_path(path).exists()
    assert run_dir.latest().num_rows == 0


def test_blank_lines_are_skipped_not_rejected(run_dir: RunDir) -> None:
    path = journal.log_path(run_dir.journal, 1)
    path.write_bytes(line(outcome("a")) + b"\n  \n" + line(outcome("b")))
    assert ids(iter_log(path)) == ["a", "b"]
    repair_log(path)
    assert not rejected_path(path).exists()


# -------------------------------------------------------------------------- torn last line


@pytest.mark.parametrize("torn_bytes", [40, 3 * MB])
def test_torn_last_line_is_ignored_then_cut_off(run_dir: RunDir, torn_bytes: int) -> None:
    whole = line(outcome("a")) + line(outcome("b"))
    torn = line(outcome("c", answer="w" * torn_bytes))[:torn_bytes]
    path = journal.log_path(run_dir.journal, 1)
    path.write_bytes(whole + torn)
    assert ids(iter_log(path)) == ["a", "b"]
    repair_log(path)
    assert path.read_bytes() == whole and not rejected_path(path).exists()


def test_torn_line_that_lost_only_its_newline_is_kept(run_dir: RunDir) -> None:
    path = journal.log_path(run_dir.journal, 1)
    path.write_bytes(line(outcome("a")) + line(outcome("b"))[:-1])
    repair_log(path)
    assert ids(iter_log(path)) == ["a", "b"] and path.read_bytes().endswith(b"}\n")


def test_log_of_one_torn_line_longer_than_a_block_repairs_to_empty(run_dir: RunDir) -> None:
    path = journal.log_path(run_dir.journal, 1)
    path.write_bytes(line(outcome("a", answer="q" * (3 * MB)))[: 2 * MB])
    assert list(iter_log(path)) == []
    repair_log(path)
    assert path.read_bytes() == b""


# -------------------------------------------------------------------------- unreadable lines


GARBAGE = {
    "not json": b"this is not json",
    "half a record": b'{"request_id": "g", "status": "ok", "answ',
    "wrong type": b'{"request_id": "g", "status": "ok", "attempts": "many"}',
    "out of range": b'{"request_id": "g", "status": "ok", "attempts": 70000}',
    "no request_id": b'{"status": "ok", "answer": "orphan"}',
    "no status": b'{"request_id": "g", "answer": "what happened?"}',
    "an array": b"[1, 2, 3]",
    "two records": b'{"request_id": "g", "status": "ok"}{"request_id": "h", "status": "ok"}',
    "invalid utf-8": b'{"request_id": "g\xff", "status": "ok"}',
}


@pytest.mark.parametrize("bad", GARBAGE.values(), ids=GARBAGE.keys())
def test_unreadable_line_is_skipped_by_readers(run_dir: RunDir, bad: bytes, caplog: pytest.LogCaptureFixture) -> None:
    path = journal.log_path(run_dir.journal, 1)
    path.write_bytes(line(outcome("a")) + bad + b"\n" + line(outcome("b")))
    with caplog.at_level(logging.WARNING, logger="pipeline.journal"):
        assert ids(iter_log(path)) == ["a", "b"]
    assert "skipped 1 unreadable journal line(s) (line 2)" in caplog.text and str(path) in caplog.text


@pytest.mark.parametrize("bad", GARBAGE.values(), ids=GARBAGE.keys())
def test_repair_sets_unreadable_lines_aside_and_keeps_the_rest(
    run_dir: RunDir, bad: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = journal.log_path(run_dir.journal, 1)
    good = line(outcome("a")) + line(outcome("b"))
    path.write_bytes(line(outcome("a")) + bad + b"\n" + line(outcome("b")))
    with caplog.at_level(logging.WARNING, logger="pipeline.journal"):
        repair_log(path)
    assert path.read_bytes() == good
    assert rejected_path(path).read_bytes() == bad + b"\n"
    assert "set aside in rejected-000000001.jsonl" in caplog.text
    assert len(caplog.records) == 1  # one line of warning, naming the file


def test_a_rejected_row_counts_as_not_done(run_dir: RunDir) -> None:
    """The set-aside line was the only outcome of its row: the next run asks it again."""
    path = journal.log_path(run_dir.journal, 1)
    path.write_bytes(line(outcome("a")) + line(outcome("lost"))[:-3] + b"#garbage\n" + line(outcome("b")))
    run_dir.release()
    again = RunDir(run_dir.path)
    again.prepare()  # a run starting: repair under the lock
    try:
        skip = again.skip_index(retry_failed=False)
        assert len(skip) == 2 and ids(again.latest()) == ["a", "b"]
        assert rejected_path(path).exists() and [p.name for p in again.parts()] == [path.name]
    finally:
        again.release()


def test_crash_while_setting_aside_leaves_the_line_in_both_files_then_converges(run_dir: RunDir) -> None:
    path = journal.log_path(run_dir.journal, 1)
    path.write_bytes(line(outcome("a")) + b"garbage\n" + line(outcome("b")))

    class Crash(Exception):
        pass

    def crash(point: str) -> None:
        if point == f"before-replace:{path.name}":
            raise Crash(point)

    previous = storage.set_checkpoint_hook(crash)
    try:
        with pytest.raises(Crash):
            repair_log(path)
    finally:
        storage.set_checkpoint_hook(previous)
    assert b"garbage" in path.read_bytes() and rejected_path(path).read_bytes() == b"garbage\n"
    repair_log(path)
    assert path.read_bytes() == line(outcome("a")) + line(outcome("b"))
    assert rejected_path(path).read_bytes() == b"garbage\ngarbage\n"


def test_a_garbage_line_longer_than_a_block_is_set_aside(run_dir: RunDir) -> None:
    path = journal.log_path(run_dir.journal, 1)
    garbage = b'{"request_id": "g", "status": ' + b"9" * (3 * MB)  # never closed
    path.write_bytes(line(outcome("a")) + garbage + b"\n" + line(outcome("b")))
    repair_log(path)
    assert ids(iter_log(path)) == ["a", "b"] and rejected_path(path).read_bytes() == garbage + b"\n"


# -------------------------------------------------------------------------- many files, latest wins


def test_two_logs_and_a_part_latest_outcome_wins_by_sequence_then_line(run_dir: RunDir) -> None:
    first = write_log(run_dir, [outcome("a", "failed"), outcome("b")])
    with run_dir.folding([first]) as fold:  # the folded past
        fold.write_table(pa.Table.from_batches(list(iter_log(first))))
    assert [p.name for p in run_dir.parts()] == ["part-000000002.parquet"]
    write_log(run_dir, [outcome("a", "ok", "second"), outcome("c", "failed")], run_id="run-2")
    write_log(run_dir, [outcome("c", "ok", "third"), outcome("a", "ok", "third")], run_id="run-3")
    assert [p.name for p in run_dir.parts()] == ["part-000000002.parquet", "log-000000003.jsonl",
                                                 "log-000000004.jsonl"]  # fmt: skip
    latest = run_dir.latest()
    assert ids(latest) == ["b", "c", "a"]  # in the order of their latest outcomes
    assert latest["answer"].to_pylist() == ["fine", "third", "third"]
    assert latest["run_id"].to_pylist() == ["run-1", "run-3", "run-3"]
    assert len(run_dir.skip_index(retry_failed=True)) == 3


def test_folding_replaces_the_old_files_with_one_part_under_the_next_sequence(run_dir: RunDir) -> None:
    write_log(run_dir, [outcome("a")])
    write_log(run_dir, [outcome("a", answer="newer"), outcome("b")])
    old = run_dir.parts()
    with run_dir.folding(old) as fold:
        fold.write_table(run_dir.latest())
    assert [p.name for p in run_dir.parts()] == ["part-000000003.parquet"]
    assert run_dir.latest()["answer"].to_pylist() == ["newer", "fine"]


def test_latest_per_id_keeps_the_last_row_of_each_id_in_order() -> None:
    table = pa.table({"request_id": ["a", "b", "a", "c", "b", "a"], "n": [1, 2, 3, 4, 5, 6]})
    latest = latest_per_id(table)
    assert latest.to_pydict() == {"request_id": ["c", "b", "a"], "n": [4, 5, 6]}
    assert latest_per_id(table.slice(0, 0)).num_rows == 0


def test_writer_removes_a_log_it_never_wrote_to(run_dir: RunDir) -> None:
    path = write_log(run_dir, [])
    assert not path.exists() and run_dir.parts() == []


# -------------------------------------------------------------------------- the folder stays usable (CLI)


def id_manifest(path: Path, n: int, question: str = "What is item {i}?") -> Path:
    rows = [{"id": f"r{i}", "file_url": f"https://docs.example.com/{i}.pdf", "question": question.format(i=i)}
            for i in range(n)]  # fmt: skip
    return write_csv(path, rows)


def run_args(manifest: Path, out: Path, url: str) -> list[str]:
    return ["run", str(manifest), "--out", str(out), "--base-url", url, "--api-key", TEST_KEY, "--quiet",
            "--timeout", "60"]  # fmt: skip


def test_huge_answers_left_in_a_crashed_runs_log_keep_the_folder_usable(tmp_path: Path, sim) -> None:
    """Issue 16, defect 3: a log holding 3 MB and 20 MB answers (a run killed before
    compaction) is read by ``summary`` and resumed by ``run``, which sends nothing."""
    server = sim()
    manifest = id_manifest(tmp_path / "m.csv", 3)
    out = tmp_path / "out"
    answers = {"r0": "a" * (3 * MB), "r1": "small", "r2": "b" * (20 * MB)}
    rd = RunDir(out)
    rd.prepare()
    write_log(rd, [outcome(rid, answer=a, row=i) for i, (rid, a) in enumerate(answers.items())])
    rd.release()
    summary = cli("summary", str(out))
    assert summary.returncode == 0 and "3 ok" in summary.stdout, summary.stderr
    again = cli(*run_args(manifest, out, server.url), timeout=120)
    assert again.returncode == 0, again.stderr
    assert server.stats()["requests"] == 0
    df = pd.read_parquet(out / "results.parquet")
    assert df["answer"].tolist() == list(answers.values())
    assert cli("summary", str(out)).returncode == 0


def test_unreadable_journal_line_is_set_aside_and_its_row_asked_again(tmp_path: Path, sim) -> None:
    server = sim()
    manifest = id_manifest(tmp_path / "m.csv", 3)
    out = tmp_path / "out"
    rd = RunDir(out)
    rd.prepare()
    log = journal.log_path(rd.journal, 1)
    garbage = line(outcome("r1"))[:50] + b"\x00\x00 overwritten"
    log.write_bytes(line(outcome("r0")) + garbage + b"\n" + line(outcome("r2")))
    rd.release()
    proc = cli(*run_args(manifest, out, server.url))
    assert proc.returncode == 0, proc.stderr
    assert "rejected-000000001.jsonl" in proc.stderr and str(log) in proc.stderr
    assert server.stats()["requests"] == 1  # only r1, whose outcome was unreadable
    assert (out / "_journal" / "rejected-000000001.jsonl").read_bytes() == garbage + b"\n"
    df = pd.read_parquet(out / "results.parquet")
    assert df["request_id"].tolist() == ["r0", "r1", "r2"] and (df["status"] == "ok").all()
    assert df["answer"][1] == answer_for("gpt-4o-all", "https://docs.example.com/1.pdf What is item 1?")


@pytest.mark.parametrize("size", [3 * MB, 20 * MB])
def test_answers_of_megabytes_round_trip_through_a_real_run(tmp_path: Path, sim, size: int) -> None:
    server = sim()
    manifest = id_manifest(tmp_path / "m.csv", 3, question=f"Item {{i}}: everything [[sim:answer_bytes={size}]]")
    out = tmp_path / "out"
    first = cli(*run_args(manifest, out, server.url), timeout=120)
    assert first.returncode == 0, first.stderr
    df = pd.read_parquet(out / "results.parquet")
    assert [len(a.encode()) for a in df["answer"]] == [size] * 3 and (df["status"] == "ok").all()
    assert cli("summary", str(out)).returncode == 0
    again = cli(*run_args(manifest, out, server.url), timeout=120)
    assert again.returncode == 0, again.stderr
    assert server.stats()["requests"] == 3  # nothing asked twice
    pd.testing.assert_frame_equal(pd.read_parquet(out / "results.parquet"), df)
