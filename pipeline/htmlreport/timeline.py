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
from .scan import DICTIONARY, Scan

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


class Span:
    """First pass: which rows are the latest run's, and when they started and completed (µs)."""

    COLUMNS = ("run_id", "status", "started_at", "completed_at")

    def __init__(self, run_id: str | None) -> None:
        self.run_id = run_id
        self.mine = _Times()  # the latest run's rows
        self.all = _Times()

    def add(self, batch: pa.RecordBatch) -> None:
        self.all.add(batch)
        if self.run_id is not None and "run_id" in batch.schema.names:
            self.mine.add(batch.filter(arrow.filled(arrow.equal(batch["run_id"], self.run_id))))

    @property
    def only_mine(self) -> bool:
        """A resumed folder also holds earlier nights' rows: the charts show the latest run's
        (all rows when none is marked as its)."""
        return self.mine.rows > 0

    def mask(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """The rows of ``batch`` the charts show."""
        if not self.only_mine or self.run_id is None:
            return batch
        return batch.filter(arrow.filled(arrow.equal(batch["run_id"], self.run_id)))


@dataclass
class _Times:
    """Rows, the earliest started_at, completed rows and the latest completed_at (µs) of some rows."""

    rows: int = 0
    first_start: int | None = None
    completed: int = 0
    last_end: int | None = None

    def add(self, batch: pa.RecordBatch) -> None:
        self.rows += batch.num_rows
        started, completed = _micros(batch, "started_at"), _micros(batch, "completed_at")
        if len(started):
            low = int(started.min())
            self.first_start = low if self.first_start is None else min(low, self.first_start)
        if len(completed):
            high = int(completed.max())
            self.completed += len(completed)
            self.last_end = high if self.last_end is None else max(high, self.last_end)


def _micros(batch: pa.RecordBatch, name: str) -> np.ndarray:
    if name not in batch.schema.names:
        return np.zeros(0, dtype=np.int64)
    return arrow.to_numpy(pc.cast(batch[name].drop_null(), pa.int64()), np.int64)


class TimeBins:
    """Second pass: the run's completed rows in time bins, and (without a sampled timeline)
    an in-flight curve from the rows' start and end times. Built by :func:`time_bins`."""

    def __init__(self, span: Span, info: dict[str, Any], start: int, span_s: float, bins: int) -> None:
        self.span, self.info, self.start, self.span_s = span, info, start, span_s
        self.points = _points(info)
        self.edges = np.linspace(0.0, span_s, bins + 1)
        self.ok = np.zeros(bins, dtype=np.int64)
        self.bad = np.zeros(bins, dtype=np.int64)
        self.sampled = len(self.points) >= MIN_POINTS
        self.at = np.linspace(0.0, span_s, ESTIMATE_POINTS)
        self.begun = np.zeros(ESTIMATE_POINTS, dtype=np.int64)  # rows started by each instant
        self.ended = np.zeros(ESTIMATE_POINTS, dtype=np.int64)  # rows completed by each instant
        self.estimable = False  # the rows have both times

    def add(self, batch: pa.RecordBatch) -> None:
        batch = self.span.mask(batch)
        if "completed_at" not in batch.schema.names:
            return
        done_rows = batch.filter(pc.is_valid(batch["completed_at"]))
        done = (_micros(done_rows, "completed_at") - self.start) / 1e6
        ok = arrow.to_numpy(arrow.filled(arrow.equal(done_rows["status"], "ok")))
        when = np.clip(done, 0.0, self.span_s)
        self.ok += np.histogram(when[ok], bins=self.edges)[0]
        self.bad += np.histogram(when[~ok], bins=self.edges)[0]
        if not self.sampled and "started_at" in batch.schema.names:
            self.estimable = True
            both = done_rows.filter(pc.is_valid(done_rows["started_at"]))
            self.begun += _by_instant(self.at, (_micros(both, "started_at") - self.start) / 1e6)
            self.ended += _by_instant(self.at, (_micros(both, "completed_at") - self.start) / 1e6)

    def result(self) -> TimeCharts:
        width = self.span_s / len(self.ok)
        ok, bad = self.ok / width, self.bad / width
        points = self.points
        if self.sampled:
            in_flight = _pairs(*_columns(points, "in_flight"))
        else:  # rows waiting in a back-off count too: an upper bound of requests in flight
            in_flight = _pairs(self.at, (self.begun - self.ended).tolist()) if self.estimable else ()
        if not points:
            return TimeCharts(self.span_s, width, _floats(ok), _floats(bad), None, in_flight, None, True, None)
        t = np.array([float(p["t"]) for p in points])
        return TimeCharts(
            self.span_s,
            width,
            _floats(ok),
            _floats(bad),
            _floats(np.diff(_cumulative(points, "requests", t, self.edges)) / width),
            in_flight,
            _steps(*_columns(points, "limit"), self.span_s),
            not self.sampled,
            {k: tuple(int(x) for x in np.diff(_cumulative(points, k, t, self.edges))) for k in ERROR_SERIES},
        )


def _by_instant(at: np.ndarray, times: np.ndarray) -> np.ndarray:
    """How many of ``times`` are at or before each instant of ``at`` (sorted)."""
    first = np.searchsorted(at, times, side="left")  # the first instant not before each time
    return np.cumsum(np.bincount(first, minlength=len(at) + 1)[: len(at)])


def _points(info: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in info.get("timeline") or [] if isinstance(p, dict) and "t" in p]


def time_bins(span: Span, info: dict[str, Any]) -> TimeBins | None:
    """The second pass's bins, once the first has found the run's rows and span (None: nothing to draw)."""
    rows = span.mine if span.only_mine else span.all
    points = _points(info)
    start = _epoch_us(info.get("started_at"))
    if start is None:
        start = rows.first_start if rows.first_start is not None else 0
    latest = (rows.last_end - start) / 1e6 if rows.last_end is not None else 0.0
    span_s = max(float(info.get("elapsed_s") or 0.0), float(points[-1]["t"]) if points else 0.0, latest)
    if span_s <= 0:
        return None
    return TimeBins(span, info, start, span_s, min(BINS, max(MIN_BINS, rows.completed // 8)))


EMPTY = TimeCharts(0.0, 0.0, (), (), None, (), None, False, None)


def time_charts(scan: Scan, info: dict[str, Any]) -> TimeCharts:
    """Bin the run's rows and resample its timeline onto one time axis (two passes over ``scan``)."""
    span = Span(info.get("run_id"))
    for _, batch in scan.batches(Span.COLUMNS, DICTIONARY):
        span.add(batch)
    bins = time_bins(span, info)
    if bins is None:
        return EMPTY
    for _, batch in scan.batches(Span.COLUMNS, DICTIONARY):
        bins.add(batch)
    return bins.result()


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


def _floats(values: np.ndarray) -> tuple[float, ...]:
    return tuple(float(x) for x in values)


def _pairs(t: np.ndarray, values: list[Any]) -> tuple[tuple[float, float], ...]:
    return tuple((float(a), float(b or 0)) for a, b in zip(t, values, strict=True))
