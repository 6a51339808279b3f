"""Structured answers (issue 11): schema-shaped JSON, deterministically, and its faults.

A request asks for structured output in one of two forms, and the simulator reads
the schema from either:

- ``response_format: {"type": "json_schema", "json_schema": {"schema": {...}}}``;
- the instruction form: a system message containing ``JSON Schema`` followed by
  the schema as JSON.

The answer is :func:`structured_answer_for` of the model, the schema and the
*first* user message (the row's content), so a re-ask (whose last user message is
the correction) gets the same values; a test computes them with the same call.

``response_format`` (SimConfig) says what the gateway does with the parameter:
``accept``; ``reject`` (400 naming it, like channels that do not support it: the
:func:`response_format` gate); ``ignore`` (a prose answer when the request has no instruction).

Faults on the answer (``schema_fault_rate`` / ``schema_fault_kinds``, first answer
only, or ``[[sim:schema_fault=KIND]]`` / ``KIND*N`` in the row's content: the first
N answers of the conversation, counting re-asks and re-sends):
``prose`` (no JSON), ``fenced`` (a sentence and a ```json fence: valid once
extracted), ``sentence`` (a sentence, then the JSON), ``violating`` (the first
property of the wrong type), ``truncated`` (half the JSON, ``finish_reason =
length``).
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from . import responses as r
from .plan import attempt_hash
from .structured_kinds import SchemaFault

if TYPE_CHECKING:
    from .gates import Call

_DECODER = json.JSONDecoder()
_MARKER = "JSON Schema"


def schema_of(body: dict[str, Any], messages: list[Any]) -> tuple[dict[str, Any] | None, bool]:
    """(the schema the request asks for, whether it came as an instruction), or (None, False)."""
    for m in messages:
        if isinstance(m, dict) and m.get("role") == "system" and isinstance(m.get("content"), str):
            text: str = m["content"]
            at = text.find(_MARKER)
            start = text.find("{", at) if at >= 0 else -1
            if start >= 0:
                try:
                    found, _end = _DECODER.raw_decode(text, start)
                except ValueError:
                    continue
                if isinstance(found, dict):
                    return found, True
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and isinstance(fmt.get("json_schema"), dict):
        schema = fmt["json_schema"].get("schema")
        if isinstance(schema, dict):
            return schema, False
    return None, False


def response_format(call: Call) -> web.StreamResponse | None:
    """400 naming response_format when the gateway rejects it (``response_format = "reject"``)."""
    if call.config.response_format == "reject" and "response_format" in call.body:
        call.state.count("response_format_400")
        message = "Unsupported parameter: 'response_format' is not supported with this model."
        return r.json_response(400, r.error_body(message, "invalid_request_error", param="response_format",
                                                 code="unsupported_parameter"))  # fmt: skip
    return None


def first_user_content(messages: list[Any]) -> str:
    """The first user message's text: the row's content, also in a re-ask."""
    for m in messages:
        if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str):
            return str(m["content"])
    return ""


def structured_text(call: Call, schema: dict[str, Any], instructed: bool) -> tuple[str, str | None]:
    """The answer text for a structured request, and the finish_reason it forces (or None)."""
    content = first_user_content(call.messages)
    if call.config.response_format == "ignore" and not instructed:
        return f"I read the document at {content[:60]}; it is an invoice.", None
    value = structured_answer_for(call.model, content, schema)
    fault = _fault(call, content)
    if fault is None:
        return orjson.dumps(value).decode(), None
    call.state.count(f"schema_{fault.value}")
    return shaped(value, schema, fault)


def _fault(call: Call, content: str) -> SchemaFault | None:
    turn = call.attempt - 1 + sum(1 for m in call.messages if isinstance(m, dict) and m.get("role") == "assistant")
    directive = _directive(content)
    if directive is not None:
        kind, times = directive
        return kind if turn < times else None
    cfg = call.config
    if turn == 0 and cfg.schema_fault_rate > 0.0:
        digest = hashlib.blake2b(content.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        u, k, _ = attempt_hash(cfg.seed, digest + b"schema", 1)
        if u < cfg.schema_fault_rate:
            return SchemaFault(cfg.schema_fault_kinds[k % len(cfg.schema_fault_kinds)])
    return None


def _directive(content: str) -> tuple[SchemaFault, int] | None:
    tag = "[[sim:schema_fault="
    at = content.find(tag)
    if at < 0:
        return None
    value = content[at + len(tag) : content.find("]]", at)]
    kind, _, times = value.partition("*")
    return SchemaFault(kind), int(times) if times else 1


def shaped(value: dict[str, Any], schema: dict[str, Any], fault: SchemaFault) -> tuple[str, str | None]:
    """The answer ``value`` as the ``fault`` writes it."""
    text = orjson.dumps(value).decode()
    if fault is SchemaFault.FENCED:
        return "Here is the extracted data:\n```json\n" + json.dumps(value, indent=2) + "\n```", None
    if fault is SchemaFault.SENTENCE:
        return "Sure! Here is the JSON you asked for: " + text, None
    if fault is SchemaFault.TRUNCATED:
        return text[: len(text) // 2], "length"
    if fault is SchemaFault.PROSE:
        scalars = [f"{k} is {v}" for k, v in value.items() if isinstance(v, str | int | float)]
        return "I read the document. " + "; ".join(scalars) + ".", None
    first = next(iter(value))
    sub = _resolve(schema, schema.get("properties", {}).get(first, {}))
    broken = dict(value)
    broken[first] = 12345 if "string" in _types(schema, sub) else "n/a"
    return orjson.dumps(broken).decode(), None


# ----------------------------------------------------------------------------- values


def structured_answer_for(model: str, content: str, schema: dict[str, Any]) -> dict[str, Any]:
    """The JSON value the simulator means for this request: every property of the schema,
    each a deterministic function of (model, content, its path)."""
    seed = f"{model}\x00{content}"
    value = _value(schema, schema, seed, "")
    return value if isinstance(value, dict) else {}


def _h(seed: str, path: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}\x00{path}".encode("utf-8", "surrogatepass"),
                                          digest_size=8).digest(), "big")  # fmt: skip


def _resolve(root: dict[str, Any], node: Any) -> dict[str, Any]:
    while isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            target: Any = root
            for part in ref[2:].split("/"):
                target = target.get(part, {}) if isinstance(target, dict) else {}
            node = target
            continue
        options = node.get("anyOf")
        if isinstance(options, list):
            rest = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
            node = rest[0] if rest else {}
            continue
        return node
    return {}


def _types(root: dict[str, Any], node: dict[str, Any]) -> set[str]:
    t = node.get("type")
    if isinstance(t, list):
        return {str(x) for x in t if x != "null"}
    if t is None and "enum" in node:
        return {"string"} if all(isinstance(v, str) for v in node["enum"]) else {"number"}
    return {str(t)}


def _value(root: dict[str, Any], raw: Any, seed: str, path: str) -> Any:
    node = _resolve(root, raw)
    h = _h(seed, path)
    kind = next(iter(_types(root, node)))
    if node.get("enum"):
        return node["enum"][h % len(node["enum"])]
    if kind == "object":
        return {k: _value(root, v, seed, f"{path}/{k}") for k, v in node.get("properties", {}).items()}
    if kind == "array":
        return [_value(root, node.get("items", {}), seed, f"{path}/{i}") for i in range(1 + h % 3)]
    return _scalar(kind, node, h, path)


def _scalar(kind: str, node: dict[str, Any], h: int, path: str) -> Any:
    if kind == "integer":
        lo = int(node.get("minimum", 0))
        return lo + h % 1000
    if kind == "number":
        return round(float(node.get("minimum", 0)) + (h % 10_000_000) / 100, 2)
    if kind == "boolean":
        return bool(h & 1)
    if node.get("format") == "date":
        return (date(2020, 1, 1) + timedelta(days=h % 2500)).isoformat()
    if node.get("format") == "date-time":
        t = datetime(2020, 1, 1, tzinfo=UTC) + timedelta(seconds=h % 200_000_000)
        return t.isoformat().replace("+00:00", "Z")
    name = path.rsplit("/", 1)[-1] or "value"
    return f"{name}-{h % 0xFFFFFF:06x} é"
