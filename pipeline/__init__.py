"""docpipe: answer questions about documents in bulk through an OpenAI-compatible gateway.

>>> from pipeline import run, load_config
>>> summary = run(load_config("jobs/contracts.toml"))      # doctest: +SKIP
>>> summary = run(manifest="m.csv", out="out", concurrency=32)  # doctest: +SKIP

The names below are imported when first used (PEP 562): ``import pipeline.cli`` or
``pipeline.summary`` must not pay for the run engine (aiohttp, pyarrow: 0.5 s and more)
before it knows it needs it, and ``docpipe run`` overlaps those imports (issue 10).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

#: public name -> the module that defines it
_ERRORS = ["DocpipeError", "ManifestError", "RequestError", "RetryableError", "RowFatalError", "RunFatalError",
           "StorageError", "UsageError"]  # fmt: skip
_HOMES = {
    "JobConfig": ".config",
    "load_config": ".config",
    "RunSummary": ".runner",
    "run": ".runner",
    "run_async": ".runner",
    **dict.fromkeys(_ERRORS, ".errors"),
}

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


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
