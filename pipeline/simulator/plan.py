"""The fault plan: what one attempt of one request gets, as a typed value.

A request is known by (model, content); the server counts its attempts (1-based).
The plan for attempt n is a pure function of the configuration, the content and n:
``[[sim:...]]`` directives in the content decide when present, otherwise the random
mix draws from a hash of (request, seed, attempt), so every run of a test sees the
same faults on the same rows.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from .answers import key_digest
from .config import SimConfig
from .kinds import FAULT_KINDS, IMMEDIATE, FaultKind

#: A directive asking for more is a typo, not a test: answered 400 like any bad directive.
MAX_ANSWER_BYTES = 256 * 1024 * 1024

_DIRECTIVE_RE = re.compile(r"\[\[sim:([a-z_]+)(?:=([^\]]*))?\]\]")
#: schema_fault is read by .structured (the answer's shape), not by the plan
_DIRECTIVES = frozenset({"status", "retry_after", "fault", "unreadable", "finish", "answer_bytes", "schema_fault"})
_WORD_RE = re.compile(r"[a-z_]+")


@dataclass(frozen=True, slots=True)
class Plan:
    """What one attempt gets: a fault, an error status, or an answer (and its shape)."""

    fault: FaultKind | None = None
    status: int | None = None  # [[sim:status=N]]: this HTTP status with a JSON error
    retry_after: str | None = None  # the Retry-After header of a 429, as the directive wrote it
    finish: str = "stop"
    unreadable: bool = False  # answer with UNREADABLE_ANSWER
    answer_bytes: int | None = None  # answer with sized_answer(...) of this many bytes

    @property
    def is_ok(self) -> bool:
        """True when the attempt is answered normally."""
        return self.fault is None and self.status is None

    @property
    def outcome(self) -> str:
        """The name /_sim/stats counts this attempt under: "ok", a fault kind or the status."""
        if self.status is not None:
            return str(self.status)
        return "ok" if self.fault is None else self.fault.value

    @property
    def immediate(self) -> bool:
        """Answered by the gateway itself, before the upstream latency (no in-flight slot)."""
        return self.fault in IMMEDIATE or self.status in (401, 403, 429)


OK_PLAN = Plan()


@dataclass(frozen=True, slots=True)
class Directives:
    """The ``[[sim:...]]`` directives of one content string, parsed and checked."""

    status: int | None = None
    retry_after: str | None = None
    fault: FaultKind | None = None
    fault_times: int = 1
    unreadable: bool = False
    finish: str = "stop"
    answer_bytes: int | None = None

    def plan(self, attempt: int) -> Plan:
        """The plan for attempt number ``attempt`` (1-based)."""
        if self.status is not None:
            return Plan(status=self.status)
        if self.retry_after is not None and attempt == 1:
            return Plan(fault=FaultKind.RATE_LIMITED, retry_after=self.retry_after)
        if self.fault is not None and attempt <= self.fault_times:
            return Plan(fault=self.fault)
        return Plan(finish=self.finish, unreadable=self.unreadable, answer_bytes=self.answer_bytes)


def parse_directives(content: str) -> Directives:
    """Directives found in ``content``; ValueError for a malformed or unknown one."""
    found: dict[str, str] = {}
    for m in _DIRECTIVE_RE.finditer(content):
        found.setdefault(m.group(1), m.group(2) if m.group(2) is not None else "")
    unknown = set(found) - _DIRECTIVES
    if unknown:
        raise ValueError(f"unknown sim directive(s): {sorted(unknown)}")
    fault, times = _fault(found.get("fault"))
    finish = found.get("finish") or "stop"
    if not _WORD_RE.fullmatch(finish):
        raise ValueError("sim finish directive must be a word")
    return Directives(
        status=_status(found.get("status")),
        retry_after=_retry_after(found.get("retry_after")),
        fault=fault,
        fault_times=times,
        unreadable="unreadable" in found,
        finish=finish,
        answer_bytes=_answer_bytes(found.get("answer_bytes")),
    )


def _status(value: str | None) -> int | None:
    if value is None:
        return None
    status = int(value)
    if not 400 <= status <= 599:
        raise ValueError("sim status directive must be 400..599")
    return status


def _retry_after(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    float(value)  # reject garbage early; the header carries the text as written
    return value


def _fault(value: str | None) -> tuple[FaultKind | None, int]:
    if value is None:
        return None, 1
    kind, _, times = value.partition("*")
    if kind not in FAULT_KINDS:
        raise ValueError(f"unknown fault kind in directive: {kind!r}")
    n = int(times) if times else 1
    if n < 0:
        raise ValueError(f"sim fault count must be >= 0, got {n}")
    return FaultKind(kind), n


def _answer_bytes(value: str | None) -> int | None:
    if value is None:
        return None
    n = int(value)
    if not 0 <= n <= MAX_ANSWER_BYTES:
        raise ValueError(f"sim answer_bytes must be 0..{MAX_ANSWER_BYTES}, got {n}")
    return n


def attempt_hash(seed: int, digest: bytes, attempt: int) -> tuple[float, int, float]:
    """Three independent draws for one attempt: fault roll in [0, 1), kind index, jitter in [0, 1)."""
    b = hashlib.blake2b(digest + f"|{seed}|{attempt}".encode(), digest_size=24).digest()
    return (
        int.from_bytes(b[0:8], "big") / 2.0**64,
        int.from_bytes(b[8:16], "big"),
        int.from_bytes(b[16:24], "big") / 2.0**64,
    )


def plan_attempt(cfg: SimConfig, content: str, digest: bytes, attempt: int) -> Plan:
    """The plan for attempt ``attempt`` of the request whose key digest is ``digest``.

    Directives replace the random mix; ValueError for a malformed directive.
    """
    if "[[sim:" in content:
        return parse_directives(content).plan(attempt)
    if cfg.fault_rate > 0.0 and attempt <= cfg.fault_attempts:
        u, k, _ = attempt_hash(cfg.seed, digest, attempt)
        if u < cfg.fault_rate:
            return Plan(fault=FaultKind(cfg.fault_kinds[k % len(cfg.fault_kinds)]))
    return OK_PLAN


def latency_for(cfg: SimConfig, digest: bytes, attempt: int) -> float:
    """Seconds the upstream takes for this attempt: latency_s, spread by latency_jitter."""
    latency = cfg.latency_s
    if cfg.latency_jitter > 0.0:
        _, _, uj = attempt_hash(cfg.seed, digest, attempt)
        latency *= 1.0 + cfg.latency_jitter * (2.0 * uj - 1.0)
    return latency


def fault_for(config: SimConfig, model: str, content: str, attempt: int) -> str | None:
    """What attempt number ``attempt`` (1-based) of this request will get, ignoring
    auth/quota/capacity/RPM: None for a normal answer, a fault kind, "429" for a
    retry_after directive, or the status as a string for a status directive."""
    plan = plan_attempt(config, content, key_digest(model, content), attempt)
    return None if plan.is_ok else plan.outcome
