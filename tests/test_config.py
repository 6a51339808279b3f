"""Settings: one parser per setting whatever door the value came in by (job file,
keyword arguments, flags, environment), messages that name the setting, its
source and the value, the key rule, durations and deadlines."""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from pipeline.config import (
    FIELD_PARSERS,
    GENERATION_PARAMS,
    JobConfig,
    is_loopback_url,
    load_config,
    parse_duration,
    read_job_file,
    seconds_until,
)
from pipeline.errors import ExitCode, UsageError
from pipeline.retry import parse_retry_after

# name, where a job file sets it ((section, key); "" = top level; None = not in a job file),
# a good raw value, what it parses to, a bad raw value, what the message says is expected
# fmt: off
SETTINGS: list[tuple[str, tuple[str, str] | None, Any, Any, Any, str]] = [
    ("manifest_format", ("", "manifest_format"), "parquet", "parquet", "xlsx", "expected one of csv, parquet"),
    ("base_url", ("gateway", "base_url"), "http://10.0.0.1:8/v1", "http://10.0.0.1:8/v1", "ftp://h/v1",
     "expected an http:// or https:// URL"),
    ("model", ("gateway", "model"), "gpt-4-all", "gpt-4-all", " ", "expected non-empty text"),
    ("api_key_env", ("gateway", "api_key_env"), "MY_KEY", "MY_KEY", "MY-KEY", "environment variable"),
    ("stream", ("gateway", "stream"), True, True, "maybe", "expected true or false"),
    ("template", ("request", "template"), "{file_url} Q: {question}", "{file_url} Q: {question}", "{file_url",
     "not a valid template"),
    ("system", ("request", "system"), "Be brief.", "Be brief.", 5, "expected text"),
    ("file_url_column", ("columns", "file_url"), "link", "link", "", "expected non-empty text"),
    ("question_column", ("columns", "question"), "ask", "ask", 3, "expected non-empty text"),
    ("id_column", ("columns", "id"), "ref", "ref", "", "expected non-empty text"),
    ("form", ("request", "form"), "image_url", "image_url", "pdf", "expected one of inline, image_url, file, auto"),
    ("embed", ("request", "embed"), False, False, "maybe", "expected true or false"),
    ("embed_max_bytes", ("request", "embed_max_bytes"), 1000, 1000, 0, "at least 1"),
    ("form_column", ("columns", "form"), "how", "how", "", "expected non-empty text"),
    ("model_column", ("columns", "model"), "llm", "llm", "", "expected non-empty text"),
    ("fallback_models", ("gateway", "fallback_models"), ["gpt-4-all", "claude"], ("gpt-4-all", "claude"), [""],
     "expected a list of model names"),
    ("model_prices", None, {"gpt-4-all": {"prompt_per_1m": 2}}, {"gpt-4-all": {"prompt_per_1m": 2.0}},
     {"gpt-4-all": {"cheap": 1}}, "expected a table with some of prompt_per_1m"),
    ("concurrency", ("limits", "concurrency"), 32, 32, "five", "expected an integer"),
    ("adaptive", ("limits", "adaptive"), False, False, "sometimes", "expected true or false"),
    ("rpm", ("limits", "rpm"), 600, 600, 0, "expected an integer of at least 1"),
    ("tpm", ("limits", "tpm"), 90000, 90000, 2.5, "expected an integer"),
    ("max_cost", ("limits", "max_cost"), 5, 5.0, -1, "expected a number of at least 0"),
    ("max_total_tokens", ("limits", "max_tokens"), 1000, 1000, 1.5, "expected an integer"),
    ("max_attempts", ("retry", "max_attempts"), 3, 3, 0, "expected an integer of at least 1"),
    ("timeout", ("retry", "timeout"), "3m", 180.0, "soon", "expected a duration"),
    ("connect_timeout", ("retry", "connect_timeout"), 10, 10.0, 0, "greater than 0"),
    ("row_budget", ("retry", "row_budget"), "1h30m", 5400.0, -5, "greater than 0"),
    ("backoff_initial", ("retry", "backoff_initial"), 0, 0.0, "-1s", "expected a duration"),
    ("backoff_max", ("retry", "backoff_max"), "2m", 120.0, [1], "expected a duration"),
    ("unreadable_retries", ("retry", "unreadable_retries"), 0, 0, -1, "expected an integer of at least 0"),
    ("unreadable_patterns", ("retry", "unreadable_patterns"), ["(?i)no access"], ("(?i)no access",), ["("],
     "is not a regular expression"),
    ("no_channel_attempts", ("retry", "no_channel_attempts"), 2, 2, 0, "at least 1"),
    ("breaker_threshold", ("retry", "breaker_threshold"), 10, 10, "ten", "expected an integer"),
    ("breaker_probes", ("retry", "breaker_probes"), 2, 2, 0, "at least 1"),
    ("breaker_pause", ("retry", "breaker_pause"), "500ms", 0.5, 0, "greater than 0"),
    ("price_prompt_per_1m", ("prices", "prompt_per_1m"), 2.5, 2.5, "cheap", "expected a number"),
    ("price_completion_per_1m", ("prices", "completion_per_1m"), 10, 10.0, -1, "at least 0"),
    ("price_per_request", ("prices", "per_request"), 0.001, 0.001, True, "not true/false"),
    ("retry_failed", ("run", "retry_failed"), True, True, 2, "expected true or false"),
    ("limit", ("run", "limit"), 10, 10, 0, "at least 1"),
    ("shard", ("run", "shard"), "2/4", (2, 4), "5/4", "expected K/N with 1 <= K <= N"),
    ("deadline", ("run", "deadline"), "6:30", "06:30", "6am", "expected HH:MM"),
    ("max_runtime", ("run", "max_runtime"), "7h", 25200.0, 0, "greater than 0"),
    ("grace_period", ("run", "grace_period"), "45s", 45.0, "a while", "expected a duration"),
    ("flush_interval", ("run", "flush_interval"), 0.5, 0.5, 0, "greater than 0"),
    ("progress", ("run", "progress"), "log", "log", "fancy", "expected one of auto, bar, log, none"),
    ("progress_interval", ("run", "progress_interval"), "1m", 60.0, 0, "greater than 0"),
    ("batch_rows", None, 500, 500, 0, "at least 1"),
    ("api_key", None, " sk-abc ", "sk-abc", "sk abc", "without spaces"),
    ("schema_mode", ("output", "mode"), "instructions", "instructions", "json",
     "expected one of auto, response_format, instructions"),
    ("schema_retries", ("output", "schema_retries"), 3, 3, 11, "expected an integer from 0 to 10"),
    ("max_age", ("reuse", "max_age"), "7d", 604800.0, "a week", "expected a duration"),
    ("doc_meta", ("reuse", "doc_meta"), False, False, "maybe", "expected true or false"),
    ("head_timeout", ("reuse", "head_timeout"), "2s", 2.0, 0, "greater than 0"),
    ("head_concurrency", ("reuse", "head_concurrency"), 8, 8, 0, "expected an integer from 1 to 10000"),
    ("ignore_query", ("reuse", "ignore_query"), ["sig", "exp"], ("sig", "exp"), [""],
     "expected a list of query parameter names"),
    ("engine", ("run", "engine"), "ray", "ray", "spark", "expected one of asyncio, ray"),
    ("ray_address", ("ray", "address"), "ray://head:10001", "ray://head:10001", "", "expected non-empty text"),
    ("ray_actors", ("ray", "actors"), 8, 8, 0, "expected an integer from 1 to 1024"),  # default None: by cluster
    ("presign_ttl", ("storage", "presign_ttl"), "15m", 900.0, 700000, "at most 7 days"),
    # generation parameters: cfg.params
    ("temperature", ("request", "temperature"), 0, 0, 2.5, "expected a number from 0 to 2"),
    ("top_p", ("request", "top_p"), 0.9, 0.9, 1.5, "from 0 to 1"),
    ("max_tokens", ("request", "max_tokens"), 300, 300, 0, "at least 1"),
    ("n", ("request", "n"), 1, 1, "one", "expected an integer"),
    ("presence_penalty", ("request", "presence_penalty"), -0.5, -0.5, 3, "from -2 to 2"),
    ("frequency_penalty", ("request", "frequency_penalty"), 0.5, 0.5, -3, "from -2 to 2"),
    ("logit_bias", ("request", "logit_bias"), {"50256": -100}, {"50256": -100}, {"1": 500}, "from -100 to 100"),
    ("user", ("request", "user"), "nightly", "nightly", 5, "expected non-empty text"),
]
# fmt: on
# the paths (manifest, out, api_key_file, cache_dir) and params have tests of their own; schema in
# test_structured_spec.py; cache_dir in test_objstore.py; reuse (paths relative to the job file) in test_reuse.py
COVERED = {s[0] for s in SETTINGS} | {"manifest", "out", "params", "schema", "cache_dir", "reuse"}
IN_JOB_FILES = [s for s in SETTINGS if s[1] is not None]


def _value(cfg: JobConfig, name: str) -> Any:
    return cfg.params[name] if name in GENERATION_PARAMS else getattr(cfg, name)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _job(tmp_path: Path, where: tuple[str, str], value: Any) -> Path:
    section, key = where
    line = f"{key} = {_toml(value)}\n"
    job = tmp_path / "job.toml"
    job.write_text(line if not section else f"[{section}]\n{line}")
    return job


def test_every_field_and_generation_parameter_has_a_parser_and_a_row_in_this_table() -> None:
    assert set(FIELD_PARSERS) == {f.name for f in dataclasses.fields(JobConfig)}
    assert {f.name for f in dataclasses.fields(JobConfig)} | set(GENERATION_PARAMS) <= COVERED


@pytest.mark.parametrize(("name", "where", "good", "parsed", "bad", "why"), SETTINGS, ids=[s[0] for s in SETTINGS])
def test_keyword_arguments_are_parsed(name: str, where: Any, good: Any, parsed: Any, bad: Any, why: str) -> None:
    assert _value(load_config(env={}, **{name: good}), name) == parsed
    with pytest.raises(UsageError) as e:
        load_config(env={}, **{name: bad})
    shown = "(hidden)" if name == "api_key" else repr(bad)
    assert str(e.value).startswith(f"{name}={shown}: ") and why in str(e.value)


@pytest.mark.parametrize(("name", "where", "good", "parsed", "bad", "why"), IN_JOB_FILES,
                         ids=[s[0] for s in IN_JOB_FILES])  # fmt: skip
def test_job_file_values_are_parsed_and_a_bad_one_names_file_section_key_and_value(
    tmp_path: Path, name: str, where: tuple[str, str], good: Any, parsed: Any, bad: Any, why: str
) -> None:
    assert _value(load_config(_job(tmp_path, where, good), env={}), name) == parsed
    job = _job(tmp_path, where, bad)
    with pytest.raises(UsageError) as e:
        load_config(job, env={})
    section, key = where
    located = f"{job}: [{section}] {key}" if section else f"{job}: {key}"
    assert str(e.value).startswith(f"{located} = {bad!r}: ") and why in str(e.value), str(e.value)


@pytest.mark.parametrize(("name", "bad", "why"), [(s[0], s[4], s[5]) for s in SETTINGS if s[0] in FIELD_PARSERS])
def test_jobconfig_itself_refuses_what_load_config_refuses(name: str, bad: Any, why: str) -> None:
    with pytest.raises(UsageError, match=re.escape(why)):
        JobConfig().replace(**{name: bad})


def test_the_issue_example_concurrency_five_in_a_job_file(tmp_path: Path) -> None:
    (tmp_path / "jobs").mkdir()
    job = tmp_path / "jobs" / "x.toml"
    job.write_text('[limits]\nconcurrency = "five"\n')
    with pytest.raises(UsageError) as e:
        load_config(job)
    assert str(e.value) == f"{job}: [limits] concurrency = 'five': expected an integer"


def test_flags_are_named_as_flags() -> None:
    with pytest.raises(UsageError) as e:
        load_config(flags={"deadline": "6am"}, env={})
    assert str(e.value) == "--deadline '6am': expected HH:MM, 24-hour local time, e.g. 06:30"
    with pytest.raises(UsageError, match=r"^--format 'xls': "):
        load_config(flags={"manifest_format": "xls"}, env={})
    assert load_config(flags={"concurrency": "8", "temperature": "0.5", "timeout": "90s"}, env={}).timeout == 90.0


def test_flags_win_over_the_job_file_and_keywords_over_flags(tmp_path: Path) -> None:
    job = tmp_path / "job.toml"
    job.write_text("[limits]\nconcurrency = 4\nrpm = 60\n[request]\ntemperature = 0.2\nmax_tokens = 9\n")
    cfg = load_config(job, flags={"concurrency": "8", "temperature": "0.9"}, env={}, rpm=120)
    assert (cfg.concurrency, cfg.rpm, dict(cfg.params)) == (8, 120, {"temperature": 0.9, "max_tokens": 9})


@pytest.mark.parametrize(
    ("given", "seconds"),
    [("5h", 18000.0), ("90m", 5400.0), ("1h30m", 5400.0), ("45s", 45.0), ("3600", 3600.0), (60, 60.0)],
)
def test_max_runtime_accepts_durations_and_seconds(given: Any, seconds: float) -> None:
    assert load_config(max_runtime=given, env={}).max_runtime == seconds


@pytest.mark.parametrize("given", [0, -1, "0s", "-5m", "5 hours", "h"])
def test_max_runtime_zero_negative_or_unreadable_is_refused(given: Any) -> None:
    with pytest.raises(UsageError, match=rf"^max_runtime={given!r}: "):
        load_config(max_runtime=given, env={})


@pytest.mark.parametrize("given", ["6am", "25:00", "06h00", "6:5", "24:00", "06:60", ""])
def test_a_deadline_that_is_not_hhmm_is_refused(given: str) -> None:
    with pytest.raises(UsageError, match=rf"^deadline={given!r}: expected HH:MM"):
        load_config(deadline=given, env={})


@pytest.mark.parametrize(("given", "shard"), [("1/2", (1, 2)), (" 2 / 2 ", (2, 2)), ((3, 4), (3, 4)), ([1, 1], (1, 1))])
def test_shard_k_of_n(given: Any, shard: tuple[int, int]) -> None:
    assert load_config(shard=given, env={}).shard == shard


@pytest.mark.parametrize("given", ["0/2", "3/2", "1-2", "a/b", "1/2/3", (1,), 2])
def test_a_bad_shard_is_refused(given: Any) -> None:
    with pytest.raises(UsageError, match=r"^shard=.*expected K/N"):
        load_config(shard=given, env={})


def test_unknown_settings_are_refused_with_a_suggestion() -> None:
    with pytest.raises(UsageError, match=r"unknown setting\(s\): 'concurency' \(did you mean 'concurrency'\?\)"):
        load_config(concurency=4, env={})
    with pytest.raises(UsageError, match=r"unknown generation parameter\(s\): 'temprature'"):
        load_config(params={"temprature": 1}, env={})
    with pytest.raises(UsageError, match="unknown setting"):
        JobConfig().replace(api_key_file="k.txt")


def test_params_mapping_and_named_parameters_merge_and_are_checked() -> None:
    cfg = load_config(params={"temperature": 0.3, "top_p": 0.5}, temperature=0.7, env={})
    assert dict(cfg.params) == {"temperature": 0.7, "top_p": 0.5}
    with pytest.raises(UsageError, match=r"^params\['top_p'\]=7: expected a number from 0 to 1"):
        load_config(params={"top_p": 7}, env={})


def test_backoff_initial_above_backoff_max_is_refused() -> None:
    with pytest.raises(UsageError, match="backoff_initial=10 is more than backoff_max=2"):
        load_config(backoff_initial=10, backoff_max=2, env={})


# ------------------------------------------------------------------------------ out, paths


def test_an_out_that_is_an_existing_file_is_refused_from_every_door(tmp_path: Path) -> None:
    existing = tmp_path / "results.txt"
    existing.write_text("not a folder")
    with pytest.raises(UsageError, match=rf"^out={str(existing)!r}: is an existing file, not a folder"):
        load_config(out=str(existing), env={})
    with pytest.raises(UsageError, match=r"^--out '.*results.txt': is an existing file"):
        load_config(flags={"out": str(existing)}, env={})
    job = tmp_path / "job.toml"
    job.write_text('out = "results.txt"\n')
    with pytest.raises(UsageError) as e:
        load_config(job, env={})
    assert str(e.value).startswith(f"{job}: out = {str(existing)!r}: is an existing file")
    assert load_config(out=str(tmp_path), env={}).out == str(tmp_path)  # an existing folder is fine


# ------------------------------------------------------------------------------ read_job_file


def test_read_job_file_flattens_sections_and_resolves_paths_against_its_folder(tmp_path: Path) -> None:
    (tmp_path / "jobs").mkdir()
    job = tmp_path / "jobs" / "x.toml"
    job.write_text(
        'manifest = "../data/m.csv"\nout = "/abs/out"\n'
        '[gateway]\napi_key_file = "key.txt"\n'
        '[request]\ntemperature = 0.2\n[limits]\nmax_tokens = 500\n[columns]\nid = "ref"\n'
    )
    found = read_job_file(job)
    assert {k: g.value for k, g in found.items()} == {
        "manifest": str((tmp_path / "data" / "m.csv").resolve()),
        "out": "/abs/out",
        "api_key_file": str((tmp_path / "jobs" / "key.txt").resolve()),
        "temperature": 0.2,
        "max_total_tokens": 500,  # [limits] max_tokens is the token budget, not the request's max_tokens
        "id_column": "ref",
    }
    assert found["max_total_tokens"].where == f"{job}: [limits] max_tokens"


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("[limits]\nconcurency = 4\n", "unknown key 'concurency' in [limits]"),
        ("[limit]\nrpm = 4\n", "unknown section [limit]"),
        ("outdir = 'x'\n", "unknown top-level key 'outdir'"),
        ("[gateway]\napi_key = 'sk-123'\n", "must not hold the API key"),
        ("api_key = 'sk-123'\n", "must not hold the API key"),
        ("[limits\n", "invalid TOML"),
    ],
)
def test_read_job_file_refuses_with_the_file_named(tmp_path: Path, content: str, needle: str) -> None:
    job = tmp_path / "job.toml"
    job.write_text(content)
    with pytest.raises(UsageError) as e:
        read_job_file(job)
    assert str(e.value).startswith(f"{job}: ") and needle in str(e.value) and "sk-123" not in str(e.value)


def test_read_job_file_that_is_missing_or_not_utf8(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="job file not found"):
        read_job_file(tmp_path / "nope.toml")
    bad = tmp_path / "latin.toml"
    bad.write_bytes(b'model = "caf\xe9"\n')
    with pytest.raises(UsageError, match=r"latin.toml: cannot read job file"):
        read_job_file(bad)


# ------------------------------------------------------------------------------ key and base URL


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1:8088/v1", True),
        ("http://127.1.2.3/v1", True),
        ("https://localhost/v1", True),
        ("http://[::1]:80/v1", True),
        ("http://10.0.0.1/v1", False),
        ("https://api.apicore.ai/v1", False),
        ("http://127.0.0.1.example.com/v1", False),
    ],
)
def test_loopback_urls(url: str, loopback: bool) -> None:
    assert is_loopback_url(url) is loopback


def test_a_run_needs_a_key_unless_the_gateway_is_on_this_machine(tmp_path: Path) -> None:
    common = {"manifest": "m.csv", "out": str(tmp_path / "out"), "env": {}}
    with pytest.raises(UsageError, match=r"^no API key for https://api.apicore.ai/v1: set APICORE_API_KEY"):
        load_config(**common).for_run()
    assert load_config(base_url="http://127.0.0.1:9/v1", **common).for_run().api_key is None
    assert load_config(api_key="k", **common).for_run().api_key == "k"
    # settings without a key are valid: validate, models and quota need no key
    assert load_config(manifest="m.csv", env={}).api_key is None
    with pytest.raises(UsageError, match="no output folder"):
        load_config(manifest="m.csv", api_key="k", env={}).for_run()
    with pytest.raises(UsageError, match="no manifest"):
        load_config(out="o", api_key="k", env={}).for_run()


def test_the_key_comes_from_the_nearest_source(tmp_path: Path) -> None:
    env = {"APICORE_API_KEY": "sk-apicore", "OPENAI_API_KEY": "sk-openai", "TEAM_KEY": "sk-team"}
    assert load_config(env=env).api_key == "sk-apicore"
    assert load_config(env={"OPENAI_API_KEY": "sk-openai"}).api_key == "sk-openai"
    job = tmp_path / "job.toml"
    job.write_text('[gateway]\napi_key_env = "TEAM_KEY"\n')
    assert load_config(job, env=env).api_key == "sk-team"
    assert load_config(job, env=env, api_key="sk-arg").api_key == "sk-arg"
    unset = load_config(job, env={"APICORE_API_KEY": "sk-apicore"})
    assert unset.api_key is None  # the job named a variable: no silent fall-back to another key
    with pytest.raises(UsageError, match="api_key_env names TEAM_KEY, which is not set"):
        unset.replace(manifest="m.csv", out=str(tmp_path / "o")).for_run()


def test_api_key_file_first_line_stripped_from_flag_argument_or_job_file(tmp_path: Path) -> None:
    key = tmp_path / "key.txt"
    key.write_text("  sk-from-file  \nsecond line\n")
    assert load_config(api_key_file=str(key), env={"APICORE_API_KEY": "sk-env"}).api_key == "sk-from-file"
    assert load_config(flags={"api_key_file": str(key)}, env={}).api_key == "sk-from-file"
    job = tmp_path / "job.toml"
    job.write_text('[gateway]\napi_key_file = "key.txt"\n')  # relative to the job file
    assert load_config(job, env={}).api_key == "sk-from-file"
    assert "sk-from-file" not in repr(load_config(job, env={}))
    assert "sk-from-file" not in json.dumps(load_config(job, env={}).public())


@pytest.mark.parametrize(("content", "needle"), [(None, "cannot read the key file"), ("", "first line is empty"),
                                                 ("\nsk-on-line-2\n", "first line is empty")])  # fmt: skip
def test_an_unreadable_or_empty_key_file_is_named(tmp_path: Path, content: str | None, needle: str) -> None:
    key = tmp_path / "key.txt"
    if content is not None:
        key.write_text(content)
    with pytest.raises(UsageError) as e:
        load_config(flags={"api_key_file": str(key)}, env={})
    assert str(e.value).startswith(f"--api-key-file {str(key)!r}: ") and needle in str(e.value)
    assert "sk-on-line-2" not in str(e.value)


def test_two_key_sources_in_one_place_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="give one of api_key and api_key_file"):
        load_config(api_key="k", api_key_file=str(tmp_path / "k"), env={})


def test_a_bad_key_is_never_shown() -> None:
    with pytest.raises(UsageError) as e:
        load_config(env={"APICORE_API_KEY": "sk-secret with-space"})
    assert str(e.value) == "APICORE_API_KEY=(hidden): expected a key without spaces or line breaks"


def test_openai_base_url_is_read_when_nothing_else_sets_the_base_url(tmp_path: Path) -> None:
    env = {"OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    assert load_config(env={}).base_url == "https://api.apicore.ai/v1"
    assert load_config(env=env).base_url == "http://127.0.0.1:9/v1"
    assert load_config(env=env, base_url="http://10.0.0.2/v1").base_url == "http://10.0.0.2/v1"
    assert load_config(env=env, flags={"base_url": "http://10.0.0.3/v1"}).base_url == "http://10.0.0.3/v1"
    job = tmp_path / "job.toml"
    job.write_text('[gateway]\nbase_url = "http://10.0.0.4/v1"\n')
    assert load_config(job, env=env).base_url == "http://10.0.0.4/v1"
    with pytest.raises(UsageError, match=r"^OPENAI_BASE_URL='api.example.com': expected an http"):
        load_config(env={"OPENAI_BASE_URL": "api.example.com"})


# ------------------------------------------------------------------------------ durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("7h", 25200.0),
        ("90m", 5400.0),
        ("1h30m", 5400.0),
        ("1h 30m", 5400.0),
        ("45s", 45.0),
        ("1.5s", 1.5),
        ("6m0s", 360.0),  # x-ratelimit-reset-* as Go writes it
        ("1h2m3s", 3723.0),
        ("12ms", 0.012),
        ("500ms", 0.5),
        ("250us", 0.00025),
        ("2", 2.0),
        ("0.25", 0.25),
        (" 10M ", 600.0),
        ("7d", 604800.0),  # --max-age 7d (issue 12)
        ("1d12h", 129600.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "h", "5 hours", "1h30", "-5s", "-1", "inf", "nan", "1w", "s5", "1..5s"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_retry_headers_use_the_same_parser() -> None:
    assert parse_retry_after({"x-ratelimit-reset-requests": "6m0s"}) == 360.0
    assert parse_retry_after({"x-ratelimit-reset-tokens": "nonsense"}) is None


# ------------------------------------------------------------------------------ deadlines


@pytest.mark.parametrize(
    ("hhmm", "now", "hours"),
    [
        ("06:30", datetime(2026, 1, 10, 5, 0), 1.5),
        ("06:30", datetime(2026, 1, 10, 7, 0), 23.5),  # passed: tomorrow
        ("06:30", datetime(2026, 1, 10, 6, 30), 24.0),  # now: tomorrow, not at once
        ("0:05", datetime(2026, 1, 10, 23, 55), 10 / 60),
        ("06:00", datetime(2026, 1, 10, 3, 0, tzinfo=timezone(timedelta(hours=8))), 3.0),
        # the spring-forward night in Berlin: 01:00 -> 04:00 on the wall clock is 2 real hours
        ("04:00", datetime(2026, 3, 29, 1, 0, tzinfo=ZoneInfo("Europe/Berlin")), 2.0),
        ("04:00", datetime(2026, 10, 25, 1, 0, tzinfo=ZoneInfo("Europe/Berlin")), 4.0),
    ],
)
def test_seconds_until(hhmm: str, now: datetime, hours: float) -> None:
    assert seconds_until(hhmm, now) == pytest.approx(hours * 3600)


def test_seconds_until_refuses_what_is_not_hhmm() -> None:
    with pytest.raises(UsageError, match=r"deadline '6am': expected HH:MM"):
        seconds_until("6am", datetime(2026, 1, 1))


def test_exit_codes() -> None:
    assert [(c.name, int(c)) for c in ExitCode] == [
        ("OK", 0), ("FAILED_ROWS", 1), ("USAGE", 2), ("ABORTED", 3), ("INTERNAL", 4)
    ]  # fmt: skip
