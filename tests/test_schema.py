"""The output schema: one place names the columns; pandas reads them as analysts expect."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa

from pipeline import manifest
from pipeline.records import Outcome
from pipeline.schema import (
    INPUT_COLUMNS,
    JOURNAL_SCHEMA,
    OUTCOME_COLUMNS,
    RESERVED_NAMES,
    output_schema,
    pandas_metadata,
)
from pipeline.storage import atomic_write_table

from .conftest import ROOT


def test_journal_columns_are_the_outcome_fields_plus_run_id_and_model() -> None:
    fields = {f.name for f in dataclasses.fields(Outcome)}
    assert set(JOURNAL_SCHEMA.names) == fields | {"run_id", "model"}


def test_results_columns_are_input_then_passthrough_then_outcome() -> None:
    schema = output_schema([pa.field("team", pa.string()), pa.field("priority", pa.int64())])
    assert schema.names == [*INPUT_COLUMNS, "team", "priority", *OUTCOME_COLUMNS]
    assert "row_index" not in schema.names


def test_reserved_names_are_exactly_the_output_columns_and_the_manifest_uses_them() -> None:
    assert set(output_schema([]).names) == RESERVED_NAMES
    assert manifest.RESERVED == RESERVED_NAMES


def test_pandas_metadata_names_the_installed_pandas_not_a_fixed_version() -> None:
    meta = json.loads(pandas_metadata(OUTCOME_COLUMNS)[b"pandas"])
    assert meta["pandas_version"] == importlib.metadata.version("pandas")
    assert meta["creator"] == {"library": "pyarrow", "version": pa.__version__}
    assert {c["name"]: c["numpy_type"] for c in meta["columns"]} == {
        "prompt_tokens": "Int64", "completion_tokens": "Int64", "total_tokens": "Int64",
        "http_status": "Int16", "attempts": "Int16", "doc_bytes": "Int64",
    }  # fmt: skip


def test_building_the_schema_does_not_import_pandas() -> None:
    code = (
        "import sys; from pipeline.schema import output_schema; output_schema([]); "
        "assert 'pandas' not in sys.modules, 'pandas imported'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_read_parquet_without_arguments_gives_nullable_ints_and_utc_timestamps(tmp_path: Path) -> None:
    schema = output_schema([pa.field("team", pa.string())])
    started = datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    rows = [
        {
            "request_id": "a",
            "status": "ok",
            "prompt_tokens": 5,
            "http_status": 200,
            "attempts": 1,
            "started_at": started,
        },
        {"request_id": "b", "status": "failed", "attempts": 2},
    ]
    table = pa.Table.from_pylist(rows, schema=schema)
    atomic_write_table(tmp_path / "results.parquet", [table], schema)

    df = pd.read_parquet(tmp_path / "results.parquet")
    tokens = ["prompt_tokens", "completion_tokens", "total_tokens"]
    assert [str(df[c].dtype) for c in tokens] == ["Int64"] * 3
    assert str(df["http_status"].dtype) == "Int16" and str(df["attempts"].dtype) == "Int16"
    assert df["prompt_tokens"].tolist()[0] == 5 and df["prompt_tokens"].isna().tolist() == [False, True]
    assert str(df["started_at"].dtype) == "datetime64[us, UTC]"
    assert df["started_at"][0] == pd.Timestamp(started)
    assert df["latency_ms"].dtype == "float64" and df["team"].isna().all()
