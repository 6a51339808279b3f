"""Typed answer columns, built at compaction time from the raw answers.

The journal keeps each answer exactly as received (the ``answer`` column); the
typed columns are derived from it when ``results.parquet`` is built. So a
changed schema needs no new journal format, and what is parsed is always what
was paid for. Only ``ok`` rows are parsed (their answers validated when they
arrived); failed rows, and properties an answer left out, are null.

Cost: one ``find_json`` (an ``orjson.loads`` for a plain JSON answer) and one
small converter call per property and row, then one ``pa.array`` per column.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from .extract import find_json
from .spec import Spec


def answer_columns(spec: Spec, answers: pa.Array[Any] | pa.ChunkedArray[Any],
                   ok: pa.Array[Any] | pa.ChunkedArray[Any]) -> list[pa.Array[Any]]:  # fmt: skip
    """One array per column of ``spec``, from ``answers`` where ``ok`` is true (else null)."""
    texts = answers.to_pylist()
    flags = ok.to_pylist()
    cols = spec.columns
    values: list[list[Any]] = [[] for _ in cols]
    for text, good in zip(texts, flags, strict=True):
        obj = find_json(text) if good else None
        if obj is None:
            for v in values:
                v.append(None)
            continue
        for c, v in zip(cols, values, strict=True):
            v.append(c.convert(obj.get(c.prop)))
    return [_array(v, c.type) for c, v in zip(cols, values, strict=True)]


def _array(values: list[Any], type_: pa.DataType) -> pa.Array[Any]:
    try:
        return pa.array(values, type=type_)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        # a value the converters let through but Arrow refuses: null that row, keep the rest
        return pa.array([_fits(v, type_) for v in values], type=type_)


def _fits(v: Any, type_: pa.DataType) -> Any:
    try:
        pa.array([v], type=type_)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return None
    return v
