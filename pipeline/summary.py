"""Reading finished output folders: ``summary``, ``diff`` and ``merge``.

An output folder is ``OUT/results.parquet`` plus ``OUT/_run.json`` (see
:mod:`pipeline.results`). Every function here accepts the folder or the
results file itself.

Decisions:

- Latency percentiles are over every row with a ``latency_ms`` (ok and failed
  rows that reached the gateway), linear interpolation as ``pandas.quantile``.
- Throughput is the rows the latest run produced (``run_id`` of ``_run.json``)
  divided by its ``elapsed_s``; over several folders (shards run side by side)
  it is their rows over the wall-clock span from the first start to the last end.
- ``diff`` pairs rows by ``request_id``; when the two runs used different models
  or prompts and the manifest has no ``id`` column, the hashed ids differ, so
  pair by ``file_url`` and ``question`` instead (``key="content"``).
- ``merge`` keeps the latest outcome (``completed_at``, then the later folder)
  per ``request_id`` and streams: memory holds ids, not the tables.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import UsageError
from .rundir import RunDir
from .schema import pandas_metadata
from .storage import JOURNAL_DIR, RESULTS_FILE, atomic_write_table

TOP = 10
_SUMMARY_COLUMNS = ["request_id", "file_url", "status", "error_type", "error_message", "http_status",
                    "prompt_tokens", "completion_tokens", "total_tokens", "cost_usd", "latency_ms",
                    "attempts", "run_id"]  # fmt: skip
_DIFF_COLUMNS = ["request_id", "file_url", "question", "answer", "status", "prompt_tokens",
                 "completion_tokens", "total_tokens", "cost_usd"]  # fmt: skip
_DIFF_KEYS = {"request_id": ["request_id"], "content": ["file_url", "question"]}


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
            return table.select([c for c in columns if c in table.column_names]).to_pandas()
        raise UsageError(f"{results}: not found; is {folder} a docpipe output folder?")
    try:
        present = set(pq.read_schema(results).names)
        return pd.read_parquet(results, columns=[c for c in columns if c in present])
    except (OSError, pa.ArrowInvalid) as e:
        raise UsageError(f"{results}: cannot read: {e}") from None


def _run_infos(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The runs behind a folder: its _run.json, or the sources a merge recorded."""
    folder, _ = _locate(path)
    info = RunDir(folder).read_run_info()
    if not info:
        return []
    return list(info["runs"]) if isinstance(info.get("runs"), list) else [info]


def _time(text: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(text))
    except ValueError:
        return None


def _num(x: Any) -> Any:
    """numpy/pandas scalars -> plain Python for JSON."""
    if x is None or x is pd.NA or (isinstance(x, float) and np.isnan(x)):
        return None
    return x.item() if hasattr(x, "item") else x


def _records(df: pd.DataFrame, columns: list[str]) -> list[dict[str, Any]]:
    cols = [c for c in columns if c in df.columns]
    return [{c: _num(v) for c, v in zip(cols, row)} for row in df[cols].itertuples(index=False)]


# -------------------------------------------------------------------------- summary


def summarize(paths: Sequence[str | os.PathLike[str]]) -> dict[str, Any]:
    """Counts, tokens, cost, latency percentiles, throughput, attempts, slowest and
    failed rows over one or more output folders."""
    if not paths:
        raise UsageError("summary needs at least one output folder")
    frames, sources, runs = [], [], []
    for p in paths:
        df = _read(p, _SUMMARY_COLUMNS, journal_ok=True)
        frames.append(df)
        infos = _run_infos(p)
        runs += infos
        sources.append({"path": str(p), "rows": len(df), "run_ids": [i.get("run_id") for i in infos]})
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    failed = df[df["status"] != "ok"]
    latency = df["latency_ms"].dropna()
    has_cost = "cost_usd" in df and df["cost_usd"].notna().any()
    return {
        "sources": sources,
        "rows": len(df),
        "status": {str(k): int(v) for k, v in df["status"].value_counts().items()},
        "error_types": {str(k): int(v) for k, v in df["error_type"].dropna().value_counts().items()},
        "tokens": {k: int(df[f"{k}_tokens"].sum()) for k in ("prompt", "completion", "total")},
        "cost_usd": float(df["cost_usd"].sum()) if has_cost else None,
        "latency_ms": {
            "rows": len(latency),
            **{f"p{q}": (float(latency.quantile(q / 100)) if len(latency) else None) for q in (50, 95, 99)},
        },
        "throughput": _throughput(df, runs),
        "attempts": {int(k): int(v) for k, v in df["attempts"].value_counts().sort_index().items()},
        "slowest": _records(df.nlargest(TOP, "latency_ms"),
                            ["request_id", "file_url", "latency_ms", "attempts", "status"]),  # fmt: skip
        "failed_rows": len(failed),
        "failed": _records(failed.head(TOP),
                           ["request_id", "file_url", "error_type", "http_status", "error_message"]),  # fmt: skip
    }


def _throughput(df: pd.DataFrame, runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    ids = {r.get("run_id") for r in runs}
    if not runs or None in ids:
        return None
    if len(runs) == 1:
        elapsed = runs[0].get("elapsed_s")
    else:
        starts = [_time(r.get("started_at")) for r in runs]
        ends = [_time(r.get("ended_at")) for r in runs]
        if None in starts or None in ends:
            return None
        elapsed = (max(ends) - min(starts)).total_seconds()  # type: ignore[type-var,operator]
    if not elapsed or elapsed <= 0:
        return None
    rows = int(df["run_id"].isin(ids).sum())
    return {"rows": rows, "elapsed_s": float(elapsed), "rows_per_s": rows / float(elapsed)}


def format_summary_report(d: dict[str, Any]) -> str:
    """The summary as a few readable lines (what ``docpipe summary`` prints)."""
    where = ", ".join(s["path"] for s in d["sources"])
    status = ", ".join(f"{n} {k}" for k, n in sorted(d["status"].items(), key=lambda kv: kv[0] != "ok"))
    lines = [f"{d['rows']} rows in {where}: {status or 'none'}"]
    if d["error_types"]:
        lines.append("errors: " + ", ".join(f"{k} {n}" for k, n in sorted(d["error_types"].items())))
    t = d["tokens"]
    cost = f"; cost ${d['cost_usd']:.4f}" if d["cost_usd"] is not None else ""
    lines.append(f"tokens: {t['prompt']} prompt + {t['completion']} completion = {t['total']}{cost}")
    lat = d["latency_ms"]
    if lat["rows"]:
        lines.append(f"latency: p50 {lat['p50']:.0f} ms, p95 {lat['p95']:.0f} ms, p99 {lat['p99']:.0f} ms "
                     f"({lat['rows']} rows)")  # fmt: skip
    if d["throughput"]:
        tp = d["throughput"]
        lines.append(f"throughput: {tp['rows']} rows in {tp['elapsed_s']:.1f} s = {tp['rows_per_s']:.2f} rows/s")
    lines.append("attempts per row: " + ", ".join(f"{k} -> {n} rows" for k, n in d["attempts"].items()))
    if d["slowest"]:
        lines.append("slowest (ms, request_id, status, attempts, file_url):")
        w = max(len(str(r["request_id"])) for r in d["slowest"])
        lines += [f"  {r['latency_ms']:>9.0f}  {r['request_id']:<{w}}  {r['status']:<6}  {r['attempts']:>2}  "
                  f"{r.get('file_url') or ''}" for r in d["slowest"]]  # fmt: skip
    if d["failed"]:
        lines.append(f"failed ({len(d['failed'])} of {d['failed_rows']}):")
        lines += [f"  {r['request_id']}  {r['error_type']}"
                  + (f" HTTP {r['http_status']}" if r.get("http_status") else "")
                  + f"  {r.get('error_message') or ''}" for r in d["failed"]]  # fmt: skip
    return "\n".join(lines)


# -------------------------------------------------------------------------- diff


def diff(
    a: str | os.PathLike[str],
    b: str | os.PathLike[str],
    *,
    key: str = "request_id",
    out_changed: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """What changed from run A to run B: answers, new and gone rows, tokens, cost,
    failure rate. Writes the changed rows to ``out_changed`` (Parquet) when given."""
    if key not in _DIFF_KEYS:
        raise UsageError(f"diff key must be one of {sorted(_DIFF_KEYS)}, not {key!r}")
    on = _DIFF_KEYS[key]
    da, db = _read(a, _DIFF_COLUMNS), _read(b, _DIFF_COLUMNS)
    # one row per key: with key=content a manifest may repeat a request
    ka, kb = da.drop_duplicates(on, keep="last"), db.drop_duplicates(on, keep="last")
    both = ka.merge(kb, on=on, how="outer", suffixes=("_a", "_b"), indicator=True)
    common = both[both["_merge"] == "both"]
    ans_a, ans_b = common["answer_a"], common["answer_b"]
    same = (ans_a == ans_b).fillna(False).astype(bool) | (ans_a.isna() & ans_b.isna())
    changed = common[~same.to_numpy()]

    def col(name: str, side: str = "b") -> str:
        """A column of the joined frame: key columns are shared, others carry a suffix."""
        return name if name in on else f"{name}_{side}"

    changed_rows = pd.DataFrame({
        "request_id": changed[col("request_id")].astype("string"),
        "file_url": changed[col("file_url")].astype("string"),
        "question": changed[col("question")].astype("string"),
        "answer_a": changed["answer_a"].astype("string"),
        "answer_b": changed["answer_b"].astype("string"),
        "status_a": changed["status_a"].astype("string"),
        "status_b": changed["status_b"].astype("string"),
    })  # fmt: skip
    st = common["status_a"].astype(str) + "->" + common["status_b"].astype(str)
    st = st[common["status_a"].to_numpy() != common["status_b"].to_numpy()]
    only_b, only_a = both[both["_merge"] == "right_only"], both[both["_merge"] == "left_only"]
    result: dict[str, Any] = {
        "a": str(a),
        "b": str(b),
        "key": on,
        "rows_a": len(da),
        "rows_b": len(db),
        "common": len(common),
        "changed": len(changed_rows),
        "unchanged": len(common) - len(changed_rows),
        "new": len(only_b),
        "gone": len(only_a),
        "status_changes": {str(k): int(v) for k, v in st.value_counts().items()},
        "tokens": {k: _delta(int(da[c].sum()), int(db[c].sum())) for k, c in
                   (("prompt", "prompt_tokens"), ("completion", "completion_tokens"), ("total", "total_tokens"))},
        "cost_usd": _delta(_cost(da), _cost(db)),
        "failure_rate": _delta(_failure_rate(da), _failure_rate(db)),
        "examples": _records(changed_rows.head(5), ["request_id", "question", "answer_a", "answer_b"]),
        "new_ids": [_num(x) for x in only_b[col("request_id", "b")].head(TOP)],
        "gone_ids": [_num(x) for x in only_a[col("request_id", "a")].head(TOP)],
        "changed_file": None,
    }  # fmt: skip
    if out_changed is not None:
        target = Path(out_changed)
        target.parent.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pandas(changed_rows, preserve_index=False)
        atomic_write_table(target, [table], table.schema)
        result["changed_file"] = str(target)
    return result


def _delta(a: float | int | None, b: float | int | None) -> dict[str, Any]:
    return {"a": a, "b": b, "delta": None if a is None or b is None else b - a}


def _cost(df: pd.DataFrame) -> float | None:
    return float(df["cost_usd"].sum()) if df["cost_usd"].notna().any() else None


def _failure_rate(df: pd.DataFrame) -> float | None:
    return float((df["status"] != "ok").mean()) if len(df) else None


def format_diff(d: dict[str, Any]) -> str:
    def fmt(x: Any, pct: bool = False, money: bool = False) -> str:
        if x is None:
            return "n/a"
        return f"{x:.2%}" if pct else f"${x:.4f}" if money else f"{x}"

    def signed(x: Any, pct: bool = False, money: bool = False) -> str:
        if x is None:
            return "n/a"
        return ("+" if x >= 0 else "-") + fmt(abs(x), pct, money)

    t, c, f = d["tokens"]["total"], d["cost_usd"], d["failure_rate"]
    lines = [
        f"A: {d['a']} ({d['rows_a']} rows)   B: {d['b']} ({d['rows_b']} rows), paired by {' + '.join(d['key'])}",
        f"answers: {d['changed']} changed, {d['unchanged']} unchanged; {d['new']} new in B, {d['gone']} gone from A",
        f"tokens: {t['a']} -> {t['b']} ({signed(t['delta'])})",
        f"cost: {fmt(c['a'], money=True)} -> {fmt(c['b'], money=True)} ({signed(c['delta'], money=True)})",
        f"failure rate: {fmt(f['a'], pct=True)} -> {fmt(f['b'], pct=True)} ({signed(f['delta'], pct=True)})",
    ]
    if d["status_changes"]:
        lines.append("status changes: " + ", ".join(f"{k} {n}" for k, n in sorted(d["status_changes"].items())))
    for e in d["examples"]:
        lines.append(f"  {e['request_id']}: {_clip(e['answer_a'])!r} -> {_clip(e['answer_b'])!r}")
    if d["changed_file"]:
        lines.append(f"changed rows written to {d['changed_file']}")
    return "\n".join(lines)


def _clip(text: str | None, n: int = 60) -> str | None:
    return text if text is None or len(text) <= n else text[: n - 1] + "…"


# -------------------------------------------------------------------------- merge


def merge(paths: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]) -> dict[str, Any]:
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
    runs = [r for p in paths for r in _run_infos(p)]
    info = {
        "kind": "merge",
        "merged_from": [str(p) for p in paths],
        "rows": rows,
        "duplicates_dropped": sum(len(k) for k in keep) - rows,
        "written_at": datetime.now().astimezone().isoformat(),
        "runs": [{k: r.get(k) for k in ("run_id", "started_at", "ended_at", "elapsed_s", "ended", "out")}
                 for r in runs],  # fmt: skip
    }
    RunDir(target).write_run_info(info)
    return {"out": str(target / RESULTS_FILE), "rows": rows, "duplicates_dropped": info["duplicates_dropped"],
            "sources": [{"path": str(p), "rows": len(k)} for p, k in zip(paths, keep)]}  # fmt: skip


def _winners(files: list[Path]) -> list[np.ndarray]:
    """Per file, a mask of the rows that hold the latest outcome of their request_id."""
    ids, times, owner = [], [], []
    for i, f in enumerate(files):
        t = pq.read_table(f, columns=["request_id", "completed_at"])
        ids.append(t["request_id"].combine_chunks().cast(pa.string()))
        stamps = pc.fill_null(t["completed_at"].cast(pa.int64()), np.iinfo(np.int64).min)
        times.append(stamps.to_numpy())
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
    for f, mask in zip(files, keep):
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


def dumps(d: dict[str, Any]) -> str:
    """JSON for ``--json``: readable, non-ASCII kept (answers may be Chinese)."""
    return json.dumps(d, indent=2, ensure_ascii=False, default=str)
