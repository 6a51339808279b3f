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
from datetime import datetime, timezone
from typing import Any

from .client import GatewayClient
from .config import JobConfig
from .errors import DocpipeError, GatewayRefused, RequestError, RunFatalError

QUOTA_UNITS_PER_USD = 500_000


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


async def fetch_models(cfg: JobConfig) -> list[dict[str, Any]]:
    """The model list, from either response shape (OpenAI list or new-api success)."""
    async with GatewayClient(cfg, connections=2) as client:
        data = await _get(client, "/models")
    items = data.get("data") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise DocpipeError(f"{cfg.base_url}/models: unexpected answer (no model list)")
    models = []
    for item in items:
        if isinstance(item, str):
            models.append({"id": item, "owned_by": None})
        elif isinstance(item, dict) and item.get("id"):
            models.append({"id": str(item["id"]), "owned_by": item.get("owned_by")})
    return sorted(models, key=lambda m: m["id"])


async def fetch_quota(cfg: JobConfig) -> dict[str, Any]:
    """Limit, usage and remaining USD; ``None`` for what the gateway does not say."""
    q: dict[str, Any] = {"base_url": cfg.base_url, "hard_limit_usd": None, "used_usd": None,
                         "remaining_usd": None, "token": None, "unavailable": []}  # fmt: skip
    async with GatewayClient(cfg, connections=2) as client:
        for path, name in (("/dashboard/billing/subscription", "subscription"),
                           ("/dashboard/billing/usage", "usage"), ("/api/usage/token/", "token")):  # fmt: skip
            try:
                data = await _get(client, path)
            except RequestError as e:
                # a gateway without the endpoint answers 404, or (one-api's web UI) an HTML
                # page with 200; an unreachable gateway is not "unavailable", it is an error
                if e.error_type in ("connection", "timeout"):
                    raise
                q["unavailable"].append(f"{path}: {e}")
                continue
            if not isinstance(data, dict):
                q["unavailable"].append(f"{path}: unexpected answer")
            elif name == "subscription" and data.get("hard_limit_usd") is not None:
                q["hard_limit_usd"] = float(data["hard_limit_usd"])
            elif name == "usage" and data.get("total_usage") is not None:
                q["used_usd"] = float(data["total_usage"]) / 100.0  # cents
            elif name == "token" and isinstance(data.get("data"), dict):
                q["token"] = _token_usage(data["data"])
    if q["hard_limit_usd"] is not None and q["used_usd"] is not None:
        q["remaining_usd"] = q["hard_limit_usd"] - q["used_usd"]
    if q["hard_limit_usd"] is None and q["used_usd"] is None and q["token"] is None:
        raise DocpipeError(f"{cfg.base_url}: the gateway answers no usage endpoint: " + "; ".join(q["unavailable"]))
    return q


def _token_usage(d: dict[str, Any]) -> dict[str, Any]:
    def usd(key: str) -> float | None:
        v = d.get(key)
        return None if v is None else float(v) / QUOTA_UNITS_PER_USD

    return {
        "name": d.get("name"),
        "granted_usd": usd("total_granted"),
        "used_usd": usd("total_used"),
        "available_usd": usd("total_available"),
        "unlimited": bool(d.get("unlimited_quota")),
        "expires_at": _expiry(d.get("expires_at")),
    }


def _expiry(value: Any) -> str | None:
    """new-api sends epoch seconds, with 0 or -1 for a token that never expires."""
    try:
        seconds = int(value)
    except (TypeError, ValueError):
        return None
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat() if seconds > 0 else None


def models(cfg: JobConfig) -> list[dict[str, Any]]:
    return asyncio.run(fetch_models(cfg))


def quota(cfg: JobConfig) -> dict[str, Any]:
    return asyncio.run(fetch_quota(cfg))


def format_models(items: list[dict[str, Any]]) -> str:
    if not items:
        return "the gateway lists no models for this key"
    width = max(len(m["id"]) for m in items)
    return "\n".join(f"{m['id']:<{width}}  {m['owned_by'] or ''}".rstrip() for m in items)


def format_quota(q: dict[str, Any]) -> str:
    def usd(x: float | None) -> str:
        return "unknown" if x is None else f"${x:,.2f}"

    lines = [f"gateway: {q['base_url']}"]
    if q["hard_limit_usd"] is not None or q["used_usd"] is not None:
        lines.append(f"limit {usd(q['hard_limit_usd'])}, used {usd(q['used_usd'])}, "
                     f"remaining {usd(q['remaining_usd'])}")  # fmt: skip
    t = q["token"]
    if t is not None:
        left = "unlimited" if t["unlimited"] else usd(t["available_usd"])
        expiry = f", expires {t['expires_at']}" if t["expires_at"] else ""
        name = f" {t['name']}" if t["name"] else ""
        lines.append(f"token{name}: granted {usd(t['granted_usd'])}, used {usd(t['used_usd'])}, "
                     f"available {left}{expiry}")  # fmt: skip
    return "\n".join(lines)
