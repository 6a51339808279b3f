"""The report's charts over time: throughput, in-flight and failed attempts on one time axis.

The x axis is seconds since the run started (``started_at`` of ``_run.json``),
cut into :data:`BINS` equal bins. Throughput comes from the rows themselves
(``completed_at`` of the rows this run produced), so it is exact however the
timeline was sampled; in-flight, the concurrency limit, requests and failed
attempts come from the ``timeline`` the run sampled into ``_run.json`` (cumulative
counters, so thinning the samples loses resolution, never counts). A folder
without a timeline (a merge, an older run) still gets throughput, and an
in-flight curve estimated from the rows' start and end times.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import arrow

BINS = 60  # at most; a short run with few rows gets fewer, wider bins (about 8 rows a bin, at least 10 bins)
MIN_BINS = 10
MIN_POINTS = 20  # a timeline with fewer samples (a run of a few seconds) draws in-flight from the row times
ESTIMATE_POINTS = 120  # in-flight samples when estimated from rows
#: Failed-attempt counters of the timeline, and how the report names them.
ERROR_SERIES = {"rate_limited": "429 rate limited", "server_error": "server errors", "timeout": "timeouts"}


@dataclass(frozen=True)
class TimeCharts:
    """Series over ``span_s`` seconds from the run's start; per-bin series have ``BINS`` values."""

    span_s: float
    bin_s: float
    ok_per_s: tuple[float, ...]
    failed_per_s: tuple[float, ...]
    requests_per_s: tuple[float, ...] | None  # None without a timeline
    in_flight: tuple[tuple[float, float], ...]  # (t, requests in flight)
    limit: tuple[tuple[float, float], ...] | None  # (t, concurrency limit); None without a timeline
    estimated: bool  # in_flight estimated from the rows (no timeline)
    errors: dict[str, tuple[int, ...]] | None  # failed attempts per bin, by ERROR_SERIES key

    @property
    def empty(self) -> bool:
        return self.span_s <= 0


def _epoch_us(text: Any) -> int | None:
    try:
        return int(datetime.fromisoformat(str(text)).timestamp() * 1e6)
    except (TypeError, ValueError):
        return None


def _this_run(table: pa.Table, run_id: str | None) -> pa.Table:
    """The rows the latest run produced (a resumed folder also holds earlier nights' rows);
    rows it copied forward (``reused_from``) keep the times they were asked, so they are left out."""
    if "reused_from" in table.column_names and table["reused_from"].null_count < table.num_rows:
        table = table.filter(pc.is_null(table["reused_from"]))
    if run_id is None or "run_id" not in table.column_names:
        return table
    mine = table.filter(arrow.filled(arrow.equal(table["run_id"], run_id)))
    return mine if mine.num_rows else table


def _micros(table: pa.Table, name: str) -> np.ndarray:
    if name not in table.column_names:
        return np.zeros(0, dtype=np.int64)
    return np.asarray(pc.cast(table[name].drop_null(), pa.int64()).to_numpy(), dtype=np.int64)


def time_charts(table: pa.Table, info: dict[str, Any]) -> TimeCharts:
    """Bin the run's rows and resample its timeline onto one time axis."""
    light = table.select([c for c in ("run_id", "status", "started_at", "completed_at", "reused_from")
                          if c in table.column_names])  # fmt: skip
    rows = _this_run(light, info.get("run_id"))
    points = [p for p in info.get("timeline") or [] if isinstance(p, dict) and "t" in p]
    started = _micros(rows, "started_at")
    start = _epoch_us(info.get("started_at"))
    if start is None:
        start = int(started.min()) if len(started) else 0
    done_rows = rows.filter(pc.is_valid(rows["completed_at"])) if "completed_at" in rows.column_names else rows
    done = (_micros(done_rows, "completed_at") - start) / 1e6
    span = max(
        [
            float(info.get("elapsed_s") or 0.0),
            float(points[-1]["t"]) if points else 0.0,
            float(done.max()) if len(done) else 0.0,
        ]
    )
    if span <= 0:
        return TimeCharts(0.0, 0.0, (), (), None, (), None, False, None)
    bins = min(BINS, max(MIN_BINS, len(done) // 8))
    width = span / bins
    edges = np.linspace(0.0, span, bins + 1)
    ok_mask = np.asarray(arrow.filled(arrow.equal(done_rows["status"], "ok")).to_numpy(zero_copy_only=False))
    when = np.clip(done, 0.0, span)
    ok = np.histogram(when[ok_mask], bins=edges)[0] / width
    bad = np.histogram(when[~ok_mask], bins=edges)[0] / width
    sampled = len(points) >= MIN_POINTS
    in_flight = _pairs(*_columns(points, "in_flight")) if sampled else _estimate_in_flight(rows, start, span)
    if not points:
        return TimeCharts(span, width, _floats(ok), _floats(bad), None, in_flight, None, True, None)
    t = np.array([float(p["t"]) for p in points])
    return TimeCharts(
        span,
        width,
        _floats(ok),
        _floats(bad),
        _floats(np.diff(_cumulative(points, "requests", t, edges)) / width),
        in_flight,
        _steps(*_columns(points, "limit"), span),
        not sampled,
        {k: tuple(int(x) for x in np.diff(_cumulative(points, k, t, edges))) for k in ERROR_SERIES},
    )


def _columns(points: list[dict[str, Any]], key: str) -> tuple[np.ndarray, list[Any]]:
    return np.array([float(p["t"]) for p in points]), [p.get(key, 0) for p in points]


def _steps(t: np.ndarray, values: list[Any], span: float) -> tuple[tuple[float, float], ...]:
    """A sampled setting as a step line: each value holds until the next sample (and to the end)."""
    out: list[tuple[float, float]] = []
    for i, (a, v) in enumerate(zip(t, values, strict=True)):
        if i:
            out.append((float(a), out[-1][1]))
        out.append((float(a), float(v or 0)))
    if out and out[-1][0] < span:
        out.append((span, out[-1][1]))
    return tuple(out)


def _cumulative(points: list[dict[str, Any]], key: str, t: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """A cumulative counter at the bin edges, rounded so per-bin differences are whole and sum to the total."""
    values = np.array([float(p.get(key) or 0) for p in points])
    return np.asarray(np.round(np.interp(edges, t, values, left=0.0)), dtype=np.float64)


def _estimate_in_flight(rows: pa.Table, start: int, span: float) -> tuple[tuple[float, float], ...]:
    """Rows between their start and completion at evenly spaced instants (rows waiting in a
    back-off count too, so this is an upper bound of requests in flight)."""
    if "started_at" not in rows.column_names or "completed_at" not in rows.column_names:
        return ()
    both = rows.filter(pc.and_(pc.is_valid(rows["started_at"]), pc.is_valid(rows["completed_at"])))
    begins = np.sort((_micros(both, "started_at") - start) / 1e6)
    ends = np.sort((_micros(both, "completed_at") - start) / 1e6)
    at = np.linspace(0.0, span, ESTIMATE_POINTS)
    count = np.searchsorted(begins, at, side="right") - np.searchsorted(ends, at, side="right")
    return _pairs(at, count.tolist())


def _floats(values: np.ndarray) -> tuple[float, ...]:
    return tuple(float(x) for x in values)


def _pairs(t: np.ndarray, values: list[Any]) -> tuple[tuple[float, float], ...]:
    return tuple((float(a), float(b or 0)) for a, b in zip(t, values, strict=True))
