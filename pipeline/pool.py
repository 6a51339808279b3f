"""The worker pool: a producer streams manifest rows into a bounded queue, workers send them.

Workers take a row, hand it to the row sender and pass its outcome to ``record``
(the journal and the run's counters). Rows that cannot be sent (``Row.invalid``)
are recorded by the producer without a request.

Seats: ``concurrency`` rows are worked on at a time (sent, or waiting for a slot
or a rate limit). A row that waits out a back-off or its own ``Retry-After``
(:meth:`Pool.rest`, which the row sender sleeps in) gives its seat to the next
row meanwhile and takes it back when the wait is over, so a handful of 429s
idles no worker: with 5 % random 429s at C=100 about 20 rows rest at any time,
and held their workers before. There are ``concurrency`` more workers than seats
for the resting rows, which bounds the rows in progress at twice the
concurrency; the requests in flight stay bounded by the pacer's slots (see
:mod:`pipeline.limits`), which only an attempt on the wire holds.

A stop ends dispatch at once: the producer is cancelled, the queue drained,
resting rows wake and stay pending, and in-flight requests get ``grace_period``
seconds to finish before they are abandoned (their rows stay pending).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
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
        dispatched: Callable[[], None] | None = None,
    ) -> None:
        self.batches = batches
        self.dispatched = dispatched  # called once every row was queued or recorded (not after a stop)
        self.gate = gate  # repeats, reuse and document metadata (pipeline/incremental.py)
        self.send = send
        self.record = record
        self.stop = stop
        self.concurrency = concurrency
        self.grace_period = grace_period
        self.workers = 2 * concurrency  # a seat each, plus one per row that may rest meanwhile
        self.queue: asyncio.Queue[Row | None] = asyncio.Queue(maxsize=2 * concurrency)
        self.seated = 0  # rows holding a seat (in progress and not resting)
        self.resting = 0  # rows waiting out a back-off or Retry-After, seat given up
        self._seat_waiters: deque[asyncio.Future[None]] = deque()

    async def run(self) -> BaseException | None:
        """Run until every row is answered or the run stops; returns the producer's error, if any
        (everything answered is kept either way; the caller reports it after the summary)."""
        producer = asyncio.create_task(self._produce())
        workers = [asyncio.create_task(self._work()) for _ in range(self.workers)]
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

    async def rest(self, seconds: float) -> None:
        """A seated row's back-off: its seat goes to the next row until the wait is over.

        A stop cuts it short (the row then stays pending). The row takes its seat back
        without queueing for it, so the pool may be over its seats for a moment; no new
        row is seated until it is under them again."""
        if seconds <= 0:
            return
        self.seated -= 1
        self.resting += 1
        self._wake()
        try:
            await self.stop.sleep(seconds)
        finally:
            self.resting -= 1
            self.seated += 1

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
        if self.dispatched is not None and not self.stop.is_set:
            self.dispatched()
        for _ in range(self.workers):
            await self.queue.put(None)

    async def _work(self) -> None:
        while await self._take_seat():
            try:
                # the seat is kept from row to row (no hand-over per row: it doubled the pool's
                # CPU per row) until a row back from its rest puts the pool over its seats
                while self.seated <= self.concurrency:
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
            finally:
                self.seated -= 1
                self._wake()

    async def _take_seat(self) -> bool:
        """Wait for a free seat (first come, first served); False when the run stops meanwhile."""
        while self.seated >= self.concurrency and not self.stop.is_set:
            fut = asyncio.get_running_loop().create_future()
            self._seat_waiters.append(fut)
            try:
                await fut
            finally:
                if fut in self._seat_waiters:
                    self._seat_waiters.remove(fut)
        if self.stop.is_set:
            return False
        self.seated += 1
        return True

    def _wake(self) -> None:
        free = self.concurrency - self.seated
        while self._seat_waiters and (free > 0 or self.stop.is_set):
            fut = self._seat_waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                free -= 1

    def _drain(self) -> None:
        """Empty the queue and wake every idle worker with an end marker."""
        while True:
            try:
                self.queue.get_nowait()
            except asyncio.QueueEmpty:
                break
        self._wake()  # workers waiting for a seat see the stop
        for _ in range(self.workers):
            try:
                self.queue.put_nowait(None)
            except asyncio.QueueFull:
                break
