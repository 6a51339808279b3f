"""The exception hierarchy of docpipe, in one place.

::

    DocpipeError
    ├── UsageError              bad usage or input, found before anything is sent   -> exit 2
    │   └── ManifestError       the manifest cannot be read or lacks a column
    ├── StorageError            the output folder cannot be written                 -> exit 3
    ├── GatewayRefused          models/quota: the gateway refused the key           -> exit 3
    └── RequestError            one attempt at one row failed
        ├── RetryableError      try the row again after a back-off
        │   ├── RateLimited     429; also slows the whole pool
    │   ├── GatewayUnreachable  connection refused, DNS or TLS failure: run-fatal while
    │   │                   the gateway has never answered in this run
        │   └── NoChannel       503 "no channel for model": retried a little, then run-fatal
        ├── RowFatalError       record the row as ``failed`` and go on
        │   └── UnreadableDocument  the model says it could not open the file (own retry budget)
        └── RunFatalError       stop dispatching: no key, no quota, no model (exit 3, resumable)

The retry policy and the circuit breaker are each one ``isinstance`` check on
this tree; the ``error_type`` attribute is what lands in the results table.
:class:`ExitCode` is the one list of the process exit codes.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "ERROR_TYPES",
    "DocpipeError",
    "ExitCode",
    "GatewayRefused",
    "GatewayUnreachable",
    "ManifestError",
    "NoChannel",
    "RateLimited",
    "RequestError",
    "RetryableError",
    "RowFatalError",
    "RunFatalError",
    "StorageError",
    "UnreadableDocument",
    "UsageError",
]

#: Every value the ``error_type`` column can hold (DESIGN.md section 4, plus
#: ``unreadable_document`` and ``no_channel`` which issue 4 asked for).
ERROR_TYPES = (
    "invalid_input",
    "auth",
    "quota",
    "no_channel",
    "rate_limited",
    "server_error",
    "timeout",
    "connection",
    "malformed_response",
    "invalid_request",
    "content_filter",
    "unreadable_document",
    "invalid_answer",  # a structured answer that never validated against the schema (issue 11)
)


class ExitCode(IntEnum):
    """What a docpipe process exits with (README: Exit codes)."""

    OK = 0  # every row ok
    FAILED_ROWS = 1  # finished, some rows failed (validate: bad rows or failing URLs)
    USAGE = 2  # bad usage or input, found before anything was sent
    ABORTED = 3  # stopped early (key, quota, signal, deadline, budget, disk): resumable
    INTERNAL = 4  # an unexpected error: a bug in docpipe, not in the input


class DocpipeError(Exception):
    """Base of every error docpipe raises on purpose."""


class UsageError(DocpipeError):
    """Bad usage or input, detected before any request is sent."""


class ManifestError(UsageError):
    """The manifest cannot be read, is empty, lacks a column or repeats an id."""


class StorageError(DocpipeError):
    """The output folder cannot be written; outcomes already durable stay readable."""


class GatewayRefused(DocpipeError):
    """``docpipe models``/``quota``: the gateway refused the key (401/403)."""


class RequestError(DocpipeError):
    """One attempt at one row failed; carries what the results table records."""

    error_type: str = "server_error"

    def __init__(
        self,
        message: str,
        *,
        error_type: str | None = None,
        http_status: int | None = None,
        gateway_request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if error_type is not None:
            self.error_type = error_type
        self.http_status = http_status
        self.gateway_request_id = gateway_request_id
        #: seconds the server asked us to wait (Retry-After and friends), if it said
        self.retry_after = retry_after

    def __str__(self) -> str:
        status = f"HTTP {self.http_status}: " if self.http_status else ""
        return f"{self.error_type}: {status}{self.message}"


class RetryableError(RequestError):
    """A failure that another attempt may not have: 5xx, timeouts, broken bodies."""


class RateLimited(RetryableError):
    """429: back off, and make the whole pool slow down, not only this row."""

    error_type = "rate_limited"


class GatewayUnreachable(RetryableError):
    """No connection could be made (refused, DNS, TLS): the gateway never saw the request."""

    error_type = "connection"


class NoChannel(RetryableError):
    """503 'no available channel for model': a configuration error once it persists."""

    error_type = "no_channel"


class RowFatalError(RequestError):
    """This row cannot succeed as asked (400, 404, 413, 422, content filter)."""

    error_type = "invalid_request"


class UnreadableDocument(RowFatalError):
    """The gateway answered, but the answer says the document could not be read."""

    error_type = "unreadable_document"


class RunFatalError(RequestError):
    """No request can succeed until a person acts: bad key, no quota, model not served."""

    error_type = "auth"
