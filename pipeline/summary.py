"""Reading finished output folders: ``summary``, ``diff`` and ``merge``.

An output folder is ``OUT/results.parquet`` plus ``OUT/_run.json`` (see
:mod:`pipeline.rundir`). Every function here accepts the folder or the
results file itself, and returns a frozen record (:class:`SummaryReport`,
:class:`DiffReport`, :class:`MergeReport`) whose ``to_dict()`` is what ``--json``
prints; ``format_*`` turn the same records into text.

``summarize`` and its records live in :mod:`pipeline.digest` and
:mod:`pipeline.htmlreport.tally` (pandas-free, shared with the report every run
prints and ``OUT/_report.html``), re-exported here. Decisions of ``diff`` and ``merge``:

- ``diff`` pairs rows by ``request_id``; when the two runs used different models
  or prompts and the manifest has no ``id`` column, the hashed ids differ, so
  pair by ``file_url`` and ``question`` instead (``key="content"``).
- ``merge`` keeps the latest outcome (``completed_at``, then the later folder)
  per ``request_id`` and streams: memory holds ids, not the tables.

This module imports pandas; the run path must not import it, nor the report a run prints.
"""

from __future__ import annotations

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
from .digest import (
    AnswerField,
    FailedRow,
    LatencyStats,
    RunRef,
    SlowRow,
    Source,
    SummaryReport,
    Throughput,
    TokenTotals,
    format_summary_report,
    locate,
    run_refs,
)
from .errors import UsageError
from .htmlreport.tally import summarize
from .records import Status
from .report import JsonRecord, dumps
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
_DIFF_COLUMNS = ["request_id", "file_url", "question", "answer", "status", "prompt_tokens",
                 "completion_tokens", "total_tokens", "cost_usd", "model"]  # fmt: skip
_DIFF_KEYS: dict[str, list[str]] = {"request_id": ["request_id"], "content": ["file_url", "question"]}
_INT_COLUMNS = {"prompt_tokens", "completion_tokens", "total_tokens"}
_FLOAT_COLUMNS = {"cost_usd"}
_TOKEN_KINDS = ("prompt", "completion", "total")

# -------------------------------------------------------------------------- records


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


def _opt_str(v: Any) -> str | None:
    if isinstance(v, str):
        return v
    if v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and math.isnan(v)):
        return None
    return str(v)


def _counts(s: pd.Series) -> dict[str, int]:
    """Non-null values -> rows, most common first."""
    return {str(k): int(n) for k, n in s.dropna().value_counts().items()}


# -------------------------------------------------------------------------- reading


def _read(path: str | os.PathLike[str], columns: list[str]) -> pd.DataFrame:
    folder, results = locate(path)
    if not results.exists():
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
    files = [locate(p)[1] for p in paths]
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
                     runs=tuple(r for p in paths for r in run_refs(p)))  # fmt: skip
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
