"""The answer schema: load it, refuse what docpipe cannot turn into columns, map it to Arrow.

A schema comes in as a path to a JSON file, a dict, or a class with a
``model_json_schema()`` method (a pydantic v2 model; pydantic itself is never
imported, so it is not a dependency). :func:`load_schema` returns the schema as a
plain dict (what ``JobConfig.schema`` holds, what ``_run.json`` and the Parquet
metadata store); :func:`compile_spec` turns it into a :class:`Spec`: one
:class:`Column` per top-level property, with its Arrow type, its pandas dtype and
a converter from a JSON value to what ``pa.array`` takes.

Supported (draft 2020-12), and the column each gives::

    integer -> int64 (pandas Int64)        number  -> float64
    boolean -> bool (pandas boolean)       string  -> string
    string + format date -> date32         string + format date-time -> timestamp[us, UTC]
    enum (strings) -> string               array of scalars -> list<...>
    array of objects -> list<struct<...>>  object -> struct<...>

``type: [T, "null"]`` and ``anyOf: [T, {"type": "null"}]`` (what pydantic writes for
``Optional``) are nullable T; local ``$ref`` into ``$defs``/``definitions`` is
followed (not recursively). Everything else that changes a value's shape
(``oneOf``, ``allOf``, other ``anyOf``, ``not``, ``if``, ``prefixItems``,
``patternProperties``, other type unions, remote or recursive ``$ref``) is refused
with the JSON path of the construct, e.g. ``/properties/total/oneOf``. Keywords
that only constrain values (``minimum``, ``pattern``, ``maxLength``, ...) are
passed to the validator and do not change the column.

Every column may be null: a failed row, or an optional property left out.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

#: Converts one JSON value to what ``pa.array(..., type=column.type)`` accepts; None when it does not fit.
Convert = Callable[[Any], Any]

#: The Parquet/Arrow schema metadata key holding the JSON Schema.
METADATA_KEY = b"docpipe.answer_schema"

_SHAPE_KEYWORDS = ("oneOf", "allOf", "not", "if", "then", "else", "prefixItems", "patternProperties",
                   "dependentSchemas", "unevaluatedProperties", "contains")  # fmt: skip
_SCALARS = ("string", "integer", "number", "boolean")


class SchemaProblem(ValueError):
    """A schema docpipe refuses; the message starts with the JSON path of the problem."""


@dataclass(frozen=True, slots=True)
class Column:
    """One top-level property and the results column it becomes."""

    prop: str  # the property name in the answer
    name: str  # the column name (``answer_<prop>`` when ``prop`` names a standard column)
    type: pa.DataType
    pandas_dtype: str | None  # a nullable pandas dtype the Parquet metadata names (Int64, boolean)
    convert: Convert


@dataclass(frozen=True)
class Spec:
    """A checked answer schema: the dict as given, and its columns."""

    schema: dict[str, Any]
    columns: tuple[Column, ...]
    required: frozenset[str]

    def fields(self) -> list[pa.Field[Any]]:
        """The Arrow fields of the answer columns, in property order."""
        return [pa.field(c.name, c.type) for c in self.columns]

    def pandas_dtypes(self) -> dict[str, str]:
        """Column name -> nullable pandas dtype, for the columns that need one."""
        return {c.name: c.pandas_dtype for c in self.columns if c.pandas_dtype}

    def renamed(self, taken: Iterable[str]) -> Spec:
        """This spec with every column whose name is in ``taken`` renamed ``answer_<name>``."""
        busy = set(taken)
        cols = tuple(
            Column(c.prop, f"answer_{c.name}", c.type, c.pandas_dtype, c.convert) if c.name in busy else c
            for c in self.columns
        )
        return Spec(self.schema, cols, self.required)


# ----------------------------------------------------------------------------- loading


def load_schema(value: Any) -> dict[str, Any]:
    """The JSON Schema in ``value`` (path, dict, or a class with ``model_json_schema()``),
    checked; raises :class:`SchemaProblem` (a ValueError) naming what is wrong."""
    if isinstance(value, type) and callable(getattr(value, "model_json_schema", None)):
        value = getattr(value, "model_json_schema")()  # noqa: B009 - duck-typed: pydantic is not imported
    elif isinstance(value, str | os.PathLike):
        value = _read(Path(value))
    if not isinstance(value, Mapping):
        raise SchemaProblem("expected a JSON Schema: a path to a .json file, a dict or a pydantic model class")
    schema = json.loads(json.dumps(value))  # plain, JSON-able, and a copy the caller cannot change
    compile_spec(schema)
    return dict(schema)


def _read(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise SchemaProblem(f"cannot read the schema file: {why}") from None
    try:
        return json.loads(text)
    except ValueError as e:
        raise SchemaProblem(f"the schema file is not JSON: {e}") from None


def compile_spec(schema: Mapping[str, Any]) -> Spec:
    """The columns of a JSON Schema; raises :class:`SchemaProblem` with the path of what is refused."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as e:
        where = "/" + "/".join(str(p) for p in e.path) if e.path else "/"
        raise SchemaProblem(f"{where}: not a valid JSON Schema: {e.message}") from None
    root, _seen = _Resolver(schema).node(schema, "", ())
    if root.get("type") != "object" or not isinstance(root.get("properties"), Mapping) or not root["properties"]:
        raise SchemaProblem("/: the top level must be an object schema with properties (type: object)")
    resolver = _Resolver(schema)
    columns = []
    for prop, sub in root["properties"].items():
        arrow, dtype, convert = resolver.map(sub, f"/properties/{prop}", ())
        columns.append(Column(prop, prop, arrow, dtype, convert))
    required = root.get("required", [])
    return Spec(dict(schema), tuple(columns), frozenset(required if isinstance(required, list) else []))


# ----------------------------------------------------------------------------- mapping


class _Resolver:
    """Walks a schema: follows local $refs and maps each node to (Arrow type, pandas dtype, converter)."""

    def __init__(self, root: Mapping[str, Any]) -> None:
        self.root = root

    def node(self, node: Any, path: str, seen: tuple[str, ...]) -> tuple[Mapping[str, Any], tuple[str, ...]]:
        """``node`` with its $ref followed and its nullable wrapper removed, and the refs followed
        to reach it (a ref met again below is recursion); refuses shape keywords."""
        if not isinstance(node, Mapping):
            raise SchemaProblem(f"{path or '/'}: expected a schema object")
        ref = node.get("$ref")
        if isinstance(ref, str):
            if ref in seen:
                raise SchemaProblem(f"{path}/$ref: recursive reference {ref!r} is not supported")
            return self.node(self._target(ref, path), path, (*seen, ref))
        for kw in _SHAPE_KEYWORDS:
            if kw in node:
                raise SchemaProblem(f"{path}/{kw}: not supported (only a nullable anyOf [X, null] is)")
        if "anyOf" in node:
            return self.node(_non_null(node["anyOf"], f"{path}/anyOf"), path, seen)
        return node, seen

    def _target(self, ref: str, path: str) -> Any:
        if not ref.startswith("#/"):
            raise SchemaProblem(f"{path}/$ref: only local references (#/$defs/...) are supported, not {ref!r}")
        target: Any = self.root
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, Mapping) or part not in target:
                raise SchemaProblem(f"{path}/$ref: {ref!r} points nowhere")
            target = target[part]
        return target

    def map(self, raw: Any, path: str, seen: tuple[str, ...]) -> tuple[pa.DataType, str | None, Convert]:
        node, seen = self.node(raw, path, seen)
        kind = _type_of(node, path)
        if kind == "array":
            return self._array(node, path, seen)
        if kind == "object":
            return self._object(node, path, seen)
        return _scalar(kind, node.get("format"))

    def _array(self, node: Mapping[str, Any], path: str, seen: tuple[str, ...]) -> tuple[pa.DataType, None, Convert]:
        if "items" not in node or not isinstance(node["items"], Mapping):
            raise SchemaProblem(f"{path}: an array needs an items schema")
        item_type, _dtype, item = self.map(node["items"], f"{path}/items", seen)

        def convert(v: Any) -> Any:
            return [item(x) for x in v] if isinstance(v, list) else None

        return pa.list_(item_type), None, convert

    def _object(self, node: Mapping[str, Any], path: str, seen: tuple[str, ...]) -> tuple[pa.DataType, None, Convert]:
        props = node.get("properties")
        if not isinstance(props, Mapping) or not props:
            raise SchemaProblem(f"{path}: an object needs properties (free-form objects have no column type)")
        fields, converters = [], []
        for name, sub in props.items():
            t, _dtype, conv = self.map(sub, f"{path}/properties/{name}", seen)
            fields.append(pa.field(name, t))
            converters.append((name, conv))

        def convert(v: Any) -> Any:
            return {n: c(v.get(n)) for n, c in converters} if isinstance(v, dict) else None

        return pa.struct(fields), None, convert


def _non_null(options: Any, path: str) -> Any:
    if not isinstance(options, list):
        raise SchemaProblem(f"{path}: expected a list")
    rest = [o for o in options if not (isinstance(o, Mapping) and o.get("type") == "null")]
    if len(rest) != 1:
        raise SchemaProblem(f"{path}: only a nullable anyOf [X, null] is supported")
    return rest[0]


def _type_of(node: Mapping[str, Any], path: str) -> str:
    t = node.get("type")
    if isinstance(t, list):
        rest = [x for x in t if x != "null"]
        if len(rest) != 1:
            raise SchemaProblem(f"{path}/type: a union of types {t} is not supported (only [T, 'null'])")
        t = rest[0]
    if t is None and "enum" in node:
        t = _enum_type(node["enum"], path)
    if t not in (*_SCALARS, "array", "object"):
        raise SchemaProblem(f"{path}: give a type (string, integer, number, boolean, array or object), not {t!r}")
    if "enum" in node and _enum_type(node["enum"], path) != t and not (t == "number" and node["enum"]):
        raise SchemaProblem(f"{path}/enum: values do not match type {t!r}")
    return str(t)


def _enum_type(values: Any, path: str) -> str:
    kinds = {"boolean" if isinstance(v, bool) else "integer" if isinstance(v, int) else
             "number" if isinstance(v, float) else "string" if isinstance(v, str) else "other"
             for v in values if v is not None}  # fmt: skip
    if len(kinds) != 1 or "other" in kinds:
        raise SchemaProblem(f"{path}/enum: values must all be of one scalar type")
    return kinds.pop()


def _scalar(kind: str, fmt: Any) -> tuple[pa.DataType, str | None, Convert]:
    if kind == "integer":
        return pa.int64(), "Int64", _to_int
    if kind == "number":
        return pa.float64(), None, _to_float
    if kind == "boolean":
        return pa.bool_(), "boolean", _to_bool
    if fmt == "date":
        return pa.date32(), None, _to_date
    if fmt == "date-time":
        return pa.timestamp("us", tz="UTC"), None, _to_datetime
    return pa.string(), None, _to_str


def _to_int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v if -(2**63) <= v < 2**63 else None
    return int(v) if isinstance(v, float) and v.is_integer() and abs(v) < 2**63 else None


def _to_float(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _to_bool(v: Any) -> bool | None:
    return v if isinstance(v, bool) else None


def _to_str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _to_date(v: Any) -> date | None:
    try:
        return date.fromisoformat(v) if isinstance(v, str) else None
    except ValueError:
        return None


def parse_datetime(v: Any) -> datetime | None:
    """An RFC 3339 date-time as an aware UTC datetime (naive ones are taken as UTC), else None."""
    if not isinstance(v, str) or "T" not in v.upper():
        return None
    try:
        t = datetime.fromisoformat(v)
    except ValueError:
        return None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


_to_datetime = parse_datetime
