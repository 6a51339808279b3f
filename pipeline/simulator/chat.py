"""``POST /v1/chat/completions``: the gates (:mod:`.gates`), then the upstream phase:
wait the planned latency (or hang), then answer as planned."""

from __future__ import annotations

import asyncio
import os
import time

from aiohttp import web

from . import responses as r
from .answers import UNREADABLE_ANSWER, answer_from_digest, sized_answer, usage_for
from .completion import Completion, completion_body, stream_events
from .gates import GATES, Call
from .kinds import FaultKind
from .plan import latency_for
from .state import DROPPED, STATE
from .structured import schema_of, structured_text


async def chat(request: web.Request) -> web.StreamResponse:
    """The chat-completions handler."""
    st = request.app[STATE]
    st.arrived()
    call = Call(request=request, state=st, config=st.config, raw=await request.read())
    for gate in GATES:
        answered = gate(call)
        if answered is not None:
            return answered
    return await upstream(call)


async def upstream(call: Call) -> web.StreamResponse:
    """Hold an in-flight slot for the latency (or the hang), then answer."""
    st, cfg, plan = call.state, call.config, call.plan
    hang = plan.fault is FaultKind.HANG
    # Reserve the quota slot now, so concurrent requests cannot overshoot it.
    reserved = plan.is_ok and cfg.quota_requests is not None
    if reserved:
        st.pending_ok += 1
    # Only hung handlers are tracked: they are what would stall shutdown.
    task = asyncio.current_task() if hang else None
    if task is not None:
        st.hanging.add(task)
    st.enter()
    try:
        delay = cfg.hang_s if hang else latency_for(cfg, call.digest, call.attempt)
        if delay > 0.0:
            due = st.clock() + delay
            await asyncio.sleep(delay)
            if not hang:
                st.woke(st.clock() - due)
        # The common case skips respond(): one coroutine less per answer (the bench runs thousands a second).
        return await (answer(call, None) if plan.is_ok else respond(call))
    except asyncio.CancelledError:
        if not call.request.get(DROPPED):
            st.cancelled += 1
        raise
    finally:
        st.in_flight -= 1
        if reserved:
            st.pending_ok -= 1
        if task is not None:
            st.hanging.discard(task)


async def respond(call: Call) -> web.StreamResponse:
    """The planned answer once the upstream "returned"."""
    plan = call.plan
    if plan.status is not None:
        return r.status_error(plan.status)
    kind = plan.fault
    if kind is None or kind is FaultKind.HANG:  # a hang that outlives it is answered normally
        return await answer(call, None)
    page = r.upstream_error(kind)
    if page is not None:
        return page
    if kind is FaultKind.DISCONNECT:
        drop_connection(call.request)
    if kind is FaultKind.ERROR_IN_200 and call.body.get("stream") is not True:
        return r.json_response(200, r.ERROR_IN_200_BODY)
    return await answer(call, kind)  # truncated, empty_choices, stream_cut, error_in_200 (stream)


def drop_connection(request: web.Request) -> None:
    """Close the connection without a response (always raises CancelledError)."""
    request[DROPPED] = True
    transport = request.transport
    if transport is not None:
        transport.close()
    # aiohttp treats a CancelledError out of the handler as "client went away":
    # no response is written and nothing is logged.
    raise asyncio.CancelledError


def _completion(call: Call) -> Completion:
    plan = call.plan
    finish = plan.finish
    schema, instructed = schema_of(call.body, call.messages) if _asks_structured(call) else (None, False)
    if plan.unreadable:
        text = UNREADABLE_ANSWER
    elif schema is not None:
        text, forced = structured_text(call, schema, instructed)
        finish = forced or finish
    elif plan.answer_bytes is not None:
        text = sized_answer(call.model, call.content, plan.answer_bytes)
    else:
        text = answer_from_digest(call.model, call.content, call.digest)
    prompt, completion = usage_for(call.messages, text)
    return Completion(
        id=f"chatcmpl-{os.urandom(12).hex()}",
        created=int(time.time()),
        model=call.state.alias.get(call.model, call.model),
        answer=text,
        finish=finish,
        prompt_tokens=prompt,
        completion_tokens=completion,
    )


def _asks_structured(call: Call) -> bool:
    # cheap test first: the plain (bench) path pays one dict look-up and one scan of short system messages
    return "response_format" in call.body or any(
        isinstance(m, dict) and m.get("role") == "system" for m in call.messages
    )


async def answer(call: Call, fault: FaultKind | None) -> web.StreamResponse:
    """A success (``fault`` None) or a 200 shaped by ``fault``; JSON or SSE as asked."""
    c = _completion(call)
    if call.body.get("stream") is True:
        return await _stream(call, c, fault)
    response = r.json_response(200, completion_body(c, fault))
    if fault is None:
        call.state.record_ok(call.key, c.prompt_tokens, c.completion_tokens)
    return response


async def _stream(call: Call, c: Completion, fault: FaultKind | None) -> web.StreamResponse:
    opts = call.body.get("stream_options")
    include_usage = call.config.stream_usage and isinstance(opts, dict) and opts.get("include_usage") is True
    events = stream_events(c, fault, include_usage)
    resp = web.StreamResponse(status=200, headers={"Cache-Control": "no-cache"})
    resp.content_type = "text/event-stream"
    resp.charset = "utf-8"
    await resp.prepare(call.request)
    # One write: the client's SSE parser splits events, and it keeps the handler cheap.
    await resp.write(b"".join(events))
    if fault is FaultKind.TRUNCATED:
        # Mid-stream connection loss: the chunked body never terminates.
        drop_connection(call.request)
    await resp.write_eof()
    if fault is None:
        call.state.record_ok(call.key, c.prompt_tokens, c.completion_tokens)
    return resp
