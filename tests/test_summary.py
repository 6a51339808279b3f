"""summary, diff and merge read finished output folders; every figure is checked against pandas."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from pipeline import run
from pipeline.simulator import answer_for
from pipeline.summary import format_summary_report, summarize

from .conftest import cli, fast_config, make_rows, write_csv

PRICES = {"price_prompt_per_1m": 2.5, "price_completion_per_1m": 10.0}


def with_ids(n: int, **changes: str) -> list[dict[str, str]]:
    rows = [{"id": f"r{i}", **r} for i, r in enumerate(make_rows(n))]
    for rid, question in changes.items():
        next(r for r in rows if r["id"] == rid)["question"] = question
    return rows


@pytest.fixture
def finished(tmp_path: Path, sim) -> Path:
    """A run with retries (faults on first attempts), rejected rows and one bad row."""
    rows = make_rows(60)
    rows[5]["question"] = "[[sim:status=400]] rejected"
    rows[9]["question"] = "[[sim:status=422]] rejected too"
    rows[20]["file_url"] = "not a url"
    manifest = write_csv(tmp_path / "m.csv", rows)
    server = sim(latency_s=0.01, latency_jitter=0.9, fault_rate=0.4, fault_kinds=("500", "429", "truncated"),
                 retry_after_s=None)  # fmt: skip
    out = tmp_path / "out"
    run(fast_config(manifest, out, server, **PRICES))
    return out


def test_summary_numbers_equal_pandas_on_results_parquet(finished: Path) -> None:
    r = cli("summary", str(finished), "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    df = pd.read_parquet(finished / "results.parquet")
    info = json.loads((finished / "_run.json").read_text())

    assert s["rows"] == len(df) == 60
    assert s["status"] == {k: int(v) for k, v in df["status"].value_counts().items()}
    assert s["error_types"] == {k: int(v) for k, v in df["error_type"].value_counts().items()}
    assert s["error_types"] == {"invalid_request": 2, "invalid_input": 1}
    assert s["tokens"] == {"prompt": int(df["prompt_tokens"].sum()), "completion": int(df["completion_tokens"].sum()),
                           "total": int(df["total_tokens"].sum())}  # fmt: skip
    assert s["cost_usd"] == pytest.approx(df["cost_usd"].sum())
    lat = df["latency_ms"].dropna()
    assert s["latency_ms"]["rows"] == len(lat)
    for q in (50, 95, 99):
        assert s["latency_ms"][f"p{q}"] == pytest.approx(lat.quantile(q / 100))
    rows_this_run = int((df["run_id"] == info["run_id"]).sum())
    assert s["throughput"]["rows"] == rows_this_run
    assert s["throughput"]["rows_per_s"] == pytest.approx(rows_this_run / info["elapsed_s"])
    assert {int(k): v for k, v in s["attempts"].items()} == {int(k): int(v) for k, v in
                                                             df["attempts"].value_counts().items()}  # fmt: skip
    assert len(s["attempts"]) >= 3  # 0 (bad row), 1, and retried rows
    slowest = df.sort_values("latency_ms", ascending=False).head(10)
    assert [x["request_id"] for x in s["slowest"]] == slowest["request_id"].tolist()
    failed = df[df["status"] == "failed"]
    assert s["failed_rows"] == len(failed) == 3
    assert [x["request_id"] for x in s["failed"]] == failed["request_id"].head(10).tolist()
    assert [x["error_type"] for x in s["failed"]] == failed["error_type"].head(10).tolist()

    text = cli("summary", str(finished))
    assert text.returncode == 0
    assert "57 ok, 3 failed" in text.stdout and "p95" in text.stdout and "invalid_request 2" in text.stdout


def test_summary_of_several_folders_adds_them_up(finished: Path, tmp_path: Path, sim) -> None:
    other = tmp_path / "other"
    server = sim(latency_s=0.0)
    run(fast_config(write_csv(tmp_path / "n.csv", make_rows(7, prefix="n")), other, server))
    s = summarize([finished, other])
    both = pd.concat([pd.read_parquet(finished / "results.parquet"), pd.read_parquet(other / "results.parquet")])
    assert s["rows"] == 67
    assert s["tokens"]["total"] == int(both["total_tokens"].sum())
    assert s["latency_ms"]["p50"] == pytest.approx(both["latency_ms"].dropna().quantile(0.5))
    assert s["throughput"]["rows"] == 67
    assert "67 rows in" in format_summary_report(s)


def test_summary_of_something_else_exits_2(tmp_path: Path) -> None:
    r = cli("summary", str(tmp_path))
    assert r.returncode == 2
    assert "results.parquet" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_diff_of_two_models_reports_changed_new_gone_tokens_cost_and_failures(tmp_path: Path, sim) -> None:
    server = sim(latency_s=0.0)
    a_rows = with_ids(12)
    b_rows = [r for r in with_ids(12, r5="[[sim:status=400]] now rejected") if r["id"] != "r0"]
    b_rows.append({"id": "r99", "file_url": "https://docs.example.com/new.pdf", "question": "New?"})
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    run(fast_config(write_csv(tmp_path / "a.csv", a_rows), out_a, server, model="gpt-4o-all", **PRICES))
    run(fast_config(write_csv(tmp_path / "b.csv", b_rows), out_b, server, model="gpt-4o-mini", **PRICES))
    changed_file = tmp_path / "report" / "changed.parquet"

    r = cli("diff", str(out_a), str(out_b), "--out-changed", str(changed_file), "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    da, db = pd.read_parquet(out_a / "results.parquet"), pd.read_parquet(out_b / "results.parquet")
    assert (d["common"], d["changed"], d["unchanged"], d["new"], d["gone"]) == (11, 11, 0, 1, 1)
    assert d["new_ids"] == ["r99"] and d["gone_ids"] == ["r0"]
    assert d["status_changes"] == {"ok->failed": 1}
    assert d["tokens"]["total"]["delta"] == int(db["total_tokens"].sum()) - int(da["total_tokens"].sum())
    assert d["cost_usd"]["delta"] == pytest.approx(db["cost_usd"].sum() - da["cost_usd"].sum())
    assert d["failure_rate"]["b"] == pytest.approx((db["status"] == "failed").mean())
    assert d["failure_rate"]["delta"] == pytest.approx(1 / 12)

    changed = pd.read_parquet(changed_file).set_index("request_id")
    assert {"question", "answer_a", "answer_b"} <= set(changed.columns)
    row = a_rows[3]
    content = f"{row['file_url']} {row['question']}"
    assert changed.loc["r3", "answer_a"] == answer_for("gpt-4o-all", content)
    assert changed.loc["r3", "answer_b"] == answer_for("gpt-4o-mini", content)
    assert pd.isna(changed.loc["r5", "answer_b"])

    text = cli("diff", str(out_a), str(out_b))
    assert "11 changed" in text.stdout and "1 new in B" in text.stdout


def test_diff_by_content_pairs_hashed_ids_across_models(tmp_path: Path, sim) -> None:
    server = sim(latency_s=0.0)
    manifest = write_csv(tmp_path / "m.csv", make_rows(5))
    run(fast_config(manifest, tmp_path / "a", server, model="gpt-4o-all"))
    run(fast_config(manifest, tmp_path / "b", server, model="gpt-4o-mini"))
    by_id = json.loads(cli("diff", str(tmp_path / "a"), str(tmp_path / "b"), "--json").stdout)
    assert (by_id["common"], by_id["new"], by_id["gone"]) == (0, 5, 5)  # the model is part of the hash
    by_content = json.loads(cli("diff", str(tmp_path / "a"), str(tmp_path / "b"), "--key", "content", "--json").stdout)
    assert (by_content["common"], by_content["changed"]) == (5, 5)


def test_merge_of_two_shards_equals_one_unsharded_run(tmp_path: Path, sim) -> None:
    server = sim(latency_s=0.0)
    manifest = write_csv(tmp_path / "m.csv", make_rows(50))
    for k in (1, 2):
        run(fast_config(manifest, tmp_path / f"shard{k}", server, shard=(k, 2)))
    run(fast_config(manifest, tmp_path / "whole", server))

    r = cli("merge", str(tmp_path / "shard1"), str(tmp_path / "shard2"), "--out", str(tmp_path / "all"))
    assert r.returncode == 0, r.stderr
    assert "50 rows from 2 folders" in r.stdout
    merged = pd.read_parquet(tmp_path / "all" / "results.parquet")
    whole = pd.read_parquet(tmp_path / "whole" / "results.parquet")
    key = ["request_id", "file_url", "question", "answer", "status", "total_tokens"]
    assert merged[key].sort_values("request_id").reset_index(drop=True).equals(
        whole[key].sort_values("request_id").reset_index(drop=True))  # fmt: skip
    assert str(merged["total_tokens"].dtype) == "Int64" and str(merged["started_at"].dt.tz) == "UTC"
    shard_sizes = [len(pd.read_parquet(tmp_path / f"shard{k}" / "results.parquet")) for k in (1, 2)]
    assert 0 < shard_sizes[0] < 50 and sum(shard_sizes) == 50

    s = summarize([tmp_path / "all"])  # the merge records its source runs, so throughput still works
    assert s["rows"] == 50 and s["throughput"]["rows"] == 50


def test_merge_keeps_the_latest_outcome_of_a_repeated_request(tmp_path: Path, sim) -> None:
    server = sim(latency_s=0.0)
    manifest = write_csv(tmp_path / "m.csv", with_ids(8))
    run(fast_config(manifest, tmp_path / "monday", server, model="gpt-4o-all"))
    run(fast_config(manifest, tmp_path / "tuesday", server, model="gpt-4o-mini"))
    # newer folder first on the command line: the outcome's time decides, not the order
    r = cli("merge", str(tmp_path / "tuesday"), str(tmp_path / "monday"), "--out", str(tmp_path / "all"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["duplicates_dropped"] == 8
    merged = pd.read_parquet(tmp_path / "all" / "results.parquet")
    assert len(merged) == 8 and set(merged["model"]) == {"gpt-4o-mini"}


def test_merge_refuses_to_write_into_a_run_folder(tmp_path: Path, sim) -> None:
    server = sim(latency_s=0.0)
    manifest = write_csv(tmp_path / "m.csv", make_rows(3))
    run(fast_config(manifest, tmp_path / "a", server))
    run(fast_config(manifest, tmp_path / "b", server, model="gpt-4o-mini"))
    r = cli("merge", str(tmp_path / "a"), "--out", str(tmp_path / "b"))
    assert r.returncode == 2 and "journal" in r.stderr


def test_summary_of_a_run_without_results_file_reads_its_journal(finished: Path) -> None:
    expected = pd.read_parquet(finished / "results.parquet")
    (finished / "results.parquet").unlink()  # as after kill -9, before compaction
    s = summarize([finished])
    assert s["rows"] == len(expected)
    assert s["tokens"]["total"] == int(expected["total_tokens"].sum())
    assert s["failed_rows"] == 3
