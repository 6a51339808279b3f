"""End to end: manifest in, answers and usage out, over real HTTP to the simulator."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import run
from pipeline.simulator import answer_for, usage_for

from .conftest import TEST_KEY, cli, fast_config, make_rows, write_csv, write_parquet

MODEL = "gpt-4o-all"


def expected(row: dict[str, str]) -> tuple[str, int, int]:
    content = f"{row['file_url']} {row['question']}"
    answer = answer_for(MODEL, content)
    prompt, completion = usage_for([{"role": "user", "content": content}], answer)
    return answer, prompt, completion


def test_fault_mix_ends_with_every_row_ok_and_exact_answers(tmp_path: Path, sim) -> None:
    server = sim(
        latency_s=0.05,
        latency_jitter=0.5,
        fault_rate=0.3,
        retry_after_s=None,
        hang_s=60,
        fault_kinds=("429", "500", "502_html", "503", "524_html", "hang", "disconnect",
                     "truncated", "empty_choices", "error_in_200"),
    )  # fmt: skip
    rows = make_rows(500)
    manifest = write_csv(tmp_path / "m.csv", rows)
    summary = run(fast_config(manifest, tmp_path / "out", server, concurrency=16, timeout=1.5))

    df = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert summary.exit_code == 0 and summary.ok == 500
    assert len(df) == 500 and (df["status"] == "ok").all()
    assert list(df["question"]) == [r["question"] for r in rows]  # manifest order
    want = [expected(r) for r in rows]
    assert list(df["answer"]) == [w[0] for w in want]
    assert list(df["prompt_tokens"]) == [w[1] for w in want]
    assert list(df["completion_tokens"]) == [w[2] for w in want]
    stats = server.stats()
    assert df["prompt_tokens"].sum() == stats["prompt_tokens"]
    assert df["completion_tokens"].sum() == stats["completion_tokens"]
    assert (df["total_tokens"] == df["prompt_tokens"] + df["completion_tokens"]).all()
    # the fault mix really happened, and every sent request is counted in `attempts`
    faults = stats["requests"] - stats["ok_requests"]
    assert faults >= 100
    assert df["attempts"].sum() == stats["requests"]
    assert 16 * 0.9 <= stats["max_in_flight"] <= 16
    assert df["gateway_request_id"].notna().all()


def test_non_retryable_400_fails_only_its_row(tmp_path: Path, sim) -> None:
    server = sim()
    rows = make_rows(20)
    rows[7]["question"] = "Bad one [[sim:status=400]]"
    manifest = write_csv(tmp_path / "m.csv", rows)
    summary = run(fast_config(manifest, tmp_path / "out", server))
    df = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert summary.exit_code == 1
    failed = df[df["status"] == "failed"]
    assert list(failed.index) == [7]
    assert failed.iloc[0]["http_status"] == 400
    assert failed.iloc[0]["error_type"] == "invalid_request"
    assert failed.iloc[0]["attempts"] == 1
    assert failed.iloc[0]["error_message"]
    assert (df.drop(index=7)["status"] == "ok").all()
    assert server.stats()["requests"] == 20


def test_retry_after_is_waited_for_and_attempts_counted(tmp_path: Path, sim) -> None:
    server = sim()
    rows = [{"file_url": "https://docs.example.com/a.pdf", "question": "Wait please [[sim:retry_after=2]]"}]
    manifest = write_csv(tmp_path / "m.csv", rows)
    summary = run(fast_config(manifest, tmp_path / "out", server))
    df = pd.read_parquet(tmp_path / "out" / "results.parquet")
    times = server.stats()["request_times"]
    assert summary.exit_code == 0
    assert len(times) == 2 and times[1] - times[0] >= 2.0
    assert df.iloc[0]["attempts"] == 2 and df.iloc[0]["status"] == "ok"


def test_wrong_key_exits_3_within_one_wave_and_fails_no_row(tmp_path: Path, sim) -> None:
    server = sim(api_key="sk-the-right-one", latency_s=0.05)
    manifest = write_csv(tmp_path / "m.csv", make_rows(200))
    out = tmp_path / "out"
    proc = cli("run", str(manifest), "--out", str(out), "--base-url", server.url, "--concurrency", "8",
               "--quiet", env={"APICORE_API_KEY": "sk-wrong-key-999"})  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    assert server.stats()["requests"] <= 8
    assert "auth" in proc.stderr and "API key" in proc.stderr
    assert "sk-wrong-key-999" not in proc.stderr + proc.stdout
    results = out / "results.parquet"
    assert not results.exists() or pq.read_table(results).num_rows == 0


def test_csv_text_and_passthrough_columns_round_trip(tmp_path: Path, sim) -> None:
    server = sim()
    rows = [
        {"file_url": "https://x.example/a,b.pdf", "question": 'Say "hi", then, well, stop', "note": "a,b"},
        {"file_url": "https://x.example/n.pdf", "question": "Line one\nline two\r\nline three", "note": "x\ny"},
        {"file_url": "https://x.example/u.pdf", "question": "这份文件的总额是多少？ — ünïcödé ✓", "note": "日本語"},
        {"file_url": "https://x.example/z.pdf", "question": "  leading and trailing  ", "note": "007"},
    ]
    manifest = write_csv(tmp_path / "m.csv", rows)
    run(fast_config(manifest, tmp_path / "out", server))
    df = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert list(df["question"]) == [r["question"] for r in rows]
    assert list(df["file_url"]) == [r["file_url"] for r in rows]
    assert list(df["note"]) == [r["note"] for r in rows]  # "007" stays text
    assert list(df["answer"]) == [expected(r)[0] for r in rows]


def test_parquet_manifest_keeps_typed_passthrough_columns(tmp_path: Path, sim) -> None:
    server = sim()
    rows = [
        {"url": f"https://x.example/{i}.pdf", "prompt": f"Q{i} — ok?", "priority": i, "score": i / 3,
         "tag": None if i == 2 else f"t{i}"}
        for i in range(5)
    ]  # fmt: skip
    manifest = write_parquet(tmp_path / "m.parquet", rows)
    run(fast_config(manifest, tmp_path / "out", server))
    df = pd.read_parquet(tmp_path / "out" / "results.parquet")
    src = pq.read_table(manifest)
    assert df["priority"].tolist() == src["priority"].to_pylist()
    assert df["score"].tolist() == src["score"].to_pylist()
    assert df["tag"].isna().tolist() == [False, False, True, False, False]
    assert pq.read_schema(tmp_path / "out" / "results.parquet").field("priority").type == pa.int64()
    assert list(df["answer"]) == [answer_for(MODEL, f"{r['url']} {r['prompt']}") for r in rows]


def test_output_types_load_in_pandas_without_arguments(tmp_path: Path, sim) -> None:
    server = sim()
    manifest = write_csv(tmp_path / "m.csv", make_rows(3))
    run(fast_config(manifest, tmp_path / "out", server))
    df = pd.read_parquet(tmp_path / "out")  # the folder: journal and metadata stay hidden
    assert len(df) == 3
    for col in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert str(df[col].dtype) == "Int64"
    assert str(df["http_status"].dtype) == "Int16" and str(df["attempts"].dtype) == "Int16"
    assert str(df["started_at"].dtype) == "datetime64[us, UTC]"
    assert (df["completed_at"] >= df["started_at"]).all()
    assert (df["response_model"] == MODEL).all() and (df["model"] == MODEL).all()


def test_bad_rows_fail_without_a_request(tmp_path: Path, sim) -> None:
    server = sim()
    rows = make_rows(5)
    rows[1]["file_url"] = ""
    rows[2]["file_url"] = "ftp://x.example/a.pdf"
    rows[3]["question"] = "   "
    manifest = write_csv(tmp_path / "m.csv", rows)
    summary = run(fast_config(manifest, tmp_path / "out", server))
    df = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert summary.exit_code == 1
    assert df["status"].tolist() == ["ok", "failed", "failed", "failed", "ok"]
    assert set(df.loc[1:3, "error_type"]) == {"invalid_input"}
    assert (df.loc[1:3, "attempts"] == 0).all()
    assert server.stats()["requests"] == 2


@pytest.mark.parametrize(
    "content, message",
    [
        ("file_url,question\n", "no rows"),
        ("", "empty"),
        ("link,text\nhttps://a.example/x.pdf,q\n", "missing column"),
        ("id,file_url,question\n1,https://a.example/x.pdf,q\n1,https://a.example/y.pdf,r\n", "duplicate id '1'"),
    ],
)
def test_bad_manifest_is_one_line_exit_2_and_no_request(tmp_path: Path, sim, content: str, message: str) -> None:
    server = sim()
    manifest = tmp_path / "m.csv"
    manifest.write_text(content)
    proc = cli("run", str(manifest), "--out", str(tmp_path / "out"), "--base-url", server.url,
               "--api-key", TEST_KEY, "--quiet")  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(manifest) in lines[0] and message in lines[0], proc.stderr
    assert server.stats()["requests"] == 0
    assert not (tmp_path / "out").exists()


def test_unreadable_parquet_and_missing_file_are_exit_2(tmp_path: Path) -> None:
    garbage = tmp_path / "m.parquet"
    garbage.write_bytes(b"PAR1 this is not parquet at all")
    for path in (garbage, tmp_path / "missing.csv"):
        proc = cli("run", str(path), "--out", str(tmp_path / "out"), "--base-url", "http://127.0.0.1:9/v1",
                   "--quiet")  # fmt: skip
        assert proc.returncode == 2 and str(path) in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_key_is_never_printed_logged_or_written(tmp_path: Path, sim) -> None:
    secret = "sk-super-secret-KEY-4242"
    server = sim(fault_rate=0.5, retry_after_s=None, fault_kinds=("500", "429"))
    manifest = write_csv(tmp_path / "m.csv", make_rows(20))
    out = tmp_path / "out"
    proc = cli("run", str(manifest), "--out", str(out), "--base-url", server.url, "--log-level", "debug",
               "--progress", "log", "--progress-interval", "0.2", env={"APICORE_API_KEY": secret})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert secret not in proc.stdout + proc.stderr
    for path in out.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_demo_runs_with_no_key_and_no_network(tmp_path: Path) -> None:
    proc = cli("demo", "--out", str(tmp_path / "demo"), "--latency", "0.05", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "ok" in proc.stdout and "results.parquet" in proc.stdout
    for name in ("reports", "filings"):
        df = pd.read_parquet(tmp_path / "demo" / name / "results.parquet")
        assert len(df) >= 20 and (df["status"] == "ok").sum() >= 20
    # the second night (issue 12): three documents changed, the other 21 answers copied forward
    night2 = pd.read_parquet(tmp_path / "demo" / "nights" / "night2" / "results.parquet")
    assert len(night2) == 24 and night2["reused_from"].notna().sum() == 21
    assert "21 reused" in proc.stdout
