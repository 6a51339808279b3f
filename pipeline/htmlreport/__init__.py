"""The run report: one self-contained HTML page (``OUT/_report.html``) from an output folder.

::

    data.py      reads the folder into ReportData: a few passes over narrow columns, batch by batch
    scan.py      the rows in bounded batches (results.parquet or the journal), and chosen rows by position
    tally.py     docpipe summary's figures folded batch by batch (summary, the run's printed report, the verdict)
    figures.py   verdict (from the tally), latency histogram, groups of --by
    quantiles.py exact percentiles in fixed memory (radix selection over the batches)
    rows.py      slowest and failed rows, examples per error type (long strings read for those rows only)
    timeline.py  throughput, in flight and failed attempts on one time axis
    compare.py   night over night: what changed since an earlier folder (= docpipe diff)
    notes.py     "what to look at": plain sentences from the figures
    charts.py    inline SVG charts (no script)
    page.py      the HTML page, with cards.py (chart panels), tables.py, blocks.py, style.py, fmt.py
    arrow.py     the few pyarrow.compute steps, typed
    synthetic.py a results folder of any size, for the bench and the tests

Use :func:`write_report` (what ``docpipe report`` and the end of every run call).
"""

from __future__ import annotations

from pathlib import Path

from ..storage import REPORT_FILE, atomic_write_bytes
from .compare import Comparison
from .compare import compare as compare_folders
from .data import ReportData, build
from .page import render

__all__ = ["REPORT_FILE", "Comparison", "ReportData", "build", "render_report", "write_report", "write_report_data"]


def render_report(out_dir: Path, compare: Path | None = None, by: str | None = None) -> str:
    """The report page of ``out_dir`` as HTML text; with ``compare`` (an earlier folder), what changed since."""
    return _render(build(Path(out_dir), by), out_dir, compare)


def _render(data: ReportData, out_dir: Path, compare: Path | None) -> str:
    comparison = compare_folders(Path(compare), Path(out_dir)) if compare is not None else None
    return render(data, comparison)


def write_report(out_dir: Path, compare: Path | None = None, by: str | None = None, html: Path | None = None) -> Path:
    """Write the report of ``out_dir`` to ``html`` (default ``out_dir/_report.html``), atomically; returns the path.

    ``compare``: an earlier output folder (last night's) to show what changed since;
    ``by``: the column to break tokens and cost down by (default ``model``).
    Raises :class:`~pipeline.errors.UsageError` for a folder that is not a docpipe output
    folder or a ``by`` column it does not have.
    """
    target = Path(html) if html is not None else Path(out_dir) / REPORT_FILE
    write_report_data(out_dir, compare, by, target)
    return target


def write_report_data(out_dir: Path, compare: Path | None = None, by: str | None = None,
                      html: Path | None = None) -> ReportData:  # fmt: skip
    """:func:`write_report`, returning what the page shows (its ``summary`` is ``docpipe summary``'s
    figures of the folder: the end of a run prints them without reading the rows again)."""
    target = Path(html) if html is not None else Path(out_dir) / REPORT_FILE
    data = build(Path(out_dir), by)
    page = _render(data, out_dir, compare)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, page.encode("utf-8"))
    return data
