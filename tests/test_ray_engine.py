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

from pipeline.errors import UsageError
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
    # the Ray engine does not HEAD documents (README: Ray and object storage)
    "doc_etag",
    "doc_last_modified",
    "doc_bytes",
}


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
    keep = [n for n in table.column_names if n not in RUN_COLUMNS]
    assert mine.select(keep).to_pylist() == table.select(keep).to_pylist()

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
    # --ray-actors not set: one actor on this one-node Ray
    summary = run(fast_config(manifest, tmp_path / "out", server, engine="ray", concurrency=8))
    assert (summary.exit_code, summary.ok, summary.failed, summary.pending) == (3, 0, 0, 200)
    assert json.loads((tmp_path / "out" / "_run.json").read_text())["engine"]["actors"] == 1
    assert "key" in (summary.reason or "")
    assert server.stats()["requests"] < 200  # stopped dispatching, not one 401 per row


def test_what_the_actors_do_not_do_yet_is_refused_not_ignored(local_ray: None, sim: Any, tmp_path: Path) -> None:
    # a per-row model column would otherwise be asked of the run's model: exit 2 before any request
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist([{**r, "model": "gpt-4-all"} for r in make_rows(5)]), manifest)
    server = sim()
    with pytest.raises(UsageError, match=r"--engine ray does not support the manifest's per-row model column 'model'"):
        run(fast_config(manifest, tmp_path / "out", server, engine="ray", ray_actors=1))
    assert server.stats()["requests"] == 0


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
    items = [{**r, "category": "x", "status": "draft"} for r in make_rows(12)]
    ds = ray.data.from_items(items)
    answered = pipeline.ray.answer(ds, base_url=server.url, api_key="sk-test-0123456789abcdef", concurrency=8,
                                   ray_actors=1, rpm=300, backoff_initial=0, backoff_max=0)  # fmt: skip
    got = sorted(answered.take_all(), key=lambda r: r["file_url"])
    stats = server.stats()
    assert len(got) == 12 and stats["requests"] == 12
    assert stats["max_in_flight"] == 1 and stats["outcomes"].get("rpm_429", 0) == 0
    for r in got:
        assert r["status"] == "ok" and r["answer"] == answer_for(MODEL, f"{r['file_url']} {r['question']}")
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
