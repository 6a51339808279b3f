"""The page's chart panels: throughput, in flight, failed attempts, latency, attempts, errors, groups."""

from __future__ import annotations

from . import blocks as b
from . import fmt
from .charts import Axis, Bars, Line, Marker, bar_list, legend, xy_chart
from .data import ReportData
from .timeline import ERROR_SERIES


def charts(d: ReportData) -> str:
    """The grid of chart panels."""
    return (
        '<section class="grid">'
        + "".join([_throughput(d), _in_flight(d), _failures_over_time(d), _latency(d), _attempts(d), _errors(d)])
        + "</section>"
    )


def _time_axis(d: ReportData) -> Axis:
    return Axis(0.0, d.time.span_s, fmt.clock, time=True)


def _throughput(d: ReportData) -> str:
    t = d.time
    if t.empty or not (any(t.ok_per_s) or any(t.failed_per_s)):
        return b.card("Throughput", b.empty("No rows completed in this run."))
    bars = [Bars("rows ok/s", b.OK, t.ok_per_s), Bars("rows failed/s", b.FAILED, t.failed_per_s)]
    lines, keys = [], [("rows ok/s", b.OK), ("rows failed/s", b.FAILED)]
    if t.requests_per_s is not None:
        step = [((i + 0.5) * t.bin_s, r) for i, r in enumerate(t.requests_per_s)]
        lines.append(Line("requests/s", b.BLUE, step))
        keys.append(("requests/s (retries included)", b.BLUE))
    chart = xy_chart("throughput", "rows per second over time", _time_axis(d), bars=bars, lines=lines)
    return b.card("Throughput", chart + legend(keys), f"per second, {fmt.duration(t.bin_s)} bins; x: time since start")


def _in_flight(d: ReportData) -> str:
    t = d.time
    if t.empty or not t.in_flight:
        return b.card("In flight", b.empty("No timeline in _run.json and no row times to estimate it from."))
    lines = [Line("in flight", b.BLUE, t.in_flight)]
    keys = [
        ("requests in flight" if not t.estimated else "rows in progress (from the rows' start and end times)", b.BLUE)
    ]
    if t.limit:
        lines.append(Line("concurrency limit", b.GREY, t.limit, dashed=True))
        keys.append(("concurrency limit", b.GREY))
    chart = xy_chart("in_flight", "requests in flight over time", _time_axis(d), lines=lines)
    said = "estimated from the rows' times" if t.estimated else "sampled by the run"
    return b.card("In flight and concurrency limit", chart + legend(keys), f"{said}; x: time since start")


def _failures_over_time(d: ReportData) -> str:
    t = d.time
    title = "429s, server errors and timeouts"
    if t.errors is None:
        return b.card(title, b.empty("No timeline in _run.json: failed attempts over time were not recorded."))
    if not any(sum(v) for v in t.errors.values()):
        return b.card(title, b.empty("No attempt was rate limited, hit a server error or timed out."))
    bars = [Bars(ERROR_SERIES[k], b.ERROR_COLORS[k], [float(x) for x in v]) for k, v in t.errors.items()]
    chart = xy_chart("failures", "failed attempts over time", _time_axis(d), bars=bars)
    keys = [(f"{ERROR_SERIES[k]} ({fmt.count(sum(v))})", b.ERROR_COLORS[k]) for k, v in t.errors.items()]
    return b.card(title, chart + legend(keys), f"failed attempts per {fmt.duration(t.bin_s)} (retried or not)")


def _latency(d: ReportData) -> str:
    h, v = d.latency, d.verdict
    if h is None:
        return b.card("Latency", b.empty("No row has a latency (no request reached the gateway)."))
    marks = [
        Marker(f"{k} {fmt.ms(x)}", x, c)
        for k, x, c in (("p50", v.p50, b.OK), ("p95", v.p95, "#f08c00"), ("p99", v.p99, b.FAILED))
        if x is not None
    ]
    chart = xy_chart(
        "latency",
        "latency distribution",
        Axis(h.lo, h.hi, lambda x: fmt.short(x)),
        bars=[Bars("rows", b.BLUE, [float(c) for c in h.counts])],
        markers=marks,
    )
    above = f"; {fmt.count(h.above)} rows above {fmt.ms(h.hi)} not drawn" if h.above else ""
    keys = [(m.label, m.color) for m in marks]
    return b.card(
        "Latency",
        chart + legend(keys),
        f"rows per bin, ms of the last attempt ({fmt.count(v.latency_rows)} rows){above}",
    )


def _attempts(d: ReportData) -> str:
    if not d.attempts:
        return b.card("Attempts per row", b.empty("No attempts recorded."))
    rows = [(f"{k} attempt{'s' if k != 1 else ''}", [float(n)]) for k, n in d.attempts.items()]
    chart = bar_list("attempts", "rows by attempts", rows, [b.BLUE], lambda v: fmt.plural(int(v[0]), "row"))
    return b.card("Attempts per row", chart, "requests sent for a row in its latest run")


def _errors(d: ReportData) -> str:
    if not d.errors:
        return b.card("Errors by type", b.empty("No row failed and no attempt failed."))
    rows = [(e.name, [float(e.attempts), float(e.rows)]) for e in d.errors]
    chart = bar_list(
        "errors",
        "errors by type",
        rows,
        [b.FAILED_ATTEMPT, b.FAILED],
        lambda v: f"{fmt.plural(int(v[1]), 'row')} · {fmt.plural(int(v[0]), 'attempt')}",
        stacked=False,
    )
    keys = legend([("failed rows", b.FAILED), ("failed attempts (retried; the row may be ok)", b.FAILED_ATTEMPT)])
    return b.card("Errors by type", chart + keys, "rows whose final outcome is the error, and attempts that met it")


def groups(d: ReportData) -> str:
    """Tokens and cost by the ``--by`` column: bars and a table."""
    title = f"Tokens and cost by {d.by}"
    if not d.groups:
        return b.card(title, b.empty(f"No column {d.by!r} in the results."), wide=True)
    rows = [(g.key, [float(g.total_tokens)]) for g in d.groups]
    chart = bar_list("groups", title, rows, [b.BLUE], lambda v: f"{fmt.short(v[0])} tokens")
    table = b.table(
        [d.by, "rows", "failed", "tokens", "cost"],
        [
            [
                b.cell(g.key, 60),
                fmt.count(g.rows),
                fmt.count(g.failed),
                fmt.count(g.total_tokens),
                fmt.money(g.cost_usd),
            ]
            for g in d.groups
        ],
        "num",
    )
    return b.card(title, chart + table, "docpipe report OUT --by COLUMN picks another column", wide=True)
