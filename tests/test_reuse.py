"""Incremental nights (issue 12): --reuse, document metadata, signed URLs, freshness.

Real HTTP to the simulator, which serves the documents (``/files/...``) and counts
both the chat requests and the HEADs.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from pipeline import run
from pipeline.config import load_config
from pipeline.errors import UsageError
from pipeline.simulator import SimServer, answer_for

from .conftest import ROOT, TEST_KEY, cli, write_csv

PRICES = {"price_prompt_per_1m": 2.5, "price_completion_per_1m": 10.0}


def _run(manifest: Path, out: Path, server: SimServer, **kw: Any) -> Any:
    kw.setdefault("concurrency", 32)
    return run(manifest=str(manifest), out=str(out), base_url=server.url, api_key=TEST_KEY, progress="none",
               backoff_initial=0, backoff_max=0, timeout=5, **kw)  # fmt: skip


def _requests(server: SimServer) -> int:
    return int(server.stats()["requests"])


def _results(out: Path) -> list[dict[str, Any]]:
    return pq.read_table(out / "results.parquet").to_pylist()


def _docs(server: SimServer, names: list[str], question: str = "What is the total?") -> list[dict[str, str]]:
    return [{"file_url": f"{server.files_url}/{n}", "question": question} for n in names]


def test_night_two_sends_exactly_the_changed_and_new_rows_and_answers_like_a_full_rerun(
    tmp_path: Path, sim: Any
) -> None:
    server = sim(latency_s=0.005)
    names = [f"d{i}.pdf" for i in range(2000)]  # the 2 000 documents
    night1 = write_csv(tmp_path / "n1.csv", _docs(server, names))
    s1 = _run(night1, tmp_path / "night1", server, **PRICES)
    assert (s1.ok, _requests(server)) == (2000, 2000)
    assert server.files()["heads"] == 2000  # one HEAD per document

    changed = names[::10]  # 10 % of the documents change
    server.files(change=changed, reset=True)
    new = _docs(server, [f"new{i}.pdf" for i in range(100)])  # 5 % new rows
    night2 = write_csv(tmp_path / "n2.csv", _docs(server, names) + new)
    before = _requests(server)
    s2 = _run(night2, tmp_path / "night2", server, reuse=(str(tmp_path / "night*"),), **PRICES)
    assert _requests(server) - before == len(changed) + len(new)
    assert (s2.ok, s2.reused, s2.requests) == (2100, 2000 - len(changed), len(changed) + len(new))
    info = json.loads((tmp_path / "night2" / "_run.json").read_text())
    assert info["reused"] == s2.reused and info["cost_saved_usd"] > 0

    rows = _results(tmp_path / "night2")
    asked = {r["file_url"] for r in rows if r["reused_from"] is None}
    assert asked == {f"{server.files_url}/{n}" for n in changed} | {r["file_url"] for r in new}
    assert {r["reused_from"] for r in rows if r["reused_from"] is not None} == {s1.run_id}
    # reused rows keep their tokens and cost; the run's spent figures are tonight's requests only
    copied = [r for r in rows if r["reused_from"] is not None]
    assert all(r["total_tokens"] and r["cost_usd"] and r["attempts"] == 0 for r in copied)
    assert s2.total_tokens == sum(r["total_tokens"] for r in rows if r["reused_from"] is None)
    assert info["cost_saved_usd"] == pytest.approx(sum(r["cost_usd"] for r in copied))

    _run(night2, tmp_path / "full", server)  # the same night without --reuse
    assert [r["answer"] for r in _results(tmp_path / "full")] == [r["answer"] for r in rows]
    assert all(r["answer"] == answer_for("gpt-4o-all", f"{r['file_url']} {r['question']}") for r in rows)


def test_duplicate_rows_are_sent_once_and_every_row_gets_the_answer(tmp_path: Path, sim: Any) -> None:
    server = sim(latency_s=0.01)
    distinct = [{"file_url": f"https://docs.example.com/d{i}.pdf", "question": f"Q{i}?"} for i in range(400)]
    rows = distinct + distinct[::4]  # 100 repeats: 20 % of the 500 rows
    manifest = write_csv(tmp_path / "m.csv", rows)
    summary = _run(manifest, tmp_path / "out", server, doc_meta=False)
    assert _requests(server) == 400
    assert (summary.ok, summary.rows_total, summary.requests) == (500, 500, 400)
    results = _results(tmp_path / "out")
    assert len(results) == 500
    assert all(r["answer"] == answer_for("gpt-4o-all", f"{r['file_url']} {r['question']}") for r in results)


def test_a_repeat_whose_twin_was_answered_by_an_earlier_run_gets_its_answer(tmp_path: Path, sim: Any) -> None:
    server = sim(latency_s=0.005)
    distinct = [{"file_url": f"https://docs.example.com/d{i}.pdf", "question": "Q?"} for i in range(50)]
    manifest = write_csv(tmp_path / "m.csv", distinct + distinct[:20])
    _run(manifest, tmp_path / "out", server, doc_meta=False, limit=50)  # the twins only
    summary = _run(manifest, tmp_path / "out", server, doc_meta=False)  # resume: only repeats are left
    assert _requests(server) == 50
    assert (summary.ok, summary.pending) == (70, 0)
    assert [r["answer"] for r in _results(tmp_path / "out")][50:] == [r["answer"] for r in _results(tmp_path / "out")][
        :20
    ]


def test_document_metadata_columns_and_the_matching_rule_per_server_behaviour(tmp_path: Path, sim: Any) -> None:
    server = sim(latency_s=0.005)
    modes = ["normal", "weak", "no_etag", "no_meta", "head_refused", "head_hang", "fail"]
    names = [f"{m}-{i}.pdf" for m in modes for i in range(4)]
    server.files(mode={n: n.split("-")[0] for n in names})
    manifest = write_csv(tmp_path / "m.csv", _docs(server, names))
    s1 = _run(manifest, tmp_path / "n1", server, head_timeout=2)
    assert (s1.ok, s1.failed) == (len(names), 0)  # a HEAD that fails or hangs never fails a row
    by_mode = {m: [r for r in _results(tmp_path / "n1") if f"/{m}-" in r["file_url"]] for m in modes}
    assert all(r["doc_etag"].startswith('"') and r["doc_bytes"] > 0 for r in by_mode["normal"])
    assert all(r["doc_etag"].startswith('W/"') for r in by_mode["weak"])
    assert all(r["doc_etag"] is None and r["doc_last_modified"] is not None for r in by_mode["no_etag"])
    assert all(r["doc_etag"] is None and r["doc_last_modified"] is None for r in by_mode["no_meta"])
    assert all(r["doc_etag"] and r["doc_bytes"] for r in by_mode["head_refused"])  # from the ranged GET
    assert all(r["doc_bytes"] is None for m in ("head_hang", "fail") for r in by_mode[m])
    counted = server.files()
    assert counted["ranged_gets"] == 4 and counted["heads"] == len(names)

    # night 2: one weak-etag and one no-etag document change; nothing else does
    server.files(change=["weak-0.pdf", "no_etag-0.pdf"])
    before = _requests(server)
    _run(manifest, tmp_path / "n2", server, head_timeout=2, reuse=(str(tmp_path / "n1"),))
    asked = sorted(r["file_url"].rsplit("/", 1)[1] for r in _results(tmp_path / "n2") if r["reused_from"] is None)
    expected = ["weak-0.pdf", "no_etag-0.pdf"] + [n for n in names if n.split("-")[0] in ("no_meta", "head_hang",
                                                                                          "fail")]  # fmt: skip
    assert asked == sorted(expected)
    assert _requests(server) - before == len(expected)


def test_signed_urls_with_a_new_signature_are_reused_and_other_query_changes_are_not(
    tmp_path: Path, sim: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="docpipe")
    server = sim(latency_s=0.005)
    base = f"{server.files_url}/s{{i}}.pdf?X-Amz-Signature={{sig}}&X-Amz-Expires=3600&v={{v}}"
    night = [{"file_url": base.format(i=i, sig="aaa", v=1), "question": "Q?"} for i in range(10)]
    _run(write_csv(tmp_path / "m1.csv", night), tmp_path / "n1", server)
    night2 = [{"file_url": base.format(i=i, sig="bbb", v=2 if i < 3 else 1), "question": "Q?"} for i in range(10)]
    before = _requests(server)
    s2 = _run(write_csv(tmp_path / "m2.csv", night2), tmp_path / "n2", server, reuse=(str(tmp_path / "n1"),))
    assert (_requests(server) - before, s2.reused) == (3, 7)  # v= is not a signature: those 3 are new requests
    server.files(mode={"s9.pdf": "fail"})  # a failed HEAD is logged, without the signature
    _run(write_csv(tmp_path / "m2.csv", night2), tmp_path / "n3", server)
    assert "s9.pdf" in caplog.text and "bbb" not in caplog.text


def test_failed_rows_are_never_reused_and_max_age_asks_old_answers_again(tmp_path: Path, sim: Any) -> None:
    server = sim(latency_s=0.005)
    rows = _docs(server, [f"a{i}.pdf" for i in range(5)]) + _docs(server, ["bad.pdf"], "Q [[sim:status=400]]")
    manifest = write_csv(tmp_path / "m.csv", rows)
    s1 = _run(manifest, tmp_path / "n1", server)
    assert (s1.ok, s1.failed) == (5, 1)
    before = _requests(server)
    s2 = _run(manifest, tmp_path / "n2", server, reuse=(str(tmp_path / "n1"),))
    assert (s2.reused, _requests(server) - before) == (5, 1)  # the failed row is asked again
    before = _requests(server)
    s3 = _run(manifest, tmp_path / "n3", server, reuse=(str(tmp_path / "n2"),), max_age="1ms")
    assert (s3.reused, _requests(server) - before) == (0, 6)


def test_reuse_settings_from_a_job_file_flags_and_their_errors(tmp_path: Path) -> None:
    (tmp_path / "out" / "a").mkdir(parents=True)
    job = tmp_path / "jobs" / "night.toml"
    job.parent.mkdir()
    job.write_text('reuse = ["../out/*"]\n')
    assert load_config(job).reuse == (str(tmp_path / "jobs" / "../out/*"),)
    job.write_text('[reuse]\nfrom = ["../out/a"]\nmax_age = "7d"\nignore_query = ["sig"]\n')
    cfg = load_config(job)
    assert (cfg.reuse, cfg.max_age, cfg.ignore_query) == ((str(tmp_path / "jobs" / "../out/a"),), 604800.0, ("sig",))
    with pytest.raises(UsageError, match="reuse needs document metadata"):
        load_config(job, doc_meta=False)
    manifest = write_csv(tmp_path / "m.csv", [{"file_url": "https://docs.example.com/a.pdf", "question": "Q?"}])
    done = cli("run", str(manifest), "--out", str(tmp_path / "o"), "--reuse", str(tmp_path / "nowhere"),
               "--base-url", "http://127.0.0.1:9/v1")  # fmt: skip
    assert done.returncode == 2 and "nowhere" in done.stderr
    done = cli("run", str(manifest), "--out", str(tmp_path / "o"), "--reuse", str(tmp_path / "out"),
               "--no-doc-meta", "--base-url", "http://127.0.0.1:9/v1")  # fmt: skip
    assert done.returncode == 2 and "--no-doc-meta" in done.stderr


def test_a_reused_answer_keeps_the_model_that_answered_it(tmp_path: Path, sim: Any) -> None:
    # night 1: gpt-4o-all has no channel, gpt-4-all answers; night 2 copies those answers forward,
    # and the rows must still say which model gave them (and that the first one was tried)
    server = sim(latency_s=0.005, no_channel_models=("gpt-4o-all",))
    manifest = write_csv(tmp_path / "m.csv", _docs(server, [f"d{i}.pdf" for i in range(6)]))
    s1 = _run(manifest, tmp_path / "night1", server, fallback_models=["gpt-4-all"], concurrency=2)
    assert s1.ok == 6
    before = _requests(server)
    s2 = _run(manifest, tmp_path / "night2", server, fallback_models=["gpt-4-all"], reuse=(str(tmp_path / "night1"),))
    assert (s2.ok, s2.reused, _requests(server) - before) == (6, 6, 0)
    for r in _results(tmp_path / "night2"):
        tried = ["gpt-4o-all", "gpt-4-all"]
        assert (r["model"], r["models_tried"], r["reused_from"]) == ("gpt-4-all", tried, s1.run_id)
        assert r["answer"] == answer_for("gpt-4-all", f"{r['file_url']} {r['question']}")


def test_the_budget_before_the_start_leaves_out_repeats_and_rows_with_an_answer_to_reuse(
    tmp_path: Path, sim: Any
) -> None:
    from pipeline.budget import estimate_rows
    from pipeline.incremental import reuse_index
    from pipeline.manifest import Manifest

    server = sim(latency_s=0.0)
    names = [f"b{i}.pdf" for i in range(40)]
    _run(write_csv(tmp_path / "n1.csv", _docs(server, names)), tmp_path / "night1", server, **PRICES)
    paid = sum(r["cost_usd"] for r in _results(tmp_path / "night1")) / len(names)  # a request's real cost
    # night 2: each old row twice (40 repeats), and 10 new rows
    new = _docs(server, [f"new{i}.pdf" for i in range(10)])
    night2 = write_csv(tmp_path / "n2.csv", _docs(server, names) * 2 + new)
    cfg = load_config(manifest=str(night2), reuse=(str(tmp_path / "night1"),), **PRICES, env={})
    est = estimate_rows(Manifest(str(night2), cfg), None, cfg, reuse_index(cfg))
    assert (est.rows, est.repeats, est.reusable, est.requests) == (90, 40, 40, 10)
    every = est.min_cost_usd / est.requests * 90  # type: ignore[operator]  # the old count: every row
    assert every > 10 * paid * 1.2 > est.min_cost_usd  # type: ignore[operator]

    # a budget the old count refused: starts, reuses the 40 (80 rows), asks the 10 new rows
    before = _requests(server)
    s2 = _run(night2, tmp_path / "night2", server, reuse=(str(tmp_path / "night1"),), max_cost=10 * paid * 1.2,
              **PRICES)  # fmt: skip
    assert (s2.exit_code, s2.reused, _requests(server) - before) == (0, 80, 10)  # repeats ride on reused rows

    # every document changed: the candidates are asked after all, and the guard during the run stops them
    server.files(change=names)
    before = _requests(server)
    s3 = _run(night2, tmp_path / "night3", server, reuse=(str(tmp_path / "night1"),), max_cost=20 * paid,
              concurrency=2, **PRICES)  # fmt: skip
    spent = _requests(server) - before
    assert s3.exit_code == 3 and "max-cost" in (s3.reason or "") and s3.reused == 0 and 10 <= spent < 50
    # a budget below even the rows certainly sent is refused, naming what was left out
    with pytest.raises(UsageError, match="not counted: 40 repeated rows, 40 rows with an answer to reuse"):
        _run(night2, tmp_path / "night4", server, reuse=(str(tmp_path / "night1"),),
             max_cost=est.min_cost_usd * 0.5, **PRICES)  # type: ignore[operator]  # fmt: skip
    # the Ray engine refuses by the same rule, with the same counts, before Ray starts
    with pytest.raises(UsageError, match="not counted: 40 repeated rows, 40 rows with an answer to reuse"):
        _run(night2, tmp_path / "night5", server, reuse=(str(tmp_path / "night1"),), engine="ray",
             max_cost=est.min_cost_usd * 0.5, **PRICES)  # type: ignore[operator]  # fmt: skip
    assert _requests(server) == before + spent  # neither refusal sent anything


def test_a_night_that_reuses_and_parses_answers_never_imports_pandas(tmp_path: Path, sim: Any) -> None:
    """pyarrow imports pandas (+45 MB, 0.4 s) for ``to_numpy()`` and for a Python value given
    to a kernel; reading the reuse index did both, so a reusing night paid it (issue 12's
    memory target). Both nights run in a child interpreter that never imported pandas."""
    server = sim(latency_s=0.005, response_format="accept")
    manifest = write_csv(tmp_path / "m.csv", _docs(server, [f"d{i}.pdf" for i in range(40)]))
    schema = ROOT / "pipeline/sample_inputs/invoices.schema.json"
    code = f"""
import sys
from pipeline import run
kw = dict(manifest={str(manifest)!r}, base_url={server.url!r}, api_key={TEST_KEY!r}, progress="none",
          schema={str(schema)!r})
first = run(out={str(tmp_path / "n1")!r}, **kw)
second = run(out={str(tmp_path / "n2")!r}, reuse=({str(tmp_path / "n1")!r},), **kw)
print(first.ok, second.ok, second.reused, sorted(m for m in sys.modules if m.split(".")[0] == "pandas"))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["40", "40", "40", "[]"]
    assert _requests(server) == 40  # night 2 asked nothing
