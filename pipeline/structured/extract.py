"""Find the JSON in an answer and check it against the schema.

Models asked for JSON answer in three shapes, all accepted: the JSON alone, the
JSON in a Markdown fence (```json ... ```), or a sentence and then the JSON.
:func:`find_json` tries them in that order (the first is the fast path: one
``orjson.loads``). :class:`Checker` validates what it found with the
``jsonschema`` library (after a compiled fast path, :mod:`.fastcheck`, whose "valid"
is trusted and whose "invalid" is judged again by the library) (draft 2020-12, with ``date`` and ``date-time`` formats
checked, so a value that would become a null column is re-asked instead) and
returns a :class:`Verdict`: ok, or why not, with the first validation error as
one line (``$.total: 'abc' is not of type 'number'``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from .fastcheck import check_date, check_datetime, compile_check

_FENCE = re.compile(r"```[A-Za-z]*[ \t]*\n?(.*?)```", re.S)
_DECODER = json.JSONDecoder()
#: how many "{" positions a sentence-then-JSON answer is tried from
_MAX_STARTS = 20
_MAX_ERROR = 300


class Problem(StrEnum):
    """Why an answer is not a valid structured answer."""

    PROSE = "prose"  # no JSON object in it at all
    TRUNCATED = "truncated"  # finish_reason = length and no valid JSON
    INVALID = "invalid"  # JSON, but it does not validate


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one answer is: ``value`` when valid, else the problem and a one-line error."""

    value: Any = None
    problem: Problem | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


def find_json(text: str | None) -> Any:
    """The JSON object in ``text`` (alone, fenced, or after a sentence), or None."""
    if not text:
        return None
    s = text.strip()
    if s[:1] == "{":
        try:
            value = orjson.loads(s)
        except orjson.JSONDecodeError:
            pass
        else:
            return value if isinstance(value, dict) else None
    for m in _FENCE.finditer(s):
        found = _decode_at(m.group(1).strip(), 0)
        if found is not None:
            return found
    start, tries = s.find("{"), 0
    while start >= 0 and tries < _MAX_STARTS:
        found = _decode_at(s, start)
        if found is not None:
            return found
        start, tries = s.find("{", start + 1), tries + 1
    return None


def _decode_at(s: str, start: int) -> dict[str, Any] | None:
    try:
        value, _end = _DECODER.raw_decode(s, start)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class Checker:
    """Validates answers against one schema (the validator is built once)."""

    def __init__(self, schema: Mapping[str, Any], *, fast: bool = True) -> None:
        from jsonschema import Draft202012Validator, FormatChecker

        formats = FormatChecker(())  # our own checks only, registered on this instance alone
        formats.checks("date")(check_date)
        formats.checks("date-time")(check_datetime)
        self._validator = Draft202012Validator(schema, format_checker=formats)
        # None: every answer goes to jsonschema (a schema the fast path does not cover, or fast=False)
        self._fast = compile_check(schema) if fast else None

    def check(self, answer: str | None, finish_reason: str | None = None) -> Verdict:
        """The verdict on one answer."""
        value = find_json(answer)
        cut = finish_reason == "length"
        if value is None:
            if cut:
                return Verdict(problem=Problem.TRUNCATED, error="the answer was cut short (finish_reason=length)")
            if "{" in (answer or ""):
                return Verdict(problem=Problem.INVALID, error="the answer holds no complete JSON object")
            return Verdict(problem=Problem.PROSE, error="no JSON object in the answer")
        error = None if self._fast is not None and self._fast(value) else self.first_error(value)
        if error is None:
            return Verdict(value=value)
        return Verdict(problem=Problem.TRUNCATED if cut else Problem.INVALID, error=error)

    def first_error(self, value: Any) -> str | None:
        """The first validation error of ``value`` as one line, or None when it is valid."""
        errors = sorted(self._validator.iter_errors(value), key=lambda e: (list(map(str, e.absolute_path)), e.message))
        if not errors:
            return None
        e = errors[0]
        where = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e.absolute_path)
        text = " ".join(f"{where}: {e.message}".split())
        return text if len(text) <= _MAX_ERROR else text[: _MAX_ERROR - 1] + "…"
