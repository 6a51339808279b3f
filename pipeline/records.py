"""The small typed records that stages hand to each other."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True, slots=True)
class Row:
    """One manifest row on its way to the gateway."""

    index: int  # 0-based position in the manifest (data rows, header excluded)
    request_id: str
    file_url: str
    question: str
    content: str  # the user message as it will be sent (template applied)
    invalid: str | None = None  # why the row cannot be sent, if it cannot
    fields: Mapping[str, object] | None = None  # extra columns, only when the template uses them


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
