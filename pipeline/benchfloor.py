"""The floor of a fault run: how long an ideal client would take on the same faults.

The simulator draws each attempt's fault from the request and the attempt number
(:func:`pipeline.simulator.plan.fault_for`), so the faults a bench manifest meets are
known before the run. This replays them for a client with no overhead at all: a seat
is free the instant its attempt ends, a row going again takes the next free seat
before any fresh row, a ``Retry-After`` is waited out exactly with the seat given up,
and there is no back-off after any other fault. A hang holds its seat for the whole
timeout, as it must for any client that keeps the in-flight bound.

No real client gets under this, so a fault run's ratio to its clean run is judged
beside the same ratio for the ideal client (``docpipe bench --scenario faults-unkind``
reports both): the 10 % unkind mix lets a row fault on two attempts, and when a row
sent late draws a hang and a second fault, the ideal client is over 2.5x too.
"""

from __future__ import annotations

import heapq
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .bench import RunSpec


def ideal_send_s(spec: RunSpec, manifest: Path) -> float:
    """Seconds from the first request to the last answer of the ideal client (module
    docstring) on ``manifest``'s rows, run with the default settings as the bench's
    client is, under ``spec``'s fault mix."""
    from .config import load_config
    from .manifest import Manifest
    from .simulator.config import SimConfig
    from .simulator.kinds import IMMEDIATE
    from .simulator.plan import fault_for

    sim = SimConfig(latency_s=spec.latency, fault_rate=spec.fault_rate, fault_kinds=spec.fault_kinds,
                    fault_attempts=spec.fault_attempts, retry_after_s=spec.retry_after_s)  # fmt: skip
    cfg = load_config(manifest=str(manifest))
    # what the client sends, as the client builds it: each row's model and message content
    requests = [(row.model or cfg.model, row.content) for batch in Manifest(str(manifest), cfg).rows() for row in batch]
    at_once = {kind.value for kind in IMMEDIATE}  # the gateway's own answers: no latency
    timeout = spec.timeout if spec.timeout is not None else float("inf")
    retry_after = spec.retry_after_s or 0.0

    def attempt(row: int, number: int) -> tuple[float, str]:
        """(seconds the attempt holds its seat, what follows: done, again or rest)."""
        kind = fault_for(sim, *requests[row], number)
        if kind is None:
            return spec.latency, "done"
        if kind == "hang":
            return timeout, "again"
        if kind in at_once:
            return 0.0, "rest" if kind == "429" and retry_after else "again"
        return spec.latency, "again"

    seats, fresh, ready = spec.concurrency, deque(range(len(requests))), deque[int]()
    tries = [0] * len(requests)
    events: list[tuple[float, int, str, int]] = []  # (time, order, what, row)
    now, order, done, last = 0.0, 0, 0, 0.0
    while done < len(requests):
        while seats and (ready or fresh):
            row = ready.popleft() if ready else fresh.popleft()
            seats -= 1
            tries[row] += 1
            hold, then = attempt(row, tries[row])
            order += 1
            heapq.heappush(events, (now + hold, order, then, row))
        now, _, what, row = heapq.heappop(events)
        if what == "back":  # a Retry-After waited out: the row goes again
            ready.append(row)
            continue
        seats += 1
        if what == "done":
            done, last = done + 1, now
        elif what == "again":
            ready.append(row)
        else:  # rest: the seat goes to others while the row waits out its Retry-After
            order += 1
            heapq.heappush(events, (now + retry_after, order, "back", row))
    return last
