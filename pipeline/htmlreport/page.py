"""The report page: one self-contained HTML file (inline CSS and SVG, no script, nothing fetched).

A Content-Security-Policy meta tag forbids every fetch but inline styles and
``data:`` images, so the page provably stays put when opened from a mail
attachment or a bucket. Verdict figures carry ``data-figure``/``data-value``
attributes with the exact numbers, for machines (and the tests).
"""

from __future__ import annotations

from datetime import UTC, datetime

from . import blocks as b
from . import cards, fmt, tables
from .compare import Comparison
from .data import ReportData
from .notes import notes
from .style import CSS

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
_ENDED = {
    "completed": ("good", "Completed"),
    "completed_with_failures": ("warn", "Completed with failed rows"),
    "aborted": ("bad", "Aborted (resumable)"),
    "crashed": ("bad", "Crashed"),
    "running": ("bad", "Running, or killed"),
}


def render(d: ReportData, comparison: Comparison | None = None) -> str:
    """The whole page as one string."""
    title = f"docpipe report: {d.folder}"
    sections = [_header(d), _verdict(d), _notes(d), cards.charts(d), tables.error_examples(d), cards.groups(d)]
    if comparison is not None:
        sections.append(tables.comparison(comparison))
    sections += [tables.slowest("Slowest rows", d.slowest, "slowest"), tables.failed(d), _footer(d)]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{fmt.esc(title)}</title><style>{CSS}</style></head><body><main>"
        + "".join(sections)
        + "</main></body></html>\n"
    )


def _header(d: ReportData) -> str:
    bits = [f"run <code>{fmt.esc(d.run_id or 'unknown')}</code>"]
    if d.model:
        bits.append(f"model <code>{fmt.esc(d.model)}</code>")
    if d.started_at:
        bits.append(f"{fmt.esc(_when(d.started_at))} → {fmt.esc(_when(d.ended_at))}")
    return f"<header><h1>Run report <span>{fmt.esc(d.folder)}</span></h1><p>{' · '.join(bits)}</p></header>"


def _when(text: str | None) -> str:
    try:
        return datetime.fromisoformat(str(text)).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return str(text)


def _verdict(d: ReportData) -> str:
    v = d.verdict
    tone, said = _ENDED.get(v.ended or "", ("warn", "No run ending recorded (a merge, or no _run.json)"))
    exit_text = f" · exit {v.exit_code}" if v.exit_code is not None else ""
    reason = f" · {fmt.esc(v.reason)}" if v.reason else ""
    figs = [
        b.figure("ok", v.ok, fmt.count(v.ok), f"rows ok of {fmt.count(v.rows + (v.pending or 0))}", "good"),
        b.figure("failed", v.failed, fmt.count(v.failed), "rows failed", "bad" if v.failed else ""),
        b.figure("pending", v.pending, fmt.count(v.pending), "rows pending", "bad" if v.pending else ""),
        b.figure("cost_usd", v.cost_usd, fmt.money(v.cost_usd), "cost"),
        b.figure(
            "total_tokens",
            v.total_tokens,
            fmt.count(v.total_tokens),
            f"tokens ({fmt.count(v.prompt_tokens)} in + {fmt.count(v.completion_tokens)} out)",
        ),
        b.figure("elapsed_s", v.elapsed_s, fmt.duration(v.elapsed_s), "wall time"),
        b.figure("rows_per_s", v.rows_per_s, "–" if v.rows_per_s is None else f"{v.rows_per_s:,.2f}", "rows/s"),
        b.figure("requests", v.requests, fmt.count(v.requests), "requests sent"),
        b.figure("p50", v.p50, fmt.ms(v.p50), "latency p50"),
        b.figure("p95", v.p95, fmt.ms(v.p95), "latency p95"),
        b.figure("p99", v.p99, fmt.ms(v.p99), "latency p99"),
    ]
    hidden = "".join(b.figure(k, getattr(v, k), "", "") for k in ("rows", "prompt_tokens", "completion_tokens"))
    return (
        f'<section class="verdict {tone}" data-ended="{fmt.esc(v.ended or "")}"><h2>{fmt.esc(said)}{exit_text}'
        f'{reason}</h2><div class="figs">{"".join(figs)}</div><div hidden>{hidden}</div></section>'
    )


def _notes(d: ReportData) -> str:
    items = "".join(f"<li>{fmt.esc(n)}</li>" for n in notes(d))
    return f'<section class="notes"><h2>What to look at</h2><ul>{items}</ul></section>'


def _footer(d: ReportData) -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"<footer>Made {now} by docpipe from {fmt.esc(d.folder)}/results.parquet and _run.json; "
        f"<code>docpipe report {fmt.esc(d.folder)}</code> makes it again.</footer>"
    )
