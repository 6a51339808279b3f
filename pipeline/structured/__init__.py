"""Structured answers (issue 11): a JSON Schema in, validated JSON and typed columns out.

Modules
-------
``spec``     load and check the schema (path, dict, pydantic model class); map it to Arrow columns
``extract``  find the JSON in an answer (alone, fenced, after a sentence) and validate it (jsonschema)
``fastcheck`` a compiled validity test for the supported keywords: the fast path before jsonschema
``ask``      one row's conversation (re-asks, the cut-answer retry) and the run's request mode
``columns``  the typed columns, built from the raw answers when results.parquet is compacted
``reuse``    a schema changed since the last run: stored answers that fit are kept, the rest re-asked

Where it joins the run: ``JobConfig.schema`` holds the checked schema dict
(``[output] schema``, ``--schema``, ``run(schema=...)``); the row sender hands a
structured row to :class:`Asker`; the client adds ``response_format`` or the
system instruction for each :class:`Turn`; compaction appends the columns of
:class:`Spec` after the standard ones and stores the schema in the Parquet
metadata (key ``docpipe.answer_schema``).
"""

from __future__ import annotations

from .ask import INVALID_ANSWER, MODES, Asker, Mode, Turn, instruction, rejects_response_format
from .extract import Checker, Problem, Verdict, find_json
from .spec import METADATA_KEY, Column, SchemaProblem, Spec, compile_spec, load_schema


def __getattr__(name: str) -> object:
    """``answer_columns`` on first use: ``columns`` imports pyarrow.compute (0.1-0.3 s, it
    parses every kernel's docstring), which must not stand before a run's first request."""
    if name == "answer_columns":
        from .columns import answer_columns

        return answer_columns
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "INVALID_ANSWER",
    "METADATA_KEY",
    "MODES",
    "Asker",
    "Checker",
    "Column",
    "Mode",
    "Problem",
    "SchemaProblem",
    "Spec",
    "Turn",
    "Verdict",
    "compile_spec",
    "find_json",
    "instruction",
    "load_schema",
    "rejects_response_format",
]
