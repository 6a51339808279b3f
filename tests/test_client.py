"""The error-shape table of DESIGN.md section 6 and the retry policy, as pure functions;
then the same shapes over real HTTP through GatewayClient."""

from __future__ import annotations

import asyncio
import email.utils

import orjson
import pytest

from pipeline.client import AnswerCheck, GatewayClient, classify_error, parse_completion, parse_stream_events
from pipeline.config import DEFAULT_UNREADABLE_PATTERNS, load_config
from pipeline.errors import (
    NoChannel,
    RateLimited,
    RequestError,
    RetryableError,
    RowFatalError,
    RunFatalError,
    UnreadableDocument,
)
from pipeline.records import Completion, Row
from pipeline.retry import backoff, parse_retry_after, should_retry, wait_for

GOOD = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "42"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
}  # fmt: skip
HTML_502 = b"<html><head><title>502 Bad Gateway</title></head><body><center>nginx</center></body></html>"
HTML_524 = b"<!DOCTYPE html><html><head><title>api.example.com | 524: A timeout occurred</title></head></html>"


def err(message: str, code: str | None = None, type_: str = "new_api_error") -> bytes:
    body: dict = {"message": message, "type": type_, "param": ""}
    if code is not None:
        body["code"] = code
    return orjson.dumps({"error": body})


# status, headers, body -> (exception class, error_type, retried?)
ERROR_TABLE = [
    (400, {}, err("bad request", "invalid_request_error"), RowFatalError, "invalid_request", False),
    (400, {}, err("flagged", "content_filter"), RowFatalError, "content_filter", False),
    (404, {}, err("no such route"), RowFatalError, "invalid_request", False),
    (404, {}, err("The model `x` does not exist", "model_not_found"), RunFatalError, "no_channel", False),
    (413, {}, b"", RowFatalError, "invalid_request", False),
    (422, {}, err("unprocessable"), RowFatalError, "invalid_request", False),
    (401, {}, err("无效的令牌"), RunFatalError, "auth", False),
    (401, {}, err("该令牌额度已用尽 token quota exhausted"), RunFatalError, "quota", False),
    (403, {}, err("用户额度不足", "insufficient_user_quota"), RunFatalError, "quota", False),
    (403, {}, err("预扣费额度失败", "pre_consume_token_quota_failed"), RunFatalError, "quota", False),
    (403, {}, err("forbidden"), RunFatalError, "auth", False),
    (429, {}, b"", RateLimited, "rate_limited", True),
    (429, {"retry-after": "7"}, err("slow down"), RateLimited, "rate_limited", True),
    (429, {}, err("You exceeded your current quota", "insufficient_quota"), RunFatalError, "quota", False),
    (408, {}, b"", RetryableError, "timeout", True),
    (409, {}, err("conflict"), RetryableError, "server_error", True),
    (425, {}, b"", RetryableError, "server_error", True),
    (500, {}, err("upstream error"), RetryableError, "server_error", True),
    (502, {"content-type": "text/html"}, HTML_502, RetryableError, "server_error", True),
    (503, {}, err("service busy"), RetryableError, "server_error", True),
    (503, {}, err("当前分组 default 下对于模型 gpt-4o-all 无可用渠道"), NoChannel, "no_channel", True),
    (504, {}, b"", RetryableError, "timeout", True),
    (520, {}, b"", RetryableError, "server_error", True),
    (524, {"content-type": "text/html"}, HTML_524, RetryableError, "timeout", True),
]


@pytest.mark.parametrize("status, headers, body, cls, error_type, retried", ERROR_TABLE)
def test_error_shapes_map_to_type_and_retry_decision(status, headers, body, cls, error_type, retried) -> None:
    e = classify_error(status, headers, body)
    assert type(e) is cls
    assert e.error_type == error_type and e.http_status == status
    assert should_retry(e, unreadable_left=1) is retried


def test_html_error_page_message_names_the_proxy_page() -> None:
    e = classify_error(524, {"content-type": "text/html"}, HTML_524)
    assert "HTML error page" in e.message and "524" in e.message


HIDDEN_200 = [
    (b'{"id":"x","choices":[{"message":{"content":"par', "malformed_response"),
    (b"", "malformed_response"),
    (orjson.dumps({**GOOD, "choices": []}), "malformed_response"),
    (orjson.dumps({"error": {"message": "upstream do_request_failed", "type": "new_api_error"}}), "server_error"),
    (b"[1, 2]", "malformed_response"),
]


@pytest.mark.parametrize("body, error_type", HIDDEN_200)
def test_errors_hidden_in_200_are_retryable_never_answers(body: bytes, error_type: str) -> None:
    with pytest.raises(RetryableError) as info:
        parse_completion(200, {}, body)
    assert info.value.error_type == error_type


def test_good_completion_keeps_both_models_and_usage() -> None:
    c = parse_completion(200, {"X-Oneapi-Request-Id": "gw-1"}, orjson.dumps(GOOD))
    assert (c.answer, c.finish_reason, c.response_model, c.response_id) == ("42", "stop", "gpt-4o", "chatcmpl-1")
    assert (c.prompt_tokens, c.completion_tokens, c.total_tokens) == (10, 2, 12)
    assert c.gateway_request_id == "gw-1"


def sse(*chunks: dict | str) -> list[bytes]:
    return [b"data: " + (c.encode() if isinstance(c, str) else orjson.dumps(c)) + b"\n" for c in chunks]


def chunk(content: str | None = None, finish: str | None = None) -> dict:
    delta = {} if content is None else {"content": content}
    return {"id": "c1", "model": "gpt-4o", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def test_stream_assembles_answer_and_final_usage() -> None:
    usage = {"id": "c1", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}
    c = parse_stream_events(sse(chunk("Hel"), chunk("lo"), chunk(finish="stop"), usage, "[DONE]"), {})
    assert (c.answer, c.finish_reason, c.total_tokens) == ("Hello", "stop", 8)


def test_stream_cut_before_finish_reason_is_retryable() -> None:
    with pytest.raises(RetryableError) as info:
        parse_stream_events(sse(chunk("Hel"), chunk("lo"), "[DONE]"), {})
    assert info.value.error_type == "malformed_response"


def test_stream_with_error_event_is_retryable() -> None:
    with pytest.raises(RetryableError):
        parse_stream_events(sse({"error": {"message": "boom"}}, "[DONE]"), {})


RETRY_AFTER = [
    ({"retry-after-ms": "1500"}, 1.5),
    ({"retry-after": "2"}, 2.0),
    ({"retry-after": "0.25"}, 0.25),
    ({"retry-after": "-3"}, 0.0),
    ({"retry-after": "99999"}, 600.0),
    ({"x-ratelimit-reset-requests": "6m0s"}, 360.0),
    ({"x-ratelimit-reset-tokens": "12ms"}, 0.012),
    ({"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "2.5s"}, 2.5),
    ({"retry-after": "soon"}, None),
    ({}, None),
]


@pytest.mark.parametrize("headers, seconds", RETRY_AFTER)
def test_retry_after_headers(headers: dict[str, str], seconds: float | None) -> None:
    got = parse_retry_after(headers)
    assert got == (None if seconds is None else pytest.approx(seconds))


def test_retry_after_as_http_date() -> None:
    now = 1_700_000_000.0
    header = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after({"retry-after": header}, now=now) == pytest.approx(30, abs=1)


def test_backoff_is_full_jitter_exponential_and_capped() -> None:
    assert backoff(1, 1.0, 60.0, rng=lambda: 1.0) == 1.0
    assert backoff(4, 1.0, 60.0, rng=lambda: 1.0) == 8.0
    assert backoff(20, 1.0, 60.0, rng=lambda: 1.0) == 60.0
    assert backoff(3, 1.0, 60.0, rng=lambda: 0.0) == 0.0
    # the server's word wins over our schedule
    assert wait_for(RateLimited("x", retry_after=7.0), 1, 1.0, 60.0) == 7.0
    # ... even after a long attempt (Retry-After counts from the answer), while our own
    # back-off counts the time the failed attempt was on the wire
    assert wait_for(RateLimited("x", retry_after=7.0), 1, 1.0, 60.0, on_wire=5.0) == 7.0
    assert wait_for(RetryableError("x"), 3, 1.0, 60.0, on_wire=5.0) == 0.0
    assert 0.0 <= wait_for(RetryableError("x"), 4, 1.0, 60.0, on_wire=5.0) <= 3.0


UNREADABLE = [
    ("", True),
    ("抱歉，我无法访问该文件。", True),
    ("I'm sorry, but I cannot access the file at that URL.", True),
    ("I was unable to open the document you linked.", True),
    ("The total is 4,200 EUR.", False),
    ("The report says suppliers could not access the site for two days. " * 20, False),
]


@pytest.mark.parametrize("answer, unreadable", UNREADABLE)
def test_unreadable_document_answers(answer: str, unreadable: bool) -> None:
    check = AnswerCheck(DEFAULT_UNREADABLE_PATTERNS)
    c = Completion(answer, "stop", "m", "id", 1, 1, 2, None, 200)
    if unreadable:
        with pytest.raises(UnreadableDocument):
            check(c)
    else:
        assert check(c) is c


def test_content_filter_finish_is_row_fatal() -> None:
    check = AnswerCheck(DEFAULT_UNREADABLE_PATTERNS)
    with pytest.raises(RowFatalError) as info:
        check(Completion("", "content_filter", "m", "id", 1, 0, 1, None, 200))
    assert info.value.error_type == "content_filter"


@pytest.mark.parametrize(
    "kind, error_type",
    [("500", "server_error"), ("502_html", "server_error"), ("524_html", "timeout"),
     ("truncated", "malformed_response"), ("empty_choices", "malformed_response"),
     ("error_in_200", "server_error"), ("disconnect", "connection"), ("hang", "timeout"),
     ("429", "rate_limited")],
)  # fmt: skip
def test_simulator_faults_over_http_are_classified(sim, kind: str, error_type: str) -> None:
    server = sim(fault_rate=1.0, fault_kinds=(kind,), hang_s=30, retry_after_s=None)
    cfg = load_config(base_url=server.url, api_key="k", timeout=1.0)

    async def one() -> RequestError:
        async with GatewayClient(cfg) as client:
            row = Row(0, "r", "https://x.example/a.pdf", "q", "https://x.example/a.pdf q")
            with pytest.raises(RequestError) as info:
                await client.complete(row)
            return info.value

    e = asyncio.run(one())
    assert e.error_type == error_type and isinstance(e, RetryableError)


def test_a_hang_times_out_when_the_timeout_says_not_at_the_next_whole_second(sim) -> None:
    # aiohttp rounds deadlines of 5 s or more up to a whole second of the loop's clock:
    # sent just after a whole second, a --timeout 5 hang took 5.95 s (pipeline/client.exact_timeout)
    server = sim(fault_rate=1.0, fault_kinds=("hang",), hang_s=30)
    cfg = load_config(base_url=server.url, api_key="k", timeout=5.0)

    async def one() -> float:
        loop = asyncio.get_running_loop()
        async with GatewayClient(cfg) as client:
            await asyncio.sleep(1.05 - loop.time() % 1.0)  # just past a whole second
            t0 = loop.time()
            with pytest.raises(RetryableError, match="within 5 s"):
                await client.complete(Row(0, "r", "https://x.example/a.pdf", "q", "https://x.example/a.pdf q"))
            return loop.time() - t0

    assert 5.0 <= asyncio.run(one()) < 5.5


def test_stream_cut_fault_over_http_is_retryable(sim) -> None:
    server = sim()
    cfg = load_config(base_url=server.url, api_key="k", timeout=2.0, stream=True)

    async def one() -> None:
        async with GatewayClient(cfg) as client:
            content = "https://x.example/a.pdf q [[sim:fault=stream_cut]]"
            with pytest.raises(RetryableError):
                await client.complete(Row(0, "r", "https://x.example/a.pdf", "q", content))
            ok = await client.complete(Row(0, "r", "https://x.example/a.pdf", "q", content))
            assert ok.finish_reason == "stop" and ok.answer

    asyncio.run(one())


def test_env_proxies_name_the_proxy_per_scheme_and_honour_no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.client import EnvProxies

    for name in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert EnvProxies().for_url("https://docs.example.com/a.pdf") is None  # none set
    monkeypatch.setenv("https_proxy", "http://proxy.internal:3128")
    monkeypatch.setenv("no_proxy", "files.internal")
    proxies = EnvProxies()
    assert proxies.for_url("https://docs.example.com/a.pdf") == "http://proxy.internal:3128"
    assert proxies.for_url("https://files.internal/b.pdf") is None  # NO_PROXY
    assert proxies.for_url("http://docs.example.com/a.pdf") is None  # no http proxy set
