"""The worker pool: a producer streams manifest rows into a bounded queue, workers send them.

``concurrency`` workers each take a row, hand it to the row sender and pass its
outcome to ``record`` (the journal and the run's counters). Rows that cannot be
sent (``Row.invalid``) are recorded by the producer without a request. A stop
ends dispatch at once: the producer is cancelled, the queue drained, and
in-flight requests get ``grace_period`` seconds to finish before they are
abandoned (their rows stay pending).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from .control import StopControl
from .records import Failure, Outcome, Row, make_outcome

if TYPE_CHECKING:
    from .incremental import Gate

log = logging.getLogger("docpipe")

Send = Callable[[Row], Awaitable[Outcome | None]]
Record = Callable[[Outcome], None]


def invalid_outcome(row: Row) -> Outcome:
    """The ``failed`` record of a row that cannot be sent (no request, no cost)."""
    t = time.time()
    failure = Failure("invalid_input", row.invalid or "invalid row")
    return make_outcome(row, None, failure=failure, started=t, completed=t, attempts=0, latency=None, cost=None)


class Pool:
    """One run's producer and workers; see the module docstring."""

    def __init__(
        self,
        batches: Iterable[list[Row]],
        *,
        send: Send,
        record: Record,
        stop: StopControl,
        concurrency: int,
        grace_period: float,
        gate: Gate | None = None,
    ) -> None:
        self.batches = batches
        self.gate = gate  # repeats, reuse and document metadata (pipeline/incremental.py)
        self.send = send
        self.record = record
        self.stop = stop
        self.concurrency = concurrency
        self.grace_period = grace_period
        self.queue: asyncio.Queue[Row | None] = asyncio.Queue(maxsize=2 * concurrency)

    async def run(self) -> BaseException | None:
        """Run until every row is answered or the run stops; returns the producer's error, if any
        (everything answered is kept either way; the caller reports it after the summary)."""
        producer = asyncio.create_task(self._produce())
        workers = [asyncio.create_task(self._work()) for _ in range(self.concurrency)]
        all_done = asyncio.gather(*workers)
        stop_waiter = asyncio.create_task(self.stop.wait())
        first_of: list[asyncio.Future[Any]] = [all_done, stop_waiter]
        try:
            await asyncio.wait(first_of, return_when=asyncio.FIRST_COMPLETED)
            if self.stop.is_set:
                producer.cancel()
                self._drain()
                await self._grace(workers)
            await asyncio.gather(all_done, return_exceptions=True)
            await asyncio.gather(producer, return_exceptions=True)
        finally:
            for task in (producer, stop_waiter, *workers):
                task.cancel()
            await asyncio.gather(producer, stop_waiter, *workers, return_exceptions=True)
        if producer.cancelled():
            return None
        return producer.exception()

    async def _grace(self, workers: list[asyncio.Task[None]]) -> None:
        _, still = await asyncio.wait(workers, timeout=self.grace_period)
        if still:
            log.warning("%d requests still in flight after the grace period: abandoned", len(still))
            for task in still:
                task.cancel()
            await asyncio.gather(*still, return_exceptions=True)

    async def _produce(self) -> None:
        try:
            for rows in self.batches:
                if self.gate is not None:
                    if self.stop.is_set:
                        return
                    await self.gate.admit(rows, self.queue)
                    await asyncio.sleep(0)
                    continue
                for row in rows:
                    if self.stop.is_set:
                        return
                    if row.invalid is not None:
                        self.record(invalid_outcome(row))
                    else:
                        await self.queue.put(row)
                # let workers and the flusher run between batches even when every row is skipped
                await asyncio.sleep(0)
        except Exception as e:
            # workers wait on the queue: without a stop they would wait for ever
            self.stop.request(f"reading the manifest failed: {e}")
            raise
        if self.gate is not None:
            await self.gate.settle()  # rows parked on their document's HEAD are queued or reused first
        for _ in range(self.concurrency):
            await self.queue.put(None)

    async def _work(self) -> None:
        while True:
            row = await self.queue.get()
            if row is None or self.stop.is_set:
                return
            outcome = await self.send(row)
            if outcome is None:
                continue
            if self.gate is not None:
                self.gate.finish(row, outcome)
            else:
                self.record(outcome)

    def _drain(self) -> None:
        """Empty the queue and wake every idle worker with an end marker."""
        while True:
            try:
                self.queue.get_nowait()
            except asyncio.QueueEmpty:
                break
        for _ in range(self.concurrency):
            try:
                self.queue.put_nowait(None)
            except asyncio.QueueFull:
                break
