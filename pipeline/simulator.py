"""Embedded fake OpenAI-compatible gateway (one-api / new-api flavoured).

Used by ``docpipe demo`` (no key, no network), by the test-suite (real HTTP on
127.0.0.1 with a random port) and by ``docpipe bench`` (≈1000 req/s, 1000
concurrent connections).  It reproduces the gateway behaviours a client has to
survive (DESIGN.md §1, §8) and answers deterministically, so a test can compute
the expected result of every manifest row with :func:`answer_for` and
:func:`usage_for`.

Endpoints (base URL ``http://HOST:PORT/v1``)
--------------------------------------------
``POST /v1/chat/completions``
    Checks, in order: API key (401 "无效的令牌") -> body validation (400) ->
    quota (401 "该令牌额度已用尽" or 403 ``insufficient_user_quota``) ->
    no-channel (503 "当前分组 default 下对于模型 M 无可用渠道") -> capacity (429,
    empty body, no Retry-After) -> RPM (429 with Retry-After) -> directives /
    random fault mix -> success (plain JSON or SSE when ``"stream": true``).
``GET /v1/models``
    ``{"object":"list","data":[...]}`` or new-api ``{"success":true,"data":[...]}``.
``GET /v1/dashboard/billing/subscription``, ``GET /v1/dashboard/billing/usage``
    one-api billing (also served without the ``/v1`` prefix, like one-api does).
``GET /api/usage/token/``
    new-api token usage in raw quota units (500000 = $1).
``GET /_sim/stats``, ``POST /_sim/stats/window``, ``GET|POST /_sim/config``, ``POST /_sim/reset``
    Control plane for tests and benchmarks (never checks the API key).
``GET /_sim/bodies``
    The chat request bodies received, in arrival order, when ``record_bodies`` is set.

Every response, errors included, carries a unique ``X-Oneapi-Request-Id``.

Answers
-------
The answer depends on the requested model and on the *last user message*
content only (system and earlier messages are ignored), so adding a system
prompt does not change the expected answer.  For the OpenAI vision list form,
the content is the text parts and image URLs joined with one space, in order.

Directives (in the user content; they replace the random fault mix for that request)
------------------------------------------------------------------------------------
``[[sim:status=NNN]]``      every attempt answers HTTP NNN (400..599) with a JSON error.
``[[sim:retry_after=S]]``   attempt 1 gets 429 with ``Retry-After: S``; later attempts succeed.
``[[sim:fault=KIND]]``      attempt 1 gets fault KIND; ``[[sim:fault=KIND*3]]`` attempts 1..3.
``[[sim:unreadable]]``      success, answer = :data:`UNREADABLE_ANSWER`.
``[[sim:finish=length]]``   success with that ``finish_reason`` (any word is accepted).
A malformed directive is answered 400 so a typo never passes silently.

Attempts are counted per distinct (model, content) key since start / reset, and
only for requests that got past auth, quota, capacity and RPM checks.

Statistics semantics
--------------------
``outcomes`` counts one decision per chat request received (``ok`` = decided to
succeed).  ``ok_requests``/``distinct_ok``/``duplicate_ok``/token sums count
answers actually delivered (a completed "hang" counts there too; a request whose
client went away first does not — it is counted in ``cancelled``).
``in_flight`` counts accepted requests (past the RPM check) not yet answered.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import hashlib
import itertools
import math
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

__all__ = [
    "FAULT_KINDS",
    "UNREADABLE_ANSWER",
    "SimConfig",
    "SimServer",
    "answer_for",
    "fault_for",
    "make_app",
    "serve",
    "usage_for",
]

FAULT_KINDS: tuple[str, ...] = (
    "429",
    "500",
    "502_html",
    "503",
    "524_html",
    "hang",
    "disconnect",
    "truncated",
    "empty_choices",
    "error_in_200",
    "stream_cut",
)

UNREADABLE_ANSWER = "抱歉，我无法访问该文件。I cannot access the file at that URL."

_REQUEST_TIMES_KEPT = 200_000
_SHUTDOWN_GRACE_S = 0.5


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class SimConfig:
    """Behaviour of the simulated gateway; immutable, swapped whole on update."""

    latency_s: float = 0.05
    latency_jitter: float = 0.0
    fault_rate: float = 0.0
    fault_attempts: int = 1
    fault_kinds: tuple[str, ...] = tuple(k for k in FAULT_KINDS if k != "stream_cut")
    retry_after_s: float | None = 1.0
    hang_s: float = 3600.0
    seed: int = 0
    api_key: str | None = None
    rpm: int | None = None
    capacity: int | None = None
    quota_requests: int | None = None
    quota_style: str = "401"
    no_channel: bool = False
    stream_usage: bool = True
    models_shape: str = "openai"
    models: tuple[str, ...] = ("gpt-4o-all", "gpt-4-all", "gpt-4o", "gpt-4o-mini")
    model_alias: tuple[tuple[str, str], ...] = (("gpt-4-all", "gpt-4o"),)
    hard_limit_usd: float = 100.0
    used_usd: float = 12.5
    # keep every parsed chat request body (GET /_sim/bodies, SimServer.bodies()) so
    # tests can assert on what the client sent; off by default to keep bench memory flat
    record_bodies: bool = False

    def __post_init__(self) -> None:
        # JSON (the /_sim/config endpoint, job files) delivers lists and dicts;
        # normalise so the dataclass stays hashable and comparable.
        set_ = object.__setattr__
        for name in ("fault_kinds", "models"):
            value: Any = getattr(self, name)
            if isinstance(value, str):  # "500,503" from a CLI flag
                value = [v.strip() for v in value.split(",") if v.strip()]
            set_(self, name, tuple(str(v) for v in value))
        alias: Any = self.model_alias
        if isinstance(alias, Mapping):
            alias = alias.items()
        pairs: list[tuple[str, str]] = []
        for pair in alias:
            if len(pair) != 2:
                raise ValueError(f"model_alias entries must be (requested, reported) pairs: {pair!r}")
            pairs.append((str(pair[0]), str(pair[1])))
        set_(self, "model_alias", tuple(pairs))
        self._validate()

    def _validate(self) -> None:
        def nonneg(name: str, value: float | None, allow_none: bool = False) -> None:
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")

        nonneg("latency_s", self.latency_s)
        nonneg("hang_s", self.hang_s)
        nonneg("retry_after_s", self.retry_after_s, allow_none=True)
        nonneg("hard_limit_usd", self.hard_limit_usd)
        nonneg("used_usd", self.used_usd)
        if not 0.0 <= self.latency_jitter <= 1.0:
            raise ValueError(f"latency_jitter must be within [0, 1], got {self.latency_jitter!r}")
        if not 0.0 <= self.fault_rate <= 1.0:
            raise ValueError(f"fault_rate must be within [0, 1], got {self.fault_rate!r}")
        for name in ("fault_attempts", "seed", "rpm", "capacity", "quota_requests"):
            value = getattr(self, name)
            if value is None and name not in ("fault_attempts", "seed"):
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            if name != "seed" and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        unknown = [k for k in self.fault_kinds if k not in FAULT_KINDS]
        if unknown:
            raise ValueError(f"unknown fault kinds {unknown}; known: {list(FAULT_KINDS)}")
        if self.fault_rate > 0 and not self.fault_kinds:
            raise ValueError("fault_rate > 0 needs at least one fault kind")
        if self.quota_style not in ("401", "403"):
            raise ValueError(f"quota_style must be '401' or '403', got {self.quota_style!r}")
        if self.models_shape not in ("openai", "newapi"):
            raise ValueError(f"models_shape must be 'openai' or 'newapi', got {self.models_shape!r}")
        if self.api_key is not None and not isinstance(self.api_key, str):
            raise ValueError("api_key must be a string or None")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SimConfig:
        """Build from a (JSON/TOML) dict; missing keys keep defaults, unknown keys raise."""
        return cls().with_changes(d)

    def with_changes(self, changes: Mapping[str, Any]) -> SimConfig:
        """Return a copy with ``changes`` applied; unknown keys raise ValueError."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown simulator setting(s): {', '.join(unknown)}")
        # quota_style is documented as a string but "403" arrives as 403 from TOML/CLI.
        fixed = {k: (str(v) if k == "quota_style" else v) for k, v in changes.items()}
        return dataclasses.replace(self, **fixed)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["fault_kinds"] = list(self.fault_kinds)
        d["models"] = list(self.models)
        d["model_alias"] = [list(p) for p in self.model_alias]
        return d


# --------------------------------------------------------------------------- pure functions


def _key_digest(model: str, content: str) -> bytes:
    return hashlib.blake2b(
        f"{model}\x00{content}".encode("utf-8", "surrogatepass"), digest_size=8
    ).digest()


def _answer_from_digest(model: str, content: str, digest: bytes) -> str:
    h = digest.hex()
    # Multi-byte "—" so clients are exercised with non-ASCII text and byte-based token counts.
    return (
        f"Answer {h[:8]} — {model[:24]} read {len(content)} chars; "
        f"the total is {int(h[8:12], 16)} units."
    )


def answer_for(model: str, content: str) -> str:
    """Deterministic answer for the user content (see module doc for what "content" is).

    Rows with a ``[[sim:unreadable]]`` directive get :data:`UNREADABLE_ANSWER` instead.
    """
    return _answer_from_digest(model, content, _key_digest(model, content))


def _text_tokens(text: str) -> int:
    return math.ceil(len(text.encode("utf-8", "surrogatepass")) / 4)


def usage_for(messages: list[dict[str, Any]], answer: str) -> tuple[int, int]:
    """(prompt_tokens, completion_tokens) the simulator reports.

    prompt: per message 4 + ceil(utf-8 bytes / 4); for list-form content the
    bytes of all text parts are summed before the ceil and each image_url part
    adds 85.  completion: ceil(utf-8 bytes of the answer / 4).
    """
    prompt = 0
    for msg in messages:
        content = msg.get("content")
        prompt += 4
        if isinstance(content, str):
            prompt += _text_tokens(content)
        elif isinstance(content, list):
            nbytes = 0
            for part in content:
                if not isinstance(part, dict):
                    continue
                ptype = part.get("type")
                if ptype == "text":
                    nbytes += len(str(part.get("text", "")).encode("utf-8", "surrogatepass"))
                elif ptype == "image_url":
                    prompt += 85
            prompt += math.ceil(nbytes / 4)
    return prompt, _text_tokens(answer)


def _user_content(messages: list[Any]) -> str:
    """Content string of the last user message (last message if none is 'user')."""
    msg: Any = None
    for m in reversed(messages):
        if not isinstance(m, dict):
            raise ValueError("each message must be an object")
        if m.get("role") == "user":
            msg = m
            break
    if msg is None:
        msg = messages[-1]
        if not isinstance(msg, dict):
            raise ValueError("each message must be an object")
    content = msg.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if not isinstance(part, dict):
                raise ValueError("content parts must be objects")
            ptype = part.get("type")
            if ptype == "text":
                parts.append(str(part.get("text", "")))
            elif ptype == "image_url":
                iu = part.get("image_url")
                parts.append(str(iu.get("url", "") if isinstance(iu, dict) else iu))
        return " ".join(parts)
    if content is None:
        return ""
    raise ValueError("message content must be a string or a list of parts")


_DIRECTIVE_RE = re.compile(r"\[\[sim:([a-z_]+)(?:=([^\]]*))?\]\]")


def _parse_directives(content: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for m in _DIRECTIVE_RE.finditer(content):
        found.setdefault(m.group(1), m.group(2) if m.group(2) is not None else "")
    return found


# A plan is (action, arg, finish_reason, answer_override):
#   action: "ok" | "status" | "retry_after" | a fault kind
_Plan = tuple[str, Any, str, str | None]
_OK_PLAN: _Plan = ("ok", None, "stop", None)


def _attempt_hash(seed: int, digest: bytes, attempt: int) -> tuple[float, int, float]:
    b = hashlib.blake2b(digest + f"|{seed}|{attempt}".encode(), digest_size=24).digest()
    return (
        int.from_bytes(b[0:8], "big") / 2.0**64,
        int.from_bytes(b[8:16], "big"),
        int.from_bytes(b[16:24], "big") / 2.0**64,
    )


def _plan(cfg: SimConfig, content: str, digest: bytes, attempt: int) -> _Plan:
    if "[[sim:" in content:
        return _directive_plan(_parse_directives(content), attempt)
    if cfg.fault_rate > 0.0 and attempt <= cfg.fault_attempts:
        u, k, _ = _attempt_hash(cfg.seed, digest, attempt)
        if u < cfg.fault_rate:
            return (cfg.fault_kinds[k % len(cfg.fault_kinds)], None, "stop", None)
    return _OK_PLAN


def _directive_plan(d: dict[str, str], attempt: int) -> _Plan:
    unknown = set(d) - {"status", "retry_after", "fault", "unreadable", "finish"}
    if unknown:
        raise ValueError(f"unknown sim directive(s): {sorted(unknown)}")
    if "status" in d:
        status = int(d["status"])
        if not 400 <= status <= 599:
            raise ValueError("sim status directive must be 400..599")
        return ("status", status, "stop", None)
    if "retry_after" in d:
        value = d["retry_after"].strip()
        float(value)  # reject garbage early; the header carries the text as written
        if attempt == 1:
            return ("retry_after", value, "stop", None)
    if "fault" in d:
        kind, _, times = d["fault"].partition("*")
        n = int(times) if times else 1
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind in directive: {kind!r}")
        if attempt <= n:
            return (kind, None, "stop", None)
    finish = d.get("finish") or "stop"
    if not re.fullmatch(r"[a-z_]+", finish):
        raise ValueError("sim finish directive must be a word")
    return ("ok", None, finish, UNREADABLE_ANSWER if "unreadable" in d else None)


def fault_for(config: SimConfig, model: str, content: str, attempt: int) -> str | None:
    """What attempt number ``attempt`` (1-based) of this request will get, ignoring
    auth/quota/capacity/RPM: None for a normal answer, a fault kind, "429" for a
    retry_after directive, or the status as a string for a status directive."""
    plan = _plan(config, content, _key_digest(model, content), attempt)
    if plan[0] == "ok":
        return None
    if plan[0] == "status":
        return str(plan[1])
    if plan[0] == "retry_after":
        return "429"
    return plan[0]


# --------------------------------------------------------------------------- canned bodies


def _error_body(message: str, type_: str, **extra: Any) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, **extra}})


_BAD_KEY_BODY = _error_body("无效的令牌", "new_api_error")
_QUOTA_401_BODY = _error_body("该令牌额度已用尽 TokenStatusExhausted[sk-sim***]", "new_api_error")
_QUOTA_403_BODY = _error_body("用户额度不足", "new_api_error", code="insufficient_user_quota")
_ERROR_IN_200_BODY = _error_body("upstream error: do_request_failed", "new_api_error")
_429_BODY = _error_body(
    "Rate limit reached for requests, please try again later",
    "rate_limit_error",
    param=None,
    code="rate_limit_exceeded",
)
_500_BODY = _error_body(
    "internal server error (simulated)", "upstream_error", param=None, code="internal_error"
)
_503_BODY = _error_body(
    "The server is overloaded or not ready yet.", "upstream_error", param=None, code=None
)
_HTML_502 = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
).encode()
_HTML_524 = (
    "<!DOCTYPE html>\n<html lang=\"en-US\">\n<head><title>api.example.com | 524: "
    "A timeout occurred</title></head>\n<body>\n<div id=\"cf-error-details\">\n"
    "<h1>A timeout occurred</h1>\n<span>Error code 524</span>\n"
    "<p>The origin web server timed out responding to this request.</p>\n"
    "<span>Cloudflare Ray ID: 8a1b2c3d4e5f6789</span>\n</div>\n</body>\n</html>\n"
).encode()
_JSON = "application/json"
_HTML = "text/html"
_DONE = b"data: [DONE]\n\n"


def _json(status: int, body: bytes, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=body, content_type=_JSON, headers=headers)


def _invalid_request(message: str, status: int = 400) -> web.Response:
    return _json(
        status, _error_body(message, "invalid_request_error", param=None, code=None)
    )


def _fmt_seconds(value: float) -> str:
    # Fractional values are non-standard HTTP but let tests run fast; integers stay integers.
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


# --------------------------------------------------------------------------- state


class _State:
    """Mutable per-server state; touched only from the server's event loop thread
    (SimServer marshals its calls there)."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.alias: dict[str, str] = dict(config.model_alias)
        self.hanging: set[asyncio.Task[Any]] = set()
        self.in_flight = 0
        self._rid_prefix = time.strftime("%Y%m%d%H%M%S") + f"{int.from_bytes(os.urandom(3), 'big') % 1000000:06d}"
        self._rid_counter = itertools.count(1)
        self.reset()

    def set_config(self, config: SimConfig) -> None:
        self.config = config
        self.alias = dict(config.model_alias)

    def reset(self) -> None:
        self.t0 = time.monotonic()
        self.requests = 0
        self.max_in_flight = self.in_flight
        self.max_in_flight_window = self.in_flight
        self.outcomes: dict[str, int] = dict.fromkeys(
            ("ok", *FAULT_KINDS, "401", "400", "quota", "no_channel", "capacity_429", "rpm_429"), 0
        )
        self.ok_requests = 0
        self.pending_ok = 0
        self.cancelled = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        # Keyed by a 64-bit digest of (model, content) instead of the content
        # string; the value packs (attempts << 1) | answered_ok so one dict
        # serves both counters (~90 MB for 1M distinct rows).
        self.attempts: dict[int, int] = {}
        self.distinct_ok = 0
        self.request_times: collections.deque[float] = collections.deque(maxlen=_REQUEST_TIMES_KEPT)
        self.rpm_window: collections.deque[float] = collections.deque()
        self.bodies: list[Any] = []

    def request_id(self) -> str:
        return f"{self._rid_prefix}{next(self._rid_counter):08d}"

    def count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def enter(self) -> None:
        self.in_flight += 1
        if self.in_flight > self.max_in_flight:
            self.max_in_flight = self.in_flight
        if self.in_flight > self.max_in_flight_window:
            self.max_in_flight_window = self.in_flight

    def next_attempt(self, key: int) -> int:
        packed = self.attempts.get(key, 0) + 2
        self.attempts[key] = packed
        return packed >> 1

    def record_ok(self, key: int, prompt: int, completion: int) -> None:
        self.ok_requests += 1
        packed = self.attempts.get(key, 0)
        if not packed & 1:
            self.attempts[key] = packed | 1
            self.distinct_ok += 1
        self.prompt_tokens += prompt
        self.completion_tokens += completion

    def snapshot(self) -> dict[str, Any]:
        distinct = self.distinct_ok
        return {
            "requests": self.requests,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "max_in_flight_window": self.max_in_flight_window,
            "outcomes": dict(self.outcomes),
            "ok_requests": self.ok_requests,
            "distinct_ok": distinct,
            "duplicate_ok": self.ok_requests - distinct,
            "cancelled": self.cancelled,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "distinct_keys": len(self.attempts),
            "request_times": list(self.request_times),
        }


_STATE: web.AppKey[_State] = web.AppKey("docpipe_sim_state", _State)
_DROPPED: web.RequestKey[bool] = web.RequestKey("docpipe_sim_dropped", bool)


def _drop_connection(request: web.Request) -> None:
    request[_DROPPED] = True
    transport = request.transport
    if transport is not None:
        transport.close()
    # aiohttp treats a CancelledError out of the handler as "client went away":
    # no response is written and nothing is logged.
    raise asyncio.CancelledError


# --------------------------------------------------------------------------- handlers


async def _chat(request: web.Request) -> web.StreamResponse:
    st = request.app[_STATE]
    cfg = st.config
    st.requests += 1
    st.request_times.append(time.monotonic() - st.t0)

    if cfg.api_key is not None and request.headers.get("Authorization", "") != f"Bearer {cfg.api_key}":
        st.count("401")
        return _json(401, _BAD_KEY_BODY)

    try:
        body = orjson.loads(await request.read())
        if not isinstance(body, dict):
            raise ValueError("request body must be a JSON object")
        model = body.get("model")
        messages = body.get("messages")
        if not isinstance(model, str) or not model:
            raise ValueError("model is required")
        if not isinstance(messages, list) or not messages:
            raise ValueError("messages must be a non-empty list")
        content = _user_content(messages)
    except (ValueError, TypeError) as exc:  # orjson.JSONDecodeError is a ValueError
        st.count("400")
        return _invalid_request(f"invalid request: {exc}")
    if cfg.record_bodies:
        st.bodies.append(body)

    if cfg.quota_requests is not None and st.ok_requests + st.pending_ok >= cfg.quota_requests:
        st.count("quota")
        if cfg.quota_style == "403":
            return _json(403, _QUOTA_403_BODY)
        return _json(401, _QUOTA_401_BODY)
    if cfg.no_channel:
        st.count("no_channel")
        return _json(
            503, _error_body(f"当前分组 default 下对于模型 {model} 无可用渠道", "new_api_error")
        )
    if cfg.capacity is not None and st.in_flight >= cfg.capacity:
        st.count("capacity_429")
        return web.Response(status=429)
    if cfg.rpm is not None:
        now = time.monotonic()
        window = st.rpm_window
        while window and window[0] <= now - 60.0:
            window.popleft()
        if len(window) >= cfg.rpm:
            st.count("rpm_429")
            wait = max(1, math.ceil(window[0] + 60.0 - now)) if window else 60
            return _json(
                429,
                _error_body(
                    f"您已达到请求数限制：1分钟内最多请求{cfg.rpm}次", "new_api_error", param=None, code=None
                ),
                {"Retry-After": str(wait)},
            )
        window.append(now)

    digest = _key_digest(model, content)
    key = int.from_bytes(digest, "big")
    attempt = st.next_attempt(key)
    try:
        action, arg, finish, answer_override = _plan(cfg, content, digest, attempt)
    except ValueError as exc:
        st.count("400")
        return _invalid_request(f"bad sim directive: {exc}")

    # Answers that a gateway gives without touching upstream: no latency, no slot.
    if action == "retry_after":
        st.count("429")
        return _json(429, _429_BODY, {"Retry-After": arg})
    if action == "429":
        st.count("429")
        if cfg.retry_after_s is None:
            return web.Response(status=429)
        return _json(429, _429_BODY, {"Retry-After": _fmt_seconds(cfg.retry_after_s)})
    if action == "status" and arg in (401, 403, 429):
        st.count(str(arg))
        return _invalid_request(f"simulated error status {arg}", arg)

    st.count(str(arg) if action == "status" else action)
    reserved = action == "ok" and cfg.quota_requests is not None
    if reserved:
        # Reserve the quota slot now, so concurrent requests cannot overshoot it.
        st.pending_ok += 1
    # Only hung handlers are tracked: they are what would stall shutdown.
    task = asyncio.current_task() if action == "hang" else None
    if task is not None:
        st.hanging.add(task)
    st.enter()
    try:
        if action == "hang":
            await asyncio.sleep(cfg.hang_s)
        else:
            latency = cfg.latency_s
            if cfg.latency_jitter > 0.0:
                _, _, uj = _attempt_hash(cfg.seed, digest, attempt)
                latency *= 1.0 + cfg.latency_jitter * (2.0 * uj - 1.0)
            if latency > 0.0:
                await asyncio.sleep(latency)
        if action in ("ok", "hang"):
            return await _answer(request, st, body, model, messages, content, digest, key, finish, answer_override, None)
        if action == "status":
            return _invalid_request(f"simulated error status {arg}", arg)
        if action == "500":
            return _json(500, _500_BODY)
        if action == "503":
            return _json(503, _503_BODY)
        if action == "502_html":
            return web.Response(status=502, body=_HTML_502, content_type=_HTML, charset="utf-8")
        if action == "524_html":
            return web.Response(status=524, body=_HTML_524, content_type=_HTML, charset="utf-8")
        if action == "disconnect":
            _drop_connection(request)
        if action == "error_in_200" and body.get("stream") is not True:
            return _json(200, _ERROR_IN_200_BODY)
        # truncated, empty_choices, stream_cut, error_in_200 (stream)
        return await _answer(request, st, body, model, messages, content, digest, key, finish, answer_override, action)
    except asyncio.CancelledError:
        if not request.get(_DROPPED):
            st.cancelled += 1
        raise
    finally:
        st.in_flight -= 1
        if reserved:
            st.pending_ok -= 1
        if task is not None:
            st.hanging.discard(task)


async def _answer(
    request: web.Request,
    st: _State,
    body: dict[str, Any],
    model: str,
    messages: list[dict[str, Any]],
    content: str,
    digest: bytes,
    key: int,
    finish: str,
    answer_override: str | None,
    fault: str | None,
) -> web.StreamResponse:
    cfg = st.config
    answer = answer_override if answer_override is not None else _answer_from_digest(model, content, digest)
    prompt, completion = usage_for(messages, answer)
    created = int(time.time())
    cid = f"chatcmpl-{os.urandom(12).hex()}"
    resp_model = st.alias.get(model, model)

    if body.get("stream") is True:
        opts = body.get("stream_options")
        include_usage = cfg.stream_usage and isinstance(opts, dict) and opts.get("include_usage") is True
        return await _stream(
            request, st, cid, created, resp_model, answer, finish, prompt, completion, include_usage, key, fault
        )

    completion_obj = {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": resp_model,
        "choices": (
            []
            if fault == "empty_choices"
            else [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": finish}]
        ),
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    }
    payload = orjson.dumps(completion_obj)
    if fault in ("truncated", "stream_cut"):
        return _json(200, payload[: len(payload) // 2])
    if fault is None:
        st.record_ok(key, prompt, completion)
    return _json(200, payload)


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


async def _stream(
    request: web.Request,
    st: _State,
    cid: str,
    created: int,
    model: str,
    answer: str,
    finish: str,
    prompt: int,
    completion: int,
    include_usage: bool,
    key: int,
    fault: str | None,
) -> web.StreamResponse:
    def chunk(delta: dict[str, Any], finish_reason: str | None) -> bytes:
        return _sse(
            {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            }
        )

    events: list[bytes]
    if fault == "error_in_200":
        # new-api reports upstream failures after the stream has started as an error event.
        events = [b"data: " + _ERROR_IN_200_BODY + b"\n\n", _DONE]
    elif fault == "empty_choices":
        events = [
            _sse({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": []}),
            _DONE,
        ]
    else:
        n = 4
        step = math.ceil(len(answer) / n)
        pieces = [answer[i : i + step] for i in range(0, len(answer), step)]
        events = [chunk({"role": "assistant", "content": ""}, None)]
        events.extend(chunk({"content": p}, None) for p in pieces)
        if fault == "stream_cut":
            # The gateway's idle cut-off: [DONE] without any finish_reason.
            events.append(_DONE)
        elif fault == "truncated":
            events = events[: max(1, len(events) // 2)]
        else:
            events.append(chunk({}, finish))
            if include_usage:
                events.append(
                    _sse(
                        {
                            "id": cid,
                            "object": "chat.completion.chunk",
                            "created": created,
                            "model": model,
                            "choices": [],
                            "usage": {
                                "prompt_tokens": prompt,
                                "completion_tokens": completion,
                                "total_tokens": prompt + completion,
                            },
                        }
                    )
                )
            events.append(_DONE)

    resp = web.StreamResponse(status=200, headers={"Cache-Control": "no-cache"})
    resp.content_type = "text/event-stream"
    resp.charset = "utf-8"
    await resp.prepare(request)
    # One write: the client's SSE parser splits events, and it keeps the handler cheap.
    await resp.write(b"".join(events))
    if fault == "truncated":
        # Mid-stream connection loss: the chunked body never terminates.
        _drop_connection(request)
    await resp.write_eof()
    if fault is None:
        st.record_ok(key, prompt, completion)
    return resp


def _authorised(request: web.Request) -> web.Response | None:
    key = request.app[_STATE].config.api_key
    if key is not None and request.headers.get("Authorization", "") != f"Bearer {key}":
        return _json(401, _BAD_KEY_BODY)
    return None


async def _models(request: web.Request) -> web.Response:
    if (denied := _authorised(request)) is not None:
        return denied
    cfg = request.app[_STATE].config
    data = [{"id": m, "object": "model", "created": 1715367049, "owned_by": "openai"} for m in cfg.models]
    if cfg.models_shape == "newapi":
        return _json(200, orjson.dumps({"success": True, "data": data}))
    return _json(200, orjson.dumps({"object": "list", "data": data}))


async def _billing_subscription(request: web.Request) -> web.Response:
    if (denied := _authorised(request)) is not None:
        return denied
    hard = request.app[_STATE].config.hard_limit_usd
    return _json(
        200,
        orjson.dumps(
            {
                "object": "billing_subscription",
                "has_payment_method": True,
                "soft_limit_usd": hard,
                "hard_limit_usd": hard,
                "system_hard_limit_usd": hard,
                "access_until": 0,
            }
        ),
    )


async def _billing_usage(request: web.Request) -> web.Response:
    if (denied := _authorised(request)) is not None:
        return denied
    used = request.app[_STATE].config.used_usd
    return _json(200, orjson.dumps({"object": "list", "total_usage": used * 100}))


async def _token_usage(request: web.Request) -> web.Response:
    if (denied := _authorised(request)) is not None:
        return denied
    cfg = request.app[_STATE].config
    hard, used = cfg.hard_limit_usd, cfg.used_usd
    return _json(
        200,
        orjson.dumps(
            {
                "code": True,
                "message": "ok",
                "data": {
                    "object": "token_usage",
                    "name": "sim",
                    "total_granted": hard * 500000,
                    "total_used": used * 500000,
                    "total_available": (hard - used) * 500000,
                    "unlimited_quota": False,
                    "model_limits": {},
                    "model_limits_enabled": False,
                    "expires_at": 0,
                },
            }
        ),
    )


async def _sim_stats(request: web.Request) -> web.Response:
    return _json(200, orjson.dumps(request.app[_STATE].snapshot()))


async def _sim_stats_window(request: web.Request) -> web.Response:
    st = request.app[_STATE]
    st.max_in_flight_window = st.in_flight
    return _json(200, orjson.dumps({"max_in_flight_window": st.max_in_flight_window}))


async def _sim_config_get(request: web.Request) -> web.Response:
    return _json(200, orjson.dumps(request.app[_STATE].config.to_dict()))


async def _sim_config_post(request: web.Request) -> web.Response:
    st = request.app[_STATE]
    try:
        changes = orjson.loads(await request.read())
        if not isinstance(changes, dict):
            raise ValueError("config update must be a JSON object")
        st.set_config(st.config.with_changes(changes))
    except (ValueError, TypeError) as exc:
        return _invalid_request(str(exc))
    return _json(200, orjson.dumps(st.config.to_dict()))


async def _sim_bodies(request: web.Request) -> web.Response:
    return _json(200, orjson.dumps(request.app[_STATE].bodies))


async def _sim_reset(request: web.Request) -> web.Response:
    request.app[_STATE].reset()
    return _json(200, b'{"reset":true}')


def make_app(config: SimConfig) -> web.Application:
    """The simulator as an aiohttp application (state lives in the app)."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    st = app[_STATE] = _State(config)

    # A signal rather than per-handler code so router errors (404/405) carry the id too.
    async def add_request_id(request: web.BaseRequest, response: web.StreamResponse) -> None:
        response.headers["X-Oneapi-Request-Id"] = st.request_id()

    app.on_response_prepare.append(add_request_id)
    r = app.router
    r.add_post("/v1/chat/completions", _chat)
    r.add_get("/v1/models", _models)
    for prefix in ("/v1", ""):
        r.add_get(f"{prefix}/dashboard/billing/subscription", _billing_subscription)
        r.add_get(f"{prefix}/dashboard/billing/usage", _billing_usage)
    r.add_get("/api/usage/token/", _token_usage)
    r.add_get("/api/usage/token", _token_usage)
    r.add_get("/_sim/stats", _sim_stats)
    r.add_post("/_sim/stats/window", _sim_stats_window)
    r.add_get("/_sim/config", _sim_config_get)
    r.add_post("/_sim/config", _sim_config_post)
    r.add_post("/_sim/reset", _sim_reset)
    r.add_get("/_sim/bodies", _sim_bodies)
    return app


# --------------------------------------------------------------------------- running


async def _run_app(
    app: web.Application, host: str, port: int, ready: Callable[[int], None] | None
) -> None:
    runner = web.AppRunner(
        app,
        access_log=None,
        # Cancel handlers whose client went away, so timed-out "hang" requests do not pile up.
        handler_cancellation=True,
        shutdown_timeout=_SHUTDOWN_GRACE_S,
        keepalive_timeout=75.0,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=4096)
        await site.start()
        if ready is not None:
            ready(int(runner.addresses[0][1]))
        await asyncio.Future()  # until cancelled
    finally:
        # Hung requests would otherwise hold the graceful-shutdown wait for its full length.
        for task in list(app[_STATE].hanging):
            task.cancel()
        await runner.cleanup()


async def serve(
    config: SimConfig, host: str, port: int, ready: Callable[[int], None] | None = None
) -> None:
    """Run the simulator until cancelled; ``ready(bound_port)`` once listening."""
    await _run_app(make_app(config), host, port, ready)


class SimServer:
    """The simulator on a daemon thread with its own event loop.

    Usable from sync and async code alike; the client never shares the server's loop.
    """

    def __init__(self, config: SimConfig = SimConfig(), host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._app = make_app(config)
        self._state = self._app[_STATE]
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def config(self) -> SimConfig:
        return self._state.config

    def start(self) -> SimServer:
        if self._thread is not None:
            return self
        ready = threading.Event()

        def on_ready(port: int) -> None:
            self.port = port
            ready.set()

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.current_task()
            try:
                await _run_app(self._app, self.host, self.port, on_ready)
            except asyncio.CancelledError:
                pass

        def run() -> None:
            try:
                asyncio.run(main())
            except BaseException as exc:  # surfaced by start()
                self._error = exc
            finally:
                ready.set()

        self._thread = threading.Thread(target=run, name=f"docpipe-sim-{id(self):x}", daemon=True)
        self._thread.start()
        if not ready.wait(10.0):
            raise RuntimeError("simulator did not start within 10 s")
        if self._error is not None:
            self._thread = None
            raise self._error
        return self

    def stop(self) -> None:
        thread, loop, task = self._thread, self._loop, self._task
        if thread is None:
            return
        if loop is not None and task is not None:
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:  # loop already closed
                pass
        thread.join(timeout=5.0)
        self._thread = None
        self._loop = None
        self._task = None

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _in_loop(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the server loop so it never races a handler."""
        loop = self._loop
        if loop is None or threading.current_thread() is self._thread:
            return fn()
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

        try:
            loop.call_soon_threadsafe(run)
        except RuntimeError:  # loop closed between the check and the call
            return fn()
        return fut.result(timeout=10.0)

    def stats(self) -> dict[str, Any]:
        return self._in_loop(self._state.snapshot)

    def bodies(self) -> list[Any]:
        """Chat request bodies received so far (needs ``record_bodies=True``)."""
        return self._in_loop(lambda: list(self._state.bodies))

    def update(self, **changes: Any) -> None:
        new = self._state.config.with_changes(changes)  # raise in the caller's thread
        self._in_loop(lambda: self._state.set_config(new))

    def reset(self) -> None:
        self._in_loop(self._state.reset)

    def reset_window(self) -> None:
        """Like POST /_sim/stats/window."""

        def run() -> None:
            self._state.max_in_flight_window = self._state.in_flight

        self._in_loop(run)
