"""Between the manifest and the pool: repeated rows, reuse candidates and document metadata.

The pool's producer hands each batch of rows to :meth:`Gate.admit`, which

1. drops rows that repeat a request already dispatched this run (:mod:`pipeline.dedupe`):
   they get their twin's outcome at compaction, and count as done when it arrives;
2. starts the HEAD of each row's document (:mod:`pipeline.docmeta`), unless doc
   metadata is off; one HEAD serves every row of a URL;
3. puts every row without a reuse candidate straight into the pool's queue: its
   HEAD runs beside the chat request and never delays it;
4. parks a row *with* a candidate (:mod:`pipeline.reuse`) on its document's HEAD;
   when the HEAD answers, the row is reused (no request) if the document is
   unchanged, else queued. At most :data:`PARKED` rows are parked at a time, so
   memory stays bounded whatever the manifest's length.

Every outcome goes through :meth:`Gate.finish`, which adds the document columns
of the row's HEAD. An answer that comes back before its HEAD is journaled at once
without them (an answer is durable the moment it exists), and journaled again,
with them, when the HEAD answers: the journal keeps the latest record of a
request_id, and the second record is not counted twice. The run's end waits for
the HEADs still running (each at most ``head_timeout``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from .config import JobConfig
from .control import StopControl
from .docmeta import Doc, DocHeads, DocMeta
from .records import Outcome, Row, Status
from .reuse import ReuseIndex, ReuseSink

#: Rows with a reuse candidate that may wait on their HEAD at once.
PARKED = 4096


class Gate:
    """See the module docstring. ``record`` journals an outcome and counts it; ``repeats``
    counts rows that rode on another row's outcome."""

    def __init__(self, *, record: Callable[[Outcome], None], amend: Callable[[Outcome], object],
                 repeats: Callable[[Status, int], None], stop: StopControl, heads: DocHeads | None,
                 index: ReuseIndex | None) -> None:  # fmt: skip
        from .dedupe import Dedupe

        self.record = record
        self.amend = amend  # journal only: a second record of an outcome already counted
        self.repeats = repeats
        self.stop = stop
        self.heads = heads
        self.index = index if index is not None and len(index) else None
        self.sink = ReuseSink(self.index) if self.index is not None else None
        self.dedupe = Dedupe()
        self.queue: asyncio.Queue[Row | None] | None = None
        self._parked = asyncio.Semaphore(PARKED)
        self._flushing = asyncio.Lock()
        if heads is not None:
            heads.on_done = self._settle_parked

    async def admit(self, rows: list[Row], queue: asyncio.Queue[Row | None]) -> None:
        """Route one batch of rows (see the module docstring)."""
        from .pool import invalid_outcome

        self.queue = queue
        repeat = self.dedupe.repeats_in(rows)
        cands: Any = None
        if self.index is not None:
            keys = np.fromiter((r.reuse_key or 0 for r in rows), dtype=np.int64, count=len(rows))
            cands = self.index.lookup(keys).tolist()
        for i, row in enumerate(rows):
            if self.stop.is_set:
                return
            if repeat[i]:
                status = self.dedupe.repeat(row)
                if status is not None:
                    self.repeats(status, 1)
                continue
            if row.invalid is not None:
                self.finish(row, invalid_outcome(row))
                continue
            doc = self.heads.get(row.file_url.strip()) if self.heads is not None else None
            c = -1 if cands is None else cands[i]
            if c < 0 or doc is None:
                await self._put(row)
            elif doc.done:
                await self._decide(row, c, doc.meta)
            elif await self._park(row, c, doc):
                return

    async def _park(self, row: Row, c: int, doc: Doc) -> bool:
        """Park ``row`` on its document's HEAD (decide it at once if the HEAD answered while it
        waited for a place); True when the run stopped first."""
        if not self._parked.locked():
            await self._parked.acquire()  # free: returns without yielding, the HEAD cannot answer meanwhile
        elif not await self._unless_stopped(self._parked.acquire()):
            return True
        if doc.done:
            self._parked.release()
            await self._decide(row, c, doc.meta)
        else:
            doc.waiters.append((row, c))
        return False

    async def _put(self, row: Row) -> None:
        assert self.queue is not None
        if not self.queue.full():
            self.queue.put_nowait(row)
        else:
            await self._unless_stopped(self.queue.put(row))

    async def _unless_stopped(self, waiting: Awaitable[object]) -> bool:
        """Await ``waiting`` (a full queue, the parked rows' bound) unless the run stops first:
        after a stop nobody takes rows from the queue, and a HEAD's ``on_done`` or the producer
        waiting on it would wait for ever. True when ``waiting`` finished."""
        if self.stop.is_set:
            return False
        task = asyncio.ensure_future(waiting)
        stopped = asyncio.ensure_future(self.stop.wait())
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if task.done():
            return True
        task.cancel()  # a cancelled put adds nothing, a cancelled acquire takes nothing
        return False

    async def _settle_parked(self, doc: Doc) -> None:
        late, doc.late = doc.late, []
        if doc.meta is not None:
            for outcome in late:
                self.amend(with_meta(outcome, doc.meta))
        waiters, doc.waiters = doc.waiters, []
        for row, c in waiters:
            self._parked.release()
            if not self.stop.is_set:
                await self._decide(row, c, doc.meta)

    async def _decide(self, row: Row, c: int, meta: DocMeta | None) -> None:
        assert self.index is not None and self.sink is not None and self.queue is not None
        if meta is not None and self.index.unchanged(c, meta):
            if self.sink.add(c, row, meta):
                await self._flush()
        else:
            await self._put(row)

    async def _flush(self) -> None:
        """Journal the reused outcomes decided so far (their answers read in a thread)."""
        if self.sink is None:
            return
        async with self._flushing:
            batch = self.sink.take()
            if batch:
                for outcome in await asyncio.to_thread(self.sink.outcomes, batch):
                    self.finish(None, outcome)

    async def settle(self) -> None:
        """Before the pool's end markers: every parked row decided and every reused row journaled."""
        if self.heads is not None and self.index is not None:
            await self.heads.settle()
        await self._flush()

    def finish(self, row: Row | None, outcome: Outcome) -> None:
        """Journal ``outcome`` (with its document's metadata, when ``row`` was asked tonight)."""
        if row is not None and self.heads is not None and row.invalid is None:
            doc = self.heads.peek(row.file_url.strip())
            if doc is not None and not doc.done:
                doc.late.append(outcome)
            elif doc is not None and doc.meta is not None:
                outcome = with_meta(outcome, doc.meta)
        self._record(outcome)

    def _record(self, outcome: Outcome) -> None:
        self.record(outcome)
        waiting = self.dedupe.settled(outcome)
        if waiting:
            self.repeats(outcome.status, waiting)

    async def close(self) -> None:
        """After the pool: the HEADs still running answer (or time out) and amend their outcomes,
        and reuse decisions not yet journaled (a stop cut the producer short) are journaled.
        Then the HEADs let go of this gate: the runner keeps ``heads`` (its counts) through
        compaction, and its ``on_done`` held the gate, so the reuse index and the run's
        dedupe hashes (~40 bytes an earlier answer and a row) stayed under compaction's peak."""
        if self.heads is not None:
            await self.heads.settle()
        await self._flush()
        if self.heads is not None:
            self.heads.on_done = None
        self.sink = None


async def reuse_known_rows(rows: list[Row], index: ReuseIndex, heads: DocHeads,
                           ) -> tuple[list[Outcome], list[Row], dict[str, DocMeta | None]]:  # fmt: skip
    """:class:`Gate`'s reuse decision for rows known up front (the Ray engine's driver decides
    before its rows become a Dataset): each candidate's document HEADed (one per URL, at most
    :data:`PARKED` rows waiting at once), reused when unchanged (:meth:`ReuseIndex.unchanged`).
    Returns the reused outcomes, the rows to ask, and what the HEAD found for each candidate
    asked (by request_id: its outcome gets these document columns, without a second HEAD)."""
    keys = np.fromiter((r.reuse_key or 0 for r in rows), dtype=np.int64, count=len(rows))
    cands = index.lookup(keys).tolist()
    sink = ReuseSink(index)
    ask = [r for r, c in zip(rows, cands, strict=True) if c < 0]
    waiting = [(r, c) for r, c in zip(rows, cands, strict=True) if c >= 0]
    found: dict[str, DocMeta | None] = {}
    for start in range(0, len(waiting), PARKED):
        chunk = waiting[start : start + PARKED]
        docs = [heads.get(row.file_url.strip()) for row, _ in chunk]
        metas = await asyncio.gather(*(heads.wait(doc) for doc in docs))
        for (row, c), meta in zip(chunk, metas, strict=True):
            if meta is not None and index.unchanged(c, meta):
                sink.add(c, row, meta)
            else:
                ask.append(row)
                found[row.request_id] = meta
    reused = await asyncio.to_thread(sink.outcomes, sink.take())
    return reused, sorted(ask, key=lambda r: r.index), found


def reuse_index(cfg: JobConfig) -> ReuseIndex:
    """The index of the earlier answers ``cfg.reuse`` names (blocking: run it in a thread)."""
    from .memory import release_memory
    from .reuse import source_folders

    index = ReuseIndex(source_folders(cfg.reuse, cfg.out), max_age=cfg.max_age)
    release_memory()  # the scan's Python objects (an ETag string per earlier answer): 34 MB at 1M
    return index


def doc_heads(cfg: JobConfig) -> contextlib.AbstractAsyncContextManager[DocHeads | None]:
    """The run's document HEADs, or None with ``doc_meta`` off."""
    if not cfg.doc_meta:
        return contextlib.nullcontext(None)
    return DocHeads(timeout=cfg.head_timeout, concurrency=cfg.head_concurrency)


def with_meta(outcome: Outcome, meta: DocMeta) -> Outcome:
    return dataclasses.replace(outcome, doc_etag=meta.etag, doc_last_modified=meta.last_modified,
                               doc_bytes=meta.size)  # fmt: skip
