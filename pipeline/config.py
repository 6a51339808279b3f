"""Job settings: defaults < TOML job file < environment < flags, as one frozen object.

The API key is held in :class:`JobConfig` only as ``api_key`` with ``repr=False``
and is dropped by :meth:`JobConfig.public`, which is all that run.json, logs and
``--help`` output ever see. A job file names the *environment variable* that
holds the key (``api_key_env``), never the key itself.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from datetime import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import UsageError

DEFAULT_BASE_URL = "https://api.apicore.ai/v1"
DEFAULT_MODEL = "gpt-4o-all"
DEFAULT_TEMPLATE = "{file_url} {question}"
KEY_ENV_VARS = ("APICORE_API_KEY", "OPENAI_API_KEY")

#: Phrases with which gateways answer when the model could not open the file.
DEFAULT_UNREADABLE_PATTERNS = (
    r"(?i)\b(cannot|can't|can not|could not|couldn't|unable to|not able to)\s+"
    r"(access|open|read|retrieve|fetch|download|load|view)\b",
    r"无法(访问|打开|读取|获取|下载|查看)",
    r"不能(访问|打开|读取)",
)

#: Generation parameters the gateway documents; only the ones set are sent.
GENERATION_PARAMS = (
    "temperature",
    "top_p",
    "max_tokens",
    "n",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "user",
)


@dataclass(frozen=True)
class JobConfig:
    """Everything one run needs. Build with :func:`load_config`."""

    manifest: str | None = None
    out: str | None = None
    manifest_format: str | None = None  # "csv" | "parquet"; None = by extension
    # gateway
    base_url: str = DEFAULT_BASE_URL
    model: str = DEFAULT_MODEL
    api_key: str | None = field(default=None, repr=False)
    api_key_env: str | None = None
    stream: bool = False
    # request
    template: str = DEFAULT_TEMPLATE
    system: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    # columns: explicit names, or None for the aliases of DESIGN.md section 3
    file_url_column: str | None = None
    question_column: str | None = None
    id_column: str | None = None
    # limits
    concurrency: int = 16
    adaptive: bool = True
    rpm: int | None = None
    tpm: int | None = None
    max_cost: float | None = None
    max_total_tokens: int | None = None
    # retry
    max_attempts: int = 6
    timeout: float = 180.0
    connect_timeout: float = 15.0
    row_budget: float = 900.0
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    unreadable_retries: int = 1
    unreadable_patterns: tuple[str, ...] = DEFAULT_UNREADABLE_PATTERNS
    no_channel_attempts: int = 3
    breaker_threshold: int = 25  # consecutive server errors that open the circuit breaker
    breaker_probes: int = 8  # failed probes (pauses doubling from breaker_pause, cap 300 s) before giving up
    breaker_pause: float = 5.0
    # prices (USD)
    price_prompt_per_1m: float | None = None
    price_completion_per_1m: float | None = None
    price_per_request: float | None = None
    # run control
    retry_failed: bool = False
    limit: int | None = None
    shard: tuple[int, int] | None = None  # (k, n), 1-based k
    deadline: str | None = None  # "HH:MM" local time
    max_runtime: float | None = None  # seconds
    grace_period: float = 30.0
    flush_interval: float = 1.0
    batch_rows: int = 1000
    # reporting
    progress: str = "auto"  # auto | bar | log | none
    progress_interval: float = 30.0

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise UsageError("concurrency must be at least 1")
        if self.max_attempts < 1:
            raise UsageError("max-attempts must be at least 1")
        if self.timeout <= 0:
            raise UsageError("timeout must be positive")
        if self.rpm is not None and self.rpm < 1:
            raise UsageError("rpm must be at least 1")
        if self.tpm is not None and self.tpm < 1:
            raise UsageError("tpm must be at least 1")
        if not self.base_url.startswith(("http://", "https://")):
            raise UsageError(f"base URL must start with http:// or https://: {self.base_url!r}")
        unknown = set(self.params) - set(GENERATION_PARAMS)
        if unknown:
            raise UsageError(f"unknown generation parameter(s): {', '.join(sorted(unknown))}")

    @property
    def has_prices(self) -> bool:
        return any(
            p is not None
            for p in (self.price_prompt_per_1m, self.price_completion_per_1m, self.price_per_request)
        )

    def cost(self, prompt_tokens: int | None, completion_tokens: int | None, *, requests: int = 1) -> float | None:
        """Cost of answered requests (one by default), or None when no price is configured."""
        if not self.has_prices:
            return None
        return (
            (prompt_tokens or 0) * (self.price_prompt_per_1m or 0.0) / 1e6
            + (completion_tokens or 0) * (self.price_completion_per_1m or 0.0) / 1e6
            + (self.price_per_request or 0.0) * requests
        )

    def public(self) -> dict[str, Any]:
        """The settings as plain data, without the key: what run.json records."""
        data = dataclasses.asdict(self)
        data.pop("api_key", None)
        data["params"] = dict(self.params)
        data["api_key_set"] = self.api_key is not None
        return data

    def replace(self, **changes: Any) -> "JobConfig":
        return dataclasses.replace(self, **changes)


# Job file layout: section -> {key in file: field name}. Top-level keys map to themselves.
_JOB_SECTIONS: dict[str, dict[str, str]] = {
    "": {"manifest": "manifest", "out": "out", "manifest_format": "manifest_format"},
    "gateway": {
        "base_url": "base_url",
        "model": "model",
        "api_key_env": "api_key_env",
        "stream": "stream",
    },
    "request": {"template": "template", "system": "system", **{p: p for p in GENERATION_PARAMS}},
    "columns": {"file_url": "file_url_column", "question": "question_column", "id": "id_column"},
    "limits": {
        "concurrency": "concurrency",
        "adaptive": "adaptive",
        "rpm": "rpm",
        "tpm": "tpm",
        "max_cost": "max_cost",
        "max_tokens": "max_total_tokens",
    },
    "retry": {
        "max_attempts": "max_attempts",
        "timeout": "timeout",
        "connect_timeout": "connect_timeout",
        "row_budget": "row_budget",
        "backoff_initial": "backoff_initial",
        "backoff_max": "backoff_max",
        "unreadable_retries": "unreadable_retries",
        "unreadable_patterns": "unreadable_patterns",
        "breaker_threshold": "breaker_threshold",
        "breaker_probes": "breaker_probes",
        "breaker_pause": "breaker_pause",
    },
    "prices": {
        "prompt_per_1m": "price_prompt_per_1m",
        "completion_per_1m": "price_completion_per_1m",
        "per_request": "price_per_request",
    },
    "run": {
        "grace_period": "grace_period",
        "flush_interval": "flush_interval",
        "progress_interval": "progress_interval",
        "deadline": "deadline",
        "max_runtime": "max_runtime",
    },
}


def read_job_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Flatten a TOML job file into JobConfig field values; relative paths resolve
    against the job file's folder so a job runs the same from any working directory."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{p}: job file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{p}: cannot read job file: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{p}: invalid TOML: {e}") from None
    if "api_key" in raw or "api_key" in raw.get("gateway", {}):
        raise UsageError(
            f"{p}: a job file must not hold the API key; name its environment variable "
            "with [gateway] api_key_env instead"
        )
    values: dict[str, Any] = {}
    params: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            section = _JOB_SECTIONS.get(key)
            if section is None or key == "":
                raise UsageError(f"{p}: unknown section [{key}]")
            for sub, v in value.items():
                name = section.get(sub)
                if name is None:
                    raise UsageError(f"{p}: unknown key {sub!r} in [{key}]")
                if key == "request" and name in GENERATION_PARAMS:
                    params[name] = v
                else:
                    values[name] = v
        else:
            name = _JOB_SECTIONS[""].get(key)
            if name is None:
                raise UsageError(f"{p}: unknown top-level key {key!r}")
            values[name] = value
    if params:
        values["params"] = params
    for name in ("manifest", "out"):
        if name in values and not Path(values[name]).is_absolute():
            values[name] = str((p.parent / values[name]).resolve())
    if "unreadable_patterns" in values:
        values["unreadable_patterns"] = tuple(values["unreadable_patterns"])
    for name in ("max_runtime",):
        if isinstance(values.get(name), str):
            values[name] = parse_duration(values[name])
    return values


def parse_duration(text: str) -> float:
    """'7h', '90m', '1h30m', '45s' or plain seconds -> seconds."""
    import re

    t = text.strip().lower()
    try:
        return float(t)
    except ValueError:
        pass
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(h|m|s)", t)
    if not parts or "".join(n + u for n, u in parts) != re.sub(r"\s+", "", t):
        raise UsageError(f"cannot read duration {text!r}; use forms like 7h, 90m, 1h30m, 45s")
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0}
    return sum(float(n) * scale[u] for n, u in parts)


def resolve_api_key(explicit: str | None, env_name: str | None) -> str | None:
    """The key from a flag, the job's named variable, or the default variables."""
    if explicit:
        return explicit
    names = (env_name,) if env_name else KEY_ENV_VARS
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


def load_config(job: str | os.PathLike[str] | None = None, **overrides: Any) -> JobConfig:
    """Build the run's settings. ``overrides`` are flag values; None means 'not given'."""
    values: dict[str, Any] = {}
    if job is not None:
        values.update(read_job_file(job))
    params = dict(values.get("params", {}))
    for name, value in overrides.items():
        if value is None:
            continue
        if name in GENERATION_PARAMS:
            params[name] = value
        elif name == "params":
            params.update(value)
        else:
            values[name] = value
    values["params"] = params
    explicit_key = values.pop("api_key", None)
    values["api_key"] = resolve_api_key(explicit_key, values.get("api_key_env"))
    known = {f.name for f in dataclasses.fields(JobConfig)}
    unknown = set(values) - known
    if unknown:
        raise UsageError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    try:
        return JobConfig(**values)
    except TypeError as e:
        raise UsageError(f"bad setting: {e}") from None


def seconds_until(hhmm: str, now: datetime) -> float:
    """Seconds from ``now`` until the next local time HH:MM (today or tomorrow)."""
    try:
        hh, mm = (int(x) for x in hhmm.split(":"))
        if not (0 <= hh < 24 and 0 <= mm < 60):
            raise ValueError
    except ValueError:
        raise UsageError(f"deadline must be HH:MM (24 h, local time), not {hhmm!r}") from None
    target = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
    delta = (target - now).total_seconds()
    return delta if delta > 0 else delta + 86400
