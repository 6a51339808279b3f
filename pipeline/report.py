"""Progress while a run goes, the run's closing summary, and the JSON form of records.

On a terminal a tqdm bar; otherwise (cron, CI, a pipe) one plain line every
``progress_interval`` seconds, so a log shows the run is alive and how far it is.
Both are :class:`ProgressDisplay`\\ s: the run loop calls ``update`` every
``interval`` seconds and ``close`` once at the end, and knows nothing else of them.

The run path imports this module, so it imports nothing heavy (no pandas): the
analyst-facing readers (:mod:`pipeline.summary`) import it, not the other way round.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, is_dataclass
from typing import IO, TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

from .records import RunSummary, Snapshot

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

# ------------------------------------------------------------------------- JSON


class JsonRecord:
    """Base of the frozen dataclass records that ``--json`` prints: their JSON is
    :func:`dataclasses.asdict` of them, so the field names are the JSON keys."""

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        """The record as plain dicts, lists and scalars (nested records included), as JSON has them."""
        return cast("dict[str, Any]", _lists(asdict(cast("DataclassInstance", self))))

    def to_json(self) -> str:
        """The record as ``--json`` prints it."""
        return dumps(self)


def _lists(obj: Any) -> Any:
    """asdict() keeps tuples; JSON (and a reader comparing with it) has lists."""
    if isinstance(obj, dict):
        return {k: _lists(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_lists(v) for v in obj]
    return obj


def _jsonable(obj: object) -> Any:
    # json.dumps calls this only for what it cannot encode itself
    if is_dataclass(obj) and not isinstance(obj, type):
        return asdict(obj)
    return str(obj)


def dumps(obj: object) -> str:
    """JSON for ``--json``: records (dataclasses) as objects, readable, non-ASCII kept
    (answers may be Chinese); paths, datetimes and the like as strings."""
    return json.dumps(obj, indent=2, ensure_ascii=False, default=_jsonable)


def finite_float(v: Any, *, from_text: bool = False) -> float | None:
    """``v`` as a finite float; None for null, NaN, infinities, booleans and non-numbers.
    Text is read only ``from_text`` (gateways send "12.5"; a results column never should)."""
    if v is None or isinstance(v, bool | bytes) or (isinstance(v, str) and not from_text):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


# --------------------------------------------------------------------- progress


@runtime_checkable
class ProgressDisplay(Protocol):
    """What the run loop feeds progress to: ``update`` every ``interval`` seconds while
    rows are answered, ``close`` once with the final figures."""

    interval: float

    def update(self, snapshot: Snapshot) -> None:
        """Show the figures of one tick."""

    def close(self, snapshot: Snapshot) -> None:
        """Show the final figures and release the output (the last call)."""


def _fmt_eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    whole = int(seconds)
    h, rem = divmod(whole, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def progress_line(s: Snapshot) -> str:
    """One ``progress rows=...`` log line (stable ``key=value`` fields, for grep)."""
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

    def update(self, snapshot: Snapshot) -> None:
        """Print one progress line."""
        print(progress_line(snapshot), file=self.stream, flush=True)

    def close(self, snapshot: Snapshot) -> None:
        """Print the closing line (the final figures)."""
        self.update(snapshot)


class BarProgress:
    """A live tqdm bar for terminals."""

    def __init__(self, stream: IO[str] | None = None, interval: float = 0.5) -> None:
        from tqdm import tqdm  # only a terminal run pays for it

        self.interval = interval
        self._bar: Any = tqdm(total=None, unit="row", dynamic_ncols=True, file=stream or sys.stderr)
        self._last = 0

    def update(self, snapshot: Snapshot) -> None:
        """Move the bar to the snapshot's row count, with its figures beside it."""
        s, bar = snapshot, self._bar
        if bar.total != s.rows_total:
            bar.total = s.rows_total
        cost = f" ${s.cost_usd:.2f}" if s.cost_usd is not None else ""
        # postfix first: update() redraws, and must not show the previous tick's figures
        bar.set_postfix_str(
            f"ok={s.ok} failed={s.failed} inflight={s.in_flight}/{s.concurrency} req={s.requests} tok={s.tokens}{cost}",
            refresh=False,
        )
        bar.update(s.rows_done - self._last)
        self._last = s.rows_done

    def close(self, snapshot: Snapshot) -> None:
        """Draw the final figures and end the bar's line."""
        self.update(snapshot)
        self._bar.close()


def make_progress(mode: str, interval: float, stream: IO[str] | None = None) -> ProgressDisplay | None:
    """'auto' picks a bar on a terminal and log lines elsewhere; 'bar' and 'log' force
    one; 'none' gives None (no display)."""
    out = stream or sys.stderr
    if mode == "none":
        return None
    if mode == "bar" or (mode == "auto" and out.isatty()):
        return BarProgress(out)
    return LogProgress(interval, out)


# ---------------------------------------------------------------------- summary


def format_summary(s: RunSummary) -> str:
    """The few lines ``docpipe run`` prints when a run ends."""
    cost = f", cost ${s.cost_usd:.4f}" if s.cost_usd is not None else ""
    lines = [
        f"run {s.run_id}: {s.ended}" + (f" ({s.reason})" if s.reason else ""),
        f"rows: {s.rows_total} total, {s.ok} ok, {s.failed} failed, {s.pending} pending "
        f"({s.sent_this_run} answered this run in {s.requests} requests)",
        f"tokens: {s.prompt_tokens} prompt + {s.completion_tokens} completion = {s.total_tokens}{cost}",
        *(
            [
                f"reused: {s.reused} rows from earlier runs, no request"
                + (f", saving ${s.cost_saved_usd:.4f}" if s.cost_saved_usd is not None else "")
            ]
            if s.reused
            else []
        ),
        f"time: {s.elapsed_s:.1f} s, concurrency {s.concurrency_final} (max in flight {s.max_in_flight})",
    ]
    if s.errors_by_type:
        lines.append("errors: " + ", ".join(f"{k}={v}" for k, v in sorted(s.errors_by_type.items())))
    if s.results_file is not None:
        lines.append(f"results: {s.results_file}")
    else:
        lines.append(
            f"results: not written; {s.journal_outcomes} outcomes are safe in {s.out}/_journal, "
            "and the same command run again rebuilds results.parquet"
        )
    return "\n".join(lines)
