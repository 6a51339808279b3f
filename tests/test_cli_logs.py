"""What an operator sees: periodic progress lines in logs, JSON logs with ids."""

from __future__ import annotations

import json
import re
from pathlib import Path

from .conftest import TEST_KEY, cli, make_rows, write_csv


def test_progress_line_appears_at_the_configured_interval(tmp_path: Path, sim) -> None:
    server = sim(latency_s=0.25)
    manifest = write_csv(tmp_path / "m.csv", make_rows(48))
    out = tmp_path / "out"
    proc = cli("run", str(manifest), "--out", str(out), "--base-url", server.url,
               "--api-key", TEST_KEY, "--concurrency", "4", "--progress", "log", "--progress-interval", "0.5")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("progress ")]
    # one line per 0.5 s of the run (~3 s of work), plus the closing line
    elapsed = json.loads((out / "_run.json").read_text())["elapsed_s"]
    assert elapsed / 0.5 - 2 <= len(lines) <= elapsed / 0.5 + 2 and len(lines) >= 4, (elapsed, lines)
    done = [int(re.search(r"rows=(\d+)/48", line).group(1)) for line in lines]
    assert done == sorted(done) and done[-1] == 48
    assert all("in_flight=" in line and "eta=" in line and "tokens=" in line for line in lines)


def test_json_logs_name_the_row_and_gateway_ids_never_the_key(tmp_path: Path, sim) -> None:
    server = sim()
    rows = make_rows(4)
    rows[1]["question"] += " [[sim:fault=500]]"
    manifest = write_csv(tmp_path / "m.csv", rows)
    proc = cli("run", str(manifest), "--out", str(tmp_path / "out"), "--base-url", server.url,
               "--log-format", "json", "--log-level", "debug", "--quiet", env={"APICORE_API_KEY": TEST_KEY})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    retries = [r for r in records if r.get("retry") is True]
    assert len(retries) == 1
    assert retries[0]["level"] == "debug" and retries[0]["error_type"] == "server_error"
    assert len(retries[0]["request_id"]) == 32 and retries[0]["gateway_request_id"]
    assert TEST_KEY not in proc.stderr
