"""``docpipe bench`` end to end on a tiny load: the report's shape and sanity, never
its speed (timing thresholds would make the suite flaky on a busy machine)."""

from __future__ import annotations

import json

from pipeline.bench import SCENARIOS, Check, RunSpec, ScenarioResult, scenario_line

from .conftest import cli


def test_bench_reports_every_figure_for_a_small_run() -> None:
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
    assert 0 < run["wall_ratio"] <= run["ratio"]
    assert run["cpu_s"] > 0 and run["cpu_us_per_request"] > 0 and run["peak_rss_mb"] > 10
    assert run["first_request_s"] is not None and run["first_request_s"] >= 0
    assert run["spawn_to_first_request_s"] >= run["first_request_s"]
    assert run["compaction_s"] is not None and run["compaction_s"] >= 0
    assert run["sim_max_in_flight"] <= 50
    assert run["sim_cpu_share"] > 0 and run["foreign_cpu_share"] >= 0
    # the second run finds everything done and sends nothing
    assert run["resume_requests"] == 0 and run["resume_exit_code"] == 0 and run["resume_s"] > 0
    # the human lines go to stderr when --json owns stdout
    assert "custom/run: N=300" in proc.stderr


def test_bench_with_faults_still_answers_every_row() -> None:
    proc = cli("bench", "--rows", "200", "--latency", "0.02", "--concurrency", "40", "--fault-rate", "0.2",
               "--fault-kinds", "429,truncated,hang", "--timeout", "1", "--json", timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    run = json.loads(proc.stdout)["scenarios"][0]["runs"]["run"]
    assert run["ok"] == 200
    assert run["requests"] > 200  # the faulted first attempts were retried


def test_scenarios_are_the_issue_targets() -> None:
    assert set(SCENARIOS) == {"little-100", "little-1000", "faults", "cpu", "memory", "resume", "compaction"}
    # memory, resume and compaction share one 1M run, measured once per invocation
    assert SCENARIOS["memory"]["1M"] is SCENARIOS["resume"]["1M"] is SCENARIOS["compaction"]["1M"]
    assert SCENARIOS["faults"]["clean"].fault_rate == 0 and SCENARIOS["faults"]["faults"].timeout == 5.0
    assert RunSpec(rows=1, latency=0.2, concurrency=100).bound_rps == 500


def test_scenario_line_says_pass_or_fail() -> None:
    res = ScenarioResult("cpu", {}, [Check("client CPU us/request", 250.0, "<= 200", False)])
    assert scenario_line(res) == "bench cpu: FAIL (client CPU us/request=250 <= 200 FAIL)"
