"""The run's record: counters while it goes, progress snapshots, the summary and ``_run.json``.

The counters are this run's; ``prior`` holds what the folder already had. The
final figures are read back from what is on disk (``results.parquet``, or the
journal when results could not be written), so the summary never claims more,
or less, than an analyst will find.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .arrowutil import string_scalar
from .config import JobConfig
from .errors import ExitCode
from .limits import AdaptiveLimit
from .records import Ended, Outcome, RunSummary, Snapshot, Status

_COUNTED = ["status", "error_type", "prompt_tokens", "completion_tokens", "total_tokens", "cost_usd", "reused_from"]


@dataclass(frozen=True)
class Counts:
    """Rows and tokens by outcome, from a results table or the journal."""

    ok: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost_usd: float = 0.0
    errors_by_type: dict[str, int] = field(default_factory=dict)
    #: rows copied forward from an earlier run (--reuse): not in the token and cost sums above
    reused: int = 0
    cost_saved_usd: float = 0.0

    @classmethod
    def of(cls, table: pa.Table) -> Counts:
        """Counts of a table with the :data:`_COUNTED` columns (``reused_from`` may be missing:
        tables written before it existed)."""
        import pyarrow.compute as pc  # at the end of a run only

        if table.num_rows == 0:
            return cls()
        if "reused_from" in table.column_names and table["reused_from"].null_count < table.num_rows:
            copied = pc.is_valid(table["reused_from"])
            reused = int(pc.sum(pc.cast(copied, pa.int64())).as_py() or 0)
            saved = pc.sum(table.filter(copied)["cost_usd"]).as_py() or 0.0
            base = cls._of(table.filter(pc.invert(copied)))
            return dataclasses.replace(base, ok=base.ok + reused, reused=reused, cost_saved_usd=saved)
        return cls._of(table)

    def plus(self, other: Counts) -> Counts:
        """Both counts together (of two parts of one table)."""
        errors = dict(self.errors_by_type)
        for k, v in other.errors_by_type.items():
            errors[k] = errors.get(k, 0) + v
        summed = {f.name: getattr(self, f.name) + getattr(other, f.name) for f in dataclasses.fields(self)
                  if f.name != "errors_by_type"}  # fmt: skip
        return Counts(**summed, errors_by_type=errors)

    @classmethod
    def _of(cls, table: pa.Table) -> Counts:
        import pyarrow.compute as pc

        ok = int(pc.sum(pc.cast(pc.equal(table["status"], string_scalar(Status.OK.value)), pa.int64())).as_py() or 0)
        counted = pc.value_counts(table["error_type"].drop_null())
        values, counts = counted.field("values").to_pylist(), counted.field("counts").to_pylist()
        errors = {str(k): int(v or 0) for k, v in zip(values, counts, strict=True)}
        return cls(
            ok=ok,
            failed=table.num_rows - ok,
            prompt_tokens=pc.sum(table["prompt_tokens"]).as_py() or 0,
            completion_tokens=pc.sum(table["completion_tokens"]).as_py() or 0,
            total_tokens=pc.sum(table["total_tokens"]).as_py() or 0,
            cost_usd=pc.sum(table["cost_usd"]).as_py() or 0.0,
            errors_by_type=errors,
        )


def results_counts(path: Any) -> Counts:
    """Counted a row group at a time, on this thread: reading the columns of a million rows at
    once (and a reuse night's copies of them, split by ``reused_from``) took 110 MB more than the
    run's peak. ParquetFile, not read_table: the dataset layer read_table goes through imports pandas."""
    pf = pq.ParquetFile(path)
    columns = [c for c in _COUNTED if c in pf.schema_arrow.names]
    total = Counts()
    for g in range(pf.num_row_groups):
        total = total.plus(Counts.of(pf.read_row_group(g, columns=columns, use_threads=False)))
    return total


def exit_for(stopped: bool, failed: int, pending: int) -> tuple[Ended, ExitCode]:
    """How a finished run ended, and the exit code that says so."""
    if stopped or (pending and not failed):
        return Ended.ABORTED, ExitCode.ABORTED
    if failed:
        return Ended.COMPLETED_WITH_FAILURES, ExitCode.FAILED_ROWS
    if pending:  # pragma: no cover - covered by the first branch
        return Ended.ABORTED, ExitCode.ABORTED
    return Ended.COMPLETED, ExitCode.OK


class RunRecord:
    """What a run has done so far; see the module docstring."""

    def __init__(self, cfg: JobConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.clock = clock
        self.run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + secrets.token_hex(3)
        self.started = clock()  # time to first request counts the manifest checks
        self.started_at = datetime.now(UTC)
        self.rows_total = 0
        self.prior = Counts()
        self.requests = 0
        self.sent_rows = 0  # rows that reached an outcome through the gateway
        self.this_run = _Tally()
        # seconds since ``started`` (first_request_cpu_s: this process's CPU, start-up included,
        # the start-up figure a busy machine does not skew); docpipe bench splits a run's wall by them
        self.timings: dict[str, float | None] = {"first_request_s": None, "first_request_cpu_s": None,
                                                 "requests_done_s": None, "compaction_s": None,
                                                 "finished_s": None}  # fmt: skip
        #: failed attempts by error_type (rows may retry and end ok: these are not row counts)
        self.attempt_errors: dict[str, int] = {}
        self.timeline = Timeline()
        self.doc_meta: dict[str, int] | None = None  # HEADs sent, ranged GETs, failures (pipeline/docmeta.py)

    def begin(self, rows_total: int, prior: Counts) -> None:
        self.rows_total = rows_total
        self.prior = prior

    def request_sent(self) -> None:
        self.requests += 1
        if self.timings["first_request_s"] is None:
            self.timings["first_request_s"] = round(self.clock() - self.started, 4)
            self.timings["first_request_cpu_s"] = round(time.process_time(), 4)

    def mark(self, timing: str) -> None:
        """Note now (seconds since the run started) as ``timing``."""
        self.timings[timing] = round(self.clock() - self.started, 4)

    def add(self, outcome: Outcome) -> None:
        self.this_run.add(outcome)

    def add_repeats(self, status: Status, n: int) -> None:
        """``n`` rows that repeat a request answered this run (pipeline/dedupe.py) got its outcome."""
        if status == Status.OK:
            self.this_run.ok += n
        else:
            self.this_run.failed += n

    def attempt_failed(self, error_type: str) -> None:
        self.attempt_errors[error_type] = self.attempt_errors.get(error_type, 0) + 1

    def sample(self, slots: AdaptiveLimit | None) -> None:
        """Add a point to the timeline (the report's throughput, in-flight and error charts)."""
        t = self.this_run
        errors = self.attempt_errors
        point: dict[str, float] = {"in_flight": slots.in_flight if slots else 0, "limit": slots.current if slots else 0,
                 "requests": self.requests, "ok": t.ok, "failed": t.failed,
                 "rate_limited": errors.get("rate_limited", 0), "server_error": errors.get("server_error", 0),
                 "timeout": errors.get("timeout", 0)}  # fmt: skip
        self.timeline.add(round(self.elapsed(), 3), point)

    def elapsed(self) -> float:
        return self.clock() - self.started

    def snapshot(self, slots: AdaptiveLimit | None) -> Snapshot:
        t = self.this_run
        elapsed = self.elapsed()
        rate = (t.ok + t.failed) / elapsed if elapsed > 0 else 0.0
        done = self.prior.ok + self.prior.failed + t.ok + t.failed
        left = max(0, self.rows_total - done)
        return Snapshot(
            rows_total=self.rows_total,
            rows_done=done,
            ok=self.prior.ok + t.ok,
            failed=self.prior.failed + t.failed,
            in_flight=slots.in_flight if slots else 0,
            requests=self.requests,
            tokens=t.total_tokens,
            cost_usd=t.cost_usd if self.cfg.has_prices else None,
            elapsed=elapsed,
            rows_per_s=rate,
            eta_s=left / rate if rate > 0 else None,
            concurrency=slots.current if slots else 0,
        )

    def running(self) -> RunSummary:
        """The summary written when the run starts (a crash leaves it saying so)."""
        c = self.prior
        return self._summary(Ended.RUNNING, None, ExitCode.ABORTED, c, None, results_file=None, journal=0)

    def final(
        self,
        counts: Counts,
        *,
        stopped: bool,
        reason: str | None,
        slots: AdaptiveLimit | None,
        results_file: str | None,
        journal: int,
    ) -> RunSummary:
        """The summary of a finished (or stopped) run, from the counts on disk."""
        pending = max(0, self.rows_total - counts.ok - counts.failed)
        ended, code = exit_for(stopped, counts.failed, pending)
        return self._summary(ended, reason, code, counts, slots, results_file=results_file, journal=journal)

    def crashed(self, reason: str, code: ExitCode, slots: AdaptiveLimit | None) -> RunSummary:
        """The summary of a run an error ended: this run's counters on top of the prior ones."""
        ended = Ended.CRASHED if code == ExitCode.INTERNAL else Ended.ABORTED
        counts = self.this_run.on_top_of(self.prior)
        return self._summary(ended, reason, code, counts, slots, results_file=None, journal=self.this_run.rows)

    def _summary(
        self,
        ended: Ended,
        reason: str | None,
        code: ExitCode,
        c: Counts,
        slots: AdaptiveLimit | None,
        *,
        results_file: str | None,
        journal: int,
    ) -> RunSummary:
        return RunSummary(
            run_id=self.run_id,
            out=str(self.cfg.out),
            ended=ended,
            reason=reason,
            exit_code=int(code),
            rows_total=self.rows_total,
            ok=c.ok,
            failed=c.failed,
            pending=max(0, self.rows_total - c.ok - c.failed),
            sent_this_run=self.sent_rows,
            requests=self.requests,
            prompt_tokens=c.prompt_tokens,
            completion_tokens=c.completion_tokens,
            total_tokens=c.total_tokens,
            cost_usd=c.cost_usd if self.cfg.has_prices else None,
            elapsed_s=round(self.elapsed(), 3),
            errors_by_type=dict(c.errors_by_type),
            concurrency_final=slots.current if slots else 0,
            max_in_flight=slots.max_seen if slots else 0,
            results_file=results_file,
            journal_outcomes=journal,
            reused=c.reused,
            cost_saved_usd=c.cost_saved_usd if self.cfg.has_prices else None,
        )

    def info(self, summary: RunSummary) -> dict[str, Any]:
        """``_run.json``'s content: the summary, timings, this run's figures and the settings (no key)."""
        t = self.this_run
        return {
            **{k: v for k, v in asdict(replace(summary, digest=None)).items() if k != "digest"},
            "started_at": self.started_at.isoformat(),
            "ended_at": datetime.now(UTC).isoformat(),
            "manifest": self.cfg.manifest,
            "this_run": {
                "requests": self.requests,
                "ok": t.ok,
                "failed": t.failed,
                "prompt_tokens": t.prompt_tokens,
                "completion_tokens": t.completion_tokens,
                "total_tokens": t.total_tokens,
                "reused": t.reused,
            },
            "doc_meta": self.doc_meta,
            "timings": dict(self.timings),
            "attempt_errors": dict(self.attempt_errors),
            "timeline": self.timeline.points(),
            "settings": self.cfg.public(),
        }


class Timeline:
    """Samples of the run's counters over time, kept to at most ``limit`` points: when full,
    every other point is dropped and the sampling step doubles, so a night-long run and a
    one-minute run both leave a chart-sized series (cumulative counters survive thinning)."""

    def __init__(self, limit: int = 1000) -> None:
        self.limit = limit
        self.step = 1  # keep one sample in `step`
        self._seen = 0
        self._points: list[dict[str, float]] = []

    def add(self, t: float, values: dict[str, float]) -> None:
        self._seen += 1
        if (self._seen - 1) % self.step:
            return
        self._points.append({"t": t, **values})
        if len(self._points) >= self.limit:
            self._points = self._points[::2]
            self.step *= 2

    def points(self) -> list[dict[str, float]]:
        return list(self._points)


class _Tally:
    """Counters of the outcomes this run produced (one add per outcome, on the hot path)."""

    __slots__ = ("completion_tokens", "cost_saved", "cost_usd", "errors", "failed", "ok", "prompt_tokens", "reused",
                 "total_tokens")  # fmt: skip

    def __init__(self) -> None:
        self.ok = self.failed = self.reused = 0
        self.cost_saved = 0.0
        self.prompt_tokens = self.completion_tokens = self.total_tokens = 0
        self.cost_usd = 0.0
        self.errors: dict[str, int] = {}

    @property
    def rows(self) -> int:
        return self.ok + self.failed

    def add(self, o: Outcome) -> None:
        if o.reused_from is not None:  # copied forward: paid by an earlier run, not spent tonight
            self.ok += 1
            self.reused += 1
            self.cost_saved += o.cost_usd or 0.0
            return
        if o.status == Status.OK:
            self.ok += 1
            self.prompt_tokens += o.prompt_tokens or 0
            self.completion_tokens += o.completion_tokens or 0
            self.total_tokens += o.total_tokens or 0
        else:
            self.failed += 1
            et = o.error_type or "unknown"
            self.errors[et] = self.errors.get(et, 0) + 1
        if o.cost_usd:
            self.cost_usd += o.cost_usd

    def on_top_of(self, prior: Counts) -> Counts:
        errors = dict(prior.errors_by_type)
        for k, v in self.errors.items():
            errors[k] = errors.get(k, 0) + v
        return Counts(
            ok=prior.ok + self.ok,
            failed=prior.failed + self.failed,
            prompt_tokens=prior.prompt_tokens + self.prompt_tokens,
            completion_tokens=prior.completion_tokens + self.completion_tokens,
            total_tokens=prior.total_tokens + self.total_tokens,
            cost_usd=prior.cost_usd + self.cost_usd,
            errors_by_type=errors,
            reused=prior.reused + self.reused,
            cost_saved_usd=prior.cost_saved_usd + self.cost_saved,
        )
