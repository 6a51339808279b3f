""" "What to look at": a few plain sentences drawn from the figures, worst news first."""

from __future__ import annotations

from .data import ReportData
from .fmt import count, ms, plural

_ENDINGS = {
    "aborted": "The run was aborted{reason}: {pending} rows are pending. Run the same command again to resume.",
    "crashed": "The run crashed{reason}: {pending} rows are pending; the journal keeps every answer received.",
    "running": "_run.json still says 'running': the run is going on, or was killed. Its answers are in the journal.",
}


def notes(d: ReportData) -> list[str]:
    """Sentences for the top of the page; an all-clear when there is nothing to look at."""
    v = d.verdict
    out = []
    if v.ended in _ENDINGS:
        out.append(_ENDINGS[v.ended].format(reason=f" ({v.reason})" if v.reason else "", pending=count(v.pending)))
    failed = [e for e in d.errors if e.rows]
    if v.failed:
        worst = ", ".join(f"{e.name} {count(e.rows)}" for e in failed[:3])
        out.append(f"{plural(v.failed, 'row')} failed ({worst}): see the failed rows and the examples per error type.")
    if any(e.name == "invalid_input" for e in failed):
        out.append("invalid_input rows never reached the gateway: fix them in the manifest.")
    limited = next((e.attempts for e in d.errors if e.name == "rate_limited"), 0)
    if limited:
        limits = [lim for _, lim in d.time.limit or () if lim > 0]
        drop = (
            f"; the concurrency limit went from {limits[0]:g} down to {min(limits):g}"
            if limits and min(limits) < limits[0]
            else ""
        )
        out.append(f"{plural(limited, 'attempt')} rate limited (429){drop}.")
    retried = sum(n for k, n in d.attempts.items() if k > 1)
    if retried:
        out.append(f"{plural(retried, 'row')} needed more than one attempt.")
    if v.p50 and v.p99 and v.p99 > 5 * v.p50:
        out.append(f"Long latency tail: p99 {ms(v.p99)} is {v.p99 / v.p50:.0f}× p50 {ms(v.p50)}; see the slowest rows.")
    if not out:
        out.append("All rows ok, first time, no rate limiting: nothing to look at.")
    return out
