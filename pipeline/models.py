"""The models of a run: which one a row asks first, what to ask next, and per-model health.

A row asks its own model (the manifest's ``model`` column, else the run's ``model``),
then each of ``fallback_models`` in order, skipping repeats: :meth:`ModelRouter.chain`.

The gateway answers per model where it matters, so the rules that judge "this is not
going to work" are kept per model here, not per run:

- **no channel.** A model that answered no-channel (503 "无可用渠道")
  ``no_channel_attempts`` times in a row (an answer from it in between resets the
  count), or model-not-found once, is *unserved* for the rest of the run: its rows stop
  retrying it and go to their next model, or fail with ``error_type = no_channel`` when
  they have none. Only when every model the run can use (the run's model, the
  fallbacks, every model the manifest names) is unserved does the run stop (exit 3,
  rows pending: a key whose group serves nothing is a configuration error to fix and
  resume, as before this module).
- **the circuit breaker** (:class:`~pipeline.limits.Breaker`) is one per model: a model
  whose upstream fails everyone pauses and probes its own rows, not the others'. The run's
  model uses the pacer's breaker, so a one-model run behaves as it always did.

Pacing (RPM/TPM, the learning concurrency limit, the 429 pause) stays per key: one-api
and new-api count a key's requests across models, so that is what their 429s measure.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .config import JobConfig
from .errors import RequestError, RunFatalError
from .limits import Breaker
from .records import Row

#: Row failures after which the next model is asked (after the model's own retries).
FALLBACK_ERRORS = frozenset({"no_channel", "content_filter", "unreadable_document"})


@dataclass(slots=True)
class ModelState:
    """What the run learnt about one model (mutable, owned by the router)."""

    breaker: Breaker
    no_channel_streak: int = 0
    unserved: str | None = None  # why the model is not served, once it is not
    answered: int = 0  # answers received from it
    breaker_opened: int = 0  # times its breaker opened


class ModelRouter:
    """Per-model state of one run; see the module docstring."""

    def __init__(self, cfg: JobConfig, breaker: Breaker, manifest_models: Iterable[str] = ()) -> None:
        self.cfg = cfg
        self._states: dict[str, ModelState] = {cfg.model: ModelState(breaker)}
        #: every model the run can use: when all are unserved the run stops
        self.run_models = frozenset({cfg.model, *cfg.fallback_models, *manifest_models})

    def join(self, models: Iterable[str]) -> None:
        """Add the models a manifest's rows name to those the run can use."""
        self.run_models = self.run_models | frozenset(models)

    def chain(self, row: Row) -> list[str]:
        """The models ``row`` asks, in order."""
        return list(dict.fromkeys((row.model or self.cfg.model, *self.cfg.fallback_models)))

    def state(self, model: str | None) -> ModelState:
        name = model or self.cfg.model
        found = self._states.get(name)
        if found is None:
            cfg = self.cfg
            found = self._states[name] = ModelState(Breaker(cfg.breaker_threshold, cfg.breaker_probes,
                                                            cfg.breaker_pause))  # fmt: skip
        return found

    def breaker(self, model: str | None) -> Breaker:
        return self.state(model).breaker

    def unserved(self, model: str | None) -> str | None:
        """Why ``model`` is not served this run, or None while it may be."""
        found = self._states.get(model or self.cfg.model)
        return None if found is None else found.unserved

    def learnt(self, unserved: dict[str, str]) -> None:
        """Models another process of the run found unserved (the Ray engine's actors share them
        through their board): their rows go to the next model here too, without asking."""
        for name, why in unserved.items():
            s = self.state(name)
            if s.unserved is None:
                s.unserved = why

    def unserved_models(self) -> dict[str, str]:
        """The models found unserved so far, and why."""
        return {name: s.unserved for name, s in self._states.items() if s.unserved is not None}

    def answered(self, model: str | None) -> None:
        s = self.state(model)
        s.answered += 1
        s.no_channel_streak = 0

    def breaker_failed(self, model: str | None, *, probe: bool, first_attempt: bool) -> bool:
        """Account a server failure with the model's breaker; True when it gives up (run-fatal)."""
        b = self.breaker(model)
        was_open = b.is_open
        give_up = b.failure(probe=probe, first_attempt=first_attempt)
        if b.is_open and not was_open:
            self.state(model).breaker_opened += 1
        return give_up

    def no_channel(self, model: str | None, e: RequestError, *, at_once: bool = False) -> RunFatalError | None:
        """Account a no-channel answer (``at_once``: model-not-found); the error that stops
        the run when the model is now unserved and so is every other, else None."""
        name = model or self.cfg.model
        s = self.state(name)
        s.no_channel_streak += 1
        if s.unserved is None and (at_once or s.no_channel_streak >= self.cfg.no_channel_attempts):
            s.unserved = e.message
        if s.unserved is None or any(self.unserved(m) is None for m in self.run_models):
            return None
        return RunFatalError(f"model {name!r} is not served for this key's group ({e.message})"
                             + (", nor is any other model of this run" if len(self.run_models) > 1 else ""),
                             error_type="no_channel", http_status=e.http_status)  # fmt: skip

    def info(self) -> dict[str, Any]:
        """Per model, for ``_run.json``: answers, whether it was served, breaker openings."""
        return {
            "models": {
                name: {"answered": s.answered, "unserved": s.unserved, "breaker_opened": s.breaker_opened}
                for name, s in sorted(self._states.items())
            },
            "fallback_models": list(self.cfg.fallback_models),
        }


def merge_info(parts: Iterable[dict[str, Any]], fallback_models: Iterable[str]) -> dict[str, Any]:
    """Several routers' :meth:`ModelRouter.info` as one run's (the Ray engine: one router per
    actor): answers and breaker openings add up, a model is unserved when any found it so."""
    models: dict[str, dict[str, Any]] = {}
    for part in parts:
        for name, m in part.get("models", {}).items():
            into = models.setdefault(name, {"answered": 0, "unserved": None, "breaker_opened": 0})
            into["answered"] += m["answered"]
            into["breaker_opened"] += m["breaker_opened"]
            into["unserved"] = into["unserved"] or m["unserved"]
    return {"models": dict(sorted(models.items())), "fallback_models": list(fallback_models)}
