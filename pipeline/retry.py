"""The retry policy: which failures to retry and how long to wait, as pure functions.

Behaviour follows openai-python: the server's own word (``retry-after-ms``,
``Retry-After`` in seconds or as an HTTP date, ``x-ratelimit-reset-*`` like
``6m0s`` or ``12ms``) wins when sent, capped at :data:`MAX_SERVER_WAIT`;
otherwise exponential back-off with full jitter. one-api/new-api limiters send
no header at all, so the fallback schedule is what most 429s get.

Our own back-off spaces the *starts* of two attempts: the time the failed attempt
spent on the wire counts toward it. After a 5 s timeout a 0-1 s back-off is long
past, so the row goes again at once instead of idling a second more, while fast
failures (an instant 500 or 429) still wait nearly their whole back-off. The
schedule stays exponential with full jitter (DESIGN.md section 6) and requests
in flight stay bounded by the pacer, so an overloaded gateway that hangs every
request sees at most ``concurrency`` attempts per timeout. A server's own wait
(``Retry-After``) counts from its answer, as HTTP defines it.

Tenacity drives the loop (see :func:`retrying`), but only once a first attempt
has failed: entering ``AsyncRetrying`` for every happy request costs 70-95 us
of CPU (DESIGN.md section 9).
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tenacity import AsyncRetrying, RetryCallState

from .config import parse_duration
from .errors import RetryableError, UnreadableDocument

#: The most we wait because a server told us to; beyond that, our own schedule.
MAX_SERVER_WAIT = 600.0


def _reset_seconds(value: str) -> float | None:
    """An ``x-ratelimit-reset-*`` value ("6m0s", "12ms", "2") in seconds, None if unreadable."""
    try:
        return parse_duration(value)
    except ValueError:
        return None


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait according to the response headers, or None if they say nothing."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            return _cap(float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value:
        try:
            return _cap(float(value))
        except ValueError:
            parsed = email.utils.parsedate_tz(value)
            if parsed is not None:
                delay = email.utils.mktime_tz(parsed) - (time.time() if now is None else now)
                return _cap(delay)
    resets = [
        d
        for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens", "x-ratelimit-reset")
        if (v := headers.get(name)) and (d := _reset_seconds(v)) is not None
    ]
    if resets:
        return _cap(max(resets))
    return None


def _cap(seconds: float) -> float:
    return min(max(seconds, 0.0), MAX_SERVER_WAIT)


def backoff(attempt: int, initial: float, maximum: float, rng: Callable[[], float] = random.random) -> float:
    """Full-jitter exponential back-off after the ``attempt``-th failure (1-based)."""
    ceiling = min(maximum, initial * (2 ** max(attempt - 1, 0)))
    return float(ceiling * rng())


def wait_for(error: BaseException | None, attempt: int, initial: float, maximum: float, on_wire: float = 0.0) -> float:
    """How long to wait after ``error`` ended attempt number ``attempt``, which spent
    ``on_wire`` seconds in flight (counted toward our back-off, not a server's wait)."""
    server = getattr(error, "retry_after", None)
    if server is not None:
        return float(server)
    return max(0.0, backoff(attempt, initial, maximum) - on_wire)


def should_retry(error: BaseException, unreadable_left: int) -> bool:
    """Retry retryable failures; an unreadable document only while its own budget lasts."""
    if isinstance(error, UnreadableDocument):
        return unreadable_left > 0
    return isinstance(error, RetryableError)


def retrying(
    *,
    exhausted: Callable[[], bool],
    deadline: float,
    initial: float,
    maximum: float,
    retry: Callable[[BaseException], bool],
    stop_now: Callable[[], bool],
    sleep: Callable[[float], Awaitable[None]] | None = None,
    attempts_before: int = 0,
    on_wire: Callable[[], float] = lambda: 0.0,
) -> AsyncRetrying:
    """A fresh tenacity controller for one row's retries (never share one across tasks).

    ``exhausted`` is the caller's attempt count check: rate-limited attempts were
    not processed by the gateway (nor billed), so the runner counts them apart.
    ``attempts_before`` is how many attempts (and waits) the caller made itself
    before handing the row to tenacity. ``on_wire`` tells how long the failed attempt
    was in flight (see :func:`wait_for`)."""

    # imported on the first retry, not at start-up: most rows never need it
    from tenacity import AsyncRetrying, retry_if_exception

    def wait(state: RetryCallState) -> float:
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        # attempts made before tenacity took over count toward the back-off's growth
        return wait_for(error, state.attempt_number + attempts_before, initial, maximum, on_wire())

    def stop(state: RetryCallState) -> bool:
        # tenacity computes the upcoming sleep before asking stop: a wait that would
        # run past the row's budget ends the row now instead of sleeping in vain
        return exhausted() or time.monotonic() + (state.upcoming_sleep or 0.0) > deadline or stop_now()

    extra: dict[str, Any] = {} if sleep is None else {"sleep": sleep}
    return AsyncRetrying(stop=stop, wait=wait, retry=retry_if_exception(retry), reraise=True, **extra)
