"""The command line as its users run it: exit codes agree with _run.json, errors are one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.cli import main

from .conftest import cli, make_rows, write_csv


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_exit_code_equals_run_json_when_the_key_is_wrong(tmp_path: Path, sim, log_format: str) -> None:
    # issue 16 defect 1: a wrong key on a manifest with one invalid row exited 1 with a traceback, _run.json said 3
    server = sim(api_key="sk-right-0123456789")
    rows = make_rows(8)
    rows[2]["file_url"] = "ftp://example.com/x.pdf"
    manifest = write_csv(tmp_path / "m.csv", rows)
    out = tmp_path / "out"
    r = cli("run", str(manifest), "--out", str(out), "--base-url", server.url, "--api-key", "sk-wrong-0123456789",
            "--concurrency", "2", "--log-format", log_format)  # fmt: skip
    info = json.loads((out / "_run.json").read_text())
    assert r.returncode == info["exit_code"] == 3, r.stderr
    assert "Traceback" not in r.stderr
    s = cli("summary", str(out))
    assert s.returncode == 0, s.stderr
    assert "Traceback" not in s.stderr


def test_every_command_has_help_with_an_example() -> None:
    for name, command in main.commands.items():
        assert command.help and "Example" in command.help, f"docpipe {name} --help shows no example"
