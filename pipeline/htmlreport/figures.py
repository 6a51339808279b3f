"""Aggregate figures: the verdict, the latency histogram, attempts, and groups of the ``--by`` column.

The verdict figures are those of ``docpipe summary --json`` (:mod:`pipeline.summary`):
the same rows, statuses, token sums, cost, latency percentiles (numpy's linear
interpolation, the one ``pandas.quantile`` uses) and throughput.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..arrowutil import int_codes, strings, to_numpy
from . import arrow

LATENCY_BINS = 40
TOP_GROUPS = 15  # groups of --by shown; the rest are summed into one line


@dataclass(frozen=True)
class Verdict:
    """How the run went, in the figures of ``docpipe summary --json`` plus the run's own ending."""

    rows: int
    ok: int
    failed: int
    pending: int | None  # rows the run did not reach (from _run.json); None when it does not say
    ended: str | None
    reason: str | None
    exit_code: int | None
    requests: int | None
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_usd: float | None
    elapsed_s: float | None
    rows_per_s: float | None
    latency_rows: int
    p50: float | None
    p95: float | None
    p99: float | None


@dataclass(frozen=True)
class Histogram:
    """Counts of values in ``len(counts)`` equal bins from ``lo`` to ``hi``; ``above`` fell past ``hi``."""

    lo: float
    hi: float
    counts: tuple[int, ...]
    above: int


@dataclass(frozen=True)
class Group:
    """Rows, failures, tokens and cost of one value of the ``--by`` column."""

    key: str
    rows: int
    failed: int
    total_tokens: int
    cost_usd: float | None


def verdict(table: pa.Table, info: dict[str, Any]) -> Verdict:
    """The verdict line: counts and sums over every row, the ending from _run.json."""
    ok = arrow.count_true(arrow.equal(table["status"], "ok"))
    lat = latencies(table)
    q = [float(x) for x in np.percentile(lat, np.array([0.5, 0.95, 0.99]) * 100)] if len(lat) else [None] * 3
    has_cost = "cost_usd" in table.column_names and table["cost_usd"].null_count < table.num_rows
    tp = _throughput(table, info)
    return Verdict(
        rows=table.num_rows,
        ok=ok,
        failed=table.num_rows - ok,
        pending=info.get("pending"),
        ended=info.get("ended"),
        reason=info.get("reason"),
        exit_code=info.get("exit_code"),
        requests=info.get("requests"),
        prompt_tokens=_sum_int(table, "prompt_tokens"),
        completion_tokens=_sum_int(table, "completion_tokens"),
        total_tokens=_sum_int(table, "total_tokens"),
        cost_usd=float(arrow.total(table["cost_usd"]) or 0.0) if has_cost else None,
        elapsed_s=tp[0] if tp else info.get("elapsed_s"),
        rows_per_s=tp[1] if tp else None,
        latency_rows=len(lat),
        p50=q[0],
        p95=q[1],
        p99=q[2],
    )


def _throughput(table: pa.Table, info: dict[str, Any]) -> tuple[float, float] | None:
    """(elapsed s, rows/s) as ``docpipe summary`` computes them: the runs' rows over their wall time."""
    runs = info["runs"] if isinstance(info.get("runs"), list) else [info] if info else []
    ids = [r.get("run_id") for r in runs]
    if not runs or None in ids or "run_id" not in table.column_names:
        return None
    if len(runs) == 1:
        elapsed = runs[0].get("elapsed_s")
    else:
        starts, ends = [_time(r.get("started_at")) for r in runs], [_time(r.get("ended_at")) for r in runs]
        if None in starts or None in ends:
            return None
        elapsed = (max(e for e in ends if e) - min(s for s in starts if s)).total_seconds()
    if not elapsed or elapsed <= 0:
        return None
    rows = arrow.count_true(pc.is_in(table["run_id"], strings([str(i) for i in ids])))  # None ruled out above
    return float(elapsed), rows / float(elapsed)


def _time(text: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(text))
    except ValueError:
        return None


def _sum_int(table: pa.Table, name: str) -> int:
    return int(arrow.total(table[name]) or 0) if name in table.column_names else 0


def latencies(table: pa.Table) -> np.ndarray[Any, np.dtype[np.float64]]:
    """latency_ms of every row that has one (nulls and NaN dropped, as pandas' dropna does)."""
    if "latency_ms" not in table.column_names:
        return np.zeros(0)
    values = np.asarray(to_numpy(table["latency_ms"].drop_null()), dtype=np.float64)
    return values[~np.isnan(values)]


def latency_histogram(values: np.ndarray[Any, np.dtype[np.float64]], bins: int = LATENCY_BINS) -> Histogram | None:
    """Equal bins from 0 to a little past p99, so one 10-minute straggler does not squash the chart."""
    if not len(values):
        return None
    p99 = float(np.percentile(values, 99))
    hi = _nice_ceiling(max(p99 * 1.1, float(values.min()) + 1e-9, 1e-9))
    counts, _ = np.histogram(values, bins=bins, range=(0.0, hi))
    above = int((values > hi).sum())
    return Histogram(0.0, hi, tuple(int(c) for c in counts), above)


def _nice_ceiling(x: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k not below ``x``."""
    mag = 10.0 ** np.floor(np.log10(x))
    return float(next(step * mag for step in (1.0, 2.0, 2.5, 5.0, 10.0) if step * mag >= x))


def attempts(table: pa.Table) -> dict[int, int]:
    """Rows by number of attempts, fewest first."""
    if "attempts" not in table.column_names:
        return {}
    return {int(k): n for k, n in sorted(arrow.value_counts(table["attempts"]).items())}


def groups(table: pa.Table, column: str, top: int = TOP_GROUPS) -> tuple[Group, ...]:
    """Rows, failures, tokens and cost per value of ``column``, most tokens first; past ``top``
    values the rest are summed into one ``(N others)`` group."""
    n = table.num_rows
    has = table.column_names
    # numpy over dictionary codes, not Table.group_by: that imports pyarrow.dataset and acero
    # (+0.2 s and ~20 MB at the end of every run that draws its report)
    keys = arrow.filled(pc.cast(table[column], pa.string()), "(null)").combine_chunks().dictionary_encode()
    codes, names = int_codes(keys.indices), keys.dictionary.to_pylist()
    bad = to_numpy(pc.cast(pc.invert(arrow.filled(arrow.equal(table["status"], "ok"))), pa.int64()))
    tok = table["total_tokens"] if "total_tokens" in has else pa.nulls(n, pa.int64())
    cost = table["cost_usd"] if "cost_usd" in has else pa.nulls(n, pa.float64())
    sums = {"rows": np.ones(n, dtype=np.int64), "bad": bad, "tok": to_numpy(arrow.filled(tok, 0)),
            "cost": to_numpy(arrow.filled(cost, 0.0))}  # fmt: skip
    per = {name: np.zeros(len(names), dtype=v.dtype) for name, v in sums.items()}
    for name, v in sums.items():
        np.add.at(per[name], codes, v)
    has_cost = cost.null_count < n
    order = sorted(range(len(names)), key=lambda i: (-int(per["tok"][i]), -int(per["rows"][i]), names[i]))
    made = [
        Group(
            str(names[i]),
            int(per["rows"][i]),
            int(per["bad"][i]),
            int(per["tok"][i]),
            float(per["cost"][i]) if has_cost else None,
        )
        for i in order
    ]
    if len(made) <= top:
        return tuple(made)
    rest = made[top - 1 :]
    other = Group(
        f"({len(rest)} others)",
        sum(g.rows for g in rest),
        sum(g.failed for g in rest),
        sum(g.total_tokens for g in rest),
        sum(g.cost_usd or 0.0 for g in rest) if has_cost else None,
    )
    return (*made[: top - 1], other)
