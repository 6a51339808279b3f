"""A compiled validity test for the schemas docpipe supports: the fast path before ``jsonschema``.

``jsonschema`` is the judge, but it takes ~300 µs to validate one invoice-shaped
answer on this project's machine; the issue's budget for extraction, validation
and column building together is 30 µs a row. :func:`compile_check` turns a schema
into nested closures for the keywords listed below and returns None for a schema
using anything else (then every answer goes to ``jsonschema``).

Only "valid" is trusted: the closures are at least as strict as the keywords'
definitions, so an answer they pass is one ``jsonschema`` passes. An answer they
fail goes to ``jsonschema`` for the verdict and its error message (failures are
rare, and a re-ask costs a request anyway).

Keywords: type (one or a list), enum, const, format (date, date-time; other
formats are not checked, as by the validator docpipe builds), minimum, maximum,
exclusiveMinimum, exclusiveMaximum, minLength, maxLength, pattern, items,
minItems, maxItems, properties, required, additionalProperties (true/false),
local $ref, anyOf; annotations (title, description, default, examples, ...) are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import date
from typing import Any

from .spec import parse_datetime

Check = Callable[[Any], bool]

_ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$schema", "$id", "$comment",
                          "deprecated", "readOnly", "writeOnly", "$defs", "definitions"})  # fmt: skip
_KNOWN = frozenset({"type", "enum", "const", "format", "minimum", "maximum", "exclusiveMinimum",
                    "exclusiveMaximum", "minLength", "maxLength", "pattern", "items", "minItems", "maxItems",
                    "properties", "required", "additionalProperties", "$ref", "anyOf"}) | _ANNOTATIONS  # fmt: skip


class _Unsupported(Exception):
    pass


def check_date(value: object) -> bool:
    """The ``date`` format: a full-date (YYYY-MM-DD) that exists."""
    if not isinstance(value, str):
        return True
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return len(value) == 10


def check_datetime(value: object) -> bool:
    """The ``date-time`` format, as :func:`~pipeline.structured.spec.parse_datetime` reads it."""
    return not isinstance(value, str) or parse_datetime(value) is not None


def _is_type(name: str, v: Any) -> bool:
    if name == "integer":
        return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())
    if name == "number":
        return isinstance(v, int | float) and not isinstance(v, bool)
    if name == "string":
        return isinstance(v, str)
    if name == "boolean":
        return isinstance(v, bool)
    if name == "object":
        return isinstance(v, dict)
    if name == "array":
        return isinstance(v, list)
    if name == "null":
        return v is None
    raise _Unsupported


def compile_check(schema: Mapping[str, Any]) -> Check | None:
    """A fast validity test for ``schema``, or None when it uses a keyword not listed above."""
    try:
        return _Compiler(schema).compile(schema, ())
    except (_Unsupported, RecursionError, TypeError, ValueError, re.error):
        return None


class _Compiler:
    def __init__(self, root: Mapping[str, Any]) -> None:
        self.root = root

    def compile(self, node: Any, seen: tuple[str, ...]) -> Check:
        if node is True or node == {}:
            return lambda v: True
        if not isinstance(node, Mapping) or set(node) - _KNOWN:
            raise _Unsupported
        checks: list[Check] = []
        if "$ref" in node:
            checks.append(self._ref(node["$ref"], seen))
        if "anyOf" in node:
            options = [self.compile(o, seen) for o in node["anyOf"]]
            checks.append(lambda v: any(o(v) for o in options))
        checks += _scalars(node)
        checks += self._containers(node, seen)
        if len(checks) == 1:
            return checks[0]
        if len(checks) == 2:
            first, second = checks
            return lambda v: first(v) and second(v)
        return lambda v: all(c(v) for c in checks)

    def _ref(self, ref: Any, seen: tuple[str, ...]) -> Check:
        if not isinstance(ref, str) or not ref.startswith("#/") or ref in seen:
            raise _Unsupported
        target: Any = self.root
        for part in ref[2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        return self.compile(target, (*seen, ref))

    def _containers(self, node: Mapping[str, Any], seen: tuple[str, ...]) -> list[Check]:
        checks: list[Check] = []
        if "items" in node:
            item = self.compile(node["items"], seen)
            checks.append(lambda v: type(v) is not list or all(map(item, v)))
        lo, hi = node.get("minItems"), node.get("maxItems")
        if lo is not None or hi is not None:
            checks.append(lambda v: not isinstance(v, list) or ((lo is None or len(v) >= lo) and
                                                                (hi is None or len(v) <= hi)))  # fmt: skip
        props = {k: self.compile(s, seen) for k, s in node.get("properties", {}).items()}
        required = list(node.get("required", ()))
        extra = node.get("additionalProperties", True)
        if extra is not True and extra is not False:
            raise _Unsupported
        if props or required or extra is False:
            checks.append(_object(props, required, closed=extra is False))
        return checks


def _object(props: dict[str, Check], required: list[str], *, closed: bool) -> Check:
    items = list(props.items())

    def check(v: Any) -> bool:
        if not isinstance(v, dict):
            return True
        if any(k not in v for k in required):
            return False
        if closed and any(k not in props for k in v):
            return False
        for k, c in items:  # noqa: SIM110 - a plain loop: half the cost of all() over a generator here
            if k in v and not c(v[k]):
                return False
        return True

    return check


def _scalars(node: Mapping[str, Any]) -> list[Check]:
    checks: list[Check] = []
    t = node.get("type")
    if t is not None:
        names = [t] if isinstance(t, str) else list(t)
        checks.append(_type_check(names))
    if "enum" in node:
        allowed = list(node["enum"])
        # == would let True equal 1; the fast path compares type and value
        checks.append(lambda v: any(type(v) is type(a) and v == a for a in allowed))
    if "const" in node:
        const = node["const"]
        checks.append(lambda v: type(v) is type(const) and v == const)
    fmt = node.get("format")
    if fmt == "date":
        checks.append(check_date)
    elif fmt == "date-time":
        checks.append(check_datetime)
    checks += _bounds(node)
    return checks


def _bounds(node: Mapping[str, Any]) -> list[Check]:
    checks: list[Check] = []
    num = [(node.get(k), op) for k, op in (("minimum", _ge), ("maximum", _le), ("exclusiveMinimum", _gt),
                                          ("exclusiveMaximum", _lt)) if k in node]  # fmt: skip
    for bound, op in num:
        checks.append(_bound(bound, op))
    lo, hi = node.get("minLength"), node.get("maxLength")
    if lo is not None or hi is not None:
        checks.append(lambda v: not isinstance(v, str) or ((lo is None or len(v) >= lo) and
                                                           (hi is None or len(v) <= hi)))  # fmt: skip
    if "pattern" in node:
        pattern = re.compile(node["pattern"])
        checks.append(lambda v: not isinstance(v, str) or pattern.search(v) is not None)
    return checks


#: one type each, as fast as Python tests it (type(v) is ..., not isinstance: bool is an int)
_TYPE_CHECKS: dict[str, Check] = {
    "string": lambda v: type(v) is str,
    "boolean": lambda v: v is True or v is False,
    "object": lambda v: type(v) is dict,
    "array": lambda v: type(v) is list,
    "null": lambda v: v is None,
    "number": lambda v: type(v) is int or type(v) is float,
    "integer": lambda v: type(v) is int or (type(v) is float and v.is_integer()),
}


def _type_check(names: list[Any]) -> Check:
    if any(n not in _TYPE_CHECKS for n in names):
        raise _Unsupported
    if len(names) == 1:
        return _TYPE_CHECKS[names[0]]
    if len(names) == 2 and "null" in names:
        other = _TYPE_CHECKS[names[0] if names[1] == "null" else names[1]]
        return lambda v: v is None or other(v)
    options = [_TYPE_CHECKS[n] for n in names]
    return lambda v: any(o(v) for o in options)


def _bound(bound: Any, op: Callable[[float, float], bool]) -> Check:
    return lambda v: not _is_type("number", v) or op(v, bound)


def _ge(v: float, b: float) -> bool:
    return v >= b


def _le(v: float, b: float) -> bool:
    return v <= b


def _gt(v: float, b: float) -> bool:
    return v > b


def _lt(v: float, b: float) -> bool:
    return v < b
