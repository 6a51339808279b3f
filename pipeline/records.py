"""The small typed records that stages hand to each other."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Row:
    """One manifest row on its way to the gateway."""

    index: int  # 0-based position in the manifest (data rows, header excluded)
    request_id: str
    file_url: str
    question: str
    content: str  # the user message as it will be sent (template applied)
    invalid: str | None = None  # why the row cannot be sent, if it cannot


@dataclass(frozen=True, slots=True)
class Completion:
    """What one successful attempt returned."""

    answer: str | None
    finish_reason: str | None
    response_model: str | None
    response_id: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    gateway_request_id: str | None
    http_status: int
    usage_estimated: bool = False


@dataclass(frozen=True, slots=True)
class Outcome:
    """The final word on one row in one run: what the journal stores."""

    request_id: str
    row_index: int
    status: str  # "ok" | "failed"
    answer: str | None
    finish_reason: str | None
    response_model: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    usage_estimated: bool
    error_type: str | None
    error_message: str | None
    http_status: int | None
    attempts: int
    latency_ms: float | None
    started_at: float  # epoch seconds
    completed_at: float
    response_id: str | None
    gateway_request_id: str | None
    cost_usd: float | None


@dataclass(frozen=True)
class Snapshot:
    """Progress figures, handed to progress consumers (bar, log line)."""

    rows_total: int
    rows_done: int  # rows with an outcome, this run and earlier ones
    ok: int
    failed: int
    in_flight: int
    requests: int
    tokens: int
    cost_usd: float | None
    elapsed: float
    rows_per_s: float
    eta_s: float | None
    concurrency: int


@dataclass(frozen=True)
class RunSummary:
    """What a run did; also written to ``OUT/_run.json``."""

    run_id: str
    out: str
    ended: str  # completed | completed_with_failures | aborted
    reason: str | None
    exit_code: int
    rows_total: int
    ok: int
    failed: int
    pending: int
    sent_this_run: int
    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_usd: float | None
    elapsed_s: float
    errors_by_type: dict[str, int] = field(default_factory=dict)
    concurrency_final: int = 0
    max_in_flight: int = 0
