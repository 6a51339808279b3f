"""Cost and token budgets: an estimate before dispatch, a guard during the run.

The estimate is a *lower* bound for ``gpt-4o-all``: the gateway bills the tokens
of the fetched file, which no client can count. Completion tokens are estimated
as ``max_tokens`` when it is set, else :data:`DEFAULT_COMPLETION_ESTIMATE`.
During the run the guard reserves, for every request in flight, the mean of
what answered requests really cost (the prompt-only lower bound until the first
answer), so a run stops within one concurrency's worth of requests of the budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import JobConfig
from .tokens import estimate_prompt

DEFAULT_COMPLETION_ESTIMATE = 500
_LEARN_AFTER = 1


@dataclass(frozen=True)
class Estimate:
    """What the rows still to send are expected to take."""

    rows: int
    requests: int  # rows that will be sent (valid ones)
    prompt_tokens: int
    completion_tokens: int  # max_tokens (or the default) per request: an upper guess
    cost_usd: float | None  # prompt + completion estimate
    min_cost_usd: float | None  # prompt tokens and per-request fees only: a lower bound

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def completion_estimate(cfg: JobConfig) -> int:
    return int(cfg.params.get("max_tokens") or DEFAULT_COMPLETION_ESTIMATE)


def estimate_rows(manifest: Any, skip: Any, cfg: JobConfig) -> Estimate:
    """Estimate the rows of ``manifest`` not in ``skip`` (a request_id array)."""
    rows = requests = prompt = 0
    for batch in manifest.rows(skip):
        for row in batch:
            rows += 1
            if row.invalid is None:
                requests += 1
                prompt += estimate_prompt(row.content, cfg.system)
    completion = requests * completion_estimate(cfg)
    return Estimate(rows, requests, prompt, completion, cfg.cost(prompt, completion, requests=requests),
                    cfg.cost(prompt, 0, requests=requests))  # fmt: skip


def check_before_start(estimate: Estimate, cfg: JobConfig) -> str | None:
    """Why the run must not start, or None.

    Only a certain overrun refuses the start: the lower bound (prompt tokens and
    fees, no answers) already past the budget. Anything less starts, and the
    guard stops dispatch when real spending gets there."""
    if cfg.max_cost is not None and estimate.min_cost_usd is not None and estimate.min_cost_usd > cfg.max_cost:
        return (f"the prompts alone of {estimate.requests} requests are estimated at "
                f"${estimate.min_cost_usd:.4f} (${estimate.cost_usd:.4f} with answers), more than "
                f"--max-cost ${cfg.max_cost:.4f}")  # fmt: skip
    if cfg.max_total_tokens is not None and estimate.prompt_tokens > cfg.max_total_tokens:
        return (f"the prompts alone of {estimate.requests} requests are estimated at "
                f"{estimate.prompt_tokens} tokens, more than --max-total-tokens {cfg.max_total_tokens}")  # fmt: skip
    return None


class BudgetGuard:
    """Refuses a dispatch when spent + in flight + this request would pass the budget."""

    def __init__(self, cfg: JobConfig) -> None:
        self.cfg = cfg
        self.max_cost = cfg.max_cost
        self.max_tokens = cfg.max_total_tokens
        self.active = self.max_cost is not None or self.max_tokens is not None
        self._completion = completion_estimate(cfg)
        self._answers = 0
        self._tokens = 0
        self._cost = 0.0

    def record(self, total_tokens: int | None, cost: float | None) -> None:
        self._answers += 1
        self._tokens += total_tokens or 0
        self._cost += cost or 0.0

    def per_request(self, prompt_estimate: int) -> tuple[int, float]:
        """(tokens, cost) one request is expected to take."""
        if self._answers >= _LEARN_AFTER:
            return self._tokens // self._answers, self._cost / self._answers
        # nothing answered yet: the lower bound, so a poor guess of answer length cannot
        # stop a run before it starts; the first wave may overshoot by the in-flight count
        return prompt_estimate, self.cfg.cost(prompt_estimate, 0) or 0.0

    def refuse(self, prompt_estimate: int, in_flight: int) -> str | None:
        """A reason to stop before sending one more request, or None."""
        if not self.active:
            return None
        tokens, cost = self.per_request(prompt_estimate)
        pending = in_flight + 1
        if self.max_cost is not None and self._cost + pending * cost > self.max_cost:
            return f"budget: ${self._cost:.4f} spent, {in_flight} in flight; --max-cost ${self.max_cost:.4f} reached"
        if self.max_tokens is not None and self._tokens + pending * tokens > self.max_tokens:
            return f"budget: {self._tokens} tokens spent, {in_flight} in flight; --max-total-tokens {self.max_tokens} reached"
        return None
