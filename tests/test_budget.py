"""Budgets: refuse a start that would certainly overrun; stop dispatch at the budget; one
estimator for validate, the budget and the TPM limiter."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pipeline import UsageError, run
from pipeline.budget import (
    DEFAULT_COMPLETION_ESTIMATE,
    BudgetGuard,
    Estimate,
    check_before_start,
    completion_estimate,
    estimate_rows,
    prompt_estimate,
    request_estimate,
)
from pipeline.config import load_config
from pipeline.manifest import Manifest
from pipeline.rundir import RunDir
from pipeline.simulator import answer_for, usage_for
from pipeline.tokens import estimate_prompt
from pipeline.validate import validate

from .conftest import fast_config, make_rows, write_csv

PRICES = {"price_prompt_per_1m": 1000.0, "price_completion_per_1m": 10000.0}


def row_cost(row: dict[str, str]) -> float:
    content = f"{row['file_url']} {row['question']}"
    p, c = usage_for([{"role": "user", "content": content}], answer_for("gpt-4o-all", content))
    return p * 1000.0 / 1e6 + c * 10000.0 / 1e6


def test_start_is_refused_when_the_prompts_alone_exceed_the_budget(tmp_path: Path, sim) -> None:
    server = sim()
    manifest = write_csv(tmp_path / "m.csv", make_rows(300))
    with pytest.raises(UsageError, match=r"estimated at \$\d+\.\d+.*--max-cost"):
        run(fast_config(manifest, tmp_path / "out", server, max_cost=0.5, **PRICES))
    assert server.stats()["requests"] == 0


def test_run_stops_within_one_concurrency_of_the_cost_budget(tmp_path: Path, sim) -> None:
    server = sim(latency_s=0.05)
    rows = make_rows(300)
    manifest = write_csv(tmp_path / "m.csv", rows)
    budget = sum(row_cost(r) for r in rows[:100])
    summary = run(fast_config(manifest, tmp_path / "out", server, max_cost=budget, concurrency=8, **PRICES))
    df = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert summary.exit_code == 3 and "max-cost" in (summary.reason or "")
    assert 100 - 8 - 1 <= len(df) <= 100
    assert df["cost_usd"].sum() <= budget + 1e-9
    assert server.stats()["ok_requests"] == len(df)


def test_token_budget_stops_dispatch(tmp_path: Path, sim) -> None:
    server = sim(latency_s=0.05)
    manifest = write_csv(tmp_path / "m.csv", make_rows(200))
    summary = run(fast_config(manifest, tmp_path / "out", server, max_total_tokens=5000, concurrency=4))
    df = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert summary.exit_code == 3
    assert df["total_tokens"].sum() <= 5000 and 80 <= len(df) < 200


# ------------------------------------------------------------------------------ one estimator


def test_validate_and_the_budget_price_a_manifest_alike(tmp_path: Path, sim) -> None:
    server = sim(latency_s=0.0)
    rows = make_rows(40)
    rows[5]["file_url"] = "ftp://x.example/a.pdf"  # a bad row: priced by neither
    manifest = write_csv(tmp_path / "m.csv", rows)
    out = tmp_path / "out"
    run(fast_config(manifest, out, server, limit=10, **PRICES))  # rows done before: priced by neither
    same = fast_config(manifest, out, server, **PRICES)  # no max_tokens: 500 completion tokens a request
    # a system message and max_tokens make every row a new request; max_tokens bounds the answers
    other = fast_config(manifest, out, server, system="Answer briefly.", max_tokens=800, price_per_request=0.002,
                        **PRICES)  # fmt: skip
    for cfg, requests, completion in ((same, 30, 500), (other, 39, 800)):
        report = validate(cfg)
        est = estimate_rows(Manifest(str(manifest), cfg), RunDir(str(out)).skip_index(cfg.retry_failed), cfg)
        assert report.requests == est.requests == requests
        assert report.prompt_tokens == est.prompt_tokens > 0
        assert report.completion_tokens == est.completion_tokens == requests * completion
        assert report.cost_usd == est.min_cost_usd
        assert report.cost_with_answers_usd == est.cost_usd
        assert report.cost_max_usd == (est.cost_usd if cfg is other else None)
    assert server.stats()["requests"] == 9


def test_the_tpm_estimate_is_the_prompt_plus_the_completion_estimate() -> None:
    cfg = load_config(system="Be brief.", env={})
    content = "https://h.example/a.pdf What is the total?"
    assert request_estimate(content, cfg) == prompt_estimate(content, cfg) + DEFAULT_COMPLETION_ESTIMATE
    assert prompt_estimate(content, cfg) == estimate_prompt(content, "Be brief.")
    assert completion_estimate(load_config(max_tokens=64, env={})) == 64


def test_estimate_of_prices_prompts_answers_and_fees() -> None:
    cfg = load_config(price_prompt_per_1m=1.0, price_completion_per_1m=2.0, price_per_request=0.5, env={})
    est = Estimate.of(cfg, rows=4, requests=3, prompt_tokens=1_000_000)
    assert est.completion_tokens == 1500 and est.total_tokens == 1_001_500
    assert est.min_cost_usd == pytest.approx(1.0 + 1.5)
    assert est.cost_usd == pytest.approx(1.0 + 1500 * 2.0 / 1e6 + 1.5)
    assert Estimate.of(load_config(env={}), rows=1, requests=1, prompt_tokens=10).cost_usd is None


def test_check_before_start_refuses_only_a_certain_overrun() -> None:
    cfg = load_config(max_cost=1.0, price_prompt_per_1m=1.0, price_completion_per_1m=100.0, env={})
    fits = Estimate.of(cfg, rows=10, requests=10, prompt_tokens=900_000)  # answers would pass, prompts do not
    assert check_before_start(fits, cfg) is None
    over = Estimate.of(cfg, rows=10, requests=10, prompt_tokens=1_100_000)
    assert "more than --max-cost $1.0000" in (check_before_start(over, cfg) or "")
    tokens = load_config(max_total_tokens=100, env={})
    assert "--max-total-tokens 100" in (check_before_start(Estimate.of(tokens, rows=1, requests=1,
                                                                         prompt_tokens=101), tokens) or "")  # fmt: skip


# ------------------------------------------------------------------------------ BudgetGuard


def test_an_inactive_guard_never_refuses() -> None:
    guard = BudgetGuard(load_config(env={}))
    assert not guard.active and guard.refuse(10**9, 10**6) is None


def test_before_any_answer_the_guard_reserves_the_prompt_lower_bound() -> None:
    cfg = load_config(max_cost=1.0, price_prompt_per_1m=1.0, env={})  # $0.001 a 1000-token prompt
    guard = BudgetGuard(cfg)
    assert guard.per_request(1000) == (1000, pytest.approx(0.001))
    assert guard.refuse(1000, in_flight=998) is None  # 999 x $0.001 fits
    assert "--max-cost $1.0000 reached" in (guard.refuse(1000, in_flight=1000) or "")


def test_after_answers_the_guard_reserves_their_mean_for_each_request_in_flight() -> None:
    guard = BudgetGuard(load_config(max_cost=1.0, max_total_tokens=10_000, price_prompt_per_1m=1.0, env={}))
    guard.record(1000, 0.1)
    guard.record(3000, 0.3)  # mean: 2000 tokens, $0.2
    assert guard.per_request(10) == (2000, pytest.approx(0.2))
    assert guard.refuse(10, in_flight=1) is None  # 4000 spent + 2 x 2000 = 8000 tokens, $0.4 + $0.4
    why = guard.refuse(10, in_flight=2)  # 4000 + 3 x 2000 = 10 000 tokens: fits; $0.4 + $0.6 = $1.0: fits
    assert why is None
    why = guard.refuse(10, in_flight=3)
    assert why is not None and "--max-cost" in why and "3 in flight" in why


def test_the_token_budget_alone_stops_dispatch() -> None:
    guard = BudgetGuard(load_config(max_total_tokens=5000, env={}))
    guard.record(2000, None)
    assert guard.refuse(100, in_flight=0) is None  # 2000 + 2000
    why = guard.refuse(100, in_flight=1)  # 2000 + 2 x 2000 = 6000 > 5000
    assert why == "budget: 2000 tokens spent, 1 in flight; --max-total-tokens 5000 reached"
