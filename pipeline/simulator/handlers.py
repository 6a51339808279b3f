"""The endpoints besides chat: models, billing, token usage, and the /_sim control plane."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from . import responses as r
from .state import STATE


def _authorised(request: web.Request) -> web.Response | None:
    key = request.app[STATE].config.api_key
    if key is not None and request.headers.get("Authorization", "") != f"Bearer {key}":
        return r.json_response(401, r.BAD_KEY_BODY)
    return None


def _ok(data: Any) -> web.Response:
    return r.json_response(200, orjson.dumps(data))


async def models(request: web.Request) -> web.Response:
    """``GET /v1/models`` in the OpenAI list shape or new-api's ``{"success": true, ...}``."""
    if (denied := _authorised(request)) is not None:
        return denied
    cfg = request.app[STATE].config
    data = [{"id": m, "object": "model", "created": 1715367049, "owned_by": "openai"} for m in cfg.models]
    if cfg.models_shape == "newapi":
        return _ok({"success": True, "data": data})
    return _ok({"object": "list", "data": data})


async def billing_subscription(request: web.Request) -> web.Response:
    """one-api ``GET /dashboard/billing/subscription``: the grant as ``hard_limit_usd``."""
    if (denied := _authorised(request)) is not None:
        return denied
    hard = request.app[STATE].config.hard_limit_usd
    return _ok(
        {
            "object": "billing_subscription",
            "has_payment_method": True,
            "soft_limit_usd": hard,
            "hard_limit_usd": hard,
            "system_hard_limit_usd": hard,
            "access_until": 0,
        }
    )


async def billing_usage(request: web.Request) -> web.Response:
    """one-api ``GET /dashboard/billing/usage``: ``total_usage`` in US cents."""
    if (denied := _authorised(request)) is not None:
        return denied
    used = request.app[STATE].config.used_usd
    return _ok({"object": "list", "total_usage": used * 100})


async def token_usage(request: web.Request) -> web.Response:
    """new-api ``GET /api/usage/token/``: raw quota units (500000 = $1)."""
    if (denied := _authorised(request)) is not None:
        return denied
    cfg = request.app[STATE].config
    hard, used = cfg.hard_limit_usd, cfg.used_usd
    data = {
        "object": "token_usage",
        "name": "sim",
        "total_granted": hard * 500000,
        "total_used": used * 500000,
        "total_available": (hard - used) * 500000,
        "unlimited_quota": False,
        "model_limits": {},
        "model_limits_enabled": False,
        "expires_at": 0,
    }
    return _ok({"code": True, "message": "ok", "data": data})


async def sim_stats(request: web.Request) -> web.Response:
    """``GET /_sim/stats``: the counters (see :mod:`.state`)."""
    return _ok(request.app[STATE].snapshot())


async def sim_stats_window(request: web.Request) -> web.Response:
    """``POST /_sim/stats/window``: start a new max-in-flight window."""
    st = request.app[STATE]
    st.reset_window()
    return _ok({"max_in_flight_window": st.max_in_flight_window})


async def sim_config_get(request: web.Request) -> web.Response:
    """``GET /_sim/config``: the configuration in force."""
    return _ok(request.app[STATE].config.to_dict())


async def sim_config_post(request: web.Request) -> web.Response:
    """``POST /_sim/config``: apply the JSON object's changes; 400 naming a bad one."""
    st = request.app[STATE]
    try:
        changes = orjson.loads(await request.read())
        if not isinstance(changes, dict):
            raise ValueError("config update must be a JSON object")
        st.set_config(st.config.with_changes(changes))
    except (ValueError, TypeError) as exc:
        return r.invalid_request(str(exc))
    return _ok(st.config.to_dict())


async def sim_bodies(request: web.Request) -> web.Response:
    """``GET /_sim/bodies``: chat bodies received, in order (with ``record_bodies``)."""
    return _ok(request.app[STATE].bodies)


async def sim_reset(request: web.Request) -> web.Response:
    """``POST /_sim/reset``: zero the counters."""
    request.app[STATE].reset()
    return r.json_response(200, b'{"reset":true}')
