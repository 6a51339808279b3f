"""docpipe: answer questions about documents in bulk through an OpenAI-compatible gateway.

>>> from pipeline import run, load_config
>>> summary = run(load_config("jobs/contracts.toml"))      # doctest: +SKIP
>>> summary = run(manifest="m.csv", out="out", concurrency=32)  # doctest: +SKIP
"""

from .config import JobConfig, load_config
from .errors import (
    DocpipeError,
    ManifestError,
    RequestError,
    RetryableError,
    RowFatalError,
    RunFatalError,
    StorageError,
    UsageError,
)
from .runner import RunSummary, run, run_async

__all__ = [
    "DocpipeError",
    "JobConfig",
    "ManifestError",
    "RequestError",
    "RetryableError",
    "RowFatalError",
    "RunFatalError",
    "RunSummary",
    "StorageError",
    "UsageError",
    "load_config",
    "run",
    "run_async",
]
