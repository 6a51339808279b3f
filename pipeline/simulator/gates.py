"""The chat request's gates, in the order a one-api / new-api gateway applies them
(DESIGN.md §1): auth, body, model, quota, capacity, rpm, fault.

Each gate looks at the :class:`Call` (and may fill in what it learnt), then either
answers (returns a response, counted in /_sim/stats) or lets the request through
(returns None). A request through every gate reaches the upstream phase
(:mod:`.chat`). A new gateway behaviour is one more function in :data:`GATES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from . import responses as r
from . import structured
from .answers import key_digest, user_content
from .config import SimConfig
from .kinds import FaultKind
from .plan import OK_PLAN, Plan, plan_attempt
from .state import State


@dataclass(slots=True)
class Call:
    """One chat request on its way through the gates (a working record, filled in gate by gate)."""

    request: web.Request
    state: State
    config: SimConfig  # the configuration when the request arrived, used throughout
    raw: bytes
    body: dict[str, Any] = field(default_factory=dict)
    model: str = ""
    messages: list[dict[str, Any]] = field(default_factory=list)
    content: str = ""
    digest: bytes = b""
    key: int = 0
    attempt: int = 0
    plan: Plan = OK_PLAN


Gate = Callable[[Call], web.StreamResponse | None]


def auth(call: Call) -> web.StreamResponse | None:
    """401 "无效的令牌" unless the configured key is sent as a Bearer token."""
    key = call.config.api_key
    if key is not None and call.request.headers.get("Authorization", "") != f"Bearer {key}":
        call.state.count("401")
        return r.json_response(401, r.BAD_KEY_BODY)
    return None


def body(call: Call) -> web.StreamResponse | None:
    """400 unless the body is a JSON object with a model and non-empty messages."""
    try:
        parsed = orjson.loads(call.raw)
        if not isinstance(parsed, dict):
            raise ValueError("request body must be a JSON object")
        model, messages = parsed.get("model"), parsed.get("messages")
        if not isinstance(model, str) or not model:
            raise ValueError("model is required")
        if not isinstance(messages, list) or not messages:
            raise ValueError("messages must be a non-empty list")
        call.content = user_content(messages)
    except (ValueError, TypeError) as exc:  # orjson.JSONDecodeError is a ValueError
        call.state.count("400")
        return r.invalid_request(f"invalid request: {exc}")
    call.body, call.model, call.messages = parsed, model, messages
    if call.config.record_bodies:
        call.state.bodies.append(parsed)
    return None


def model(call: Call) -> web.StreamResponse | None:
    """503 "无可用渠道" when the model is not served for this key's group (``no_channel``, or the
    model is one of ``no_channel_models``); 404 ``model_not_found`` for the ``missing_models``."""
    if call.config.no_channel or call.model in call.config.no_channel_models:
        call.state.count("no_channel")
        return r.no_channel(call.model)
    if call.model in call.config.missing_models:  # 404 model_not_found
        call.state.count("model_not_found")
        return r.model_not_found(call.model)
    return None


def quota(call: Call) -> web.StreamResponse | None:
    """401 or 403 (``quota_style``) once ``quota_requests`` answers are delivered or promised."""
    st, cfg = call.state, call.config
    if cfg.quota_requests is not None and st.ok_requests + st.pending_ok >= cfg.quota_requests:
        st.count("quota")
        return r.quota_exhausted(cfg.quota_style)
    return None


def capacity(call: Call) -> web.StreamResponse | None:
    """429 with an empty body and no Retry-After when ``capacity`` requests are in flight."""
    cap = call.config.capacity
    if cap is not None and call.state.in_flight >= cap:
        call.state.count("capacity_429")
        return r.rate_limited(None)
    return None


def rpm(call: Call) -> web.StreamResponse | None:
    """429 with Retry-After once ``rpm`` requests arrived in the last 60 s (failed ones count too)."""
    limit, st = call.config.rpm, call.state
    if limit is None:
        return None
    wait = st.rpm_window.admit(st.clock(), limit)
    if wait is None:
        return None
    st.count("rpm_429")
    message = f"您已达到请求数限制：1分钟内最多请求{limit}次"
    body = r.error_body(message, "new_api_error", param=None, code=None)
    return r.json_response(429, body, {"Retry-After": str(wait)})


def fault(call: Call) -> web.StreamResponse | None:
    """Count the attempt and plan it; answer at once what the gateway itself answers
    (429s, quota, no channel, status 401/403/429), let the rest go upstream."""
    st = call.state
    call.digest = key_digest(call.model, call.content)
    call.key = int.from_bytes(call.digest, "big")
    call.attempt = st.next_attempt(call.key)
    st.check_retry_after(call.key)
    try:
        call.plan = plan_attempt(call.config, call.content, call.digest, call.attempt)
    except ValueError as exc:
        st.count("400")
        return r.invalid_request(f"bad sim directive: {exc}")
    st.count(call.plan.outcome)
    return immediate_response(call) if call.plan.immediate else None


def immediate_response(call: Call) -> web.Response:
    """The answer to a plan that never reaches upstream."""
    plan, cfg = call.plan, call.config
    if plan.status is not None:
        return r.status_error(plan.status)
    kind = plan.fault
    if kind is FaultKind.RATE_LIMITED:
        header = plan.retry_after
        if header is None and cfg.retry_after_s is not None:
            header = r.fmt_seconds(cfg.retry_after_s)
        if header is not None:
            call.state.retry_after_sent(call.key, float(header))
        return r.rate_limited(header)
    if kind is FaultKind.RATE_LIMITED_EMPTY:
        return r.rate_limited(None)
    if kind is FaultKind.NO_CHANNEL:
        return r.no_channel(call.model)
    return r.quota_exhausted("403" if kind is FaultKind.QUOTA_403 else "401")


GATES: tuple[Gate, ...] = (auth, body, model, quota, capacity, rpm, structured.response_format, fault)
