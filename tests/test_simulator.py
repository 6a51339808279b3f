"""Tests for pipeline.simulator, in the order of its modules: pure parts directly,
everything a client sees over real HTTP on 127.0.0.1 against SimServer (no mocks).

No assertion here depends on elapsed time: tests assert what came back, in which
order, and what /_sim/stats counted. Waits are polls with a bound, never sleeps
whose length matters."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import orjson
import pytest

from pipeline.simulator import (
    DEFAULT_FAULT_KINDS,
    FAULT_KINDS,
    UNREADABLE_ANSWER,
    FaultKind,
    Plan,
    SimConfig,
    SimServer,
    answer_for,
    fault_for,
    plan_attempt,
    serve,
    sized_answer,
    usage_for,
)
from pipeline.simulator.answers import key_digest, user_content
from pipeline.simulator.completion import MAX_DELTA_CHARS, Completion, pieces, stream_events
from pipeline.simulator.gates import GATES
from pipeline.simulator.kinds import IMMEDIATE, RUN_FATAL
from pipeline.simulator.plan import MAX_ANSWER_BYTES, Directives, latency_for, parse_directives
from pipeline.simulator.state import RpmWindow, State

MODEL = "gpt-4o-all"
BASE = SimConfig(latency_s=0.0)
MB = 1024 * 1024


@pytest.fixture(scope="module")
def shared() -> Iterator[SimServer]:
    with SimServer(BASE) as server:
        yield server


@pytest.fixture
def sim(shared: SimServer) -> SimServer:
    """The shared server with the base config and empty stats; tests update() on top."""
    shared.update(**BASE.to_dict())
    wait_until(lambda: shared.stats()["in_flight"] == 0)  # a previous test's cancelled hangs
    shared.reset()
    return shared


def wait_until(predicate: Callable[[], bool], bound_s: float = 10.0) -> None:
    """Poll until ``predicate()``; fail after ``bound_s`` (a bound, not a measurement)."""
    deadline = time.monotonic() + bound_s
    while not predicate():
        if time.monotonic() >= deadline:  # a bound on the wait, not a measurement
            pytest.fail(f"condition not reached within {bound_s} s")
        time.sleep(0.01)


async def await_until(predicate: Callable[[], bool], bound_s: float = 10.0) -> None:
    deadline = time.monotonic() + bound_s
    while not predicate():
        if time.monotonic() >= deadline:  # a bound on the wait, not a measurement
            pytest.fail(f"condition not reached within {bound_s} s")
        await asyncio.sleep(0.01)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def chat_body(content: Any, model: str = MODEL, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


async def post(
    url: str, body: Any, *, key: str | None = None, timeout: float = 30.0, raw: bytes | None = None
) -> tuple[int, Any, bytes]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s:
        data = raw if raw is not None else orjson.dumps(body)
        async with s.post(url + "/chat/completions", data=data, headers=headers) as r:
            return r.status, r.headers, await r.read()


async def get(url: str, *, key: str | None = None) -> tuple[int, Any, bytes]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as s, s.get(url, headers=headers) as r:
        return r.status, r.headers, await r.read()


def statuses(sim: SimServer, *contents: str, **extra: Any) -> list[int]:
    return [run(post(sim.url, chat_body(c, **extra)))[0] for c in contents]


def sse_events(body: bytes) -> list[Any]:
    out: list[Any] = []
    for line in body.decode().split("\n"):
        if line.startswith("data: "):
            payload = line[len("data: ") :]
            out.append(payload if payload == "[DONE]" else orjson.loads(payload))
    return out


def streamed_text(events: list[Any]) -> str:
    return "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e != "[DONE]" and e["choices"])


def outcomes(sim: SimServer) -> dict[str, int]:
    """Non-zero outcome counters."""
    return {k: v for k, v in sim.stats()["outcomes"].items() if v}


# ================================================================== kinds, config


def test_fault_kind_groups() -> None:
    assert tuple(k.value for k in FaultKind) == FAULT_KINDS
    assert {FaultKind.QUOTA_401, FaultKind.QUOTA_403, FaultKind.NO_CHANNEL} == RUN_FATAL
    assert RUN_FATAL <= IMMEDIATE and FaultKind.RATE_LIMITED_EMPTY in IMMEDIATE
    # The default random mix is every transient fault: both kinds of 429 and the hang included.
    assert set(DEFAULT_FAULT_KINDS) == set(FAULT_KINDS) - {k.value for k in RUN_FATAL} - {"stream_cut"}
    assert SimConfig().fault_kinds == DEFAULT_FAULT_KINDS


def test_config_from_dict_and_round_trip() -> None:
    cfg = SimConfig.from_dict({"fault_kinds": ["500"], "model_alias": [["a", "b"]], "quota_style": 403})
    assert cfg.fault_kinds == ("500",) and cfg.model_alias == (("a", "b"),) and cfg.quota_style == "403"
    assert SimConfig.from_dict(cfg.to_dict()) == cfg
    assert SimConfig(fault_kinds="500, hang").fault_kinds == ("500", "hang")  # type: ignore[arg-type]
    assert SimConfig(model_alias={"x": "y"}).model_alias == (("x", "y"),)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"latency": 1}, "latency"),
        ({"fault_kinds": ["nope"]}, "nope"),
        ({"fault_rate": 2.0}, "fault_rate"),
        ({"latency_jitter": -0.1}, "latency_jitter"),
        ({"latency_s": -1}, "latency_s"),
        ({"rpm": 1.5}, "rpm"),
        ({"capacity": -1}, "capacity"),
        ({"fault_attempts": True}, "fault_attempts"),
        ({"quota_style": "402"}, "quota_style"),
        ({"models_shape": "xml"}, "models_shape"),
        ({"fault_rate": 0.5, "fault_kinds": []}, "fault kind"),
        ({"model_alias": [["a"]]}, "model_alias"),
    ],
)
def test_config_rejects_naming_the_setting(changes: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        SimConfig.from_dict(changes)


# ================================================================== answers


def test_answer_is_deterministic_and_non_ascii() -> None:
    a = answer_for(MODEL, "https://host/doc.pdf Q")
    assert a == answer_for(MODEL, "https://host/doc.pdf Q") != answer_for(MODEL, "https://host/doc.pdf R")
    assert 40 <= len(a) <= 120 and "—" in a and answer_for("gpt-4o", "x") != answer_for(MODEL, "x")


@pytest.mark.parametrize("nbytes", [*range(0, 200), 4095, 4096, 4097, 3 * MB, 20 * MB])
def test_sized_answer_has_exactly_n_utf8_bytes(nbytes: int) -> None:
    text = sized_answer(MODEL, "big", nbytes)
    assert len(text.encode()) == nbytes
    assert text == sized_answer(MODEL, "big", nbytes)
    if nbytes > 200:
        assert "—" in text and text.startswith(answer_for(MODEL, "big"))


def test_usage_counts_bytes_and_images() -> None:
    assert usage_for([{"role": "user", "content": "abcde"}], "abcd") == (4 + 2, 1)
    parts = [{"type": "text", "text": "ab"}, {"type": "text", "text": "cde"}, {"type": "image_url", "image_url": {}}]
    assert usage_for([{"role": "user", "content": parts}], "") == (4 + 85 + 2, 0)
    assert usage_for([{"role": "user", "content": "—"}], "——") == (4 + 1, 2)


def test_user_content_last_user_message_and_vision_form() -> None:
    msgs = [{"role": "user", "content": "old"}, {"role": "system", "content": "s"}, {"role": "user", "content": "new"}]
    assert user_content(msgs) == "new"
    assert user_content([{"role": "system", "content": "only"}]) == "only"
    parts = [
        {"type": "text", "text": "What?"},
        {"type": "input_audio"},
        {"type": "image_url", "image_url": {"url": "https://h/a.png"}},
    ]
    assert user_content([{"role": "user", "content": parts}]) == "What? https://h/a.png"
    assert user_content([{"role": "user"}]) == ""
    for bad in ([1], [{"role": "user", "content": 5}], [{"role": "user", "content": [1]}]):
        with pytest.raises(ValueError):
            user_content(bad)


# ================================================================== plan


def test_directives_parse_into_a_typed_value() -> None:
    d = parse_directives("row [[sim:fault=500*3]] [[sim:finish=length]] [[sim:answer_bytes=10]]")
    assert d == Directives(fault=FaultKind.SERVER_ERROR, fault_times=3, finish="length", answer_bytes=10)
    assert parse_directives("[[sim:unreadable]] [[sim:retry_after= 2 ]]") == Directives(
        unreadable=True, retry_after="2"
    )
    assert parse_directives("no directive") == Directives()


@pytest.mark.parametrize(
    "content",
    [
        "[[sim:status=999]]",
        "[[sim:status=abc]]",
        "[[sim:fault=nope]]",
        "[[sim:fault=500*x]]",
        "[[sim:fault=500*-1]]",
        "[[sim:retry_after=soon]]",
        "[[sim:finish=Bad!]]",
        "[[sim:answer_bytes=-1]]",
        f"[[sim:answer_bytes={MAX_ANSWER_BYTES + 1}]]",
        "[[sim:nonsense]]",
    ],
)
def test_malformed_directive_is_an_error(content: str) -> None:
    with pytest.raises(ValueError):
        parse_directives(content)


def test_directive_plans_attempt_by_attempt() -> None:
    def outcomes_of(content: str, n: int) -> list[str]:
        return [plan_attempt(BASE, content, key_digest(MODEL, content), a).outcome for a in range(1, n + 1)]

    assert outcomes_of("[[sim:fault=500*3]]", 4) == ["500", "500", "500", "ok"]
    # Attempts are counted once: retry_after takes attempt 1, so fault=hang*2 leaves the hang attempt 2.
    assert outcomes_of("[[sim:retry_after=2]] [[sim:fault=hang*2]]", 3) == ["429", "hang", "ok"]
    assert outcomes_of("[[sim:status=500]]", 5) == ["500"] * 5
    assert outcomes_of("[[sim:fault=truncated*0]]", 1) == ["ok"]
    last = parse_directives("[[sim:fault=500]] [[sim:unreadable]] [[sim:finish=length]]").plan(2)
    assert last == Plan(finish="length", unreadable=True) and last.is_ok
    assert parse_directives("[[sim:retry_after=2]]").plan(1) == Plan(fault=FaultKind.RATE_LIMITED, retry_after="2")


def test_plan_outcome_and_immediacy() -> None:
    assert Plan().outcome == "ok" and not Plan().immediate
    assert Plan(status=500).outcome == "500" and not Plan(status=500).immediate
    assert all(Plan(status=s).immediate for s in (401, 403, 429))
    immediate = {k for k in FaultKind if Plan(fault=k).immediate}
    assert immediate == IMMEDIATE
    assert all(Plan(fault=k).outcome == k.value and not Plan(fault=k).is_ok for k in FaultKind)


def test_random_mix_is_seeded_per_attempt() -> None:
    cfg = SimConfig(fault_rate=0.5, fault_kinds=("500", "503"), fault_attempts=2, seed=7)
    rows = [f"row {i}" for i in range(200)]
    first = [fault_for(cfg, MODEL, r, 1) for r in rows]
    assert first == [fault_for(cfg, MODEL, r, 1) for r in rows]
    assert {None, "500", "503"} == set(first) and 60 <= first.count(None) <= 140
    assert [fault_for(cfg, MODEL, r, 2) for r in rows] != first  # attempts draw independently
    assert all(fault_for(cfg, MODEL, r, 3) is None for r in rows)  # beyond fault_attempts
    assert [fault_for(SimConfig(**{**cfg.to_dict(), "seed": 8}), MODEL, r, 1) for r in rows] != first
    assert all(fault_for(BASE, MODEL, r, 1) is None for r in rows)


def test_a_kind_listed_twice_is_drawn_twice_as_often() -> None:
    # the bench's unkind mix: 429 four times beside eight other kinds is a third of the faults
    others = ("500", "502_html", "503", "524_html", "hang", "disconnect", "truncated", "empty_choices")
    cfg = SimConfig(fault_rate=1.0, fault_kinds=("429",) * 4 + others)
    assert cfg.fault_kinds.count("429") == 4 and SimConfig.from_dict(cfg.to_dict()) == cfg
    drawn = [fault_for(cfg, MODEL, f"row {i}", 1) for i in range(3000)]
    assert 850 <= drawn.count("429") <= 1150
    assert all(drawn.count(k) < drawn.count("429") / 2 for k in others)


def test_latency_jitter_is_deterministic_and_bounded() -> None:
    assert latency_for(SimConfig(latency_s=0.2), key_digest(MODEL, "x"), 1) == 0.2
    cfg = SimConfig(latency_s=0.2, latency_jitter=0.5)
    values = [latency_for(cfg, key_digest(MODEL, f"j {i}"), 1) for i in range(50)]
    assert values == [latency_for(cfg, key_digest(MODEL, f"j {i}"), 1) for i in range(50)]
    assert all(0.1 <= v <= 0.3 for v in values) and max(values) - min(values) > 0.05


# ================================================================== completion (pure bodies)


def _completion(answer: str = "Hello — world") -> Completion:
    return Completion(
        id="c1", created=1, model=MODEL, answer=answer, finish="stop", prompt_tokens=3, completion_tokens=4
    )


def test_deltas_are_about_four_and_never_huge() -> None:
    assert pieces("") == [] and pieces("abcdefgh") == ["ab", "cd", "ef", "gh"]
    big = sized_answer(MODEL, "x", 100_000)
    parts = pieces(big)
    assert "".join(parts) == big and max(len(p) for p in parts) == MAX_DELTA_CHARS


def test_stream_event_shapes() -> None:
    c = _completion()
    ok = sse_events(b"".join(stream_events(c, None, include_usage=True)))
    assert ok[-1] == "[DONE]" and ok[-2]["usage"]["total_tokens"] == 7
    assert ok[-3]["choices"][0]["finish_reason"] == "stop"
    cut = sse_events(b"".join(stream_events(c, FaultKind.STREAM_CUT, include_usage=True)))
    assert cut[-1] == "[DONE]" and all(e["choices"][0]["finish_reason"] is None for e in cut[:-1])
    assert streamed_text(cut) == c.answer
    truncated = sse_events(b"".join(stream_events(c, FaultKind.TRUNCATED, include_usage=True)))
    assert "[DONE]" not in truncated and len(truncated) < len(ok)
    assert sse_events(b"".join(stream_events(c, FaultKind.ERROR_IN_200, True)))[0]["error"]["type"] == "new_api_error"
    assert sse_events(b"".join(stream_events(c, FaultKind.EMPTY_CHOICES, True)))[0]["choices"] == []


# ================================================================== state


def test_rpm_window_with_injected_times() -> None:
    w = RpmWindow()
    assert [w.admit(t, rpm=2) for t in (0.0, 1.0, 2.0, 59.5)] == [None, None, 58, 1]
    assert w.admit(60.0, rpm=2) is None  # the request at 0.0 left the window
    assert w.admit(60.5, rpm=2) == 1
    assert RpmWindow().admit(0.0, rpm=0) == 60


def test_state_counters_with_injected_clock() -> None:
    now = [100.0]
    st = State(BASE, clock=lambda: now[0])
    now[0] = 101.5
    st.arrived()
    assert st.requests == 1 and list(st.request_times) == [1.5]
    assert [st.next_attempt(7), st.next_attempt(7), st.next_attempt(8)] == [1, 2, 1]
    st.record_ok(7, 3, 4)
    st.record_ok(7, 3, 4)
    snap = st.snapshot()
    assert (snap["ok_requests"], snap["distinct_ok"], snap["duplicate_ok"], snap["distinct_keys"]) == (2, 1, 1, 2)
    assert (snap["prompt_tokens"], snap["completion_tokens"]) == (6, 8)
    assert st.request_id() != st.request_id()
    assert snap["late_ms_mean"] is None  # no latency wait ended yet
    st.woke(0.001)
    st.woke(0.003)
    assert st.snapshot()["late_ms_mean"] == 2.0  # the simulator's own lag, in ms
    st.count("500")
    st.reset()
    assert st.snapshot()["requests"] == 0 and st.outcomes["500"] == 0 and st.t0 == 101.5 and not st.attempts
    assert st.snapshot()["late_ms_mean"] is None


def test_max_per_minute_is_the_busiest_sliding_minute_not_a_calendar_one() -> None:
    now = [0.0]
    st = State(BASE, clock=lambda: now[0])
    # 3 requests late in minute 0 and 3 early in minute 1: no calendar minute holds more than 3
    for t in (50.0, 55.0, 59.0, 61.0, 65.0, 109.9, 110.0, 125.5):
        now[0] = t
        st.arrived()
    # (50, 110]: 55, 59, 61, 65, 109.9, 110; the one at 50 left that window when 110 arrived
    assert st.snapshot()["max_per_minute"] == 6
    st.reset()
    assert st.snapshot()["max_per_minute"] == 0


def test_timeline_counts_outcomes_per_second() -> None:
    now = [10.0]
    st = State(BASE, clock=lambda: now[0])
    st.count("ok")
    now[0] = 10.9
    st.count("capacity_429")
    now[0] = 13.2  # nothing decided in seconds 1 and 2
    st.count("ok")
    assert st.snapshot()["timeline"] == [{"ok": 1, "capacity_429": 1}, {}, {}, {"ok": 1}]
    assert st.outcomes["ok"] == 2
    st.reset()
    assert st.snapshot()["timeline"] == []


def test_retry_after_kept_or_violated_with_injected_clock() -> None:
    now = [0.0]
    st = State(BASE, clock=lambda: now[0])
    assert st.snapshot()["retry_after"] == {"sent": 0, "checked": 0, "violations": 0, "pending": 0,
                                            "min_slack_s": None}  # fmt: skip
    st.retry_after_sent(1, 1.0)
    st.retry_after_sent(2, 1.0)
    st.retry_after_sent(3, 1.0)
    now[0] = 0.9985  # within the event-loop timer tolerance: honoured
    st.check_retry_after(1)
    now[0] = 0.5  # half a second early (clock set back only to build the case)
    st.check_retry_after(2)
    st.check_retry_after(4)  # never told to wait: not checked
    ra = st.snapshot()["retry_after"]
    assert (ra["sent"], ra["checked"], ra["violations"], ra["pending"]) == (3, 2, 1, 1)
    assert ra["min_slack_s"] == -0.5
    now[0] = 5.0
    st.check_retry_after(2)  # its due time was consumed by the early retry
    assert st.snapshot()["retry_after"]["checked"] == 2


# ================================================================== gates (over HTTP)


def test_gates_in_the_documented_order() -> None:
    names = ["auth", "body", "model", "quota", "capacity", "rpm", "response_format", "fault"]
    assert [g.__name__ for g in GATES] == names


def test_each_gate_answers_before_the_next(sim: SimServer) -> None:
    row = "row [[sim:fault=500]]"
    sim.update(api_key="k", no_channel=True, quota_requests=0, capacity=0, rpm=0)
    got = [run(post(sim.url, chat_body(row), key="bad"))[0], run(post(sim.url, None, raw=b"[", key="k"))[0]]
    for setting in ("no_channel", "quota_requests", "capacity", "rpm"):
        got.append(run(post(sim.url, chat_body(row), key="k"))[0])
        sim.update(**{setting: None if setting != "no_channel" else False})
    got.append(run(post(sim.url, chat_body(row), key="k"))[0])
    got.append(run(post(sim.url, chat_body(row), key="k"))[0])
    assert got == [401, 400, 503, 401, 429, 429, 500, 200]
    assert outcomes(sim) == {"401": 1, "400": 1, "no_channel": 1, "quota": 1, "capacity_429": 1, "rpm_429": 1,
                             "500": 1, "ok": 1}  # fmt: skip
    # Attempts count only past every gate: the fault of attempt 1 was still there for the 7th request.
    assert sim.stats()["distinct_keys"] == 1 and sim.stats()["requests"] == 8


def test_wrong_key_and_invalid_body(sim: SimServer) -> None:
    sim.update(api_key="sk-good")
    for key in ("sk-bad", None):
        status, headers, raw = run(post(sim.url, chat_body("x"), key=key))
        assert status == 401 and "X-Oneapi-Request-Id" in headers
        assert orjson.loads(raw) == {"error": {"message": "无效的令牌", "type": "new_api_error"}}
    assert run(post(sim.url, chat_body("x"), key="sk-good"))[0] == 200
    sim.update(api_key=None, record_bodies=True)
    for raw_body in (b"not json", orjson.dumps({"model": MODEL, "messages": []}), b"[1]", b'{"messages": [{}]}'):
        status, _, raw = run(post(sim.url, None, raw=raw_body))
        assert status == 400
        err = orjson.loads(raw)["error"]
        assert err["type"] == "invalid_request_error" and err["param"] is None and err["code"] is None
    assert outcomes(sim) == {"401": 2, "400": 4, "ok": 1} and sim.bodies() == []


def test_capacity_429_is_empty_and_counts_only_in_flight(sim: SimServer) -> None:
    sim.update(capacity=2, hang_s=3600.0)

    async def go() -> tuple[int, Any, bytes]:
        hung = [asyncio.ensure_future(post(sim.url, chat_body(f"cap {i} [[sim:fault=hang]]"))) for i in range(2)]
        await await_until(lambda: sim.stats()["in_flight"] == 2)
        third = await post(sim.url, chat_body("cap 3"))
        for t in hung:
            t.cancel()
        await asyncio.gather(*hung, return_exceptions=True)
        return third

    status, headers, raw = run(go())
    assert status == 429 and raw == b"" and "Retry-After" not in headers
    wait_until(lambda: sim.stats()["in_flight"] == 0)
    st = sim.stats()
    assert outcomes(sim) == {"hang": 2, "capacity_429": 1} and st["cancelled"] == 2 and st["max_in_flight"] == 2
    assert statuses(sim, "cap 4") == [200]  # the slots are free again


def test_rpm_429_with_retry_after_counts_failures_too(sim: SimServer) -> None:
    sim.update(rpm=2)
    got = statuses(sim, "rpm [[sim:status=500]]", "rpm 2", "rpm 3")
    status, headers, raw = run(post(sim.url, chat_body("rpm 4")))
    assert got == [500, 200, 429] and status == 429
    assert 1 <= int(headers["Retry-After"]) <= 60
    assert orjson.loads(raw)["error"]["message"] == "您已达到请求数限制：1分钟内最多请求2次"
    assert outcomes(sim) == {"500": 1, "ok": 1, "rpm_429": 2}


@pytest.mark.parametrize("style", ["401", "403"])
def test_quota_and_top_up(sim: SimServer, style: str) -> None:
    sim.update(quota_requests=2, quota_style=style)
    got = statuses(sim, "q 1", "q 2")
    status, _, raw = run(post(sim.url, chat_body("q 3")))
    assert [*got, status] == [200, 200, int(style)]
    err = orjson.loads(raw)["error"]
    if style == "401":
        assert "该令牌额度已用尽" in err["message"] and err == {"message": err["message"], "type": "new_api_error"}
    else:
        assert err == {"message": "用户额度不足", "type": "new_api_error", "code": "insufficient_user_quota"}
    sim.update(quota_requests=None)
    assert statuses(sim, "q 3") == [200]
    assert outcomes(sim) == {"ok": 3, "quota": 1}


def test_quota_not_overshot_by_concurrency(sim: SimServer) -> None:
    sim.update(quota_requests=3, latency_s=0.1)

    async def go() -> list[int]:
        return [r[0] for r in await asyncio.gather(*(post(sim.url, chat_body(f"c {i}")) for i in range(8)))]

    got = run(go())
    assert got.count(200) == 3 and got.count(401) == 5 and sim.stats()["ok_requests"] == 3


def test_no_channel(sim: SimServer) -> None:
    sim.update(no_channel=True)
    status, _, raw = run(post(sim.url, chat_body("x")))
    assert status == 503
    assert orjson.loads(raw) == {
        "error": {"message": "当前分组 default 下对于模型 gpt-4o-all 无可用渠道", "type": "new_api_error"}
    }
    assert outcomes(sim) == {"no_channel": 1}


# ================================================================== chat: successes


def test_success_body_header_answer_usage(sim: SimServer) -> None:
    content = "https://host/doc.pdf What is the total?"
    body = chat_body(content, max_tokens=1688, temperature=0.5, stream=False)
    status, headers, raw = run(post(sim.url, body))
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    data = orjson.loads(raw)
    assert set(data) == {"id", "object", "created", "model", "choices", "usage"}
    assert data["id"].startswith("chatcmpl-") and data["object"] == "chat.completion"
    assert isinstance(data["created"], int) and data["model"] == MODEL
    answer = answer_for(MODEL, content)
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
    assert data["usage"]["prompt_tokens"] == usage_for(with_system["messages"], "")[0]

    parts = [
        {"type": "text", "text": "What is shown?"},
        {"type": "image_url", "image_url": {"url": "https://host/a.png"}},
    ]
    data = orjson.loads(run(post(sim.url, chat_body(parts)))[2])
    assert data["choices"][0]["message"]["content"] == answer_for(MODEL, "What is shown? https://host/a.png")
    assert data["usage"]["prompt_tokens"] == 4 + math.ceil(len(b"What is shown?") / 4) + 85


def test_directive_unreadable_and_finish(sim: SimServer) -> None:
    for _ in range(2):
        status, _, raw = run(post(sim.url, chat_body("https://x/y.pdf Q [[sim:unreadable]]")))
        assert status == 200
        assert orjson.loads(raw)["choices"][0]["message"]["content"] == UNREADABLE_ANSWER
    status, _, raw = run(post(sim.url, chat_body("Q [[sim:finish=length]]")))
    choice = orjson.loads(raw)["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["content"] == answer_for(MODEL, "Q [[sim:finish=length]]")


@pytest.mark.parametrize("nbytes", [3 * MB, 20 * MB])
def test_answer_bytes_plain(sim: SimServer, nbytes: int) -> None:
    content = f"https://host/huge.pdf all of it [[sim:answer_bytes={nbytes}]]"
    status, _, raw = run(post(sim.url, chat_body(content)))
    data = orjson.loads(raw)
    text = data["choices"][0]["message"]["content"]
    assert status == 200 and len(text.encode()) == nbytes and text == sized_answer(MODEL, content, nbytes)
    assert data["usage"]["completion_tokens"] == math.ceil(nbytes / 4) and data["choices"][0]["finish_reason"] == "stop"
    assert sim.stats()["ok_requests"] == 1 and sim.stats()["completion_tokens"] == math.ceil(nbytes / 4)


@pytest.mark.parametrize("nbytes", [3 * MB, 20 * MB])
def test_answer_bytes_streamed_in_small_deltas(sim: SimServer, nbytes: int) -> None:
    content = f"huge [[sim:answer_bytes={nbytes}]]"
    body = chat_body(content, stream=True, stream_options={"include_usage": True})
    status, _, raw = run(post(sim.url, body))
    assert status == 200 and max(len(line) for line in raw.split(b"\n")) < 64 * 1024  # any SSE reader copes
    events = sse_events(raw)
    assert streamed_text(events) == sized_answer(MODEL, content, nbytes)
    assert events[-1] == "[DONE]" and events[-2]["usage"]["completion_tokens"] == math.ceil(nbytes / 4)
    assert events[-3]["choices"][0]["finish_reason"] == "stop"


def test_answer_bytes_after_faults_and_zero(sim: SimServer) -> None:
    content = "big [[sim:fault=truncated*2]] [[sim:answer_bytes=5000]] [[sim:finish=length]]"
    got = [run(post(sim.url, chat_body(content))) for _ in range(3)]
    assert [g[0] for g in got] == [200, 200, 200]
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(got[0][2])
    choice = orjson.loads(got[2][2])["choices"][0]
    assert len(choice["message"]["content"].encode()) == 5000 and choice["finish_reason"] == "length"
    empty = orjson.loads(run(post(sim.url, chat_body("[[sim:answer_bytes=0]]")))[2])
    assert empty["choices"][0]["message"]["content"] == "" and empty["usage"]["completion_tokens"] == 0
    assert outcomes(sim) == {"truncated": 2, "ok": 2}


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
    text_pieces = [c["choices"][0]["delta"].get("content") for c in chunks[1:] if c["choices"]]
    assert len([p for p in text_pieces if p]) >= 3 and streamed_text(events) == answer_for(MODEL, content)
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finals) == 1 and finals[0]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
    assert chunks[-1]["choices"] == []
    p, c = usage_for(body["messages"], answer_for(MODEL, content))
    assert chunks[-1]["usage"] == {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    # Not asked for -> no usage chunk; asked but the gateway never sends it -> none either.
    for cfg_usage, opts in ((True, None), (False, {"include_usage": True})):
        sim.update(stream_usage=cfg_usage)
        extra = {"stream_options": opts} if opts else {}
        events = sse_events(run(post(sim.url, chat_body(content, stream=True, **extra)))[2])
        assert events[-1] == "[DONE]" and all("usage" not in e for e in events[:-1])
        assert events[-2]["choices"][0]["finish_reason"] == "stop"
    assert sim.stats()["ok_requests"] == 3 and sim.stats()["duplicate_ok"] == 2


# ================================================================== chat: failures


def test_status_directive_fails_every_attempt_with_a_json_body(sim: SimServer) -> None:
    content = "always broken [[sim:status=500]]"
    got = [run(post(sim.url, chat_body(content))) for _ in range(5)]
    assert [g[0] for g in got] == [500] * 5
    for _, headers, raw in got:
        assert headers["Content-Type"].startswith("application/json")
        assert orjson.loads(raw) == {"error": {"message": "simulated error status 500", "type": "upstream_error",
                                               "param": None, "code": None}}  # fmt: skip
    assert [fault_for(sim.config, MODEL, content, a) for a in range(1, 6)] == ["500"] * 5
    status, _, raw = run(post(sim.url, chat_body("row [[sim:status=400]]")))
    assert status == 400 and set(orjson.loads(raw)["error"]) == {"message", "type", "param", "code"}
    assert statuses(sim, "[[sim:status=403]]", "[[sim:status=999]]", "[[sim:nonsense]]") == [403, 400, 400]
    assert outcomes(sim) == {"500": 5, "400": 3, "403": 1} and sim.stats()["ok_requests"] == 0


def test_directive_retry_after_then_success(sim: SimServer) -> None:
    content = "doc [[sim:retry_after=2]]"
    status, headers, raw = run(post(sim.url, chat_body(content)))
    assert status == 429 and headers["Retry-After"] == "2" and "error" in orjson.loads(raw)
    status, _, raw = run(post(sim.url, chat_body(content)))
    assert status == 200
    assert orjson.loads(raw)["choices"][0]["message"]["content"] == answer_for(MODEL, content)
    assert outcomes(sim) == {"429": 1, "ok": 1}


def test_early_retry_after_a_retry_after_429_is_a_violation(sim: SimServer) -> None:
    sim.update(fault_rate=1.0, fault_kinds=("429", "429_empty"), fault_attempts=1, retry_after_s=60.0)
    rows = [f"ra {i}" for i in range(12)]
    first = [fault_for(sim.config, MODEL, r, 1) for r in rows]
    assert {"429", "429_empty"} == set(first)
    assert statuses(sim, *rows) == [429] * 12
    assert statuses(sim, *rows) == [200] * 12  # at once, not 60 s later
    ra = sim.stats()["retry_after"]
    # only the 429s that carried Retry-After are owed a wait
    assert ra["sent"] == ra["checked"] == ra["violations"] == first.count("429")
    assert ra["pending"] == 0 and ra["min_slack_s"] < -50


def test_retry_after_zero_is_never_violated(sim: SimServer) -> None:
    content = "doc [[sim:retry_after=0]]"
    assert statuses(sim, content, content) == [429, 200]
    ra = sim.stats()["retry_after"]
    assert (ra["sent"], ra["checked"], ra["violations"]) == (1, 1, 0) and ra["min_slack_s"] >= 0
    # every decision is in the timeline too
    assert sum(sum(b.values()) for b in sim.stats()["timeline"]) == sim.stats()["requests"] == 2


def test_directive_fault_times_then_success(sim: SimServer) -> None:
    assert statuses(sim, *["doc [[sim:fault=500*3]]"] * 4) == [500, 500, 500, 200]
    assert outcomes(sim) == {"500": 3, "ok": 1} and sim.stats()["ok_requests"] == 1


def _check_429(status: int, headers: Any, raw: bytes) -> None:
    assert status == 429 and headers["Retry-After"] == "1"
    assert orjson.loads(raw)["error"]["code"] == "rate_limit_exceeded"


def _check_429_empty(status: int, headers: Any, raw: bytes) -> None:
    assert status == 429 and raw == b"" and "Retry-After" not in headers


def _check_500(status: int, headers: Any, raw: bytes) -> None:
    assert status == 500 and orjson.loads(raw)["error"]["code"] == "internal_error"


def _check_503(status: int, headers: Any, raw: bytes) -> None:
    err = orjson.loads(raw)["error"]
    assert status == 503 and "code" not in err and "无可用渠道" not in err["message"]  # one-api: often no code


def _check_html(status: int, headers: Any, raw: bytes) -> None:
    assert status in (502, 524) and headers["Content-Type"].startswith("text/html")
    assert raw.lstrip().lower().startswith((b"<html", b"<!doctype html"))


def _check_half_json(status: int, headers: Any, raw: bytes) -> None:
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert raw.startswith(b'{"id":"chatcmpl-')
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(raw)


def _check_empty_choices(status: int, headers: Any, raw: bytes) -> None:
    data = orjson.loads(raw)
    assert status == 200 and data["choices"] == [] and "usage" in data


def _check_error_in_200(status: int, headers: Any, raw: bytes) -> None:
    assert status == 200
    assert orjson.loads(raw) == {"error": {"message": "upstream error: do_request_failed", "type": "new_api_error"}}


def _check_quota_401(status: int, headers: Any, raw: bytes) -> None:
    assert status == 401 and "该令牌额度已用尽" in orjson.loads(raw)["error"]["message"]


def _check_quota_403(status: int, headers: Any, raw: bytes) -> None:
    assert status == 403 and orjson.loads(raw)["error"]["code"] == "insufficient_user_quota"


def _check_no_channel(status: int, headers: Any, raw: bytes) -> None:
    assert status == 503 and "无可用渠道" in orjson.loads(raw)["error"]["message"]


CHECKS: dict[str, Callable[[int, Any, bytes], None]] = {
    "429": _check_429,
    "429_empty": _check_429_empty,
    "500": _check_500,
    "502_html": _check_html,
    "503": _check_503,
    "524_html": _check_html,
    "truncated": _check_half_json,
    "stream_cut": _check_half_json,
    "empty_choices": _check_empty_choices,
    "error_in_200": _check_error_in_200,
    "quota_401": _check_quota_401,
    "quota_403": _check_quota_403,
    "no_channel": _check_no_channel,
}


def test_every_fault_kind_has_a_check() -> None:
    assert set(CHECKS) | {"hang", "disconnect"} == set(FAULT_KINDS)


@pytest.mark.parametrize("kind", sorted(CHECKS))
def test_fault_kind_from_the_random_mix(sim: SimServer, kind: str) -> None:
    sim.update(fault_rate=1.0, fault_kinds=(kind,), fault_attempts=1, retry_after_s=1.0)
    content = f"row for {kind}"
    assert fault_for(sim.config, MODEL, content, 1) == kind
    status, headers, raw = run(post(sim.url, chat_body(content)))
    assert "X-Oneapi-Request-Id" in headers
    CHECKS[kind](status, headers, raw)
    # Answers the gateway gives itself never take an upstream slot.
    assert sim.stats()["max_in_flight"] == (0 if Plan(fault=FaultKind(kind)).immediate else 1)
    assert statuses(sim, content) == [200]  # only attempt 1 is faulted (fault_attempts=1)
    assert outcomes(sim) == {kind: 1, "ok": 1} and sim.stats()["ok_requests"] == 1


def test_fault_429_without_retry_after_setting(sim: SimServer) -> None:
    sim.update(fault_rate=1.0, fault_kinds=("429",), retry_after_s=None)
    _check_429_empty(*run(post(sim.url, chat_body("z"))))


def test_fault_mix_is_deterministic_over_http(sim: SimServer) -> None:
    sim.update(fault_rate=0.5, fault_kinds=("500", "503"), seed=7)
    rows = [f"row {i}" for i in range(30)]
    expected = [fault_for(sim.config, MODEL, r, 1) for r in rows]
    assert {None, "500", "503"} <= set(expected)
    assert statuses(sim, *rows) == [200 if e is None else int(e) for e in expected]


def test_disconnect_fault(sim: SimServer) -> None:
    with pytest.raises(aiohttp.ClientError):
        run(post(sim.url, chat_body("bye [[sim:fault=disconnect]]")))
    assert statuses(sim, "bye [[sim:fault=disconnect]]") == [200]
    assert outcomes(sim) == {"disconnect": 1, "ok": 1} and sim.stats()["cancelled"] == 0


def test_hang_outlasts_the_client_timeout(sim: SimServer) -> None:
    sim.update(hang_s=3600.0)
    with pytest.raises(asyncio.TimeoutError):
        run(post(sim.url, chat_body("slow [[sim:fault=hang]]"), timeout=0.5))
    wait_until(lambda: sim.stats()["in_flight"] == 0)  # the handler was cancelled with its client
    st = sim.stats()
    assert outcomes(sim) == {"hang": 1} and st["cancelled"] == 1 and st["ok_requests"] == 0
    assert statuses(sim, "slow [[sim:fault=hang]]") == [200]  # attempt 2 is not hung


def test_stream_cut_fault(sim: SimServer) -> None:
    content = "cut me [[sim:fault=stream_cut]]"
    status, headers, raw = run(post(sim.url, chat_body(content, stream=True)))
    events = sse_events(raw)
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    assert events[-1] == "[DONE]" and all(e["choices"][0]["finish_reason"] is None for e in events[:-1])
    assert streamed_text(events) == answer_for(MODEL, content)
    events = sse_events(run(post(sim.url, chat_body(content, stream=True)))[2])
    assert events[-2]["choices"][0]["finish_reason"] == "stop"  # attempt 2 is complete
    assert outcomes(sim) == {"stream_cut": 1, "ok": 1} and sim.stats()["ok_requests"] == 1


def test_stream_faults_in_200(sim: SimServer) -> None:
    events = sse_events(run(post(sim.url, chat_body("e [[sim:fault=error_in_200]]", stream=True)))[2])
    assert "error" in events[0] and events[-1] == "[DONE]"
    events = sse_events(run(post(sim.url, chat_body("e [[sim:fault=empty_choices]]", stream=True)))[2])
    assert events[0]["choices"] == [] and events[-1] == "[DONE]"
    with pytest.raises(aiohttp.ClientPayloadError):
        run(post(sim.url, chat_body("e [[sim:fault=truncated]]", stream=True)))
    assert outcomes(sim) == {"error_in_200": 1, "empty_choices": 1, "truncated": 1} and sim.stats()["ok_requests"] == 0


# ================================================================== handlers: other endpoints


def test_models_both_shapes(sim: SimServer) -> None:
    status, headers, raw = run(get(sim.url + "/models"))
    data = orjson.loads(raw)
    assert status == 200 and data["object"] == "list" and "X-Oneapi-Request-Id" in headers
    assert [m["id"] for m in data["data"]] == list(SimConfig().models)
    assert all(m["object"] == "model" and m["owned_by"] == "openai" and "created" in m for m in data["data"])
    sim.update(models_shape="newapi", models=["m1"])
    data = orjson.loads(run(get(sim.url + "/models"))[2])
    assert data["success"] is True and [m["id"] for m in data["data"]] == ["m1"]
    sim.update(api_key="k")
    assert run(get(sim.url + "/models", key="bad"))[0] == 401


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
    assert orjson.loads(run(get(sim.root_url + "/dashboard/billing/subscription"))[2]) == sub  # without /v1 too
    usage = orjson.loads(run(get(sim.url + "/dashboard/billing/usage"))[2])
    assert usage == {"object": "list", "total_usage": 1250.0}
    tok = orjson.loads(run(get(sim.root_url + "/api/usage/token/"))[2])
    assert tok["code"] is True and tok["data"]["total_granted"] == 100 * 500000
    assert tok["data"]["total_used"] == 12.5 * 500000
    assert tok["data"]["total_available"] == 87.5 * 500000 and tok["data"]["unlimited_quota"] is False
    sim.update(api_key="k")
    assert run(get(sim.url + "/dashboard/billing/usage"))[0] == 401
    assert run(get(sim.root_url + "/api/usage/token/"))[0] == 401
    assert run(get(sim.url + "/dashboard/billing/usage", key="k"))[0] == 200


def test_stats_tokens_and_duplicates(sim: SimServer) -> None:
    rows = [f"row {i % 19}" for i in range(20)]
    assert statuses(sim, *rows) == [200] * 20
    st = sim.stats()
    assert st["requests"] == 20 and st["in_flight"] == 0 and st["distinct_keys"] == 19
    assert outcomes(sim) == {"ok": 20} and st["ok_requests"] == 20
    assert st["distinct_ok"] == 19 and st["duplicate_ok"] == 1
    assert len(st["request_times"]) == 20 and st["request_times"] == sorted(st["request_times"])
    assert st["prompt_tokens"] == sum(usage_for(chat_body(r)["messages"], "")[0] for r in rows)
    assert st["completion_tokens"] == sum(usage_for([], answer_for(MODEL, r))[1] for r in rows)


def test_stats_max_in_flight_and_window(sim: SimServer) -> None:
    sim.update(hang_s=3600.0)

    async def go() -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            bodies = [chat_body(f"h {i} [[sim:fault=hang]]") for i in range(20)]
            hung = [asyncio.ensure_future(s.post(sim.url + "/chat/completions", json=b)) for b in bodies]
            await await_until(lambda: sim.stats()["in_flight"] == 20)
            for t in hung:
                t.cancel()
            await asyncio.gather(*hung, return_exceptions=True)

    run(go())
    wait_until(lambda: sim.stats()["in_flight"] == 0)
    st = sim.stats()
    assert st["max_in_flight"] == 20 and st["max_in_flight_window"] == 20 and st["cancelled"] == 20

    async def control() -> None:
        async with aiohttp.ClientSession() as s:
            async with s.post(sim.root_url + "/_sim/stats/window") as r:
                assert r.status == 200 and orjson.loads(await r.read()) == {"max_in_flight_window": 0}
            async with s.post(sim.url + "/chat/completions", json=chat_body("w")) as r:
                assert r.status == 200
            async with s.get(sim.root_url + "/_sim/stats") as r:
                st = orjson.loads(await r.read())
                assert st["max_in_flight_window"] == 1 and st["max_in_flight"] == 20

    run(control())
    sim.reset_window()
    assert sim.stats()["max_in_flight_window"] == 0


def test_control_plane_config_bodies_reset(sim: SimServer) -> None:
    async def control() -> None:
        async with aiohttp.ClientSession() as s:
            async with s.post(sim.root_url + "/_sim/config", json={"quota_requests": 0, "bogus": 1}) as r:
                assert r.status == 400 and "bogus" in orjson.loads(await r.read())["error"]["message"]
            async with s.post(sim.root_url + "/_sim/config", json=[1]) as r:
                assert r.status == 400
            async with s.post(sim.root_url + "/_sim/config", json={"quota_requests": 0, "record_bodies": True}) as r:
                assert r.status == 200 and orjson.loads(await r.read())["quota_requests"] == 0
            async with s.get(sim.root_url + "/_sim/config") as r:
                assert SimConfig.from_dict(orjson.loads(await r.read())) == sim.config
            async with s.post(sim.url + "/chat/completions", json=chat_body("w")) as r:
                assert r.status == 401
            async with s.get(sim.root_url + "/_sim/bodies") as r:
                assert orjson.loads(await r.read()) == [chat_body("w")]
            async with s.post(sim.root_url + "/_sim/reset") as r:
                assert r.status == 200 and orjson.loads(await r.read()) == {"reset": True}

    run(control())
    st = sim.stats()
    assert st["requests"] == 0 and st["ok_requests"] == 0 and sim.bodies() == []
    assert sim.config.quota_requests == 0 and sim.config.record_bodies


# ================================================================== server


def test_path_without_v1_is_a_plain_404(sim: SimServer) -> None:
    status, headers, raw = run(post(sim.root_url, chat_body("x")))
    assert status == 404 and headers["Content-Type"].startswith("text/plain") and raw == b"404: Not Found"
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(raw)
    assert "X-Oneapi-Request-Id" in headers  # every response carries one, router errors too
    assert run(get(sim.root_url + "/models"))[0] == 404
    assert sim.stats()["requests"] == 0  # never reached the chat handler


def test_every_response_carries_a_distinct_request_id(sim: SimServer) -> None:
    sim.update(api_key="k")
    ids = [
        run(post(sim.url, chat_body("x"), key="k"))[1]["X-Oneapi-Request-Id"],
        run(post(sim.url, chat_body("x", stream=True), key="k"))[1]["X-Oneapi-Request-Id"],
        run(post(sim.url, chat_body("x")))[1]["X-Oneapi-Request-Id"],  # 401
        run(post(sim.url, chat_body("[[sim:fault=502_html]]"), key="k"))[1]["X-Oneapi-Request-Id"],
        run(get(sim.root_url + "/nowhere"))[1]["X-Oneapi-Request-Id"],  # 404
        run(get(sim.root_url + "/_sim/stats"))[1]["X-Oneapi-Request-Id"],
    ]
    assert len(set(ids)) == len(ids) and all(i.isdigit() and len(i) >= 20 for i in ids)


def test_stop_cancels_hung_requests() -> None:
    server = SimServer(SimConfig(latency_s=0.0, hang_s=3600.0)).start()
    try:
        assert server.start() is server  # idempotent

        async def hang_then_stop() -> None:
            task = asyncio.ensure_future(post(server.url, chat_body("slow [[sim:fault=hang]]"), timeout=30))
            await await_until(lambda: server.stats()["in_flight"] == 1)
            await asyncio.get_running_loop().run_in_executor(None, server.stop)
            with pytest.raises(aiohttp.ClientError):
                await task

        run(hang_then_stop())
        st = server.stats()  # still readable once stopped
        assert st["in_flight"] == 0 and st["cancelled"] == 1 and st["outcomes"]["hang"] == 1
    finally:
        server.stop()
    server.stop()  # idempotent


def test_update_rejects_in_the_callers_thread(sim: SimServer) -> None:
    with pytest.raises(ValueError, match="bogus"):
        sim.update(bogus=1)
    assert sim.config == BASE


def test_serve_coroutine() -> None:
    async def go() -> None:
        ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(serve(SimConfig(latency_s=0.0), "127.0.0.1", 0, ready.set_result))
        port = await asyncio.wait_for(ready, 10)
        status, _, _ = await post(f"http://127.0.0.1:{port}/v1", chat_body("hello"))
        assert status == 200
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(go())


def test_simulate_command_serves_the_schema_faults_its_flags_name() -> None:
    """`docpipe simulate` flags: response_format rejected with a 400, first structured answers
    spoiled (here: fenced), and a bad kind refused in one line with exit 2."""
    from pipeline.simulator.structured import structured_answer_for
    from pipeline.structured.extract import find_json

    from .conftest import cli, spawn

    bad = cli("simulate", "--port", "0", "--schema-fault-rate", "0.5", "--schema-fault-kinds", "prose,bogus")
    assert bad.returncode == 2 and "schema_fault_kinds" in bad.stderr and "bogus" in bad.stderr, bad.stderr
    proc = spawn("simulate", "--port", "0", "--latency", "0.01", "--jitter", "0", "--response-format", "reject",
                 "--schema-fault-rate", "1", "--schema-fault-kinds", "fenced")  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        url = line.split()[-1]
        schema = {"type": "object", "properties": {"total": {"type": "number"}}, "required": ["total"]}
        fmt = {"type": "json_schema", "json_schema": {"name": "x", "strict": True, "schema": schema}}
        status, _, raw = run(post(url, chat_body("invoice 7", response_format=fmt)))
        assert status == 400 and b"response_format" in raw
        system = {
            "role": "system",
            "content": "Answer with JSON valid against this JSON Schema:\n" + orjson.dumps(schema).decode(),
        }
        body = {"model": MODEL, "messages": [system, {"role": "user", "content": "invoice 7"}]}
        status, _, raw = run(post(url, body))
        assert status == 200, raw
        text = orjson.loads(raw)["choices"][0]["message"]["content"]
        assert "```" in text and find_json(text) == structured_answer_for(MODEL, "invoice 7", schema)
        status, _, raw = run(get(url.removesuffix("/v1") + "/_sim/config"))
        config = orjson.loads(raw)
        assert (config["response_format"], config["schema_fault_rate"], config["schema_fault_kinds"]) == (
            "reject", 1.0, ["fenced"])  # fmt: skip
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
