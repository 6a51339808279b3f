"""Message forms and --embed (issue 15): the exact bodies the simulator received."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pipeline import run
from pipeline.config import JobConfig, load_config
from pipeline.errors import UsageError
from pipeline.manifest import Manifest
from pipeline.simulator import file_bytes

from .conftest import cli, fast_config, write_csv

PNG = "https://docs.example.com/scan/page.PNG"
PDF = "https://docs.example.com/report.pdf"


def _rows(urls: list[str], **extra: list[str]) -> list[dict[str, str]]:
    rows = [{"file_url": u, "question": f"What is on page {i}?"} for i, u in enumerate(urls)]
    for column, values in extra.items():
        for row, value in zip(rows, values, strict=True):
            row[column] = value
    return rows


def _user_contents(server: Any) -> dict[str, Any]:
    """The user message content of every chat body received, keyed by the question in it."""
    found: dict[str, Any] = {}
    for body in server.bodies():
        assert set(body) == {"model", "stream", "messages"} and body["stream"] is False
        [message] = body["messages"]
        assert message["role"] == "user"
        content = message["content"]
        question = content if isinstance(content, str) else content[0]["text"]
        found[question.split(" ", 1)[1] if isinstance(content, str) else question] = content
    return found


def test_each_form_sends_the_documented_body(tmp_path: Path, sim) -> None:
    server = sim(record_bodies=True)
    manifest = write_csv(tmp_path / "m.csv", _rows([PNG, PDF]))

    def parts(i: int, part: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"type": "text", "text": f"What is on page {i}?"}, part]

    expected = {
        "inline": [f"{PNG} What is on page 0?", f"{PDF} What is on page 1?"],
        "image_url": [parts(0, {"type": "image_url", "image_url": {"url": PNG}}),
                      parts(1, {"type": "image_url", "image_url": {"url": PDF}})],
        "file": [parts(0, {"type": "file", "file": {"file_url": PNG}}),
                 parts(1, {"type": "file", "file": {"file_url": PDF}})],
        # auto: an image extension (any case) -> image_url, a PDF -> today's inline text
        "auto": [parts(0, {"type": "image_url", "image_url": {"url": PNG}}), f"{PDF} What is on page 1?"],
    }  # fmt: skip
    for form, contents in expected.items():
        server.reset()
        summary = run(fast_config(manifest, tmp_path / form, server, form=form))
        assert summary.exit_code == 0 and summary.ok == 2
        got = _user_contents(server)
        assert got == {"What is on page 0?": contents[0], "What is on page 1?": contents[1]}, form
        assert {b["model"] for b in server.bodies()} == {"gpt-4o-all"}


def test_a_form_column_overrides_the_run_form_per_row(tmp_path: Path, sim) -> None:
    server = sim(record_bodies=True)
    manifest = write_csv(tmp_path / "m.csv", _rows([PNG, PDF, PDF, PNG], form=["inline", "", "FILE", "pdf"]))
    summary = run(fast_config(manifest, tmp_path / "out", server, form="image_url"))
    assert (summary.exit_code, summary.ok, summary.failed) == (1, 3, 1)
    got = _user_contents(server)
    assert got["What is on page 0?"] == f"{PNG} What is on page 0?"
    assert got["What is on page 1?"][1] == {"type": "image_url", "image_url": {"url": PDF}}
    assert got["What is on page 2?"][1] == {"type": "file", "file": {"file_url": PDF}}
    assert "What is on page 3?" not in got and server.stats()["requests"] == 3
    df = pd.read_parquet(tmp_path / "out")
    bad = df[df["status"] == "failed"].iloc[0]
    assert bad["error_type"] == "invalid_input" and "form 'pdf' is not one of" in bad["error_message"]
    assert list(bad["models_tried"]) == [] and bad["attempts"] == 0
    assert list(df["form"]) == ["inline", "", "FILE", "pdf"]  # the column is carried through as it was


def test_request_id_covers_the_form_and_leaves_inline_ids_unchanged(tmp_path: Path) -> None:
    manifest = write_csv(tmp_path / "m.csv", _rows([PNG, PDF]))

    def ids(**kw: Any) -> list[str]:
        cfg = load_config(manifest=str(manifest), env={}, **kw)
        return [r.request_id for batch in Manifest(str(manifest), cfg).rows() for r in batch]

    inline = ids()
    assert ids(form="inline") == inline
    assert len({*inline, *ids(form="image_url"), *ids(form="file"), *ids(form="auto")}) == 8
    assert ids(form="image_url") != ids(form="image_url", embed=True)


def _doc(server: Any, name: str, size: int) -> str:
    return f"{server.root_url}/files/{name}?bytes={size}"


def test_embed_sends_the_bytes_as_data_urls_and_refuses_a_document_over_the_limit(tmp_path: Path, sim) -> None:
    server = sim(record_bodies=True)
    png, pdf, big = _doc(server, "scan.png", 300), _doc(server, "report.pdf", 700), _doc(server, "huge.pdf", 1001)
    manifest = write_csv(tmp_path / "m.csv", _rows([png, pdf, big]))
    summary = run(fast_config(manifest, tmp_path / "out", server, form="auto", embed=True, embed_max_bytes=1000))
    assert (summary.exit_code, summary.ok, summary.failed) == (1, 2, 1)

    def data(name: str, size: int, ctype: str) -> str:
        return f"data:{ctype};base64," + base64.b64encode(file_bytes(name, size)).decode()

    got = _user_contents(server)
    assert got["What is on page 0?"] == [
        {"type": "text", "text": "What is on page 0?"},
        {"type": "image_url", "image_url": {"url": data("scan.png", 300, "image/png")}},
    ]
    # auto with --embed: not an image -> the file part (a gateway that cannot reach the URL cannot read it inline)
    assert got["What is on page 1?"] == [
        {"type": "text", "text": "What is on page 1?"},
        {"type": "file", "file": {"filename": "report.pdf", "file_data": data("report.pdf", 700, "application/pdf")}},
    ]
    assert server.stats()["requests"] == 2  # the large document cost no chat request
    df = pd.read_parquet(tmp_path / "out").set_index("question")
    large = df.loc["What is on page 2?"]
    assert large["status"] == "failed" and large["error_type"] == "invalid_input" and large["attempts"] == 0
    assert "--embed-max-bytes is 1000, it has 1001 bytes" in large["error_message"]
    info = json.loads((tmp_path / "out" / "_run.json").read_text())
    assert info["embedded_documents"] == 2 and info["embedded_bytes"] == 1000


def test_embed_of_a_missing_document_fails_the_row_without_a_chat_request(tmp_path: Path, sim) -> None:
    server = sim(record_bodies=True)
    manifest = write_csv(
        tmp_path / "m.csv", _rows([_doc(server, "gone.png", 10) + "&status=404", _doc(server, "ok.png", 10)])
    )
    summary = run(fast_config(manifest, tmp_path / "out", server, form="image_url", embed=True))
    assert (summary.ok, summary.failed, server.stats()["requests"]) == (1, 1, 1)
    df = pd.read_parquet(tmp_path / "out")
    failed = df[df["status"] == "failed"].iloc[0]
    assert failed["error_type"] == "invalid_input" and failed["http_status"] == 404


def test_embed_with_the_inline_form_is_a_usage_error_naming_the_flag(tmp_path: Path) -> None:
    manifest = write_csv(tmp_path / "m.csv", _rows([PDF]))
    done = cli("run", str(manifest), "--out", str(tmp_path / "out"), "--base-url", "http://127.0.0.1:9/v1", "--embed")
    assert done.returncode == 2, done.stderr
    assert "--embed: embedding needs form image_url, file or auto, but the form is inline" in done.stderr
    assert not (tmp_path / "out").exists()
    with pytest.raises(UsageError, match=r"^--embed: .* but --form 'inline'"):
        load_config(env={}, flags={"embed": True, "form": "inline"})
    with pytest.raises(UsageError, match=r"^embed=True: .* but form='inline'"):
        JobConfig(embed=True)
