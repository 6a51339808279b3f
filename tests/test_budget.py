"""Budgets: refuse a start that would certainly overrun; stop dispatch at the budget."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pipeline import UsageError, run
from pipeline.simulator import answer_for, usage_for

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
