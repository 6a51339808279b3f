"""Crash safety and resume: kill -9, signals, deadlines, grown manifests, disk trouble.

Every test drives real ``docpipe run`` subprocesses against the simulator and
checks the run directory and what the simulator was asked, not internals."""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from pipeline.rundir import RunDir
from pipeline.simulator import answer_for

from .conftest import TEST_KEY, cli, make_rows, spawn, write_csv
from .crashpoint import spawn_paused

MODEL = "gpt-4o-all"


def run_args(manifest: Path, out: Path, url: str, *extra: str) -> list[str]:
    return ["run", str(manifest), "--out", str(out), "--base-url", url, "--api-key", TEST_KEY,
            "--quiet", "--timeout", "10", *extra]  # fmt: skip


def logged_rows(out: Path) -> int:
    return sum(p.read_bytes().count(b"\n") for p in (out / "_journal").glob("log-*.jsonl"))


def journal_rows(out: Path) -> int:
    """Outcomes in the journal, whether still in logs or folded into a part."""
    return RunDir(out).read_journal(["request_id"]).num_rows


def wait_for(predicate: Callable[[], bool], timeout: float, proc: subprocess.Popen[str] | None = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"process ended early ({proc.returncode}): {err}")
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


def assert_complete(out: Path, rows: list[dict[str, str]]) -> pd.DataFrame:
    df = pd.read_parquet(out / "results.parquet")
    assert len(df) == len(rows) and df["request_id"].is_unique
    assert (df["status"] == "ok").all()
    assert list(df["answer"]) == [answer_for(MODEL, f"{r['file_url']} {r['question']}") for r in rows]
    return df


#: kill -9 moments: a condition on the folder, or a storage checkpoint the harness pauses at
CHECKPOINTS = {"compaction": "before-replace:results.parquet", "journal-fold": "fold"}


@pytest.mark.parametrize("moment", ["early", "mid-run", "compaction", "journal-fold"])
def test_kill_9_then_same_command_completes_with_nothing_lost(tmp_path: Path, sim, moment: str) -> None:
    concurrency = 200
    server = sim(latency_s=0.4, latency_jitter=0.5)
    rows = make_rows(1500)
    manifest = write_csv(tmp_path / "m.csv", rows)
    out = tmp_path / "out"
    args = run_args(manifest, out, server.url, "--concurrency", str(concurrency), "--fixed-concurrency")
    marker = tmp_path / "paused"
    proc = spawn_paused(CHECKPOINTS[moment], marker, *args) if moment in CHECKPOINTS else spawn(*args)
    try:
        if moment == "early":
            wait_for(lambda: out.is_dir() and logged_rows(out) >= 1, 30, proc)
        elif moment == "mid-run":
            wait_for(lambda: out.is_dir() and logged_rows(out) >= 600 and server.stats()["in_flight"] >= 100, 30, proc)
        else:
            wait_for(marker.exists, 60, proc)
        in_flight = server.stats()["in_flight"]
        proc.kill()
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    first_ok = server.stats()["ok_requests"]
    again = cli(*args, timeout=120)
    assert again.returncode == 0, again.stderr
    df = assert_complete(out, rows)
    stats = server.stats()
    resent = stats["duplicate_ok"]
    # what was answered before the kill is never paid for again; only what was in flight
    assert resent <= concurrency, (moment, resent, in_flight, first_ok)
    if moment in CHECKPOINTS:  # killed after the last answer: nothing was in flight
        assert resent == 0 and stats["requests"] == first_ok == len(rows)
    assert stats["distinct_ok"] == len(rows)
    assert len(list(out.glob(".*.tmp"))) == 0
    assert [p.suffix for p in RunDir(out).parts()] == [".parquet"]  # folded into one part again
    assert df["run_id"].nunique() >= (1 if moment in CHECKPOINTS else 2)


def test_grown_manifest_sends_only_the_new_rows(tmp_path: Path, sim) -> None:
    server = sim()
    rows = make_rows(100)
    out = tmp_path / "out"
    manifest = write_csv(tmp_path / "m.csv", rows)
    assert cli(*run_args(manifest, out, server.url)).returncode == 0
    grown = rows + make_rows(10, start=100)
    write_csv(manifest, grown)
    before = server.stats()["requests"]
    proc = cli(*run_args(manifest, out, server.url))
    assert proc.returncode == 0, proc.stderr
    assert server.stats()["requests"] - before == 10
    assert_complete(out, grown)


def test_sigterm_stops_within_grace_then_resumes_without_resending(tmp_path: Path, sim) -> None:
    server = sim(latency_s=0.5)
    rows = make_rows(300)
    manifest = write_csv(tmp_path / "m.csv", rows)
    out = tmp_path / "out"
    args = run_args(manifest, out, server.url, "--concurrency", "20", "--grace-period", "10")
    proc = spawn(*args)
    wait_for(lambda: out.is_dir() and logged_rows(out) >= 40, 30, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 3
    # dispatch stopped, and every request already sent was waited for and kept
    assert journal_rows(out) == server.stats()["requests"] == server.stats()["ok_requests"]
    info = json.loads((out / "_run.json").read_text())
    assert info["ended"] == "aborted" and "SIGTERM" in info["reason"]
    partial = pd.read_parquet(out / "results.parquet")
    assert (partial["status"] == "ok").all() and 40 <= len(partial) < 300
    assert info["ok"] == len(partial) and info["pending"] == 300 - len(partial)
    again = cli(*args)
    assert again.returncode == 0, again.stderr
    assert_complete(out, rows)
    assert server.stats()["duplicate_ok"] == 0  # in-flight requests were waited for and kept


def test_second_signal_exits_at_once_and_journal_stays_consistent(tmp_path: Path, sim) -> None:
    server = sim(latency_s=3.0)
    rows = make_rows(60)
    manifest = write_csv(tmp_path / "m.csv", rows)
    out = tmp_path / "out"
    args = run_args(manifest, out, server.url, "--concurrency", "10", "--grace-period", "30")
    proc = spawn(*args)
    wait_for(lambda: out.is_dir() and logged_rows(out) >= 10, 30, proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 3
    # the second signal did not wait for the requests in flight (3 s each) ...
    journaled = journal_rows(out)
    assert journaled < server.stats()["requests"]
    # ... and what it had journaled is whole and readable
    assert len(RunDir(out).latest()) == journaled
    server.update(latency_s=0.01)
    again = cli(*args)
    assert again.returncode == 0, again.stderr
    assert_complete(out, rows)


def test_retry_failed_resends_only_failed_rows(tmp_path: Path, sim) -> None:
    server = sim(fault_rate=0.7, fault_attempts=10, fault_kinds=("500",))
    rows = make_rows(50)
    manifest = write_csv(tmp_path / "m.csv", rows)
    out = tmp_path / "out"
    args = run_args(manifest, out, server.url, "--max-attempts", "2")
    first = cli(*args)
    assert first.returncode == 1
    failed = int((pd.read_parquet(out / "results.parquet")["status"] == "failed").sum())
    assert 5 <= failed <= 45
    server.update(fault_rate=0.0)
    before = server.stats()["requests"]
    assert cli(*args).returncode == 1  # without --retry-failed failed rows stay as they are
    assert server.stats()["requests"] == before
    third = cli(*args, "--retry-failed")
    assert third.returncode == 0, third.stderr
    assert server.stats()["requests"] - before == failed
    assert_complete(out, rows)


def test_max_runtime_stops_dispatch_and_next_run_resumes(tmp_path: Path, sim) -> None:
    server = sim(latency_s=0.5)
    rows = make_rows(40)
    manifest = write_csv(tmp_path / "m.csv", rows)
    out = tmp_path / "out"
    # 40 rows at 2 in flight and 0.5 s each need 10 s: a 1.2 s limit stops well before the end
    proc = cli(*run_args(manifest, out, server.url, "--concurrency", "2", "--max-runtime", "1.2s"))
    assert proc.returncode == 3
    info = json.loads((out / "_run.json").read_text())
    assert "max runtime" in info["reason"] and info["pending"] > 0 and info["ok"] + info["pending"] == 40
    before = server.stats()["requests"]
    assert cli(*run_args(manifest, out, server.url, "--concurrency", "20")).returncode == 0
    assert_complete(out, rows)
    assert server.stats()["requests"] - before == info["pending"]
    assert server.stats()["duplicate_ok"] == 0


def test_unwritable_output_folder_is_exit_3_before_any_request(tmp_path: Path, sim) -> None:
    server = sim()
    manifest = write_csv(tmp_path / "m.csv", make_rows(5))
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    proc = cli(*run_args(manifest, blocker / "out", server.url))
    assert proc.returncode == 3
    assert "not writable" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert server.stats()["requests"] == 0


def test_full_disk_stops_the_run_and_keeps_what_was_written(tmp_path: Path, sim) -> None:
    server = sim(latency_s=0.05)
    rows = make_rows(400)
    manifest = write_csv(tmp_path / "m.csv", rows)
    out = tmp_path / "out"
    out.mkdir()
    args = run_args(manifest, out, server.url, "--concurrency", "8")

    def small_disk() -> None:  # the journal can hold ~60 outcomes, then writes fail (EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))

    proc = cli(*args, preexec_fn=small_disk)
    assert proc.returncode == 3, proc.stderr
    assert "journal" in proc.stderr
    sent_first = server.stats()["requests"]
    assert sent_first < 200  # stopped early, not after the whole manifest
    again = cli(*args)
    assert again.returncode == 0, again.stderr
    assert_complete(out, rows)
    # what the full disk run had written stayed readable and was not paid for again; lost are
    # only the requests in flight and the outcomes of the one write that failed (both <= concurrency)
    resent = server.stats()["duplicate_ok"]
    assert resent <= 2 * 8


def test_a_finished_folder_is_known_done_without_walking_the_manifest(tmp_path: Path, sim) -> None:
    from pipeline import run
    from pipeline.manifest import Manifest
    from pipeline.runner import answered_already

    from .conftest import fast_config

    server = sim(fault_rate=0.2, fault_kinds=("500",), retry_after_s=None)
    manifest = write_csv(tmp_path / "m.csv", make_rows(40))
    cfg = fast_config(manifest, tmp_path / "out", server, max_attempts=1)
    first = run(cfg)
    assert first.failed > 0
    run_dir = RunDir(tmp_path / "out")
    done = answered_already(run_dir, cfg, Manifest(str(manifest), cfg))
    assert done is not None and (done.ok, done.failed) == (first.ok, first.failed)
    # failed rows to ask again, or rows the results do not hold: the manifest is walked as before
    again = cfg.replace(retry_failed=True)
    assert answered_already(run_dir, again, Manifest(str(manifest), again)) is None
    write_csv(manifest, make_rows(45))
    assert answered_already(run_dir, cfg, Manifest(str(manifest), cfg)) is None
    before = server.stats()["requests"]
    resumed = run(cfg)
    assert server.stats()["requests"] == before + 5 and resumed.ok + resumed.failed == 45
    before = server.stats()["requests"]
    report = tmp_path / "out" / "_report.html"
    drawn = report.stat().st_mtime_ns
    assert run(cfg).ok == resumed.ok and server.stats()["requests"] == before
    assert report.stat().st_mtime_ns == drawn  # nothing sent: the answering run's report stays
