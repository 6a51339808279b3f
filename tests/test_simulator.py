"""Tests for pipeline.simulator: real HTTP on 127.0.0.1 against SimServer, no mocks."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import pytest

from pipeline.simulator import (
    FAULT_KINDS,
    UNREADABLE_ANSWER,
    SimConfig,
    SimServer,
    answer_for,
    fault_for,
    serve,
    usage_for,
)

MODEL = "gpt-4o-all"
BASE = SimConfig(latency_s=0.0)


@pytest.fixture(scope="module")
def shared() -> Iterator[SimServer]:
    with SimServer(BASE) as server:
        yield server


@pytest.fixture
def sim(shared: SimServer) -> SimServer:
    """The shared server with the base config and empty stats; tests update() on top."""
    shared.update(**BASE.to_dict())
    shared.reset()
    return shared


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def chat_body(content: Any, model: str = MODEL, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


async def post(
    url: str,
    body: Any,
    *,
    key: str | None = None,
    timeout: float = 5.0,
    raw: bytes | None = None,
) -> tuple[int, Any, bytes]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s:
        data = raw if raw is not None else orjson.dumps(body)
        async with s.post(url + "/chat/completions", data=data, headers=headers) as r:
            return r.status, r.headers, await r.read()


async def get(url: str, *, key: str | None = None) -> tuple[int, Any, bytes]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
        async with s.get(url, headers=headers) as r:
            return r.status, r.headers, await r.read()


def sse_events(body: bytes) -> list[Any]:
    out: list[Any] = []
    for line in body.decode().split("\n"):
        if line.startswith("data: "):
            payload = line[len("data: ") :]
            out.append(payload if payload == "[DONE]" else orjson.loads(payload))
    return out


# ------------------------------------------------------------------ success


def test_success_body_header_answer_usage(sim: SimServer) -> None:
    content = "https://host/doc.pdf What is the total?"
    body = chat_body(content, max_tokens=1688, temperature=0.5, stream=False)
    status, headers, raw = run(post(sim.url, body))
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    data = orjson.loads(raw)
    assert set(data) == {"id", "object", "created", "model", "choices", "usage"}
    assert data["id"].startswith("chatcmpl-") and data["object"] == "chat.completion"
    assert isinstance(data["created"], int) and data["model"] == MODEL
    answer = answer_for(MODEL, content)
    assert 40 <= len(answer) <= 120 and "—" in answer
    assert data["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}
    ]
    p, c = usage_for(body["messages"], answer)
    assert p == math.ceil(len(content.encode()) / 4) + 4
    assert data["usage"] == {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
    rid = headers["X-Oneapi-Request-Id"]
    _, headers2, _ = run(post(sim.url, body))
    assert rid and headers2["X-Oneapi-Request-Id"] != rid


def test_answer_ignores_system_alias_and_vision_form(sim: SimServer) -> None:
    q = "https://host/a.png What is shown?"
    with_system = {
        "model": "gpt-4-all",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": q}],
    }
    status, _, raw = run(post(sim.url, with_system))
    data = orjson.loads(raw)
    assert status == 200 and data["model"] == "gpt-4o"  # alias: response model differs
    assert data["choices"][0]["message"]["content"] == answer_for("gpt-4-all", q)
    p, _ = usage_for(with_system["messages"], answer_for("gpt-4-all", q))
    assert data["usage"]["prompt_tokens"] == p

    parts = [
        {"type": "text", "text": "What is shown?"},
        {"type": "image_url", "image_url": {"url": "https://host/a.png"}},
    ]
    body = chat_body(parts)
    status, _, raw = run(post(sim.url, body))
    data = orjson.loads(raw)
    expected = answer_for(MODEL, "What is shown? https://host/a.png")
    assert data["choices"][0]["message"]["content"] == expected
    assert data["usage"]["prompt_tokens"] == 4 + math.ceil(len(b"What is shown?") / 4) + 85
    assert answer_for(MODEL, "a") != answer_for(MODEL, "b")


def test_wrong_key_and_invalid_body(sim: SimServer) -> None:
    sim.update(api_key="sk-good")
    for key in ("sk-bad", None):
        status, headers, raw = run(post(sim.url, chat_body("x"), key=key))
        assert status == 401 and "X-Oneapi-Request-Id" in headers
        assert orjson.loads(raw) == {"error": {"message": "无效的令牌", "type": "new_api_error"}}
    assert run(post(sim.url, chat_body("x"), key="sk-good"))[0] == 200
    assert run(get(sim.url + "/models", key="sk-bad"))[0] == 401
    assert run(get(sim.root_url + "/api/usage/token/"))[0] == 401

    sim.update(api_key=None)
    for raw_body in (b"not json", orjson.dumps({"model": MODEL, "messages": []}), b"[1]"):
        status, _, raw = run(post(sim.url, None, raw=raw_body))
        assert status == 400
        err = orjson.loads(raw)["error"]
        assert err["type"] == "invalid_request_error" and err["param"] is None and err["code"] is None
    assert sim.stats()["outcomes"]["401"] == 2 and sim.stats()["outcomes"]["400"] == 3


# ------------------------------------------------------------------ directives


def test_directive_status_every_attempt(sim: SimServer) -> None:
    for _ in range(2):
        status, _, raw = run(post(sim.url, chat_body("row [[sim:status=400]]")))
        assert status == 400
        err = orjson.loads(raw)["error"]
        assert err["type"] == "invalid_request_error" and set(err) == {"message", "type", "param", "code"}
    assert run(post(sim.url, chat_body("row [[sim:status=502]]")))[0] == 502
    assert run(post(sim.url, chat_body("row [[sim:status=999]]")))[0] == 400  # malformed directive
    assert run(post(sim.url, chat_body("row [[sim:nonsense]]")))[0] == 400


def test_directive_retry_after_then_success(sim: SimServer) -> None:
    content = "doc [[sim:retry_after=2]]"
    status, headers, _ = run(post(sim.url, chat_body(content)))
    assert status == 429 and headers["Retry-After"] == "2"
    status, _, raw = run(post(sim.url, chat_body(content)))
    assert status == 200
    assert orjson.loads(raw)["choices"][0]["message"]["content"] == answer_for(MODEL, content)
    assert fault_for(sim.config, MODEL, content, 1) == "429"
    assert fault_for(sim.config, MODEL, content, 2) is None


def test_directive_fault_times_then_success(sim: SimServer) -> None:
    content = "doc [[sim:fault=500*3]]"
    statuses = [run(post(sim.url, chat_body(content)))[0] for _ in range(4)]
    assert statuses == [500, 500, 500, 200]
    assert run(post(sim.url, chat_body("other [[sim:fault=empty_choices]]")))[0] == 200
    st = sim.stats()
    assert st["outcomes"]["500"] == 3 and st["outcomes"]["empty_choices"] == 1
    assert st["ok_requests"] == 1


def test_directive_unreadable_and_finish(sim: SimServer) -> None:
    for _ in range(2):
        status, _, raw = run(post(sim.url, chat_body("https://x/y.pdf Q [[sim:unreadable]]")))
        assert status == 200
        assert orjson.loads(raw)["choices"][0]["message"]["content"] == UNREADABLE_ANSWER
    status, _, raw = run(post(sim.url, chat_body("Q [[sim:finish=length]]")))
    choice = orjson.loads(raw)["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["content"] == answer_for(MODEL, "Q [[sim:finish=length]]")


# ------------------------------------------------------------------ random fault mix


@pytest.mark.parametrize(
    "kind", ["429", "500", "502_html", "503", "524_html", "truncated", "empty_choices", "error_in_200", "stream_cut"]
)
def test_fault_kinds(sim: SimServer, kind: str) -> None:
    sim.update(fault_rate=1.0, fault_kinds=(kind,), fault_attempts=1, retry_after_s=1.0)
    content = f"row for {kind}"
    assert fault_for(sim.config, MODEL, content, 1) == kind
    status, headers, raw = run(post(sim.url, chat_body(content)))
    ctype = headers.get("Content-Type", "")
    assert "X-Oneapi-Request-Id" in headers
    if kind == "429":
        assert status == 429 and headers["Retry-After"] == "1"
        assert "error" in orjson.loads(raw)
    elif kind in ("500", "503"):
        assert status == int(kind) and ctype.startswith("application/json")
        assert "无可用渠道" not in orjson.loads(raw)["error"]["message"]
    elif kind in ("502_html", "524_html"):
        assert status == int(kind[:3]) and ctype.startswith("text/html")
        assert raw.lstrip().lower().startswith((b"<html", b"<!doctype html"))
    elif kind in ("truncated", "stream_cut"):
        assert status == 200 and ctype.startswith("application/json")
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(raw)
        assert raw.startswith(b'{"id":"chatcmpl-')
    elif kind == "empty_choices":
        data = orjson.loads(raw)
        assert status == 200 and data["choices"] == [] and "usage" in data
    elif kind == "error_in_200":
        assert status == 200
        assert orjson.loads(raw) == {
            "error": {"message": "upstream error: do_request_failed", "type": "new_api_error"}
        }
    # Only attempt 1 is faulted (fault_attempts=1).
    assert run(post(sim.url, chat_body(content)))[0] == 200
    st = sim.stats()
    assert st["outcomes"][kind] == 1 and st["ok_requests"] == 1


def test_fault_429_without_retry_after(sim: SimServer) -> None:
    sim.update(fault_rate=1.0, fault_kinds=("429",), retry_after_s=None)
    status, headers, raw = run(post(sim.url, chat_body("z")))
    assert status == 429 and raw == b"" and "Retry-After" not in headers


def test_fault_mix_is_deterministic(sim: SimServer) -> None:
    sim.update(fault_rate=0.5, fault_kinds=("500", "503"), seed=7)
    rows = [f"row {i}" for i in range(30)]
    expected = [fault_for(sim.config, MODEL, r, 1) for r in rows]
    assert {None, "500", "503"} <= set(expected)

    async def go() -> list[int]:
        return [(await post(sim.url, chat_body(r)))[0] for r in rows]

    got = run(go())
    assert got == [200 if e is None else int(e) for e in expected]
    other = SimConfig(fault_rate=0.5, fault_kinds=("500", "503"), seed=8)
    assert [fault_for(other, MODEL, r, 1) for r in rows] != expected


def test_disconnect_fault(sim: SimServer) -> None:
    sim.update(fault_rate=1.0, fault_kinds=("disconnect",))
    with pytest.raises(aiohttp.ClientError):
        run(post(sim.url, chat_body("bye")))
    assert run(post(sim.url, chat_body("bye")))[0] == 200
    assert sim.stats()["outcomes"]["disconnect"] == 1


def test_hang_fault_client_timeout_and_fast_stop() -> None:
    server = SimServer(SimConfig(latency_s=0.0, fault_rate=1.0, fault_kinds=("hang",), hang_s=3600.0)).start()
    try:
        t0 = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            run(post(server.url, chat_body("slow"), timeout=0.5))
        assert time.monotonic() - t0 < 2.0
        deadline = time.monotonic() + 2.0
        while server.stats()["in_flight"] and time.monotonic() < deadline:
            time.sleep(0.02)
        st = server.stats()
        assert st["in_flight"] == 0 and st["outcomes"]["hang"] == 1 and st["cancelled"] == 1

        async def hang_then_stop() -> float:
            task = asyncio.ensure_future(post(server.url, chat_body("slow 2"), timeout=30))
            while server.stats()["in_flight"] < 1:
                await asyncio.sleep(0.02)
            t = time.monotonic()
            await asyncio.get_running_loop().run_in_executor(None, server.stop)
            took = time.monotonic() - t
            with pytest.raises(aiohttp.ClientError):
                await task
            return took

        assert run(hang_then_stop()) < 2.0
    finally:
        server.stop()


# ------------------------------------------------------------------ limits, quota, channels


def test_capacity_429_empty(sim: SimServer) -> None:
    sim.update(capacity=2, latency_s=0.3)

    async def go() -> tuple[list[int], Any, bytes]:
        tasks = [asyncio.ensure_future(post(sim.url, chat_body(f"cap {i}"))) for i in range(2)]
        while sim.stats()["in_flight"] < 2:
            await asyncio.sleep(0.01)
        status, headers, raw = await post(sim.url, chat_body("cap 3"))
        assert status == 429
        return [(await t)[0] for t in tasks], headers, raw

    statuses, headers, raw = run(go())
    assert statuses == [200, 200] and raw == b"" and "Retry-After" not in headers
    assert sim.stats()["outcomes"]["capacity_429"] == 1


def test_rpm_429_with_retry_after(sim: SimServer) -> None:
    sim.update(rpm=2)
    statuses = [run(post(sim.url, chat_body(f"rpm {i}")))[0] for i in range(2)]
    status, headers, raw = run(post(sim.url, chat_body("rpm 3")))
    assert statuses == [200, 200] and status == 429
    assert 1 <= int(headers["Retry-After"]) <= 60 and "error" in orjson.loads(raw)
    assert sim.stats()["outcomes"]["rpm_429"] == 1


@pytest.mark.parametrize("style", ["401", "403"])
def test_quota_and_top_up(sim: SimServer, style: str) -> None:
    sim.update(quota_requests=2, quota_style=style)
    statuses = [run(post(sim.url, chat_body(f"q {i}")))[0] for i in range(2)]
    status, _, raw = run(post(sim.url, chat_body("q 3")))
    assert statuses == [200, 200] and status == int(style)
    err = orjson.loads(raw)["error"]
    if style == "401":
        assert "该令牌额度已用尽" in err["message"] and err["type"] == "new_api_error"
    else:
        assert err == {"message": "用户额度不足", "type": "new_api_error", "code": "insufficient_user_quota"}
    sim.update(quota_requests=None)
    assert run(post(sim.url, chat_body("q 3")))[0] == 200
    assert sim.stats()["outcomes"]["quota"] == 1


def test_quota_not_overshot_by_concurrency(sim: SimServer) -> None:
    sim.update(quota_requests=3, latency_s=0.1)

    async def go() -> list[int]:
        return [r[0] for r in await asyncio.gather(*(post(sim.url, chat_body(f"c {i}")) for i in range(8)))]

    statuses = run(go())
    assert statuses.count(200) == 3 and statuses.count(401) == 5


def test_no_channel(sim: SimServer) -> None:
    sim.update(no_channel=True)
    status, _, raw = run(post(sim.url, chat_body("x")))
    assert status == 503
    assert orjson.loads(raw) == {
        "error": {"message": "当前分组 default 下对于模型 gpt-4o-all 无可用渠道", "type": "new_api_error"}
    }


# ------------------------------------------------------------------ streaming


def test_stream_with_and_without_usage(sim: SimServer) -> None:
    content = "https://host/doc.pdf Summarise"
    body = chat_body(content, stream=True, stream_options={"include_usage": True})
    status, headers, raw = run(post(sim.url, body))
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    assert "X-Oneapi-Request-Id" in headers
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    pieces = [c["choices"][0]["delta"].get("content") for c in chunks[1:] if c["choices"]]
    text_pieces = [p for p in pieces if p]
    assert len(text_pieces) >= 3 and "".join(text_pieces) == answer_for(MODEL, content)
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finals) == 1 and finals[0]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    p, c = usage_for(body["messages"], answer_for(MODEL, content))
    assert usage_chunk["usage"] == {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    # Not asked for -> no usage chunk; asked but gateway never sends it -> none either.
    for cfg_usage, opts in ((True, None), (False, {"include_usage": True})):
        sim.update(stream_usage=cfg_usage)
        extra = {"stream_options": opts} if opts else {}
        events = sse_events(run(post(sim.url, chat_body(content, stream=True, **extra)))[2])
        assert events[-1] == "[DONE]" and all("usage" not in e for e in events[:-1])
        assert events[-2]["choices"][0]["finish_reason"] == "stop"
    assert sim.stats()["ok_requests"] == 3 and sim.stats()["duplicate_ok"] == 2


def test_stream_cut_fault(sim: SimServer) -> None:
    content = "cut me [[sim:fault=stream_cut]]"
    status, headers, raw = run(post(sim.url, chat_body(content, stream=True)))
    events = sse_events(raw)
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    assert events[-1] == "[DONE]"
    assert all(e["choices"][0]["finish_reason"] is None for e in events[:-1])
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1]) == answer_for(MODEL, content)
    # Second attempt is a complete stream.
    events = sse_events(run(post(sim.url, chat_body(content, stream=True)))[2])
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    st = sim.stats()
    assert st["outcomes"]["stream_cut"] == 1 and st["ok_requests"] == 1


def test_stream_faults_in_200(sim: SimServer) -> None:
    events = sse_events(run(post(sim.url, chat_body("e [[sim:fault=error_in_200]]", stream=True)))[2])
    assert "error" in events[0] and events[-1] == "[DONE]"
    events = sse_events(run(post(sim.url, chat_body("e [[sim:fault=empty_choices]]", stream=True)))[2])
    assert events[0]["choices"] == [] and events[-1] == "[DONE]"
    with pytest.raises(aiohttp.ClientPayloadError):
        run(post(sim.url, chat_body("e [[sim:fault=truncated]]", stream=True)))


# ------------------------------------------------------------------ other endpoints


def test_models_both_shapes(sim: SimServer) -> None:
    status, headers, raw = run(get(sim.url + "/models"))
    data = orjson.loads(raw)
    assert status == 200 and data["object"] == "list" and "X-Oneapi-Request-Id" in headers
    assert [m["id"] for m in data["data"]] == list(SimConfig().models)
    assert all(m["object"] == "model" and m["owned_by"] == "openai" and "created" in m for m in data["data"])
    sim.update(models_shape="newapi", models=["m1"])
    data = orjson.loads(run(get(sim.url + "/models"))[2])
    assert data["success"] is True and [m["id"] for m in data["data"]] == ["m1"]


def test_billing_endpoints(sim: SimServer) -> None:
    sub = orjson.loads(run(get(sim.url + "/dashboard/billing/subscription"))[2])
    assert sub == {
        "object": "billing_subscription",
        "has_payment_method": True,
        "soft_limit_usd": 100.0,
        "hard_limit_usd": 100.0,
        "system_hard_limit_usd": 100.0,
        "access_until": 0,
    }
    usage = orjson.loads(run(get(sim.url + "/dashboard/billing/usage"))[2])
    assert usage == {"object": "list", "total_usage": 1250.0}
    tok = orjson.loads(run(get(sim.root_url + "/api/usage/token/"))[2])
    assert tok["code"] is True and tok["data"]["total_granted"] == 100 * 500000
    assert tok["data"]["total_used"] == 12.5 * 500000
    assert tok["data"]["total_available"] == 87.5 * 500000 and tok["data"]["unlimited_quota"] is False
    sim.update(api_key="k")
    assert run(get(sim.url + "/dashboard/billing/usage"))[0] == 401
    assert run(get(sim.url + "/dashboard/billing/usage", key="k"))[0] == 200


# ------------------------------------------------------------------ stats and control plane


def test_stats_concurrency_and_duplicates(sim: SimServer) -> None:
    sim.update(latency_s=0.2)

    async def go() -> list[int]:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as s:

            async def one(i: int) -> int:
                async with s.post(sim.url + "/chat/completions", json=chat_body(f"row {i % 19}")) as r:
                    await r.read()
                    return r.status

            return list(await asyncio.gather(*(one(i) for i in range(20))))

    assert run(go()) == [200] * 20
    st = sim.stats()
    assert st["requests"] == 20 and st["max_in_flight"] == 20 and st["in_flight"] == 0
    assert st["outcomes"]["ok"] == 20 and st["ok_requests"] == 20
    assert st["distinct_ok"] == 19 and st["duplicate_ok"] == 1
    assert len(st["request_times"]) == 20 and all(t >= 0 for t in st["request_times"])
    expected_prompt = sum(usage_for(chat_body(f"row {i % 19}")["messages"], "")[0] for i in range(20))
    assert st["prompt_tokens"] == expected_prompt
    assert st["completion_tokens"] == sum(
        usage_for([], answer_for(MODEL, f"row {i % 19}"))[1] for i in range(20)
    )

    async def control() -> None:
        async with aiohttp.ClientSession() as s:
            async with s.post(sim.root_url + "/_sim/stats/window") as r:
                assert r.status == 200
            async with s.post(sim.url + "/chat/completions", json=chat_body("w")) as r:
                assert r.status == 200
            async with s.get(sim.root_url + "/_sim/stats") as r:
                st = orjson.loads(await r.read())
                assert st["max_in_flight_window"] == 1 and st["max_in_flight"] == 20
            async with s.post(sim.root_url + "/_sim/config", json={"quota_requests": 0, "bogus": 1}) as r:
                assert r.status == 400
            async with s.post(sim.root_url + "/_sim/config", json={"quota_requests": 0}) as r:
                assert r.status == 200 and orjson.loads(await r.read())["quota_requests"] == 0
            async with s.post(sim.url + "/chat/completions", json=chat_body("w")) as r:
                assert r.status == 401
            async with s.post(sim.root_url + "/_sim/reset") as r:
                assert r.status == 200

    run(control())
    st = sim.stats()
    assert st["requests"] == 0 and st["ok_requests"] == 0 and st["max_in_flight"] == 0
    assert sim.config.quota_requests == 0


def test_config_from_dict() -> None:
    cfg = SimConfig.from_dict({"fault_kinds": ["500"], "model_alias": [["a", "b"]], "quota_style": 403})
    assert cfg.fault_kinds == ("500",) and cfg.model_alias == (("a", "b"),) and cfg.quota_style == "403"
    assert SimConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError):
        SimConfig.from_dict({"latency": 1})
    with pytest.raises(ValueError):
        SimConfig.from_dict({"fault_kinds": ["nope"]})
    with pytest.raises(ValueError):
        SimConfig(fault_rate=2.0)
    assert SimConfig(fault_kinds="500, hang").fault_kinds == ("500", "hang")  # type: ignore[arg-type]
    assert set(SimConfig().fault_kinds) < set(FAULT_KINDS)


def test_latency_jitter_deterministic(sim: SimServer) -> None:
    sim.update(latency_s=0.2, latency_jitter=0.5)

    async def timed(content: str) -> float:
        t = time.monotonic()
        await post(sim.url, chat_body(content))
        return time.monotonic() - t

    durations = [run(timed(f"j {i}")) for i in range(4)]
    assert all(0.09 <= d <= 0.5 for d in durations)
    assert max(durations) - min(durations) > 0.02


def test_serve_coroutine() -> None:
    async def go() -> None:
        ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(serve(SimConfig(latency_s=0.0), "127.0.0.1", 0, ready.set_result))
        port = await asyncio.wait_for(ready, 5)
        status, _, raw = await post(f"http://127.0.0.1:{port}/v1", chat_body("hello"))
        assert status == 200
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(go())
