"""Reading finished output folders: ``summary``, ``diff`` and ``merge``.

An output folder is ``OUT/results.parquet`` plus ``OUT/_run.json`` (see
:mod:`pipeline.rundir`). Every function here accepts the folder or the
results file itself, and returns a frozen record (:class:`SummaryReport`,
:class:`DiffReport`, :class:`MergeReport`) whose ``to_dict()`` is what ``--json``
prints; ``format_*`` turn the same records into text.

Decisions:

- Latency percentiles are over every row with a ``latency_ms`` (ok and failed
  rows that reached the gateway), linear interpolation as ``pandas.quantile``;
  the slowest rows are chosen among those rows only.
- Any figure may be missing (a row that never reached the gateway has no latency,
  tokens or HTTP status; an older or half-written folder lacks columns): records
  hold ``None`` for it, never NaN, and the text says ``n/a``.
- Throughput is the rows the latest run produced (``run_id`` of ``_run.json``)
  divided by its ``elapsed_s``; over several folders (shards run side by side)
  it is their rows over the wall-clock span from the first start to the last end.
- ``diff`` pairs rows by ``request_id``; when the two runs used different models
  or prompts and the manifest has no ``id`` column, the hashed ids differ, so
  pair by ``file_url`` and ``question`` instead (``key="content"``).
- ``merge`` keeps the latest outcome (``completed_at``, then the later folder)
  per ``request_id`` and streams: memory holds ids, not the tables.

This module imports pandas; the run path must not import it (only the CLI's
closing report does, after the run).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .agreement import QuestionAgreement, agreement, format_agreement
from .errors import UsageError
from .records import Ended, Status
from .report import JsonRecord, dumps, finite_float
from .rundir import RunDir
from .schema import pandas_metadata
from .storage import JOURNAL_DIR, RESULTS_FILE, atomic_write_table

__all__ = [
    "AnswerField", "ChangedAnswer", "CountDelta", "DiffReport", "FailedRow", "LatencyStats", "MergeReport",
    "MergeSource", "QuestionAgreement",
    "RunRef", "SlowRow", "Source", "SummaryReport", "Throughput", "TokenDeltas", "TokenTotals", "ValueDelta",
    "diff", "dumps", "format_diff", "format_merge", "format_summary_report", "merge", "summarize",
]  # fmt: skip

#: How ``diff`` pairs rows.
DiffKey = Literal["request_id", "content"]

TOP = 10
_STATUSES = [s.value for s in Status]
_ENDINGS = {e.value for e in Ended}
_SUMMARY_COLUMNS = ["request_id", "file_url", "status", "error_type", "error_message", "http_status",
                    "prompt_tokens", "completion_tokens", "total_tokens", "cost_usd", "latency_ms",
                    "attempts", "run_id", "reused_from"]  # fmt: skip
_DIFF_COLUMNS = ["request_id", "file_url", "question", "answer", "status", "prompt_tokens",
                 "completion_tokens", "total_tokens", "cost_usd", "model"]  # fmt: skip
_DIFF_KEYS: dict[str, list[str]] = {"request_id": ["request_id"], "content": ["file_url", "question"]}
_INT_COLUMNS = {"prompt_tokens", "completion_tokens", "total_tokens", "http_status", "attempts"}
_FLOAT_COLUMNS = {"cost_usd", "latency_ms"}
_TOKEN_KINDS = ("prompt", "completion", "total")

# -------------------------------------------------------------------------- records


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
            run_id=_opt_str(info.get("run_id")),
            started_at=_opt_str(info.get("started_at")),
            ended_at=_opt_str(info.get("ended_at")),
            elapsed_s=finite_float(info.get("elapsed_s")),
            ended=Ended(ended) if ended in _ENDINGS else None,
            out=_opt_str(info.get("out")),
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


@dataclass(frozen=True, slots=True)
class CountDelta(JsonRecord):
    """A count in run A and run B, and B - A."""

    a: int
    b: int
    delta: int


@dataclass(frozen=True, slots=True)
class ValueDelta(JsonRecord):
    """A figure in run A and run B, and B - A; None where a run has no such figure."""

    a: float | None
    b: float | None
    delta: float | None


@dataclass(frozen=True, slots=True)
class TokenDeltas(JsonRecord):
    """Token sums of both runs."""

    prompt: CountDelta
    completion: CountDelta
    total: CountDelta


@dataclass(frozen=True, slots=True)
class ChangedAnswer(JsonRecord):
    """One example of a changed answer."""

    request_id: str | None
    question: str | None
    answer_a: str | None
    answer_b: str | None


@dataclass(frozen=True, slots=True)
class DiffReport(JsonRecord):
    """What :func:`diff` found; ``to_dict()`` is ``docpipe diff --json``."""

    a: str
    b: str
    key: tuple[str, ...]  # the columns rows were paired by
    rows_a: int
    rows_b: int
    common: int
    changed: int
    unchanged: int
    new: int  # in B only
    gone: int  # in A only
    status_changes: Mapping[str, int]  # "ok->failed" -> rows
    tokens: TokenDeltas
    cost_usd: ValueDelta
    failure_rate: ValueDelta
    examples: tuple[ChangedAnswer, ...]
    new_ids: tuple[str | None, ...]
    gone_ids: tuple[str | None, ...]
    changed_file: str | None
    # agreement per question (pipeline/agreement.py): runs with different models, or two nights
    models_a: tuple[str, ...] = ()
    models_b: tuple[str, ...] = ()
    agreement: float | None = None
    by_question: tuple[QuestionAgreement, ...] = ()


@dataclass(frozen=True, slots=True)
class MergeSource(JsonRecord):
    """One folder merged and the rows it held."""

    path: str
    rows: int


@dataclass(frozen=True, slots=True)
class MergeReport(JsonRecord):
    """What :func:`merge` wrote; ``to_dict()`` is ``docpipe merge --json``."""

    out: str
    rows: int
    duplicates_dropped: int
    sources: tuple[MergeSource, ...]


@dataclass(frozen=True, slots=True)
class MergeInfo(JsonRecord):
    """The ``_run.json`` a merge writes: its sources' runs, for throughput later."""

    kind: Literal["merge"]
    merged_from: tuple[str, ...]
    rows: int
    duplicates_dropped: int
    written_at: str
    runs: tuple[RunRef, ...]


# -------------------------------------------------------------------------- values

# Values come from files: any of them may be None, pd.NA, NaN or NaT. These turn
# them into plain Python or None, so no record ever holds NaN.


def _opt_int(v: Any) -> int | None:
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return int(v)
    f = finite_float(v)
    return None if f is None else round(f)


def _opt_str(v: Any) -> str | None:
    if isinstance(v, str):
        return v
    if v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and math.isnan(v)):
        return None
    return str(v)


def _row_status(v: Any) -> Status:
    # _conform_frame refused anything else already
    return Status.OK if v == Status.OK else Status.FAILED


def _counts(s: pd.Series) -> dict[str, int]:
    """Non-null values -> rows, most common first."""
    return {str(k): int(n) for k, n in s.dropna().value_counts().items()}


def _time(text: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(text).astimezone() if text else None
    except ValueError:
        return None


def _na(x: float | None, spec: str = ".0f") -> str:
    return "n/a" if x is None else format(x, spec)


# -------------------------------------------------------------------------- reading


def _locate(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(run folder, results file) for a folder or a results file."""
    p = Path(path)
    if p.is_dir():
        return p, p / RESULTS_FILE
    if p.suffix == ".parquet":
        return p.parent, p
    raise UsageError(f"{p}: not an output folder or a results .parquet file")


def _read(path: str | os.PathLike[str], columns: list[str], *, journal_ok: bool = False) -> pd.DataFrame:
    folder, results = _locate(path)
    if not results.exists():
        if journal_ok and (folder / JOURNAL_DIR).is_dir() and RunDir(folder).parts():
            # a run still going (or killed): its journal holds the outcomes so far
            table = RunDir(folder).latest()
            frame = table.select([c for c in columns if c in table.column_names]).to_pandas()
            return _conform_frame(frame, columns, folder / JOURNAL_DIR)
        raise UsageError(f"{results}: not found; is {folder} a docpipe output folder?")
    try:
        present = set(pq.read_schema(results).names)
        frame = pd.read_parquet(results, columns=[c for c in columns if c in present])
    except (OSError, pa.ArrowInvalid) as e:
        raise UsageError(f"{results}: cannot read: {e}") from None
    return _conform_frame(frame, columns, results)


def _conform_frame(df: pd.DataFrame, columns: list[str], source: Path) -> pd.DataFrame:
    """Every column asked for, int columns as nullable Int64 and float columns as
    float64: a journal read without pandas metadata gives floats for ints, an older
    file may lack a column, and any column may hold nulls."""
    out: dict[str, pd.Series] = {}
    for c in columns:
        s = df[c] if c in df.columns else pd.Series([None] * len(df), index=df.index, dtype="object")
        if c in _INT_COLUMNS:
            s = pd.to_numeric(s, errors="coerce").round().astype("Int64")
        elif c in _FLOAT_COLUMNS:
            s = pd.to_numeric(s, errors="coerce").astype("float64")
        out[c] = s
    frame = pd.DataFrame(out, index=df.index)
    status = frame["status"]
    bad = status[~status.isin(_STATUSES)]
    if len(bad):
        raise UsageError(f"{source}: column 'status' holds {_opt_str(bad.iloc[0])!r} (row {bad.index[0]}); "
                         "expected 'ok' or 'failed': is it a docpipe results file?")  # fmt: skip
    return frame


def _run_refs(path: str | os.PathLike[str]) -> list[RunRef]:
    """The runs behind a folder: its _run.json, or the sources a merge recorded."""
    folder, _ = _locate(path)
    info = RunDir(folder).read_run_info()
    if not isinstance(info, dict):
        return []
    runs = info.get("runs")
    if isinstance(runs, list):
        return [RunRef.from_info(r) for r in runs if isinstance(r, dict)]
    return [RunRef.from_info(info)]


# -------------------------------------------------------------------------- summary


def summarize(paths: Sequence[str | os.PathLike[str]]) -> SummaryReport:
    """Counts, tokens, cost, latency percentiles, throughput, attempts, slowest and
    failed rows over one or more output folders (summed, as for shards)."""
    if not paths:
        raise UsageError("summary needs at least one output folder")
    frames, sources, runs = [], [], []
    for p in paths:
        df = _read(p, _SUMMARY_COLUMNS, journal_ok=True)
        refs = _run_refs(p)
        frames.append(df)
        runs += refs
        sources.append(Source(path=str(p), rows=len(df), run_ids=tuple(r.run_id for r in refs)))
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    failed = df[df["status"] != "ok"]
    copied = df["reused_from"].notna()
    paid = df[~copied]  # what tonight spent: copied-forward rows were paid by an earlier run
    cost, saved = paid["cost_usd"], df.loc[copied, "cost_usd"]
    return SummaryReport(
        sources=tuple(sources),
        rows=len(df),
        status={_row_status(k): n for k, n in _counts(df["status"]).items()},
        error_types=_counts(df["error_type"]),
        tokens=TokenTotals(*(int(paid[f"{k}_tokens"].sum()) for k in _TOKEN_KINDS)),
        cost_usd=float(cost.sum()) if cost.notna().any() else None,
        reused=int(copied.sum()),
        cost_saved_usd=float(saved.sum()) if saved.notna().any() else None,
        latency_ms=_latency(df["latency_ms"]),
        throughput=_throughput(df, runs),
        attempts=dict(sorted((int(k), n) for k, n in _counts(df["attempts"]).items())),
        slowest=_slowest(df),
        failed_rows=len(failed),
        failed=tuple(_failed_row(r) for r in failed.head(TOP).to_dict("records")),
        fields=_answer_fields(paths),
    )


def _answer_fields(paths: Sequence[str | os.PathLike[str]]) -> tuple[AnswerField, ...]:
    """Null shares (and enum/boolean value counts) of the structured-answer columns, summed
    over the folders whose results.parquet carries an answer schema in its metadata."""
    from .structured import METADATA_KEY, compile_spec

    nulls: dict[str, list[int]] = {}  # column -> [rows, nulls]
    values: dict[str, dict[str, int] | None] = {}
    for p in paths:
        results = _locate(p)[1]
        schema = pq.read_schema(results) if results.exists() else None
        raw = (schema.metadata or {}).get(METADATA_KEY) if schema is not None else None
        if schema is None or raw is None:
            continue
        spec = compile_spec(json.loads(raw))
        props = spec.schema.get("properties", {})
        # compaction appends the answer columns last (renamed answer_<name> where a name was taken)
        names = schema.names[len(schema.names) - len(spec.columns) :]
        table = pq.read_table(results, columns=names)
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
    return tuple(_answer_field(name, rows, n, values[name]) for name, (rows, n) in nulls.items())


def _answer_field(name: str, rows: int, nulls: int, values: dict[str, int] | None) -> AnswerField:
    ordered = None if values is None else dict(sorted(values.items(), key=lambda kv: -kv[1]))
    return AnswerField(column=name, rows=rows, nulls=nulls, null_share=nulls / rows if rows else 0.0, values=ordered)


def _value_counts(col: pa.ChunkedArray[Any]) -> tuple[list[str], list[int]]:
    import pyarrow.compute as pc

    counted = pc.value_counts(col.drop_null())
    keys = [str(v).lower() if isinstance(v, bool) else str(v) for v in counted.field("values").to_pylist()]
    return keys, [int(n or 0) for n in counted.field("counts").to_pylist()]


def _latency(s: pd.Series) -> LatencyStats:
    lat = s.dropna()
    if not len(lat):
        return LatencyStats(rows=0, p50=None, p95=None, p99=None)
    p50, p95, p99 = (finite_float(lat.quantile(q)) for q in (0.50, 0.95, 0.99))
    return LatencyStats(rows=len(lat), p50=p50, p95=p95, p99=p99)


def _slowest(df: pd.DataFrame) -> tuple[SlowRow, ...]:
    # only rows with a latency: nlargest would fill up with NaN rows (issue 16, defect 1)
    timed = df[df["latency_ms"].notna()].nlargest(TOP, "latency_ms")
    return tuple(
        SlowRow(request_id=str(r["request_id"]), file_url=_opt_str(r["file_url"]),
                latency_ms=float(r["latency_ms"]), attempts=_opt_int(r["attempts"]), status=_row_status(r["status"]))
        for r in timed.to_dict("records")
    )  # fmt: skip


def _failed_row(r: Mapping[Any, Any]) -> FailedRow:
    return FailedRow(request_id=str(r["request_id"]), file_url=_opt_str(r["file_url"]),
                     error_type=_opt_str(r["error_type"]), http_status=_opt_int(r["http_status"]),
                     error_message=_opt_str(r["error_message"]))  # fmt: skip


def _throughput(df: pd.DataFrame, runs: list[RunRef]) -> Throughput | None:
    ids = {r.run_id for r in runs}
    if not runs or None in ids:
        return None
    if len(runs) == 1:
        elapsed = runs[0].elapsed_s
    else:
        starts = [t for r in runs if (t := _time(r.started_at))]
        ends = [t for r in runs if (t := _time(r.ended_at))]
        if len(starts) < len(runs) or len(ends) < len(runs):
            return None
        elapsed = (max(ends) - min(starts)).total_seconds()
    if not elapsed or elapsed <= 0:
        return None
    rows = int(df["run_id"].isin(ids).sum())
    return Throughput(rows=rows, elapsed_s=elapsed, rows_per_s=rows / elapsed)


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


# -------------------------------------------------------------------------- diff


def diff(
    a: str | os.PathLike[str],
    b: str | os.PathLike[str],
    *,
    key: DiffKey = "request_id",
    out_changed: str | os.PathLike[str] | None = None,
) -> DiffReport:
    """What changed from run A to run B: answers, new and gone rows, tokens, cost,
    failure rate. Writes the changed rows to ``out_changed`` (Parquet) when given."""
    if key not in _DIFF_KEYS:
        raise UsageError(f"diff key must be one of {sorted(_DIFF_KEYS)}, not {key!r}")
    on = _DIFF_KEYS[key]
    da, db = _read(a, _DIFF_COLUMNS), _read(b, _DIFF_COLUMNS)
    # one row per key: with key=content a manifest may repeat a request
    both = da.drop_duplicates(on, keep="last").merge(db.drop_duplicates(on, keep="last"), on=on, how="outer",
                                                    suffixes=("_a", "_b"), indicator=True)  # fmt: skip
    common = both[both["_merge"] == "both"]
    changed = _changed_rows(common, on)
    st = common["status_a"].astype(str) + "->" + common["status_b"].astype(str)
    st = st[common["status_a"].to_numpy() != common["status_b"].to_numpy()]
    only_b, only_a = both[both["_merge"] == "right_only"], both[both["_merge"] == "left_only"]
    share, by_question = agreement(common[_side("question", on, "b")], common["answer_a"], common["answer_b"],
                                   common["status_a"] == "ok", common["status_b"] == "ok")  # fmt: skip
    changed_file = None
    if out_changed is not None:
        target = Path(out_changed)
        target.parent.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pandas(changed, preserve_index=False)
        atomic_write_table(target, [table], table.schema)
        changed_file = str(target)
    return DiffReport(
        a=str(a), b=str(b), key=tuple(on), rows_a=len(da), rows_b=len(db), common=len(common),
        changed=len(changed), unchanged=len(common) - len(changed), new=len(only_b), gone=len(only_a),
        status_changes=_counts(st),
        tokens=TokenDeltas(*(_count_delta(da, db, f"{k}_tokens") for k in _TOKEN_KINDS)),
        cost_usd=_value_delta(_cost(da), _cost(db)),
        failure_rate=_value_delta(_failure_rate(da), _failure_rate(db)),
        examples=tuple(ChangedAnswer(*(_opt_str(r[c]) for c in ("request_id", "question", "answer_a", "answer_b")))
                       for r in changed.head(5).to_dict("records")),
        new_ids=tuple(_opt_str(x) for x in only_b[_side("request_id", on, "b")].head(TOP)),
        gone_ids=tuple(_opt_str(x) for x in only_a[_side("request_id", on, "a")].head(TOP)),
        changed_file=changed_file, models_a=_models(da), models_b=_models(db), agreement=share,
        by_question=by_question,
    )  # fmt: skip


def _models(df: pd.DataFrame) -> tuple[str, ...]:
    """The models that answered (or were asked last) in a run, most rows first."""
    return tuple(str(m) for m in df["model"].dropna().astype(str).value_counts().index)


def _side(name: str, on: list[str], side: str) -> str:
    """A column of the joined frame: key columns are shared, others carry a suffix."""
    return name if name in on else f"{name}_{side}"


def _changed_rows(common: pd.DataFrame, on: list[str]) -> pd.DataFrame:
    """The paired rows whose answers differ (two missing answers are the same)."""
    ans_a, ans_b = common["answer_a"], common["answer_b"]
    same = (ans_a == ans_b).fillna(False).astype(bool) | (ans_a.isna() & ans_b.isna())
    changed = common[~same.to_numpy()]
    return pd.DataFrame({
        "request_id": changed[_side("request_id", on, "b")].astype("string"),
        "file_url": changed[_side("file_url", on, "b")].astype("string"),
        "question": changed[_side("question", on, "b")].astype("string"),
        "answer_a": changed["answer_a"].astype("string"),
        "answer_b": changed["answer_b"].astype("string"),
        "status_a": changed["status_a"].astype("string"),
        "status_b": changed["status_b"].astype("string"),
    })  # fmt: skip


def _count_delta(da: pd.DataFrame, db: pd.DataFrame, column: str) -> CountDelta:
    a, b = int(da[column].sum()), int(db[column].sum())
    return CountDelta(a=a, b=b, delta=b - a)


def _value_delta(a: float | None, b: float | None) -> ValueDelta:
    return ValueDelta(a=a, b=b, delta=None if a is None or b is None else b - a)


def _cost(df: pd.DataFrame) -> float | None:
    return float(df["cost_usd"].sum()) if df["cost_usd"].notna().any() else None


def _failure_rate(df: pd.DataFrame) -> float | None:
    return float((df["status"] != "ok").mean()) if len(df) else None


def _fmt(x: float | None, pct: bool = False, money: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{x:.2%}" if pct else f"${x:.4f}" if money else f"{x}"


def _signed(x: float | None, pct: bool = False, money: bool = False) -> str:
    if x is None:
        return "n/a"
    return ("+" if x >= 0 else "-") + _fmt(abs(x), pct, money)


def format_diff(d: DiffReport) -> str:
    """The comparison as a few readable lines (what ``docpipe diff`` prints)."""
    t, c, f = d.tokens.total, d.cost_usd, d.failure_rate
    lines = [
        f"A: {d.a} ({d.rows_a} rows)   B: {d.b} ({d.rows_b} rows), paired by {' + '.join(d.key)}",
        f"answers: {d.changed} changed, {d.unchanged} unchanged; {d.new} new in B, {d.gone} gone from A",
        f"tokens: {t.a} -> {t.b} ({_signed(t.delta)})",
        f"cost: {_fmt(c.a, money=True)} -> {_fmt(c.b, money=True)} ({_signed(c.delta, money=True)})",
        f"failure rate: {_fmt(f.a, pct=True)} -> {_fmt(f.b, pct=True)} ({_signed(f.delta, pct=True)})",
    ]
    models = f" ({'/'.join(d.models_a) or '?'} vs {'/'.join(d.models_b) or '?'})" if d.models_a != d.models_b else ""
    lines += format_agreement(d.agreement, d.by_question, models)
    if d.status_changes:
        lines.append("status changes: " + ", ".join(f"{k} {n}" for k, n in sorted(d.status_changes.items())))
    for e in d.examples:
        lines.append(f"  {e.request_id}: {_clip(e.answer_a)!r} -> {_clip(e.answer_b)!r}")
    if d.changed_file:
        lines.append(f"changed rows written to {d.changed_file}")
    return "\n".join(lines)


def _clip(text: str | None, n: int = 60) -> str | None:
    return text if text is None or len(text) <= n else text[: n - 1] + "…"


# -------------------------------------------------------------------------- merge


def merge(paths: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]) -> MergeReport:
    """Concatenate several folders' results into ``out/results.parquet``, one row per
    request_id (its latest outcome), and record the source runs in ``out/_run.json``."""
    if len(paths) < 1:
        raise UsageError("merge needs at least one output folder")
    files = [_locate(p)[1] for p in paths]
    for f in files:
        if not f.exists():
            raise UsageError(f"{f}: not found; is {f.parent} a docpipe output folder?")
    target = Path(out)
    if target.resolve() in {f.parent.resolve() for f in files}:
        raise UsageError(f"{target}: the merge target must not be one of the folders merged")
    if (target / JOURNAL_DIR).is_dir():
        raise UsageError(f"{target}: is a run's output folder (it has a journal); merge into a new folder")
    try:
        schemas = [pq.read_schema(f) for f in files]
        schema = pa.unify_schemas([s.remove_metadata() for s in schemas], promote_options="default")
    except (OSError, pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise UsageError(f"cannot merge {', '.join(map(str, files))}: {e}") from None
    schema = schema.with_metadata(pandas_metadata(schema.names))
    keep = _winners(files)
    target.mkdir(parents=True, exist_ok=True)
    rows = atomic_write_table(target / RESULTS_FILE, _kept_batches(files, keep, schema), schema)
    dropped = sum(len(k) for k in keep) - rows
    info = MergeInfo(kind="merge", merged_from=tuple(str(p) for p in paths), rows=rows, duplicates_dropped=dropped,
                     written_at=datetime.now().astimezone().isoformat(),
                     runs=tuple(r for p in paths for r in _run_refs(p)))  # fmt: skip
    RunDir(target).write_run_info(info.to_dict())
    sources = tuple(MergeSource(path=str(p), rows=len(k)) for p, k in zip(paths, keep, strict=True))
    return MergeReport(out=str(target / RESULTS_FILE), rows=rows, duplicates_dropped=dropped, sources=sources)


def format_merge(m: MergeReport) -> str:
    """One line: rows, folders, where (what ``docpipe merge`` prints)."""
    dropped = f" ({m.duplicates_dropped} older duplicates dropped)" if m.duplicates_dropped else ""
    return f"{m.rows} rows from {len(m.sources)} folders -> {m.out}{dropped}"


def _winners(files: list[Path]) -> list[np.ndarray]:
    """Per file, a mask of the rows that hold the latest outcome of their request_id."""
    ids, times, owner = [], [], []
    never = pa.scalar(np.iinfo(np.int64).min, pa.int64())  # a missing time loses to any time
    for i, f in enumerate(files):
        t = pq.read_table(f, columns=["request_id", "completed_at"])
        ids.append(t["request_id"].combine_chunks().cast(pa.string()))
        stamps: pa.ChunkedArray[Any] = t["completed_at"].cast(pa.int64())
        times.append(stamps.fill_null(never).to_numpy())
        owner.append(np.full(t.num_rows, i, dtype=np.int64))
    sizes = [len(x) for x in ids]
    if not sum(sizes):
        return [np.zeros(0, dtype=bool) for _ in files]
    codes = pa.chunked_array(ids).combine_chunks().dictionary_encode().indices.to_numpy(zero_copy_only=False)
    when = np.concatenate(times)
    src = np.concatenate(owner)
    pos = np.arange(len(codes))
    order = np.lexsort((pos, src, when, codes))  # by id, then time, folder, position
    last = np.ones(len(order), dtype=bool)
    last[:-1] = codes[order][1:] != codes[order][:-1]
    mask = np.zeros(len(codes), dtype=bool)
    mask[order[last]] = True
    return np.split(mask, np.cumsum(sizes)[:-1])


def _kept_batches(files: list[Path], keep: list[np.ndarray], schema: pa.Schema) -> Iterator[pa.Table]:
    for f, mask in zip(files, keep, strict=True):
        offset = 0
        for batch in pq.ParquetFile(f).iter_batches(batch_size=65536):
            part = mask[offset : offset + batch.num_rows]
            offset += batch.num_rows
            if part.any():
                yield _conform(pa.Table.from_batches([batch]).filter(pa.array(part)), schema, f)


def _conform(table: pa.Table, schema: pa.Schema, source: Path) -> pa.Table:
    arrays = []
    for fld in schema:
        if fld.name in table.column_names:
            col = table[fld.name]
            try:
                arrays.append(col if col.type == fld.type else col.cast(fld.type))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise UsageError(f"{source}: column {fld.name!r} cannot be merged: {e}") from None
        else:
            arrays.append(pa.nulls(table.num_rows, fld.type))
    return pa.Table.from_arrays(arrays, schema=schema)
