"""The structured-answer fault kinds and response_format behaviours (see :mod:`.structured`),
kept apart like :mod:`.kinds` so the configuration validates against them without
importing the planner."""

from __future__ import annotations

from enum import StrEnum


class SchemaFault(StrEnum):
    """One way a model gets a structured answer wrong (or merely untidy)."""

    PROSE = "prose"  # no JSON at all
    FENCED = "fenced"  # a sentence, then the JSON in a ```json fence (valid once extracted)
    SENTENCE = "sentence"  # a sentence, then the JSON
    VIOLATING = "violating"  # JSON whose first property has the wrong type
    TRUNCATED = "truncated"  # half the JSON, finish_reason = length


SCHEMA_FAULTS: tuple[str, ...] = tuple(k.value for k in SchemaFault)
#: what the gateway does with response_format: takes it, rejects it (400), or ignores it (prose)
RESPONSE_FORMAT_SUPPORT: tuple[str, ...] = ("accept", "reject", "ignore")
