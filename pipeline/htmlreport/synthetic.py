"""A results folder of any size built without a run, for ``docpipe bench --scenario report-1m`` and tests.

Shaped like a night of real work: a passthrough ``category`` column, a few percent
failed rows of several error types, retries, a log-normal latency with a tail,
rows spread over an hour, and a ``_run.json`` with a full 1000-point timeline.
Built in numpy/Arrow (no Python loop over rows), deterministic for a seed.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..rundir import RunDir
from ..schema import output_schema
from ..storage import RESULTS_FILE, ROW_GROUP_ROWS
from . import arrow

RUN_ID = "20261126T010000Z-5y47h3"
SPAN_S = 3600.0
CATEGORIES = [
    "contract",
    "invoice",
    "report",
    "paper",
    "filing",
    "form",
    "standard",
    "law",
    "image",
    "guide",
    "letter",
    "memo",
    "slide",
    "table",
    "scan",
    "other",
]
ERRORS = {
    "rate_limited": (429, "HTTP 429 rate limited"),
    "server_error": (502, "HTTP 502 bad gateway"),
    "timeout": (None, "no answer within 180 s"),
    "invalid_request": (400, "HTTP 400 file too large"),
    "invalid_input": (None, "file_url is empty"),
}


def _text(prefix: str, idx: Any, suffix: str = "") -> Any:
    return pc.binary_join_element_wise(prefix, idx, suffix, "")


def _where(ok: np.ndarray[Any, Any], text: str) -> Any:
    """``text`` on ok rows, null on failed ones."""
    return pa.array(np.full(len(ok), text), pa.string(), mask=~ok)


def synthetic_table(rows: int, seed: int = 0, fail_share: float = 0.03) -> pa.Table:
    """``rows`` result rows (see the module docstring)."""
    rng = np.random.default_rng(seed)
    idx = pc.cast(pa.array(np.arange(rows, dtype=np.int64)), pa.string())
    failed = rng.random(rows) < fail_share
    kind = rng.integers(0, len(ERRORS), rows)
    attempts = np.minimum(1 + rng.geometric(0.8, rows) - 1 + failed * 2, 6).astype(np.int16)
    latency = rng.lognormal(np.log(4000), 0.6, rows)
    start_us = int(datetime(2026, 11, 26, 1, tzinfo=UTC).timestamp() * 1e6)
    started = start_us + np.sort(rng.random(rows) * (SPAN_S - 120) * 1e6).astype(np.int64)
    completed = started + (latency * 1000 * attempts).astype(np.int64)
    prompt = rng.integers(200, 4000, rows)
    completion = rng.integers(20, 600, rows)
    ok = ~failed

    status = np.array([code or 0 for code, _ in ERRORS.values()], dtype=np.int16)[kind]
    columns: dict[str, Any] = {
        "request_id": _text("r", idx),
        "file_url": _text("https://docs.example.com/night/", idx, ".pdf"),
        "question": _text("What is the total of document ", idx, "?"),
        "category": pa.array(np.array(CATEGORIES)[rng.integers(0, len(CATEGORIES), rows)], pa.string()),
        "model": pa.array(np.full(rows, "gpt-4o-all"), pa.string()),
        "response_model": _where(ok, "gpt-4o"),
        "answer": _where(ok, "The total is 42."),
        "finish_reason": _where(ok, "stop"),
        "prompt_tokens": pa.array(prompt, pa.int64(), mask=failed),
        "completion_tokens": pa.array(completion, pa.int64(), mask=failed),
        "total_tokens": pa.array(prompt + completion, pa.int64(), mask=failed),
        "usage_estimated": pa.array(np.zeros(rows, dtype=bool)),
        "status": pa.array(np.where(ok, "ok", "failed"), pa.string()),
        "error_type": pa.array(np.array(list(ERRORS))[kind], pa.string(), mask=ok),
        "error_message": pa.array(np.array([m for _, m in ERRORS.values()])[kind], pa.string(), mask=ok),
        "http_status": pa.array(np.where(ok, 200, status), pa.int16(), mask=failed & (status == 0)),
        "attempts": pa.array(attempts),
        "latency_ms": pa.array(latency),
        "started_at": pa.array(started, pa.timestamp("us", tz="UTC")),
        "completed_at": pa.array(completed, pa.timestamp("us", tz="UTC")),
        "response_id": _where(ok, "chatcmpl-x"),
        "gateway_request_id": _text("2026112601", idx),
        "run_id": pa.array(np.full(rows, RUN_ID), pa.string()),
        "cost_usd": pa.array((prompt * 2.5 + completion * 10.0) / 1e6 * ok),
    }
    schema = output_schema([pa.field("category", pa.string())])
    # columns this generator does not fill (reused_from, doc_* of issue 12, ...) are null
    arrays = [columns[f.name].cast(f.type) if f.name in columns else pa.nulls(rows, f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def write_synthetic(out_dir: Path, rows: int, seed: int = 0) -> Path:
    """Write ``out_dir/results.parquet`` and ``out_dir/_run.json``; returns ``out_dir``."""
    table = synthetic_table(rows, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out_dir / RESULTS_FILE, compression="zstd", row_group_size=ROW_GROUP_ROWS)
    ok = arrow.count_true(arrow.equal(table["status"], "ok"))
    started = datetime(2026, 11, 26, 1, tzinfo=UTC)
    errors = arrow.value_counts(table["error_type"])
    info = {
        "run_id": RUN_ID,
        "ended": "completed_with_failures",
        "reason": None,
        "exit_code": 1,
        "rows_total": rows,
        "ok": ok,
        "failed": rows - ok,
        "pending": 0,
        "requests": int(pc.sum(table["attempts"]).as_py() or 0),
        "elapsed_s": SPAN_S,
        "started_at": started.isoformat(),
        "ended_at": (started + timedelta(seconds=SPAN_S)).isoformat(),
        "errors_by_type": errors,
        "attempt_errors": {k: v * 3 for k, v in errors.items()},
        "timeline": _timeline(table, errors),
        "settings": {"model": "gpt-4o-all", "concurrency": 512},
    }
    RunDir(out_dir).write_run_info(info)
    return out_dir


def _timeline(table: pa.Table, errors: dict[str, int], points: int = 1000) -> list[dict[str, float]]:
    """Cumulative counters at ``points`` instants, with a concurrency limit that dips under 429s."""
    t = np.linspace(0.0, SPAN_S, points)
    share = t / SPAN_S
    requests = int(pc.sum(table["attempts"]).as_py() or 0)
    limit = np.where((share > 0.4) & (share < 0.5), 256, 512)
    return [
        {
            "t": round(float(x), 3),
            "in_flight": int(lim * 0.97),
            "limit": int(lim),
            "requests": int(requests * s),
            "ok": 0,
            "failed": 0,
            "rate_limited": int(errors.get("rate_limited", 0) * 3 * min(1.0, max(0.0, (s - 0.35) * 5))),
            "server_error": int(errors.get("server_error", 0) * 3 * s),
            "timeout": int(errors.get("timeout", 0) * 3 * s),
        }
        for x, s, lim in zip(t, share, limit, strict=True)
    ]
