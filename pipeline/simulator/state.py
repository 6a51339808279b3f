"""Per-server mutable state: counters, the RPM window, attempt counts, recorded bodies.

Touched only from the server's event-loop thread (SimServer marshals its calls there),
so nothing here locks.

Statistics semantics (``GET /_sim/stats``, ``SimServer.stats()``): ``outcomes`` counts
one decision per chat request received (``ok`` = decided to succeed);
``ok_requests``/``distinct_ok``/``duplicate_ok``/token sums count answers actually
delivered (a completed "hang" counts there too; a request whose client went away
first does not: it is counted in ``cancelled``). ``in_flight`` counts accepted
requests (past the RPM gate, not answered by the gateway itself) not yet answered.
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
        self.rpm_window = RpmWindow()
        self.bodies: list[Any] = []
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
        self.rpm_window = RpmWindow()
        self.bodies = []

    def reset_window(self) -> None:
        """Start a new max-in-flight window (``POST /_sim/stats/window``)."""
        self.max_in_flight_window = self.in_flight

    def request_id(self) -> str:
        """A fresh X-Oneapi-Request-Id: start time, random, then a counter (unique per server)."""
        return f"{self._rid_prefix}{next(self._rid_counter):08d}"

    def arrived(self) -> None:
        """Count a chat request and keep its arrival time (bench derives throughput from these)."""
        self.requests += 1
        self.request_times.append(self.clock() - self.t0)

    def count(self, outcome: str) -> None:
        """Count one decision under ``outcome``."""
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

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
        return {
            "requests": self.requests,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "max_in_flight_window": self.max_in_flight_window,
            "outcomes": dict(self.outcomes),
            "ok_requests": self.ok_requests,
            "distinct_ok": self.distinct_ok,
            "duplicate_ok": self.ok_requests - self.distinct_ok,
            "cancelled": self.cancelled,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "distinct_keys": len(self.attempts),
            "request_times": list(self.request_times),
        }


STATE: web.AppKey[State] = web.AppKey("docpipe_sim_state", State)
#: Set on a request whose connection the simulator dropped on purpose (not a client cancel).
DROPPED: web.RequestKey[bool] = web.RequestKey("docpipe_sim_dropped", bool)
