"""docpipe validate: no chat request, exact row numbers, estimates that match what a run costs."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from pipeline import run
from pipeline.validate import classify_content_type, signed_link_expiry, validate

from .conftest import cli, fast_config, make_rows, write_csv

PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


def test_prompt_token_estimate_is_within_ten_percent_of_what_the_simulator_counts(tmp_path: Path, sim) -> None:
    rows = make_rows(1000)
    for i, r in enumerate(rows):  # questions of varied length and script, as in real manifests
        r["question"] = r["question"] + " Explain briefly." * (i % 7) + " 总额是多少？" * (i % 3)
    manifest = write_csv(tmp_path / "m.csv", rows)
    server = sim(latency_s=0.0)
    cfg = fast_config(manifest, tmp_path / "out", server, concurrency=64, price_prompt_per_1m=2.5,
                      price_per_request=0.001)  # fmt: skip

    report = validate(cfg)
    assert server.stats()["requests"] == 0
    assert (report.rows, report.requests, report.bad_rows, report.done) == (1000, 1000, 0, 0)

    run(cfg)
    sent = server.stats()["prompt_tokens"]
    assert abs(report.prompt_tokens - sent) <= 0.10 * sent
    assert report.cost_usd == pytest.approx(report.prompt_tokens * 2.5 / 1e6 + 1000 * 0.001)
    assert validate(cfg).done == 1000  # the finished run is recognised: nothing left to send
    assert validate(cfg).requests == 0


def test_bad_rows_duplicates_and_done_rows_are_reported_with_row_numbers(tmp_path: Path, sim) -> None:
    rows = make_rows(6)
    rows[1]["question"] = "  "  # row 2
    rows[3]["file_url"] = "ftp://example.org/x.pdf"  # row 4
    rows.append(dict(rows[0]))  # row 7 repeats row 1's request
    manifest = write_csv(tmp_path / "m.csv", rows)
    server = sim(latency_s=0.0)
    out = tmp_path / "out"
    run(fast_config(manifest, out, server, limit=3))  # rows 1-3 get an outcome (row 2 as failed)
    requests_before = server.stats()["requests"]

    r = cli("validate", str(manifest), "--out", str(out), "--json")
    assert r.returncode == 1, r.stderr
    data = json.loads(r.stdout)
    assert [(b["row"], b["reason"]) for b in data["bad_examples"]] == [
        (2, "question is empty"),
        (4, "file_url is not an http(s) URL: 'ftp://example.org/x.pdf'"),
    ]
    assert data["bad_rows"] == 2
    assert data["duplicate_requests"] == 1 and data["duplicate_groups"] == [[1, 7]]
    assert data["done"] == 4  # rows 1, 3, 7 (same request as 1) ok; row 2 failed
    assert data["requests"] == 2  # rows 5 and 6; row 4 is never sent
    assert data["columns"]["request_id"] == "hash of the request"
    assert server.stats()["requests"] == requests_before

    text = cli("validate", str(manifest))
    assert text.returncode == 1
    assert "row 2 (" in text.stdout and "question is empty" in text.stdout
    assert "duplicate requests: 1" in text.stdout


def test_a_clean_manifest_exits_0_and_shows_the_column_mapping(tmp_path: Path) -> None:
    rows = [{"ref": f"r{i}", "url": f"https://h.example/{i}.pdf", "prompt": "Total?", "team": "a"} for i in range(3)]
    manifest = write_csv(tmp_path / "m.csv", rows)
    r = cli("validate", str(manifest), "--json")
    assert r.returncode == 0, r.stderr
    cols = json.loads(r.stdout)["columns"]
    assert (cols["file_url"], cols["question"], cols["id"]) == ("url", "prompt", None)
    assert cols["passthrough"] == {"ref": "ref", "team": "team"}


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("file_url,text\nhttps://h.example/a.pdf,hi\n", "question (or prompt)"),
        ("id,file_url,question\n1,https://h.example/a.pdf,q\n1,https://h.example/b.pdf,q\n", "duplicate id '1'"),
        ("", "empty"),
    ],
)
def test_file_level_problems_exit_2_with_one_line_naming_the_file(tmp_path: Path, content: str, needle: str) -> None:
    manifest = tmp_path / "bad.csv"
    manifest.write_text(content)
    r = cli("validate", str(manifest))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(manifest) in lines[0] and needle in lines[0], r.stderr


# ------------------------------------------------------------------------------ --check-urls


class FileServer:
    """A small document host on 127.0.0.1 in its own thread, for URL checks."""

    def __init__(self) -> None:
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        async def pdf(request: web.Request) -> web.Response:
            return web.Response(body=PDF, content_type="application/pdf")

        async def page(request: web.Request) -> web.Response:
            return web.Response(text="<html><title>Sign in</title></html>", content_type="text/html")

        async def slow(request: web.Request) -> web.Response:
            await asyncio.sleep(5)
            return web.Response(body=PDF, content_type="application/pdf")

        async def forbidden(request: web.Request) -> web.Response:
            return web.Response(status=403, text="AccessDenied", content_type="application/xml")

        async def ranged_only(request: web.Request) -> web.Response:
            assert request.headers.get("Range") == "bytes=0-1023"
            return web.Response(status=206, body=PDF, content_type="application/pdf")

        app = web.Application()
        app.router.add_get("/doc.pdf", pdf)
        app.router.add_get("/login", page)
        app.router.add_get("/slow.pdf", slow)
        app.router.add_get("/signed.pdf", forbidden)
        app.router.add_get("/nohead.pdf", ranged_only, allow_head=False)  # HEAD -> 405
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = runner.addresses[0][1]
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def __enter__(self) -> FileServer:
        self._thread.start()
        assert self._ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
def files() -> Iterator[FileServer]:
    with FileServer() as server:
        yield server


def test_check_urls_flags_404_timeout_web_page_and_expired_links_and_passes_a_pdf(tmp_path: Path, files) -> None:
    fresh = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    urls = {
        "ok": files.url("/doc.pdf"),
        "missing": files.url("/missing.pdf"),
        "slow": files.url("/slow.pdf"),
        "page": files.url("/login"),
        "nohead": files.url("/nohead.pdf"),
        "signed403": files.url(f"/signed.pdf?X-Amz-Date={fresh}&X-Amz-Expires=3600&X-Amz-Signature=ab"),
        "expired": files.url("/doc.pdf?X-Amz-Date=20200101T000000Z&X-Amz-Expires=60&X-Amz-Signature=ab"),
    }
    rows = [{"id": k, "file_url": u, "question": "What is the total?"} for k, u in urls.items()]
    rows.append({"id": "ok-again", "file_url": urls["ok"], "question": "Who signed?"})
    manifest = write_csv(tmp_path / "m.csv", rows)

    r = cli("validate", str(manifest), "--check-urls", "--url-timeout", "1", "--url-concurrency", "4", "--json",
            timeout=15)  # fmt: skip
    assert r.returncode == 1, r.stderr
    data = json.loads(r.stdout)
    found = {p["url"]: p for p in data["url_problems"]}
    assert data["urls_checked"] == 7  # distinct URLs
    assert urls["ok"] not in found and urls["nohead"] not in found  # HEAD 405 -> ranged GET -> a PDF
    assert (found[urls["missing"]]["kind"], found[urls["missing"]]["status"]) == ("http_error", 404)
    assert found[urls["slow"]]["kind"] == "unreachable" and "1 s" in found[urls["slow"]]["detail"]
    assert found[urls["page"]]["kind"] == "web_page" and not found[urls["page"]]["fatal"]
    assert found[urls["signed403"]]["kind"] == "expired_link" and found[urls["signed403"]]["status"] == 403
    assert found[urls["expired"]]["kind"] == "expired_link" and "2020-01-01" in found[urls["expired"]]["detail"]
    assert found[urls["missing"]]["rows"] == [2]
    assert data["url_failures"] == 4

    text = cli("validate", str(manifest), "--check-urls", "--url-timeout", "1", timeout=15)
    assert "web_page" in text.stdout and "FAIL http_error" in text.stdout


def test_a_web_page_alone_is_a_warning_not_a_failure(tmp_path: Path, files) -> None:
    manifest = write_csv(tmp_path / "m.csv", [
        {"file_url": files.url("/login"), "question": "q"},
        {"file_url": files.url("/doc.pdf"), "question": "q"},
    ])  # fmt: skip
    r = cli("validate", str(manifest), "--check-urls", "--url-timeout", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "warn web_page" in r.stdout


@pytest.mark.parametrize(
    ("url", "signed", "expired"),
    [
        ("https://b.s3.amazonaws.com/k.pdf?X-Amz-Date=20200101T000000Z&X-Amz-Expires=60&X-Amz-Signature=x", True, True),
        (
            "https://s.googleapis.com/k.pdf?X-Goog-Date=20991231T000000Z&X-Goog-Expires=60&X-Goog-Signature=x",
            True,
            False,
        ),
        ("https://d.cloudfront.net/k.pdf?Expires=1000000000&Signature=x&Key-Pair-Id=K", True, True),
        ("https://a.blob.core.windows.net/c/k.pdf?sv=2022-11-02&se=2099-01-01T00:00:00Z&sig=x", True, False),
        ("https://a.blob.core.windows.net/c/k.pdf?se=2001-01-01T00:00:00Z&sig=x", True, True),
        ("https://h.example/k.pdf?page=2", False, False),
    ],
)
def test_signed_link_expiry_reads_s3_gcs_cloudfront_and_azure(url: str, signed: bool, expired: bool) -> None:
    is_signed, expiry = signed_link_expiry(url)
    assert is_signed == signed
    now = datetime.now(UTC)
    assert (expiry is not None and expiry < now) == expired


@pytest.mark.parametrize(
    ("ctype", "kind"),
    [
        ("application/pdf", None),
        ("application/octet-stream", None),
        ("application/vnd.openxmlformats-officedocument.wordprocessingml.document", None),
        ("text/plain; charset=utf-8", None),
        ("image/png", None),
        ("text/html; charset=utf-8", "web_page"),
        ("video/mp4", "not_document"),
        (None, None),
    ],
)
def test_content_types(ctype: Any, kind: str | None) -> None:
    got = classify_content_type(ctype)
    assert (got[0] if got else None) == kind


def test_expiry_in_the_future_is_not_flagged() -> None:
    later = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y%m%dT%H%M%SZ")
    _, expiry = signed_link_expiry(f"https://x.example/a.pdf?X-Amz-Date={later}&X-Amz-Expires=60")
    assert expiry is not None and expiry > datetime.now(UTC)


def test_the_text_report_shows_the_estimate_a_run_is_held_to(tmp_path: Path) -> None:
    manifest = write_csv(tmp_path / "m.csv", make_rows(4))
    job = tmp_path / "job.toml"
    job.write_text("[prices]\nprompt_per_1m = 2.5\ncompletion_per_1m = 10.0\n")
    r = cli("validate", str(manifest), "--job", str(job))
    assert r.returncode == 0, r.stderr
    assert "to send: 4 requests" in r.stdout and "~2000 completion tokens" in r.stdout
    assert "with answers of ~500 tokens" in r.stdout
    data = json.loads(cli("validate", str(manifest), "--job", str(job), "--max-tokens", "100", "--json").stdout)
    assert data["completion_tokens"] == 400 and data["cost_max_usd"] == data["cost_with_answers_usd"] > data["cost_usd"]
    assert data["exit_code"] == 0
