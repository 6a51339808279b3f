"""Progress displays, the closing run summary and the JSON of records: pure, no I/O but StringIO."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from pipeline.records import RunSummary, Snapshot
from pipeline.report import (
    BarProgress,
    JsonRecord,
    LogProgress,
    ProgressDisplay,
    dumps,
    format_summary,
    make_progress,
    progress_line,
)

from .conftest import ROOT

SNAP = Snapshot(rows_total=10, rows_done=4, ok=3, failed=1, in_flight=2, requests=5, tokens=120, cost_usd=None,
                elapsed=2.0, rows_per_s=2.0, eta_s=None, concurrency=4)  # fmt: skip


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_both_displays_are_progress_displays() -> None:
    log = LogProgress(7.5, io.StringIO())
    bar = BarProgress(io.StringIO())
    for display in (log, bar):
        assert isinstance(display, ProgressDisplay)
    assert (log.interval, bar.interval) == (7.5, 0.5)


def test_make_progress_picks_by_mode_and_terminal() -> None:
    assert make_progress("none", 1.0, Tty()) is None
    chosen = make_progress("auto", 3.0, io.StringIO())  # a pipe or a log file
    assert isinstance(chosen, LogProgress) and chosen.interval == 3.0
    assert isinstance(make_progress("auto", 3.0, Tty()), BarProgress)
    assert isinstance(make_progress("bar", 3.0, io.StringIO()), BarProgress)
    assert isinstance(make_progress("log", 3.0, Tty()), LogProgress)


def test_log_progress_prints_one_line_per_update_and_one_on_close() -> None:
    out = io.StringIO()
    display = LogProgress(1.0, out)
    display.update(SNAP)
    display.close(replace(SNAP, rows_done=10, ok=9, in_flight=0, eta_s=0.0))
    lines = out.getvalue().splitlines()
    assert lines == [progress_line(SNAP), progress_line(replace(SNAP, rows_done=10, ok=9, in_flight=0, eta_s=0.0))]
    assert lines[0].startswith("progress rows=4/10 ok=3 failed=1 in_flight=2 concurrency=4 requests=5")
    assert "cost=" not in lines[0] and lines[0].endswith("eta=?")
    assert lines[1].endswith("eta=0:00")


@pytest.mark.parametrize(("eta", "shown"), [(59.9, "0:59"), (61, "1:01"), (3725, "1:02:05")])
def test_progress_line_eta_and_cost(eta: float, shown: str) -> None:
    line = progress_line(replace(SNAP, eta_s=eta, cost_usd=0.12345))
    assert line.endswith(f"cost=$0.1235 eta={shown}")


def test_bar_progress_draws_the_final_figures_on_close() -> None:
    out = io.StringIO()
    bar = BarProgress(out)
    bar.update(SNAP)
    bar.close(replace(SNAP, rows_done=10, ok=9, in_flight=0, cost_usd=1.5))
    drawn = out.getvalue()
    assert "10/10" in drawn and "ok=9" in drawn and "$1.50" in drawn


def test_format_summary_with_and_without_cost_and_errors() -> None:
    s = RunSummary(run_id="r1", out="out/x", ended="completed_with_failures", reason=None, exit_code=1, rows_total=3,
                   ok=2, failed=1, pending=0, sent_this_run=3, requests=4, prompt_tokens=10, completion_tokens=5,
                   total_tokens=15, cost_usd=None, elapsed_s=1.25, errors_by_type={"invalid_input": 1},
                   results_file="out/x/results.parquet")  # fmt: skip
    text = format_summary(s)
    assert text.splitlines()[0] == "run r1: completed_with_failures"
    assert "cost" not in text and "errors: invalid_input=1" in text and text.endswith("out/x/results.parquet")
    priced = format_summary(replace(s, cost_usd=0.5, reason="deadline", errors_by_type={}))
    assert "(deadline)" in priced and "cost $0.5000" in priced and "errors:" not in priced


@dataclass(frozen=True, slots=True)
class _Inner(JsonRecord):
    name: str
    where: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Outer(JsonRecord):
    inner: _Inner | None
    counts: dict[int, int]
    items: tuple[_Inner, ...]


def test_records_serialise_with_their_field_names() -> None:
    record = _Outer(inner=_Inner("报告", ("a", "b")), counts={1: 2}, items=(_Inner("x", ()),))
    expected = {"inner": {"name": "报告", "where": ["a", "b"]}, "counts": {"1": 2},
                "items": [{"name": "x", "where": []}]}  # fmt: skip
    assert json.loads(record.to_json()) == json.loads(dumps(record)) == expected
    assert "报告" in dumps(record)  # non-ASCII kept
    assert record.to_dict()["items"] == [{"name": "x", "where": []}]  # lists, as the JSON has them
    assert json.loads(dumps({"nested": record, "path": Path("/tmp/x")}))["path"] == "/tmp/x"


def test_the_run_path_does_not_import_pandas() -> None:
    code = ("import sys, pipeline, pipeline.runner, pipeline.report, pipeline.gateway_info; "
            "print(sorted(m for m in sys.modules if m == 'pandas' or m.startswith('pandas.')))")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
