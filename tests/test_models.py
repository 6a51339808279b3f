"""Per-row models, fallbacks, prices per model and agreement across models (issue 15)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pipeline import run
from pipeline.simulator import answer_for, usage_for
from pipeline.summary import diff, format_diff

from .conftest import cli, fast_config, make_rows, write_csv

NO_CHANNEL = "gpt-4o-all"  # the simulator's no-channel model in these tests
WORKS = "gpt-4-all"  # answers, reporting gpt-4o (the simulator's alias)


def _info(out: Path) -> dict[str, Any]:
    return json.loads((out / "_run.json").read_text())


def _expected_cost(content: str, model: str, prompt_per_1m: float, completion_per_1m: float) -> float:
    prompt, completion = usage_for([{"role": "user", "content": content}], answer_for(model, content))
    return (prompt * prompt_per_1m + completion * completion_per_1m) / 1e6


def test_a_model_without_channel_falls_back_for_every_row_without_tripping_the_breaker(tmp_path: Path, sim) -> None:
    server = sim(no_channel_models=(NO_CHANNEL,), record_bodies=True)
    rows = make_rows(12)
    manifest = write_csv(tmp_path / "m.csv", rows)
    out = tmp_path / "out"
    cfg = fast_config(manifest, out, server, concurrency=4, fallback_models=[WORKS], price_prompt_per_1m=1.0,
                      price_completion_per_1m=2.0, model_prices={WORKS: {"prompt_per_1m": 30.0}})  # fmt: skip
    summary = run(cfg)
    assert (summary.exit_code, summary.ok, summary.failed) == (0, 12, 0)
    df = pd.read_parquet(out)
    for row, got in zip(rows, df.to_dict("records"), strict=True):
        content = f"{row['file_url']} {row['question']}"
        assert got["answer"] == answer_for(WORKS, content)
        assert (got["model"], got["response_model"], list(got["models_tried"])) == (
            WORKS,
            "gpt-4o",
            [NO_CHANNEL, WORKS],
        )
        # gpt-4-all's own prompt price, the flat completion price
        assert got["cost_usd"] == pytest.approx(_expected_cost(content, WORKS, 30.0, 2.0))
    asked = [b["model"] for b in server.bodies()]
    assert asked.count(WORKS) == 12
    # gpt-4o-all is given up after no_channel_attempts (3) answers in a row, plus rows already on the wire
    assert 3 <= asked.count(NO_CHANNEL) <= 3 + 4 and server.stats()["outcomes"]["no_channel"] == asked.count(NO_CHANNEL)
    models = _info(out)["models"]
    assert models[NO_CHANNEL]["unserved"] and "无可用渠道" in models[NO_CHANNEL]["unserved"]
    assert (models[WORKS]["answered"], models[WORKS]["unserved"]) == (12, None)
    assert models[NO_CHANNEL]["breaker_opened"] == 0 and models[WORKS]["breaker_opened"] == 0


def test_mixed_models_per_row_one_without_channel_and_no_fallback(tmp_path: Path, sim) -> None:
    server = sim(no_channel_models=(NO_CHANNEL,))
    rows = [{**r, "model": NO_CHANNEL if i % 3 == 0 else WORKS if i % 3 == 1 else ""} for i, r in
            enumerate(make_rows(12))]  # fmt: skip
    manifest = write_csv(tmp_path / "m.csv", rows)
    out = tmp_path / "out"
    summary = run(fast_config(manifest, out, server, concurrency=4, model="gpt-4o"))
    # the run goes on: gpt-4-all's rows and the rows of the run's model (gpt-4o) complete
    assert (summary.exit_code, summary.ok, summary.failed) == (1, 8, 4)
    df = pd.read_parquet(out)
    for row, got in zip(rows, df.to_dict("records"), strict=True):
        model = row["model"] or "gpt-4o"
        assert got["model"] == model and got["input_model"] == row["model"]
        if model == NO_CHANNEL:
            assert (got["status"], got["error_type"]) == ("failed", "no_channel") and pd.isna(got["answer"])
            assert list(got["models_tried"]) == [NO_CHANNEL]
        else:
            assert got["status"] == "ok" and got["answer"] == answer_for(model, f"{row['file_url']} {row['question']}")
            assert list(got["models_tried"]) == [model]
    assert server.stats()["outcomes"]["no_channel"] <= 3 + 4
    assert _info(out)["models"][NO_CHANNEL]["unserved"]


def test_the_run_stops_when_every_model_it_can_use_has_no_channel(tmp_path: Path, sim) -> None:
    server = sim(no_channel_models=(NO_CHANNEL, WORKS))
    manifest = write_csv(tmp_path / "m.csv", make_rows(20))
    summary = run(fast_config(manifest, tmp_path / "out", server, concurrency=2, fallback_models=[WORKS]))
    assert summary.exit_code == 3 and summary.failed == 0 and summary.ok == 0
    assert "nor is any other model of this run" in (summary.reason or "")
    assert server.stats()["requests"] <= 2 * (3 + 2)


def test_fallback_after_an_unreadable_or_filtered_answer_but_not_after_a_400(tmp_path: Path, sim) -> None:
    server = sim()
    rows = make_rows(3)
    rows[0]["question"] += " [[sim:unreadable]]"
    rows[1]["question"] += " [[sim:status=400]]"
    rows[2]["question"] += " [[sim:finish=content_filter]]"
    manifest = write_csv(tmp_path / "m.csv", rows)
    summary = run(fast_config(manifest, tmp_path / "out", server, fallback_models=[WORKS], unreadable_retries=0))
    df = pd.read_parquet(tmp_path / "out").set_index("question")
    unreadable, bad, filtered = (df.loc[r["question"]] for r in rows)
    assert (filtered["error_type"], list(filtered["models_tried"])) == ("content_filter", ["gpt-4o-all", WORKS])
    # the directive makes every model say it cannot read the file: both were asked, the last one's answer kept
    assert (unreadable["error_type"], list(unreadable["models_tried"]), unreadable["attempts"]) == (
        "unreadable_document",
        ["gpt-4o-all", WORKS],
        2,
    )
    assert (bad["error_type"], list(bad["models_tried"]), bad["model"]) == (
        "invalid_request",
        ["gpt-4o-all"],
        "gpt-4o-all",
    )
    assert summary.exit_code == 1 and server.stats()["requests"] == 5


def test_a_model_the_gateway_does_not_know_falls_back_at_once(tmp_path: Path, sim) -> None:
    server = sim(missing_models=("gpt-5-all",), record_bodies=True)
    manifest = write_csv(tmp_path / "m.csv", make_rows(10))
    summary = run(fast_config(manifest, tmp_path / "out", server, model="gpt-5-all", fallback_models=[WORKS],
                              concurrency=2))  # fmt: skip
    assert (summary.exit_code, summary.ok) == (0, 10)
    df = pd.read_parquet(tmp_path / "out")
    assert {tuple(t) for t in df["models_tried"]} == {("gpt-5-all", WORKS)} and set(df["model"]) == {WORKS}
    # model_not_found marks the model unserved at its first answer: only rows already on the wire asked it
    assert 1 <= server.stats()["outcomes"]["model_not_found"] <= 2


def test_cli_flags_reach_forms_fallbacks_and_prices(tmp_path: Path, sim) -> None:
    server = sim(no_channel_models=(NO_CHANNEL, "claude-x"), record_bodies=True)
    manifest = write_csv(tmp_path / "m.csv", make_rows(3))
    out = tmp_path / "out"
    done = cli("run", str(manifest), "--out", str(out), "--base-url", server.url, "--quiet", "--form", "file",
               "--fallback-model", "claude-x", "--fallback-model", WORKS, "--model-price", f"{WORKS}=1/2",
               "--max-attempts", "1")  # fmt: skip
    assert done.returncode == 0, done.stderr
    df = pd.read_parquet(out)
    assert {tuple(t) for t in df["models_tried"]} == {(NO_CHANNEL, "claude-x", WORKS)}
    settings = _info(out)["settings"]
    assert settings["fallback_models"] == ["claude-x", WORKS] and settings["form"] == "file"
    assert settings["model_prices"] == {WORKS: {"prompt_per_1m": 1.0, "completion_per_1m": 2.0}}
    assert all(b["messages"][0]["content"][1]["type"] == "file" for b in server.bodies())
    assert df["cost_usd"].gt(0).all()


def test_diff_of_two_models_shows_agreement_per_question(tmp_path: Path, sim) -> None:
    server = sim()
    rows = [{"file_url": f"https://docs.example.com/{i}.pdf", "question": f"Q{i % 2}"} for i in range(6)]
    manifest = write_csv(tmp_path / "m.csv", rows)
    for name, model in (("a", "gpt-4o-all"), ("b", WORKS), ("again", "gpt-4o-all")):
        assert run(fast_config(manifest, tmp_path / name, server, model=model)).exit_code == 0
    across = diff(tmp_path / "a", tmp_path / "b", key="content")
    assert (across.models_a, across.models_b, across.agreement) == (("gpt-4o-all",), (WORKS,), 0.0)
    assert [(q.question, q.rows, q.compared, q.agree) for q in across.by_question] == [("Q0", 3, 3, 0), ("Q1", 3, 3, 0)]
    text = format_diff(across)
    assert "agreement (gpt-4o-all vs gpt-4-all): 0.0%" in text and "0/3 agree  'Q1'" in text
    same = diff(tmp_path / "a", tmp_path / "again")
    assert same.agreement == 1.0 and {q.share for q in same.by_question} == {1.0}


def test_prices_per_model_and_fallbacks_from_job_file_flags_and_keywords(tmp_path: Path) -> None:
    from pipeline.config import load_config
    from pipeline.errors import UsageError

    job = tmp_path / "job.toml"
    job.write_text('[gateway]\nfallback_models = ["gpt-4-all", "claude-3-5-sonnet"]\n[prices]\nprompt_per_1m = 1\n'
                   'completion_per_1m = 2\n[prices."gpt-4-all"]\nprompt_per_1m = 30\n')  # fmt: skip
    cfg = load_config(job, env={})
    assert cfg.fallback_models == ("gpt-4-all", "claude-3-5-sonnet")
    assert (cfg.prices_for("gpt-4-all"), cfg.prices_for(None)) == ((30.0, 2.0, 0.0), (1.0, 2.0, 0.0))
    flags = load_config(job, env={}, flags={"fallback_models": ("gpt-4o",), "model_prices": ("gpt-4o=5/15/0.01",)})
    assert flags.fallback_models == ("gpt-4o",) and flags.prices_for("gpt-4o") == (5.0, 15.0, 0.01)
    assert flags.cost(1_000_000, 1_000_000, model="gpt-4o") == pytest.approx(20.01)
    with pytest.raises(UsageError, match=r"^--model-price \('gpt-4o=cheap',\): expected MODEL=PROMPT/COMPLETION"):
        load_config(env={}, flags={"model_prices": ("gpt-4o=cheap",)})
    job.write_text('[prices."gpt-4-all"]\nprompt = 3\n')
    with pytest.raises(UsageError, match=r"\[prices.<model>\] = .*expected a table with some of prompt_per_1m"):
        load_config(job, env={})


def test_the_budget_estimate_prices_each_row_at_its_models_price(tmp_path: Path) -> None:
    from pipeline.budget import estimate_rows, prompt_estimate
    from pipeline.config import load_config
    from pipeline.manifest import Manifest

    rows = [{**r, "model": WORKS if i % 2 else ""} for i, r in enumerate(make_rows(6))]
    manifest = write_csv(tmp_path / "m.csv", rows)
    cfg = load_config(manifest=str(manifest), env={}, price_prompt_per_1m=1.0, price_per_request=0.5,
                      model_prices={WORKS: {"prompt_per_1m": 100.0}})  # fmt: skip
    prompts = [prompt_estimate(f"{r['file_url']} {r['question']}", cfg) for r in rows]
    est = estimate_rows(Manifest(str(manifest), cfg), None, cfg)
    own = sum(p * (100.0 if r["model"] else 1.0) for p, r in zip(prompts, rows, strict=True)) / 1e6
    assert est.requests == 6 and est.min_cost_usd == pytest.approx(own + 6 * 0.5)
