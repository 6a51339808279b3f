"""The structured conversation of one row, and the run's one request mode.

:class:`Mode` is the run's shared choice between asking with ``response_format``
and asking with a system instruction. In ``auto`` it starts with
``response_format`` and falls back to instructions, for the rest of the run, the
first time a gateway rejects it (a 400 naming ``response_format``) or ignores it
(an answer that is prose). Rows in flight when it switches are re-sent in
instructions mode when their answer shows the same problem. ``_run.json``
records the mode used as ``structured_mode``.

:class:`Asker` runs one row's conversation on top of the row sender's ``send``
(which does the attempts and transient retries of each request):

- a valid answer ends it;
- ``finish_reason = length`` without valid JSON: one more request with twice the
  ``max_tokens`` (a second cut counts as an invalid answer);
- an invalid answer: re-asked with the previous answer and the validation error
  as follow-up messages, up to ``schema_retries`` times; then the row fails with
  ``invalid_answer``, the last raw answer kept in ``answer`` and its first
  validation error in ``error_message``.

Token counts of every answer the row received are summed into its Completion:
re-asks are paid for, and the table shows it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from ..config import SCHEMA_MODES, JobConfig
from ..errors import RowFatalError
from ..records import Completion, Failure
from .extract import Checker, Problem, Verdict
from .spec import Spec

log = logging.getLogger("docpipe")

MODES = SCHEMA_MODES
#: max_tokens of the retry after a cut answer when none was configured (then doubled)
DEFAULT_MAX_TOKENS = 4096
INVALID_ANSWER = "invalid_answer"


@dataclass(frozen=True, slots=True)
class Turn:
    """How one request of a structured row is asked (what the client adds to the body)."""

    mode: str  # "response_format" | "instructions"
    followup: tuple[dict[str, str], ...] = ()  # the previous answer and the correction, after the row's message
    max_tokens: int | None = None  # overrides the configured max_tokens


class Mode:
    """The run's request mode (shared by every row of the run; see the module docstring)."""

    def __init__(self, configured: str) -> None:
        if configured not in MODES:
            raise ValueError(f"expected one of {', '.join(MODES)}")
        self.configured = configured
        self.current = "instructions" if configured == "instructions" else "response_format"
        self.reason: str | None = None  # why it fell back, when it did

    def fall_back(self, why: str) -> bool:
        """Switch to instructions (auto only); True when the run now asks with instructions."""
        if self.configured == "auto" and self.current == "response_format":
            self.current = "instructions"
            self.reason = why
            log.warning("the gateway %s: asking for JSON with a system instruction for the rest of the run", why)
        return self.current == "instructions"

    def info(self) -> dict[str, Any]:
        """What ``_run.json`` records."""
        return {"structured_mode": self.current, "structured_mode_setting": self.configured,
                "structured_fallback_reason": self.reason}  # fmt: skip


def rejects_response_format(e: RowFatalError) -> bool:
    """A 400 (or 422) whose message names response_format: the gateway does not take it."""
    return e.http_status in (400, 422) and "response_format" in e.message.lower()


def instruction(schema: dict[str, Any]) -> str:
    """The system instruction of instructions mode: JSON only, and the schema as JSON."""
    return ("Answer with one JSON object only: no prose before or after it, no Markdown. "
            "It must validate against this JSON Schema:\n" + orjson.dumps(schema).decode())  # fmt: skip


def correction(error: str) -> str:
    """The follow-up message that re-asks an invalid answer."""
    return (f"Your answer is not valid: {error}. Answer again with one JSON object only, "
            "valid against the JSON Schema, with no other text.")  # fmt: skip


Send = Callable[[Turn], Awaitable[Completion]]


class Asker:
    """One row's structured conversation (see the module docstring)."""

    def __init__(self, spec: Spec, mode: Mode, retries: int, max_tokens: int | None) -> None:
        self.spec = spec
        self.mode = mode
        self.retries = retries
        self.max_tokens = max_tokens
        self.checker = Checker(spec.schema)

    async def ask(self, send: Send) -> tuple[Completion, Failure | None]:
        """The row's final Completion (tokens summed over its answers), and a Failure when it never validated."""
        turn = Turn(self.mode.current)
        reasks, cut_retried, total = 0, False, _Usage()
        while True:
            completion = await self._send(send, turn)
            total.add(completion)
            verdict = self.checker.check(completion.answer, completion.finish_reason)
            if verdict.ok:
                return total.into(completion), None
            if verdict.problem is Problem.TRUNCATED and not cut_retried:
                cut_retried = True
                turn = dataclasses.replace(turn, max_tokens=2 * (turn.max_tokens or self.max_tokens or
                                                                 DEFAULT_MAX_TOKENS))  # fmt: skip
                continue
            if (verdict.problem is Problem.PROSE and turn.mode == "response_format" and not turn.followup
                    and self.mode.fall_back("ignored response_format (a prose answer)")):  # fmt: skip
                turn = Turn("instructions", max_tokens=turn.max_tokens)
                continue
            if reasks < self.retries:
                reasks += 1
                turn = self._reask(turn, completion, verdict)
                continue
            failure = Failure(INVALID_ANSWER, verdict.error or "invalid answer", completion.http_status,
                              completion.gateway_request_id)  # fmt: skip
            return total.into(completion), failure

    async def _send(self, send: Send, turn: Turn) -> Completion:
        while True:
            try:
                return await send(turn)
            except RowFatalError as e:
                if turn.mode != "response_format" or not rejects_response_format(e):
                    raise
                if not self.mode.fall_back(f"rejected response_format ({e.http_status}: {e.message})"):
                    raise
                turn = dataclasses.replace(turn, mode="instructions")

    def _reask(self, turn: Turn, completion: Completion, verdict: Verdict) -> Turn:
        followup = ({"role": "assistant", "content": completion.answer or ""},
                    {"role": "user", "content": correction(verdict.error or "invalid")})  # fmt: skip
        return Turn(self.mode.current, followup, turn.max_tokens)


def asker_for(cfg: JobConfig) -> Asker | None:
    """The run's one Asker (and so its one Mode) when ``cfg`` has a schema, else None."""
    if cfg.schema is None:
        return None
    from .spec import compile_spec

    spec = compile_spec(cfg.schema)
    return Asker(spec, Mode(cfg.schema_mode), cfg.schema_retries, cfg.params.get("max_tokens"))


@dataclass(slots=True)
class _Usage:
    prompt: int = 0
    completion: int = 0
    total: int = 0
    answers: int = 0
    known: bool = True

    def add(self, c: Completion) -> None:
        self.answers += 1
        if c.prompt_tokens is None or c.completion_tokens is None or c.total_tokens is None:
            self.known = False
            return
        self.prompt += c.prompt_tokens
        self.completion += c.completion_tokens
        self.total += c.total_tokens

    def into(self, c: Completion) -> Completion:
        if self.answers == 1 or not self.known:
            return c
        return dataclasses.replace(c, prompt_tokens=self.prompt, completion_tokens=self.completion,
                                   total_tokens=self.total)  # fmt: skip
