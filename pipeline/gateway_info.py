"""``docpipe models`` and ``docpipe quota``: what the gateway serves this key, and
how much of its quota is left (DESIGN.md section 1, "Other endpoints").

Quota comes from one-api's OpenAI-style billing pair
(``/dashboard/billing/subscription`` -> ``hard_limit_usd``,
``/dashboard/billing/usage`` -> ``total_usage`` in US cents) and, on new-api
gateways, ``/api/usage/token/`` in raw quota units (500 000 units = 1 USD).
Each part that a gateway does not offer is left out; a refused key (401/403)
is one clear error, whatever endpoint meets it first.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .client import GatewayClient
from .config import JobConfig
from .errors import DocpipeError, GatewayRefused, RequestError, RunFatalError
from .report import JsonRecord, finite_float

__all__ = ["Model", "ModelList", "Quota", "TokenQuota", "fetch_models", "fetch_quota", "format_models",
           "format_quota", "models", "quota"]  # fmt: skip

QUOTA_UNITS_PER_USD = 500_000
_SUBSCRIPTION, _USAGE, _TOKEN = "/dashboard/billing/subscription", "/dashboard/billing/usage", "/api/usage/token/"


@dataclass(frozen=True, slots=True)
class Model(JsonRecord):
    """One model the gateway serves this key."""

    id: str
    owned_by: str | None


@dataclass(frozen=True, slots=True)
class ModelList(JsonRecord):
    """The models, sorted by id; ``to_dict()`` is ``docpipe models --json``."""

    models: tuple[Model, ...]


@dataclass(frozen=True, slots=True)
class TokenQuota(JsonRecord):
    """new-api's figures for this key (``/api/usage/token/``), in USD."""

    name: str | None
    granted_usd: float | None
    used_usd: float | None
    available_usd: float | None
    unlimited: bool
    expires_at: str | None  # ISO 8601 UTC; None: never expires


@dataclass(frozen=True, slots=True)
class Quota(JsonRecord):
    """Limit, usage and what is left, in USD; None for what the gateway does not say.
    ``to_dict()`` is ``docpipe quota --json``."""

    base_url: str
    hard_limit_usd: float | None
    used_usd: float | None
    remaining_usd: float | None
    token: TokenQuota | None
    unavailable: tuple[str, ...]  # "endpoint: why" for each endpoint that gave nothing


def _refused(cfg: JobConfig, path: str, e: RunFatalError) -> GatewayRefused:
    sent = "no API key was sent" if not cfg.api_key else "the key was refused"
    return GatewayRefused(
        f"{cfg.base_url}{path}: HTTP {e.http_status}, {sent} ({e.message}); "
        "set APICORE_API_KEY (or OPENAI_API_KEY) or pass --api-key"
    )


async def _get(client: GatewayClient, path: str) -> Any:
    try:
        return await client.get_json(path)
    except RunFatalError as e:
        if e.http_status in (401, 403):
            raise _refused(client.cfg, path, e) from None
        raise


async def fetch_models(cfg: JobConfig) -> ModelList:
    """The model list, from either response shape (OpenAI list or new-api success)."""
    async with GatewayClient(cfg, connections=2) as client:
        data = await _get(client, "/models")
    items = data.get("data") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise DocpipeError(f"{cfg.base_url}/models: unexpected answer (no model list)")
    found = []
    for item in items:
        if isinstance(item, str):
            found.append(Model(id=item, owned_by=None))
        elif isinstance(item, dict) and item.get("id"):
            owner = item.get("owned_by")
            found.append(Model(id=str(item["id"]), owned_by=None if owner is None else str(owner)))
    return ModelList(models=tuple(sorted(found, key=lambda m: m.id)))


async def _endpoint(client: GatewayClient, path: str, unavailable: list[str]) -> dict[str, Any] | None:
    """One usage endpoint's JSON object, or None (and why, in ``unavailable``)."""
    try:
        data = await _get(client, path)
    except RequestError as e:
        # a gateway without the endpoint answers 404, or (one-api's web UI) an HTML
        # page with 200; an unreachable gateway is not "unavailable", it is an error
        if e.error_type in ("connection", "timeout"):
            raise
        unavailable.append(f"{path}: {e}")
        return None
    if not isinstance(data, dict):
        unavailable.append(f"{path}: unexpected answer")
        return None
    return data


async def fetch_quota(cfg: JobConfig) -> Quota:
    """Limit, usage and remaining USD; ``None`` for what the gateway does not say."""
    unavailable: list[str] = []
    async with GatewayClient(cfg, connections=2) as client:
        subscription = await _endpoint(client, _SUBSCRIPTION, unavailable)
        usage = await _endpoint(client, _USAGE, unavailable)
        token = await _endpoint(client, _TOKEN, unavailable)
    limit = finite_float(subscription.get("hard_limit_usd"), from_text=True) if subscription else None
    cents = finite_float(usage.get("total_usage"), from_text=True) if usage else None
    used = None if cents is None else cents / 100.0
    token_data = token.get("data") if token else None
    token_quota = _token_usage(token_data) if isinstance(token_data, dict) else None
    if limit is None and used is None and token_quota is None:
        raise DocpipeError(f"{cfg.base_url}: the gateway answers no usage endpoint: " + "; ".join(unavailable))
    return Quota(base_url=cfg.base_url, hard_limit_usd=limit, used_usd=used,
                 remaining_usd=None if limit is None or used is None else limit - used,
                 token=token_quota, unavailable=tuple(unavailable))  # fmt: skip


def _token_usage(d: dict[str, Any]) -> TokenQuota:
    def usd(key: str) -> float | None:
        units = finite_float(d.get(key), from_text=True)
        return None if units is None else units / QUOTA_UNITS_PER_USD

    name = d.get("name")
    return TokenQuota(
        name=None if name is None else str(name),
        granted_usd=usd("total_granted"),
        used_usd=usd("total_used"),
        available_usd=usd("total_available"),
        unlimited=bool(d.get("unlimited_quota")),
        expires_at=_expiry(d.get("expires_at")),
    )


def _expiry(value: Any) -> str | None:
    """new-api sends epoch seconds, with 0 or -1 for a token that never expires."""
    try:
        seconds = int(value)
    except (TypeError, ValueError):
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat() if seconds > 0 else None


def models(cfg: JobConfig) -> ModelList:
    """The models the gateway serves this key (blocking; see :func:`fetch_models`)."""
    return asyncio.run(fetch_models(cfg))


def quota(cfg: JobConfig) -> Quota:
    """The key's quota (blocking; see :func:`fetch_quota`)."""
    return asyncio.run(fetch_quota(cfg))


def format_models(m: ModelList) -> str:
    """One model per line: id, then owner (what ``docpipe models`` prints)."""
    if not m.models:
        return "the gateway lists no models for this key"
    width = max(len(x.id) for x in m.models)
    return "\n".join(f"{x.id:<{width}}  {x.owned_by or ''}".rstrip() for x in m.models)


def format_quota(q: Quota) -> str:
    """Limit, usage and what is left, in USD (what ``docpipe quota`` prints)."""

    def usd(x: float | None) -> str:
        return "unknown" if x is None else f"${x:,.2f}"

    lines = [f"gateway: {q.base_url}"]
    if q.hard_limit_usd is not None or q.used_usd is not None:
        lines.append(f"limit {usd(q.hard_limit_usd)}, used {usd(q.used_usd)}, remaining {usd(q.remaining_usd)}")
    if (t := q.token) is not None:
        left = "unlimited" if t.unlimited else usd(t.available_usd)
        expiry = f", expires {t.expires_at}" if t.expires_at else ""
        name = f" {t.name}" if t.name else ""
        lines.append(f"token{name}: granted {usd(t.granted_usd)}, used {usd(t.used_usd)}, available {left}{expiry}")
    return "\n".join(lines)
