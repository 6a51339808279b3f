"""The rows the report lists by name: the slowest, the failed, and examples per error type.

Only a few dozen rows of a possibly million-row folder are shown, so their long,
distinct strings (:data:`DETAILS`: request_id, file_url, error_message,
gateway_request_id) are read only for those rows, from the row groups of
results.parquet that hold them (:class:`RowSource`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..arrowutil import numeric
from . import arrow

DETAILS = ["request_id", "file_url", "error_message", "gateway_request_id"]
#: What a listed row shows (the light columns come from the table already in memory).
ROW_COLUMNS = [
    "request_id",
    "file_url",
    "status",
    "error_type",
    "http_status",
    "attempts",
    "latency_ms",
    "gateway_request_id",
    "error_message",
]
TOP_ROWS = 10  # slowest rows shown
FAILED_ROWS = 20  # failed rows shown
EXAMPLES = 3  # examples per error type


@dataclass(frozen=True)
class ErrorType:
    """Failed rows of one error type, failed attempts of that type, and a few example rows."""

    name: str
    rows: int
    attempts: int
    examples: tuple[dict[str, Any], ...]


class RowSource:
    """The :data:`DETAILS` columns of chosen rows, from a results file or a table in memory."""

    def __init__(self, path: Path | None = None, table: pa.Table | None = None) -> None:
        self.path = path
        self.table = table

    def fetch(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """One dict of detail columns per index, in the order given."""
        if not indices:
            return []
        if self.table is not None:
            cols = [c for c in DETAILS if c in self.table.column_names]
            return self.table.select(cols).take(numeric(np.asarray(indices, dtype=np.int64))).to_pylist()
        assert self.path is not None
        f = pq.ParquetFile(self.path)
        cols = [c for c in DETAILS if c in f.schema_arrow.names]
        starts = np.cumsum([0] + [f.metadata.row_group(i).num_rows for i in range(f.num_row_groups)])
        wanted = np.asarray(indices, dtype=np.int64)
        groups = np.searchsorted(starts, wanted, side="right") - 1
        found: dict[int, dict[str, Any]] = {}
        for g in np.unique(groups):
            mine = wanted[groups == g]
            part = f.read_row_group(int(g), columns=cols).take(numeric((mine - starts[g]).astype(np.int64)))
            found.update(zip(mine.tolist(), part.to_pylist(), strict=True))
        return [found[int(i)] for i in indices]


def rows_at(table: pa.Table, source: RowSource, at: Sequence[int]) -> list[dict[str, Any]]:
    """:data:`ROW_COLUMNS` of the rows at positions ``at``, as dicts."""
    cols = [c for c in ROW_COLUMNS if c in table.column_names and c not in DETAILS]
    light = table.select(cols).take(numeric(np.asarray(at, dtype=np.int64))).to_pylist()
    return [{**d, **x} for d, x in zip(source.fetch(at), light, strict=True)]


def slowest(table: pa.Table, source: RowSource, n: int = TOP_ROWS) -> tuple[dict[str, Any], ...]:
    """The ``n`` rows with the longest latency, longest first."""
    if "latency_ms" not in table.column_names or table.num_rows == 0:
        return ()
    latency: Any = table.select(["latency_ms"])  # only this column is sorted; nulls come last
    top = pc.select_k_unstable(latency, n, sort_keys=[("latency_ms", "descending")]).to_pylist()
    at = [int(i) for i in top if table["latency_ms"][i].is_valid]
    return tuple(sorted(rows_at(table, source, at), key=lambda r: -(r["latency_ms"] or 0.0)))


def failed(table: pa.Table, source: RowSource, n: int = FAILED_ROWS) -> tuple[dict[str, Any], ...]:
    """The first ``n`` failed rows, in file (manifest) order."""
    bad = arrow.filled(pc.invert(arrow.equal(table["status"], "ok")), True)  # a row without a status is not ok
    return tuple(rows_at(table, source, arrow.first_true(bad, n)))


def error_types(table: pa.Table, attempt_errors: dict[str, int], source: RowSource) -> tuple[ErrorType, ...]:
    """Failed rows by error_type (most first), with failed attempts of each type and example rows;
    types that only failed attempts (rows that later succeeded) are listed too."""
    kinds = table["error_type"] if "error_type" in table.column_names else pa.chunked_array([], pa.string())
    counts = {str(k): n for k, n in arrow.value_counts(kinds).items()}

    def order(name: str) -> tuple[int, int, str]:
        return -counts.get(name, 0), -attempt_errors.get(name, 0), name

    out = []
    for name in sorted(set(counts) | set(attempt_errors), key=order):
        at = arrow.first_true(arrow.equal(kinds, name), EXAMPLES) if name in counts else []
        examples = tuple(rows_at(table, source, at))
        out.append(ErrorType(name, counts.get(name, 0), int(attempt_errors.get(name, 0)), examples))
    return tuple(out)
