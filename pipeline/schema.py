"""The output schema: the one place that names the output columns and their types.

The journal stores one record per outcome (:data:`JOURNAL_SCHEMA`); the results
file is the manifest's columns joined with the outcome columns
(:func:`output_schema`). Everything else derives from these two: the names a
manifest's passthrough column must not take (:data:`RESERVED_NAMES`) and the
pandas metadata that makes ``pd.read_parquet`` give nullable integer columns
without arguments (:func:`pandas_metadata`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pyarrow as pa

#: Timestamps are UTC microseconds; pandas reads them as tz-aware ``datetime64[us, UTC]``.
TS = pa.timestamp("us", tz="UTC")

#: Journal columns, in order; every one is an ``Outcome`` field except run_id and model.
_JOURNAL_FIELDS: list[pa.Field[Any]] = [
    pa.field("request_id", pa.string()),
    pa.field("row_index", pa.int64()),
    pa.field("model", pa.string()),
    pa.field("response_model", pa.string()),
    pa.field("answer", pa.string()),
    pa.field("finish_reason", pa.string()),
    pa.field("prompt_tokens", pa.int64()),
    pa.field("completion_tokens", pa.int64()),
    pa.field("total_tokens", pa.int64()),
    pa.field("usage_estimated", pa.bool_()),
    pa.field("status", pa.string()),
    pa.field("error_type", pa.string()),
    pa.field("error_message", pa.string()),
    pa.field("http_status", pa.int16()),
    pa.field("attempts", pa.int16()),
    pa.field("latency_ms", pa.float64()),
    pa.field("started_at", TS),
    pa.field("completed_at", TS),
    pa.field("response_id", pa.string()),
    pa.field("gateway_request_id", pa.string()),
    pa.field("run_id", pa.string()),
    pa.field("cost_usd", pa.float64()),
    # incremental nights (pipeline/reuse.py, pipeline/docmeta.py)
    pa.field("reused_from", pa.string()),
    pa.field("doc_etag", pa.string()),
    pa.field("doc_last_modified", TS),
    pa.field("doc_bytes", pa.int64()),
    pa.field("reuse_key", pa.int64()),
    # fallbacks (pipeline/models.py): the models a row was asked of, in order, ending with `model`
    pa.field("models_tried", pa.list_(pa.string())),
]
JOURNAL_SCHEMA = pa.schema(_JOURNAL_FIELDS)

#: The first columns of results.parquet, taken from the manifest row.
INPUT_COLUMNS: tuple[str, ...] = ("request_id", "file_url", "question")

#: Journal columns results.parquet does not show: row_index, and reuse_key (the request's
#: identity for reuse, signed URL parameters left out: pipeline/reuse.py).
JOURNAL_ONLY: tuple[str, ...] = ("row_index", "reuse_key")

#: Columns of results.parquet after the input and passthrough ones.
OUTCOME_COLUMNS: list[str] = [n for n in JOURNAL_SCHEMA.names if n not in ("request_id", *JOURNAL_ONLY)]

#: Columns whose values are (nearly) all different: Parquet writers leave them out of
#: dictionary encoding, which would build a dictionary per row group only to give it up
#: (a third of compaction's write time; issue 10). Every other column keeps it.
DISTINCT_COLUMNS: frozenset[str] = frozenset(
    ("request_id", "file_url", "question", "answer", "latency_ms", "started_at", "completed_at", "response_id",
     "gateway_request_id", "reuse_key")
)  # fmt: skip


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """The columns of ``schema`` worth dictionary-encoding (see :data:`DISTINCT_COLUMNS`)."""
    return [n for n in schema.names if n not in DISTINCT_COLUMNS]


#: Output names a manifest's passthrough column must not take (it is renamed ``input_<name>``).
RESERVED_NAMES: frozenset[str] = frozenset(INPUT_COLUMNS) | frozenset(OUTCOME_COLUMNS)

#: The pandas dtype of each integer column: nullable, so a missing count stays <NA>, not NaN.
NULLABLE_INTS: dict[str, str] = {
    "prompt_tokens": "Int64",
    "completion_tokens": "Int64",
    "total_tokens": "Int64",
    "http_status": "Int16",
    "attempts": "Int16",
    "doc_bytes": "Int64",
}


def output_schema(
    manifest_fields: Sequence[pa.Field[Any]],
    answer_fields: Sequence[pa.Field[Any]] = (),
    answer_dtypes: Mapping[str, str] | None = None,
    metadata: Mapping[bytes, bytes] | None = None,
) -> pa.Schema:
    """The schema of results.parquet for a manifest whose passthrough columns are
    ``manifest_fields`` (already renamed away from :data:`RESERVED_NAMES`).

    A structured job (pipeline/structured) adds its typed ``answer_fields`` after the
    standard columns, the nullable pandas dtypes some of them need (``answer_dtypes``)
    and extra schema ``metadata`` (the JSON Schema)."""
    fields = [pa.field(n, pa.string()) for n in INPUT_COLUMNS]
    fields += [*manifest_fields, *(JOURNAL_SCHEMA.field(n) for n in OUTCOME_COLUMNS), *answer_fields]
    schema = pa.schema(fields)
    return schema.with_metadata({**pandas_metadata(schema.names, answer_dtypes), **(metadata or {})})


def pandas_metadata(names: Iterable[str], extra: Mapping[str, str] | None = None) -> dict[bytes, bytes]:
    """Schema metadata that makes ``pd.read_parquet`` give nullable Int64/Int16
    token and status columns without any ``dtype_backend`` argument.

    pyarrow maps a column to a pandas extension dtype when the metadata names it
    (``numpy_type``); the other columns keep their default conversion.
    """
    dtypes = {**NULLABLE_INTS, **(extra or {})}
    cols = [
        {"name": n, "field_name": n, "pandas_type": dtype.lower(), "numpy_type": dtype, "metadata": None}
        for n in names
        if (dtype := dtypes.get(n))
    ]
    meta: dict[str, object] = {
        "index_columns": [],
        "column_indexes": [],
        "columns": cols,
        "creator": {"library": "pyarrow", "version": pa.__version__},
    }
    version = pandas_version()
    if version is not None:
        meta["pandas_version"] = version
    return {b"pandas": json.dumps(meta).encode()}


@functools.cache
def pandas_version() -> str | None:
    # the installed distribution's version, read without importing pandas (+45 MB and
    # ~0.3 s that a run does not need); pyarrow itself does not read this field back
    import importlib.metadata  # here, not at the top: csv, zipfile, email... before a run's first request

    try:
        return importlib.metadata.version("pandas")
    except importlib.metadata.PackageNotFoundError:
        return None
