"""One request/response with the gateway, and the classification of every way it fails.

:func:`parse_completion`, :func:`classify_error` and :func:`parse_stream_events`
are pure (bytes and headers in, a :class:`~pipeline.records.Completion` out or a
:class:`~pipeline.errors.RequestError` raised), so the error-shape table of
DESIGN.md section 6 is tested without a network. :class:`GatewayClient` adds the
aiohttp session around them.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import aiohttp
import orjson
from yarl import URL

from .config import DEFAULT_TEMPLATE, JobConfig
from .errors import (
    GatewayUnreachable,
    NoChannel,
    RateLimited,
    RequestError,
    RetryableError,
    RowFatalError,
    RunFatalError,
    UnreadableDocument,
)
from .forms import user_content
from .records import Completion, Row
from .retry import parse_retry_after
from .structured.ask import Turn, instruction
from .tokens import estimate_prompt, estimate_text

USER_AGENT = "docpipe/0.1"
GATEWAY_ID_HEADER = "X-Oneapi-Request-Id"

_RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524}
_QUOTA_CODES = {"insufficient_user_quota", "pre_consume_token_quota_failed", "insufficient_quota"}
_QUOTA_WORDS = ("额度", "quota", "余额", "balance", "billing")
_NO_CHANNEL_WORDS = ("无可用渠道", "no available channel", "no available channels")
_CONTENT_FILTER_CODES = {"content_filter", "content_policy_violation", "sensitive_words_detected"}
_TITLE = re.compile(rb"<title>(.*?)</title>", re.I | re.S)
#: query parameters that carry a signed URL's secret (S3 v2 and v4, GCS, Azure SAS)
_SIGNATURE = re.compile(
    r"(?i)([?&](?:x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature|x-goog-credential"
    r"|signature|awsaccesskeyid|sig)=)[^&\s\"'<>]+"
)
WRONG_BASE_URL = (
    "no chat/completions endpoint at this base URL (a plain 404 page, not an API error); "
    "is the base URL right? it usually ends in /v1"
)
_MAX_MESSAGE = 300


def exact_timeout(total: float | None, sock_connect: float | None = None) -> aiohttp.ClientTimeout:
    """aiohttp's timeout, firing when it says: aiohttp rounds the deadline of any timeout of
    5 s or more up to the next whole second of the loop's clock (``ceil_threshold``), which
    made ``--timeout 5`` cost 5-6 s a hang (5.5 on average) and time out the hangs of a
    whole second at once."""
    return aiohttp.ClientTimeout(total=total, sock_connect=sock_connect, ceil_threshold=math.inf)


def short(text: str, limit: int = _MAX_MESSAGE) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _error_fields(body: bytes) -> tuple[str | None, str | None, str | None]:
    """(message, type, code) of a JSON error body, or Nones when it is not one."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None, None
    if not isinstance(data, dict):
        return None, None, None
    err = data.get("error")
    if isinstance(err, dict):
        code = err.get("code")
        return (
            str(err.get("message") or "") or None,
            str(err.get("type") or "") or None,
            None if code is None else str(code),
        )
    if isinstance(err, str):
        return err, None, None
    if "message" in data:  # some proxies: {"message": "...", "success": false}
        return str(data["message"]), None, None
    return None, None, None


def _describe_body(body: bytes, content_type: str) -> str:
    if not body.strip():
        return "empty body"
    if "html" in content_type or body.lstrip()[:1] == b"<":
        m = _TITLE.search(body)
        title = m.group(1).decode("utf-8", "replace").strip() if m else ""
        return f"HTML error page from a proxy{': ' + title if title else ''}"
    return body[:200].decode("utf-8", "replace")


def classify_error(status: int, headers: Mapping[str, str], body: bytes) -> RequestError:
    """The error a non-200 response means (DESIGN.md sections 1 and 6)."""
    content_type = headers.get("content-type", "").lower()
    message, _etype, code = _error_fields(body)
    text = message or _describe_body(body, content_type)
    lowered = text.lower()
    gid = headers.get(GATEWAY_ID_HEADER)
    kw: dict[str, Any] = {"http_status": status, "gateway_request_id": gid}
    if status == 401:
        kind = "quota" if any(w in lowered for w in _QUOTA_WORDS) else "auth"
        return RunFatalError(short(text), error_type=kind, **kw)
    if status == 403:
        quota = code in _QUOTA_CODES or any(w in lowered for w in _QUOTA_WORDS)
        return RunFatalError(short(text), error_type="quota" if quota else "auth", **kw)
    if status == 429:
        if code in _QUOTA_CODES:  # OpenAI-style "insufficient_quota" is not a rate limit
            return RunFatalError(short(text), error_type="quota", **kw)
        return RateLimited(short(text), retry_after=parse_retry_after(headers), **kw)
    if status == 404 and code == "model_not_found":
        return RunFatalError(short(text), error_type="no_channel", **kw)
    if status == 404 and message is None:
        # a web server's own 404 page, not an API's answer: every row would get it
        return RunFatalError(WRONG_BASE_URL, error_type="invalid_request", **kw)
    if status == 503 and any(w in lowered for w in _NO_CHANNEL_WORDS):
        return NoChannel(short(text), retry_after=parse_retry_after(headers), **kw)
    if status in _RETRYABLE_STATUS or status >= 500:
        kind = "timeout" if status in (408, 504, 524) else "server_error"
        return RetryableError(short(text), error_type=kind, retry_after=parse_retry_after(headers), **kw)
    if code in _CONTENT_FILTER_CODES:
        return RowFatalError(short(text), error_type="content_filter", **kw)
    return RowFatalError(short(text), error_type="invalid_request", **kw)


def parse_completion(status: int, headers: Mapping[str, str], body: bytes) -> Completion:
    """A 200 response body -> Completion, or the retryable error hiding inside it."""
    gid = headers.get(GATEWAY_ID_HEADER)
    kw: dict[str, Any] = {"http_status": status, "gateway_request_id": gid}
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        what = "truncated or invalid JSON" if body.strip() else "empty body"
        raise RetryableError(f"{what} in a 200 response", error_type="malformed_response", **kw) from None
    if not isinstance(data, dict):
        raise RetryableError("200 response is not a JSON object", error_type="malformed_response", **kw)
    if data.get("error"):
        error_message, _t, _c = _error_fields(body)
        raise RetryableError(
            short(f"error inside a 200 response: {error_message or data['error']}"),
            error_type="server_error",
            **kw,
        )
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise RetryableError("200 response without choices", error_type="malformed_response", **kw)
    first = choices[0]
    reply: dict[str, Any] = first["message"] if isinstance(first.get("message"), dict) else {}
    answer = reply.get("content")
    if isinstance(answer, list):  # some proxies return content parts
        answer = "".join(p.get("text", "") for p in answer if isinstance(p, dict))
    usage: dict[str, Any] = data["usage"] if isinstance(data.get("usage"), dict) else {}
    return Completion(
        answer=answer if answer is None else str(answer),
        finish_reason=first.get("finish_reason"),
        response_model=data.get("model"),
        response_id=data.get("id"),
        prompt_tokens=_int(usage.get("prompt_tokens")),
        completion_tokens=_int(usage.get("completion_tokens")),
        total_tokens=_int(usage.get("total_tokens")),
        gateway_request_id=gid,
        http_status=status,
    )


def parse_stream_events(lines: Iterable[bytes], headers: Mapping[str, str], status: int = 200) -> Completion:
    """Assemble a Completion from SSE ``data:`` lines (already split)."""
    gid = headers.get(GATEWAY_ID_HEADER)
    kw: dict[str, Any] = {"http_status": status, "gateway_request_id": gid}
    parts: list[str] = []
    finish: str | None = None
    usage: dict[str, Any] | None = None
    model = rid = None
    for chunk in _stream_chunks(lines, kw):
        model = chunk.get("model") or model
        rid = chunk.get("id") or rid
        if isinstance(chunk.get("usage"), dict):
            usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if isinstance(delta, dict) and delta.get("content"):
                parts.append(str(delta["content"]))
            if choice.get("finish_reason"):
                finish = choice["finish_reason"]
    if finish is None:
        # new-api's idle cut-off ends a stream with [DONE] but never a finish_reason
        raise RetryableError("stream ended without a finish_reason", error_type="malformed_response", **kw)
    answer = "".join(parts)
    return Completion(
        answer=answer,
        finish_reason=finish,
        response_model=model,
        response_id=rid,
        prompt_tokens=_int(usage.get("prompt_tokens")) if usage else None,
        completion_tokens=_int(usage.get("completion_tokens")) if usage else None,
        total_tokens=_int(usage.get("total_tokens")) if usage else None,
        gateway_request_id=gid,
        http_status=status,
        usage_estimated=False,
    )


def _stream_chunks(lines: Iterable[bytes], kw: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The JSON objects of SSE ``data:`` lines up to ``[DONE]``; an error chunk or broken JSON raises."""
    for raw in lines:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]":
            return
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise RetryableError("invalid JSON in a stream chunk", error_type="malformed_response", **kw) from None
        if not isinstance(chunk, dict):
            continue
        if chunk.get("error"):
            message, _t, _c = _error_fields(payload)
            raise RetryableError(short(f"error inside a stream: {message}"), error_type="server_error", **kw)
        yield chunk


def _int(v: Any) -> int | None:
    try:
        return None if v is None else int(v)
    except (TypeError, ValueError):
        return None


class AnswerCheck:
    """Turns answers that say "I could not open the file" into UnreadableDocument.

    Only short answers are checked (under 600 characters, patterns on the first
    300): a refusal is short, and a long real answer may quote such a phrase."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self._patterns = [re.compile(p) for p in patterns]

    def __call__(self, c: Completion) -> Completion:
        kw: dict[str, Any] = {"http_status": c.http_status, "gateway_request_id": c.gateway_request_id}
        if c.finish_reason == "content_filter":
            raise RowFatalError(short(f"content filter: {c.answer or 'no answer'}"), error_type="content_filter", **kw)
        answer = (c.answer or "").strip()
        if not answer:
            raise UnreadableDocument("empty answer", **kw)
        if len(answer) < 600:
            head = answer[:300]
            if any(p.search(head) for p in self._patterns):
                raise UnreadableDocument(short(answer), **kw)
        return c


class GatewayClient:
    """The run's one HTTP session with the gateway. Use as an async context manager."""

    def __init__(self, cfg: JobConfig, *, connections: int | None = None) -> None:
        self.cfg = cfg
        # a parsed URL once, not a string parsed again for every request
        self._url = URL(cfg.base_url.rstrip("/") + "/chat/completions")
        self._proxy: str | None = None
        self._proxies: EnvProxies | None = None
        self._headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        if cfg.api_key:
            self._headers["Authorization"] = f"Bearer {cfg.api_key}"
        self._connections = cfg.concurrency if connections is None else connections
        self._timeout = exact_timeout(cfg.timeout, cfg.connect_timeout)
        self._check = AnswerCheck(cfg.unreadable_patterns)
        self._base = self._body_base()
        schema = dict(cfg.schema) if cfg.schema is not None else {}
        self._response_format = {
            "type": "json_schema",
            "json_schema": {"name": _schema_name(schema), "strict": True, "schema": schema},
        }
        self._instruction = instruction(schema)
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> GatewayClient:
        # the default connector caps at 100 connections, which at 1000 in flight
        # holds throughput to a tenth of the bound (DESIGN.md section 9)
        connector = aiohttp.TCPConnector(
            limit=self._connections + 8,
            limit_per_host=0,
            ttl_dns_cache=300,
            keepalive_timeout=60,
            enable_cleanup_closed=False,
        )
        # trust_env=True would read netrc and proxy settings in a thread for every
        # request (two to_thread calls each, ~70 us); look the proxy up once instead
        self.session = aiohttp.ClientSession(
            connector=connector, headers=self._headers, timeout=self._timeout, trust_env=False
        )
        self._proxies = EnvProxies()
        self._proxy = self._proxies.for_url(self._url)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    def _body_base(self) -> dict[str, Any]:
        base: dict[str, Any] = {"model": self.cfg.model, **dict(self.cfg.params)}
        base["stream"] = bool(self.cfg.stream)
        if self.cfg.stream:
            base["stream_options"] = {"include_usage": True}
        return base

    def build_body(self, row: Row, turn: Turn | None = None) -> bytes:
        """The request body; a structured ``turn`` adds response_format or the schema instruction,
        the follow-up messages of a re-ask, and a larger max_tokens after a cut answer."""
        messages: list[dict[str, Any]] = []
        base = self._base if row.model is None else {**self._base, "model": row.model}
        if turn is None:
            if self.cfg.system:
                messages.append({"role": "system", "content": self.cfg.system})
            messages.append({"role": "user", "content": self._user_content(row)})
            return orjson.dumps({**base, "messages": messages})
        body = {**base}
        system = self.cfg.system
        if turn.mode == "response_format":
            body["response_format"] = self._response_format
        else:
            system = f"{system}\n\n{self._instruction}" if system else self._instruction
        if system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": self._user_content(row)})
        messages.extend(turn.followup)
        if turn.max_tokens is not None:
            body["max_tokens"] = turn.max_tokens
        body["messages"] = messages
        return orjson.dumps(body)

    def _user_content(self, row: Row) -> str | list[dict[str, Any]]:
        """The row's message in its form (pipeline/forms.py); the plain text without a look-up."""
        if (row.form or self.cfg.form) == "inline" and row.document is None:
            return row.content
        return user_content(row, default_template=self.cfg.template == DEFAULT_TEMPLATE, run_form=self.cfg.form)

    def redact(self, text: str) -> str:
        return redact(text, self.cfg.api_key)

    async def complete(self, row: Row, turn: Turn | None = None) -> Completion:
        """Send one attempt for ``row`` (asked as ``turn`` when structured); return the checked
        Completion or raise RequestError."""
        assert self.session is not None, "use GatewayClient as an async context manager"
        body = self.build_body(row, turn)
        try:
            async with self.session.post(self._url, data=body, proxy=self._proxy) as resp:
                headers = resp.headers
                if resp.status != 200:
                    raise classify_error(resp.status, headers, await resp.read())
                ctype = headers.get("content-type", "")
                if "text/event-stream" in ctype:
                    completion = parse_stream_events([line async for line in resp.content], headers, resp.status)
                else:
                    completion = parse_completion(resp.status, headers, await resp.read())
        except RequestError as e:
            e.message = self.redact(e.message)
            raise
        except TimeoutError:
            raise RetryableError(f"no complete answer within {self.cfg.timeout:g} s", error_type="timeout") from None
        except aiohttp.InvalidURL as e:
            raise RunFatalError(f"invalid gateway URL: {e}", error_type="invalid_request") from None
        except aiohttp.ClientConnectorError as e:
            # refused, DNS or TLS: nothing reached the gateway (the runner stops the run
            # when this is all a run has ever seen)
            raise GatewayUnreachable(self.redact(short(str(e)))) from None
        except aiohttp.ClientPayloadError as e:
            raise RetryableError(self.redact(short(f"response cut short: {e}")), error_type="connection") from None
        except aiohttp.ClientError as e:
            raise RetryableError(self.redact(short(f"{type(e).__name__}: {e}")), error_type="connection") from None
        if completion.prompt_tokens is None and self.cfg.stream:
            prompt = estimate_prompt(row.content, self.cfg.system)
            done = estimate_text(completion.answer)
            completion = dataclasses.replace(completion, prompt_tokens=prompt, completion_tokens=done,
                                             total_tokens=prompt + done, usage_estimated=True)  # fmt: skip
        return self._check(completion)

    async def get_json(self, path: str) -> Any:
        """GET a gateway endpoint relative to the base URL ('/models') or the host ('/api/...')."""
        assert self.session is not None
        if path.startswith("/api/"):
            from urllib.parse import urlsplit

            parts = urlsplit(self.cfg.base_url)
            url = f"{parts.scheme}://{parts.netloc}{path}"
        else:
            url = self.cfg.base_url.rstrip("/") + path
        try:
            proxy = self._proxies.for_url(url) if self._proxies is not None else None
            async with self.session.get(url, proxy=proxy) as resp:
                body = await resp.read()
                if resp.status != 200:
                    err = classify_error(resp.status, resp.headers, body)
                    err.message = self.redact(err.message)
                    raise err
        except TimeoutError:
            raise RetryableError(f"{path}: no answer within {self.cfg.timeout:g} s", error_type="timeout") from None
        except aiohttp.ClientError as e:
            raise RetryableError(self.redact(short(f"{path}: {e}")), error_type="connection") from None
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            raise RetryableError(f"{path}: answer is not JSON", error_type="malformed_response") from None


def _schema_name(schema: Mapping[str, Any]) -> str:
    """response_format's required name: the schema's title as [A-Za-z0-9_-]{1,64}, else "answer"."""
    title = re.sub(r"[^A-Za-z0-9_-]+", "_", str(schema.get("title") or "")).strip("_")[:64]
    return title or "answer"


def redact(text: str, key: str | None) -> str:
    """``text`` without the API key and without the secret of any signed URL in it."""
    # a key too short to be a real one ("k" in a test) would mangle ordinary words
    if key and len(key) >= 8 and key in text:
        text = text.replace(key, "***")
    return _SIGNATURE.sub(r"\1***", text) if "=" in text else text


class EnvProxies:
    """The proxies the environment names (HTTPS_PROXY, NO_PROXY, ...), read once and looked
    up per scheme and host: aiohttp's ``trust_env=True`` would read them in a thread for
    every request (two thread hops each, ~70 us). For the gateway and for documents' HEADs."""

    def __init__(self) -> None:
        import urllib.request

        self._proxies = urllib.request.getproxies()
        self._of: dict[tuple[str, str], str | None] = {}

    def for_url(self, url: str | URL) -> str | None:
        """The proxy for ``url``, or None (none set, or its host is in NO_PROXY)."""
        if not self._proxies:
            return None
        u = url if isinstance(url, URL) else URL(url)
        key = (u.scheme, u.host or "")
        if key not in self._of:
            import urllib.request

            bypass = bool(key[1]) and urllib.request.proxy_bypass(key[1])
            self._of[key] = None if bypass else self._proxies.get(key[0])
        return self._of[key]
