"""The rows the report lists by name: the slowest, the failed, and examples per error type.

Only a few dozen rows of a possibly million-row folder are shown: :class:`Picks`
finds their positions batch by batch from the narrow columns (a running top-k of
latency, the first failed rows, the first rows of each error type), and only then
are their :data:`ROW_COLUMNS` read, from the row groups that hold them
(:meth:`.scan.Scan.fetch`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from . import arrow
from .scan import Scan

#: What a listed row shows.
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


class Picks:
    """Positions of the rows the page lists, folded batch by batch (memory: the picks)."""

    COLUMNS = ("latency_ms", "status", "error_type")

    def __init__(self, top: int = TOP_ROWS, failed: int = FAILED_ROWS, examples: int = EXAMPLES) -> None:
        self.top, self.n_failed, self.n_examples = top, failed, examples
        self.slow: list[tuple[float, int]] = []  # (latency, position), longest first
        self.failed: list[int] = []
        self.kinds: Counter[str] = Counter()  # failed rows per error_type
        self.examples: dict[str, list[int]] = {}

    def add(self, offset: int, batch: pa.RecordBatch) -> None:
        names = batch.schema.names
        if "latency_ms" in names:
            self._slowest(offset, batch)
        if len(self.failed) < self.n_failed:
            bad = arrow.filled(pc.invert(arrow.equal(batch["status"], "ok")), True)  # no status: not ok
            self.failed += [offset + i for i in arrow.first_true(bad, self.n_failed - len(self.failed))]
        if "error_type" in names:
            kinds = batch["error_type"]
            counts = {str(k): n for k, n in arrow.value_counts(kinds).items()}
            self.kinds.update(counts)
            for name in counts:
                have = self.examples.setdefault(name, [])
                want = self.n_examples - len(have)
                if want > 0:
                    have += [offset + i for i in arrow.first_true(arrow.equal(kinds, name), want)]

    def _slowest(self, offset: int, batch: pa.RecordBatch) -> None:
        latency: Any = batch.select(["latency_ms"])  # nulls (and NaN) sort last
        top = pc.select_k_unstable(latency, self.top, sort_keys=[("latency_ms", "descending")]).to_pylist()
        values = batch["latency_ms"]
        found = [(float(values[i].as_py()), offset + int(i)) for i in top if values[i].is_valid]
        found = [(v, at) for v, at in found if v == v]  # not NaN
        self.slow = sorted([*self.slow, *found], key=lambda x: (-x[0], x[1]))[: self.top]


def rows_at(scan: Scan, at: Sequence[int]) -> list[dict[str, Any]]:
    """:data:`ROW_COLUMNS` of the rows at positions ``at``, as dicts."""
    return scan.fetch(at, ROW_COLUMNS)


def slowest(picks: Picks, scan: Scan) -> tuple[dict[str, Any], ...]:
    """The slowest rows, longest first."""
    return tuple(rows_at(scan, [at for _, at in picks.slow]))


def failed(picks: Picks, scan: Scan) -> tuple[dict[str, Any], ...]:
    """The first failed rows, in file (manifest) order."""
    return tuple(rows_at(scan, picks.failed))


def error_types(picks: Picks, attempt_errors: dict[str, int], scan: Scan) -> tuple[ErrorType, ...]:
    """Failed rows by error_type (most first), with failed attempts of each type and example rows;
    types that only failed attempts (rows that later succeeded) are listed too."""
    counts = picks.kinds

    def order(name: str) -> tuple[int, int, str]:
        return -counts.get(name, 0), -attempt_errors.get(name, 0), name

    out = []
    for name in sorted(set(counts) | set(attempt_errors), key=order):
        examples = tuple(rows_at(scan, picks.examples.get(name, [])))
        out.append(ErrorType(name, counts.get(name, 0), int(attempt_errors.get(name, 0)), examples))
    return tuple(out)
