"""Canned gateway answers: the error bodies and proxy pages real one-api / new-api
deployments send, byte for byte where it matters (which fields are missing, HTML
instead of JSON, empty bodies)."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from .kinds import FaultKind

JSON = "application/json"
HTML = "text/html"


def error_body(message: str, type_: str, **extra: Any) -> bytes:
    """``{"error": {"message", "type", ...extra}}``; one-api often sends no ``code`` at all."""
    return orjson.dumps({"error": {"message": message, "type": type_, **extra}})


BAD_KEY_BODY = error_body("无效的令牌", "new_api_error")
QUOTA_401_BODY = error_body("该令牌额度已用尽 TokenStatusExhausted[sk-sim***]", "new_api_error")
QUOTA_403_BODY = error_body("用户额度不足", "new_api_error", code="insufficient_user_quota")
ERROR_IN_200_BODY = error_body("upstream error: do_request_failed", "new_api_error")
RATE_LIMIT_BODY = error_body(
    "Rate limit reached for requests, please try again later",
    "rate_limit_error",
    param=None,
    code="rate_limit_exceeded",
)
SERVER_ERROR_BODY = error_body("internal server error (simulated)", "upstream_error", param=None, code="internal_error")
# No "code" key at all: the shape one-api gives most upstream failures.
UNAVAILABLE_BODY = error_body("The server is overloaded or not ready yet.", "upstream_error")
HTML_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)
HTML_524 = (
    b'<!DOCTYPE html>\n<html lang="en-US">\n<head><title>api.example.com | 524: '
    b'A timeout occurred</title></head>\n<body>\n<div id="cf-error-details">\n'
    b"<h1>A timeout occurred</h1>\n<span>Error code 524</span>\n"
    b"<p>The origin web server timed out responding to this request.</p>\n"
    b"<span>Cloudflare Ray ID: 8a1b2c3d4e5f6789</span>\n</div>\n</body>\n</html>\n"
)
DONE = b"data: [DONE]\n\n"


def json_response(status: int, body: bytes, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response from pre-serialised bytes."""
    return web.Response(status=status, body=body, content_type=JSON, headers=headers)


def invalid_request(message: str, status: int = 400) -> web.Response:
    """OpenAI-style error with every field present (``param`` and ``code`` null)."""
    return json_response(status, error_body(message, "invalid_request_error", param=None, code=None))


def status_error(status: int) -> web.Response:
    """The ``[[sim:status=N]]`` answer: a JSON error body for any 4xx/5xx."""
    type_ = "invalid_request_error" if status < 500 else "upstream_error"
    return json_response(status, error_body(f"simulated error status {status}", type_, param=None, code=None))


def no_channel(model: str) -> web.Response:
    """503 "no channel for this model in this group": a configuration error, not overload."""
    return json_response(503, error_body(f"当前分组 default 下对于模型 {model} 无可用渠道", "new_api_error"))


def model_not_found(model: str) -> web.Response:
    """404 ``model_not_found``: the OpenAI-style answer for a model the gateway does not know."""
    body = error_body(f"The model `{model}` does not exist", "invalid_request_error", param=None,
                      code="model_not_found")  # fmt: skip
    return json_response(404, body)


def quota_exhausted(style: str) -> web.Response:
    """401 token quota used up, or 403 insufficient user balance."""
    return json_response(403, QUOTA_403_BODY) if style == "403" else json_response(401, QUOTA_401_BODY)


def rate_limited(retry_after: str | None) -> web.Response:
    """429 with a JSON body and Retry-After, or (None) the limiters' empty 429 without one."""
    if retry_after is None:
        return web.Response(status=429)
    return json_response(429, RATE_LIMIT_BODY, {"Retry-After": retry_after})


def fmt_seconds(value: float) -> str:
    """A Retry-After value; fractional seconds are non-standard but let tests run fast."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _html(status: int, body: bytes) -> web.Response:
    return web.Response(status=status, body=body, content_type=HTML, charset="utf-8")


def upstream_error(kind: FaultKind) -> web.Response | None:
    """The error page or body of a fault the upstream side produces; None when the
    fault shapes a 200 answer instead (truncated, empty choices, ...)."""
    if kind is FaultKind.SERVER_ERROR:
        return json_response(500, SERVER_ERROR_BODY)
    if kind is FaultKind.UNAVAILABLE:
        return json_response(503, UNAVAILABLE_BODY)
    if kind is FaultKind.BAD_GATEWAY_HTML:
        return _html(502, HTML_502)
    if kind is FaultKind.TIMEOUT_HTML:
        return _html(524, HTML_524)
    return None
