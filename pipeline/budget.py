"""Token and cost estimates, and the budget guard that uses them during a run.

One estimator serves ``docpipe validate``, the budget check before a run starts,
the guard during the run and the TPM limiter, so they all give the same figures
for the same manifest:

- prompt tokens of one request: :func:`prompt_estimate` (our text only, see
  :mod:`pipeline.tokens`: ``gpt-4o-all`` also bills the fetched file, which no
  client can count, so this is a lower bound);
- completion tokens of one request: :func:`completion_estimate`, ``max_tokens``
  when set, else :data:`DEFAULT_COMPLETION_ESTIMATE`;
- many requests: :meth:`Estimate.of`, whose ``min_cost_usd`` (prompts and fees,
  no answers) is a floor and ``cost_usd`` the figure with the completion estimate.
  ``validate`` reports both; the start check refuses only when the floor is past
  the budget.

During the run :class:`BudgetGuard` reserves, for every request in flight, the
mean of what answered requests really cost (the prompt-only lower bound until the
first answer), so a run stops within one concurrency's worth of requests of the
budget.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .config import JobConfig
from .tokens import estimate_prompt

#: Completion tokens a request is expected to take when ``max_tokens`` is not set.
DEFAULT_COMPLETION_ESTIMATE = 500
_LEARN_AFTER = 1


def completion_estimate(cfg: JobConfig) -> int:
    """Completion tokens one request is expected to take: ``max_tokens`` or the default."""
    return int(cfg.params.get("max_tokens") or DEFAULT_COMPLETION_ESTIMATE)


def prompt_estimate(content: str, cfg: JobConfig) -> int:
    """Prompt tokens of one request with user message ``content`` as ``cfg`` sends it."""
    return estimate_prompt(content, cfg.system)


def request_estimate(content: str, cfg: JobConfig) -> int:
    """Total tokens one request is expected to take: what the TPM limiter reserves."""
    return prompt_estimate(content, cfg) + completion_estimate(cfg)


@dataclass(frozen=True)
class Estimate:
    """What a set of rows is expected to take."""

    rows: int
    requests: int  # rows that will be sent (valid ones)
    prompt_tokens: int
    completion_tokens: int  # completion_estimate per request: max_tokens, or a guess
    cost_usd: float | None  # prompt + completion estimate; None without prices
    min_cost_usd: float | None  # prompt tokens and per-request fees only: a lower bound
    repeats: int = 0  # rows left out: they repeat an earlier row's request (one request serves both)
    reusable: int = 0  # rows left out: an earlier answer may be copied forward (--reuse)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @classmethod
    def of(cls, cfg: JobConfig, *, rows: int, requests: int, prompt_tokens: int, model: str | None = None) -> Estimate:
        """The estimate for ``requests`` requests whose prompts add up to ``prompt_tokens``
        (priced as ``model``'s, the run's model by default)."""
        completion = requests * completion_estimate(cfg)
        return cls(
            rows=rows,
            requests=requests,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion,
            cost_usd=cfg.cost(prompt_tokens, completion, requests=requests, model=model),
            min_cost_usd=cfg.cost(prompt_tokens, 0, requests=requests, model=model),
        )


def estimate_rows(manifest: Any, skip: Any, cfg: JobConfig, index: Any = None) -> Estimate:
    """Estimate the rows of ``manifest`` not in ``skip`` (an IdIndex of request ids, or None)
    that will certainly be sent: a row repeating an earlier row's request_id rides on its
    answer (:mod:`pipeline.dedupe`), and a row with a reuse candidate in ``index`` (a
    :class:`pipeline.reuse.ReuseIndex`, ``--reuse``) may be copied forward, which only its
    HEAD tells: both are left out (counted in ``repeats`` and ``reusable``), so the figures
    stay a lower bound. A candidate whose document changed is asked, and the run's guard
    charges it like any request. Both engines use this one rule: each sends a repeat once.

    Each row is priced at its own model's price (a manifest ``model`` column, ``[prices.<model>]``)."""
    import numpy as np

    from .dedupe import HashSet

    rows = repeats = reusable = 0
    seen = HashSet()
    by_model: dict[str | None, list[int]] = {}  # model -> [requests, prompt tokens]
    for batch in manifest.rows(skip):
        rows += len(batch)
        valid = [row for row in batch if row.invalid is None]
        hashes = np.fromiter((hash(r.request_id) for r in valid), dtype=np.int64, count=len(valid))
        _, first = np.unique(hashes, return_index=True)
        ask = np.zeros(len(valid), dtype=np.bool_)
        ask[first] = True
        ask &= ~seen.contains(hashes)
        seen.add(hashes[ask])
        repeats += len(valid) - int(ask.sum())
        if index is not None and len(index):
            keys = np.fromiter((r.reuse_key or 0 for r in valid), dtype=np.int64, count=len(valid))
            candidate = ask & (index.lookup(keys) >= 0)
            reusable += int(candidate.sum())
            ask &= ~candidate
        for i in np.flatnonzero(ask).tolist():
            tally = by_model.setdefault(valid[i].model, [0, 0])
            tally[0] += 1
            tally[1] += prompt_estimate(valid[i].content, cfg)
    whole = Estimate.of(cfg, rows=rows, requests=sum(t[0] for t in by_model.values()),
                        prompt_tokens=sum(t[1] for t in by_model.values()))  # fmt: skip
    whole = dataclasses.replace(whole, repeats=repeats, reusable=reusable)
    if not cfg.model_prices or whole.cost_usd is None:
        return whole
    parts = [Estimate.of(cfg, rows=0, requests=r, prompt_tokens=p, model=m) for m, (r, p) in by_model.items()]
    return dataclasses.replace(whole, cost_usd=sum(e.cost_usd or 0.0 for e in parts),
                               min_cost_usd=sum(e.min_cost_usd or 0.0 for e in parts))  # fmt: skip


def check_before_start(estimate: Estimate, cfg: JobConfig) -> str | None:
    """Why the run must not start, or None.

    Only a certain overrun refuses the start: the lower bound (prompt tokens and
    fees, no answers) already past the budget. Anything less starts, and the
    guard stops dispatch when real spending gets there."""
    left_out = f"; not counted: {estimate.repeats} repeated rows" if estimate.repeats else ""
    if estimate.reusable:
        left_out += f"{'; not counted:' if not left_out else ','} {estimate.reusable} rows with an answer to reuse"
    if cfg.max_cost is not None and estimate.min_cost_usd is not None and estimate.min_cost_usd > cfg.max_cost:
        return (
            f"the prompts alone of {estimate.requests} requests are estimated at "
            f"${estimate.min_cost_usd:.4f} (${estimate.cost_usd or 0.0:.4f} with answers), more than "
            f"--max-cost ${cfg.max_cost:.4f}{left_out}"
        )
    if cfg.max_total_tokens is not None and estimate.prompt_tokens > cfg.max_total_tokens:
        return (
            f"the prompts alone of {estimate.requests} requests are estimated at "
            f"{estimate.prompt_tokens} tokens, more than --max-total-tokens {cfg.max_total_tokens}{left_out}"
        )
    return None


class BudgetGuard:
    """Refuses a dispatch when spent + in flight + this request would pass the budget."""

    def __init__(self, cfg: JobConfig) -> None:
        self.cfg = cfg
        self.max_cost = cfg.max_cost
        self.max_tokens = cfg.max_total_tokens
        self.active = self.max_cost is not None or self.max_tokens is not None
        self._answers = 0
        self._tokens = 0
        self._cost = 0.0

    def record(self, total_tokens: int | None, cost: float | None) -> None:
        """Count what one answered request really took."""
        self._answers += 1
        self._tokens += total_tokens or 0
        self._cost += cost or 0.0

    def per_request(self, prompt_tokens: int) -> tuple[int, float]:
        """(tokens, cost) one request is expected to take; ``prompt_tokens`` is its
        :func:`prompt_estimate`."""
        if self._answers >= _LEARN_AFTER:
            return self._tokens // self._answers, self._cost / self._answers
        # nothing answered yet: the lower bound, so a poor guess of answer length cannot
        # stop a run before it starts; the first wave may overshoot by the in-flight count
        return prompt_tokens, self.cfg.cost(prompt_tokens, 0) or 0.0

    def refuse(self, prompt_tokens: int, in_flight: int) -> str | None:
        """A reason to stop before sending one more request, or None."""
        if not self.active:
            return None
        tokens, cost = self.per_request(prompt_tokens)
        pending = in_flight + 1
        if self.max_cost is not None and self._cost + pending * cost > self.max_cost:
            return f"budget: ${self._cost:.4f} spent, {in_flight} in flight; --max-cost ${self.max_cost:.4f} reached"
        if self.max_tokens is not None and self._tokens + pending * tokens > self.max_tokens:
            return (
                f"budget: {self._tokens} tokens spent, {in_flight} in flight; "
                f"--max-total-tokens {self.max_tokens} reached"
            )
        return None
