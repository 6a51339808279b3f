"""What structured answers cost a row, for ``docpipe bench --scenario structured-100k``.

A run with a schema does per row what a plain run does not: on arrival it finds
the JSON in the answer and validates it (:meth:`.extract.Checker.check`), and at
compaction it builds the typed columns (:func:`.columns.answer_columns`, in the
compaction's chunks). Both are pure CPU in the client process, so they are timed
here in-process over the simulator's own answers to the demo's invoice schema
(what ``[output] schema`` gets from ``response_format``), beside the same work done
the straightforward way in the same process: ``jsonschema`` alone for the check,
and :func:`find_json` with the converters row by row for the columns.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from ..arrowutil import numeric, strings
from ..storage import ROW_GROUP_ROWS
from .columns import answer_columns, columns_row_by_row
from .extract import Checker
from .spec import Spec, compile_spec, load_schema

SCHEMA = Path(__file__).resolve().parent.parent / "sample_inputs" / "invoices.schema.json"
DISTINCT = 5_000  # distinct answers made by the simulator's generator (~100 µs each), repeated to ``rows``


@dataclass(frozen=True)
class Overhead:
    """Microseconds per row of each step, best of ``repeats`` timings."""

    rows: int
    check_us: float  # find the JSON and validate it (on arrival)
    columns_us: float  # the typed columns (at compaction)
    library_check_us: float  # the check by jsonschema alone
    by_row_columns_us: float  # the columns by find_json and the converters, row by row
    agree: bool  # both column paths gave the same columns

    @property
    def total_us(self) -> float:
        return self.check_us + self.columns_us

    @property
    def straightforward_us(self) -> float:
        return self.library_check_us + self.by_row_columns_us


def answers(schema: dict[str, Any], rows: int) -> list[str]:
    """``rows`` answers as the simulator gives them to ``response_format`` requests (one-line JSON)."""
    from ..simulator.structured import structured_answer_for

    made = [orjson.dumps(structured_answer_for("gpt-4o", f"document {i}", schema)).decode() for i in range(DISTINCT)]
    return [made[i % len(made)] for i in range(rows)]


def measure(rows: int = 100_000, repeats: int = 3) -> Overhead:
    """Time each step over ``rows`` answers (see the module docstring)."""
    schema = load_schema(SCHEMA)
    spec = compile_spec(schema)
    texts = answers(schema, rows)
    checker = Checker(schema)
    library = Checker(schema, fast=False)  # jsonschema alone: the check before the compiled fast path
    chunks = [strings(texts[i : i + ROW_GROUP_ROWS]) for i in range(0, rows, ROW_GROUP_ROWS)]
    flags = [numeric(np.ones(len(c), dtype=np.bool_)) for c in chunks]
    sample = texts[: max(1, rows // 20)]  # jsonschema takes ~300 µs a row: a twentieth is enough

    def check() -> None:
        for t in texts:
            checker.check(t, "stop")

    def columns() -> None:
        for c, f in zip(chunks, flags, strict=True):
            answer_columns(spec, c, f)

    def library_check() -> None:
        for t in sample:
            library.check(t, "stop")

    def by_row() -> None:
        for c in chunks:
            columns_row_by_row(spec, c.to_pylist())

    return Overhead(
        rows=rows,
        check_us=_best(check, rows, repeats),
        columns_us=_best(columns, rows, repeats),
        library_check_us=_best(library_check, len(sample), 1),
        by_row_columns_us=_best(by_row, rows, 1),
        agree=columns_agree(spec, texts[:DISTINCT]),
    )


def _best(step: Callable[[], None], rows: int, repeats: int) -> float:
    """The fastest of ``repeats`` timings of ``step``, in CPU µs per row: this process's CPU
    time, not the wall clock, so other processes on a shared machine count less."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        step()
        best = min(best, time.process_time() - t0)
    return round(best / rows * 1e6, 2)


def columns_agree(spec: Spec, texts: list[str]) -> bool:
    """The timed column path gives what find_json and the converters give, row by row."""
    fast = answer_columns(spec, strings(texts), numeric(np.ones(len(texts), dtype=np.bool_)))
    slow = columns_row_by_row(spec, list(texts))
    return all(a.equals(b) for a, b in zip(fast, slow, strict=True))
