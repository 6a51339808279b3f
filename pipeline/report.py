"""Progress while a run goes, and summaries after it: consumers of runner snapshots.

On a terminal a tqdm bar; otherwise (cron, CI, a pipe) one plain line every
``progress_interval`` seconds, so a log shows the run is alive and how far it is.
"""

from __future__ import annotations

import logging
import sys
from typing import IO, Any, Protocol

from .records import RunSummary, Snapshot

log = logging.getLogger("docpipe")


class ProgressDisplay(Protocol):
    """What the run shows progress on: a snapshot every ``interval`` seconds, and a last one."""

    interval: float

    def update(self, s: Snapshot) -> None: ...

    def close(self, s: Snapshot) -> None: ...


def _fmt_eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def progress_line(s: Snapshot) -> str:
    cost = f" cost=${s.cost_usd:.4f}" if s.cost_usd is not None else ""
    return (
        f"progress rows={s.rows_done}/{s.rows_total} ok={s.ok} failed={s.failed} "
        f"in_flight={s.in_flight} concurrency={s.concurrency} requests={s.requests} "
        f"rate={s.rows_per_s:.1f}/s tokens={s.tokens}{cost} eta={_fmt_eta(s.eta_s)}"
    )


class LogProgress:
    """One plain line per interval, for logs."""

    def __init__(self, interval: float = 30.0, stream: IO[str] | None = None) -> None:
        self.interval = interval
        self.stream = stream or sys.stderr

    def update(self, s: Snapshot) -> None:
        print(progress_line(s), file=self.stream, flush=True)

    def close(self, s: Snapshot) -> None:
        self.update(s)


class BarProgress:
    """A live tqdm bar for terminals."""

    interval = 0.5

    def __init__(self, stream: IO[str] | None = None) -> None:
        from tqdm import tqdm

        self._bar: Any = tqdm(total=None, unit="row", dynamic_ncols=True, file=stream or sys.stderr)
        self._last = 0

    def update(self, s: Snapshot) -> None:
        bar = self._bar
        if bar.total != s.rows_total:
            bar.total = s.rows_total
        cost = f" ${s.cost_usd:.2f}" if s.cost_usd is not None else ""
        # postfix first: update() redraws, and must not show the previous tick's figures
        bar.set_postfix_str(
            f"ok={s.ok} failed={s.failed} inflight={s.in_flight}/{s.concurrency} "
            f"req={s.requests} tok={s.tokens}{cost}",
            refresh=False,
        )
        bar.update(s.rows_done - self._last)
        self._last = s.rows_done

    def close(self, s: Snapshot) -> None:
        self.update(s)
        self._bar.close()


def make_progress(mode: str, interval: float, stream: IO[str] | None = None) -> Any:
    """'auto' picks a bar on a terminal and log lines elsewhere; 'none' gives None."""
    out = stream or sys.stderr
    if mode == "none":
        return None
    if mode == "bar" or (mode == "auto" and out.isatty()):
        return BarProgress(out)
    return LogProgress(interval, out)


def format_summary(s: RunSummary) -> str:
    cost = f", cost ${s.cost_usd:.4f}" if s.cost_usd is not None else ""
    lines = [
        f"run {s.run_id}: {s.ended}" + (f" ({s.reason})" if s.reason else ""),
        f"rows: {s.rows_total} total, {s.ok} ok, {s.failed} failed, {s.pending} pending "
        f"({s.sent_this_run} answered this run in {s.requests} requests)",
        f"tokens: {s.prompt_tokens} prompt + {s.completion_tokens} completion = {s.total_tokens}{cost}",
        f"time: {s.elapsed_s:.1f} s, concurrency {s.concurrency_final} (max in flight {s.max_in_flight})",
    ]
    if s.errors_by_type:
        lines.append("errors: " + ", ".join(f"{k}={v}" for k, v in sorted(s.errors_by_type.items())))
    if s.results_file is not None:
        lines.append(f"results: {s.results_file}")
    else:
        lines.append(f"results: not written; {s.journal_outcomes} outcomes are safe in {s.out}/_journal, "
                     "and the same command run again rebuilds results.parquet")
    return "\n".join(lines)
