"""The Ray Data engine with the real things: a local Ray (``ray.init(num_cpus=2)``, once for
this module: it takes seconds to start), moto's S3 server and the simulator.

Kept few and small: every test that runs a dataset starts its sender actors anew."""

from __future__ import annotations

import io
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.records import RunSummary
from pipeline.runner import run
from pipeline.simulator.answers import answer_for
from tests.conftest import fast_config, make_rows
from tests.s3server import S3, s3_server  # noqa: F401  (the session fixture `s3`)

ray = pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[test]' or '.[ray]')")

# one worker runs them all (one local Ray, pytest's --dist loadgroup); Ray's start-up and its
# actors' on a loaded 2-core machine can take a minute, beyond the suite's 120 s default
pytestmark = [pytest.mark.xdist_group("ray"), pytest.mark.timeout(300)]

MODEL = "gpt-4o-all"
#: columns that differ between two runs of the same rows (when, which run, how long)
RUN_COLUMNS = {
    "started_at",
    "completed_at",
    "latency_ms",
    "run_id",
    "response_id",
    "gateway_request_id",
}
#: the document columns: only HEADed with doc_meta on (off in fast_config: docs.example.com is not local)
DOC_COLUMNS = {"doc_etag", "doc_last_modified", "doc_bytes"}


@pytest.fixture(scope="session")
def local_ray(s3: S3) -> Iterator[None]:
    """A local Ray, started once (after the S3 variables are set, so actors see them): with
    pytest-xdist the module's tests may not run back to back, and a module fixture would
    start Ray again each time they resume."""
    for attempt in (1, 2):
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
            break
        except Exception:
            # Ray gives its raylet 30 s to register, hard-coded: a machine under a load of 20+ misses it
            ray.shutdown()
            if attempt == 2:
                raise
    try:
        yield
    finally:
        ray.shutdown()


def put_parquet(s3: S3, bucket: str, key: str, rows: list[dict[str, Any]]) -> str:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    s3.client.put_object(Bucket=bucket, Key=key, Body=sink.getvalue())
    return f"s3://{bucket}/{key}"


def s3_table(s3: S3, url: str) -> pa.Table:
    bucket, key = url.removeprefix("s3://").split("/", 1)
    return pq.read_table(io.BytesIO(s3.client.get_object(Bucket=bucket, Key=key)["Body"].read()))


def check_rows(table: pa.Table, rows: list[dict[str, Any]]) -> None:
    """One ok row per manifest row, in manifest order, each with its own answer."""
    got = table.to_pylist()
    assert [r["file_url"] for r in got] == [r["file_url"] for r in rows]
    assert len({r["request_id"] for r in got}) == len(rows)
    for r in got:
        assert r["status"] == "ok", r["error_message"]
        assert r["answer"] == answer_for(MODEL, f"{r['file_url']} {r['question']}")


def assert_same_table(asyncio_table: pa.Table, ray_table: pa.Table, ignore: frozenset[str] = frozenset()) -> None:
    """The two engines' results.parquet: the same columns and types, the same values but for
    the columns that differ between any two runs (and ``ignore``)."""
    assert asyncio_table.schema.names == ray_table.schema.names
    assert asyncio_table.schema.types == ray_table.schema.types
    keep = [n for n in ray_table.column_names if n not in RUN_COLUMNS | ignore]
    assert asyncio_table.select(keep).to_pylist() == ray_table.select(keep).to_pylist()


def test_s3_manifest_to_s3_out_on_ray_keeps_the_limits_and_writes_what_asyncio_writes(
    local_ray: None, s3: S3, sim: Any, tmp_path: Path
) -> None:
    bucket = s3.bucket()
    rows = [{**r, "category": f"c{i % 3}"} for i, r in enumerate(make_rows(400))]
    manifest = put_parquet(s3, bucket, "in/m.parquet", rows)
    # 400 rows never fill the simulator's 60 s window at any --rpm: what this checks is that the
    # actors' shares add up to at most the limit; a limit this high does not pace the test
    server = sim(latency_s=0.03, rpm=24000)
    out = f"s3://{bucket}/out/ray"
    cfg = fast_config(manifest, out, server, engine="ray", concurrency=8, ray_actors=2, rpm=24000,
                      cache_dir=str(tmp_path / "cache"))  # fmt: skip
    summary = run(cfg)
    assert (summary.exit_code, summary.ok, summary.out) == (0, 400, out)
    stats = server.stats()
    assert stats["requests"] == 400
    assert stats["max_in_flight"] <= 8
    assert stats["outcomes"].get("rpm_429", 0) == 0
    table = s3_table(s3, f"{out}/results.parquet")
    check_rows(table, rows)
    info = json.loads(s3.client.get_object(Bucket=bucket, Key="out/ray/_run.json")["Body"].read())
    actors = info["engine"]["actor_processes"]
    assert info["engine"]["actors"] == 2 and 1 <= len(actors) <= 2
    assert sum(a["concurrency"] for a in actors) <= 8 and sum(a["rpm"] + 1 for a in actors) <= 24000

    # the asyncio engine writes the same table for the same manifest
    plain = run(fast_config(manifest, tmp_path / "plain", server, concurrency=8,
                            cache_dir=str(tmp_path / "cache")))  # fmt: skip
    assert plain.ok == 400
    mine = pq.read_table(tmp_path / "plain" / "results.parquet")
    assert mine.schema.names == table.schema.names and mine.schema.types == table.schema.types
    assert_same_table(mine, table)

    # a rerun against the same s3:// out sends nothing
    again = run(cfg)
    assert (again.exit_code, again.ok, again.sent_this_run) == (0, 400, 0)
    assert server.stats()["requests"] == 800  # 400 each for the two engines, none for the rerun


def _board_actors(deadline: float) -> list[dict[str, Any]]:
    """The pids of the running job's sender actors (from its board), once one has joined."""
    while time.monotonic() < deadline:
        names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                 if a["name"].startswith("docpipe-board-")]  # fmt: skip
        if names:
            actors: list[dict[str, Any]] = ray.get(ray.get_actor(names[0]).actors.remote())
            if actors:
                return actors
        time.sleep(0.1)
    raise AssertionError("no sender actor joined the board")


def test_a_killed_sender_actor_loses_only_its_in_flight_rows(local_ray: None, sim: Any, tmp_path: Path) -> None:
    rows = make_rows(300)
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist(rows), manifest)
    server = sim(latency_s=0.15)
    # one actor (the cheapest to start): killing it kills every request in flight
    cfg = fast_config(manifest, tmp_path / "out", server, engine="ray", concurrency=8, ray_actors=1)
    done: list[RunSummary] = []
    job = threading.Thread(target=lambda: done.append(run(cfg)), daemon=True)
    job.start()
    deadline = time.monotonic() + 120
    actors = _board_actors(deadline)
    while server.stats()["ok_requests"] < 40 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.stats()["ok_requests"] < 300, "the job ended before the kill"
    os.kill(actors[0]["pid"], signal.SIGKILL)
    job.join(timeout=180)
    assert done, "the job did not end"
    summary = done[0]
    if summary.exit_code != 0:  # Ray could not finish it: the rerun does
        summary = run(cfg)
    assert (summary.exit_code, summary.ok, summary.failed) == (0, 300, 0)
    check_rows(pq.read_table(tmp_path / "out" / "results.parquet"), rows)
    # the killed actor's rows were sent again, and only those: its running tasks' blocks
    from pipeline.rayengine.dataset import ACTOR_TASKS, block_rows

    assert 300 <= server.stats()["requests"] <= 300 + ACTOR_TASKS * block_rows(cfg)


def test_a_bad_key_stops_the_whole_job_and_the_rows_stay_pending(local_ray: None, sim: Any, tmp_path: Path) -> None:
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist(make_rows(200)), manifest)
    server = sim(api_key="sk-the-right-key-0000")
    # --ray-actors not set: two actors on this one-node Ray
    summary = run(fast_config(manifest, tmp_path / "out", server, engine="ray", concurrency=8))
    assert (summary.exit_code, summary.ok, summary.failed, summary.pending) == (3, 0, 0, 200)
    assert json.loads((tmp_path / "out" / "_run.json").read_text())["engine"]["actors"] == 2
    assert "key" in (summary.reason or "")
    assert server.stats()["requests"] < 200  # stopped dispatching, not one 401 per row


def test_max_runtime_stops_a_ray_job_and_leaves_the_rest_pending(local_ray: None, sim: Any, tmp_path: Path) -> None:
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist(make_rows(300)), manifest)
    server = sim(latency_s=0.2)
    summary = run(fast_config(manifest, tmp_path / "out", server, engine="ray", concurrency=2, ray_actors=1,
                              max_runtime=2))  # fmt: skip
    assert "max runtime 2 s reached" in (summary.reason or "")
    assert summary.pending > 0 and summary.ok + summary.pending == 300 and summary.failed == 0


def test_answer_on_a_dataset_gives_every_row_its_outcome_columns_within_the_rpm_share(
    local_ray: None, sim: Any
) -> None:
    import pipeline.ray

    # --rpm 300 on one actor: one request every 0.2 s; answers take 0.02 s, so paced requests
    # never overlap and the gateway sees 1 in flight although --concurrency allows 8
    server = sim(latency_s=0.02, latency_jitter=0.0, rpm=300)
    # a model column: its rows ask their own model, as a manifest's do
    items = [{**r, "category": "x", "status": "draft", "model": "gpt-4-all" if i % 2 else ""}
             for i, r in enumerate(make_rows(12))]  # fmt: skip
    ds = ray.data.from_items(items)
    answered = pipeline.ray.answer(ds, base_url=server.url, api_key="sk-test-0123456789abcdef", concurrency=8,
                                   ray_actors=1, rpm=300, backoff_initial=0, backoff_max=0,
                                   doc_meta=False)  # fmt: skip
    got = sorted(answered.take_all(), key=lambda r: r["file_url"])
    stats = server.stats()
    assert len(got) == 12 and stats["requests"] == 12
    assert stats["max_in_flight"] == 1 and stats["outcomes"].get("rpm_429", 0) == 0
    for r in got:
        model = r["input_model"] or MODEL
        assert r["status"] == "ok" and r["answer"] == answer_for(model, f"{r['file_url']} {r['question']}")
        assert r["model"] == model and r["models_tried"] == [model]
        assert r["input_status"] == "draft" and r["category"] == "x"  # a passthrough named like an output column
    assert list(got[0])[:3] == ["request_id", "file_url", "question"]


def test_bench_ray_s3_runs_the_cli_s3_to_s3_and_verifies_every_row(local_ray: None, tmp_path: Path) -> None:
    from pipeline.bench import scenario_line
    from pipeline.benchs3 import RayS3Spec, measure_ray_s3

    # the demonstration, small: the real CLI in its own process joins this session's Ray
    # (one sender actor, the default on one node: the split between actors is tested above)
    spec = RayS3Spec(rows=60, concurrency=8, rpm=6000, latency=0.2, ray_actors=None,
                     ray_address=ray.get_runtime_context().gcs_address)  # fmt: skip
    res = measure_ray_s3(tmp_path, spec)
    got = {c.name: c.value for c in res.checks}
    assert res.passed, f"{scenario_line(res)}\n{(tmp_path / 'client.err').read_text()}"
    assert got["rows verified (ok, the simulator's answer, manifest order)"] == 60 and got["result rows"] == 60
    assert got["gateway requests"] == 60 and got["duplicate rows in results"] == 0
    assert 1 <= got["gateway max in flight"] <= 8
    assert got["gateway max requests in any 60 s"] == 60  # 60 rows at 8 in flight, 0.2 s each: one minute


def test_per_row_models_with_a_no_channel_model_and_a_fallback_on_ray_write_the_asyncio_table(
    local_ray: None, sim: Any, tmp_path: Path
) -> None:
    no_channel, works = "gpt-4o-all", "gpt-4-all"
    server = sim(no_channel_models=(no_channel,), record_bodies=True)
    rows = [{**r, "model": [no_channel, works, ""][i % 3]} for i, r in enumerate(make_rows(12))]
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist(rows), manifest)
    cfg = fast_config(manifest, tmp_path / "ray", server, engine="ray", ray_actors=2, concurrency=4, model="gpt-4o",
                      fallback_models=[works])  # fmt: skip
    summary = run(cfg)
    assert (summary.exit_code, summary.ok, summary.failed) == (0, 12, 0)
    table = pq.read_table(tmp_path / "ray" / "results.parquet")
    for row, got in zip(rows, table.to_pylist(), strict=True):
        want = works if row["model"] == no_channel else row["model"] or "gpt-4o"
        assert (got["model"], got["input_model"]) == (want, row["model"])
        assert got["answer"] == answer_for(want, f"{row['file_url']} {row['question']}")
        assert got["models_tried"] == ([no_channel, works] if row["model"] == no_channel else [want])
    asked = [b["model"] for b in server.bodies()]
    assert asked.count(works) == 8 and asked.count("gpt-4o") == 4
    # each of the 2 actors gives the model up after 3 no-channel answers at most, plus its rows on the wire
    assert 3 <= asked.count(no_channel) <= 2 * (3 + 2)
    models = json.loads((tmp_path / "ray" / "_run.json").read_text())["models"]
    assert "无可用渠道" in models[no_channel]["unserved"] and models[works] == {
        "answered": 8, "unserved": None, "breaker_opened": 0}  # fmt: skip
    assert models["gpt-4o"]["answered"] == 4

    server.reset()
    plain = run(cfg.replace(engine="asyncio", out=str(tmp_path / "asyncio")))
    assert (plain.ok, plain.failed) == (12, 0)
    # attempts: how many no-channel answers a row met before its model was known unserved is timing
    assert_same_table(pq.read_table(tmp_path / "asyncio" / "results.parquet"), table, frozenset({"attempts"}))


def test_a_form_column_and_embed_on_ray_send_the_asyncio_bodies_and_write_its_table(
    local_ray: None, sim: Any, tmp_path: Path
) -> None:
    import base64

    from pipeline.simulator import file_bytes

    server = sim(record_bodies=True)
    docs = [("scan.png", 300, ""), ("report.pdf", 700, "file"), ("huge.pdf", 1001, ""), ("notes.pdf", 50, "inline"),
            ("other.pdf", 60, "pdf")]  # fmt: skip
    rows = [{"file_url": f"{server.root_url}/files/{name}?bytes={size}", "question": f"What is on page {i}?",
             "form": form} for i, (name, size, form) in enumerate(docs)]  # fmt: skip
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist(rows), manifest)
    kw = {"form": "auto", "embed": True, "embed_max_bytes": 1000, "doc_meta": True}
    bodies = {}
    for engine in ("ray", "asyncio"):
        server.reset()
        extra = {"ray_actors": 1} if engine == "ray" else {}
        summary = run(fast_config(manifest, tmp_path / engine, server, engine=engine, **kw, **extra))
        assert (summary.ok, summary.failed) == (3, 2)
        bodies[engine] = sorted(json.dumps(b, sort_keys=True) for b in server.bodies())

    def data(i: int, ctype: str) -> str:
        name, size, _ = docs[i]
        return f"data:{ctype};base64," + base64.b64encode(file_bytes(name, size)).decode()

    def body(content: Any) -> str:
        return json.dumps({"model": MODEL, "stream": False, "messages": [{"role": "user", "content": content}]},
                          sort_keys=True)  # fmt: skip

    assert bodies["ray"] == bodies["asyncio"] == sorted([
        body([{"type": "text", "text": "What is on page 0?"},
              {"type": "image_url", "image_url": {"url": data(0, "image/png")}}]),
        body([{"type": "text", "text": "What is on page 1?"},
              {"type": "file", "file": {"filename": "report.pdf", "file_data": data(1, "application/pdf")}}]),
        body(f"{rows[3]['file_url']} What is on page 3?"),  # an inline row is not fetched
    ])  # fmt: skip
    ray_table = pq.read_table(tmp_path / "ray" / "results.parquet")
    assert_same_table(pq.read_table(tmp_path / "asyncio" / "results.parquet"), ray_table)
    got = ray_table.to_pylist()
    assert got[2]["error_type"] == "invalid_input" and "it has 1001 bytes" in got[2]["error_message"]
    assert "form 'pdf' is not one of" in got[4]["error_message"]
    # the actors HEADed the documents of the rows sent (compared above: the asyncio engine's columns)
    assert [bool(r["doc_etag"] and r["doc_bytes"]) for r in got] == [True, True, True, True, False]
    info = json.loads((tmp_path / "ray" / "_run.json").read_text())
    assert (info["embedded_documents"], info["embedded_bytes"]) == (2, 1000)


def test_reuse_on_ray_sends_only_the_changed_rows_and_writes_the_asyncio_engines_night_two(
    local_ray: None, sim: Any, tmp_path: Path
) -> None:
    server = sim(latency_s=0.005)
    names = [f"d{i}.pdf" for i in range(30)]

    def manifest(name: str, docs: list[str]) -> Path:
        path = tmp_path / name
        rows = [{"file_url": f"{server.files_url}/{n}", "question": "What is the total?"} for n in docs]
        pq.write_table(pa.Table.from_pylist(rows), path)
        return path

    night1 = run(fast_config(manifest("n1.parquet", names), tmp_path / "night1", server, doc_meta=True))
    assert (night1.ok, server.stats()["requests"], server.files()["heads"]) == (30, 30, 30)

    changed = names[::10]
    server.files(change=changed, reset=True)
    night2 = manifest("n2.parquet", [*names, "new0.pdf", "new1.pdf", "new0.pdf"])  # a repeat: sent once
    before = server.stats()["requests"]
    reuse = {"reuse": (str(tmp_path / "night1"),), "doc_meta": True}
    s2 = run(fast_config(night2, tmp_path / "ray2", server, engine="ray", ray_actors=1, **reuse))
    assert server.stats()["requests"] - before == len(changed) + 2
    assert (s2.ok, s2.reused, s2.requests) == (33, 30 - len(changed), len(changed) + 2)
    assert server.files()["heads"] == 32  # one per document: the driver's for the candidates, the actors' for new

    plain = run(fast_config(night2, tmp_path / "asyncio2", server, **reuse))
    assert (plain.ok, plain.reused) == (33, s2.reused)
    ray_table = pq.read_table(tmp_path / "ray2" / "results.parquet")
    assert_same_table(pq.read_table(tmp_path / "asyncio2" / "results.parquet"), ray_table)
    asked = {r["file_url"] for r in ray_table.to_pylist() if r["reused_from"] is None}
    assert asked == {f"{server.files_url}/{n}" for n in [*changed, "new0.pdf", "new1.pdf"]}


def test_a_models_breaker_giving_up_on_one_actor_stops_the_whole_ray_job(
    local_ray: None, sim: Any, tmp_path: Path
) -> None:
    # every gpt-4-all row fails with a 500 (its model's breaker), the run's model answers: the
    # breaker of gpt-4-all gives up on the actor that met it, and the job stops on both actors
    server = sim(latency_s=0.1)
    rows = [{**r, "model": "gpt-4-all", "question": r["question"] + " [[sim:status=500]]"} if i % 2 else r
            for i, r in enumerate(make_rows(400))]  # fmt: skip
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist([{"model": "", **r} for r in rows]), manifest)
    summary = run(fast_config(manifest, tmp_path / "out", server, engine="ray", ray_actors=2, concurrency=8,
                              breaker_threshold=6, breaker_probes=2, breaker_pause=0.2, grace_period=1))  # fmt: skip
    assert summary.exit_code == 3 and "kept failing" in (summary.reason or "")
    got = pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()
    # the run's model's rows stopped too (pending, not failed), on every actor
    assert summary.ok < 200 and summary.failed < 200 and summary.pending > 200
    assert all(r["status"] == "ok" for r in got if r["input_model"] == "" and r["status"] is not None)
    assert server.stats()["requests"] < 400
