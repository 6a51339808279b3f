"""Pool-wide pacing: RPM/TPM limits, the 429 pause, and adaptive concurrency.

- RPM and TPM use :mod:`aiolimiter` (a maintained leaky bucket). RPM is set up
  as a bucket of one request refilled every ``60/rpm`` seconds (plus 2 %), so no
  60-second window, measured anywhere, holds more than ``rpm`` requests: a
  bucket of ``rpm`` would allow a burst of ``rpm`` and then ``rpm`` more.
- :class:`PauseGate` holds every new attempt while the gateway has asked the
  whole key to wait (Retry-After on a 429, or our own back-off once 429s are
  more than an accident).
- :class:`AdaptiveLimit` is AIMD over rounds of ``limit`` completions (at least
  20). Once a round holds more than 2 % (and at least two) rate-limited
  answers, the limit is cut at once in proportion to their share (10-50 %), at
  most once per round trip; a round whose mean latency tripled over the best
  seen cuts it by 10 %; a clean round adds one. Counting per round rather than
  reacting to each 429 keeps a stray 429 from collapsing the pool, and a row
  that got an anonymous 429 keeps its slot through a short hold (runner), so an
  over-limit slot does not churn out one instant 429 after another.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from aiolimiter import AsyncLimiter

from .retry import backoff

RATE_LIMIT_SHARE = 0.02
MIN_ROUND = 20  # completions; a smaller round would read one stray 429 as a trend
LATENCY_FACTOR = 3.0


class PauseGate:
    """Holds new attempts until the pool-wide pause is over."""

    def __init__(self) -> None:
        self._until = 0.0

    def pause(self, seconds: float) -> None:
        self._until = max(self._until, time.monotonic() + seconds)

    async def wait(self) -> None:
        while (delay := self._until - time.monotonic()) > 0:
            await asyncio.sleep(delay)


class AdaptiveLimit:
    """A semaphore whose size moves between 1 and ``maximum`` (AIMD, see module doc)."""

    def __init__(self, maximum: int, *, adaptive: bool = True, initial: int | None = None) -> None:
        self.maximum = maximum
        self.adaptive = adaptive
        self.limit = float(initial or maximum)
        self.in_flight = 0
        self.max_seen = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._round_done = 0
        self._round_limited = 0
        self._round_latency = 0.0
        self._best_latency: float | None = None
        self._rtt = 1.0  # seconds; replaced by an average of real latencies once known
        self._rtt_known = False
        self._last_cut = float("-inf")

    @property
    def current(self) -> int:
        return max(1, int(self.limit))

    async def acquire(self) -> None:
        while self.in_flight >= self.current:
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if fut in self._waiters:
                    self._waiters.remove(fut)
                raise
        self.in_flight += 1
        if self.in_flight > self.max_seen:
            self.max_seen = self.in_flight

    def release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        free = self.current - self.in_flight
        while free > 0 and self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                free -= 1

    def record(self, *, rate_limited: bool, latency: float | None) -> bool:
        """Account one completed attempt; True when it caused a cut."""
        if not self.adaptive:
            return False
        self._round_done += 1
        if rate_limited:
            self._round_limited += 1
            # cut as soon as the round has seen more 429s than a stray one or two, but at
            # most once per round trip: the 429s of one burst are one signal, not many
            size = max(self.current, MIN_ROUND)
            if (
                self._round_limited >= max(2, int(RATE_LIMIT_SHARE * size) + 1)
                and time.monotonic() - self._last_cut >= self._rtt
            ):
                share = self._round_limited / self._round_done
                return self._cut(1.0 - min(0.5, max(0.1, share / 2)))
        elif latency is not None:
            self._round_latency += latency
            self._rtt = 0.8 * self._rtt + 0.2 * latency if self._rtt_known else latency
            self._rtt_known = True
        if self._round_done < max(self.current, MIN_ROUND):
            return False
        answered = self._round_done - self._round_limited
        mean = self._round_latency / answered if answered else None
        self._new_round()
        if mean is not None:
            if self._best_latency and mean > LATENCY_FACTOR * self._best_latency:
                return self._cut(0.9)
            self._best_latency = min(mean, self._best_latency or mean)
        self.limit = min(float(self.maximum), self.limit + 1.0)
        self._wake()
        return False

    def _cut(self, factor: float) -> bool:
        self.limit = max(1.0, self.limit * factor)
        self._last_cut = time.monotonic()
        self._new_round()
        return True

    def _new_round(self) -> None:
        self._round_done = self._round_limited = 0
        self._round_latency = 0.0


class Breaker:
    """Circuit breaker for a gateway that keeps failing (5xx, timeouts, resets).

    ``threshold`` consecutive failures open it: dispatch stops, and after a pause
    one probe request goes out. A success anywhere closes it; a failed probe
    doubles the pause (capped at 300 s); after ``probes`` failed probes the run
    gives up (exit 3, resumable) instead of burning the night on a dead gateway."""

    MAX_PAUSE = 300.0

    def __init__(self, threshold: int, probes: int, pause: float) -> None:
        self.threshold = threshold
        self.probes = probes
        self.pause = pause
        self.failures = 0
        self.is_open = False
        self.probes_failed = 0
        self.lock = asyncio.Lock()
        self._reopen_at = 0.0

    def success(self) -> None:
        self.failures = 0
        self.is_open = False
        self.probes_failed = 0

    def failure(self, *, probe: bool, first_attempt: bool = True) -> bool:
        """Account a server failure; True when the breaker gives up on the gateway."""
        self.failures += 1
        if self.is_open:
            if probe:
                self.probes_failed += 1
                if self.probes_failed >= self.probes:
                    return True
                self._reopen_at = time.monotonic() + self._pause()
        elif self.failures >= self.threshold:
            self.is_open = True
            self._reopen_at = time.monotonic() + self._pause()
        return False

    def _pause(self) -> float:
        return min(self.MAX_PAUSE, self.pause * (2**self.probes_failed))

    @property
    def wait_s(self) -> float:
        return max(0.0, self._reopen_at - time.monotonic())


class Pacer:
    """Everything an attempt waits for before it is sent."""

    def __init__(
        self,
        *,
        concurrency: int,
        adaptive: bool,
        rpm: int | None,
        tpm: int | None,
        backoff_initial: float,
        backoff_max: float,
        breaker: Breaker | None = None,
    ) -> None:
        self.gate = PauseGate()
        self.breaker = breaker or Breaker(25, 8, 5.0)
        self.slots = AdaptiveLimit(concurrency, adaptive=adaptive)
        self._rpm = AsyncLimiter(1, 60.0 / rpm * 1.02) if rpm else None
        self._tpm = AsyncLimiter(tpm, 60.0) if tpm else None
        self._tpm_max = tpm or 0
        self._backoff = (backoff_initial, backoff_max)
        self._cuts_in_a_row = 0
        self._tokens_seen = 0
        self._answers_seen = 0

    async def before_attempt(self, estimate_tokens: int) -> None:
        await self.gate.wait()
        if self._rpm is not None:
            await self._rpm.acquire()
        if self._tpm is not None:
            await self._tpm.acquire(min(self.token_estimate(estimate_tokens), self._tpm_max))

    def token_estimate(self, estimate: int) -> int:
        """Our estimate until answers arrive; then the mean of real usage, with margin,
        because gpt-4o-all bills the fetched file's tokens we cannot see."""
        if self._answers_seen >= 10:
            return max(estimate, int(1.2 * self._tokens_seen / self._answers_seen))
        return estimate

    def answered(self, total_tokens: int | None, latency: float) -> None:
        if total_tokens:
            self._tokens_seen += total_tokens
            self._answers_seen += 1
        self._cuts_in_a_row = 0
        self.slots.record(rate_limited=False, latency=latency)

    def failed(self, *, rate_limited: bool, retry_after: float | None) -> float:
        """Account a failed attempt; returns how long the row should keep its slot."""
        hold = min(self._backoff[0], 1.0) if rate_limited and retry_after is None and self.slots.adaptive else 0.0
        if retry_after is not None and rate_limited:
            self.gate.pause(retry_after)
        cut = self.slots.record(rate_limited=rate_limited, latency=None)
        if cut and rate_limited:
            self._cuts_in_a_row += 1
            if retry_after is None:
                self.gate.pause(backoff(self._cuts_in_a_row, *self._backoff))
        return hold
