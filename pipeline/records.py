"""The small typed records that stages hand to each other."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .digest import SummaryReport


class Status(StrEnum):
    """A row's outcome in results.parquet's ``status`` column."""

    OK = "ok"
    FAILED = "failed"


class Ended(StrEnum):
    """How a run ended, as ``_run.json`` and :class:`RunSummary` say it."""

    RUNNING = "running"  #: written at the start; a crash leaves it so
    COMPLETED = "completed"
    COMPLETED_WITH_FAILURES = "completed_with_failures"
    ABORTED = "aborted"  #: stopped early, resumable
    CRASHED = "crashed"  #: an unexpected error (exit 4)


@dataclass(frozen=True, slots=True)
class Row:
    """One manifest row on its way to the gateway."""

    index: int  # 0-based position in the manifest (data rows, header excluded)
    request_id: str
    file_url: str
    question: str
    content: str  # the user message as it will be sent (template applied)
    invalid: str | None = None  # why the row cannot be sent, if it cannot
    reuse_key: int | None = None  # the request's identity for reuse (pipeline/reuse.py)
    # issue 15 (pipeline/forms.py, models.py, embed.py)
    model: str | None = None  # the model to ask; None: the run's model
    form: str | None = None  # inline | image_url | file | auto: how the document is sent; None: the run's
    document: Document | None = None  # the fetched bytes (--embed), only while the row is in flight


@dataclass(frozen=True, slots=True)
class Document:
    """A document docpipe fetched itself (``--embed``), ready to send as a ``data:`` URL."""

    data_url: str  # data:<content type>;base64,<bytes>
    filename: str
    content_type: str
    size: int  # bytes fetched


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
    status: Status
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
    # incremental nights (pipeline/reuse.py, pipeline/docmeta.py)
    reused_from: str | None = None  # the run that paid for a copied-forward answer
    doc_etag: str | None = None
    doc_last_modified: float | None = None  # epoch seconds
    doc_bytes: int | None = None
    reuse_key: int | None = None
    model: str | None = None  # the model that answered (or was asked last); None: the run's model
    models_tried: tuple[str, ...] | None = None  # in order, ending with ``model`` (fallbacks)


def _epoch(value: Any) -> float:
    """A stored time as epoch seconds: a datetime (Arrow's ``to_pylist``) or already a float."""
    return value if isinstance(value, float) else float(value.timestamp())


def copied_outcome(old: Mapping[str, Any], request_id: str, row_index: int, **changes: Any) -> Outcome:
    """An ok answer of an earlier run carried into this one without a request (``--reuse``, or a
    changed schema it still fits): answer, usage, cost, times and answering model as stored,
    ``attempts`` 0 and no latency; ``changes`` sets the rest (reused_from, document metadata)."""
    tried = old.get("models_tried")
    return Outcome(
        request_id=request_id,
        row_index=row_index,
        status=Status.OK,
        answer=old["answer"],
        finish_reason=old["finish_reason"],
        response_model=old["response_model"],
        prompt_tokens=old["prompt_tokens"],
        completion_tokens=old["completion_tokens"],
        total_tokens=old["total_tokens"],
        usage_estimated=bool(old["usage_estimated"]),
        error_type=None,
        error_message=None,
        http_status=old["http_status"],
        attempts=0,
        latency_ms=None,
        started_at=_epoch(old["started_at"]),
        completed_at=_epoch(old["completed_at"]),
        response_id=old["response_id"],
        gateway_request_id=old["gateway_request_id"],
        cost_usd=old["cost_usd"],
        model=old.get("model"),
        models_tried=tuple(tried) if tried is not None else None,
        **changes,
    )


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
    ended: Ended
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
    #: the results file this summary counted, or None when it could not be written
    results_file: str | None = None
    #: outcomes durable in the journal (what a rerun keeps even when results_file is None)
    journal_outcomes: int = 0
    #: rows whose answer was copied forward from an earlier run (--reuse), and what they had cost
    reused: int = 0
    cost_saved_usd: float | None = None
    #: ``docpipe summary``'s figures of ``out`` after the run, as the HTML report computed them
    #: (what ``docpipe run`` prints, without reading the rows again); None when no report was
    #: made. Not part of ``_run.json``.
    digest: SummaryReport | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a row's last attempt failed, as the results table records it."""

    error_type: str
    message: str
    http_status: int | None = None
    gateway_request_id: str | None = None


def make_outcome(
    row: Row,
    completion: Completion | None,
    *,
    failure: Failure | None,
    started: float,
    completed: float,
    attempts: int,
    latency: float | None,
    cost: float | None,
) -> Outcome:
    """The journal record for a row: from its completion, or (``failure``) from its last error."""
    c = completion
    f = failure
    return Outcome(
        request_id=row.request_id,
        row_index=row.index,
        status=Status.FAILED if f is not None else Status.OK,
        answer=c.answer if c else None,
        finish_reason=c.finish_reason if c else None,
        response_model=c.response_model if c else None,
        prompt_tokens=c.prompt_tokens if c else None,
        completion_tokens=c.completion_tokens if c else None,
        total_tokens=c.total_tokens if c else None,
        usage_estimated=c.usage_estimated if c else False,
        error_type=f.error_type if f else None,
        error_message=f.message if f else None,
        http_status=c.http_status if c else (f.http_status if f else None),
        attempts=attempts,
        latency_ms=None if latency is None else latency * 1000.0,
        started_at=started,
        completed_at=completed,
        response_id=c.response_id if c else None,
        gateway_request_id=c.gateway_request_id if c else (f.gateway_request_id if f else None),
        cost_usd=cost,
        reuse_key=row.reuse_key,
        model=row.model,
    )
