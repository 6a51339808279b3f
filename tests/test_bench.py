"""``docpipe bench``: the report's shape and sanity on a tiny load (never its speed:
timing thresholds would make the suite flaky on a busy machine), the scenario
definitions against issue 10's wording, and the judging logic on synthetic results.
No test here runs a predefined scenario: they take minutes."""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
import pytest

from pipeline.bench import (
    ALL_SCENARIOS,
    JUDGES,
    RANDOM_429S,
    SCENARIOS,
    UNKIND_FAULTS,
    Check,
    RunResult,
    RunSpec,
    ScenarioResult,
    SimFigures,
    run_client,
    run_line,
    scenario_line,
    sim_figures,
)

from .conftest import ROOT, cli


def test_bench_reports_every_figure_for_a_small_run() -> None:
    runner_pyc = Path(importlib.util.cache_from_source(str(ROOT / "pipeline" / "runner.py")))
    runner_pyc.unlink(missing_ok=True)  # a cache: the bench must write it back
    proc = cli("bench", "--rows", "300", "--latency", "0.02", "--concurrency", "50", "--resume-check", "--json",
               timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["machine"]["nproc"] >= 1 and report["machine"]["python"]
    (scenario,) = report["scenarios"]
    run = scenario["runs"]["run"]
    assert run["exit_code"] == 0
    assert run["requests"] == 300 and run["ok"] == 300 and run["failed"] == 0
    assert run["bound_rps"] == 2500.0
    assert run["throughput_rps"] > 0 and 0 < run["ratio"] <= 1.05
    assert run["goodput_rps"] == run["throughput_rps"]  # every request answered a row
    assert 0 < run["wall_ratio"] <= run["ratio"]
    assert run["cpu_s"] > 0 and run["cpu_us_per_request"] > 0 and run["peak_rss_mb"] > 10
    assert run["first_request_s"] is not None and run["first_request_s"] >= 0
    assert run["spawn_to_first_request_s"] >= run["first_request_s"]
    assert run["compaction_s"] is not None and run["compaction_s"] >= 0
    # start-up and tail, split (issue 10): CPU at the first request, Python alone, and where the wall went
    assert run["first_request_cpu_s"] > 0 and run["interpreter_s"] > 0
    assert None not in (run["startup_s"], run["finish_s"], run["exit_s"]) and run["finish_s"] >= 0
    # the client ran on compiled modules, as an installed copy does, whatever PYTHONDONTWRITEBYTECODE says
    assert runner_pyc.exists()
    assert run["sim_max_in_flight"] <= 50
    assert run["sim_cpu_share"] > 0 and run["foreign_cpu_share"] >= 0
    assert run["sim"]["outcomes"] == {"ok": 300} and run["sim"]["faults"] == run["sim"]["wasted"] == 0
    # the second run finds everything done and sends nothing
    assert run["resume_requests"] == 0 and run["resume_exit_code"] == 0 and run["resume_s"] > 0
    # the human lines go to stderr when --json owns stdout
    assert "custom/run: N=300" in proc.stderr and " fixed " in proc.stderr


def test_bench_with_faults_still_answers_every_row() -> None:
    proc = cli("bench", "--rows", "200", "--latency", "0.02", "--concurrency", "40", "--fault-rate", "0.2",
               "--fault-kinds", "429,truncated,hang", "--timeout", "1", "--retry-after", "0.1", "--json",
               timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    run = json.loads(proc.stdout)["scenarios"][0]["runs"]["run"]
    assert run["ok"] == 200
    sim = run["sim"]
    assert run["requests"] == 200 + sim["faults"]  # the faulted first attempts were retried
    assert sim["faults"] > 0 and set(sim["outcomes"]) <= {"ok", "429", "truncated", "hang"}
    # the simulator was told to send Retry-After, and every row told to wait came back
    assert sim["retry_after_sent"] == sim["outcomes"].get("429", 0) == sim["retry_after_checked"]


def test_bench_passes_capacity_and_adaptive_to_the_run() -> None:
    proc = cli("bench", "--rows", "150", "--latency", "0.02", "--concurrency", "40", "--capacity", "8",
               "--adaptive", "--json", timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    run = json.loads(proc.stdout)["scenarios"][0]["runs"]["run"]
    assert run["spec"]["capacity"] == 8 and run["spec"]["fixed_concurrency"] is False
    assert run["bound_rps"] == 400.0  # the capacity, not --concurrency, bounds it
    assert run["sim_max_in_flight"] <= 8
    assert set(run["sim"]["outcomes"]) <= {"ok", "capacity_429"}
    assert run["concurrency_final"] is not None and " adaptive " in proc.stderr


def test_client_peak_rss_is_its_own_not_this_processs(tmp_path: Path) -> None:
    # Linux would carry a parent's resident set into a child's ru_maxrss: hold 200 MB here
    ballast = bytearray(200 * 1024 * 1024)
    ballast[::4096] = b"x" * len(ballast[::4096])
    done = run_client([sys.executable, "-c", "print('hello')"], tmp_path / "c.err")
    assert done.code == 0 and done.maxrss_kb < 60 * 1024 and done.cpu_s >= 0 and done.wall > 0
    assert run_client([sys.executable, "-c", "import sys; sys.exit(3)"], tmp_path / "c.err").code == 3
    del ballast


# ------------------------------------------------------------------ scenario definitions


def test_scenarios_are_the_issue_targets() -> None:
    assert set(SCENARIOS) == {"little-100", "little-1000", "faults", "cpu", "memory", "resume", "compaction",
                              "faults-unkind", "random-429", "capacity", "startup", "memory-10k", "doc-meta",
                              "ray"}  # fmt: skip
    assert set(JUDGES) == set(SCENARIOS)
    # issue 12: metadata on (the default) beside off, the on run shared with little-100
    assert SCENARIOS["doc-meta"]["on"] is SCENARIOS["little-100"]["run"] and SCENARIOS["doc-meta"]["on"].doc_meta
    assert not SCENARIOS["doc-meta"]["off"].doc_meta
    # memory, resume and compaction share one 1M run, measured once per invocation
    assert SCENARIOS["memory"]["1M"] is SCENARIOS["resume"]["1M"] is SCENARIOS["compaction"]["1M"]
    assert SCENARIOS["memory-10k"]["1M"] is SCENARIOS["memory"]["1M"]
    assert SCENARIOS["faults"]["clean"].fault_rate == 0 and SCENARIOS["faults"]["faults"].timeout == 5.0
    assert RunSpec(rows=1, latency=0.2, concurrency=100).bound_rps == 500
    assert RunSpec(rows=1, latency=0.2, concurrency=200, capacity=40).bound_rps == 200


def test_older_scenarios_keep_fixed_concurrency_and_the_simulators_defaults() -> None:
    for name in ("little-100", "little-1000", "faults", "cpu", "memory", "resume", "compaction"):
        for spec in SCENARIOS[name].values():
            assert spec.fixed_concurrency
            assert spec.sim_settings() == {"fault_attempts": 1, "retry_after_s": None, "capacity": None}


def test_unkind_faults_scenario_is_the_issues_mix() -> None:
    runs = SCENARIOS["faults-unkind"]
    f = runs["faults"]
    assert (f.rows, f.latency, f.concurrency, f.timeout, f.fault_rate) == (2000, 0.2, 100, 5.0, 0.1)
    assert not f.fixed_concurrency and f.fault_attempts == 2 and f.retry_after_s == 1.0
    # a third of the faults are 429s with Retry-After, the rest the issue's other shapes
    assert f.fault_kinds == UNKIND_FAULTS and UNKIND_FAULTS.count("429") * 3 == len(UNKIND_FAULTS)
    assert set(UNKIND_FAULTS) == {"429", "500", "502_html", "503", "524_html", "hang", "disconnect", "truncated",
                                  "empty_choices"}  # fmt: skip
    assert runs["clean"] == replace(f, fault_rate=0.0)
    assert runs["faults-fixed"] == replace(f, fixed_concurrency=True)


def test_random_429_capacity_startup_and_memory_scenarios() -> None:
    r, clean = SCENARIOS["random-429"]["429s"], SCENARIOS["random-429"]["clean"]
    assert (r.rows, r.latency, r.concurrency, r.fault_rate, r.retry_after_s) == (10_000, 0.2, 100, 0.05, 1.0)
    assert r.fault_kinds == RANDOM_429S == ("429", "429_empty") and r.fault_attempts > 6  # any attempt
    assert clean == replace(r, fault_rate=0.0, fault_kinds=clean.fault_kinds, fault_attempts=1, retry_after_s=None)
    assert not r.fixed_concurrency and not clean.fixed_concurrency
    cap = SCENARIOS["capacity"]["run"]
    assert (cap.capacity, cap.concurrency, cap.fault_rate, cap.fixed_concurrency) == (40, 200, 0.0, False)
    assert cap.rows / cap.bound_rps >= 25  # long enough to judge well after the first 10 s
    start = SCENARIOS["startup"]["run"]
    assert (start.rows, start.latency, start.concurrency, start.fault_rate) == (10_000, 0.2, 100, 0.0)
    # one fault-free 10k run serves start-up, memory and the random-429 comparison
    assert SCENARIOS["memory-10k"]["10k"] is start is clean


def test_ray_s3_verification_catches_a_wrong_answer_a_duplicate_and_a_missing_row(tmp_path: Path) -> None:
    import pyarrow as pa

    from pipeline.benchs3 import verify
    from pipeline.config import DEFAULT_MODEL
    from pipeline.simulator.answers import answer_for

    files = "http://127.0.0.1:1/files"
    rows = []
    for i in range(4):
        url, q = f"{files}/bench/{i}.pdf", f"What is the total of item {i}?"
        rows.append({"request_id": f"r{i}", "file_url": url, "question": q, "status": "ok",
                     "answer": answer_for(DEFAULT_MODEL, f"{url} {q}")})  # fmt: skip
    good = verify(pa.Table.from_pylist(rows), files, 4)
    assert (good.rows, good.ok, good.duplicates, good.first_bad) == (4, 4, 0, "")
    bad = [dict(r) for r in rows]
    bad[1]["answer"] = "something else"
    bad[3]["request_id"] = "r2"  # the same request twice
    checked = verify(pa.Table.from_pylist(bad), files, 4)
    assert (checked.ok, checked.duplicates) == (3, 1) and checked.first_bad.startswith("row 1:")
    assert verify(pa.Table.from_pylist(rows[:3]), files, 4).rows == 3  # a missing row


def test_cli_offers_every_scenario() -> None:
    from pipeline.cli import bench

    (option,) = [p for p in bench.params if p.name == "scenarios"]
    assert isinstance(option.type, click.Choice)
    assert list(option.type.choices) == ["all", *ALL_SCENARIOS]


# ------------------------------------------------------------------ figures and judging


def _stats(timeline: list[dict[str, int]], **extra: Any) -> dict[str, Any]:
    requests = sum(sum(b.values()) for b in timeline)
    outcomes: dict[str, int] = {}
    for b in timeline:
        for k, v in b.items():
            outcomes[k] = outcomes.get(k, 0) + v
    return {"requests": requests, "outcomes": outcomes, "timeline": timeline, **extra}


def test_sim_figures_count_faults_waste_pauses_and_late_share() -> None:
    spec = RunSpec(rows=10, latency=0.5, concurrency=4)
    timeline = [{}, {"ok": 4, "500": 2}, {}, {}, {"ok": 3, "hang": 1}, {"ok": 3, "429": 1}]
    st = _stats(timeline, duplicate_ok=0, retry_after={"sent": 1, "checked": 1, "violations": 0, "min_slack_s": 0.2})
    fig = sim_figures(spec, st)
    assert fig.faults == 4 and fig.wasted == 0 and fig.outcomes["ok"] == 10
    assert fig.zero_request_seconds == 2  # seconds 2 and 3, not the one before the first request
    assert (fig.retry_after_sent, fig.retry_after_violations, fig.retry_after_min_slack_s) == (1, 0, 0.2)
    assert fig.late_429_share is None  # the run ended before the warm-up did
    # one answer too many: a row answered twice, or a request given up that was no fault
    assert sim_figures(spec, {**st, "requests": 15}).wasted == 1


def test_sim_figures_late_window_starts_at_the_first_request() -> None:
    spec = RunSpec(rows=1000, latency=0.2, concurrency=200, capacity=40)
    warm = [{"ok": 100, "capacity_429": 300}] * 10
    steady = [{"ok": 200, "capacity_429": 5}] * 4
    tail = [{"ok": 50}]  # the last rows: no longer enough to fill 40 slots
    timeline = [{}, *warm, *steady, *tail]
    fig = sim_figures(spec, _stats(timeline, request_times=[1.3]))
    assert fig.late_429_share == round(20 / (4 * 205 + 50), 4)
    assert fig.late_in_flight is None  # every steady second already had the last 40 rows in reach
    fig = sim_figures(replace(spec, rows=5000), _stats(timeline, request_times=[1.3]))
    # 200 answers a second x 0.2 s; 429s take no slot, the last (partial) second is left out
    assert fig.late_in_flight == 40.0
    assert fig.late_429_share == round(20 / 870, 4)


def _run(spec: RunSpec, **figures: Any) -> RunResult:
    sim = SimFigures(outcomes={"ok": spec.rows}, faults=0, wasted=0, duplicate_ok=0, cancelled=0,
                     retry_after_sent=0, retry_after_checked=0, retry_after_violations=0,
                     retry_after_min_slack_s=None, zero_request_seconds=0, late_429_share=None,
                     late_in_flight=None)  # fmt: skip
    sim = replace(sim, **{k: figures.pop(k) for k in list(figures) if hasattr(sim, k)})
    base = RunResult(spec=spec, exit_code=0, requests=spec.rows, ok=spec.rows, failed=0, wall_s=10.0,
                     throughput_rps=100.0, bound_rps=spec.bound_rps, ratio=0.97, wall_ratio=0.96, cpu_s=1.0,
                     cpu_us_per_request=100.0, client_cpu_share=0.1, peak_rss_mb=100.0, first_request_s=0.3,
                     spawn_to_first_request_s=0.4, compaction_s=0.1, sim_max_in_flight=spec.concurrency,
                     sim_cpu_share=0.2, foreign_cpu_share=0.0, goodput_rps=100.0, sim=sim)  # fmt: skip
    return replace(base, **figures)


def _verdicts(name: str, **runs: RunResult) -> dict[str, bool]:
    return {c.name: c.passed for c in JUDGES[name](runs)}


def test_judge_faults_unkind() -> None:
    spec = SCENARIOS["faults-unkind"]
    clean = _run(spec["clean"], wall_s=4.0)
    good = _run(spec["faults"], wall_s=10.0, faults=230, retry_after_sent=70)
    assert all(_verdicts("faults-unkind", faults=good, clean=clean).values())
    bad = replace(good, wall_s=10.1, ok=1999, sim=replace(good.sim, wasted=3, retry_after_violations=2))
    assert _verdicts("faults-unkind", faults=bad, clean=clean) == {
        "wall / clean wall": False, "rows ok": False, "wasted requests": False, "Retry-After violations": False,
    }  # fmt: skip


def test_judge_random_429_compares_goodput() -> None:
    spec = SCENARIOS["random-429"]
    clean = _run(spec["clean"], goodput_rps=480.0)
    assert _verdicts("random-429", **{"429s": _run(spec["429s"], goodput_rps=408.0), "clean": clean}) == {
        "goodput / clean goodput": True, "rows ok": True, "Retry-After violations": True}  # fmt: skip
    slow = _run(spec["429s"], goodput_rps=407.0, retry_after_violations=1)
    assert _verdicts("random-429", **{"429s": slow, "clean": clean}) == {
        "goodput / clean goodput": False, "rows ok": True, "Retry-After violations": False}  # fmt: skip


@pytest.mark.parametrize(
    ("share", "in_flight", "expected"),
    [(0.049, 38.0, [True, True]), (0.05, 38.0, [False, True]), (0.01, 20.0, [True, False]),
     (None, None, [False, False])],
)  # fmt: skip
def test_judge_capacity(share: float | None, in_flight: float | None, expected: list[bool]) -> None:
    run = _run(SCENARIOS["capacity"]["run"], late_429_share=share, late_in_flight=in_flight)
    assert [c.passed for c in JUDGES["capacity"]({"run": run})] == expected


def test_judge_startup_and_memory_10k() -> None:
    spec = SCENARIOS["startup"]["run"]
    ok = _run(spec, wall_ratio=0.95, spawn_to_first_request_s=0.45, peak_rss_mb=130.0)
    assert all(_verdicts("startup", run=ok).values())
    late = replace(ok, wall_ratio=0.949, spawn_to_first_request_s=None)  # never saw a first request
    assert not any(_verdicts("startup", run=late).values())
    big = _run(SCENARIOS["memory-10k"]["1M"], peak_rss_mb=200.5)
    assert _verdicts("memory-10k", **{"10k": ok, "1M": big}) == {"peak RSS MB (10k)": True, "peak RSS MB (1M)": False}


def test_scenario_line_says_pass_or_fail_and_what_it_was() -> None:
    res = ScenarioResult("cpu", {}, [Check("client CPU us/request", 250.0, "<= 200", False)])
    assert scenario_line(res) == "bench cpu: FAIL (client CPU us/request=250 <= 200 FAIL)"
    res = ScenarioResult("memory-10k", {}, [Check("peak RSS MB (10k)", 120.0, "<= 130", True, "204 MB")])
    assert scenario_line(res) == "bench memory-10k: PASS (peak RSS MB (10k)=120 <= 130 PASS [before: 204 MB])"


def test_run_line_shows_what_the_gateway_saw() -> None:
    run = _run(SCENARIOS["faults-unkind"]["faults"], faults=230, wasted=0, retry_after_sent=70,
               retry_after_violations=1, zero_request_seconds=3, concurrency_final=30, limit_min=12)  # fmt: skip
    line = run_line("faults-unkind/faults", run)
    assert " adaptive " in line and "limit=30 (min 12)" in line and "faults=230 wasted=0" in line
    assert "violated=1" in line and "seconds_without_requests=3" in line


def test_structured_scenario_times_both_paths_and_checks_they_agree(tmp_path: Path) -> None:
    """The structured-100k scenario's shape on 2 000 rows (its speed is never asserted)."""
    from pipeline.bench import STRUCTURED_SCENARIO, measure_structured

    res = measure_structured(tmp_path, rows=2_000)
    assert res.name == STRUCTURED_SCENARIO and res.name in ALL_SCENARIOS
    names = [c.name for c in res.checks]
    assert names[0].startswith("check + columns us/row") and res.checks[0].target == "<= 30"
    assert all(c.value > 0 for c in res.checks)
    assert res.checks[-1].name == "column paths agree" and res.checks[-1].passed
    assert "[before: 50-75 us]" in scenario_line(res)


@pytest.mark.parametrize(("concurrency", "expected"), [(1, 6.6), (2, 5.2)])
def test_the_ideal_client_replays_the_simulators_own_fault_plan(tmp_path: Path, concurrency: int,
                                                                expected: float) -> None:  # fmt: skip
    # row 0 answers; row 1 hangs once (its seat held for the whole timeout), row 2 gets a
    # Retry-After: 1 first (its seat given up meanwhile); retries go before fresh rows
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.bench import RunSpec
    from pipeline.benchfloor import ideal_send_s

    manifest = tmp_path / "m.parquet"
    questions = ["q", "q [[sim:fault=hang]]", "q [[sim:retry_after=1]]"]
    pq.write_table(pa.table({"file_url": ["https://x/a.pdf"] * 3, "question": questions}), manifest)
    spec = RunSpec(rows=3, latency=0.2, concurrency=concurrency, timeout=5.0, retry_after_s=1.0, fault_rate=0.1)
    assert ideal_send_s(spec, manifest) == pytest.approx(expected)
