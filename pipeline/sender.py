"""The row sender: one row in, one :class:`~pipeline.records.Outcome` out.

It owns everything that happens to one row: waiting for a slot and the rate
limits, the attempts, the retry loop (tenacity, entered only after a first
attempt failed: DESIGN.md section 9), and the rules that turn a row's failure
into the run's stop:

- a run-fatal answer (401, 403, quota, model not served) stops the run at once;
- a 503 "no channel for model" ``no_channel_attempts`` times in a row does too;
- a gateway that was never reached (connection refused, DNS, TLS) on
  :data:`UNREACHABLE_ATTEMPTS` attempts, before it ever answered this run, does
  too, within seconds instead of a night of probing;
- the circuit breaker (:class:`~pipeline.limits.Breaker`) pauses dispatch when
  fresh rows keep failing, probes with one request, and stops the run after its
  probes fail; rows that fail on their own (a handful of poisoned documents) use
  up their ``max_attempts`` and are recorded ``failed``.

A structured row (``cfg.schema``) goes through :class:`~pipeline.structured.ask.Asker`,
which calls :meth:`RowSender._turn` once per request of its conversation (re-asks,
the cut-answer retry); each such request gets the transient retries above, and
``attempts`` counts every request sent.

A row the run stops before it is answered returns None: it stays *pending* (not
failed), so the next run sends it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from .budget import BudgetGuard, completion_estimate, prompt_estimate
from .client import GatewayClient, short
from .config import JobConfig
from .control import StopControl, Stopped
from .embed import DocumentFetcher
from .errors import (
    GatewayUnreachable,
    NoChannel,
    RateLimited,
    RequestError,
    RetryableError,
    RowFatalError,
    RunFatalError,
    UnreadableDocument,
)
from .fallback import answer_row
from .limits import Pacer, Sleep
from .models import ModelRouter
from .records import Completion, Failure, Outcome, Row, make_outcome
from .retry import retrying, should_retry, wait_for
from .runrecord import RunRecord
from .structured.ask import Asker, Turn

log = logging.getLogger("docpipe")

#: 429s do not use up --max-attempts, but a row never sends more than this many times that
MAX_ATTEMPTS_WITH_429S = 5
#: connection failures, before the gateway ever answered, that stop the run
UNREACHABLE_ATTEMPTS = 3

_HINTS = {
    "auth": "check the API key (--api-key-file, APICORE_API_KEY or OPENAI_API_KEY)",
    "quota": "top up the key's quota or balance",
    "no_channel": "choose a model this key's group serves (docpipe models)",
    "connection": "check --base-url and the network",
}


@dataclass(slots=True)
class _Attempts:
    """One row's attempt bookkeeping (mutable, private to one send)."""

    max_attempts: int
    unreadable_left: int
    count: int = 0
    rate_limited: int = 0  # 429s: not processed by the gateway, so not counted against --max-attempts
    latency: float | None = None  # seconds of the last attempt that reached the gateway
    on_wire: float = 0.0  # seconds the last attempt was in flight, answered or not (its back-off counts them)
    answered: int = 0  # answers received (a structured row may get several: re-asks)
    _per_turn: int = 0

    def next_turn(self) -> None:
        """A structured re-ask is a new request: it gets its own ``max_attempts`` for transient errors."""
        self.max_attempts = self.count - self.rate_limited + self._per_turn

    def __post_init__(self) -> None:
        self._per_turn = self.max_attempts

    def exhausted(self) -> bool:
        processed = self.count - self.rate_limited
        return processed >= self.max_attempts or self.count >= MAX_ATTEMPTS_WITH_429S * self.max_attempts


class RowSender:
    """Sends rows through the pacer and the client; see the module docstring."""

    def __init__(
        self,
        cfg: JobConfig,
        client: GatewayClient,
        pacer: Pacer,
        budget: BudgetGuard,
        stop: StopControl,
        record: RunRecord,
        asker: Asker | None = None,
        *,
        models: ModelRouter | None = None,
        fetcher: DocumentFetcher | None = None,
    ) -> None:
        self.cfg = cfg
        self.client = client
        self.pacer = pacer
        self.budget = budget
        self.stop = stop
        self.record = record
        self.asker = asker  # structured answers (pipeline/structured): one conversation per row
        self._completion_estimate = completion_estimate(cfg)
        self._sending = 0  # requests on the wire (the budget reserves for them)
        # per-model no-channel, breaker and fallbacks (pipeline/models.py, fallback.py)
        self.models = models if models is not None else ModelRouter(cfg, pacer.breaker)
        self.fetcher = fetcher  # --embed: the document's bytes (pipeline/embed.py)
        self._unreachable_streak = 0
        self._gateway_answered = False  # any HTTP response at all, this run
        # where a row waits out its back-off or Retry-After: the pool's rest lends its seat to
        # the next row meanwhile (pipeline/pool.py); a stop cuts either short
        self.rest: Sleep = stop.sleep

    async def send(self, row: Row) -> Outcome | None:
        """Answer ``row`` (its model, then its fallbacks): its Outcome, or None when the run
        stopped before it was answered."""
        outcome = await answer_row(row, self._send_to, self.models, self.fetcher)
        if outcome is not None:
            self.record.sent_rows += 1
        return outcome

    async def _send_to(self, row: Row) -> Outcome | None:
        """Answer ``row`` from ``row.model`` alone."""
        cfg = self.cfg
        tries = _Attempts(cfg.max_attempts, cfg.unreadable_retries)
        started = time.time()
        invalid: Failure | None = None
        try:
            if self.asker is None:
                completion = await self._answer(row, tries)
            else:
                completion, invalid = await self.asker.ask(lambda turn: self._turn(row, tries, turn))
        except (Stopped, RunFatalError):
            return None
        except RequestError as e:
            if self.stop.is_set and isinstance(e, RetryableError) and not tries.exhausted():
                return None  # interrupted between retries: pending, not failed
            failure = Failure(e.error_type, short(e.message), e.http_status, e.gateway_request_id)
            return make_outcome(row, None, failure=failure, started=started, completed=time.time(),
                                attempts=tries.count, latency=tries.latency, cost=None)  # fmt: skip
        cost = cfg.cost(completion.prompt_tokens, completion.completion_tokens, requests=max(1, tries.answered),
                        model=row.model)  # fmt: skip
        return make_outcome(row, completion, failure=invalid, started=started, completed=time.time(),
                            attempts=tries.count, latency=tries.latency, cost=cost)  # fmt: skip

    async def _turn(self, row: Row, tries: _Attempts, turn: Turn) -> Completion:
        """One request of a structured row's conversation, with its own transient retries."""
        if tries.count:
            tries.next_turn()
        completion = await self._answer(row, tries, turn)
        tries.answered += 1
        return completion

    async def _answer(self, row: Row, tries: _Attempts, turn: Turn | None = None) -> Completion:
        """The first attempt plainly; tenacity only once it failed with something retryable."""
        estimate = prompt_estimate(row.content, self.cfg)
        deadline = time.monotonic() + self.cfg.row_budget
        try:
            return await self._attempt(row, tries, estimate, turn)
        except (RetryableError, UnreadableDocument) as first:
            if self.cfg.max_attempts <= 1 or not self._retry_on(row, tries, first):
                raise
            # tenacity's first try is immediate, so the wait after the plain first attempt is ours
            wait = wait_for(first, 1, self.cfg.backoff_initial, self.cfg.backoff_max, tries.on_wire)
            if time.monotonic() + wait > deadline:
                raise
            await self.rest(wait)
            if self.stop.is_set:
                raise
        controller = retrying(
            exhausted=tries.exhausted,
            deadline=deadline,
            initial=self.cfg.backoff_initial,
            maximum=self.cfg.backoff_max,
            retry=lambda e: self._retry_on(row, tries, e),
            stop_now=lambda: self.stop.is_set,
            sleep=self.rest,
            attempts_before=1,
            on_wire=lambda: tries.on_wire,
        )
        async for try_ in controller:
            with try_:
                return await self._attempt(row, tries, estimate, turn)
        raise AssertionError("tenacity ended without a result")  # pragma: no cover

    def _retry_on(self, row: Row, tries: _Attempts, e: BaseException) -> bool:
        # a model the run now knows has no channel: on to the row's next model, not another try
        unserved = isinstance(e, NoChannel) and self.models.unserved(row.model) is not None
        ok = should_retry(e, tries.unreadable_left) and not unserved
        if isinstance(e, UnreadableDocument):
            tries.unreadable_left -= 1
        if isinstance(e, RequestError):
            gid = f" [gateway id {e.gateway_request_id}]" if e.gateway_request_id else ""
            log.debug("%s %s after attempt %d: %s%s", "retry" if ok else "give up on", row.request_id,
                      tries.count, e, gid,
                      extra={"request_id": row.request_id, "gateway_request_id": e.gateway_request_id,
                             "attempt": tries.count, "error_type": e.error_type, "retry": ok})  # fmt: skip
        return ok

    async def _attempt(self, row: Row, tries: _Attempts, estimate: int, turn: Turn | None) -> Completion:
        tries.count += 1
        tries.on_wire = 0.0  # an attempt that fails before it is sent waits its whole back-off
        breaker = self.models.breaker(row.model)
        if breaker.is_open:
            async with breaker.lock:
                if breaker.is_open:  # still open once our turn came: this row is the probe
                    await self.stop.sleep(breaker.wait_s)
                    if self.stop.is_set:
                        raise Stopped
                    log.warning("gateway failing: probing with one request")
                    return await self._send(row, tries, estimate, turn, probe=True)
        return await self._send(row, tries, estimate, turn, probe=False)

    async def _send(self, row: Row, tries: _Attempts, estimate: int, turn: Turn | None, *, probe: bool) -> Completion:
        pacer = self.pacer
        await self.stop.before_send(pacer.slots.acquire())
        try:
            await self.stop.before_send(pacer.before_attempt(estimate + self._completion_estimate))
            if self.stop.is_set:
                raise Stopped
            if self.budget.active and (why := self.budget.refuse(estimate, self._sending)):
                self.stop.request(why)
                raise Stopped
            self.record.request_sent()
            t0 = time.monotonic()
            self._sending += 1
            try:
                completion = await self.client.complete(row, turn)
            except RequestError as e:
                tries.latency = tries.on_wire = time.monotonic() - t0
                if isinstance(e, RateLimited):
                    tries.rate_limited += 1
                await self._failed(e, row.model, probe=probe, first_attempt=tries.count == 1)
                raise
            finally:
                self._sending -= 1
            tries.latency = time.monotonic() - t0
            self._answered(completion, tries.latency, row.model)
            return completion
        finally:
            pacer.slots.release()

    def _answered(self, completion: Completion, latency: float, model: str | None) -> None:
        self._gateway_answered = True
        self.models.answered(model)
        if self.budget.active:
            cost = self.cfg.cost(completion.prompt_tokens, completion.completion_tokens, model=model)
            self.budget.record(completion.total_tokens, cost)
        self.models.breaker(model).success()
        self.pacer.answered(completion.total_tokens, latency)

    async def _failed(self, e: RequestError, model: str | None, *, probe: bool, first_attempt: bool) -> None:
        """Account a failed attempt; raises RunFatalError when it must stop the run."""
        self.record.attempt_failed(e.error_type)
        if e.http_status is not None:
            self._gateway_answered = True
        hold = self.pacer.failed(rate_limited=isinstance(e, RateLimited), retry_after=e.retry_after)
        if hold:
            # an over-limit slot would otherwise churn out one instant 429 after another
            await self.stop.sleep(hold)
        if isinstance(e, RunFatalError):
            if e.error_type == "no_channel":
                stop = self.models.no_channel(model, e, at_once=True)
                if stop is None:  # model not found while other models of the run may answer: on to the next
                    raise RowFatalError(e.message, error_type="no_channel", http_status=e.http_status,
                                        gateway_request_id=e.gateway_request_id) from None  # fmt: skip
                e = stop
            self._abort(e)
            return
        if isinstance(e, NoChannel) and (stop := self.models.no_channel(model, e)) is not None:
            raise self._abort(stop)
        self._check_unreachable(e)
        counts = isinstance(e, RetryableError) and not isinstance(e, (RateLimited, NoChannel))
        if counts and self.models.breaker_failed(model, probe=probe, first_attempt=first_attempt):
            b = self.models.breaker(model)
            raise self._abort(RunFatalError(
                f"the gateway kept failing: {b.failures} errors in a row and {b.probes_failed} failed probes; "
                f"last: {e.message}", error_type=e.error_type, http_status=e.http_status))  # fmt: skip

    def _check_unreachable(self, e: RequestError) -> None:
        if not isinstance(e, GatewayUnreachable) or self._gateway_answered:
            return
        self._unreachable_streak += 1
        if self._unreachable_streak >= UNREACHABLE_ATTEMPTS:
            raise self._abort(RunFatalError(
                f"cannot reach the gateway at {self.cfg.base_url}: {e.message}", error_type="connection"))  # fmt: skip

    def _abort(self, e: RunFatalError) -> RunFatalError:
        """Stop the run for ``e`` (once, with what to fix); returns ``e`` to raise."""
        if not self.stop.is_set:
            gid = e.gateway_request_id
            log.error("aborting: %s%s", e, f" [gateway id {gid}]" if gid else "",
                      extra={"error_type": e.error_type, "gateway_request_id": gid})  # fmt: skip
        hint = _HINTS.get(e.error_type, "fix the settings")
        self.stop.request(f"{e}; {hint}, then run the same command again to resume")
        return e
