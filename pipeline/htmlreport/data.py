"""Reading an output folder into :class:`ReportData`: everything the page shows.

Built from ``OUT/results.parquet`` (or, for a run that could not write it, the
journal) and ``OUT/_run.json`` only, so a report can be made again later from the
folder alone. Every figure is an aggregate or a bounded list, so a 1 000 000-row
folder gives a page of the same size as a 20-row one. pandas is not imported:
pyarrow.compute and numpy are faster on a million rows and keep memory flat, and
only the narrow columns are read for every row (:data:`COLUMNS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import UsageError
from ..rundir import RunDir
from ..storage import JOURNAL_DIR, RESULTS_FILE
from . import figures, rows
from .figures import Group, Histogram, Verdict
from .rows import ErrorType, RowSource
from .timeline import TimeCharts, time_charts

#: Columns read for every row. Low-cardinality strings come in dictionary-encoded:
#: a million copies of one run_id cost 27 MB as plain strings, 4 MB as a dictionary.
COLUMNS = [
    "status",
    "error_type",
    "http_status",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost_usd",
    "latency_ms",
    "attempts",
    "started_at",
    "completed_at",
    "run_id",
    "reused_from",  # copied-forward rows keep the times they were asked: the timeline leaves them out
]
_DICTIONARY = {"status", "error_type", "run_id", "reused_from"}
DEFAULT_BY = "model"

__all__ = ["ErrorType", "Group", "Histogram", "ReportData", "Verdict", "build", "read_folder"]


@dataclass(frozen=True)
class ReportData:
    """Everything the page shows (see the module docstring)."""

    folder: str
    run_id: str | None
    started_at: str | None
    ended_at: str | None
    model: str | None
    verdict: Verdict
    time: TimeCharts
    latency: Histogram | None
    attempts: dict[int, int]
    errors: tuple[ErrorType, ...]
    by: str
    groups: tuple[Group, ...]
    slowest: tuple[dict[str, Any], ...]
    failed: tuple[dict[str, Any], ...]


def read_folder(out_dir: Path, by: str | None) -> tuple[pa.Table, dict[str, Any], RowSource]:
    """The :data:`COLUMNS` (and ``by``) of every row, the parsed _run.json ({} when absent or
    unreadable), and where the listed rows' long strings come from."""
    info = RunDir(out_dir).read_run_info() or {}
    results = out_dir / RESULTS_FILE
    column = by or DEFAULT_BY
    wanted = list(dict.fromkeys([*COLUMNS, column]))
    if results.exists():
        try:
            schema = pq.read_schema(results)
            if by is not None and by not in schema.names:
                raise UsageError(
                    f"{results}: no column {by!r} to break tokens and cost down by; columns: {', '.join(schema.names)}"
                )
            cols = [c for c in wanted if c in schema.names]
            small = [c for c in cols if c in {*_DICTIONARY, column} and pa.types.is_string(schema.field(c).type)]
            # ParquetFile, not read_table: read_table's dataset layer imports pandas (+45 MB)
            table = pq.ParquetFile(results, read_dictionary=small).read(columns=cols)
            return table, info, RowSource(path=results)
        except (OSError, pa.ArrowInvalid) as e:
            raise UsageError(f"{results}: cannot read: {e}") from None
    if (out_dir / JOURNAL_DIR).is_dir() and RunDir(out_dir).parts():
        journal = RunDir(out_dir).latest()
        if by is not None and by not in journal.column_names:
            raise UsageError(f"{out_dir}: results.parquet is missing and the journal has no column {by!r}")
        return journal.select([c for c in wanted if c in journal.column_names]), info, RowSource(table=journal)
    raise UsageError(f"{results}: not found; is {out_dir} a docpipe output folder?")


def build(out_dir: Path, by: str | None = None) -> ReportData:
    """Read ``out_dir`` and aggregate every figure of the report."""
    table, info, source = read_folder(out_dir, by)
    column = by or DEFAULT_BY
    return ReportData(
        folder=str(out_dir),
        run_id=info.get("run_id"),
        started_at=info.get("started_at"),
        ended_at=info.get("ended_at"),
        model=(info.get("settings") or {}).get("model"),
        verdict=figures.verdict(table, info),
        time=time_charts(table, info),
        latency=figures.latency_histogram(figures.latencies(table)),
        attempts=figures.attempts(table),
        errors=rows.error_types(table, info.get("attempt_errors") or {}, source),
        by=column,
        groups=figures.groups(table, column) if column in table.column_names else (),
        slowest=rows.slowest(table, source),
        failed=rows.failed(table, source),
    )
