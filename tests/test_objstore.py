"""Manifests, outputs and documents in object storage, against a real S3 endpoint (moto
server mode on 127.0.0.1) and the simulator; the asyncio engine (the Ray engine has its own file)."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.runner import run
from pipeline.simulator.answers import answer_for
from tests.conftest import ROOT, cli, fast_config, make_rows
from tests.s3server import S3, s3_server  # noqa: F401  (the session fixture `s3`)


def put_parquet(s3: S3, bucket: str, key: str, rows: list[dict[str, Any]]) -> str:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    s3.client.put_object(Bucket=bucket, Key=key, Body=sink.getvalue())
    return f"s3://{bucket}/{key}"


def get_table(s3: S3, bucket: str, key: str) -> pa.Table:
    body = s3.client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return pq.read_table(io.BytesIO(body))


def test_s3_manifest_to_s3_out_and_a_rerun_on_a_new_machine_resumes_from_the_bucket(
    s3: S3, sim: Any, tmp_path: Path
) -> None:
    bucket = s3.bucket()
    rows = make_rows(40)
    manifest = put_parquet(s3, bucket, "in/manifest.parquet", rows)
    server = sim()
    out = f"s3://{bucket}/runs/night"
    summary = run(fast_config(manifest, out, server,
                              cache_dir=str(tmp_path / "cache-a")))  # fmt: skip
    assert (summary.exit_code, summary.ok, summary.out) == (0, 40, out)
    assert summary.results_file == f"{out}/results.parquet"
    assert s3.keys(bucket, "runs/") == ["runs/night/_report.html", "runs/night/_run.json", "runs/night/results.parquet"]
    table = get_table(s3, bucket, "runs/night/results.parquet").to_pylist()
    assert [r["file_url"] for r in table] == [r["file_url"] for r in rows]
    for r in table:
        assert r["status"] == "ok"
        assert r["answer"] == answer_for("gpt-4o-all", f"{r['file_url']} {r['question']}")
    info = json.loads(s3.client.get_object(Bucket=bucket, Key="runs/night/_run.json")["Body"].read())
    assert (info["out"], info["manifest"], info["settings"]["out"]) == (out, manifest, out)
    assert info["local_journal"].startswith(str(tmp_path / "cache-a"))

    # another machine: an empty cache; the bucket's results seed its journal, nothing is sent again
    sent = server.stats()["requests"]
    again = run(fast_config(manifest, out, server,
                            cache_dir=str(tmp_path / "cache-b")))  # fmt: skip
    assert (again.exit_code, again.ok, again.sent_this_run) == (0, 40, 0)
    assert server.stats()["requests"] == sent
    assert get_table(s3, bucket, "runs/night/results.parquet").column("answer").to_pylist() == [
        r["answer"] for r in table
    ]


def test_summary_diff_and_validate_read_s3_outs(s3: S3, sim: Any, tmp_path: Path) -> None:
    bucket = s3.bucket()
    manifest = put_parquet(s3, bucket, "m.parquet", make_rows(12))
    server = sim()
    out = f"s3://{bucket}/out"
    run(fast_config(manifest, out, server, cache_dir=str(tmp_path / "c")))
    done = cli("summary", out, "--json", env={**s3.env, "DOCPIPE_CACHE_DIR": str(tmp_path / "c")})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rows"] == 12
    runner = CliRunner()
    diffed = runner.invoke(main, ["diff", out, out, "--json"], env={"DOCPIPE_CACHE_DIR": str(tmp_path / "c")})
    assert diffed.exit_code == 0, diffed.output
    report = json.loads(diffed.output)
    assert (report["common"], report["changed"]) == (12, 0)
    checked = runner.invoke(main, ["validate", manifest, "--out", out, "--cache-dir", str(tmp_path / "c"), "--json"])
    assert checked.exit_code == 0, checked.output
    assert json.loads(checked.output)["done"] == 12


def test_s3_documents_reach_the_gateway_presigned_and_the_url_fetches_the_object(
    s3: S3, sim: Any, tmp_path: Path
) -> None:
    bucket = s3.bucket()
    docs = {f"private/{i}.pdf": f"%PDF-1.4 document {i}".encode() for i in range(6)}
    for key, body in docs.items():
        s3.client.put_object(Bucket=bucket, Key=key, Body=body)
    rows = [{"file_url": f"s3://{bucket}/{key}", "question": "What is inside?"} for key in docs]
    manifest = put_parquet(s3, bucket, "m.parquet", rows)
    server = sim(record_bodies=True)
    out = tmp_path / "out"
    summary = run(fast_config(manifest, out, server, presign_ttl="15m",
                              cache_dir=str(tmp_path / "c")))  # fmt: skip
    assert (summary.exit_code, summary.ok) == (0, 6)
    sent = {b["messages"][-1]["content"]: b for b in server.bodies()}
    assert len(sent) == 6
    by_doc: dict[str, str] = {}
    for content in sent:
        url, _, question = content.partition(" ")
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        assert url.startswith(f"{s3.endpoint}/{bucket}/private/")  # the endpoint's own scheme (http here)
        assert query["X-Amz-Expires"] == ["900"] and query["X-Amz-Signature"][0]
        key = parts.path.split(f"/{bucket}/", 1)[1]
        with urllib.request.urlopen(url, timeout=10) as resp:  # the presigned URL opens the object
            assert resp.read() == docs[key]
        by_doc[f"s3://{bucket}/{key}"] = content
        assert question == "What is inside?"
    results = pq.read_table(out / "results.parquet").to_pylist()
    for r in results:
        assert r["file_url"].startswith("s3://")
        assert r["answer"] == answer_for("gpt-4o-all", by_doc[r["file_url"]])
    signatures = [parse_qs(urlsplit(c.partition(" ")[0]).query)["X-Amz-Signature"][0].encode() for c in sent]
    for path in (out / "results.parquet", out / "_run.json"):  # (_run.json names the parameter in ignore_query)
        data = path.read_bytes()
        assert b"X-Amz-Signature=" not in data and not any(sig in data for sig in signatures)


def test_an_error_that_echoes_the_presigned_url_carries_the_s3_url_instead(s3: S3) -> None:
    # some proxies answer 400 with the request in the message: the signature must not reach the row
    from aiohttp import web

    from pipeline.config import load_config
    from pipeline.errors import RequestError
    from pipeline.presign import PresigningClient
    from pipeline.records import Row

    async def echo(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"error": {"message": f"cannot fetch {body['messages'][-1]['content']}"}}, status=400)

    async def scenario() -> RequestError:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", echo)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        cfg = load_config(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-test-0123456789abcdef")
        url = f"s3://{bucket}/secret/report.pdf"
        row = Row(index=0, request_id="r1", file_url=url, question="q", content=f"{url} q")
        try:
            async with PresigningClient(cfg) as client:
                await client.complete(row)
        except RequestError as e:
            return e
        finally:
            await runner.cleanup()
        raise AssertionError("the gateway's 400 did not raise")

    bucket = s3.bucket()
    error = asyncio.run(scenario())
    assert error.http_status == 400
    assert f"s3://{bucket}/secret/report.pdf" in error.message
    assert "Signature" not in str(error) and "X-Amz" not in str(error)


@pytest.mark.parametrize("url", ["s3://bucket", "s3://bucket/", "s3:///key"])
def test_an_s3_url_without_a_key_is_an_invalid_row(url: str, tmp_path: Path) -> None:
    from pipeline.manifest import _invalid

    assert _invalid(url, "q") == f"file_url is not an s3://bucket/key URL: {url!r}"


def test_importing_docpipe_and_running_the_asyncio_engine_imports_neither_ray_nor_boto3(tmp_path: Path) -> None:
    code = (
        "import sys, pipeline, pipeline.cli, pipeline.runner, pipeline.staging, pipeline.objstore, pipeline.presign, "
        "pipeline.rayengine, pipeline.rayengine.shares\n"
        "print(sorted(m for m in ('ray', 'boto3', 'botocore', 'moto') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_job_file_keeps_object_store_urls_and_resolves_its_cache_dir(tmp_path: Path) -> None:
    from pipeline.config import load_config

    job = tmp_path / "job.toml"
    job.write_text('manifest = "s3://bucket/in/m.parquet"\nout = "s3://bucket/out/night"\n'
                   '[storage]\ncache_dir = "cache"\npresign_ttl = "2h"\n')  # fmt: skip
    cfg = load_config(job, flags={"presign_ttl": "900"})
    assert (cfg.manifest, cfg.out) == ("s3://bucket/in/m.parquet", "s3://bucket/out/night")
    assert (cfg.cache_dir, cfg.presign_ttl) == (str((tmp_path / "cache").resolve()), 900.0)


def test_s3_documents_get_their_metadata_by_a_presigned_head_and_are_reused_until_they_change(
    s3: S3, sim: Any, tmp_path: Path
) -> None:
    bucket = s3.bucket()
    for i in range(6):
        s3.client.put_object(Bucket=bucket, Key=f"d/{i}.pdf", Body=f"%PDF-1.4 document {i}".encode())
    manifest = tmp_path / "m.csv"
    manifest.write_text("file_url,question\n" + "".join(f"s3://{bucket}/d/{i}.pdf,What is inside?\n" for i in range(6)))
    server = sim(latency_s=0.0)
    night1 = run(fast_config(manifest, tmp_path / "n1", server, doc_meta=True))
    rows = pq.read_table(tmp_path / "n1" / "results.parquet").to_pylist()
    etags = {s3.client.head_object(Bucket=bucket, Key=f"d/{i}.pdf")["ETag"] for i in range(6)}
    assert night1.ok == 6 and {r["doc_etag"] for r in rows} == etags  # the object's own ETag, via HEAD
    assert all(r["doc_bytes"] == len(f"%PDF-1.4 document {r['file_url'][-5]}") for r in rows)

    s3.client.put_object(Bucket=bucket, Key="d/0.pdf", Body=b"%PDF-1.4 a new version")  # one object changes
    before = server.stats()["requests"]
    night2 = run(fast_config(manifest, tmp_path / "n2", server, doc_meta=True, reuse=(str(tmp_path / "n1"),)))
    assert (night2.ok, night2.reused, server.stats()["requests"] - before) == (6, 5, 1)
    asked = [r["file_url"] for r in pq.read_table(tmp_path / "n2" / "results.parquet").to_pylist()
             if r["reused_from"] is None]  # fmt: skip
    assert asked == [f"s3://{bucket}/d/0.pdf"]
