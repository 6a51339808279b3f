"""Structured answers end to end: a JSON Schema in, typed columns out (issue 11), against the simulator."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import run
from pipeline.simulator import SimServer, structured_answer_for
from pipeline.structured import METADATA_KEY
from tests.conftest import fast_config, make_rows, write_csv

ROOT = Path(__file__).resolve().parent.parent
INVOICE = json.loads((ROOT / "pipeline/sample_inputs/invoices.schema.json").read_text())

Sim = Callable[..., SimServer]


def _expected(row: dict[str, str], schema: dict[str, Any] = INVOICE) -> dict[str, Any]:
    return structured_answer_for("gpt-4o-all", f"{row['file_url']} {row['question']}", schema)


def _check_values(df: pd.DataFrame, rows: list[dict[str, str]]) -> None:
    for i, row in enumerate(rows):
        want = _expected(row)
        got = df.iloc[i]
        assert got["invoice_number"] == want["invoice_number"]
        assert got["invoice_date"] == date.fromisoformat(want["invoice_date"])
        assert got["total"] == want["total"]
        assert got["currency"] == want["currency"]
        assert bool(got["paid"]) is want["paid"]
        assert got["answer_status"] == want["status"]
        assert [dict(x) for x in got["line_items"]] == want["line_items"]


def test_twenty_percent_bad_first_answers_every_row_ok_typed_columns(sim: Sim, tmp_path: Path) -> None:
    server = sim(schema_fault_rate=0.2, response_format="accept")
    rows = make_rows(60)
    manifest = write_csv(tmp_path / "m.csv", rows)
    out = tmp_path / "out"
    summary = run(fast_config(manifest, out, server, schema=INVOICE))
    assert (summary.ok, summary.failed) == (60, 0)
    stats = server.stats()["outcomes"]
    # every kind of bad first answer happened at least once
    assert {k for k in stats if k.startswith("schema_")} == {
        "schema_prose",
        "schema_fenced",
        "schema_sentence",
        "schema_violating",
        "schema_truncated",
    }
    df = pd.read_parquet(out)
    answer_cols = ["invoice_number", "invoice_date", "total", "currency", "paid", "line_items", "answer_status"]
    assert list(df.columns)[-len(answer_cols) :] == answer_cols
    # as pd.read_parquet(OUT) gives them, with no arguments (dates and lists as Python objects;
    # strings as pandas' string dtype or object, by pandas version)
    assert {c: str(df[c].dtype) for c in ["invoice_date", "total", "paid", "line_items"]} == {
        "invoice_date": "object", "total": "float64", "paid": "boolean", "line_items": "object"}  # fmt: skip
    assert all(pd.api.types.is_string_dtype(df[c]) for c in ["invoice_number", "currency", "answer_status"])
    assert str(df["line_items"].iloc[0][0]["quantity"].__class__.__name__) == "int"
    _check_values(df, rows)
    table = pq.read_table(out / "results.parquet")
    assert table.schema.field("invoice_date").type == pa.date32()
    assert table.schema.field("line_items").type == pa.list_(
        pa.struct(
            [pa.field("description", pa.string()), pa.field("quantity", pa.int64()), pa.field("amount", pa.float64())]
        )
    )
    assert json.loads(table.schema.metadata[METADATA_KEY]) == INVOICE
    info = json.loads((out / "_run.json").read_text())
    assert info["settings"]["schema"] == INVOICE
    # a prose answer to response_format means the channel ignores it: the run fell back
    assert info["structured_mode"] == "instructions"
    assert (df["attempts"] >= 1).all() and (df["attempts"] > 1).sum() >= 1


def test_gateway_rejecting_response_format_switches_to_instructions(sim: Sim, tmp_path: Path) -> None:
    server = sim(response_format="reject", record_bodies=True)
    rows = make_rows(20)
    out = tmp_path / "out"
    summary = run(fast_config(write_csv(tmp_path / "m.csv", rows), out, server, schema=INVOICE, concurrency=1))
    assert (summary.ok, summary.failed) == (20, 0)
    assert server.stats()["outcomes"].get("response_format_400") == 1
    bodies = server.bodies()
    assert "response_format" in bodies[0]
    assert all("response_format" not in b for b in bodies[1:])
    assert len(bodies) == 21
    info = json.loads((out / "_run.json").read_text())
    assert info["structured_mode"] == "instructions"
    assert "rejected response_format" in info["structured_fallback_reason"]
    _check_values(pd.read_parquet(out), rows)


def test_response_format_mode_never_falls_back(sim: Sim, tmp_path: Path) -> None:
    server = sim(response_format="reject")
    out = tmp_path / "out"
    summary = run(fast_config(write_csv(tmp_path / "m.csv", make_rows(3)), out, server, schema=INVOICE,
                              schema_mode="response_format"))  # fmt: skip
    assert summary.failed == 3
    df = pd.read_parquet(out)
    assert set(df["error_type"]) == {"invalid_request"}
    assert df["invoice_number"].isna().all()


def test_answers_that_never_validate_fail_alone(sim: Sim, tmp_path: Path) -> None:
    server = sim(record_bodies=True)
    rows = make_rows(6)
    rows[2]["question"] += " [[sim:schema_fault=violating*9]]"
    rows[4]["question"] += " [[sim:schema_fault=prose*9]]"
    out = tmp_path / "out"
    summary = run(fast_config(write_csv(tmp_path / "m.csv", rows), out, server, schema=INVOICE,
                              schema_mode="instructions", schema_retries=2))  # fmt: skip
    assert (summary.ok, summary.failed) == (4, 2)
    df = pd.read_parquet(out)
    bad = df.iloc[[2, 4]]
    assert list(bad["status"]) == ["failed", "failed"]
    assert list(bad["error_type"]) == ["invalid_answer", "invalid_answer"]
    assert list(bad["attempts"]) == [3, 3]  # the first answer and two re-asks
    assert bad["error_message"].iloc[0] == "$.invoice_number: 12345 is not of type 'string'"
    assert bad["answer"].iloc[1].startswith("I read the document.")
    assert bad["invoice_number"].isna().all()
    good = df.drop(index=[2, 4])
    assert (good["status"] == "ok").all() and (good["attempts"] == 1).all()
    # a re-ask carries the previous answer and the validation error
    reask = [b for b in server.bodies() if len(b["messages"]) == 4]
    assert len(reask) == 4
    assert reask[0]["messages"][2]["role"] == "assistant"
    assert "not valid" in reask[0]["messages"][3]["content"]


def test_cut_answer_retried_once_with_larger_max_tokens(sim: Sim, tmp_path: Path) -> None:
    server = sim(record_bodies=True)
    rows = make_rows(2)
    rows[0]["question"] += " [[sim:schema_fault=truncated]]"
    out = tmp_path / "out"
    summary = run(fast_config(write_csv(tmp_path / "m.csv", rows), out, server, schema=INVOICE, max_tokens=500))
    assert summary.ok == 2
    df = pd.read_parquet(out)
    assert list(df["attempts"]) == [2, 1]
    tokens = sorted(b["max_tokens"] for b in server.bodies())
    assert tokens == [500, 500, 1000]
    assert df["total_tokens"].iloc[0] > df["total_tokens"].iloc[1]  # both answers of row 0 are counted


def test_request_id_covers_the_schema(sim: Sim, tmp_path: Path) -> None:
    server = sim()
    manifest = write_csv(tmp_path / "m.csv", make_rows(2))
    plain = run(fast_config(manifest, tmp_path / "a", server))
    structured = run(fast_config(manifest, tmp_path / "b", server, schema=INVOICE))
    assert plain.ok == structured.ok == 2
    ids_a = set(pd.read_parquet(tmp_path / "a")["request_id"])
    ids_b = set(pd.read_parquet(tmp_path / "b")["request_id"])
    assert not ids_a & ids_b
    assert "invoice_number" not in pd.read_parquet(tmp_path / "a").columns


def test_pydantic_style_model_class(sim: Sim, tmp_path: Path) -> None:
    class Invoice:  # what pydantic v2 gives for a model with an optional field and a nested model
        @classmethod
        def model_json_schema(cls) -> dict[str, Any]:
            return {
                "$defs": {"Party": {"type": "object", "properties": {"name": {"type": "string"}},
                                    "required": ["name"], "title": "Party"}},
                "type": "object", "title": "Invoice",
                "properties": {"number": {"type": "string"},
                               "issued": {"type": "string", "format": "date-time"},
                               "count": {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None},
                               "seller": {"$ref": "#/$defs/Party"}},
                "required": ["number", "issued", "seller"],
            }  # fmt: skip

    server = sim()
    rows = make_rows(3)
    out = tmp_path / "out"
    assert run(fast_config(write_csv(tmp_path / "m.csv", rows), out, server, schema=Invoice)).ok == 3
    df = pd.read_parquet(out)
    assert str(df["count"].dtype) == "Int64"
    assert str(df["issued"].dtype) == "datetime64[us, UTC]"
    want = structured_answer_for("gpt-4o-all", f"{rows[0]['file_url']} {rows[0]['question']}",
                                 Invoice.model_json_schema())  # fmt: skip
    assert df["issued"].iloc[0] == pd.Timestamp(datetime.fromisoformat(want["issued"]).astimezone(UTC))
    assert df["seller"].iloc[0] == want["seller"]
    assert df["count"].iloc[0] == want["count"]


@pytest.mark.parametrize("stream", [False, True])
def test_streamed_and_plain_answers_give_the_same_columns(sim: Sim, tmp_path: Path, stream: bool) -> None:
    server = sim()
    rows = make_rows(4)
    out = tmp_path / "out"
    assert run(fast_config(write_csv(tmp_path / "m.csv", rows), out, server, schema=INVOICE, stream=stream)).ok == 4
    _check_values(pd.read_parquet(out), rows)


def test_summary_shows_null_shares_and_enum_and_boolean_counts_per_field(sim: Sim, tmp_path: Path) -> None:
    server = sim(response_format="accept")
    rows = make_rows(30)
    manifest = write_csv(tmp_path / "m.csv", rows)
    out = tmp_path / "out"
    run(fast_config(manifest, out, server, schema=INVOICE))
    from pipeline.summary import format_summary_report, summarize

    report = summarize([out])
    fields = {f.column: f for f in report.fields}
    assert list(fields) == [
        "invoice_number",
        "invoice_date",
        "total",
        "currency",
        "paid",
        "line_items",
        "answer_status",
    ]
    want = [_expected(r) for r in rows]
    assert fields["answer_status"].nulls == sum(w["status"] is None for w in want)
    assert fields["answer_status"].null_share == pytest.approx(fields["answer_status"].nulls / 30)
    assert fields["invoice_number"].nulls == 0 and fields["invoice_number"].values is None
    currencies: dict[str, int] = {}
    for w in want:
        currencies[w["currency"]] = currencies.get(w["currency"], 0) + 1
    assert dict(fields["currency"].values or {}) == currencies
    paid = sum(w["paid"] for w in want)
    assert dict(fields["paid"].values or {}) == {k: v for k, v in (("true", paid), ("false", 30 - paid)) if v}
    text = format_summary_report(report)
    assert "answer fields" in text and "currency: 0/30 null (0%)" in text
