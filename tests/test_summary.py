"""summary, diff and merge read finished output folders; every figure is checked against pandas."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import run
from pipeline.report import dumps
from pipeline.schema import JOURNAL_SCHEMA, OUTCOME_COLUMNS
from pipeline.simulator import answer_for
from pipeline.summary import (
    DiffReport,
    MergeReport,
    SummaryReport,
    diff,
    format_diff,
    format_merge,
    format_summary_report,
    merge,
    summarize,
)

from .conftest import TEST_KEY, cli, fast_config, make_rows, write_csv

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
    assert s.rows == 67
    assert s.tokens.total == int(both["total_tokens"].sum())
    assert s.latency_ms.p50 == pytest.approx(both["latency_ms"].dropna().quantile(0.5))
    assert s.throughput is not None and s.throughput.rows == 67
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
    assert s.rows == 50 and s.throughput is not None and s.throughput.rows == 50


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
    assert s.rows == len(expected)
    assert s.tokens.total == int(expected["total_tokens"].sum())
    assert s.failed_rows == 3
    assert sorted(f.http_status or 0 for f in s.failed) == [0, 400, 422]  # ints, not 400.0 (journal floats)
    assert "HTTP 400  " in format_summary_report(s) and "HTTP 400.0" not in format_summary_report(s)


# ------------------------------------------------------------ issue 16, defect 1


def reports_like_rows() -> list[dict[str, str]]:
    """Like sample_inputs/reports.csv: an id column, a few documents, one ftp:// row."""
    rows = [{"id": f"doc{i}", **r} for i, r in enumerate(make_rows(6))]
    rows[3]["file_url"] = "ftp://ftp.example.com/report.pdf"
    return rows


def test_summary_of_a_few_rows_with_one_invalid_row_prints(tmp_path: Path, sim) -> None:
    """Fewer than 10 rows with a latency and one invalid_input row crashed the end-of-run
    summary and `docpipe summary` (the slowest list took rows without a latency)."""
    server = sim(latency_s=0.01)
    manifest = write_csv(tmp_path / "m.csv", reports_like_rows())
    out = tmp_path / "out"
    r = cli("run", str(manifest), "--out", str(out), "--base-url", server.url, "--api-key", TEST_KEY,
            "--progress", "none")  # fmt: skip
    info = json.loads((out / "_run.json").read_text())
    assert r.returncode == info["exit_code"] == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert "5 ok, 1 failed" in r.stdout and "slowest" in r.stdout

    text = cli("summary", str(out))
    assert text.returncode == 0, text.stderr
    slowest = text.stdout.split("slowest")[1].split("failed (")[0].strip().splitlines()[1:]
    assert len(slowest) == 5  # the rows with a latency, not the invalid one
    s = json.loads(cli("summary", str(out), "--json").stdout)
    assert [x["latency_ms"] is not None for x in s["slowest"]] == [True] * 5
    assert s["failed"] == [{"request_id": s["failed"][0]["request_id"], "file_url": "ftp://ftp.example.com/report.pdf",
                            "error_type": "invalid_input", "http_status": None,
                            "error_message": s["failed"][0]["error_message"]}]  # fmt: skip


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_wrong_key_exits_with_the_code_run_json_records(tmp_path: Path, sim, log_format: str) -> None:
    """The README's cron line with a wrong key: the summary of the one invalid row must not
    turn exit 3 (key refused, resumable) into a traceback and exit 1."""
    server = sim(latency_s=0.01, api_key="sk-the-right-one")
    manifest = write_csv(tmp_path / "m.csv", reports_like_rows())
    out = tmp_path / "out"
    r = cli("run", str(manifest), "--out", str(out), "--base-url", server.url, "--api-key", "sk-wrong-key-123",
            "--log-format", log_format, "--progress", "none")  # fmt: skip
    info = json.loads((out / "_run.json").read_text())
    assert r.returncode == info["exit_code"] == 3, r.stderr
    assert "Traceback" not in r.stderr and "sk-wrong-key-123" not in r.stderr + r.stdout
    text = cli("summary", str(out))
    assert text.returncode == 0, text.stderr
    assert "1 failed" in text.stdout and "invalid_input 1" in text.stdout


# ------------------------------------------------------------ nulls anywhere, zero rows

RESULTS_SCHEMA = pa.schema([pa.field("request_id", pa.string()), pa.field("file_url", pa.string()),
                            pa.field("question", pa.string()),
                            *(JOURNAL_SCHEMA.field(n) for n in OUTCOME_COLUMNS)])  # fmt: skip


def write_results(folder: Path, rows: list[dict[str, object]], run_info: dict[str, object] | None = None,
                  schema: pa.Schema = RESULTS_SCHEMA) -> Path:  # fmt: skip
    """A results folder written by hand: absent keys are nulls."""
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / "results.parquet")
    if run_info is not None:
        (folder / "_run.json").write_text(json.dumps(run_info))
    return folder


def assert_clean_text_and_json(text: str, as_json: str) -> None:
    for word in ("nan", "NaN", "<NA>", "NaT", "None"):
        assert word not in text, (word, text)
    assert "NaN" not in as_json
    json.loads(as_json)


def test_summary_copes_with_nulls_in_every_column(tmp_path: Path) -> None:
    folder = write_results(tmp_path / "out", [
        {"request_id": "a", "status": "ok", "latency_ms": 12.0, "attempts": 1},  # no tokens, cost, times
        {"request_id": "b", "status": "failed"},  # nothing but its status
        {"request_id": "c", "status": "failed", "error_type": "server_error", "http_status": 500, "attempts": 6},
    ], run_info={"run_id": None, "elapsed_s": None, "ended": "something else"})  # fmt: skip
    s = summarize([folder])
    assert (s.rows, s.status, s.failed_rows) == (3, {"failed": 2, "ok": 1}, 2)
    assert (s.tokens.prompt, s.tokens.completion, s.tokens.total, s.cost_usd) == (0, 0, 0, None)
    assert (s.latency_ms.rows, s.latency_ms.p50, s.throughput) == (1, 12.0, None)
    assert s.attempts == {1: 1, 6: 1}
    assert [r.request_id for r in s.slowest] == ["a"]
    assert [(f.request_id, f.error_type, f.http_status) for f in s.failed] == [("b", None, None),
                                                                             ("c", "server_error", 500)]  # fmt: skip
    assert_clean_text_and_json(format_summary_report(s), dumps(s))

    r = cli("summary", str(folder))
    assert r.returncode == 0 and "HTTP 500" in r.stdout, r.stderr
    assert json.loads(cli("summary", str(folder), "--json").stdout) == json.loads(dumps(s))


def test_summary_of_a_file_with_only_ids_and_statuses(tmp_path: Path) -> None:
    """An older or foreign results file may lack columns: they read as missing figures."""
    schema = pa.schema([("request_id", pa.string()), ("status", pa.string())])
    folder = write_results(tmp_path / "out", [{"request_id": "a", "status": "ok"},
                                              {"request_id": "b", "status": "failed"}], schema=schema)  # fmt: skip
    s = summarize([folder])
    assert (s.rows, s.latency_ms.rows, s.cost_usd, s.slowest, s.attempts) == (2, 0, None, (), {})
    assert_clean_text_and_json(format_summary_report(s), dumps(s))


def test_summary_diff_and_merge_of_zero_rows(tmp_path: Path) -> None:
    a = write_results(tmp_path / "a", [])
    b = write_results(tmp_path / "b", [])
    s = summarize([a, b])
    assert (s.rows, s.status, s.latency_ms.p99, s.slowest, s.failed) == (0, {}, None, (), ())
    assert format_summary_report(s).startswith("0 rows in ")
    assert_clean_text_and_json(format_summary_report(s), dumps(s))

    d = diff(a, b)
    assert (d.common, d.changed, d.failure_rate.a, d.failure_rate.delta) == (0, 0, None, None)
    assert "failure rate: n/a -> n/a (n/a)" in format_diff(d)
    m = merge([a, b], tmp_path / "all")
    assert (m.rows, m.duplicates_dropped, [x.rows for x in m.sources]) == (0, 0, [0, 0])
    assert format_merge(m).startswith("0 rows from 2 folders")


def test_a_file_that_is_not_docpipe_results_is_one_line_exit_2(tmp_path: Path) -> None:
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"request_id": ["a"], "status": ["pending"]}), other)
    r = cli("summary", str(other))
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1
    assert str(other) in r.stderr and "'status'" in r.stderr and "'pending'" in r.stderr


def test_records_serialise_to_the_documented_json_keys(tmp_path: Path) -> None:
    """--json is the records' serialisation: these keys are what scripts read."""
    a = write_results(tmp_path / "a", [{"request_id": "a", "status": "ok", "latency_ms": 3.0, "attempts": 1},
                                       {"request_id": "b", "status": "failed", "attempts": 0}])  # fmt: skip
    b = write_results(tmp_path / "b", [{"request_id": "a", "status": "ok", "answer": "x", "attempts": 1}])
    s = summarize([a])
    assert isinstance(s, SummaryReport)
    assert list(s.to_dict()) == ["sources", "rows", "status", "error_types", "tokens", "cost_usd", "latency_ms",
                                 "throughput", "attempts", "slowest", "failed_rows", "failed", "fields", "reused",
                                 "cost_saved_usd"]  # fmt: skip
    assert list(s.to_dict()["sources"][0]) == ["path", "rows", "run_ids"]
    assert list(s.to_dict()["latency_ms"]) == ["rows", "p50", "p95", "p99"]
    assert list(s.to_dict()["slowest"][0]) == ["request_id", "file_url", "latency_ms", "attempts", "status"]
    assert list(s.to_dict()["failed"][0]) == ["request_id", "file_url", "error_type", "http_status", "error_message"]
    assert json.loads(s.to_json()) == json.loads(dumps(s.to_dict()))

    d = diff(a, b)
    assert isinstance(d, DiffReport)
    assert list(d.to_dict()) == ["a", "b", "key", "rows_a", "rows_b", "common", "changed", "unchanged", "new",
                                 "gone", "status_changes", "tokens", "cost_usd", "failure_rate", "examples",
                                 "new_ids", "gone_ids", "changed_file", "models_a", "models_b", "agreement",
                                 "by_question"]  # fmt: skip
    assert d.to_dict()["tokens"]["total"] == {"a": 0, "b": 0, "delta": 0}
    assert list(d.to_dict()["examples"][0]) == ["request_id", "question", "answer_a", "answer_b"]

    m = merge([a, b], tmp_path / "all")
    assert isinstance(m, MergeReport)
    assert m.to_dict() == {"out": str(tmp_path / "all" / "results.parquet"), "rows": 2, "duplicates_dropped": 1,
                           "sources": [{"path": str(a), "rows": 2}, {"path": str(b), "rows": 1}]}  # fmt: skip
