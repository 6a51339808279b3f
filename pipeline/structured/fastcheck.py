"""A compiled validity test for the schemas docpipe supports: the fast path before ``jsonschema``.

``jsonschema`` is the judge, but it takes ~300 µs to validate one invoice-shaped
answer on this project's machine; the issue's budget for extraction, validation
and column building together is 30 µs a row. :func:`compile_check` turns a schema
into the source of one Python function for the keywords listed below (as
fastjsonschema does; nested closures, one call per keyword, took 15 µs of the
budget for the invoice) and returns None for a schema using anything else (then
every answer goes to ``jsonschema``).

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


def compile_check(schema: Mapping[str, Any]) -> Check | None:
    """A fast validity test for ``schema``, or None when it uses a keyword not listed above."""
    try:
        return _Generator(schema).function(schema, ())
    except (_Unsupported, RecursionError, TypeError, ValueError, re.error, SyntaxError):
        return None  # SyntaxError: nesting deeper than Python's 20 loops compiles to nothing


class _Generator:
    """Writes one function per schema (and per anyOf option and $ref target): straight-line
    ``if <wrong>: return False`` tests, loops for arrays, constants in its namespace."""

    def __init__(self, root: Mapping[str, Any]) -> None:
        self.root = root
        self.names: dict[str, Any] = {"check_date": check_date, "check_datetime": check_datetime,
                                      "_MISSING": _MISSING}  # fmt: skip
        self.count = 0

    def const(self, value: Any) -> str:
        """A name in the generated code's namespace for ``value``."""
        self.count += 1
        name = f"_c{self.count}"
        self.names[name] = value
        return name

    def var(self) -> str:
        """A fresh local variable name (nested objects must not overwrite their parent's)."""
        self.count += 1
        return f"v{self.count}"

    def function(self, node: Any, seen: tuple[str, ...]) -> Check:
        name = self.const(None)
        lines = [f"def {name}(v0):", *self.body(node, "v0", 1, seen), "    return True"]
        exec(compile("\n".join(lines), "<fastcheck>", "exec"), self.names)  # our own code, from the schema's keywords
        check: Check = self.names[name]
        return check

    def body(self, node: Any, v: str, depth: int, seen: tuple[str, ...]) -> list[str]:
        """Lines (indented ``depth`` levels) that return False when ``v`` breaks ``node``."""
        if node is True or node == {}:
            return []
        if not isinstance(node, Mapping) or set(node) - _KNOWN:
            raise _Unsupported
        pad = "    " * depth
        out = [pad + line for line in self._scalars(node, v)]
        if "$ref" in node:
            out.append(f"{pad}if not {self.const(self._ref(node['$ref'], seen))}({v}): return False")
        if "anyOf" in node:
            options = " or ".join(f"{self.const(self.function(o, seen))}({v})" for o in node["anyOf"])
            out.append(f"{pad}if not ({options or 'False'}): return False")
        out += self._array(node, v, depth, seen)
        out += self._object(node, v, depth, seen)
        return out

    def _ref(self, ref: Any, seen: tuple[str, ...]) -> Check:
        if not isinstance(ref, str) or not ref.startswith("#/") or ref in seen:
            raise _Unsupported
        target: Any = self.root
        for part in ref[2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        return self.function(target, (*seen, ref))

    def _scalars(self, node: Mapping[str, Any], v: str) -> list[str]:
        out = []
        t = node.get("type")
        if t is not None:
            names = [t] if isinstance(t, str) else list(t)
            if any(n not in _TYPES for n in names):
                raise _Unsupported
            out.append(f"if not ({' or '.join(_TYPES[n].format(v=v) for n in names)}): return False")
        if "enum" in node:
            allowed = list(node["enum"])
            try:  # == would let True equal 1: compare (type, value); a list or object is never among scalars
                table = self.const(frozenset((type(a), a) for a in allowed))
                out.append(
                    f"if type({v}) is list or type({v}) is dict or (type({v}), {v}) not in {table}: return False"
                )
            except TypeError:  # a list or an object in the enum
                any_of = f"any(type({v}) is type(a) and {v} == a for a in {self.const(allowed)})"
                out.append(f"if not {any_of}: return False")
        if "const" in node:
            c = self.const(node["const"])
            out.append(f"if not (type({v}) is type({c}) and {v} == {c}): return False")
        fmt = node.get("format")
        if fmt in ("date", "date-time"):
            test = "check_date" if fmt == "date" else "check_datetime"
            out.append(f"if {self._when(node, 'string', v)}not {test}({v}): return False")
        return out + self._bounds(node, v)

    def _bounds(self, node: Mapping[str, Any], v: str) -> list[str]:
        out = []
        number, string = self._when(node, "number", v), self._when(node, "string", v)
        for key, op in (("minimum", ">="), ("maximum", "<="), ("exclusiveMinimum", ">"), ("exclusiveMaximum", "<")):
            if key in node:
                bound = node[key]
                if type(bound) not in (int, float):
                    raise _Unsupported
                out.append(f"if {number}not {v} {op} {self.const(bound)}: return False")
        for key, op in (("minLength", ">="), ("maxLength", "<=")):
            if key in node:
                out.append(f"if {string}not len({v}) {op} {self.const(int(node[key]))}: return False")
        if "pattern" in node:
            pattern = self.const(re.compile(node["pattern"]))
            out.append(f"if {string}{pattern}.search({v}) is None: return False")
        return out

    def _array(self, node: Mapping[str, Any], v: str, depth: int, seen: tuple[str, ...]) -> list[str]:
        pad, array = "    " * depth, self._when(node, "array", v)
        out = []
        for key, op in (("minItems", ">="), ("maxItems", "<=")):
            if key in node:
                out.append(f"{pad}if {array}not len({v}) {op} {self.const(int(node[key]))}: return False")
        if "items" in node:
            item = self.var()
            if array:
                inner = self.body(node["items"], item, depth + 2, seen)
                out += [f"{pad}if {array[:-5]}:", f"{pad}    for {item} in {v}:", *inner] if inner else []
            else:
                inner = self.body(node["items"], item, depth + 1, seen)
                out += [f"{pad}for {item} in {v}:", *inner] if inner else []
        return out

    def _object(self, node: Mapping[str, Any], v: str, depth: int, seen: tuple[str, ...]) -> list[str]:
        props = node.get("properties", {})
        required = list(node.get("required", ()))
        extra = node.get("additionalProperties", True)
        if extra is not True and extra is not False:
            raise _Unsupported
        if not isinstance(props, Mapping) or not (props or required or extra is False):
            return []
        guard = self._when(node, "object", v)
        d = depth + 1 if guard else depth  # inside "if type(v) is dict:" unless the type says so already
        pad = "    " * d
        out = []
        if required:
            out.append(f"{pad}if not {self.const(frozenset(required))} <= {v}.keys(): return False")
        if extra is False:
            out.append(f"{pad}if not {v}.keys() <= {self.const(frozenset(props))}: return False")
        for key, sub in props.items():
            x = self.var()
            if key in required:  # present: the required test above passed
                inner = self.body(sub, x, d, seen)
                out += [f"{pad}{x} = {v}[{key!r}]", *inner] if inner else []
            else:
                inner = self.body(sub, x, d + 1, seen)
                get = [f"{pad}{x} = {v}.get({key!r}, _MISSING)", f"{pad}if {x} is not _MISSING:"]
                out += [*get, *inner] if inner else []
        if not out or not guard:
            return out
        return ["    " * depth + f"if {guard[:-5]}:", *out]

    @staticmethod
    def _when(node: Mapping[str, Any], kind: str, v: str) -> str:
        """``"<v is of kind> and "``, or "" when the node's type says so already (tested before)."""
        t = node.get("type")
        if t == kind or (kind == "number" and t == "integer"):
            return ""
        test = {"string": "type({v}) is str", "array": "type({v}) is list", "object": "type({v}) is dict",
                "number": "(type({v}) is int or type({v}) is float)"}[kind]  # fmt: skip
        return test.format(v=v) + " and "


_MISSING = object()
#: one type each, as fast as Python tests it (type(v) is ..., not isinstance: bool is an int)
_TYPES: dict[str, str] = {
    "string": "type({v}) is str",
    "boolean": "{v} is True or {v} is False",
    "object": "type({v}) is dict",
    "array": "type({v}) is list",
    "null": "{v} is None",
    "number": "type({v}) is int or type({v}) is float",
    "integer": "type({v}) is int or (type({v}) is float and {v}.is_integer())",
}
