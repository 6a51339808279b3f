"""Typed answer columns, built at compaction time from the raw answers.

The journal keeps each answer exactly as received (the ``answer`` column); the
typed columns are derived from it when ``results.parquet`` is built. So a
changed schema needs no new journal format, and what is parsed is always what
was paid for. Only ``ok`` rows are parsed (their answers validated when they
arrived); failed rows, and properties an answer left out, are null.

Two paths, one result. The common answer is a bare JSON object on one line
(what ``response_format`` gets): those rows are handed to Arrow's JSON reader in
one go, as newline-delimited JSON read against the columns' types (date strings
read as strings, then cast), with no Python object per row. Anything else (a fenced
or sentence-wrapped answer, pretty-printed JSON) goes through :func:`find_json`
and the spec's converters, row by row. Arrow refuses what the converters would
turn into a null (a 3.0 for an integer, a duplicate key, a number too large):
then the whole chunk takes the row-by-row path, so the two paths can never
disagree on a value (``tests/test_structured_spec.py`` checks they agree).
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from ..arrowutil import numeric, string_scalar
from .extract import find_json
from .spec import Spec


def answer_columns(spec: Spec, answers: pa.Array[Any] | pa.ChunkedArray[Any],
                   ok: pa.Array[Any] | pa.ChunkedArray[Any]) -> list[pa.Array[Any]]:  # fmt: skip
    """One array per column of ``spec``, from ``answers`` where ``ok`` is true (else null)."""
    texts = _array(answers)
    no = numeric(np.zeros(1, dtype=np.bool_))[0]  # a Python False would make pyarrow import pandas
    good = pc.fill_null(_array(ok), no)
    one_line = pc.and_(pc.starts_with(texts, "{"), pc.ends_with(texts, "}"))
    one_line = pc.and_(one_line, pc.invert(pc.match_substring_regex(texts, "[\r\n]")))
    fast = pc.fill_null(pc.and_(good, one_line), no)
    at_fast = pc.indices_nonzero(fast)
    read = _read_lines(spec, texts.take(at_fast)) if len(at_fast) else []
    if read is None:  # Arrow refused a value: every ok row row by row
        fast = numeric(np.zeros(len(texts), dtype=np.bool_))
        at_fast, read = pc.indices_nonzero(fast), []
    at_slow = pc.indices_nonzero(pc.and_(good, pc.invert(fast)))
    slow = columns_row_by_row(spec, texts.take(at_slow).to_pylist()) if len(at_slow) else []
    return _place(spec, len(texts), (at_fast, read), (at_slow, slow))


def _array(values: pa.Array[Any] | pa.ChunkedArray[Any]) -> Any:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def _read_lines(spec: Spec, texts: Any) -> list[Any] | None:
    """The columns of one-line JSON answers through Arrow's JSON reader, or None when it refuses one."""
    lines = pc.binary_join_element_wise(texts, string_scalar(""), string_scalar("\n"))
    offsets, data = lines.buffers()[1], lines.buffers()[2]
    first, last = np.frombuffer(offsets, dtype=np.int32, count=len(lines) + 1, offset=lines.offset * 4)[[0, -1]]
    body = data.slice(int(first), int(last - first))
    read_as = pa.schema([pa.field(c.prop, _as_read(c.type)) for c in spec.columns])
    try:
        table = pj.read_json(
            cast(Any, pa.BufferReader(body)),  # the stubs know paths and IO only
            read_options=pj.ReadOptions(use_threads=False, block_size=max(1 << 20, body.size + 1)),
            parse_options=pj.ParseOptions(explicit_schema=read_as, unexpected_field_behavior="ignore"),
        )
        if table.num_rows != len(texts):  # a line held more than one object
            return None
        return [table[c.prop].cast(c.type).combine_chunks() for c in spec.columns]
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None


def _as_read(t: pa.DataType) -> pa.DataType:
    """``t`` with every date32 read as a string (Arrow's JSON reader does not parse dates; a cast does)."""
    if pa.types.is_date32(t):
        return pa.string()
    if pa.types.is_list(t):
        return pa.list_(_as_read(t.value_type))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, _as_read(f.type)) for f in t])
    return t


def columns_row_by_row(spec: Spec, texts: list[str | None]) -> list[pa.Array[Any]]:
    """The columns of ``texts``, one answer at a time: find_json and the spec's converters
    (every answer that is not one line of JSON, and the reference the fast path must equal)."""
    cols = spec.columns
    values: list[list[Any]] = [[] for _ in cols]
    for text in texts:
        obj = find_json(text)
        for c, v in zip(cols, values, strict=True):
            v.append(c.convert(obj.get(c.prop)) if obj is not None else None)
    return [_to_arrow(v, c.type) for c, v in zip(cols, values, strict=True)]


def _place(spec: Spec, n: int, *parts: tuple[Any, list[Any]]) -> list[pa.Array[Any]]:
    """Full-length columns: each part's values at its row positions (uint64 indices), null elsewhere."""
    parts = tuple((at, arrays) for at, arrays in parts if len(at))
    where = np.full(n, sum(len(at) for at, _ in parts), dtype=np.int64)  # past every part: the null
    start = 0
    for at, _ in parts:
        rows = np.frombuffer(at.buffers()[1], dtype=np.uint64, count=len(at), offset=at.offset * 8)
        where[rows] = start + np.arange(len(at))
        start += len(at)
    pick = numeric(where)
    return [
        pa.concat_arrays([*(arrays[i] for _, arrays in parts), pa.nulls(1, cast(Any, c.type))]).take(pick)
        for i, c in enumerate(spec.columns)
    ]


def _to_arrow(values: list[Any], type_: pa.DataType) -> pa.Array[Any]:
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
