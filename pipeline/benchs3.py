"""``docpipe bench --scenario ray-s3``: issue 13's demonstration, end to end.

A Parquet manifest of ``rows`` rows at ``s3://`` goes through the real CLI,
``docpipe run s3://... --out s3://... --engine ray --concurrency C --rpm R``, in its
own process, against a real S3 endpoint (moto in server mode on 127.0.0.1, from the
``test`` extra) and the simulator in its own process. Then:

- every row of ``results.parquet``, read back from the bucket, is checked against the
  manifest: in manifest order, ``status == "ok"``, and its answer is the simulator's
  deterministic answer for that row (:func:`pipeline.simulator.answers.answer_for`);
  no request_id twice, none missing;
- the gateway's own counts: requests (one per row: nothing sent twice), answers
  delivered twice (``duplicate_ok``), the most requests in flight at once, and the
  most requests that arrived in any sliding 60 s window (``max_per_minute``,
  exact: kept from every arrival, not a per-second timeline).

The client runs four sender actors (``--ray-actors 4``, a cluster's default), so the
limits are split between them, which is what the gateway's counts check. The simulator
answers after ``latency`` seconds (6 s by default): at 600 requests a
minute that keeps about 60 in flight, so both limits are near binding at once. The
run takes ``rows / rpm`` minutes (10 000 at 600/min: ~17 min), so ``--scenario all``
leaves it out (:data:`pipeline.bench.NOT_IN_ALL`); name it to run it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import bench as b
from .config import DEFAULT_MODEL
from .errors import UsageError

#: The standard AWS variables; a child gets only the endpoint's (no profile or real key leaks in).
AWS_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION",
            "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")  # fmt: skip
_BUCKET = "docpipe-bench"


@dataclass(frozen=True)
class S3Endpoint:
    """A running S3 endpoint: its URL, a boto3 client, and the AWS variables that reach it."""

    url: str
    client: Any
    env: dict[str, str]


@contextlib.contextmanager
def moto_server() -> Iterator[S3Endpoint]:
    """moto's S3 in server mode on 127.0.0.1 at a free port, for as long as the block runs.
    Touches no environment variable: a process that should reach it gets ``env``."""
    try:
        import boto3
        from moto.server import ThreadedMotoServer
    except ImportError as e:
        raise UsageError(f"a local S3 endpoint needs moto[server] and boto3 (pip install -e '.[test]'): {e}") from e
    # its web server logs every request to stderr (werkzeug's logger): quiet while it runs
    access_log = logging.getLogger("werkzeug")
    level = access_log.level
    access_log.setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        _host, port = server.get_host_and_port()
        url = f"http://127.0.0.1:{port}"
        env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": url}  # fmt: skip
        client = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                       region_name="us-east-1").client("s3", endpoint_url=url)  # fmt: skip
        yield S3Endpoint(url, client, env)
    finally:
        server.stop()
        access_log.setLevel(level)


@dataclass(frozen=True)
class RayS3Spec:
    """One ray-s3 run: the issue's figures by default."""

    rows: int = 10_000
    concurrency: int = 64
    rpm: int = 600
    latency: float = 6.0
    ray_address: str | None = None  # None: the client starts a local Ray
    # the limits split between four actors, as on a cluster (a local Ray's default is one)
    ray_actors: int | None = 4  # None: the client's default


@dataclass(frozen=True)
class Verified:
    """``results.parquet`` against the manifest, row by row."""

    rows: int  # result rows
    ok: int  # rows in manifest order, status ok, with the simulator's answer for that row
    duplicates: int  # result rows beyond the first of each request_id
    first_bad: str  # the first row that failed the check, for the report


def verify(table: Any, files: str, rows: int, model: str = DEFAULT_MODEL) -> Verified:
    """Check ``table`` (the results) row by row against :func:`~pipeline.bench.write_manifest`'s rows."""
    from .simulator.answers import answer_for

    got = table.select(["request_id", "file_url", "question", "status", "answer"]).to_pylist()
    ok, first_bad = 0, ""
    for i, r in enumerate(got[:rows]):
        url, question = f"{files}/bench/{i}.pdf", f"What is the total of item {i}?"
        good = (r["file_url"], r["question"], r["status"]) == (url, question, "ok") and r["answer"] == answer_for(
            model, f"{url} {question}"
        )
        ok += good
        if not good and not first_bad:
            first_bad = f"row {i}: {r['file_url']} status={r['status']}"
    duplicates = len(got) - len({r["request_id"] for r in got})
    return Verified(len(got), ok, duplicates, first_bad)


def _client_env(s3: S3Endpoint) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in AWS_VARS and not k.startswith(("APICORE_", "OPENAI_"))}
    return {**env, **s3.env}


def measure_ray_s3(work: Path, spec: RayS3Spec | None = None, *, echo: Callable[[str], None] | None = None
                   ) -> b.ScenarioResult:  # fmt: skip
    """Run the demonstration once; see the module docstring."""
    import pyarrow.parquet as pq

    spec = spec or RayS3Spec()
    work.mkdir(parents=True, exist_ok=True)
    manifest = work / "manifest.parquet"
    sim_spec = b.RunSpec(rows=spec.rows, latency=spec.latency, concurrency=spec.concurrency)
    with moto_server() as s3, b.simulator(sim_spec, work / "sim.log") as sim:
        s3.client.create_bucket(Bucket=_BUCKET)
        files = sim.root + "/files"
        b.write_manifest(manifest, spec.rows, files=files)
        s3.client.upload_file(str(manifest), _BUCKET, "in/manifest.parquet")
        cmd = [sys.executable, "-m", "pipeline.cli", "run", f"s3://{_BUCKET}/in/manifest.parquet",
               "--out", f"s3://{_BUCKET}/out", "--base-url", sim.url, "--api-key", "bench", "--engine", "ray",
               "--concurrency", str(spec.concurrency), "--rpm", str(spec.rpm), "--no-doc-meta", "--quiet",
               "--cache-dir", str(work / "cache")]  # fmt: skip
        if spec.ray_address:
            cmd += ["--ray-address", spec.ray_address]
        if spec.ray_actors:
            cmd += ["--ray-actors", str(spec.ray_actors)]
        if echo:
            echo(f"bench: {b.RAY_S3_SCENARIO}: {spec.rows} rows s3:// -> s3://, --engine ray --concurrency "
                 f"{spec.concurrency} --rpm {spec.rpm}, answers in {spec.latency:g} s "
                 f"(~{spec.rows / spec.rpm:.0f} min) ...")  # fmt: skip
        sim_t0 = sim.reset()
        client = b.run_client(cmd, work / "client.err", env=_client_env(s3))
        stats = sim.stats()
        try:
            body = s3.client.get_object(Bucket=_BUCKET, Key="out/results.parquet")["Body"].read()
            table = pq.read_table(io.BytesIO(body))
        except Exception as e:  # no results: every row check fails below, with the client's stderr
            table = None
            (work / "results.err").write_text(f"{type(e).__name__}: {e}\n")
    checked = verify(table, files, spec.rows) if table is not None else Verified(0, 0, 0, "no results.parquet")
    times: list[float] = stats.get("request_times") or []
    first = round(sim_t0 + times[0] - client.spawned, 3) if times else None
    return b.ScenarioResult(b.RAY_S3_SCENARIO, {}, _checks(spec, client.code, client.wall, first, stats, checked))


def _checks(spec: RayS3Spec, code: int, wall: float, first: float | None, stats: dict[str, Any],
            checked: Verified) -> list[b.Check]:  # fmt: skip
    times: list[float] = stats.get("request_times") or []
    span = times[-1] - times[0] if len(times) > 1 else 0.0
    per_minute = round((len(times) - 1) / span * 60, 1) if span else 0.0
    return [
        b.at_most("client exit code", code, 0),
        b.at_least("rows verified (ok, the simulator's answer, manifest order)", checked.ok, spec.rows,
                   checked.first_bad),
        b.Check("result rows", checked.rows, f"= {spec.rows}", checked.rows == spec.rows),
        b.at_most("duplicate rows in results", checked.duplicates, 0),
        b.at_most("answers the gateway delivered twice", stats.get("duplicate_ok", 0), 0),
        b.Check("gateway requests", stats.get("requests", 0), f"= {spec.rows}", stats.get("requests") == spec.rows),
        b.at_most("gateway max in flight", stats.get("max_in_flight"), spec.concurrency),
        b.at_most("gateway max requests in any 60 s", stats.get("max_per_minute"), spec.rpm),
        b.Check("requests per minute, first to last", per_minute, "", True),
        b.Check("wall s (spawn to exit)", round(wall, 1), "", True),
        b.Check("first request s from spawn", first if first is not None else float("nan"), "", True),
    ]  # fmt: skip
