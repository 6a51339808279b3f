"""Per-server mutable state: counters, the RPM window, attempt counts, recorded bodies.

Touched only from the server's event-loop thread (SimServer marshals its calls there),
so nothing here locks.

Statistics semantics (``GET /_sim/stats``, ``SimServer.stats()``): ``outcomes`` counts
one decision per chat request received (``ok`` = decided to succeed);
``ok_requests``/``distinct_ok``/``duplicate_ok``/token sums count answers actually
delivered (a completed "hang" counts there too; a request whose client went away
first does not: it is counted in ``cancelled``). ``in_flight`` counts accepted
requests (past the RPM gate, not answered by the gateway itself) not yet answered.

``max_per_minute``: the most chat requests that arrived in any sliding 60 s window (every
one counted, whatever its outcome), kept exactly from a window of the last minute's
arrivals: what a client's ``--rpm`` must keep at or below (a per-second timeline
could only bound it to within a second's requests).

``timeline`` is the gateway's per-second view: entry *i* counts the outcomes decided
in second *i* after the reset (only non-zero ones), so a second in which a client sent
nothing, or the share of 429s after a warm-up, can be read off it.

``retry_after``: each random-mix or directive 429 that carries ``Retry-After`` (not the
RPM gate's: that one is about the key, not a row) notes when its row may come back;
the row's next attempt that reaches the fault gate is checked against it. ``sent``
counts such 429s, ``checked`` the retries seen, ``violations`` the retries that came
more than ``RETRY_AFTER_TOLERANCE_S`` early, ``min_slack_s`` the smallest (arrival -
allowed time) seen, negative when a retry came early.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import math
import os
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .config import SimConfig
from .kinds import FAULT_KINDS

_REQUEST_TIMES_KEPT = 200_000
_RPM_WINDOW_S = 60.0
#: Event-loop timers are not exact (libuv, so uvloop, counts whole milliseconds from a
#: time cached per loop iteration): a retry this much early still honoured Retry-After.
RETRY_AFTER_TOLERANCE_S = 0.005
#: Outcomes the gates count besides "ok" and the fault kinds.
GATE_OUTCOMES = ("401", "400", "quota", "no_channel", "capacity_429", "rpm_429")


class RpmWindow:
    """Sliding 60 s request window of the gateway's RPM limiter (pure: the caller gives the time)."""

    def __init__(self) -> None:
        self._times: collections.deque[float] = collections.deque()

    def admit(self, now: float, rpm: int) -> int | None:
        """None and count the request when under ``rpm``; else the Retry-After seconds."""
        times = self._times
        while times and times[0] <= now - _RPM_WINDOW_S:
            times.popleft()
        if len(times) >= rpm:
            return max(1, math.ceil(times[0] + _RPM_WINDOW_S - now)) if times else int(_RPM_WINDOW_S)
        times.append(now)
        return None


class State:
    """Mutable per-server state; see the module doc for what each counter means."""

    def __init__(self, config: SimConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.config = config
        self.alias: dict[str, str] = dict(config.model_alias)
        self.hanging: set[asyncio.Task[Any]] = set()
        self.in_flight = 0
        self._rid_prefix = time.strftime("%Y%m%d%H%M%S") + f"{int.from_bytes(os.urandom(3), 'big') % 1000000:06d}"
        self._rid_counter = itertools.count(1)
        # The counters below are (re)set by reset(); listed here so every attribute exists after __init__.
        self.t0 = 0.0
        self.requests = 0
        self.max_in_flight = 0
        self.max_in_flight_window = 0
        self.outcomes: dict[str, int] = {}
        self.ok_requests = 0
        self.pending_ok = 0
        self.cancelled = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        # Keyed by a 64-bit digest of (model, content) instead of the content string;
        # the value packs (attempts << 1) | answered_ok so one dict serves both
        # counters (~90 MB for 1M distinct rows).
        self.attempts: dict[int, int] = {}
        self.distinct_ok = 0
        self.request_times: collections.deque[float] = collections.deque(maxlen=_REQUEST_TIMES_KEPT)
        self.last_minute: collections.deque[float] = collections.deque()
        self.max_per_minute = 0
        self.rpm_window = RpmWindow()
        self.bodies: list[Any] = []
        self.timeline: list[dict[str, int]] = []
        # key -> the earliest time its next attempt may arrive (a Retry-After 429 was sent)
        self.retry_due: dict[int, float] = {}
        self.retry_after: dict[str, float] = {}
        self.reset()

    def set_config(self, config: SimConfig) -> None:
        """Swap the configuration (counters are kept)."""
        self.config = config
        self.alias = dict(config.model_alias)

    def reset(self) -> None:
        """Zero every counter (in-flight requests stay counted as in flight)."""
        self.t0 = self.clock()
        self.requests = 0
        self.max_in_flight = self.in_flight
        self.max_in_flight_window = self.in_flight
        self.outcomes = dict.fromkeys(("ok", *FAULT_KINDS, *GATE_OUTCOMES), 0)
        self.ok_requests = 0
        self.pending_ok = 0
        self.cancelled = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.attempts = {}
        self.distinct_ok = 0
        self.request_times = collections.deque(maxlen=_REQUEST_TIMES_KEPT)
        self.last_minute = collections.deque()
        self.max_per_minute = 0
        self.rpm_window = RpmWindow()
        self.bodies = []
        self.timeline = []
        self.retry_due = {}
        self.retry_after = {"sent": 0, "checked": 0, "violations": 0, "min_slack_s": math.inf}
        self.late_s = 0.0  # how much later than planned the latency waits ended, summed (the loop's lag)
        self.late_n = 0

    def reset_window(self) -> None:
        """Start a new max-in-flight window (``POST /_sim/stats/window``)."""
        self.max_in_flight_window = self.in_flight

    def request_id(self) -> str:
        """A fresh X-Oneapi-Request-Id: start time, random, then a counter (unique per server)."""
        return f"{self._rid_prefix}{next(self._rid_counter):08d}"

    def arrived(self) -> None:
        """Count a chat request and keep its arrival time (bench derives throughput from these)."""
        self.requests += 1
        now = self.clock()
        self.request_times.append(now - self.t0)
        # the busiest minute ends at some arrival: the window ending at each one is enough
        window = self.last_minute
        window.append(now)
        while window[0] <= now - _RPM_WINDOW_S:
            window.popleft()
        self.max_per_minute = max(self.max_per_minute, len(window))

    def count(self, outcome: str) -> None:
        """Count one decision under ``outcome``, in the totals and in its second of the timeline."""
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        second = int(self.clock() - self.t0)
        timeline = self.timeline
        while len(timeline) <= second:
            timeline.append({})
        bucket = timeline[second]
        bucket[outcome] = bucket.get(outcome, 0) + 1

    def retry_after_sent(self, key: int, seconds: float) -> None:
        """A 429 telling request ``key`` to wait ``seconds`` is being sent now."""
        self.retry_due[key] = self.clock() + seconds
        self.retry_after["sent"] += 1

    def check_retry_after(self, key: int) -> None:
        """An attempt of request ``key`` arrived: was it told to wait, and did it?"""
        due = self.retry_due.pop(key, None)
        if due is None:
            return
        slack = self.clock() - due
        ra = self.retry_after
        ra["checked"] += 1
        ra["min_slack_s"] = min(ra["min_slack_s"], slack)
        if slack < -RETRY_AFTER_TOLERANCE_S:
            ra["violations"] += 1

    def woke(self, late: float) -> None:
        """A latency wait ended ``late`` seconds after it was due (the simulator's own delay,
        which the client sees as latency: bench prints its mean beside the run)."""
        self.late_s += late
        self.late_n += 1

    def enter(self) -> None:
        """A request starts its upstream phase."""
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.max_in_flight_window = max(self.max_in_flight_window, self.in_flight)

    def next_attempt(self, key: int) -> int:
        """Count an attempt of request ``key``; returns its number (1-based)."""
        packed = self.attempts.get(key, 0) + 2
        self.attempts[key] = packed
        return packed >> 1

    def record_ok(self, key: int, prompt: int, completion: int) -> None:
        """An answer was delivered."""
        self.ok_requests += 1
        packed = self.attempts.get(key, 0)
        if not packed & 1:
            self.attempts[key] = packed | 1
            self.distinct_ok += 1
        self.prompt_tokens += prompt
        self.completion_tokens += completion

    def snapshot(self) -> dict[str, Any]:
        """The stats as a JSON-ready dict."""
        slack = self.retry_after["min_slack_s"]
        return {
            "requests": self.requests,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "max_in_flight_window": self.max_in_flight_window,
            "max_per_minute": self.max_per_minute,
            "outcomes": dict(self.outcomes),
            "ok_requests": self.ok_requests,
            "distinct_ok": self.distinct_ok,
            "duplicate_ok": self.ok_requests - self.distinct_ok,
            "cancelled": self.cancelled,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "distinct_keys": len(self.attempts),
            "request_times": list(self.request_times),
            "timeline": [dict(b) for b in self.timeline],
            "late_ms_mean": round(1000 * self.late_s / self.late_n, 3) if self.late_n else None,
            "retry_after": {
                "sent": int(self.retry_after["sent"]),
                "checked": int(self.retry_after["checked"]),
                "violations": int(self.retry_after["violations"]),
                "pending": len(self.retry_due),
                # JSON has no infinity: None until a retry was checked
                "min_slack_s": None if math.isinf(slack) else round(slack, 4),
            },
        }


STATE: web.AppKey[State] = web.AppKey("docpipe_sim_state", State)
#: Set on a request whose connection the simulator dropped on purpose (not a client cancel).
DROPPED: web.RequestKey[bool] = web.RequestKey("docpipe_sim_dropped", bool)
