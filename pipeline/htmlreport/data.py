"""Reading an output folder into :class:`ReportData`: everything the page shows.

Built from ``OUT/results.parquet`` (or, for a run that could not write it, the
journal) and ``OUT/_run.json`` only, so a report can be made again later from the
folder alone. Every figure is an aggregate or a bounded list, so a 1 000 000-row
folder gives a page of the same size as a 20-row one, and the rows are read in
batches (:mod:`.scan`) and folded into fixed-size aggregates, so memory does not
grow with the folder either. pandas is not imported: pyarrow.compute and numpy
are faster on a million rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..digest import SummaryReport, refs_of
from ..errors import UsageError
from ..rundir import RunDir
from ..storage import JOURNAL_DIR, RESULTS_FILE
from . import figures, rows, timeline
from .figures import Group, Histogram, Verdict
from .rows import ErrorType
from .scan import DICTIONARY, Scan
from .tally import Tally, answer_fields
from .timeline import TimeCharts

DEFAULT_BY = "model"

__all__ = ["ErrorType", "Group", "Histogram", "ReportData", "Verdict", "build", "open_folder"]


@dataclass(frozen=True)
class ReportData:
    """Everything the page shows (see the module docstring)."""

    folder: str
    run_id: str | None
    started_at: str | None
    ended_at: str | None
    model: str | None
    verdict: Verdict
    time: TimeCharts
    latency: Histogram | None
    attempts: dict[int, int]
    errors: tuple[ErrorType, ...]
    by: str
    groups: tuple[Group, ...]
    slowest: tuple[dict[str, Any], ...]
    failed: tuple[dict[str, Any], ...]
    summary: SummaryReport  # docpipe summary's figures of the folder, the verdict's source


def open_folder(out_dir: Path, by: str | None) -> tuple[Scan, dict[str, Any]]:
    """The rows of ``out_dir`` to scan, and the parsed _run.json ({} when absent or unreadable)."""
    info = RunDir(out_dir).read_run_info() or {}
    results = out_dir / RESULTS_FILE
    if results.exists():
        try:
            scan = Scan(path=results)
        except (OSError, pa.ArrowInvalid) as e:
            raise UsageError(f"{results}: cannot read: {e}") from None
        if by is not None and by not in scan.names:
            raise UsageError(
                f"{results}: no column {by!r} to break tokens and cost down by; columns: {', '.join(scan.names)}"
            )
        return scan, info
    if (out_dir / JOURNAL_DIR).is_dir() and RunDir(out_dir).parts():
        journal = RunDir(out_dir).latest()
        if by is not None and by not in journal.column_names:
            raise UsageError(f"{out_dir}: results.parquet is missing and the journal has no column {by!r}")
        return Scan(table=journal), info
    raise UsageError(f"{results}: not found; is {out_dir} a docpipe output folder?")


def build(out_dir: Path, by: str | None = None) -> ReportData:
    """Read ``out_dir`` and aggregate every figure of the report, in a few passes over
    its narrow columns (see :mod:`.scan`): memory does not grow with the rows."""
    scan, info = open_folder(out_dir, by)
    try:
        return _build(scan, info, str(out_dir), by or DEFAULT_BY)
    except (OSError, pa.ArrowInvalid) as e:
        raise UsageError(f"{out_dir}: cannot read: {e}") from None


def _build(scan: Scan, info: dict[str, Any], folder: str, by: str) -> ReportData:
    tally, picks, groups = Tally(), rows.Picks(), figures.Groups(by)
    tally.start(scan, folder, refs_of(info))
    span = timeline.Span(info.get("run_id"))
    first = [*tally.COLUMNS, *picks.COLUMNS, *span.COLUMNS, by]
    for offset, batch in scan.batches(first, DICTIONARY | {by, "reused_from"}):
        tally.add(offset, batch)
        picks.add(offset, batch)
        groups.add(batch)
        span.add(batch)
    summary = tally.report(answer_fields([folder]))  # exact percentiles: passes over latency_ms alone
    verdict = figures.verdict(summary, info)
    hist_range = figures.latency_range(tally, verdict.p99)
    hist = figures.LatencyBins(*hist_range) if hist_range else None
    bins = timeline.time_bins(span, info)
    if hist is not None or bins is not None:
        for _, batch in scan.batches([*span.COLUMNS, "latency_ms"], DICTIONARY):
            if hist is not None:
                hist.add(batch)
            if bins is not None:
                bins.add(batch)
    return ReportData(
        folder=folder,
        run_id=info.get("run_id"),
        started_at=info.get("started_at"),
        ended_at=info.get("ended_at"),
        model=(info.get("settings") or {}).get("model"),
        verdict=verdict,
        time=bins.result() if bins is not None else timeline.EMPTY,
        latency=hist.result() if hist is not None else None,
        attempts=dict(summary.attempts),
        errors=rows.error_types(picks, info.get("attempt_errors") or {}, scan),
        by=by,
        groups=groups.result(),
        slowest=rows.slowest(picks, scan),
        failed=rows.failed(picks, scan),
        summary=summary,
    )
