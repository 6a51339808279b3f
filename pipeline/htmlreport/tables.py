"""The page's tables: error examples, night over night, the slowest and the failed rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import blocks as b
from . import fmt
from .compare import Comparison
from .data import ReportData


def error_examples(d: ReportData) -> str:
    """A few failed rows of each error type."""
    table = [
        [
            fmt.esc(e.name),
            b.cell(x.get("request_id"), 40),
            b.cell(x.get("http_status")),
            b.cell(x.get("error_message")),
            b.cell(x.get("gateway_request_id"), 40),
        ]
        for e in d.errors
        for x in e.examples
    ]
    if not table:
        return ""
    examples = b.table(["error_type", "request_id", "HTTP", "error_message", "gateway_request_id"], table)
    return b.card("Failed rows: examples per error type", examples, wide=True)


def comparison(c: Comparison) -> str:
    """What changed since the earlier folder; every figure also in ``data-value`` (``diff_*`` keys)."""
    figs = [
        b.figure("diff_changed", c.changed, fmt.count(c.changed), "answers changed", "bad" if c.changed else ""),
        b.figure("diff_unchanged", c.unchanged, fmt.count(c.unchanged), "answers unchanged"),
        b.figure("diff_new", c.new, fmt.count(c.new), "new rows"),
        b.figure("diff_gone", c.gone, fmt.count(c.gone), "rows gone"),
        b.figure("diff_tokens", c.tokens.delta, fmt.signed(c.tokens.delta), "tokens change"),
        b.figure("diff_cost_usd", c.cost_usd.delta, fmt.signed(c.cost_usd.delta, "money"), "cost change"),
        b.figure("diff_failure_rate", c.failure_rate.delta, fmt.signed(c.failure_rate.delta, "percent"),
                 "failure rate change"),
    ]  # fmt: skip
    deltas = [
        ["tokens", fmt.count(c.tokens.a), fmt.count(c.tokens.b), fmt.signed(c.tokens.delta)],
        ["cost", fmt.money(c.cost_usd.a), fmt.money(c.cost_usd.b), fmt.signed(c.cost_usd.delta, "money")],
        ["failure rate", fmt.percent(c.failure_rate.a), fmt.percent(c.failure_rate.b),
         fmt.signed(c.failure_rate.delta, "percent")],
    ]  # fmt: skip
    moves = ", ".join(f"{k} {n}" for k, n in sorted(c.status_changes.items())) or "none"
    examples = [[b.cell(e["request_id"], 40), b.cell(e["question"], 80), b.cell(e["answer_a"], 160),
                 b.cell(e["answer_b"], 160)] for e in c.examples]  # fmt: skip
    body = (
        f'<div class="figs">{"".join(figs)}</div>'
        + b.table(["", f"before ({c.rows_a:,} rows)", f"now ({c.rows_b:,} rows)", "change"], deltas, "num")
        + f'<p class="sub">status changes: {fmt.esc(moves)}</p>'
        + (b.table(["request_id", "question", "answer before", "answer now"], examples) if examples else "")
    )
    note = "as docpipe diff BEFORE NOW says it (rows paired by request_id)"
    return b.card(f"What changed since {c.a}", body, note, wide=True)


def slowest(title: str, rows: Sequence[dict[str, Any]], key: str) -> str:
    """The slowest rows."""
    if not rows:
        return b.card(title, b.empty("No rows."), wide=True)
    table = b.table(
        ["latency", "attempts", "status", "error_type", "request_id", "file_url", "gateway_request_id"],
        [
            [
                fmt.ms(r.get("latency_ms")),
                fmt.count(r.get("attempts")),
                fmt.esc(r.get("status")),
                fmt.esc(r.get("error_type") or ""),
                b.cell(r.get("request_id"), 40),
                b.cell(r.get("file_url"), 70),
                b.cell(r.get("gateway_request_id"), 40),
            ]
            for r in rows
        ],
        key,
    )
    return b.card(title, table, wide=True)


def failed(d: ReportData) -> str:
    """The first failed rows."""
    title = "Failed rows"
    if not d.failed:
        return b.card(title, b.empty("No row failed."), wide=True)
    shown = f"the first {len(d.failed)} of {fmt.count(d.verdict.failed)}" if d.verdict.failed > len(d.failed) else ""
    table = b.table(
        ["error_type", "HTTP", "attempts", "request_id", "file_url", "error_message", "gateway_request_id"],
        [
            [
                fmt.esc(r.get("error_type")),
                b.cell(r.get("http_status")),
                fmt.count(r.get("attempts")),
                b.cell(r.get("request_id"), 40),
                b.cell(r.get("file_url"), 60),
                b.cell(r.get("error_message"), 90),
                b.cell(r.get("gateway_request_id"), 40),
            ]
            for r in d.failed
        ],
        "failed",
    )
    return b.card(title, table, shown, wide=True)
