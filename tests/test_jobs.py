"""Job files: what they put in each request, how flags override them, the shipped
examples, and the documentation of every command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pipeline.cli import main

from .conftest import ROOT, TEST_KEY, cli, write_csv

ROWS = [
    {"id": "a1", "file_url": "https://docs.example.com/a1.pdf", "question": "What is the total?", "team": "tax"},
    {"id": "a2", "file_url": "https://docs.example.com/a2.pdf", "question": "Who signed?", "team": "legal"},
    {"id": "a3", "file_url": "https://docs.example.com/a3.pdf", "question": "When does it end?", "team": "legal"},
]

JOB = """
manifest = "../data/m.csv"
out = "out"

[gateway]
model = "gpt-4o-mini"

[request]
template = "{template}"
system = "Answer in one line."
temperature = 0.2
max_tokens = 300

[limits]
concurrency = 4

[retry]
backoff_initial = 0
"""


def write_job(tmp_path: Path, template: str) -> Path:
    (tmp_path / "data").mkdir()
    write_csv(tmp_path / "data" / "m.csv", ROWS)
    (tmp_path / "jobs").mkdir()
    job = tmp_path / "jobs" / "job.toml"
    job.write_text(JOB.replace("{template}", template))
    return job


def test_job_file_and_an_overriding_flag_shape_every_request_body(tmp_path: Path, sim) -> None:
    server = sim(latency_s=0.0, record_bodies=True)
    job = write_job(tmp_path, "{file_url} For the {team} team: {question}")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()  # paths in the job resolve against the job file, not the working directory

    r = cli("run", "--job", str(job), "--base-url", server.url, "--api-key", TEST_KEY, "--temperature", "0.9",
            "--quiet", cwd=elsewhere, timeout=20)  # fmt: skip
    assert r.returncode == 0, r.stderr

    bodies = sorted(server.bodies(), key=lambda b: b["messages"][-1]["content"])
    assert len(bodies) == 3
    for body, row in zip(bodies, ROWS, strict=True):
        assert body["model"] == "gpt-4o-mini"
        assert body["temperature"] == 0.9  # the flag wins over the job's 0.2
        assert body["max_tokens"] == 300  # the job's value stays
        assert body["stream"] is False
        assert body["messages"] == [
            {"role": "system", "content": "Answer in one line."},
            {"role": "user", "content": f"{row['file_url']} For the {row['team']} team: {row['question']}"},
        ]
    results = pd.read_parquet(tmp_path / "jobs" / "out" / "results.parquet")
    assert results["team"].tolist() == ["tax", "legal", "legal"] and set(results["status"]) == {"ok"}


def test_an_unknown_template_column_exits_2_before_any_request(tmp_path: Path, sim) -> None:
    server = sim(latency_s=0.0)
    job = write_job(tmp_path, "{file_url} For the {departement} team: {question}")
    for command in ("run", "validate"):
        r = cli(command, "--job", str(job), "--base-url", server.url, "--api-key", TEST_KEY, timeout=20)
        assert r.returncode == 2, r.stdout + r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "{departement}" in lines[0] and "m.csv" in lines[0], r.stderr
    assert server.stats()["requests"] == 0
    assert not (tmp_path / "jobs" / "out" / "results.parquet").exists()


def test_the_contracts_example_job_runs_on_the_sample_reports(tmp_path: Path, sim) -> None:
    server = sim(latency_s=0.0, record_bodies=True)
    r = cli("run", "--job", "jobs/contracts.toml", "--base-url", server.url, "--out", str(tmp_path / "c"),
            "--rpm", "100000", "--quiet", env={"APICORE_API_KEY": TEST_KEY}, timeout=20)  # fmt: skip
    assert r.returncode == 1, r.stderr  # the sample holds one deliberately bad row (an ftp:// URL)
    df = pd.read_parquet(tmp_path / "c" / "results.parquet")
    assert (df["status"] == "ok").sum() == 23 and df.loc[df["status"] != "ok", "error_type"].tolist() == [
        "invalid_input"
    ]
    assert df["cost_usd"].notna().sum() == 23  # the job's prices
    body = next(b for b in server.bodies() if "rfc9110" in b["messages"][-1]["content"])
    assert body["messages"][0]["role"] == "system" and body["temperature"] == 0.2 and body["max_tokens"] == 800
    assert "This is a standard document owned by team platform." in body["messages"][-1]["content"]


def test_the_nightly_example_job_runs_on_the_sample_filings(tmp_path: Path, sim) -> None:
    server = sim(latency_s=0.0, record_bodies=True)
    r = cli("run", "--job", "jobs/nightly_images.toml", "--base-url", server.url, "--out", str(tmp_path / "n"),
            "--quiet", env={"APICORE_API_KEY": TEST_KEY}, timeout=20)  # fmt: skip
    assert r.returncode == 0, r.stderr
    df = pd.read_parquet(tmp_path / "n" / "results.parquet")
    assert len(df) == 20 and set(df["status"]) == {"ok"} and {"batch", "priority"} <= set(df.columns)
    bodies = server.bodies()
    assert len(bodies) == 20 and all(b["stream"] is True and b["temperature"] == 0 for b in bodies)
    assert all("(batch " in b["messages"][-1]["content"] for b in bodies)


def test_every_command_documents_an_example() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APICORE_", "OPENAI_"))}
    names = sorted(main.commands)
    assert {"run", "validate", "summary", "diff", "merge", "models", "quota"} <= set(names)
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", name, "--help"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in names
    }
    undocumented = []
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=90)  # ten interpreters at once on a loaded 2-core machine
        if proc.returncode != 0 or "Example" not in out:
            undocumented.append(f"{name}: exit {proc.returncode} {err.strip()[:200]}")
    assert not undocumented


# ------------------------------------------------------------------------------ settings at the CLI


def test_a_bad_job_file_value_exits_2_naming_file_section_key_and_value(tmp_path: Path, sim) -> None:
    server = sim(latency_s=0.0)
    job = write_job(tmp_path, "{file_url} {question}")
    job.write_text(job.read_text().replace("concurrency = 4", 'concurrency = "five"'))
    for command in ("run", "validate"):
        r = cli(command, "--job", str(job), "--base-url", server.url, "--api-key", TEST_KEY, timeout=20)
        assert r.returncode == 2, r.stdout + r.stderr
        assert r.stderr.strip().splitlines() == [
            f"docpipe: error: {job}: [limits] concurrency = 'five': expected an integer"
        ]
    assert server.stats()["requests"] == 0


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--deadline", "6am", "expected HH:MM"),
        ("--deadline", "25:00", "expected HH:MM"),
        ("--deadline", "06h00", "expected HH:MM"),
        ("--max-runtime", "0", "greater than 0"),
        ("--shard", "3/2", "expected K/N"),
    ],
)
def test_a_bad_flag_exits_2_before_any_request(tmp_path: Path, sim, flag: str, value: str, expected: str) -> None:
    server = sim(latency_s=0.0)
    manifest = write_csv(tmp_path / "m.csv", ROWS)
    r = cli("run", str(manifest), "--out", str(tmp_path / "out"), "--base-url", server.url, "--api-key", TEST_KEY,
            flag, value, "--quiet", timeout=20)  # fmt: skip
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"docpipe: error: {flag} {value!r}: ") and expected in lines[0]
    assert server.stats()["requests"] == 0 and not (tmp_path / "out").exists()


def test_an_out_that_is_a_file_exits_2_from_the_flag_and_from_the_job_file(tmp_path: Path, sim) -> None:
    server = sim(latency_s=0.0)
    job = write_job(tmp_path, "{file_url} {question}")
    (job.parent / "out").write_text("a file where the run folder should be")
    by_job = cli("run", "--job", str(job), "--base-url", server.url, "--api-key", TEST_KEY, timeout=20)
    by_flag = cli("run", "--job", str(job), "--out", str(job.parent / "out"), "--base-url", server.url,
                  "--api-key", TEST_KEY, timeout=20)  # fmt: skip
    for r in (by_job, by_flag):
        assert r.returncode == 2, r.stdout + r.stderr
        assert "is an existing file, not a folder" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert server.stats()["requests"] == 0


def test_openai_base_url_and_an_api_key_file(tmp_path: Path, sim) -> None:
    server = sim(latency_s=0.0, api_key=TEST_KEY)
    manifest = write_csv(tmp_path / "m.csv", ROWS)
    key = tmp_path / "key.txt"
    key.write_text(TEST_KEY + "\n")
    env = {"OPENAI_BASE_URL": server.url}
    r = cli("run", str(manifest), "--out", str(tmp_path / "out"), "--api-key-file", str(key), "--quiet", env=env,
            timeout=20)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert server.stats()["ok_requests"] == 3
    for command in ("models", "quota"):
        r = cli(command, "--api-key-file", str(key), "--json", env=env, timeout=20)
        assert r.returncode == 0, r.stderr
    r = cli("models", "--api-key-file", str(tmp_path / "nope.txt"), env=env, timeout=20)
    assert r.returncode == 2 and "nope.txt" in r.stderr and "cannot read the key file" in r.stderr


def test_a_run_without_a_key_exits_2_but_validate_needs_none(tmp_path: Path) -> None:
    manifest = write_csv(tmp_path / "m.csv", ROWS)
    r = cli("run", str(manifest), "--out", str(tmp_path / "out"), "--base-url", "https://gateway.invalid/v1")
    assert r.returncode == 2 and "no API key for https://gateway.invalid/v1" in r.stderr
    assert not (tmp_path / "out").exists()
    r = cli("validate", str(manifest), "--base-url", "https://gateway.invalid/v1")
    assert r.returncode == 0, r.stderr


def test_the_help_warns_that_api_key_is_visible_in_ps() -> None:
    r = cli("run", "--help")
    assert "--api-key-file" in r.stdout and "`ps`" in r.stdout
