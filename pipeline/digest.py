"""The figures of ``docpipe summary``: its records, their text, and where a folder's rows are.

One computation makes them (:func:`pipeline.htmlreport.tally.summarize`, pandas-free,
folded batch by batch) and three places show them: ``docpipe summary``, the report
``docpipe run`` prints at its end, and the verdict of ``OUT/_report.html``. This module
is plain Python (no pyarrow, no pandas) so every one of them can import it.

Decisions (kept from the pandas version these figures were first computed with):

- Latency percentiles are over every row with a ``latency_ms`` (ok and failed
  rows that reached the gateway), linear interpolation as ``pandas.quantile``;
  the slowest rows are chosen among those rows only, ties in file order.
- Any figure may be missing (a row that never reached the gateway has no latency,
  tokens or HTTP status; an older or half-written folder lacks columns): records
  hold ``None`` for it, never NaN, and the text says ``n/a``.
- Throughput is the rows the latest run produced (``run_id`` of ``_run.json``)
  divided by its ``elapsed_s``; over several folders (shards run side by side)
  it is their rows over the wall-clock span from the first start to the last end.
- Counts by value (status, error types) are most common first, ties in the order
  the values first occur.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .errors import UsageError
from .records import Ended, Status
from .report import JsonRecord, finite_float
from .rundir import RunDir
from .storage import RESULTS_FILE

__all__ = ["AnswerField", "FailedRow", "LatencyStats", "RunRef", "SlowRow", "Source", "SummaryReport",
           "Throughput", "TokenTotals", "format_summary_report", "locate", "refs_of", "run_refs"]  # fmt: skip

TOP = 10  # slowest and failed rows listed
_ENDINGS = {e.value for e in Ended}


@dataclass(frozen=True, slots=True)
class RunRef(JsonRecord):
    """One run behind a folder, as its ``_run.json`` (or a merge's list of runs) says."""

    run_id: str | None
    started_at: str | None
    ended_at: str | None
    elapsed_s: float | None
    ended: Ended | None
    out: str | None

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> RunRef:
        """Read one run from ``_run.json``; a value of the wrong kind reads as missing."""
        ended = info.get("ended")
        return cls(
            run_id=opt_str(info.get("run_id")),
            started_at=opt_str(info.get("started_at")),
            ended_at=opt_str(info.get("ended_at")),
            elapsed_s=finite_float(info.get("elapsed_s")),
            ended=Ended(ended) if ended in _ENDINGS else None,
            out=opt_str(info.get("out")),
        )


@dataclass(frozen=True, slots=True)
class Source(JsonRecord):
    """One folder a summary read."""

    path: str
    rows: int
    run_ids: tuple[str | None, ...]


@dataclass(frozen=True, slots=True)
class TokenTotals(JsonRecord):
    """Token sums; rows without usage count as 0."""

    prompt: int
    completion: int
    total: int


@dataclass(frozen=True, slots=True)
class LatencyStats(JsonRecord):
    """``latency_ms`` percentiles over the ``rows`` that have one (None when none has)."""

    rows: int
    p50: float | None
    p95: float | None
    p99: float | None


@dataclass(frozen=True, slots=True)
class Throughput(JsonRecord):
    """Rows the latest run(s) produced over their wall-clock time."""

    rows: int
    elapsed_s: float
    rows_per_s: float


@dataclass(frozen=True, slots=True)
class SlowRow(JsonRecord):
    """One of the slowest rows (only rows with a latency qualify)."""

    request_id: str
    file_url: str | None
    latency_ms: float
    attempts: int | None
    status: Status


@dataclass(frozen=True, slots=True)
class FailedRow(JsonRecord):
    """One failed row: what failed and why."""

    request_id: str
    file_url: str | None
    error_type: str | None
    http_status: int | None
    error_message: str | None


@dataclass(frozen=True, slots=True)
class AnswerField(JsonRecord):
    """One structured-answer column (issue 11): how often it is null, and for enums and
    booleans what it holds."""

    column: str
    rows: int
    nulls: int
    null_share: float
    values: Mapping[str, int] | None  # enums and booleans: value -> rows, most common first; else None


@dataclass(frozen=True, slots=True)
class SummaryReport(JsonRecord):
    """What :func:`summarize` found; ``to_dict()`` is ``docpipe summary --json``."""

    sources: tuple[Source, ...]
    rows: int
    status: Mapping[Status, int]  # rows per status, most common first
    error_types: Mapping[str, int]  # failed rows per error_type, most common first
    tokens: TokenTotals
    cost_usd: float | None  # None: no row has a cost (the job had no prices)
    latency_ms: LatencyStats
    throughput: Throughput | None  # None: the runs' times are unknown
    attempts: Mapping[int, int]  # attempts -> rows, ascending
    slowest: tuple[SlowRow, ...]  # at most TOP
    failed_rows: int
    failed: tuple[FailedRow, ...]  # the first TOP in file order
    fields: tuple[AnswerField, ...] = ()  # structured-answer columns, when the job had a schema
    #: rows copied forward from an earlier run (--reuse), not in ``tokens`` and ``cost_usd``,
    #: and what they had cost when they were asked (None: no prices)
    reused: int = 0
    cost_saved_usd: float | None = None


def locate(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(run folder, results file) for a folder or a results file."""
    p = Path(path)
    if p.is_dir():
        return p, p / RESULTS_FILE
    if p.suffix == ".parquet":
        return p.parent, p
    raise UsageError(f"{p}: not an output folder or a results .parquet file")


def run_refs(path: str | os.PathLike[str]) -> list[RunRef]:
    """The runs behind a folder: its _run.json, or the sources a merge recorded."""
    folder, _ = locate(path)
    return refs_of(RunDir(folder).read_run_info())


def refs_of(info: dict[str, Any] | None) -> list[RunRef]:
    """The runs a parsed _run.json names: itself, or the sources a merge recorded."""
    if not isinstance(info, dict) or not info:
        return []
    runs = info.get("runs")
    if isinstance(runs, list):
        return [RunRef.from_info(r) for r in runs if isinstance(r, dict)]
    return [RunRef.from_info(info)]


def parse_time(text: str | None) -> datetime | None:
    """An ISO time from _run.json, None when missing or unreadable."""
    try:
        return datetime.fromisoformat(text).astimezone() if text else None
    except ValueError:
        return None


def opt_str(v: Any) -> str | None:
    """A value read from a file as text, None for a null or NaN."""
    if isinstance(v, str):
        return v
    if v is None or (isinstance(v, float) and v != v):
        return None
    return str(v)


def opt_int(v: Any) -> int | None:
    """A value read from a file as a whole number (a journal holds floats), None for a null."""
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    f = finite_float(v)
    return None if f is None else round(f)


def _na(x: float | None, spec: str = ".0f") -> str:
    return "n/a" if x is None else format(x, spec)


def format_summary_report(r: SummaryReport) -> str:
    """The summary as a few readable lines (what ``docpipe summary`` prints)."""
    where = ", ".join(s.path for s in r.sources)
    status = ", ".join(f"{n} {k}" for k, n in sorted(r.status.items(), key=lambda kv: kv[0] != "ok"))
    lines = [f"{r.rows} rows in {where}: {status or 'none'}"]
    if r.error_types:
        lines.append("errors: " + ", ".join(f"{k} {n}" for k, n in sorted(r.error_types.items())))
    t = r.tokens
    cost = f"; cost ${r.cost_usd:.4f}" if r.cost_usd is not None else ""
    lines.append(f"tokens: {t.prompt} prompt + {t.completion} completion = {t.total}{cost}")
    if r.reused:
        saved = f", saving ${r.cost_saved_usd:.4f}" if r.cost_saved_usd is not None else ""
        lines.append(f"reused: {r.reused} rows copied forward from earlier runs (not in the tokens above){saved}")
    lat = r.latency_ms
    if lat.rows:
        lines.append(f"latency: p50 {_na(lat.p50)} ms, p95 {_na(lat.p95)} ms, p99 {_na(lat.p99)} ms "
                     f"({lat.rows} rows)")  # fmt: skip
    if (tp := r.throughput) is not None:
        lines.append(f"throughput: {tp.rows} rows in {tp.elapsed_s:.1f} s = {tp.rows_per_s:.2f} rows/s")
    lines.append("attempts per row: " + ", ".join(f"{k} -> {n} rows" for k, n in r.attempts.items()))
    if r.slowest:
        lines.append("slowest (ms, request_id, status, attempts, file_url):")
        w = max(len(s.request_id) for s in r.slowest)
        lines += [f"  {_na(s.latency_ms):>9}  {s.request_id:<{w}}  {s.status:<6}  {_na(s.attempts, 'd'):>2}  "
                  f"{s.file_url or ''}" for s in r.slowest]  # fmt: skip
    if r.fields:
        lines.append("answer fields (nulls; values of enums and booleans):")
        for f in r.fields:
            counted = "" if f.values is None else "  " + ", ".join(f"{k} {n}" for k, n in f.values.items())
            lines.append(f"  {f.column}: {f.nulls}/{f.rows} null ({f.null_share:.0%}){counted}")
    if r.failed:
        lines.append(f"failed ({len(r.failed)} of {r.failed_rows}):")
        lines += [f"  {f.request_id}  {f.error_type or 'unknown'}"
                  + (f" HTTP {f.http_status}" if f.http_status is not None else "")
                  + f"  {f.error_message or ''}" for f in r.failed]  # fmt: skip
    return "\n".join(lines)
