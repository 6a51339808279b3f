"""Aggregate figures: the verdict, the latency histogram, and groups of the ``--by`` column.

The verdict figures are those of ``docpipe summary --json``, computed by the same
code (:class:`.tally.Tally`, fed from the page's first pass): the same rows,
statuses, token sums, cost, latency percentiles and throughput. Every figure is
folded batch by batch (the tally, :class:`Groups`) so no column of every row is held
(but the tally's costs: see :mod:`.tally`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..arrowutil import int_codes
from ..digest import SummaryReport
from ..records import Status
from . import arrow
from .tally import Tally

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


def latency_values(batch: pa.RecordBatch) -> np.ndarray[Any, np.dtype[np.float64]]:
    """latency_ms of the batch's rows that have one (nulls and NaN dropped, as pandas' dropna does)."""
    if "latency_ms" not in batch.schema.names:
        return np.zeros(0)
    values = arrow.to_numpy(batch["latency_ms"].drop_null())
    kept: np.ndarray[Any, np.dtype[np.float64]] = values[~np.isnan(values)]
    return kept


def verdict(s: SummaryReport, info: dict[str, Any]) -> Verdict:
    """The verdict line: ``docpipe summary``'s figures (:mod:`.tally`), the ending from _run.json."""
    ok = s.status.get(Status.OK, 0)
    tp = s.throughput
    lat = s.latency_ms
    return Verdict(
        rows=s.rows,
        ok=ok,
        failed=s.rows - ok,
        pending=info.get("pending"),
        ended=info.get("ended"),
        reason=info.get("reason"),
        exit_code=info.get("exit_code"),
        requests=info.get("requests"),
        prompt_tokens=s.tokens.prompt,
        completion_tokens=s.tokens.completion,
        total_tokens=s.tokens.total,
        cost_usd=s.cost_usd,
        elapsed_s=tp.elapsed_s if tp else info.get("elapsed_s"),
        rows_per_s=tp.rows_per_s if tp else None,
        latency_rows=lat.rows,
        p50=lat.p50,
        p95=lat.p95,
        p99=lat.p99,
    )


def latency_range(t: Tally, p99: float | None) -> tuple[float, float] | None:
    """The latency histogram's range: 0 to a little past p99, so one 10-minute straggler
    does not squash the chart (None without latencies)."""
    if not t.latency_rows or p99 is None:
        return None
    return 0.0, _nice_ceiling(max(p99 * 1.1, t.latency_min + 1e-9, 1e-9))


class LatencyBins:
    """The latency histogram: :data:`LATENCY_BINS` equal bins over a range fixed beforehand."""

    def __init__(self, lo: float, hi: float, bins: int = LATENCY_BINS) -> None:
        self.lo, self.hi = lo, hi
        self.counts = np.zeros(bins, dtype=np.int64)
        self.above = 0

    def add(self, batch: pa.RecordBatch) -> None:
        values = latency_values(batch)
        self.counts += np.histogram(values, bins=len(self.counts), range=(self.lo, self.hi))[0]
        self.above += int((values > self.hi).sum())

    def result(self) -> Histogram:
        return Histogram(self.lo, self.hi, tuple(int(c) for c in self.counts), self.above)


def _nice_ceiling(x: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k not below ``x``."""
    mag = 10.0 ** np.floor(np.log10(x))
    return float(next(step * mag for step in (1.0, 2.0, 2.5, 5.0, 10.0) if step * mag >= x))


class Groups:
    """Rows, failures, tokens and cost per value of ``column``, folded batch by batch
    (memory: one entry per distinct value). numpy's bincount over the batch's dictionary
    codes, not Arrow's group_by, which imports pandas (+45 MB) into a run's end."""

    def __init__(self, column: str) -> None:
        self.column = column
        self.sums: dict[str, list[Any]] = {}  # key -> [rows, failed, total tokens, cost]
        self.has_cost = False

    def add(self, batch: pa.RecordBatch) -> None:
        n, has = batch.num_rows, batch.schema.names
        if self.column not in has or not n:
            return
        keys = pc.dictionary_encode(arrow.filled(pc.cast(batch[self.column], pa.string()), "(null)"))
        codes, names = int_codes(keys.indices), keys.dictionary.to_pylist()
        bad = ~arrow.to_numpy(arrow.filled(arrow.equal(batch["status"], "ok")))
        sums = [np.bincount(codes, minlength=len(names)), np.bincount(codes, weights=bad, minlength=len(names))]
        sums.append(np.bincount(codes, weights=_zeros_for_nulls(batch, "total_tokens"), minlength=len(names)))
        sums.append(np.bincount(codes, weights=_zeros_for_nulls(batch, "cost_usd"), minlength=len(names)))
        self.has_cost = self.has_cost or ("cost_usd" in has and batch["cost_usd"].null_count < n)
        for i, key in enumerate(names):
            acc = self.sums.setdefault(str(key), [0, 0, 0, 0.0])
            acc[0] += int(sums[0][i])
            acc[1] += int(sums[1][i])
            acc[2] += int(sums[2][i])  # exact: float64 holds whole numbers to 2**53
            acc[3] += float(sums[3][i])

    def result(self, top: int = TOP_GROUPS) -> tuple[Group, ...]:
        """Most tokens first; past ``top`` values the rest are summed into one ``(N others)`` group."""
        order = sorted(self.sums.items(), key=lambda kv: (-kv[1][2], -kv[1][0], kv[0]))
        made = [Group(k, r, bad, tok, cost if self.has_cost else None) for k, (r, bad, tok, cost) in order]
        if len(made) <= top:
            return tuple(made)
        rest = made[top - 1 :]
        other = Group(
            f"({len(rest)} others)",
            sum(g.rows for g in rest),
            sum(g.failed for g in rest),
            sum(g.total_tokens for g in rest),
            sum(g.cost_usd or 0.0 for g in rest) if self.has_cost else None,
        )
        return (*made[: top - 1], other)


def _zeros_for_nulls(batch: pa.RecordBatch, name: str) -> np.ndarray[Any, np.dtype[np.float64]]:
    """A numeric column as float64 with nulls (and a missing column) as 0."""
    if name not in batch.schema.names:
        return np.zeros(batch.num_rows)
    return arrow.to_numpy(arrow.filled(pc.cast(batch[name], pa.float64()), 0.0))
