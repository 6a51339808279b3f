"""The run's stop switch: one reason, one event, and the waits a stop cuts short.

Every way a run ends early (signal, deadline, budget, circuit breaker, a run-fatal
answer, disk trouble) goes through :meth:`StopControl.request`; the first reason
wins. Tasks waiting for something that has not sent a request yet (a slot, a rate
limiter) are cancelled at once, so a stop never waits for a limiter to open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import TypeVar

log = logging.getLogger("docpipe")
T = TypeVar("T")


class Stopped(Exception):
    """The run is stopping before this row was sent: leave it pending, not failed."""


class StopControl:
    """The run's one stop switch; see the module docstring."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._event = asyncio.Event()
        self._waiting: set[asyncio.Task[object]] = set()

    @property
    def is_set(self) -> bool:
        return self._event.is_set()

    def request(self, reason: str) -> None:
        """Stop dispatching; the first reason given is the one reported."""
        if self._event.is_set():
            return
        self.reason = reason
        self._event.set()
        log.warning("stopping: %s", reason)
        for task in list(self._waiting):
            task.cancel()

    async def wait(self) -> None:
        await self._event.wait()

    async def sleep(self, seconds: float) -> None:
        """A back-off that a stop cuts short (the next step then sees the stop)."""
        if seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), seconds)

    async def before_send(self, waiting: Awaitable[T]) -> T:
        """Await a wait that precedes sending (a slot, a limiter); a stop turns it into
        :class:`Stopped`, since nothing was sent yet."""
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - always called from a task
            return await waiting
        self._waiting.add(task)
        try:
            return await waiting
        except asyncio.CancelledError:
            if not self.is_set:
                raise  # cancelled by someone else (the grace period ran out)
            task.uncancel()
            raise Stopped from None
        finally:
            self._waiting.discard(task)
