"""What an operator sees: periodic progress lines in logs, JSON logs with ids."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import TEST_KEY, cli, make_rows, write_csv


def progress_figures(line: str) -> dict[str, str]:
    """``progress rows=3/48 ok=3 ...`` -> {"rows": "3/48", "ok": "3", ...}"""
    return dict(field.split("=", 1) for field in line.split()[1:])


def test_progress_lines_count_up_and_end_on_the_run_figures(tmp_path: Path, sim) -> None:
    """Counts and order only: how many lines a second gives depends on the machine."""
    server = sim(latency_s=0.25, latency_jitter=0.0)
    manifest = write_csv(tmp_path / "m.csv", make_rows(48))
    out = tmp_path / "out"
    proc = cli("run", str(manifest), "--out", str(out), "--base-url", server.url, "--api-key", TEST_KEY,
               "--concurrency", "4", "--progress", "log", "--progress-interval", "0.1")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("progress ")]
    assert all("in_flight=" in line and "eta=" in line and "tokens=" in line for line in lines)
    figures = [progress_figures(line) for line in lines]
    # 48 rows, 4 at a time, 0.25 s each: at least 3 s of answers, at least 30 intervals;
    # a loaded machine may skip ticks, so ask for a few periodic lines plus the closing one
    assert len(figures) >= 4, lines
    for key in ("ok", "failed", "requests", "tokens"):
        values = [int(f[key]) for f in figures]
        assert values == sorted(values), (key, values)
    done = [int(f["rows"].split("/")[0]) for f in figures]
    assert done == sorted(done) and done[0] < 48 and {f["rows"].split("/")[1] for f in figures} == {"48"}

    info = json.loads((out / "_run.json").read_text())
    last = figures[-1]
    assert last["rows"] == "48/48" and last["in_flight"] == "0"
    assert (int(last["ok"]), int(last["failed"]), int(last["requests"]), int(last["tokens"])) == (
        info["ok"], info["failed"], info["requests"], info["total_tokens"])  # fmt: skip


def test_json_logs_name_the_row_and_gateway_ids_never_the_key(tmp_path: Path, sim) -> None:
    server = sim()
    rows = make_rows(4)
    rows[1]["question"] += " [[sim:fault=500]]"
    manifest = write_csv(tmp_path / "m.csv", rows)
    proc = cli("run", str(manifest), "--out", str(tmp_path / "out"), "--base-url", server.url, "--log-format", "json",
               "--log-level", "debug", "--quiet", env={"APICORE_API_KEY": TEST_KEY})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    retries = [r for r in records if r.get("retry") is True]
    assert len(retries) == 1
    assert retries[0]["level"] == "debug" and retries[0]["error_type"] == "server_error"
    assert len(retries[0]["request_id"]) == 32 and retries[0]["gateway_request_id"]
    assert TEST_KEY not in proc.stderr
