"""The schema, the extraction and the columns as pure logic (pipeline/structured), and the
settings and CLI doors (bad schemas: one line, exit 2)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from pipeline.config import load_config
from pipeline.errors import ERROR_TYPES, UsageError
from pipeline.structured import Checker, Problem, SchemaProblem, compile_spec, find_json, load_schema
from pipeline.structured.columns import answer_columns
from tests.conftest import ROOT, cli, make_rows, write_csv

INVOICE_PATH = ROOT / "pipeline/sample_inputs/invoices.schema.json"


def _obj(**props: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props}


def test_types_map_as_the_issue_says() -> None:
    spec = compile_spec(_obj(
        i={"type": "integer"}, n={"type": "number"}, b={"type": "boolean"}, s={"type": "string"},
        d={"type": "string", "format": "date"}, t={"type": "string", "format": "date-time"},
        e={"enum": ["a", "b"]}, xs={"type": "array", "items": {"type": "integer"}},
        os={"type": "array", "items": _obj(k={"type": "string"})}, o=_obj(k={"type": ["number", "null"]}),
    ))  # fmt: skip
    assert [(f.name, f.type) for f in spec.fields()] == [
        ("i", pa.int64()), ("n", pa.float64()), ("b", pa.bool_()), ("s", pa.string()), ("d", pa.date32()),
        ("t", pa.timestamp("us", tz="UTC")), ("e", pa.string()), ("xs", pa.list_(pa.int64())),
        ("os", pa.list_(pa.struct([pa.field("k", pa.string())]))), ("o", pa.struct([pa.field("k", pa.float64())])),
    ]  # fmt: skip
    assert spec.pandas_dtypes() == {"i": "Int64", "b": "boolean"}


@pytest.mark.parametrize(("schema", "path"), [
    ({"type": "array", "items": {"type": "string"}}, "/:"),
    (_obj(x={"oneOf": [{"type": "string"}, {"type": "integer"}]}), "/properties/x/oneOf:"),
    (_obj(x={"type": ["string", "integer"]}), "/properties/x/type:"),
    (_obj(x={"type": "array"}), "/properties/x:"),
    (_obj(x=_obj(y={"anyOf": [{"type": "string"}, {"type": "integer"}]})), "/properties/x/properties/y/anyOf:"),
    (_obj(x={"$ref": "https://example.com/s.json"}), "/properties/x/$ref:"),
    ({"$defs": {"N": _obj(n={"$ref": "#/$defs/N"})}, **_obj(x={"$ref": "#/$defs/N"})}, "/$ref: recursive"),
    (_obj(x={"type": "object"}), "/properties/x:"),
    (_obj(x={"type": "strin"}), "/properties/x/type: not a valid JSON Schema"),
])  # fmt: skip
def test_unsupported_constructs_are_refused_naming_the_path(schema: dict[str, Any], path: str) -> None:
    with pytest.raises(SchemaProblem) as e:
        compile_spec(schema)
    assert path in str(e.value)


def test_colliding_names_become_answer_prefixed() -> None:
    spec = compile_spec(_obj(status={"type": "string"}, total={"type": "number"})).renamed(["status", "answer"])
    assert [c.name for c in spec.columns] == ["answer_status", "total"]
    assert [c.prop for c in spec.columns] == ["status", "total"]


def test_find_json_whole_fenced_after_a_sentence() -> None:
    assert find_json('{"a": 1}') == {"a": 1}
    assert find_json('Here:\n```json\n{"a": 2}\n```\nDone.') == {"a": 2}
    assert find_json('The result is {"a": 3} as asked.') == {"a": 3}
    assert find_json('a {not json} then {"a": 4}') == {"a": 4}
    assert find_json("no json at all") is None
    assert find_json("[1, 2]") is None


def test_checker_verdicts() -> None:
    check = Checker(json.loads(INVOICE_PATH.read_text()))
    assert check.check("I could not find an invoice.").problem is Problem.PROSE
    assert check.check('{"invoice_number": "A", "to', "length").problem is Problem.TRUNCATED
    bad = check.check('{"invoice_number": 7}')
    assert bad.problem is Problem.INVALID
    assert bad.error is not None and bad.error.startswith("$")
    v = check.check('{"invoice_number": "A", "invoice_date": "2024-02-30", "total": 1, "currency": "EUR", '
                    '"paid": true, "line_items": [], "status": null}')  # fmt: skip
    assert v.error == "$.invoice_date: '2024-02-30' is not a 'date'"


def test_columns_null_for_failed_rows_and_missing_properties() -> None:
    spec = compile_spec(_obj(n={"type": "integer"}, d={"type": "string", "format": "date"},
                             t={"type": "string", "format": "date-time"}, b={"type": "boolean"}))  # fmt: skip
    answers = pa.array(['{"n": 5, "d": "2024-01-02", "t": "2024-01-02T03:04:05Z", "b": true}', '{"n": 6}', "x", None])
    ok = pa.array([True, True, False, False])
    cols = answer_columns(spec, answers, ok)
    assert cols[0].to_pylist() == [5, 6, None, None]
    assert cols[1].to_pylist() == [date(2024, 1, 2), None, None, None]
    assert cols[2].to_pylist() == [datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC), None, None, None]
    assert cols[3].to_pylist() == [True, None, None, None]


def test_invalid_answer_is_an_error_type() -> None:
    assert "invalid_answer" in ERROR_TYPES


def test_settings_from_job_file_flags_and_keywords(tmp_path: Path) -> None:
    job = tmp_path / "job.toml"
    job.write_text(f'[output]\nschema = "{INVOICE_PATH}"\nmode = "instructions"\nschema_retries = 1\n')
    cfg = load_config(job)
    assert cfg.schema == json.loads(INVOICE_PATH.read_text())
    assert (cfg.schema_mode, cfg.schema_retries) == ("instructions", 1)
    assert load_config(schema=str(INVOICE_PATH)).schema == cfg.schema
    assert load_config(flags={"schema_mode": "response_format"}).schema_mode == "response_format"
    assert load_config().schema is None


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"schema": {"type": "object", "properties": {"x": {"oneOf": []}}}}, "schema={'type': "),
    ({"schema": "/nonexistent/s.json"}, "schema='/nonexistent/s.json': cannot read the schema file"),
    ({"schema_mode": "json"}, "schema_mode='json': expected one of auto, response_format, instructions"),
    ({"schema_retries": -1}, "schema_retries=-1: expected an integer from 0 to 10"),
])  # fmt: skip
def test_bad_settings_are_usage_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError) as e:
        load_config(**kwargs)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_load_schema_from_a_model_class() -> None:
    class Model:
        @classmethod
        def model_json_schema(cls) -> dict[str, Any]:
            return _obj(a={"type": "integer"})

    assert load_schema(Model) == _obj(a={"type": "integer"})


def test_cli_bad_schema_exits_2_with_one_line_naming_the_path(tmp_path: Path) -> None:
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps(_obj(total={"type": "number"}, parties={"type": "array", "items": {
        "oneOf": [{"type": "string"}, {"type": "integer"}]}})))  # fmt: skip
    manifest = write_csv(tmp_path / "m.csv", make_rows(2))
    done = cli("run", str(manifest), "--out", str(tmp_path / "out"), "--schema", str(schema),
               "--base-url", "http://127.0.0.1:9/v1")  # fmt: skip
    assert done.returncode == 2
    err = done.stderr.strip()
    assert "\n" not in err
    assert "--schema" in err and "/properties/parties/items/oneOf: not supported" in err
    assert not (tmp_path / "out" / "results.parquet").exists()
    notjson = tmp_path / "n.json"
    notjson.write_text("{nope")
    done = cli("validate", str(manifest), "--schema", str(notjson))
    assert done.returncode == 2 and "the schema file is not JSON" in done.stderr


def test_cli_validate_lists_the_answer_columns(tmp_path: Path) -> None:
    manifest = write_csv(tmp_path / "m.csv", make_rows(2))
    done = cli("validate", str(manifest), "--schema", str(INVOICE_PATH))
    assert done.returncode == 0, done.stderr
    assert ("answer columns: invoice_number string, invoice_date date32[day], total double, currency string, "
            "paid bool") in done.stdout  # fmt: skip
    assert "answer_status string" in done.stdout


def test_fast_check_never_passes_what_jsonschema_fails() -> None:

    from pipeline.simulator import structured_answer_for
    from pipeline.structured.fastcheck import compile_check

    schema = json.loads(INVOICE_PATH.read_text())
    schema["properties"]["invoice_number"]["pattern"] = "^inv"
    schema["properties"]["total"]["exclusiveMaximum"] = 90000
    fast = compile_check(schema)
    assert fast is not None
    slow = Checker(schema)._validator
    wrong = [None, True, 0, 1.5, -3, "x", "2024-01-01", "inv-1", [], [{}], {}, {"description": "d"}, 99999.0]
    seen = {True: 0, False: 0}
    for i in range(40):
        base = structured_answer_for("m", f"c{i}", schema)
        variants = [base, {k: v for k, v in base.items() if k != "paid"}, {**base, "extra": 1}]
        variants += [{**base, key: w} for key in base for w in wrong]
        variants += [{**base, "line_items": [{**base["line_items"][0], "quantity": w}]} for w in wrong]
        for v in variants:
            ok = fast(v)
            seen[ok] += 1
            if ok:
                assert slow.is_valid(v), v
    assert seen[True] > 40 and seen[False] > 400
    assert compile_check({"type": "object", "properties": {"a": {"type": "array", "uniqueItems": True}}}) is None


#: Answers of ok rows the two column paths must read alike: one-line JSON (Arrow's reader),
#: and what only the row-by-row path reads (fenced, pretty, two objects, values Arrow refuses).
_MIXED_SCHEMA = _obj(
    i={"type": "integer"}, n={"type": "number"}, s={"type": "string"}, d={"type": "string", "format": "date"},
    t={"type": "string", "format": "date-time"}, b={"type": "boolean"},
    xs={"type": "array", "items": {"type": "integer"}},
    os={"type": "array", "items": _obj(k={"type": "string"}, when={"type": "string", "format": "date"})},
    o=_obj(x={"type": ["number", "null"]}),
)  # fmt: skip
_MIXED_ANSWERS = [
    '{"i": 1, "n": 2, "s": "a\\u00e9\\"", "d": "2024-01-02", "t": "2024-01-02T03:04:05+02:00", "b": false, '
    '"xs": [1, 2], "os": [{"k": "z", "when": "2023-12-31", "extra": 1}], "o": {"x": null}, "more": [1]}',
    '{"i": -9007199254740993, "n": 1e-300, "t": "2024-01-02T03:04:05.123456Z", "os": [], "o": {}}',
    '{"t": "2024-01-02T03:04:05"}',
    "{}",
    'Here it is:\n```json\n{"i": 7, "s": "fenced"}\n```',
    '{\n  "i": 8,\n  "d": "2025-06-30"\n}',
    'The answer: {"i": 9} and nothing else',
    '{"i": 3.0}',
    '{"i": 1, "i": 2}',
    '{"i": 99999999999999999999}',
    '{"i": 10} {"i": 11}',
    '{"n": 1.5, "s": "ok"}',
]


@pytest.mark.parametrize("refused", [None, 7, 8, 9, 10])
def test_columns_read_alike_by_arrow_and_row_by_row(refused: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each chunk takes Arrow's path for its one-line answers unless Arrow refuses one of
    them; either way every value equals what find_json and the converters make of it."""
    from pipeline.structured import columns

    spec = compile_spec(_MIXED_SCHEMA)
    texts = [a for i, a in enumerate(_MIXED_ANSWERS) if i < 7 or i == 11 or i == refused]
    texts += ['{"i": 5}', None]  # a failed row's answer (ok false), a row without an answer
    ok = [True] * (len(texts) - 2) + [False, True]
    by_row: list[str | None] = []
    row_by_row = columns.columns_row_by_row

    def spy(spec: Any, rows: list[str | None]) -> Any:
        by_row.extend(rows)
        return row_by_row(spec, rows)

    monkeypatch.setattr(columns, "columns_row_by_row", spy)
    got = answer_columns(spec, pa.array(texts, pa.string()), pa.array(ok))
    ok_rows = [t for t, good in zip(texts, ok, strict=True) if good]
    wanted = [*_MIXED_ANSWERS[4:7], None] if refused is None else ok_rows  # fenced, pretty, sentence; no answer
    assert sorted(by_row, key=str) == sorted(wanted, key=str)
    expected = row_by_row(spec, [t if good else None for t, good in zip(texts, ok, strict=True)])
    for c, a, b in zip(spec.columns, got, expected, strict=True):
        assert a.type == c.type and a.to_pylist() == b.to_pylist(), c.name
    assert got[0].to_pylist()[:3] == [1, -9007199254740993, None]
    assert got[4].to_pylist()[0] == datetime(2024, 1, 2, 1, 4, 5, tzinfo=UTC)


_KEYWORDS_SCHEMA = {
    "$defs": {"money": {"type": "object", "properties": {"v": {"type": "number", "exclusiveMinimum": 0}},
                        "required": ["v"]}},
    "type": "object",
    "properties": {
        "code": {"type": "string", "minLength": 2, "maxLength": 4, "pattern": "^[A-Z]"},
        "kind": {"enum": ["a", "b", 1, True]},
        "shape": {"enum": [[1, 2], {"k": 1}]},
        "fixed": {"const": 3},
        "price": {"$ref": "#/$defs/money"},
        "either": {"anyOf": [{"type": "integer", "maximum": 5}, {"type": "string", "format": "date-time"}]},
        "nested": {"properties": {"inner": {"properties": {"deep": {"type": ["integer", "null"]}},
                                            "required": ["deep"]}}},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 2},
        "loose": {"items": {"minimum": 0}},
        "when": {"type": "string", "format": "date"},
    },
    "required": ["code", "nested"],
    "additionalProperties": False,
}  # fmt: skip


def test_generated_fast_check_agrees_with_jsonschema_on_every_keyword() -> None:
    """The generated check is exact on these (it says valid iff jsonschema does), and never
    says valid where jsonschema says invalid."""
    from pipeline.structured.fastcheck import compile_check

    fast = compile_check(_KEYWORDS_SCHEMA)
    assert fast is not None
    slow = Checker(_KEYWORDS_SCHEMA)._validator
    base = {"code": "AB", "kind": "a", "shape": [1, 2], "fixed": 3, "price": {"v": 1.5}, "either": 4,
            "nested": {"inner": {"deep": None}}, "tags": ["x"], "loose": [0, 2], "when": "2024-02-29"}  # fmt: skip
    wrong = [None, True, False, 0, 1, -1, 1.0, 2.5, 6, "", "A", "ABCDE", "ab", "2024-02-30", "2024-01-02T03:04:05Z",
             [], [1, 2], ["x", "y", "z"], [-1], {}, {"k": 1}, {"v": 0}, {"inner": {}}, {"inner": {"deep": 1.5}},
             {"inner": {"deep": 2}}]  # fmt: skip
    variants = [
        base,
        {"code": "Q1", "nested": {}},
        {**base, "extra": 1},
        {k: v for k, v in base.items() if k != "code"},
    ]
    variants += [{**base, key: w} for key in base for w in wrong]
    stricter = []
    for v in variants:
        ok, truth = fast(v), slow.is_valid(v)
        assert truth or not ok, v  # never valid where jsonschema says invalid
        if ok != truth:
            stricter.append(v)
    # exact but for one documented strictness: enum/const compare type too (1.0 is not 1), and jsonschema decides
    assert stricter == [{**base, "kind": 1.0}]
    assert sum(map(fast, variants)) > 40
