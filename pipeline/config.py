"""Job settings: one frozen object, every value parsed and checked in one place.

Where a value may come from, lowest precedence first::

    defaults < job file (TOML) < environment < CLI flags < keyword arguments

The environment supplies only the key (``APICORE_API_KEY``, then ``OPENAI_API_KEY``,
or the variable a job file names with ``api_key_env``) and, when nothing else sets
one, the base URL (``OPENAI_BASE_URL``, as the OpenAI SDK reads it). A value of
``None`` in keyword arguments or flags means "not given".

Validation entry points:

- :class:`JobConfig` itself: ``__post_init__`` parses every field with the
  parsers of this module (types, ranges, durations such as ``7h``/``90m``/
  ``1h30m``/``45s``, ``HH:MM``, ``K/N``), so ``JobConfig(...)`` and
  :meth:`JobConfig.replace` refuse what :func:`load_config` refuses.
- :func:`load_config`: the same parsers, but a bad value's message also names where
  it came from: ``jobs/x.toml: [limits] concurrency = 'five': expected an integer``,
  ``--deadline '6am': ...``, ``deadline='6am': ...`` or ``OPENAI_BASE_URL='...': ...``.
- :meth:`JobConfig.for_run`: what a *run* needs beyond valid values: a manifest, an
  output folder and an API key unless ``base_url`` is a loopback address (127.x,
  ``localhost``, ``::1``). Runs call it; ``docpipe validate``, ``models`` and
  ``quota`` do not, so they work without a key.

Every error is a :class:`~pipeline.errors.UsageError` (exit 2). The API key is held
only as ``api_key`` with ``repr=False``, never shown in a message, and dropped by
:meth:`JobConfig.public`, which is all that run.json and logs see. A job file names
the key's *environment variable* (``api_key_env``) or a file holding it
(``api_key_file``, first line), never the key itself.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
import string
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import UsageError
from .signedurl import DEFAULT_IGNORE_QUERY

DEFAULT_BASE_URL = "https://api.apicore.ai/v1"
DEFAULT_MODEL = "gpt-4o-all"
DEFAULT_TEMPLATE = "{file_url} {question}"
KEY_ENV_VARS = ("APICORE_API_KEY", "OPENAI_API_KEY")
BASE_URL_ENV_VAR = "OPENAI_BASE_URL"
MANIFEST_FORMATS = ("csv", "parquet")
PROGRESS_MODES = ("auto", "bar", "log", "none")
SCHEMA_MODES = ("auto", "response_format", "instructions")
#: How a row's document reaches the model (pipeline/forms.py)
FORMS = ("inline", "image_url", "file", "auto")
DEFAULT_EMBED_MAX_BYTES = 20 * 1024 * 1024
#: The keys of a model's own price table (``[prices.<model>]``, ``model_prices``)
PRICE_KEYS = ("prompt_per_1m", "completion_per_1m", "per_request")

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

# ----------------------------------------------------------------------------- durations

_DURATION_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_DURATION_PART = r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|us|µs|ns|d|h|m|s)"
_DURATION = re.compile(rf"(?:\s*{_DURATION_PART})+\s*")


def parse_duration(text: str) -> float:
    """Seconds in ``text``: plain seconds (``"90"``, ``"1.5"``) or unit sequences as
    people and Go write them (``"7d"``, ``"7h"``, ``"90m"``, ``"1h30m"``, ``"45s"``, ``"6m0s"``,
    ``"12ms"``). Raises ValueError for anything else, negatives and infinities included.

    The one duration parser of the package: settings (``max_runtime = "7h"``) and the
    gateway's ``x-ratelimit-reset-*`` headers both come through here."""
    t = text.strip().lower()
    try:
        seconds = float(t)
    except ValueError:
        if not _DURATION.fullmatch(t):
            raise ValueError(f"cannot read {text!r} as a duration; use forms like 45s, 90m, 1h30m, 7h") from None
        return sum(float(n) * _DURATION_UNITS[u] for n, u in re.findall(_DURATION_PART, t))
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"cannot read {text!r} as a duration; use forms like 45s, 90m, 1h30m, 7h")
    return seconds


# ----------------------------------------------------------------------------- deadlines

_HHMM = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")


def _parse_hhmm(text: str) -> tuple[int, int]:
    m = _HHMM.fullmatch(text.strip())
    if m is None:
        raise ValueError("expected HH:MM, 24-hour local time, e.g. 06:30")
    return int(m.group(1)), int(m.group(2))


def seconds_until(hhmm: str, now: datetime) -> float:
    """Seconds from ``now`` to the next ``HH:MM`` on the wall clock of ``now`` (today,
    or tomorrow when that time has passed or is now).

    ``now`` may be naive (local time) or aware; the result is real elapsed seconds,
    so a daylight-saving change in between is counted. Raises UsageError for a
    string that is not ``HH:MM`` (24 h)."""
    try:
        hour, minute = _parse_hhmm(hhmm)
    except ValueError as e:
        raise UsageError(f"deadline {hhmm!r}: {e}") from None
    target = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if target <= now:
        target = (now + timedelta(days=1)).replace(hour=hour, minute=minute, second=0, microsecond=0)
    return target.timestamp() - now.timestamp()


def is_loopback_url(url: str) -> bool:
    """True when ``url``'s host is this machine (127.0.0.0/8, ``localhost``, ``::1``)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ----------------------------------------------------------------------------- value parsers
# Each parser takes a raw value (from TOML, Python or a command-line string) and returns
# the normalised one, or raises ValueError saying what was expected. Strings are
# accepted for numbers and booleans because flags and environment variables are text.

Parser = Callable[[Any], Any]


def _range_text(what: str, lo: float | None, hi: float | None, above: bool = False) -> str:
    if lo is not None and hi is not None:
        return f"expected {what} from {lo:g} to {hi:g}"
    if lo is not None:
        return f"expected {what} {'greater than' if above else 'of at least'} {lo:g}"
    return f"expected {what}"


def _as_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected an integer, not true/false")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ValueError("expected an integer")


def _as_number(value: Any) -> float:
    """A finite int or float; text is read as a float."""
    if isinstance(value, bool):
        raise ValueError("expected a number, not true/false")
    number: float
    if isinstance(value, int | float):
        number = value
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise ValueError("expected a number") from None
    else:
        raise ValueError("expected a number")
    if not math.isfinite(number):
        raise ValueError("expected a finite number")
    return number


def _integer(lo: int, hi: int | None = None) -> Parser:
    def parse(value: Any) -> int:
        n = _as_int(value)
        if n < lo or (hi is not None and n > hi):
            raise ValueError(_range_text("an integer", lo, hi))
        return n

    return parse


def _number(lo: float | None = None, hi: float | None = None, *, keep_type: bool = False) -> Parser:
    """``keep_type``: a Python int stays an int (generation parameters: the request
    hash serialises them, so ``temperature = 0`` must not turn into ``0.0``)."""

    def parse(value: Any) -> float:
        n = _as_number(value)
        if (lo is not None and n < lo) or (hi is not None and n > hi):
            raise ValueError(_range_text("a number", lo, hi))
        return n if keep_type else float(n)

    return parse


def _seconds(*, zero_ok: bool) -> Parser:
    """Seconds as a number or a duration string; more than zero unless ``zero_ok``."""
    wanted = "expected a duration such as 45s, 90m, 1h30m, 7h or a number of seconds"

    def parse(value: Any) -> float:
        try:
            seconds = parse_duration(value) if isinstance(value, str) else _as_number(value)
        except ValueError:
            raise ValueError(wanted) from None
        if seconds < 0 or (seconds == 0 and not zero_ok):
            raise ValueError(_range_text("a duration", 0, None, above=not zero_ok))
        return float(seconds)

    return parse


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("true", "yes", "on", "1"):
            return True
        if word in ("false", "no", "off", "0"):
            return False
    raise ValueError("expected true or false")


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected non-empty text")
    return value


def _any_text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected text")
    return value


def _path(value: Any) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a path")
    return value


def _out_dir(value: Any) -> str:
    path = _path(value)
    if "://" in path:  # an object store URL (s3://bucket/prefix): pipeline/objstore.py checks it
        return path
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError("is an existing file, not a folder")
    return path


#: Run engines: one asyncio process (the default) or Ray Data actors (pipeline/rayengine).
ENGINES = ("asyncio", "ray")
#: S3 refuses presigned URLs valid for longer than 7 days.
MAX_PRESIGN_TTL = 7 * 24 * 3600


def _presign_ttl(value: Any) -> float:
    seconds: float = _seconds(zero_ok=False)(value)
    if seconds > MAX_PRESIGN_TTL:
        raise ValueError("S3 presigned URLs last at most 7 days (604800 s)")
    return seconds


def _choice(*options: str) -> Parser:
    def parse(value: Any) -> str:
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return str(value)

    return parse


def _url(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected an http:// or https:// URL")
    url = value.strip()
    if not url.lower().startswith(("http://", "https://")) or not urlsplit(url).hostname:
        raise ValueError("expected an http:// or https:// URL")
    return url


def _api_key(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a non-empty key")
    key = value.strip()
    if any(c.isspace() or not c.isprintable() for c in key):
        raise ValueError("expected a key without spaces or line breaks")
    return key


def _env_name(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise ValueError("expected the name of an environment variable")
    return value


def _template(value: Any) -> str:
    text = _text(value)
    try:
        list(string.Formatter().parse(text))
    except ValueError as e:
        raise ValueError(f"not a valid template: {e}") from None
    return text


def _patterns(value: Any) -> tuple[str, ...]:
    items = (value,) if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(p, str) for p in items):
        raise ValueError("expected a list of regular expressions")
    for p in items:
        try:
            re.compile(p)
        except re.error as e:
            raise ValueError(f"{p!r} is not a regular expression: {e}") from None
    return tuple(items)


def _shard(value: Any) -> tuple[int, int]:
    wanted = "expected K/N with 1 <= K <= N, e.g. 2/4"
    if isinstance(value, str):
        parts: Any = value.split("/")
    elif isinstance(value, list | tuple):
        parts = value
    else:
        raise ValueError(wanted)
    try:
        k, n = (_as_int(p) for p in parts)
    except ValueError:
        raise ValueError(wanted) from None
    if not 1 <= k <= n:
        raise ValueError(wanted)
    return k, n


def _deadline(value: Any) -> str:
    if isinstance(value, time):
        return f"{value.hour:02d}:{value.minute:02d}"
    if not isinstance(value, str):
        raise ValueError("expected HH:MM, 24-hour local time, e.g. 06:30")
    hour, minute = _parse_hhmm(value)
    return f"{hour:02d}:{minute:02d}"


def _logit_bias(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError("expected a table of token id -> bias from -100 to 100")
    bias = _number(-100, 100, keep_type=True)
    return {str(k): bias(v) for k, v in value.items()}


def _answer_schema(value: Any) -> dict[str, Any]:
    """A JSON Schema (path, dict or pydantic model class), loaded and checked (pipeline.structured.spec)."""
    from .structured.spec import load_schema  # pyarrow and jsonschema only when a schema is given

    return load_schema(value)


def _path_list(value: Any) -> tuple[str, ...]:
    """Folders (or globs such as ``out/*``) as a list; one path alone is a list of one."""
    items = (value,) if isinstance(value, str | os.PathLike) else value
    if not isinstance(items, list | tuple):
        raise ValueError("expected a list of paths")
    return tuple(_path(v) for v in items)


def _names(value: Any) -> tuple[str, ...]:
    """Query parameter names (a list, or one comma-separated string as a flag gives)."""
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(v, str) and v.strip() for v in items):
        raise ValueError("expected a list of query parameter names")
    return tuple(v.strip() for v in items)


def _models(value: Any) -> tuple[str, ...]:
    """A list of model names (``fallback_models``); one name alone is a list of one."""
    items = (value,) if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(m, str) and m.strip() for m in items):
        raise ValueError("expected a list of model names")
    return tuple(dict.fromkeys(m.strip() for m in items))


def _model_prices(value: Any) -> dict[str, dict[str, float]]:
    """Prices per model: ``{"gpt-4-all": {"prompt_per_1m": 2.5, ...}}``, or flag text
    ``MODEL=PROMPT/COMPLETION[/PER_REQUEST]`` (USD; one string or a list of them)."""
    if isinstance(value, str | list | tuple) and all(isinstance(v, str) for v in _listed(value)):
        return dict(_price_text(v) for v in _listed(value))
    if not isinstance(value, Mapping):
        raise ValueError("expected a table of model -> {prompt_per_1m, completion_per_1m, per_request}")
    price = _number(0)
    table: dict[str, dict[str, float]] = {}
    for model, prices in value.items():
        if not isinstance(prices, Mapping) or not prices or set(prices) - set(PRICE_KEYS):
            raise ValueError(f"{model!r}: expected a table with some of {', '.join(PRICE_KEYS)}")
        table[str(model)] = {k: price(v) for k, v in prices.items()}
    return table


def _listed(value: Any) -> list[Any]:
    return [value] if isinstance(value, str) else list(value)


def _price_text(text: str) -> tuple[str, dict[str, float]]:
    wanted = "expected MODEL=PROMPT/COMPLETION[/PER_REQUEST] in USD, e.g. gpt-4-all=2.5/10"
    model, sep, figures = text.rpartition("=")
    parts = figures.split("/")
    if not sep or not model.strip() or not 2 <= len(parts) <= 3:
        raise ValueError(wanted)
    try:
        numbers = [_number(0)(p) for p in parts]
    except ValueError:
        raise ValueError(wanted) from None
    return model.strip(), dict(zip(PRICE_KEYS, numbers, strict=False))


def _optional(parse: Parser) -> Parser:
    def optional(value: Any) -> Any:
        return None if value is None else parse(value)

    return optional


_PARAM_PARSERS: dict[str, Parser] = {
    "temperature": _number(0, 2, keep_type=True),
    "top_p": _number(0, 1, keep_type=True),
    "max_tokens": _integer(1),
    "n": _integer(1),
    "presence_penalty": _number(-2, 2, keep_type=True),
    "frequency_penalty": _number(-2, 2, keep_type=True),
    "logit_bias": _logit_bias,
    "user": _text,
}

_SECRET = frozenset({"api_key"})


def _bad(where: str, sep: str, name: str, value: Any, why: str) -> UsageError:
    shown = "(hidden)" if name in _SECRET else repr(value)
    # a path or URL is shown whole (the user must find it); only a long inline value is cut,
    # e.g. an inline schema, whose message names the path inside it instead
    limit = 300 if isinstance(value, str) else 80
    if len(shown) > limit:
        shown = shown[: limit - 4] + "...}" if shown.startswith("{") else shown[: limit - 1] + "…"
    return UsageError(f"{where}{sep}{shown}: {why}")


def _parse_params(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError("expected a table of generation parameters")
    unknown = sorted(set(value) - set(GENERATION_PARAMS))
    if unknown:
        raise ValueError(f"unknown generation parameter(s) {', '.join(unknown)}; known: {', '.join(GENERATION_PARAMS)}")
    parsed = {}
    for name, raw in value.items():
        try:
            parsed[name] = _PARAM_PARSERS[name](raw)
        except ValueError as e:
            raise ValueError(f"{name} = {raw!r}: {e}") from None
    return parsed


# ----------------------------------------------------------------------------- JobConfig


@dataclass(frozen=True)
class JobConfig:
    """Everything one run needs. Build with :func:`load_config`; every field is parsed
    and checked on construction (see the module docstring)."""

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
    # document forms, per-row models and fallbacks (issue 15: pipeline/forms.py, embed.py, models.py)
    form: str = "inline"  # inline | image_url | file | auto
    embed: bool = False  # fetch the document and send its bytes as a data: URL
    embed_max_bytes: int = DEFAULT_EMBED_MAX_BYTES
    form_column: str | None = None  # None: a column named "form" when there is one
    model_column: str | None = None  # None: a column named "model" when there is one
    fallback_models: tuple[str, ...] = ()
    model_prices: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
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
    # structured answers (issue 11, pipeline/structured): the checked JSON Schema as a dict
    schema: Mapping[str, Any] | None = None
    schema_mode: str = "auto"  # auto | response_format | instructions
    schema_retries: int = 2
    # incremental nights (issue 12, pipeline/reuse.py, pipeline/docmeta.py)
    reuse: tuple[str, ...] = ()  # earlier output folders (or globs) whose ok answers may be copied forward
    max_age: float | None = None  # seconds: older answers are asked again
    doc_meta: bool = True  # HEAD each document: doc_etag, doc_last_modified, doc_bytes
    head_timeout: float = 10.0
    head_concurrency: int = 32
    ignore_query: tuple[str, ...] = DEFAULT_IGNORE_QUERY  # query parameters reuse identity ignores
    # scale-out and object storage (issue 13, pipeline/rayengine, pipeline/objstore.py, pipeline/presign.py)
    engine: str = "asyncio"  # asyncio | ray
    ray_address: str | None = None  # None: start a local Ray
    ray_actors: int = 4  # sender actors; --concurrency, --rpm, --tpm are split between them
    presign_ttl: float = 3600.0  # seconds an s3:// document's presigned URL stays valid
    cache_dir: str | None = None  # local journal of s3:// outs; None: $DOCPIPE_CACHE_DIR or ~/.cache/docpipe

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            raw = getattr(self, f.name)
            try:
                value = FIELD_PARSERS[f.name](raw)
            except ValueError as e:
                raise _bad(f.name, "=", f.name, raw, str(e)) from None
            if value is not raw:
                object.__setattr__(self, f.name, value)
        if self.backoff_initial > self.backoff_max:
            raise UsageError(f"backoff_initial={self.backoff_initial:g} is more than backoff_max={self.backoff_max:g}")
        if self.reuse and not self.doc_meta:
            raise UsageError("reuse needs document metadata to tell an unchanged document: drop doc_meta=false "
                             "(--no-doc-meta) or reuse")  # fmt: skip
        if self.embed and self.form == "inline":
            raise UsageError(_EMBED_INLINE.format(where="embed=True", form="form='inline'"))

    def for_run(self) -> JobConfig:
        """This config, after the checks only a run needs; raises UsageError.

        A run needs a manifest, an output folder, and an API key unless the gateway is
        on this machine (a loopback ``base_url``: the simulator, a local proxy)."""
        if not self.manifest:
            raise UsageError("no manifest: give MANIFEST (manifest=...) or set manifest in the job file")
        if not self.out:
            raise UsageError("no output folder: give --out (out=...) or set out in the job file")
        if self.api_key is None and not is_loopback_url(self.base_url):
            unset = f" (api_key_env names {self.api_key_env}, which is not set)" if self.api_key_env else ""
            raise UsageError(
                f"no API key for {self.base_url}{unset}: set APICORE_API_KEY (or OPENAI_API_KEY), "
                "pass --api-key-file PATH (api_key_file=...), name a variable with api_key_env in the "
                "job file, or pass --api-key (api_key=...)"
            )
        return self

    @property
    def has_prices(self) -> bool:
        flat = (self.price_prompt_per_1m, self.price_completion_per_1m, self.price_per_request)
        return any(p is not None for p in flat) or bool(self.model_prices)

    def prices_for(self, model: str | None) -> tuple[float, float, float]:
        """(prompt per 1M, completion per 1M, per request) in USD for ``model``: its
        ``[prices.<model>]`` keys, each one it does not set taken from the flat ``[prices]``."""
        own = self.model_prices.get(model or self.model, {})
        return (
            own.get("prompt_per_1m", self.price_prompt_per_1m or 0.0),
            own.get("completion_per_1m", self.price_completion_per_1m or 0.0),
            own.get("per_request", self.price_per_request or 0.0),
        )

    def cost(self, prompt_tokens: int | None, completion_tokens: int | None, *, requests: int = 1,
             model: str | None = None) -> float | None:  # fmt: skip
        """Cost of answered requests (one by default) at ``model``'s price (the run's model
        by default), or None when no price is configured."""
        if not self.has_prices:
            return None
        prompt, completion, per_request = self.prices_for(model)
        tokens = (prompt_tokens or 0) * prompt + (completion_tokens or 0) * completion
        return tokens / 1e6 + per_request * requests

    def public(self) -> dict[str, Any]:
        """The settings as plain data, without the key: what run.json records."""
        data = dataclasses.asdict(self)
        data.pop("api_key", None)
        data["params"] = dict(self.params)
        data["api_key_set"] = self.api_key is not None
        return data

    def replace(self, **changes: Any) -> JobConfig:
        """A copy with ``changes`` (JobConfig field names), parsed and checked like the rest."""
        _check_names(changes, _FIELD_NAMES, "setting")
        return dataclasses.replace(self, **changes)


#: The parser of every JobConfig field; a test checks none is missing.
FIELD_PARSERS: dict[str, Parser] = {
    "manifest": _optional(_path),
    "out": _optional(_out_dir),
    "manifest_format": _optional(_choice(*MANIFEST_FORMATS)),
    "base_url": _url,
    "model": _text,
    "api_key": _optional(_api_key),
    "api_key_env": _optional(_env_name),
    "stream": _boolean,
    "template": _template,
    "system": _optional(_any_text),
    "params": _parse_params,
    "file_url_column": _optional(_text),
    "question_column": _optional(_text),
    "id_column": _optional(_text),
    "form": _choice(*FORMS),
    "embed": _boolean,
    "embed_max_bytes": _integer(1),
    "form_column": _optional(_text),
    "model_column": _optional(_text),
    "fallback_models": _models,
    "model_prices": _model_prices,
    "concurrency": _integer(1, 100_000),
    "adaptive": _boolean,
    "rpm": _optional(_integer(1)),
    "tpm": _optional(_integer(1)),
    "max_cost": _optional(_number(0)),
    "max_total_tokens": _optional(_integer(1)),
    "max_attempts": _integer(1),
    "timeout": _seconds(zero_ok=False),
    "connect_timeout": _seconds(zero_ok=False),
    "row_budget": _seconds(zero_ok=False),
    "backoff_initial": _seconds(zero_ok=True),
    "backoff_max": _seconds(zero_ok=True),
    "unreadable_retries": _integer(0),
    "unreadable_patterns": _patterns,
    "no_channel_attempts": _integer(1),
    "breaker_threshold": _integer(1),
    "breaker_probes": _integer(1),
    "breaker_pause": _seconds(zero_ok=False),
    "price_prompt_per_1m": _optional(_number(0)),
    "price_completion_per_1m": _optional(_number(0)),
    "price_per_request": _optional(_number(0)),
    "retry_failed": _boolean,
    "limit": _optional(_integer(1)),
    "shard": _optional(_shard),
    "deadline": _optional(_deadline),
    "max_runtime": _optional(_seconds(zero_ok=False)),
    "grace_period": _seconds(zero_ok=True),
    "flush_interval": _seconds(zero_ok=False),
    "batch_rows": _integer(1),
    "progress": _choice(*PROGRESS_MODES),
    "progress_interval": _seconds(zero_ok=False),
    "schema": _optional(_answer_schema),
    "schema_mode": _choice(*SCHEMA_MODES),
    "schema_retries": _integer(0, 10),
    "reuse": _path_list,
    "max_age": _optional(_seconds(zero_ok=False)),
    "doc_meta": _boolean,
    "head_timeout": _seconds(zero_ok=False),
    "head_concurrency": _integer(1, 10_000),
    "ignore_query": _names,
    "engine": _choice(*ENGINES),
    "ray_address": _optional(_text),
    "ray_actors": _integer(1, 1024),
    "presign_ttl": _presign_ttl,
    "cache_dir": _optional(_path),
}
_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(JobConfig))
#: Settings that say where the key is; at most one per source (job file, flags, arguments).
_KEY_SOURCES = ("api_key", "api_key_file", "api_key_env")
_SETTING_NAMES = _FIELD_NAMES | set(GENERATION_PARAMS) | {"params", "api_key_file"}


def _check_names(names: Iterable[str], known: Iterable[str], what: str) -> None:
    unknown = sorted(set(names) - set(known))
    if unknown:
        hints = [f"{n!r}" + (f" (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(n, known, 1)) else "")
                 for n in unknown]  # fmt: skip
        raise UsageError(f"unknown {what}(s): {', '.join(hints)}")


# ----------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class Given:
    """One raw setting and where it came from: what an error message names."""

    value: Any
    where: str  # "jobs/x.toml: [limits] concurrency", "--concurrency", "concurrency", "OPENAI_BASE_URL"
    sep: str = "="  # between ``where`` and the value in a message

    def parse(self, name: str, parser: Parser) -> Any:
        try:
            return parser(self.value)
        except ValueError as e:
            raise _bad(self.where, self.sep, name, self.value, str(e)) from None


# Job file layout: section -> {key in file: setting name}. Top-level keys map to themselves.
_JOB_SECTIONS: dict[str, dict[str, str]] = {
    "": {"manifest": "manifest", "out": "out", "manifest_format": "manifest_format", "reuse": "reuse"},
    "gateway": {
        "base_url": "base_url",
        "model": "model",
        "api_key_env": "api_key_env",
        "api_key_file": "api_key_file",
        "stream": "stream",
        "fallback_models": "fallback_models",
    },
    "request": {
        "template": "template",
        "system": "system",
        "form": "form",
        "embed": "embed",
        "embed_max_bytes": "embed_max_bytes",
        **{p: p for p in GENERATION_PARAMS},
    },
    "columns": {
        "file_url": "file_url_column",
        "question": "question_column",
        "id": "id_column",
        "form": "form_column",
        "model": "model_column",
    },
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
        "no_channel_attempts": "no_channel_attempts",
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
        "progress": "progress",
        "progress_interval": "progress_interval",
        "deadline": "deadline",
        "max_runtime": "max_runtime",
        "retry_failed": "retry_failed",
        "limit": "limit",
        "shard": "shard",
        "engine": "engine",
    },
    "ray": {"address": "ray_address", "actors": "ray_actors"},
    "storage": {"presign_ttl": "presign_ttl", "cache_dir": "cache_dir"},
    "output": {"schema": "schema", "mode": "schema_mode", "schema_retries": "schema_retries"},
    # `reuse = [...]` at the top level is the short form of [reuse] from = [...]
    "reuse": {
        "from": "reuse",
        "max_age": "max_age",
        "ignore_query": "ignore_query",
        "doc_meta": "doc_meta",
        "head_timeout": "head_timeout",
        "head_concurrency": "head_concurrency",
    },
}
#: Paths a job file gives relative to its own folder.
_JOB_PATHS = ("manifest", "out", "api_key_file", "schema", "cache_dir")


def read_job_file(path: str | os.PathLike[str]) -> dict[str, Given]:
    """The settings of a TOML job file, raw, each with where it came from.

    Keys are setting names (JobConfig fields, generation parameters, ``api_key_file``);
    relative paths resolve against the job file's folder so a job runs the same from
    any working directory. Values are checked by :func:`load_config`, not here."""
    p = Path(path)
    found: dict[str, Given] = {}
    for key, value in _read_toml(p).items():
        if not isinstance(value, dict):
            if key not in _JOB_SECTIONS[""]:
                raise UsageError(f"{p}: unknown top-level key {key!r}; known: {', '.join(_JOB_SECTIONS[''])}")
            found[key] = Given(value, f"{p}: {key}", " = ")
            continue
        section = _JOB_SECTIONS.get(key) if key else None
        if section is None:
            known = ", ".join(f"[{s}]" for s in _JOB_SECTIONS if s)
            raise UsageError(f"{p}: unknown section [{key}]; sections are {known}")
        for sub, v in value.items():
            if key == "prices" and isinstance(v, dict):  # [prices.<model>]: that model's own prices
                prices = found.setdefault("model_prices", Given({}, f"{p}: [prices.<model>]", " = "))
                prices.value[sub] = v
                continue
            if sub not in section:
                raise UsageError(f"{p}: unknown key {sub!r} in [{key}]; known: {', '.join(section)}")
            found[section[sub]] = Given(v, f"{p}: [{key}] {sub}", " = ")
    for name in _JOB_PATHS:
        given = found.get(name)
        if given is not None and isinstance(given.value, str) and given.value.strip() and "://" not in given.value:
            found[name] = dataclasses.replace(given, value=str((p.parent / given.value).resolve()))
    reuse = found.get("reuse")  # a list of folders or globs, each relative to the job file
    if reuse is not None and isinstance(reuse.value, list):
        paths = [str(p.parent / v) if isinstance(v, str) and v.strip() else v for v in reuse.value]
        found["reuse"] = dataclasses.replace(reuse, value=paths)
    return found


def _read_toml(p: Path) -> dict[str, Any]:
    import tomllib  # a job file only: a run from flags does not wait for it (issue 10)

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
            f"{p}: a job file must not hold the API key; name its environment variable with "
            "[gateway] api_key_env, or a file holding it with [gateway] api_key_file"
        )
    return raw


_EMBED_INLINE = "{where}: embedding needs form image_url, file or auto, but {form}; set --form (form = ...)"

_FLAG_NAMES = {
    "manifest": "MANIFEST",
    "manifest_format": "--format",
    "adaptive": "--fixed-concurrency",
    "fallback_models": "--fallback-model",
    "model_prices": "--model-price",
}


def _layer(values: Mapping[str, Any], label: Callable[[str], str], sep: str) -> dict[str, Given]:
    """Settings from flags or keyword arguments; None means not given, ``params`` spreads."""
    _check_names(values, _SETTING_NAMES, "setting")
    found: dict[str, Given] = {}
    params = values.get("params")
    if params is not None:
        if not isinstance(params, Mapping):
            raise _bad(label("params"), sep, "params", params, "expected a mapping of generation parameters")
        _check_names(params, GENERATION_PARAMS, "generation parameter")
        found.update({k: Given(v, f"{label('params')}[{k!r}]", sep) for k, v in params.items()})
    for name, value in values.items():
        if value is not None and name != "params":
            found[name] = Given(value, label(name), sep)
    return found


def _read_key_file(given: Given) -> Given:
    path = Path(given.parse("api_key_file", _path))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise UsageError(f"{given.where}{given.sep}{str(path)!r}: cannot read the key file: {why}") from None
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise UsageError(f"{given.where}{given.sep}{str(path)!r}: the key file's first line is empty")
    return Given(lines[0].strip(), f"the key in {path}")


def _key(layers: list[dict[str, Given]], env: Mapping[str, str]) -> Given | None:
    """The key from the highest layer that says where it is, else the default variables."""
    for layer in reversed(layers):
        named = [layer[n] for n in _KEY_SOURCES if n in layer]
        if len(named) > 1:
            raise UsageError(f"give one of {' and '.join(g.where for g in named)}, not both")
        if "api_key" in layer:
            return layer["api_key"]
        if "api_key_file" in layer:
            return _read_key_file(layer["api_key_file"])
        if "api_key_env" in layer:
            var = layer["api_key_env"].parse("api_key_env", _env_name)
            return Given(env[var], var) if env.get(var) else None
    for var in KEY_ENV_VARS:
        if env.get(var):
            return Given(env[var], var)
    return None


def load_config(
    job: str | os.PathLike[str] | None = None,
    *,
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    **settings: Any,
) -> JobConfig:
    """Build and check the settings of a job; raises UsageError naming the bad value.

    ``job``: a TOML job file. ``flags``: command-line values by setting name (what
    ``docpipe`` passes; messages call them ``--name``). ``settings``: the same names as
    keyword arguments (JobConfig fields, the generation parameters such as
    ``temperature``, ``params={...}``, ``api_key_file``). ``env``: the environment
    to read the key and ``OPENAI_BASE_URL`` from (default ``os.environ``).
    None means "not given" in ``flags`` and ``settings``."""
    environ = os.environ if env is None else env
    layers = [read_job_file(job)] if job is not None else []
    if flags:
        layers.append(_layer(flags, lambda n: _FLAG_NAMES.get(n, "--" + n.replace("_", "-")), " "))
    layers.append(_layer(settings, lambda n: n, "="))
    merged: dict[str, Given] = {}
    for layer in layers:
        merged.update({k: v for k, v in layer.items() if k not in ("api_key", "api_key_file")})
    key = _key(layers, environ)
    if key is not None:
        merged["api_key"] = key
    if "base_url" not in merged and environ.get(BASE_URL_ENV_VAR):
        merged["base_url"] = Given(environ[BASE_URL_ENV_VAR], BASE_URL_ENV_VAR)
    _check_embed(merged)
    values: dict[str, Any] = {"params": {}}
    for name, given in merged.items():
        if name in _PARAM_PARSERS:
            values["params"][name] = given.parse(name, _PARAM_PARSERS[name])
        else:
            values[name] = given.parse(name, FIELD_PARSERS[name])
    return JobConfig(**values)


def _check_embed(merged: Mapping[str, Given]) -> None:
    """``embed`` with the inline form is a usage error naming where each came from."""
    embed = merged.get("embed")
    if embed is None or not embed.parse("embed", _boolean):
        return
    form = merged.get("form")
    if form is None:
        raise UsageError(_EMBED_INLINE.format(where=embed.where, form="the form is inline (the default)"))
    if form.parse("form", FIELD_PARSERS["form"]) == "inline":
        raise UsageError(_EMBED_INLINE.format(where=embed.where, form=f"{form.where}{form.sep}'inline'"))
