"""Pool-wide pacing: RPM/TPM, the pool pause, adaptive concurrency and the circuit breaker.

Every class takes ``clock`` (default :func:`time.monotonic`) and makes all its
decisions with it, so tests drive them with a fake clock and synthetic samples.

Telling load from accident
--------------------------
A gateway answers 429 for two reasons (DESIGN.md section 1): its own limiters (a
capacity cap, an RPM window) when *our* load is too high, and an upstream channel
or another tenant, at random. The first kind goes away when we send less; the
second does not, and cutting concurrency for it only loses throughput (TCP's
lesson: loss that is not congestion must not be read as congestion). docpipe
tells them apart by experiment, not by guess:

- :class:`LearningLimit` is the algorithm, a pure object fed one sample per
  finished attempt, ``(rtt, in_flight, rate_limited)``; :class:`AdaptiveLimit`
  is the semaphore that enforces it. Samples are counted in rounds of ``limit``
  completions (at least 20). A round holding more 429s than the learned
  *background* share explains (more than 2 % and more than one, plus three
  standard deviations of the background) cuts the limit by half its excess share
  (10-50 %), counted from the load actually carried (the round's peak in flight),
  since a cut above it would change nothing.
- Every cut is a trial. Once the pool has drained to the new limit, every
  attempt that finishes counts, answers to requests sent before the cut
  included: a 429 comes back at once and an answer only a latency later, so
  counting only requests sent after the cut would read nothing but 429s for the
  first latency and condemn every cut. The 429 share of the rounds that follow is
  compared with the round that caused the cut; if it fell significantly
  (one-sided two-proportion test at 5 %), the 429s tracked load: the cut stays,
  and if the share is still too high the next cut follows at once.
- That round was picked for its many 429s, and it is no bigger than the limit,
  so near the capacity, where a 10 % cut lowers the share only a little, a cut
  that did help can fail to show it. A cut not proven after three rounds is
  therefore not simply undone: the old limit is measured again for as many
  samples as the lowered one (the *recheck*, an unbiased comparison of equal
  size). Only if the old limit does not see significantly more 429s is the cut
  undone for good, and the share seen at both limits becomes the background:
  from then on only 429s above it count, and every round refines it. Once 429s
  were shown not to track load, a later cut must pass the recheck to overturn
  that (a lucky round is not enough). A cut that helps makes the learner forget
  the background: the share left at the lower limit is partly load, and taken as
  the background it would let the limit grow back into the overload. So a
  capacity-40 gateway drives the limit to about 40 (every cut above 40 clears
  its 429s), while 5 % random 429s cost a trial or two and leave the limit at its
  maximum.
- Latency is treated much the same way: a round whose mean latency is over three
  times the baseline cuts 20 %; unless latency then falls by 10 % (counting only
  answers sent after the cut, whose latency is what the cut can change), the cut
  is undone and that latency becomes the baseline (slow documents are not load).
- A clean round in which the pool was at least half used adds one (additive
  increase), so the limit keeps probing upwards.

Retry-After: a 429 that carries one delays its own row (the retry policy waits
for it), not the pool, nor a worker: the row waits in :meth:`pipeline.pool.Pool.rest`,
which gives its seat to the next row meanwhile (so do back-offs), and only
attempts on the wire hold the slots of :class:`AdaptiveLimit`. The whole pool pauses (:class:`PauseGate`) only when such
429s cluster (:class:`RetryAfterCluster`): an exponentially weighted count
(tau = 2 s) of at least 2.5 of them, e.g. three within half a second or four
within two seconds, making up at least half of the requests sent in that time
(not of the answers, which a 429 outruns by a latency). That
is what a key-wide limit looks like; a tenant's hiccup is not. The pool pause is
capped at ``backoff_max``; each row still honours its own Retry-After in full.

Slot hold: a row that got an anonymous 429 keeps its slot for 0.5-1 x
min(``backoff_initial``, 1 s) before releasing it, so an over-limit slot does not
churn out one instant 429 after another; this holds only while 429s look like
load (no trial yet, or the last 429 trial helped) or a trial is running (so both
limits a trial compares are measured alike), and the limit is adaptive.

RPM and TPM: :class:`Bucket`, a leaky bucket booked ahead of time. RPM is a bucket
of one request that drains every ``60/rpm`` seconds (plus 2 %), so no 60-second
window, measured anywhere, holds more than ``rpm`` requests; TPM a bucket of
``tpm`` tokens draining over 60 s. A send books both buckets at one instant, the
later of the two, so waiting on one never lets the other burst.

Circuit breaker (:class:`Breaker`): it is for a gateway that fails everyone, not
for a handful of rows that always fail. It opens after ``threshold`` server
failures with no success in between *of which at least half the threshold were
rows' first attempts*: a dead gateway fails fresh rows, while a few poisoned rows
in retry (the only rows left at the end of a night) are all retries and never
open it; those rows use up their attempts and end ``failed``. Any success closes
it and resets the counts. While open, one probe goes out after a pause that
doubles per failed probe (cap 300 s); after ``probes`` failed probes the run
gives up on the gateway (exit 3, resumable). The price of the first-attempt rule:
below ``threshold / 2`` in flight, a dead gateway is recognised only once enough
fresh rows have been tried, so a few rows may end ``failed`` first.

How the runner uses it: ``await pacer.slots.acquire()``, ``await
pacer.before_attempt(tokens)``, send; then, before ``pacer.slots.release()``,
either ``pacer.answered(total_tokens, latency)`` and ``pacer.breaker.success()``,
or ``hold = pacer.failed(rate_limited=..., retry_after=...)`` (keep the slot
``hold`` seconds, then release) and, for server failures,
``pacer.breaker.failure(probe=..., first_attempt=...)``.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from enum import Enum

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

MIN_ROUND = 20  # completions; a smaller round would read one stray 429 as a trend
BASE_SHARE = 0.02  # 429 share above the background that a round may hold without a cut
NOISE_SIGMAS = 3.0  # how far above the background share a round's 429 count must be
HELPED_Z = 1.645  # one-sided 5 %: the share after a cut fell, beyond chance
TRIAL_ROUNDS = 3  # rounds a trial may take to show that its cut helped
LATENCY_FACTOR = 3.0  # mean latency over this x the baseline reads as load
LATENCY_CUT = 0.8
LATENCY_HELPED = 0.9  # a latency cut helped when latency fell at least this much
MAX_CUT = 0.5
MIN_CUT = 0.1
CLUSTER_TAU = 2.0  # seconds: memory of the Retry-After cluster detector
CLUSTER_MIN = 2.5  # weighted count of Retry-After 429s that makes a cluster
CLUSTER_SHARE = 0.5  # ...when they are at least this share of recent answers
MAX_HOLD = 1.0  # seconds: ceiling of the slot hold after an anonymous 429
RPM_MARGIN = 1.02  # spacing margin so a loaded event loop never bunches two sends
BACKGROUND_MEMORY = 2000.0  # samples: how much past evidence the background share keeps


class Cause(Enum):
    """What made a cut: the symptom a trial checks afterwards."""

    RATE_LIMITED = "rate_limited"
    LATENCY = "latency"


class Verdict(Enum):
    """A trial's conclusion after one more round at the lowered limit."""

    HELPED = "helped"
    UNDO = "undo"
    CONTINUE = "continue"
    RECHECK = "recheck"  # a 429 cut not proven: measure the old limit again before undoing it


class Tally:
    """Counts of a run of samples (a round, or a trial's rounds): a mutable accumulator."""

    __slots__ = ("answered", "latency", "limited", "n", "peak")

    def __init__(self) -> None:
        self.n = 0
        self.limited = 0
        self.answered = 0
        self.latency = 0.0
        self.peak = 0  # highest in-flight seen, to tell a used pool from an idle one

    def add(self, rtt: float | None, rate_limited: bool, in_flight: int) -> None:
        self.n += 1
        self.peak = max(self.peak, in_flight)
        if rate_limited:
            self.limited += 1
        elif rtt is not None:
            self.answered += 1
            self.latency += rtt

    @property
    def share(self) -> float:
        """Share of 429s among the samples."""
        return self.limited / self.n if self.n else 0.0

    @property
    def mean_latency(self) -> float | None:
        return self.latency / self.answered if self.answered else None


def share_fell(before: Tally, after: Tally) -> bool:
    """True when the 429 share of ``after`` is lower than ``before``'s beyond chance
    (one-sided two-proportion z-test at 5 %)."""
    if not before.n or not after.n:
        return False
    diff = before.share - after.share
    pooled = (before.limited + after.limited) / (before.n + after.n)
    se = math.sqrt(pooled * (1.0 - pooled) * (1.0 / before.n + 1.0 / after.n))
    return diff > 0 and (se == 0.0 or diff / se >= HELPED_Z)


class Trial:
    """A cut under test: the round that caused it, the rounds since, and, once the cut
    could not prove itself, as many samples again back at the old limit (``recheck``)."""

    __slots__ = ("after", "before", "cause", "limit_after", "limit_before", "quick", "recheck", "rounds", "started")

    def __init__(
        self, cause: Cause, before: Tally, limit_before: float, limit_after: float, started: float, *, quick: bool
    ) -> None:
        self.cause = cause
        self.before = before
        self.quick = quick  # may a 429 cut be proven against ``before`` alone?
        self.after = Tally()
        self.recheck: Tally | None = None
        self.limit_before = limit_before
        self.limit_after = limit_after
        self.started = started
        self.rounds = 0

    def judge(self) -> Verdict:
        """Conclude after one more round: helped, look at another round, recheck or undo."""
        self.rounds += 1
        if self.cause is Cause.RATE_LIMITED:
            if self.quick and share_fell(self.before, self.after):
                return Verdict.HELPED
            return Verdict.RECHECK if self.rounds >= TRIAL_ROUNDS else Verdict.CONTINUE
        before, after = self.before.mean_latency, self.after.mean_latency
        if before is not None and after is not None and after <= LATENCY_HELPED * before:
            return Verdict.HELPED
        worse = before is None or after is None or after >= before
        return Verdict.UNDO if worse or self.rounds >= TRIAL_ROUNDS else Verdict.CONTINUE


class LearningLimit:
    """The concurrency-limit algorithm (see the module docstring): a pure object fed
    ``(rtt, in_flight, rate_limited)`` samples, whose every cut is a trial."""

    def __init__(self, maximum: int, *, initial: int | None = None, clock: Clock = time.monotonic) -> None:
        self.maximum = maximum
        self.limit = float(min(initial or maximum, maximum))
        self.background = 0.0  # share of 429s shown not to track load
        self.baseline: float | None = None  # mean latency taken as normal
        self.tracks_load = True  # the latest 429 evidence: did a cut help?
        self.trial: Trial | None = None
        self._clock = clock
        self._round = Tally()
        self._background_weight = 0.0

    @property
    def current(self) -> int:
        return max(1, int(self.limit))

    def sample(self, *, rtt: float | None, in_flight: int, rate_limited: bool) -> bool:
        """Account one finished attempt; True when the limit changed.

        ``rtt``: latency of an answer (None for a failure); ``in_flight``: attempts in
        flight when it finished, itself included; ``rate_limited``: it was a 429."""
        if self.trial is not None:
            return self._sample_trial(self.trial, rtt, in_flight, rate_limited)
        self._round.add(rtt, rate_limited, in_flight)
        if self._round.n < self._round_size():
            return False
        tally, self._round = self._round, Tally()
        return self._end_round(tally, grow=True)

    def excessive(self, tally: Tally) -> bool:
        """More 429s in ``tally`` than the background share and chance explain."""
        n, p = tally.n, self.background
        allowed = max(1, int(BASE_SHARE * n)) + n * p + NOISE_SIGMAS * math.sqrt(n * p * (1.0 - p))
        return tally.limited > allowed

    def _round_size(self) -> int:
        return max(self.current, MIN_ROUND)

    def _end_round(self, tally: Tally, *, grow: bool) -> bool:
        if tally.limited and self.excessive(tally):
            excess = tally.share - self.background
            return self._cut(tally, Cause.RATE_LIMITED, 1.0 - min(MAX_CUT, max(MIN_CUT, excess / 2)))
        if not self.tracks_load:
            self._learn_background(tally)  # 429s shown not to track load: every round refines their share
        mean = tally.mean_latency
        if mean is not None:
            if self.baseline is not None and mean > LATENCY_FACTOR * self.baseline:
                return self._cut(tally, Cause.LATENCY, LATENCY_CUT)
            self.baseline = mean if self.baseline is None else min(self.baseline, mean)
        # grow only when the pool was used: an idle pool says nothing about a higher limit
        if not grow or self.limit >= self.maximum or 2 * tally.peak < self.current:
            return False
        self.limit = min(float(self.maximum), self.limit + 1.0)
        return True

    def _cut(self, tally: Tally, cause: Cause, factor: float) -> bool:
        # cut from the load actually carried: below an unused limit a cut would change nothing
        lowered = max(1.0, min(self.limit, float(tally.peak)) * factor)
        if int(lowered) >= self.current:
            return False  # at the floor already: nothing to try
        # once 429s were shown not to track load, only the unbiased recheck may overturn that
        self.trial = Trial(cause, tally, self.limit, lowered, self._clock(), quick=self.tracks_load)
        self.limit = lowered
        return True

    def _sample_trial(self, trial: Trial, rtt: float | None, in_flight: int, rate_limited: bool) -> bool:
        if trial.recheck is not None:
            return self._sample_recheck(trial, trial.recheck, rtt, in_flight, rate_limited)
        if in_flight > self.current:
            return False  # the pool is still draining: this is the load from before the cut
        if trial.cause is Cause.LATENCY and rtt is not None and self._clock() - rtt < trial.started:
            return False  # its latency is the load from before the cut
        # A 429 trial counts every answer, sent before the cut or not: an instant 429 to a
        # request sent after the cut arrives at once, that request's answer only a latency
        # later, so counting only requests sent after the cut reads nothing but 429s at first.
        trial.after.add(rtt, rate_limited, in_flight)
        if trial.after.n < self._round_size() * (trial.rounds + 1):
            return False
        verdict = trial.judge()
        if verdict is Verdict.CONTINUE:
            return False
        if verdict is Verdict.HELPED:
            return self._helped(trial)
        if verdict is Verdict.RECHECK:
            trial.recheck = Tally()
            self.limit = trial.limit_before
            return True
        return self._undo(trial)

    def _sample_recheck(
        self, trial: Trial, recheck: Tally, rtt: float | None, in_flight: int, rate_limited: bool
    ) -> bool:
        recheck.add(rtt, rate_limited, in_flight)
        if recheck.n < trial.after.n:
            return False
        if share_fell(recheck, trial.after):
            self.limit = trial.limit_after  # the old limit sees more 429s after all: load
            self._helped(trial)
            return True
        return self._undo(trial)

    def _helped(self, trial: Trial) -> bool:
        """The cut lowered the symptom: it stays; if the lowered limit still sees too much, cut again."""
        self.trial = None
        if trial.cause is Cause.RATE_LIMITED:
            # the 429s track load; a background learned from an earlier trial that did not
            # help is suspect now (the share left at the lower limit is partly load too, so it
            # is no estimate of it either): forget it, a trial that fails will learn it again
            self.tracks_load = True
            self.background = 0.0
            self._background_weight = 0.0
        return self._end_round(trial.after, grow=False)

    def _undo(self, trial: Trial) -> bool:
        """The cut did not help: go back, and take what was seen as the new normal."""
        self.trial = None
        changed = self.limit != trial.limit_before  # not after a recheck: back there already
        self.limit = trial.limit_before
        after = trial.after
        if trial.cause is Cause.RATE_LIMITED:
            self.tracks_load = False
            self._learn_background(after)
            if trial.recheck is not None:
                self._learn_background(trial.recheck)
        elif after.mean_latency is not None:
            before = trial.before.mean_latency or after.mean_latency
            self.baseline = min(before, after.mean_latency)
        return changed

    def _learn_background(self, tally: Tally) -> None:
        weight = self._background_weight
        self.background = (self.background * weight + tally.limited) / (weight + tally.n)
        self._background_weight = min(weight + tally.n, BACKGROUND_MEMORY)


class AdaptiveLimit:
    """A semaphore whose size follows a :class:`LearningLimit` between 1 and ``maximum``."""

    def __init__(
        self, maximum: int, *, adaptive: bool = True, initial: int | None = None, clock: Clock = time.monotonic
    ) -> None:
        self.maximum = maximum
        self.adaptive = adaptive
        self.learner = LearningLimit(maximum, initial=initial, clock=clock)
        self.in_flight = 0
        self.max_seen = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def current(self) -> int:
        return self.learner.current

    def try_acquire(self) -> bool:
        """Take a slot if one is free now."""
        if self.in_flight >= self.current:
            return False
        self.in_flight += 1
        self.max_seen = max(self.max_seen, self.in_flight)
        return True

    async def acquire(self) -> None:
        """Wait for a free slot (first come, first served) and take it."""
        while not self.try_acquire():
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if fut in self._waiters:
                    self._waiters.remove(fut)
                raise

    def release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def record(self, *, rate_limited: bool, latency: float | None, in_flight: int | None = None) -> bool:
        """Feed one finished attempt to the learner; True when the limit changed.

        ``in_flight`` defaults to the slots taken now (the finishing attempt's included)."""
        if not self.adaptive:
            return False
        sampled = self.in_flight if in_flight is None else in_flight
        changed = self.learner.sample(rtt=latency, in_flight=sampled, rate_limited=rate_limited)
        if changed:
            self._wake()
        return changed

    def _wake(self) -> None:
        free = self.current - self.in_flight
        while free > 0 and self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                free -= 1


class PauseGate:
    """Holds new attempts until the pool-wide pause is over."""

    def __init__(self, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep) -> None:
        self._clock = clock
        self._sleep = sleep
        self._until = clock()

    def pause(self, seconds: float) -> None:
        """Hold new attempts for ``seconds`` from now (a longer pause already set stays)."""
        self._until = max(self._until, self._clock() + seconds)

    @property
    def remaining(self) -> float:
        return max(0.0, self._until - self._clock())

    async def wait(self) -> None:
        """Return once no pause is in force."""
        while (delay := self._until - self._clock()) > 0:
            await self._sleep(delay)


class RetryAfterCluster:
    """Tells a cluster of Retry-After 429s (a key-wide limit) from a lone one.

    Exponentially weighted counts (time constant ``tau``) of the attempts *sent* and
    of the 429s with Retry-After that came back; a cluster is a weighted count of at
    least :data:`CLUSTER_MIN` that is also :data:`CLUSTER_SHARE` of the attempts sent.
    Not a share of the answers: a 429 comes back at once and an answer a latency
    later, so the first answers of a run (or every answer window shorter than the
    latency) hold little else than the random 429s. Counted against answers, the
    three 429s among a pool's first hundred requests paused the whole pool for their
    Retry-After at the start of issue 10's unkind fault runs."""

    def __init__(self, *, clock: Clock = time.monotonic, tau: float = CLUSTER_TAU) -> None:
        self._clock = clock
        self._tau = tau
        self._stamp = clock()
        self._sent = 0.0
        self._retry_after = 0.0

    def sent(self) -> None:
        """Account one attempt going on the wire."""
        self._decay()
        self._sent += 1.0

    def note(self, *, retry_after_429: bool) -> bool:
        """Account one finished attempt; True when Retry-After 429s now cluster."""
        if not retry_after_429:
            return False
        self._decay()
        self._retry_after += 1.0
        return self._retry_after >= CLUSTER_MIN and self._retry_after >= CLUSTER_SHARE * self._sent

    def _decay(self) -> None:
        now = self._clock()
        if now > self._stamp:
            decay = math.exp(-(now - self._stamp) / self._tau)
            self._sent *= decay
            self._retry_after *= decay
            self._stamp = now


class Bucket:
    """A leaky bucket of ``capacity`` units that drains in ``period`` seconds, booked ahead:
    :meth:`earliest` says when ``amount`` fits, :meth:`take` books it for that time."""

    def __init__(self, capacity: float, period: float, *, clock: Clock = time.monotonic) -> None:
        self.capacity = capacity
        self._per_unit = period / capacity  # seconds one unit takes to drain
        self._clock = clock
        self._empty_at = clock()  # when the bucket, with everything booked, is empty

    def earliest(self, amount: float) -> float:
        """Earliest clock time at which ``amount`` (capped at the capacity) fits."""
        amount = min(amount, self.capacity)
        return max(self._clock(), self._empty_at - (self.capacity - amount) * self._per_unit)

    def take(self, amount: float, at: float) -> None:
        """Book ``amount`` as poured in at clock time ``at`` (from :meth:`earliest`)."""
        self._empty_at = max(self._empty_at, at) + min(amount, self.capacity) * self._per_unit


class Breaker:
    """Circuit breaker for a gateway that fails everyone (rule in the module docstring).

    ``threshold`` server failures since the last success, at least half of them
    rows' first attempts, open it; a success anywhere closes it; after ``probes``
    failed probes :meth:`failure` answers True: give up on the gateway."""

    MAX_PAUSE = 300.0

    def __init__(self, threshold: int, probes: int, pause: float, *, clock: Clock = time.monotonic) -> None:
        self.threshold = threshold
        self.probes = probes
        self.pause = pause
        self.failures = 0  # server failures since the last success
        self.fresh_failures = 0  # ...of which first attempts, so each one a distinct row
        self.is_open = False
        self.probes_failed = 0
        self.lock = asyncio.Lock()  # the runner sends one probe at a time under it
        self._clock = clock
        self._reopen_at = clock()

    @property
    def fresh_needed(self) -> int:
        """Distinct rows (first attempts) that must have failed before it opens."""
        return max(1, math.ceil(self.threshold / 2))

    def success(self) -> None:
        self.failures = 0
        self.fresh_failures = 0
        self.is_open = False
        self.probes_failed = 0

    def failure(self, *, probe: bool, first_attempt: bool = True) -> bool:
        """Account a server failure; True when the breaker gives up on the gateway (run-fatal).

        ``first_attempt``: the failure ended a row's first attempt (defaults to True
        for callers that do not know, which makes every failure count)."""
        self.failures += 1
        if first_attempt:
            self.fresh_failures += 1
        if self.is_open:
            if probe:
                self.probes_failed += 1
                if self.probes_failed >= self.probes:
                    return True
                self._reopen_at = self._clock() + self._pause()
        elif self.failures >= self.threshold and self.fresh_failures >= self.fresh_needed:
            self.is_open = True
            self._reopen_at = self._clock() + self._pause()
        return False

    def _pause(self) -> float:
        return min(self.MAX_PAUSE, self.pause * 2.0**self.probes_failed)

    @property
    def wait_s(self) -> float:
        """Seconds until the next probe may go out."""
        return max(0.0, self._reopen_at - self._clock())


class Pacer:
    """Everything an attempt waits for before it is sent, and what its outcome teaches."""

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
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.gate = PauseGate(clock=clock, sleep=sleep)
        self.breaker = breaker or Breaker(25, 8, 5.0, clock=clock)
        self.slots = AdaptiveLimit(concurrency, adaptive=adaptive, clock=clock)
        self.cluster = RetryAfterCluster(clock=clock)
        self._rpm = Bucket(1, 60.0 / rpm * RPM_MARGIN, clock=clock) if rpm else None
        self._tpm = Bucket(tpm, 60.0, clock=clock) if tpm else None
        self._hold = min(backoff_initial, MAX_HOLD) if adaptive else 0.0
        self._max_pause = backoff_max
        self._clock = clock
        self._sleep = sleep
        self._rng = rng
        self._tokens_seen = 0
        self._answers_seen = 0

    async def before_attempt(self, estimate_tokens: int) -> None:
        """Wait out a pool pause, then the RPM/TPM booking for this attempt."""
        await self.gate.wait()
        delay = self.book(estimate_tokens)
        if delay > 0:
            await self._sleep(delay)
        self.cluster.sent()

    def book(self, estimate_tokens: int) -> float:
        """Book the next send with the RPM and TPM buckets; seconds until it may go."""
        now = self._clock()
        at = now
        tokens = self.token_estimate(estimate_tokens)
        if self._rpm is not None:
            at = max(at, self._rpm.earliest(1))
        if self._tpm is not None:
            at = max(at, self._tpm.earliest(tokens))
        if self._rpm is not None:
            self._rpm.take(1, at)
        if self._tpm is not None:
            self._tpm.take(tokens, at)
        return at - now

    def token_estimate(self, estimate: int) -> int:
        """Our estimate until answers arrive; then the mean of real usage, with margin,
        because gpt-4o-all bills the fetched file's tokens we cannot see."""
        if self._answers_seen >= 10:
            return max(estimate, int(1.2 * self._tokens_seen / self._answers_seen))
        return estimate

    def answered(self, total_tokens: int | None, latency: float) -> None:
        """Account an answer (call before releasing its slot)."""
        if total_tokens:
            self._tokens_seen += total_tokens
            self._answers_seen += 1
        self.slots.record(rate_limited=False, latency=latency)

    def failed(self, *, rate_limited: bool, retry_after: float | None) -> float:
        """Account a failed attempt (call before releasing its slot); returns how long the
        row should keep holding its slot before releasing it (0.0: release now)."""
        server_wait = retry_after if rate_limited else None
        if self.cluster.note(retry_after_429=server_wait is not None) and server_wait is not None:
            self.gate.pause(min(server_wait, self._max_pause))
        self.slots.record(rate_limited=rate_limited, latency=None)
        if not rate_limited or server_wait is not None or not self._hold:
            return 0.0
        learner = self.slots.learner
        if not (learner.tracks_load or learner.trial is not None):
            return 0.0  # 429s shown not to track load: holding the slot would only idle it
        return self._hold * (0.5 + 0.5 * self._rng())
