"""The row sender's rules over real HTTP: which failures fail a row and which stop the run."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pandas as pd

from pipeline import run

from .conftest import cli, fast_config, make_rows, write_csv


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_few_rows_that_always_fail_end_failed_and_the_run_finishes(tmp_path: Path, sim) -> None:
    # issue 16 defect 2: 30 of 300 rows always get a 500; the breaker must not take them for a dead gateway
    server = sim(latency_s=0.01)
    rows = make_rows(300)
    for i in range(5, 300, 10):
        rows[i]["question"] += " [[sim:status=500]]"
    manifest = write_csv(tmp_path / "m.csv", rows)
    summary = run(fast_config(manifest, tmp_path / "out", server, max_attempts=3, breaker_pause=0.05))

    assert (summary.exit_code, summary.ok, summary.failed, summary.pending) == (1, 270, 30, 0)
    df = pd.read_parquet(tmp_path / "out" / "results.parquet")
    bad = df[df["status"] == "failed"]
    assert list(bad.index) == list(range(5, 300, 10))
    assert (bad["error_type"] == "server_error").all() and (bad["attempts"] == 3).all()
    assert (bad["http_status"] == 500).all() and bad["latency_ms"].notna().all()
    assert server.stats()["requests"] == 270 + 30 * 3


def test_a_resume_with_retry_failed_sends_only_the_failed_rows_again(tmp_path: Path, sim) -> None:
    server = sim(latency_s=0.01)
    rows = make_rows(40)
    for i in (3, 17):
        rows[i]["question"] += " [[sim:status=500]]"
    manifest = write_csv(tmp_path / "m.csv", rows)
    cfg = fast_config(manifest, tmp_path / "out", server, max_attempts=2, breaker_pause=0.05)
    assert run(cfg).exit_code == 1
    before = server.stats()["requests"]
    again = run(cfg.replace(retry_failed=True))
    assert (again.exit_code, again.ok, again.failed) == (1, 38, 2)
    assert server.stats()["requests"] - before == 2 * 2


def test_a_gateway_that_refuses_connections_stops_the_run_at_once(tmp_path: Path) -> None:
    # issue 16 defect 5: connection refused before any answer -> exit 3 with the cause, not 15 min of probes
    manifest = write_csv(tmp_path / "m.csv", make_rows(50))
    out = tmp_path / "out"
    r = cli("run", str(manifest), "--out", str(out), "--base-url", f"http://127.0.0.1:{_closed_port()}/v1",
            "--api-key", "sk-test-0123456789abcdef", "--concurrency", "4", "--quiet")  # fmt: skip
    assert r.returncode == 3, r.stderr
    assert "cannot reach the gateway" in r.stderr and "127.0.0.1" in r.stderr
    assert "Traceback" not in r.stderr
    info = json.loads((out / "_run.json").read_text())
    assert (info["exit_code"], info["ended"], info["pending"], info["failed"]) == (3, "aborted", 50, 0)
    assert info["requests"] <= 4 + 3  # one wave, plus at most a retry per row


def test_tls_to_a_plain_http_gateway_stops_the_run_with_the_cause(tmp_path: Path, sim) -> None:
    server = sim()
    manifest = write_csv(tmp_path / "m.csv", make_rows(10))
    cfg = fast_config(manifest, tmp_path / "out", server, concurrency=2)
    summary = run(cfg.replace(base_url=server.url.replace("http://", "https://")))
    assert summary.exit_code == 3 and summary.pending == 10
    assert summary.reason is not None and "cannot reach the gateway" in summary.reason


def test_a_base_url_without_v1_stops_at_once_and_the_fixed_rerun_sends_every_row(tmp_path: Path, sim) -> None:
    # issue 16 defect 6: a web server's plain 404 is a wrong base URL, not 50 failed rows
    server = sim()
    manifest = write_csv(tmp_path / "m.csv", make_rows(50))
    out = tmp_path / "out"
    r = cli("run", str(manifest), "--out", str(out), "--base-url", server.root_url,
            "--api-key", "sk-test-0123456789abcdef", "--concurrency", "4", "--quiet")  # fmt: skip
    assert r.returncode == 3, r.stderr
    assert "usually ends in /v1" in r.stderr and "Traceback" not in r.stderr
    info = json.loads((out / "_run.json").read_text())
    assert (info["pending"], info["failed"]) == (50, 0)
    assert server.stats()["requests"] == 0  # the 404s came from the router, not the chat handler
    fixed = run(fast_config(manifest, out, server))
    assert (fixed.exit_code, fixed.ok) == (0, 50)
    assert server.stats()["requests"] == 50


def test_failed_rows_keep_the_last_attempts_latency_and_status(tmp_path: Path, sim) -> None:
    server = sim(latency_s=0.02)
    rows = make_rows(3)
    rows[1]["question"] += " [[sim:status=404]]"
    manifest = write_csv(tmp_path / "m.csv", rows)
    run(fast_config(manifest, tmp_path / "out", server))
    df = pd.read_parquet(tmp_path / "out" / "results.parquet")
    failed = df.iloc[1]
    assert (failed["status"], failed["error_type"], failed["http_status"]) == ("failed", "invalid_request", 404)
    assert df["latency_ms"].notna().all()


def test_an_abort_names_its_cause_once_and_no_missing_gateway_id(tmp_path: Path, sim) -> None:
    server = sim(api_key="sk-right-0123456789")
    manifest = write_csv(tmp_path / "m.csv", make_rows(10))
    out = tmp_path / "out"
    r = cli("run", str(manifest), "--out", str(out), "--base-url", server.url, "--api-key", "sk-wrong-0123456789",
            "--concurrency", "2")  # fmt: skip
    assert r.returncode == 3
    reason = json.loads((out / "_run.json").read_text())["reason"]
    assert reason.count("auth") == 1 and reason.startswith("auth: HTTP 401")
    assert "auth: auth:" not in r.stderr + r.stdout and "gateway id None" not in r.stderr


def test_a_hung_attempt_counts_toward_its_back_off_and_a_fast_failure_waits_it(sim) -> None:
    # issue 10: our back-off spaces the starts of two attempts (pipeline/retry.py). With a back-off
    # ceiling (0.9 s) under the timeout (1 s) a row that hung goes again without resting; a row
    # whose attempt failed at once (a 500) rests. Waits are the ones the sender asks its rest for.
    import asyncio

    from pipeline.budget import BudgetGuard
    from pipeline.client import GatewayClient
    from pipeline.config import load_config
    from pipeline.control import StopControl
    from pipeline.records import Row
    from pipeline.runner import pacer_for
    from pipeline.runrecord import RunRecord
    from pipeline.sender import RowSender

    server = sim(hang_s=30)
    cfg = load_config(base_url=server.url, api_key="k", timeout=1.0, backoff_initial=0.9, backoff_max=0.9,
                      max_attempts=3)  # fmt: skip
    url = "https://x.example/a.pdf"

    async def waits(fault: str) -> tuple[list[float], int]:
        rested: list[float] = []

        async def rest(seconds: float) -> None:
            rested.append(seconds)

        async with GatewayClient(cfg) as client:
            sender = RowSender(cfg, client, pacer_for(cfg), BudgetGuard(cfg), StopControl(), RunRecord(cfg))
            sender.rest = rest
            content = f"{url} q [[sim:fault={fault}*2]]"
            outcome = await sender.send(Row(0, f"r-{fault}", url, "q", content))
        assert outcome is not None and outcome.status == "ok", outcome
        return rested, outcome.attempts

    assert asyncio.run(waits("hang")) == ([0.0, 0.0], 3)
    fast, attempts = asyncio.run(waits("500"))
    assert attempts == 3 and len(fast) == 2 and all(0.0 < w <= 0.9 for w in fast), fast
