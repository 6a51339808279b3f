"""``docpipe summary``'s figures folded batch by batch, without pandas: :func:`summarize`.

The one computation behind ``docpipe summary``, the report ``docpipe run`` prints
when it ends, and the verdict of ``OUT/_report.html`` (:mod:`.data` feeds the same
:class:`Tally` from the page's first pass and keeps its :class:`SummaryReport`, so a
run's end reads its rows for these figures once). pandas is never imported: a run's
end must not pay 0.35 s and 45 MB for it (issue 10).

Memory does not grow with the rows but for the cost column: pandas sums a float
column pairwise over the whole column, and the figure must be that sum to the last
digit (``docpipe summary --json`` prints it whole), so the costs are kept (8 bytes a
row) and summed once at the end as pandas does. Percentiles are exact in fixed
memory (:mod:`.quantiles`); the slowest and failed rows are chosen by position and
only those rows are read whole (:meth:`.scan.Scan.fetch`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..arrowutil import strings
from ..digest import (
    TOP,
    AnswerField,
    FailedRow,
    LatencyStats,
    RunRef,
    SlowRow,
    Source,
    SummaryReport,
    Throughput,
    TokenTotals,
    locate,
    opt_int,
    opt_str,
    parse_time,
    run_refs,
)
from ..errors import UsageError
from ..records import Status
from ..rundir import RunDir
from ..storage import JOURNAL_DIR
from . import arrow, quantiles
from .scan import Scan

if TYPE_CHECKING:
    from ..structured.spec import Spec

__all__ = ["Tally", "open_rows", "summarize"]

_STATUSES = frozenset(s.value for s in Status)
_TOKEN_COLUMNS = ("prompt_tokens", "completion_tokens", "total_tokens")
_SLOW_COLUMNS = ["request_id", "file_url", "latency_ms", "attempts", "status"]
_FAILED_COLUMNS = ["request_id", "file_url", "error_type", "http_status", "error_message"]

Floats = np.ndarray[Any, np.dtype[np.float64]]


def open_rows(path: str | os.PathLike[str]) -> Scan:
    """The rows of a folder (or a results file): results.parquet, else the journal of a run
    still going or killed (its latest outcomes)."""
    folder, results = locate(path)
    if results.exists():
        try:
            return Scan(path=results)
        except (OSError, pa.ArrowInvalid) as e:
            raise UsageError(f"{results}: cannot read: {e}") from None
    if (folder / JOURNAL_DIR).is_dir() and RunDir(folder).parts():
        return Scan(table=RunDir(folder).latest())
    raise UsageError(f"{results}: not found; is {folder} a docpipe output folder?")


class Tally:
    """The summary's figures over the rows of one or more folders, folded batch by batch:
    :meth:`start` each folder, :meth:`add` its batches in order, then :meth:`report`."""

    COLUMNS = ("status", "error_type", *_TOKEN_COLUMNS, "cost_usd", "latency_ms", "attempts", "run_id",
               "reused_from")  # fmt: skip

    def __init__(self) -> None:
        self.scans: list[tuple[Scan, str]] = []  # (rows, where) per folder
        self.sources: list[Source] = []
        self.runs: list[RunRef] = []
        self.rows = self.failed_rows = self.reused = self.in_runs = self.latency_rows = 0
        self.status: dict[str, int] = {}
        self.error_types: dict[str, int] = {}
        self.attempts: dict[int, int] = {}
        self.tokens = dict.fromkeys(_TOKEN_COLUMNS, 0)
        self.costs: list[Floats] = []  # paid rows' cost_usd, nulls as 0 (see the module docstring)
        self.saved: list[Floats] = []  # the same for rows copied forward
        self.has_cost = self.has_saved = False
        self.latency_min = self.latency_max = float("nan")
        self.slow: list[tuple[float, int, int]] = []  # (latency, folder, position), slowest first
        self.failed: list[tuple[int, int]] = []  # (folder, position), the first TOP
        self._ids: pa.Array[Any] = strings([])  # pa.array() would import pandas
        self._row0 = 0  # rows of the folders before the current one

    def start(self, scan: Scan, where: str, runs: list[RunRef]) -> None:
        """The next folder: its rows (for the passes and rows read later) and its runs."""
        self._row0 = self.rows
        self.scans.append((scan, where))
        self.sources.append(Source(path=where, rows=scan.num_rows, run_ids=tuple(r.run_id for r in runs)))
        self.runs += runs
        self._ids = strings([r.run_id for r in self.runs if r.run_id is not None])

    def add(self, offset: int, batch: pa.RecordBatch) -> None:
        """Fold the current folder's batch whose first row is at ``offset``."""
        self._check_status(offset, batch)
        n, names = batch.num_rows, set(batch.schema.names)
        if not n:
            return
        self.rows += n
        _count(self.status, batch["status"])
        if "error_type" in names:
            _count(self.error_types, batch["error_type"])
        copied = _not_null(batch, "reused_from")
        self.reused += int(copied.sum())
        for name in _TOKEN_COLUMNS:
            self.tokens[name] += _whole_total(batch, name, ~copied)
        cost, has = _floats(batch, "cost_usd")
        self.costs.append(np.where(has, cost, 0.0)[~copied])
        self.saved.append(np.where(has, cost, 0.0)[copied])
        self.has_cost = self.has_cost or bool(has[~copied].any())
        self.has_saved = self.has_saved or bool(has[copied].any())
        if "attempts" in names:
            for k, v in arrow.value_counts(batch["attempts"]).items():
                self.attempts[round(k)] = self.attempts.get(round(k), 0) + v
        if "run_id" in names and len(self._ids):
            self.in_runs += arrow.count_true(pc.is_in(batch["run_id"], value_set=self._ids))
        self._latency(offset, batch)
        bad = arrow.filled(pc.invert(arrow.equal(batch["status"], "ok")), True)
        self.failed_rows += arrow.count_true(bad)
        if len(self.failed) < TOP:
            folder = len(self.scans) - 1
            self.failed += [(folder, offset + i) for i in arrow.first_true(bad, TOP - len(self.failed))]

    def _check_status(self, offset: int, batch: pa.RecordBatch) -> None:
        where = self.scans[-1][0].path or f"{self.scans[-1][1]}/{JOURNAL_DIR}"
        status = batch["status"] if "status" in batch.schema.names else pa.nulls(batch.num_rows, pa.string())
        known = arrow.filled(pc.is_in(status, value_set=strings(sorted(_STATUSES))))
        wrong = arrow.first_true(pc.invert(known), 1)
        if wrong:
            value = status[wrong[0]].as_py()
            raise UsageError(f"{where}: column 'status' holds {opt_str(value)!r} (row {offset + wrong[0]}); "
                             "expected 'ok' or 'failed': is it a docpipe results file?")  # fmt: skip

    def _latency(self, offset: int, batch: pa.RecordBatch) -> None:
        lat, has = _floats(batch, "latency_ms")
        has &= ~np.isnan(lat)
        if not has.any():
            return
        timed = lat[has]
        self.latency_rows += len(timed)
        self.latency_min = float(np.fmin(self.latency_min, timed.min()))
        self.latency_max = float(np.fmax(self.latency_max, timed.max()))
        at = np.flatnonzero(has)
        top = at[np.lexsort((at, -lat[at]))][:TOP]  # slowest first, ties in file order
        folder = len(self.scans) - 1
        found = [(float(lat[i]), folder, offset + int(i)) for i in top]
        self.slow = sorted([*self.slow, *found], key=lambda x: (-x[0], x[1], x[2]))[:TOP]

    def latency_passes(self) -> Iterable[Floats]:
        """The latency column once more, folder by folder (for :func:`.quantiles.percentiles`)."""
        for scan, _ in self.scans:
            for _, batch in scan.batches(["latency_ms"]):
                lat, has = _floats(batch, "latency_ms")
                yield lat[has & ~np.isnan(lat)]

    def report(self, fields: tuple[AnswerField, ...] = ()) -> SummaryReport:
        """The figures; reads the latency column again for the percentiles, and the listed rows."""
        cost = _pandas_sum(self.costs) if self.has_cost else None
        saved = _pandas_sum(self.saved) if self.has_saved else None
        return SummaryReport(
            sources=tuple(self.sources),
            rows=self.rows,
            status={Status.OK if k == Status.OK else Status.FAILED: n for k, n in _most_first(self.status).items()},
            error_types=_most_first(self.error_types),
            tokens=TokenTotals(*(self.tokens[name] for name in _TOKEN_COLUMNS)),
            cost_usd=cost,
            latency_ms=self._latency_stats(),
            throughput=self._throughput(),
            attempts=dict(sorted(self.attempts.items())),
            slowest=self._slowest(),
            failed_rows=self.failed_rows,
            failed=self._failed(),
            fields=fields,
            reused=self.reused,
            cost_saved_usd=saved,
        )

    def _latency_stats(self) -> LatencyStats:
        if not self.latency_rows:
            return LatencyStats(rows=0, p50=None, p95=None, p99=None)
        p50, p95, p99 = quantiles.percentiles([0.50, 0.95, 0.99], self.latency_rows, self.latency_passes)
        return LatencyStats(rows=self.latency_rows, p50=p50, p95=p95, p99=p99)

    def _throughput(self) -> Throughput | None:
        runs = self.runs
        if not runs or any(r.run_id is None for r in runs):
            return None
        if len(runs) == 1:
            elapsed = runs[0].elapsed_s
        else:
            starts = [t for r in runs if (t := parse_time(r.started_at))]
            ends = [t for r in runs if (t := parse_time(r.ended_at))]
            if len(starts) < len(runs) or len(ends) < len(runs):
                return None
            elapsed = (max(ends) - min(starts)).total_seconds()
        if not elapsed or elapsed <= 0:
            return None
        return Throughput(rows=self.in_runs, elapsed_s=elapsed, rows_per_s=self.in_runs / elapsed)

    def _fetch(self, at: Sequence[tuple[int, int]], columns: list[str]) -> list[dict[str, Any]]:
        """Rows by (folder, position), in the order given."""
        found: dict[tuple[int, int], dict[str, Any]] = {}
        for folder, (scan, _) in enumerate(self.scans):
            mine = [pos for f, pos in at if f == folder]
            found.update(((folder, pos), row) for pos, row in zip(mine, scan.fetch(mine, columns), strict=True))
        return [{c: found[key].get(c) for c in columns} for key in at]

    def _slowest(self) -> tuple[SlowRow, ...]:
        rows = self._fetch([(f, pos) for _, f, pos in self.slow], _SLOW_COLUMNS)
        return tuple(
            SlowRow(request_id=str(r["request_id"]), file_url=opt_str(r["file_url"]), latency_ms=lat,
                    attempts=opt_int(r["attempts"]), status=Status.OK if r["status"] == Status.OK else Status.FAILED)
            for (lat, _, _), r in zip(self.slow, rows, strict=True)
        )  # fmt: skip

    def _failed(self) -> tuple[FailedRow, ...]:
        return tuple(
            FailedRow(request_id=str(r["request_id"]), file_url=opt_str(r["file_url"]),
                      error_type=opt_str(r["error_type"]), http_status=opt_int(r["http_status"]),
                      error_message=opt_str(r["error_message"]))
            for r in self._fetch(self.failed, _FAILED_COLUMNS)
        )  # fmt: skip


def summarize(paths: Sequence[str | os.PathLike[str]]) -> SummaryReport:
    """Counts, tokens, cost, latency percentiles, throughput, attempts, slowest and
    failed rows over one or more output folders (summed, as for shards)."""
    if not paths:
        raise UsageError("summary needs at least one output folder")
    tally = Tally()
    for p in paths:
        scan = open_rows(p)
        tally.start(scan, str(p), run_refs(p))
        try:
            for offset, batch in scan.batches(Tally.COLUMNS, {"status", "error_type", "run_id", "reused_from"}):
                tally.add(offset, batch)
        except (OSError, pa.ArrowInvalid) as e:
            raise UsageError(f"{p}: cannot read: {e}") from None
    return tally.report(answer_fields(paths))


# -------------------------------------------------------------------------- columns


def _count(counts: dict[str, int], column: Any) -> None:
    """Add the non-null values of ``column`` to ``counts`` (new values in order of first occurrence)."""
    for value, n in arrow.value_counts(column).items():
        counts[str(value)] = counts.get(str(value), 0) + n


def _most_first(counts: dict[str, int]) -> dict[str, int]:
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))  # stable: ties keep first occurrence


def _not_null(batch: pa.RecordBatch, name: str) -> np.ndarray[Any, np.dtype[np.bool_]]:
    if name not in batch.schema.names:
        return np.zeros(batch.num_rows, dtype=np.bool_)
    return arrow.to_numpy(pc.is_valid(batch[name]))


def _floats(batch: pa.RecordBatch, name: str) -> tuple[Floats, np.ndarray[Any, np.dtype[np.bool_]]]:
    """A numeric column as float64 (nulls as NaN) and where it has a value."""
    if name not in batch.schema.names:
        return np.full(batch.num_rows, np.nan), np.zeros(batch.num_rows, dtype=np.bool_)
    column = pc.cast(batch[name], pa.float64())
    has = arrow.to_numpy(pc.is_valid(column))
    return arrow.to_numpy(arrow.filled(column, float("nan"))), has


def _whole_total(batch: pa.RecordBatch, name: str, rows: np.ndarray[Any, np.dtype[np.bool_]]) -> int:
    """The sum of a count column over ``rows``; a journal's floats are rounded first (as ints)."""
    values, has = _floats(batch, name)
    return int(np.round(values[rows & has]).sum())


def _pandas_sum(parts: list[Floats]) -> float:
    """numpy's pairwise sum over the whole column, as ``pandas.Series.sum`` computes it."""
    return float(np.concatenate(parts).sum()) if parts else 0.0


# -------------------------------------------------------------------------- answer fields


def answer_fields(paths: Sequence[str | os.PathLike[str]]) -> tuple[AnswerField, ...]:
    """Null shares (and enum/boolean value counts) of the structured-answer columns, summed
    over the folders whose results.parquet carries an answer schema in its metadata."""
    from ..structured import METADATA_KEY, compile_spec

    nulls: dict[str, list[int]] = {}  # column -> [rows, nulls]
    values: dict[str, dict[str, int] | None] = {}
    for p in paths:
        results = locate(p)[1]
        schema = pq.read_schema(results) if results.exists() else None
        raw = (schema.metadata or {}).get(METADATA_KEY) if schema is not None else None
        if schema is None or raw is None:
            continue
        spec = compile_spec(json.loads(raw))
        # compaction appends the answer columns last (renamed answer_<name> where a name was taken)
        names = schema.names[len(schema.names) - len(spec.columns) :]
        # a row group at a time, through ParquetFile: pq.read_table goes through
        # pyarrow.dataset, which imports pandas (+45 MB at the end of every run with a schema)
        part = pq.ParquetFile(results)
        # no rows yet: every column is listed even for a file of no row groups (not
        # schema.empty_table(), which imports pandas)
        _fold_fields(pa.Table.from_batches([], schema=part.schema_arrow).select(names), spec, names, nulls, values)
        for g in range(part.num_row_groups):
            _fold_fields(part.read_row_group(g, columns=names, use_threads=False), spec, names, nulls, values)
    return tuple(_answer_field(name, rows, n, values[name]) for name, (rows, n) in nulls.items())


def _fold_fields(table: pa.Table, spec: Spec, names: list[str], nulls: dict[str, list[int]],
                 values: dict[str, dict[str, int] | None]) -> None:  # fmt: skip
    props = spec.schema.get("properties", {})
    for c, name in zip(spec.columns, names, strict=True):
        col = table[name]
        counts = nulls.setdefault(name, [0, 0])
        counts[0] += len(col)
        counts[1] += col.null_count
        if "enum" in props.get(c.prop, {}) or pa.types.is_boolean(c.type):
            seen = values.get(name) or {}
            for v, n in zip(*_value_counts(col), strict=True):
                seen[v] = seen.get(v, 0) + n
            values[name] = seen
        else:
            values.setdefault(name, None)


def _answer_field(name: str, rows: int, nulls: int, values: dict[str, int] | None) -> AnswerField:
    ordered = None if values is None else dict(sorted(values.items(), key=lambda kv: -kv[1]))
    return AnswerField(column=name, rows=rows, nulls=nulls, null_share=nulls / rows if rows else 0.0, values=ordered)


def _value_counts(col: pa.ChunkedArray[Any]) -> tuple[list[str], list[int]]:
    counted = pc.value_counts(col.drop_null())
    keys = [str(v).lower() if isinstance(v, bool) else str(v) for v in counted.field("values").to_pylist()]
    return keys, [int(n or 0) for n in counted.field("counts").to_pylist()]
