"""Pacing decisions with a fake clock and synthetic samples: no sleeps, no network.

The closed-loop tests drive a :class:`Pacer` against a model gateway in simulated
time (an event queue), so "after 10 s" means ten simulated seconds."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from pipeline.limits import (
    AdaptiveLimit,
    Breaker,
    Bucket,
    Cause,
    LearningLimit,
    Pacer,
    PauseGate,
    RetryAfterCluster,
    Tally,
    share_fell,
)


class FakeClock:
    """A clock tests move by hand; its ``sleep`` moves it instead of waiting."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


def tally(n: int, limited: int, *, peak: int = 0, latency: float | None = None) -> Tally:
    t = Tally()
    for i in range(n):
        t.add(latency, i < limited, peak)
    return t


def feed(
    limit: LearningLimit, n: int, *, limited: int = 0, in_flight: int | None = None, rtt: float | None = None
) -> list[bool]:
    """``n`` samples, the first ``limited`` of them 429s; what each returned."""
    flight = limit.current if in_flight is None else in_flight
    return [
        limit.sample(rtt=None if i < limited else rtt, in_flight=flight, rate_limited=i < limited) for i in range(n)
    ]


def pacer(clock: FakeClock, **kw: object) -> Pacer:
    settings: dict[str, object] = {
        "concurrency": 100,
        "adaptive": True,
        "rpm": None,
        "tpm": None,
        "backoff_initial": 0.5,
        "backoff_max": 5.0,
    }
    settings.update(kw)
    return Pacer(clock=clock, sleep=clock.sleep, rng=random.Random(7).random, **settings)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- Bucket (RPM, TPM)


@pytest.mark.parametrize("rpm", [1, 10, 60, 120, 1000])
def test_rpm_bucket_never_puts_more_than_rpm_sends_in_any_60_s_window(rpm: int) -> None:
    clock = FakeClock()
    bucket = Bucket(1, 60.0 / rpm * 1.02, clock=clock)
    sends = []
    for _ in range(3 * rpm + 5):
        at = bucket.earliest(1)
        bucket.take(1, at)
        sends.append(at)
    assert sends[0] == clock.now  # the first goes at once
    assert all(b - a >= 60.0 / rpm for a, b in itertools.pairwise(sends))
    assert max(sum(1 for s in sends if w <= s < w + 60.0) for w in sends) <= rpm


def test_tpm_bucket_allows_a_burst_up_to_capacity_then_paces_by_the_drain() -> None:
    clock = FakeClock()
    bucket = Bucket(6000, 60.0, clock=clock)  # drains 100 tokens a second
    times = []
    for _ in range(4):
        at = bucket.earliest(2000)
        bucket.take(2000, at)
        times.append(at - clock.now)
    assert times == pytest.approx([0.0, 0.0, 0.0, 20.0])
    clock.advance(100.0)  # long idle: the bucket is empty again
    assert bucket.earliest(6000) == clock.now
    assert bucket.earliest(10**9) == clock.now  # an estimate above the capacity waits for an empty bucket only


def test_bucket_booking_in_the_future_still_spaces_the_sends() -> None:
    clock = FakeClock()
    bucket = Bucket(1, 1.0, clock=clock)
    bucket.take(1, clock.now + 5.0)  # booked for later (waiting on another bucket)
    assert bucket.earliest(1) == clock.now + 6.0


# ---------------------------------------------------------------------------- PauseGate


def test_pause_gate_keeps_the_longest_pause_and_wait_returns_when_it_is_over() -> None:
    clock = FakeClock()
    gate = PauseGate(clock=clock, sleep=clock.sleep)
    assert gate.remaining == 0.0
    gate.pause(3.0)
    gate.pause(1.0)  # a shorter pause does not shorten the longer one
    assert gate.remaining == 3.0
    asyncio.run(asyncio.wait_for(gate.wait(), 5))
    assert clock.slept == [3.0] and gate.remaining == 0.0


# ---------------------------------------------------------------------------- the learning limit: decisions


@pytest.mark.parametrize(
    ("n", "limited", "background", "excessive"),
    [
        (100, 0, 0.0, False),
        (100, 2, 0.0, False),  # a stray 429 or two is not a trend
        (100, 3, 0.0, True),
        (20, 2, 0.0, True),
        (500, 10, 0.0, False),  # 2 %
        (500, 11, 0.0, True),
        (100, 9, 0.05, False),  # explained by a 5 % background
        (100, 14, 0.05, True),  # background + 2 % + 3 sigma exceeded
        (100, 60, 0.5, False),
    ],
)
def test_excessive_429s_are_those_the_background_share_does_not_explain(
    n: int, limited: int, background: float, excessive: bool
) -> None:
    limit = LearningLimit(100)
    limit.background = background
    assert limit.excessive(tally(n, limited)) is excessive


@pytest.mark.parametrize(
    ("before", "after", "fell"),
    [
        ((200, 170), (100, 65), True),  # capacity far away: 85 % -> 65 %
        ((43, 4), (38, 0), True),  # capacity close: a few 429s gone
        ((43, 2), (38, 0), False),  # too few to tell yet (the trial looks at another round)
        ((43, 2), (114, 0), True),
        ((100, 5), (90, 5), False),  # random 5 %: unchanged
        ((100, 5), (90, 2), False),  # lower by chance, not significantly
        ((100, 5), (90, 9), False),
        ((50, 50), (50, 50), False),
    ],
)
def test_share_fell_is_a_one_sided_test(before: tuple[int, int], after: tuple[int, int], fell: bool) -> None:
    assert share_fell(tally(*before), tally(*after)) is fell


@pytest.mark.parametrize(
    ("limit", "peak", "grows_to"),
    [(10, 10, 11), (10, 5, 11), (10, 4, 10), (100, 100, 100)],  # only a used pool grows; never past maximum
)
def test_a_clean_round_adds_one_when_the_pool_was_used(limit: int, peak: int, grows_to: int) -> None:
    learner = LearningLimit(100, initial=limit)
    feed(learner, 20, in_flight=peak)  # round of max(limit, 20)
    if limit > 20:
        feed(learner, limit - 20, in_flight=peak)
    assert learner.current == grows_to


def test_a_cut_that_helps_stays_and_one_that_does_not_is_undone() -> None:
    clock = FakeClock()
    learner = LearningLimit(100, clock=clock)
    assert feed(learner, 100, limited=10)[-1] is True  # 10 % 429s: cut
    assert learner.current == 90 and learner.trial is not None and learner.trial.cause is Cause.RATE_LIMITED
    feed(learner, 50, limited=50, in_flight=100)  # still draining the old load: ignored
    assert learner.trial.after.n == 0
    feed(learner, 90, limited=0)  # the 429s are gone at 90: load
    assert learner.trial is None and learner.current == 90 and learner.tracks_load

    learner = LearningLimit(100, clock=clock)
    feed(learner, 100, limited=10)
    feed(learner, 3 * 90, limited=27)  # the same share at the lower limit for three rounds
    assert learner.trial is not None and learner.trial.recheck is not None
    assert learner.current == 100  # back at the old limit, measuring it again
    feed(learner, 270, limited=27)  # the same share there too: accident
    assert learner.trial is None and learner.current == 100
    assert not learner.tracks_load and learner.background == pytest.approx(0.1)
    feed(learner, 100, limited=10)  # the same share again: now explained, no cut
    assert learner.current == 100 and learner.trial is None


def test_a_trial_that_is_not_yet_conclusive_looks_at_more_rounds_then_rechecks_then_gives_up() -> None:
    learner = LearningLimit(50, clock=FakeClock())
    feed(learner, 50, limited=3, in_flight=50)
    assert learner.current == 45
    for rounds in (1, 2):
        feed(learner, 45, limited=2)  # lower, not significantly
        assert learner.trial is not None and learner.trial.rounds == rounds and learner.current == 45
    feed(learner, 45, limited=2)
    assert learner.trial is not None and learner.trial.recheck is not None and learner.current == 50
    feed(learner, 134, limited=6)  # the old limit, measured as long as the lowered one: no higher
    assert learner.trial is not None
    feed(learner, 1, limited=0)
    assert learner.trial is None and learner.current == 50 and not learner.tracks_load
    assert learner.background == pytest.approx(12 / 270)


def test_a_recheck_that_finds_more_429s_at_the_old_limit_restores_the_cut() -> None:
    """Near capacity a 10 % cut lowers the 429 share too little to prove against one small
    round; measured again for as long, the old limit shows it (tests/test_gateway.py's run)."""
    learner = LearningLimit(200, initial=49, clock=FakeClock())
    learner.background = 0.1  # learned from an earlier trial that went wrong
    learner.tracks_load = False
    feed(learner, 49, limited=40)  # excessive even so: cut
    assert learner.current == 31 and learner.trial is not None and not learner.trial.quick
    feed(learner, 31, limited=0)  # 429s gone, but only the recheck may overturn "not load"
    feed(learner, 62, limited=0)
    assert learner.trial is not None and learner.trial.recheck is not None and learner.current == 49
    assert feed(learner, 93, limited=20)[-1] is True  # 22 % at the old limit: load after all
    assert learner.trial is None and learner.current == 31 and learner.tracks_load
    assert learner.background == 0.0  # the background came from a trial that went wrong


def test_a_helped_cut_forgets_a_background_share_that_was_load() -> None:
    """A helped cut says the 429s track load; the share left at the lowered limit is load too,
    and taken as the background it would let the limit grow back into the overload."""
    learner = LearningLimit(200, initial=66, clock=FakeClock())
    learner.background, learner.tracks_load = 0.3, False
    feed(learner, 66, limited=47)  # 71 %: cut to 52
    feed(learner, 3 * 52, limited=39)  # 25 %
    feed(learner, 3 * 52, limited=64)  # 41 % at the old limit: load
    assert learner.tracks_load and learner.background == 0.0
    # 25 % left at 52 is excessive now: cut again at once, where keeping that share as the
    # background would have let the limit grow back towards 66
    assert learner.current == 45 and learner.trial is not None and int(learner.trial.limit_before) == 52


def test_a_helped_cut_that_still_sees_too_many_429s_cuts_again_at_once() -> None:
    learner = LearningLimit(200, clock=FakeClock())
    feed(learner, 200, limited=170, in_flight=200)  # 85 %: cut by half the share
    lowered = learner.current
    assert lowered == 114
    assert feed(learner, lowered, limited=lowered // 2)[-1] is True  # 50 %: helped, still too many
    assert learner.current < lowered and learner.trial is not None


def test_a_429_trial_counts_answers_to_requests_sent_before_the_cut() -> None:
    """The mechanism of the capacity-40 failure: 200 in flight, 40 of them accepted by the
    gateway. After the cut, 429s to requests sent since arrive at once, while the answers to
    requests sent since arrive only a latency later; counting only those, the trial saw
    nothing but 429s, undid the cut and learned a background of 100 %."""
    clock = FakeClock()
    learner = LearningLimit(200, clock=clock)
    feed(learner, 200, limited=184, in_flight=200)
    assert learner.current == 108 and learner.trial is not None
    for _ in range(6):  # 0.5 s: per 0.1 s, 8 answers to requests sent 0.5 s ago, 10 instant 429s
        clock.advance(0.1)
        for _ in range(8):
            learner.sample(rtt=0.5, in_flight=100, rate_limited=False)
        for _ in range(10):
            learner.sample(rtt=None, in_flight=100, rate_limited=True)
    # 48 answers and 60 429s: the share fell from 92 % to 56 %, and still too high, cut again
    assert learner.tracks_load and learner.background == 0.0
    assert learner.current < 108 and learner.trial is not None and learner.trial.limit_before == 108


def test_answers_sent_before_a_latency_cut_do_not_count_in_its_trial() -> None:
    clock = FakeClock()
    learner = LearningLimit(20, clock=clock)
    feed(learner, 20, rtt=1.0)
    feed(learner, 20, rtt=4.0)
    assert learner.trial is not None and learner.trial.cause is Cause.LATENCY
    clock.advance(1.0)
    learner.sample(rtt=5.0, in_flight=10, rate_limited=False)  # sent 5 s ago: its latency is the old load
    assert learner.trial.after.n == 0
    learner.sample(rtt=0.5, in_flight=10, rate_limited=False)
    assert learner.trial.after.n == 1


def test_the_cut_is_taken_from_the_load_carried_not_from_an_unused_limit() -> None:
    learner = LearningLimit(100, clock=FakeClock())
    feed(learner, 100, limited=20, in_flight=30)  # only 30 in flight under a limit of 100
    assert learner.current == 27


def test_no_trial_at_a_limit_of_one() -> None:
    learner = LearningLimit(1, clock=FakeClock())
    feed(learner, 20, limited=20)
    assert learner.current == 1 and learner.trial is None


def test_latency_cut_is_undone_when_latency_does_not_fall_and_the_new_level_becomes_normal() -> None:
    clock = FakeClock()
    learner = LearningLimit(20, clock=clock)
    feed(learner, 20, rtt=1.0)
    assert learner.baseline == 1.0
    feed(learner, 20, rtt=4.0)  # slower documents arrive
    assert learner.current == 16 and learner.trial is not None and learner.trial.cause is Cause.LATENCY
    clock.advance(10.0)  # answers sent after the cut
    feed(learner, 20, rtt=4.0)
    assert learner.trial is None and learner.current == 20 and learner.baseline == 4.0
    feed(learner, 20, rtt=4.0)  # the same latency is normal now
    assert learner.trial is None and learner.current == 20


def test_latency_cut_stays_when_latency_falls() -> None:
    clock = FakeClock()
    learner = LearningLimit(20, clock=clock)
    feed(learner, 20, rtt=1.0)
    feed(learner, 20, rtt=4.0)
    clock.advance(10.0)
    feed(learner, 20, rtt=3.0)  # a queue: less load, less waiting
    assert learner.trial is None and learner.current == 16


# ---------------------------------------------------------------------------- closed loop against model gateways


@dataclass(frozen=True)
class Trace:
    """One finished attempt in a simulated run."""

    at: float
    limit: int
    in_flight: int
    rate_limited: bool


def simulate(
    p: Pacer,
    clock: FakeClock,
    *,
    seconds: float,
    latency: float,
    reject: Callable[[int, random.Random], bool],
    demand: int | None = None,
    seed: int = 1,
) -> list[Trace]:
    """Keep the pacer's slots full against a model gateway: ``reject(accepted_in_flight, rng)``
    says whether a request gets an instant empty-body 429; others answer after ``latency``.
    A 429 holds its slot for what :meth:`Pacer.failed` returns."""
    rng = random.Random(seed)
    events: list[tuple[float, int, str]] = []
    start, seq, accepted, trace = clock.now, 0, 0, []
    while clock.now - start < seconds:
        while (demand is None or p.slots.in_flight < demand) and p.slots.try_acquire():
            seq += 1
            if reject(accepted, rng):
                heapq.heappush(events, (clock.now + 0.005, seq, "429"))
            else:
                accepted += 1
                heapq.heappush(events, (clock.now + latency * rng.uniform(0.8, 1.2), seq, "ok"))
        clock.now, _, kind = heapq.heappop(events)
        hold = 0.0
        if kind == "ok":
            accepted -= 1
            p.answered(100, latency)
        elif kind == "429":
            hold = p.failed(rate_limited=True, retry_after=None)
        if kind != "release":
            trace.append(Trace(clock.now - start, p.slots.current, p.slots.in_flight, kind == "429"))
        if hold > 0:
            seq += 1
            heapq.heappush(events, (clock.now + hold, seq, "release"))
        else:
            p.slots.release()
    return trace


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_capacity_40_drives_the_limit_to_about_40_and_keeps_it_there(seed: int) -> None:
    clock = FakeClock()
    p = pacer(clock, concurrency=200)
    trace = simulate(p, clock, seconds=40, latency=0.5, reject=lambda accepted, _: accepted >= 40, seed=seed)
    late = [t for t in trace if t.at >= 10]
    share = sum(t.rate_limited for t in late) / len(late)
    print(f"late 429 share {share:.4f}, limits {min(t.limit for t in late)}-{max(t.limit for t in late)}")
    assert share < 0.05
    assert all(33 <= t.limit <= 46 for t in late)
    assert sum(t.in_flight for t in late) / len(late) >= 35  # in flight near 40, not collapsed
    assert p.slots.learner.tracks_load


@pytest.mark.parametrize(("maximum", "demand", "seed"), [(100, None, 1), (100, None, 2), (100, 30, 3), (8, None, 4)])
def test_random_429s_at_any_load_keep_the_limit_at_the_maximum(maximum: int, demand: int | None, seed: int) -> None:
    clock = FakeClock()
    p = pacer(clock, concurrency=maximum)
    trace = simulate(
        p, clock, seconds=30, latency=0.2, demand=demand, seed=seed, reject=lambda _, rng: rng.random() < 0.05
    )
    share = sum(t.rate_limited for t in trace) / len(trace)
    carried = min(maximum, demand or maximum)
    mean_in_flight = sum(t.in_flight for t in trace) / len(trace)
    print(f"429 share {share:.3f}, background {p.slots.learner.background:.3f}, in flight {mean_in_flight:.1f}")
    assert mean_in_flight >= 0.95 * carried  # the 429s did not throttle the pool
    assert p.slots.current >= carried  # and it ends at (or back at) the load offered
    assert p.slots.learner.background == pytest.approx(0.05, abs=0.02)


def simulate_rows(
    p: Pacer, clock: FakeClock, *, seconds: float, latency: float, capacity: int, workers: int, seed: int
) -> list[Trace]:
    """The row sender's dynamic against a gateway of ``capacity`` (an instant empty-body 429
    above it): ``workers`` rows at a time, each taking a slot per attempt; a row that got a
    429 keeps its slot for the hold, releases it, then waits the back-off (full jitter from
    ``backoff_initial`` 0.5 s, doubling, cap 5 s) before queueing for a slot again, while
    fresh rows (first come, first served) fill the slots it left. Answers free their worker
    for a fresh row. The back-off takes rows out of the pool, so the load offered at a given
    limit changes as rows collect 429s."""
    rng = random.Random(seed)
    events: list[tuple[float, int, str, list[int]]] = []
    waiting: deque[list[int]] = deque([0] for _ in range(workers))  # a row: [429s so far]
    start, seq, accepted, trace = clock.now, itertools.count(), 0, []

    def dispatch() -> None:
        nonlocal accepted
        while waiting and p.slots.try_acquire():
            row = waiting.popleft()
            if accepted >= capacity:
                heapq.heappush(events, (clock.now + 0.005, next(seq), "429", row))
            else:
                accepted += 1
                heapq.heappush(events, (clock.now + latency * rng.uniform(0.8, 1.2), next(seq), "ok", row))

    def back_off(row: list[int]) -> None:
        p.slots.release()
        wait = min(5.0, 0.5 * 2 ** (row[0] - 1)) * rng.random()
        heapq.heappush(events, (clock.now + wait, next(seq), "retry", row))

    dispatch()
    while clock.now - start < seconds:
        clock.now, _, kind, row = heapq.heappop(events)
        if kind == "ok":
            accepted -= 1
            p.answered(100, latency)
            p.slots.release()
            waiting.append([0])  # the worker takes a fresh row
        elif kind == "429":
            row[0] += 1
            hold = p.failed(rate_limited=True, retry_after=None)
            if hold > 0:
                heapq.heappush(events, (clock.now + hold, next(seq), "release", row))
            else:
                back_off(row)
        elif kind == "release":
            back_off(row)
        else:  # back from its back-off: queue for a slot behind the rows already waiting
            waiting.append(row)
        if kind in ("ok", "429"):
            trace.append(Trace(clock.now - start, p.slots.current, p.slots.in_flight, kind == "429"))
        dispatch()
    return trace


@pytest.mark.parametrize("seed", range(1, 9))
def test_capacity_40_with_rows_backing_off_after_a_429_still_finds_about_40(seed: int) -> None:
    """The run's shape (tests/test_gateway.py's capacity test): 200 rows, limit 200, rows
    that got a 429 come back only after a back-off and fresh rows fill their slots."""
    clock = FakeClock()
    p = Pacer(concurrency=200, adaptive=True, rpm=None, tpm=None, backoff_initial=0.5, backoff_max=5.0,
              clock=clock, sleep=clock.sleep, rng=random.Random(seed).random)  # fmt: skip
    trace = simulate_rows(p, clock, seconds=30, latency=0.5, capacity=40, workers=200, seed=seed)
    late = [t for t in trace if t.at >= 10]
    share = sum(t.rate_limited for t in late) / len(late)
    print(f"late 429 share {share:.4f}, limits {min(t.limit for t in late)}-{max(t.limit for t in late)}, "
          f"background {p.slots.learner.background:.3f}")  # fmt: skip
    assert share < 0.05
    assert all(30 <= t.limit <= 50 for t in late)
    assert sum(t.in_flight for t in late) / len(late) >= 35
    assert p.slots.learner.tracks_load


def test_an_anonymous_429_holds_its_slot_only_while_429s_look_like_load() -> None:
    clock = FakeClock()
    p = pacer(clock, backoff_initial=4.0)
    hold = p.failed(rate_limited=True, retry_after=None)
    assert 0.5 <= hold <= 1.0  # 0.5-1 x min(backoff_initial, 1 s)
    assert p.failed(rate_limited=True, retry_after=2.0) == 0.0  # its own Retry-After is the wait
    assert p.failed(rate_limited=False, retry_after=None) == 0.0  # a 500 is not a rate limit
    p.slots.learner.tracks_load = False  # a trial showed the 429s do not track load
    assert p.failed(rate_limited=True, retry_after=None) == 0.0
    assert pacer(clock, adaptive=False).failed(rate_limited=True, retry_after=None) == 0.0


# ---------------------------------------------------------------------------- Retry-After: lone vs cluster


def test_a_lone_retry_after_delays_only_its_row() -> None:
    clock = FakeClock()
    p = pacer(clock)
    for _ in range(20):
        clock.advance(0.05)
        p.answered(100, 0.2)
    p.failed(rate_limited=True, retry_after=30.0)
    assert p.gate.remaining == 0.0


def test_a_burst_of_retry_after_429s_pauses_the_pool_capped_at_backoff_max() -> None:
    clock = FakeClock()
    p = pacer(clock, backoff_max=5.0)
    p.answered(100, 0.2)
    paused = []
    for _ in range(4):
        clock.advance(0.1)
        p.failed(rate_limited=True, retry_after=2.0)
        paused.append(p.gate.remaining > 0)
    assert paused == [False, False, True, True]
    p.failed(rate_limited=True, retry_after=60.0)
    assert p.gate.remaining == 5.0  # the pool waits at most backoff_max; each row its own Retry-After


def test_random_retry_after_429s_among_many_answers_never_pause_the_pool() -> None:
    clock = FakeClock()
    p = pacer(clock)
    rng = random.Random(3)
    paused = 0
    for _ in range(20_000):  # 10 s at 2 000 answers a second, 2.5 % of them 429 with Retry-After
        clock.advance(0.0005)
        p.cluster.sent()
        if rng.random() < 0.025:
            p.failed(rate_limited=True, retry_after=1.0)
            paused += p.gate.remaining > 0
        else:
            p.answered(100, 0.2)
    assert paused == 0


def test_the_first_429s_of_a_run_are_not_a_cluster_though_they_beat_every_answer_back() -> None:
    # issue 10: a pool sends 100 requests at once; 3 come back at once as 429 + Retry-After,
    # the 97 answers only a latency later. Counted against answers, 3 of 3 paused the pool.
    clock = FakeClock()
    p = pacer(clock)
    for _ in range(100):
        p.cluster.sent()
    clock.advance(0.005)
    for _ in range(3):
        p.failed(rate_limited=True, retry_after=1.0)
    assert p.gate.remaining == 0.0
    # later, a key-wide limit answers every request sent with one: the pool pauses
    clock.advance(10.0)
    for _ in range(20):
        clock.advance(0.01)
        p.cluster.sent()
        p.failed(rate_limited=True, retry_after=1.0)
    assert p.gate.remaining > 0.0


@pytest.mark.parametrize(
    ("gaps", "cluster"),
    [
        ([0.0], False),
        ([0.0, 0.2], False),
        ([0.0, 0.2, 0.2], True),
        ([0.0, 0.5, 0.5], False),
        ([0.0, 0.6, 0.6, 0.6], True),
        ([0.0, 3.0, 3.0, 3.0], False),
    ],
)
def test_retry_after_cluster_is_several_close_together(gaps: list[float], cluster: bool) -> None:
    clock = FakeClock()
    detector = RetryAfterCluster(clock=clock)
    seen = []
    for gap in gaps:
        clock.advance(gap)
        seen.append(detector.note(retry_after_429=True))
    assert seen[-1] is cluster


# ---------------------------------------------------------------------------- breaker


def fail(breaker: Breaker, n: int, *, first_attempt: bool, probe: bool = False) -> list[bool]:
    return [breaker.failure(probe=probe, first_attempt=first_attempt) for _ in range(n)]


def test_poisoned_rows_in_retry_never_open_the_breaker() -> None:
    breaker = Breaker(25, 8, 5.0, clock=FakeClock())
    for _ in range(3):  # 30 rows, each failing its first attempt among successes of others
        for _ in range(10):
            breaker.failure(probe=False, first_attempt=True)
            breaker.success()
    assert not any(fail(breaker, 30 * 5, first_attempt=False))  # then only their retries remain
    assert not breaker.is_open


def test_fresh_rows_failing_in_a_row_open_it_and_a_success_closes_it() -> None:
    clock = FakeClock()
    breaker = Breaker(25, 8, 5.0, clock=clock)
    fail(breaker, 24, first_attempt=True)
    assert not breaker.is_open
    fail(breaker, 1, first_attempt=True)
    assert breaker.is_open and breaker.wait_s == 5.0
    breaker.success()
    assert not breaker.is_open and breaker.failures == 0 and breaker.fresh_failures == 0


@pytest.mark.parametrize(
    ("fresh", "retries", "opens"),
    [(25, 0, True), (13, 12, True), (12, 13, False), (12, 100, False), (0, 1000, False), (24, 0, False)],
)
def test_it_opens_on_threshold_failures_from_at_least_half_as_many_fresh_rows(
    fresh: int, retries: int, opens: bool
) -> None:
    breaker = Breaker(25, 8, 5.0, clock=FakeClock())
    fail(breaker, fresh, first_attempt=True)
    fail(breaker, retries, first_attempt=False)
    assert breaker.is_open is opens


def test_a_success_between_failures_resets_the_count() -> None:
    breaker = Breaker(25, 8, 5.0, clock=FakeClock())
    for _ in range(10):
        fail(breaker, 20, first_attempt=True)
        breaker.success()
    assert not breaker.is_open


def test_failed_probes_double_the_pause_and_the_last_one_gives_up() -> None:
    clock = FakeClock()
    breaker = Breaker(4, 3, 5.0, clock=clock)
    fail(breaker, 4, first_attempt=True)
    assert breaker.is_open and breaker.wait_s == 5.0
    assert fail(breaker, 3, first_attempt=False) == [False] * 3  # in-flight failures are not probes
    clock.advance(5.0)
    assert breaker.wait_s == 0.0
    assert breaker.failure(probe=True, first_attempt=False) is False
    assert breaker.wait_s == 10.0
    assert breaker.failure(probe=True, first_attempt=True) is False
    assert breaker.wait_s == 20.0
    assert breaker.failure(probe=True, first_attempt=False) is True  # give up on the gateway
    assert breaker.probes_failed == 3


def test_breaker_pause_is_capped() -> None:
    breaker = Breaker(1, 20, 5.0, clock=FakeClock())
    breaker.failure(probe=False)
    for _ in range(10):
        breaker.failure(probe=True)
    assert breaker.wait_s == Breaker.MAX_PAUSE


def test_first_attempt_defaults_to_true_so_every_failure_counts() -> None:
    breaker = Breaker(3, 1, 1.0, clock=FakeClock())
    for _ in range(3):
        breaker.failure(probe=False)
    assert breaker.is_open


# ---------------------------------------------------------------------------- the semaphore and the pacer


def test_slots_block_at_the_limit_and_a_raised_limit_wakes_waiters() -> None:
    async def main() -> None:
        slots = AdaptiveLimit(4, initial=2, clock=FakeClock())
        await slots.acquire()
        await slots.acquire()
        waiter = asyncio.ensure_future(slots.acquire())
        await asyncio.sleep(0)
        assert not waiter.done() and slots.in_flight == 2
        for _ in range(20):  # a clean, used round raises the limit to 3
            slots.record(rate_limited=False, latency=0.1)
        await asyncio.wait_for(waiter, 1)
        assert slots.in_flight == 3 and slots.max_seen == 3 and slots.current == 3
        slots.release()
        assert slots.in_flight == 2

    asyncio.run(main())


def test_a_cancelled_waiter_leaves_the_queue() -> None:
    async def main() -> None:
        slots = AdaptiveLimit(1, clock=FakeClock())
        await slots.acquire()
        waiter = asyncio.ensure_future(slots.acquire())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        slots.release()
        await asyncio.wait_for(slots.acquire(), 1)
        assert slots.in_flight == 1

    asyncio.run(main())


def test_fixed_concurrency_never_moves() -> None:
    slots = AdaptiveLimit(10, adaptive=False, clock=FakeClock())
    for _ in range(100):
        slots.record(rate_limited=True, latency=None, in_flight=10)
    assert slots.current == 10


def test_before_attempt_waits_for_the_pause_then_spaces_sends_by_rpm() -> None:
    clock = FakeClock()
    p = pacer(clock, rpm=60)
    p.gate.pause(2.0)

    async def main() -> list[float]:
        sent = []
        for _ in range(4):
            await asyncio.wait_for(p.before_attempt(100), 5)
            sent.append(clock.now)
        return sent

    sent = asyncio.run(main())
    assert sent[0] == pytest.approx(1002.0)
    assert [b - a for a, b in itertools.pairwise(sent)] == pytest.approx([1.02] * 3)


def test_book_waits_for_the_later_of_rpm_and_tpm_and_books_both_then() -> None:
    clock = FakeClock()
    p = pacer(clock, rpm=600, tpm=600)  # 0.102 s per request; 10 tokens a second
    assert p.book(600) == 0.0  # empties the token bucket
    assert p.book(100) == pytest.approx(10.0)  # tokens are the later constraint
    assert p.book(1) == pytest.approx(10.102)  # RPM spaces it from the booked send, not from now


def test_token_estimate_follows_real_usage_once_known() -> None:
    p = pacer(FakeClock())
    assert p.token_estimate(500) == 500
    for _ in range(10):
        p.answered(2000, 0.1)
    assert p.token_estimate(500) == 2400  # mean usage with 20 % margin
    assert p.token_estimate(5000) == 5000
