"""Manifest reading: text that is not UTF-8, URLs with spaces, values kept as in the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from pipeline import run
from pipeline.config import load_config
from pipeline.errors import ManifestError
from pipeline.manifest import Manifest

from .conftest import TEST_KEY, cli, fast_config, make_rows, write_csv

LATIN1 = b"id,file_url,question\n1,https://h.example/1.pdf,Total?\n2,https://h.example/2.pdf,Caf\xe9 total?\n"
LATIN1_NO_ID = b"file_url,question\nhttps://h.example/1.pdf,Total?\nhttps://h.example/2.pdf,Caf\xe9 total?\n"
NOT_UTF8 = "is not UTF-8 text; save the file as UTF-8"


@pytest.mark.parametrize("with_id", [True, False])
def test_a_latin1_csv_names_the_file_the_row_and_the_column_counted_from_1(tmp_path: Path, with_id: bool) -> None:
    manifest = tmp_path / "latin.csv"
    manifest.write_bytes(LATIN1 if with_id else LATIN1_NO_ID)
    column = "column 3 ('question')" if with_id else "column 2 ('question')"
    with pytest.raises(ManifestError) as e:
        Manifest(str(manifest), load_config(env={}))
    assert str(e.value) == f"{manifest}: row 2, {column} {NOT_UTF8}"


def test_a_bad_byte_far_down_a_large_csv_is_found_in_its_block(tmp_path: Path) -> None:
    manifest = tmp_path / "big.csv"
    with open(manifest, "wb") as f:  # ~1.6 MB: more than one 1 MiB read block
        f.write(b"file_url,question,team\n")
        for i in range(40_000):
            f.write(b"https://h.example/%d.pdf,What is the total?,%s\n" % (i, b"caf\xe9" if i == 35_000 else b"ops"))
    with pytest.raises(ManifestError, match=r"big.csv: row 35001, column 3 \('team'\) is not UTF-8"):
        Manifest(str(manifest), load_config(env={}))


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_latin1_csv_is_reported_once_and_nothing_is_sent(tmp_path: Path, sim, command: str) -> None:
    server = sim()
    manifest = tmp_path / "latin.csv"
    manifest.write_bytes(LATIN1)  # an id column: the first pass used to decode only the ids
    r = cli(command, str(manifest), "--out", str(tmp_path / "out"), "--base-url", server.url, "--api-key", TEST_KEY,
            timeout=30)  # fmt: skip
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines == [
        f"docpipe: error: {manifest}: row 2, column 3 ('question') is not UTF-8 text; save the file as UTF-8"
    ]
    assert server.stats()["requests"] == 0


def test_a_url_with_a_space_is_reported_as_such(tmp_path: Path) -> None:
    manifest = write_csv(tmp_path / "m.csv", [
        {"file_url": "https://h.example/annual report.pdf", "question": "Total?"},
        {"file_url": "ftp://h.example/a.pdf", "question": "Total?"},
        {"file_url": "https://h.example/ok.pdf", "question": "Total?"},
    ])  # fmt: skip
    r = cli("validate", str(manifest), "--json")
    assert r.returncode == 1
    assert [(b["row"], b["reason"]) for b in json.loads(r.stdout)["bad_examples"]] == [
        (1, "file_url contains a space: 'https://h.example/annual report.pdf'"),
        (2, "file_url is not an http(s) URL: 'ftp://h.example/a.pdf'"),
    ]


def test_values_land_in_the_results_as_in_the_manifest_and_the_request_sends_the_bare_url(tmp_path: Path, sim) -> None:
    server = sim(latency_s=0.0, record_bodies=True)
    rows = [
        {"file_url": "  https://h.example/1.pdf", "question": " Total? "},
        {"file_url": "https://h.example/2.pdf\t", "question": "Who signed?"},
    ]
    manifest = write_csv(tmp_path / "m.csv", rows)
    summary = run(fast_config(manifest, tmp_path / "out", server))
    assert summary.exit_code == 0
    df = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert df["file_url"].tolist() == [r["file_url"] for r in rows]
    assert df["question"].tolist() == [r["question"] for r in rows]
    sent = sorted(b["messages"][-1]["content"] for b in server.bodies())
    assert sent == ["https://h.example/1.pdf  Total? ", "https://h.example/2.pdf Who signed?"]


def test_a_padded_url_is_the_same_request_as_the_bare_one(tmp_path: Path) -> None:
    manifest = write_csv(tmp_path / "m.csv", [
        {"file_url": "https://h.example/1.pdf", "question": "Total?"},
        {"file_url": "  https://h.example/1.pdf ", "question": "Total?"},
    ])  # fmt: skip
    rows = [r for batch in Manifest(str(manifest), load_config(env={})).rows() for r in batch]
    assert rows[0].request_id == rows[1].request_id and rows[1].invalid is None


def test_the_runs_first_batch_is_cut_short_and_nothing_is_lost(tmp_path: Path) -> None:
    # issue 10: the first requests wait for the rows of the first batch only (a run passes its concurrency)
    manifest = write_csv(tmp_path / "m.csv", make_rows(25))
    m = Manifest(str(manifest), load_config(env={}, batch_rows=10))
    cut = list(m.rows(first=4))
    assert [len(b) for b in cut] == [4, 6, 10, 5]
    assert [r.request_id for b in cut for r in b] == [r.request_id for b in m.rows() for r in b]
    assert [r.index for b in cut for r in b] == list(range(25))
    assert [len(b) for b in m.rows(first=40)] == [10, 10, 5]  # nothing to cut
