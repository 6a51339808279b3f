"""Success bodies, pure: the chat.completion object and the SSE event list a stream
sends, including the 200-shaped faults (empty choices, error event, idle cut,
truncation)."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import orjson

from .kinds import FaultKind
from .responses import DONE, ERROR_IN_200_BODY

#: Characters per streamed delta at most. Real gateways send token-sized deltas; a
#: multi-megabyte answer in one SSE line would exceed any client's line limit.
MAX_DELTA_CHARS = 4096


class Completion(NamedTuple):
    """One answer as the gateway reports it (a NamedTuple: immutable, and built per
    request at half a frozen dataclass's cost)."""

    id: str
    created: int
    model: str  # the model the gateway reports (after aliasing)
    answer: str
    finish: str
    prompt_tokens: int
    completion_tokens: int

    def usage(self) -> dict[str, int]:
        """The OpenAI usage object."""
        total = self.prompt_tokens + self.completion_tokens
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens, "total_tokens": total}


def completion_body(c: Completion, fault: FaultKind | None) -> bytes:
    """The non-streaming body; ``empty_choices`` empties choices, ``truncated``/``stream_cut`` cut it in half."""
    choice = {"index": 0, "message": {"role": "assistant", "content": c.answer}, "finish_reason": c.finish}
    body = {"id": c.id, "object": "chat.completion", "created": c.created, "model": c.model, "choices": [choice],
            "usage": c.usage()}  # fmt: skip
    if fault is None:  # the common case first: no enum look-ups on the hot path
        return orjson.dumps(body)
    if fault is FaultKind.EMPTY_CHOICES:
        body["choices"] = []
    payload = orjson.dumps(body)
    if fault in (FaultKind.TRUNCATED, FaultKind.STREAM_CUT):
        return payload[: len(payload) // 2]
    return payload


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _chunk(c: Completion, choices: list[dict[str, Any]], **extra: Any) -> bytes:
    return _event({"id": c.id, "object": "chat.completion.chunk", "created": c.created, "model": c.model,
                   "choices": choices, **extra})  # fmt: skip


def _delta(c: Completion, delta: dict[str, Any], finish: str | None) -> bytes:
    return _chunk(c, [{"index": 0, "delta": delta, "finish_reason": finish}])


def pieces(answer: str) -> list[str]:
    """The answer in about four deltas, none over :data:`MAX_DELTA_CHARS` characters."""
    step = min(max(1, math.ceil(len(answer) / 4)), MAX_DELTA_CHARS)
    return [answer[i : i + step] for i in range(0, len(answer), step)]


def stream_events(c: Completion, fault: FaultKind | None, include_usage: bool) -> list[bytes]:
    """The SSE events of a streamed answer, shaped by a 200-type fault."""
    if fault is FaultKind.ERROR_IN_200:
        # new-api reports upstream failures after the stream has started as an error event.
        return [b"data: " + ERROR_IN_200_BODY + b"\n\n", DONE]
    if fault is FaultKind.EMPTY_CHOICES:
        return [_chunk(c, []), DONE]
    events = [_delta(c, {"role": "assistant", "content": ""}, None)]
    events.extend(_delta(c, {"content": p}, None) for p in pieces(c.answer))
    if fault is FaultKind.STREAM_CUT:
        return [*events, DONE]  # the gateway's idle cut-off: [DONE] without any finish_reason
    if fault is FaultKind.TRUNCATED:
        return events[: max(1, len(events) // 2)]
    events.append(_delta(c, {}, c.finish))
    if include_usage:
        events.append(_chunk(c, [], usage=c.usage()))
    events.append(DONE)
    return events
