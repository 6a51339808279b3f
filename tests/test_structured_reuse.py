"""A schema changed between two runs on the same --out: stored answers that fit the new schema
are re-parsed without a request; the rest are asked again (issue 11)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline import run
from pipeline.simulator import SimServer
from tests.conftest import fast_config, make_rows, write_csv
from tests.test_structured_run import INVOICE

Sim = Callable[..., SimServer]


def _without_paid() -> dict[str, Any]:
    schema = copy.deepcopy(INVOICE)
    del schema["properties"]["paid"]
    schema["required"].remove("paid")
    del schema["additionalProperties"]  # yesterday's answers still carry "paid"
    return schema


def test_hash_ids_answers_that_fit_are_reparsed_without_requests(sim: Sim, tmp_path: Path) -> None:
    server = sim()
    manifest = write_csv(tmp_path / "m.csv", make_rows(12))
    out = tmp_path / "out"
    assert run(fast_config(manifest, out, server, schema=INVOICE)).ok == 12
    first = pd.read_parquet(out)
    before = server.stats()["requests"]
    summary = run(fast_config(manifest, out, server, schema=_without_paid()))
    assert (summary.ok, summary.failed) == (12, 0)
    assert server.stats()["requests"] == before  # nothing sent
    df = pd.read_parquet(out)
    assert "paid" not in df.columns and "invoice_number" in df.columns
    assert not set(df["request_id"]) & set(first["request_id"])  # new ids: the request changed
    assert list(df["answer"]) == list(first["answer"])
    assert list(df["total"]) == list(first["total"])
    assert (df["attempts"] == 0).all()
    assert list(df["total_tokens"]) == list(first["total_tokens"])
    info = json.loads((out / "_run.json").read_text())
    assert info["settings"]["schema"] == _without_paid()


def test_id_column_stale_answers_are_asked_again_others_kept(sim: Sim, tmp_path: Path) -> None:
    server = sim()
    rows = [{"id": f"r{i}", **r} for i, r in enumerate(make_rows(16))]
    manifest = write_csv(tmp_path / "m.csv", rows)
    out = tmp_path / "out"
    assert run(fast_config(manifest, out, server, schema=INVOICE)).ok == 16
    first = pd.read_parquet(out)
    stale = first["currency"].isin(["GBP", "CNY"])
    assert 0 < stale.sum() < 16
    narrower = copy.deepcopy(INVOICE)
    narrower["properties"]["currency"]["enum"] = ["EUR", "USD"]
    before = server.stats()["requests"]
    summary = run(fast_config(manifest, out, server, schema=narrower))
    assert (summary.ok, summary.failed) == (16, 0)
    assert server.stats()["requests"] - before == stale.sum()
    df = pd.read_parquet(out)
    assert set(df["currency"]) <= {"EUR", "USD"}
    kept = ~stale
    assert list(df.loc[kept, "answer"]) == list(first.loc[kept, "answer"])
    assert list(df.loc[kept, "run_id"]) == list(first.loc[kept, "run_id"])
    assert (df.loc[stale, "run_id"] != first.loc[stale, "run_id"]).all()


def test_same_schema_resume_sends_nothing(sim: Sim, tmp_path: Path) -> None:
    server = sim()
    manifest = write_csv(tmp_path / "m.csv", make_rows(5))
    out = tmp_path / "out"
    assert run(fast_config(manifest, out, server, schema=INVOICE)).ok == 5
    before = server.stats()["requests"]
    assert run(fast_config(manifest, out, server, schema=INVOICE)).ok == 5
    assert server.stats()["requests"] == before
