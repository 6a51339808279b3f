"""Behaving well against a real gateway: rate limits, adaptive concurrency, circuit
breaker, quota, streaming, unreadable documents. Real HTTP to the simulator."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pandas as pd

from pipeline import run
from pipeline.simulator import UNREADABLE_ANSWER

from .conftest import TEST_KEY, cli, fast_config, make_rows, write_csv


def test_rpm_limit_spaces_requests_so_they_never_overlap(tmp_path: Path, sim) -> None:
    # --rpm 240 sends one request every 0.25 s; answers take 0.02 s, so paced requests never
    # overlap at the gateway, while 20 unpaced workers would all be in flight at once.
    # (Every 60 s window holding at most rpm requests is proved with a fake clock in test_limits.)
    server = sim(rpm=240, latency_s=0.02, latency_jitter=0.0)
    manifest = write_csv(tmp_path / "m.csv", make_rows(20))
    summary = run(fast_config(manifest, tmp_path / "out", server, rpm=240, concurrency=20))
    stats = server.stats()
    assert (summary.exit_code, summary.ok, stats["requests"]) == (0, 20, 20)
    assert stats["max_in_flight"] <= 2, stats["max_in_flight"]
    assert stats["outcomes"].get("rpm_429", 0) == 0


def _mark_after(server, requests: int, marks: dict[str, dict]) -> threading.Thread:
    """Record the simulator's stats once it has seen ``requests`` requests, and start a new
    max-in-flight window there: the part of the run after it is judged on its own."""

    def watch() -> None:
        while server.stats()["requests"] < requests:
            time.sleep(0.05)
        marks["mark"] = server.stats()
        server.reset_window()

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def test_adaptive_concurrency_finds_the_gateway_capacity(tmp_path: Path, sim) -> None:
    server = sim(capacity=40, latency_s=0.5, retry_after_s=None)
    manifest = write_csv(tmp_path / "m.csv", make_rows(2000))
    marks: dict[str, dict] = {}
    # judged after the first 1000 requests (the first wave alone is 200, 160 of them 429s): by then
    # the limit has been found even on a loaded machine, where the learning takes more rounds
    watcher = _mark_after(server, 1000, marks)
    cfg = fast_config(manifest, tmp_path / "out", server, concurrency=200, backoff_initial=0.5, backoff_max=5.0)
    summary = run(cfg)
    watcher.join(timeout=5)
    end = server.stats()
    assert summary.exit_code == 0 and summary.ok == 2000
    late_requests = end["requests"] - marks["mark"]["requests"]
    late_429 = end["outcomes"].get("capacity_429", 0) - marks["mark"]["outcomes"].get("capacity_429", 0)
    print(
        f"adaptive: late 429 share {late_429}/{late_requests}, final concurrency {summary.concurrency_final}, "
        f"max in flight after the mark {end['max_in_flight_window']}"
    )
    assert late_requests > 900
    assert late_429 / late_requests < 0.05, (late_429, late_requests)
    assert 30 <= summary.concurrency_final <= 50
    assert end["max_in_flight_window"] <= 44
    info = json.loads((tmp_path / "out" / "_run.json").read_text())
    assert info["concurrency_final"] == summary.concurrency_final


def test_quota_exhausted_mid_run_stops_then_top_up_completes_exactly(tmp_path: Path, sim) -> None:
    server = sim(quota_requests=300, latency_s=0.02)
    rows = make_rows(1000)
    manifest = write_csv(tmp_path / "m.csv", rows)
    out = tmp_path / "out"
    args = ["run", str(manifest), "--out", str(out), "--base-url", server.url, "--api-key", TEST_KEY,
            "--concurrency", "16", "--quiet"]  # fmt: skip
    first = cli(*args)
    assert first.returncode == 3
    assert "quota" in first.stderr and "top up" in first.stderr
    partial = pd.read_parquet(out / "results.parquet")
    assert len(partial) == 300 and (partial["status"] == "ok").all()  # no pending row marked failed
    server.update(quota_requests=None)
    second = cli(*args)
    assert second.returncode == 0, second.stderr
    stats = server.stats()
    assert stats["ok_requests"] == 1000 and stats["duplicate_ok"] == 0
    assert len(pd.read_parquet(out / "results.parquet")) == 1000


def test_insufficient_balance_403_stops_the_run(tmp_path: Path, sim) -> None:
    server = sim(quota_requests=5, quota_style="403")
    manifest = write_csv(tmp_path / "m.csv", make_rows(100))
    summary = run(fast_config(manifest, tmp_path / "out", server, concurrency=4))
    assert summary.exit_code == 3 and summary.failed == 0 and summary.ok == 5
    assert "quota" in (summary.reason or "")
    assert server.stats()["requests"] <= 5 + 4


def test_model_not_served_stops_after_a_few_tries(tmp_path: Path, sim) -> None:
    server = sim(no_channel=True)
    manifest = write_csv(tmp_path / "m.csv", make_rows(100))
    summary = run(fast_config(manifest, tmp_path / "out", server, concurrency=4))
    assert summary.exit_code == 3 and summary.failed == 0
    assert "no_channel" in (summary.reason or "") and "docpipe models" in (summary.reason or "")
    assert server.stats()["requests"] <= 3 + 4


def test_breaker_gives_up_on_a_dead_gateway(tmp_path: Path, sim) -> None:
    server = sim(fault_rate=1.0, fault_attempts=1000, fault_kinds=("500",))
    manifest = write_csv(tmp_path / "m.csv", make_rows(200))
    # half the failures that open the breaker must be rows' first attempts: 8 fresh rows in flight
    cfg = fast_config(manifest, tmp_path / "out", server, concurrency=8, breaker_threshold=10,
                      breaker_probes=2, breaker_pause=0.2)  # fmt: skip
    summary = run(cfg)
    assert summary.exit_code == 3 and "kept failing" in (summary.reason or "")
    assert server.stats()["requests"] <= 10 + 8 + 2
    assert summary.pending >= 190


def test_breaker_probe_resumes_when_the_gateway_recovers(tmp_path: Path, sim) -> None:
    server = sim(fault_rate=1.0, fault_attempts=1000, fault_kinds=("502_html",))
    manifest = write_csv(tmp_path / "m.csv", make_rows(60))
    cfg = fast_config(manifest, tmp_path / "out", server, concurrency=4, breaker_threshold=8,
                      breaker_probes=20, breaker_pause=0.5, max_attempts=50, row_budget=60)  # fmt: skip

    def heal() -> None:
        while server.stats()["requests"] < 8:
            time.sleep(0.02)
        time.sleep(0.3)
        requests_while_open = server.stats()["requests"]
        time.sleep(1.0)
        healed["paused"] = server.stats()["requests"] - requests_while_open
        server.update(fault_rate=0.0)

    healed: dict[str, int] = {}
    t = threading.Thread(target=heal, daemon=True)
    t.start()
    summary = run(cfg)
    t.join()
    assert summary.exit_code == 0 and summary.ok == 60
    assert healed["paused"] <= 3  # while open: a probe now and then, not a retry storm


def test_streaming_and_plain_runs_give_the_same_answers_and_usage(tmp_path: Path, sim) -> None:
    server = sim()
    manifest = write_csv(tmp_path / "m.csv", make_rows(40))
    run(fast_config(manifest, tmp_path / "plain", server))
    run(fast_config(manifest, tmp_path / "stream", server, stream=True))
    a = pd.read_parquet(tmp_path / "plain" / "results.parquet")
    b = pd.read_parquet(tmp_path / "stream" / "results.parquet")
    assert (b["status"] == "ok").all() and not b["usage_estimated"].any()
    for col in ("answer", "prompt_tokens", "completion_tokens", "total_tokens", "finish_reason"):
        assert a[col].tolist() == b[col].tolist(), col


def test_stream_without_usage_estimates_tokens_and_says_so(tmp_path: Path, sim) -> None:
    server = sim(stream_usage=False)
    manifest = write_csv(tmp_path / "m.csv", make_rows(10))
    run(fast_config(manifest, tmp_path / "out", server, stream=True))
    df = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert (df["status"] == "ok").all() and df["usage_estimated"].all()
    assert (df["prompt_tokens"] > 0).all() and (df["completion_tokens"] > 0).all()


def test_stream_cut_before_finish_reason_is_retried(tmp_path: Path, sim) -> None:
    server = sim()
    rows = make_rows(5)
    rows[2]["question"] += " [[sim:fault=stream_cut*2]]"
    manifest = write_csv(tmp_path / "m.csv", rows)
    run(fast_config(manifest, tmp_path / "out", server, stream=True))
    df = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert (df["status"] == "ok").all() and df.loc[2, "attempts"] == 3


def test_unreadable_document_is_retried_then_failed_with_the_answer_kept(tmp_path: Path, sim) -> None:
    server = sim()
    rows = make_rows(6)
    rows[4]["question"] += " [[sim:unreadable]]"
    manifest = write_csv(tmp_path / "m.csv", rows)
    summary = run(fast_config(manifest, tmp_path / "out", server, unreadable_retries=1))
    df = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert summary.exit_code == 1
    bad = df.loc[4]
    assert bad["status"] == "failed" and bad["error_type"] == "unreadable_document"
    assert bad["attempts"] == 2 and "无法访问" in bad["error_message"]
    assert UNREADABLE_ANSWER.startswith("抱歉")
    assert (df.drop(index=4)["status"] == "ok").all()


def test_429s_do_not_use_up_attempts(tmp_path: Path, sim) -> None:
    server = sim()
    rows = make_rows(3)
    rows[1]["question"] += " [[sim:fault=429*4]]"
    manifest = write_csv(tmp_path / "m.csv", rows)
    summary = run(fast_config(manifest, tmp_path / "out", server, max_attempts=2))
    df = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert summary.exit_code == 0 and df.loc[1, "attempts"] == 5


def test_tpm_limit_paces_tokens_across_the_pool(tmp_path: Path, sim) -> None:
    server = sim(latency_s=0.3, latency_jitter=0.0)
    manifest = write_csv(tmp_path / "m.csv", make_rows(20))
    # each request is estimated at ~17 prompt + 50 max_tokens = 67 tokens: a bucket of 1200 tokens
    # lets 17 through at once, then one request every ~3.4 s (faster once real usage is known),
    # so never more than the first 17 are in flight, where 20 workers without it would all be
    summary = run(fast_config(manifest, tmp_path / "out", server, tpm=1200, max_tokens=50, concurrency=20))
    stats = server.stats()
    assert (summary.exit_code, summary.ok, stats["requests"]) == (0, 20, 20)
    assert 10 <= stats["max_in_flight"] <= 18, stats["max_in_flight"]
