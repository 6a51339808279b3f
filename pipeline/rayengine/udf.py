"""The class UDF of ``map_batches``: docpipe's own row sender inside a Ray actor.

Each actor holds one :class:`~pipeline.presign.PresigningClient` (one aiohttp session),
one :class:`~pipeline.limits.Pacer` with the actor's share of the limits
(:mod:`pipeline.rayengine.shares`), and a :class:`~pipeline.sender.RowSender`, all
made on the actor's event loop at its first batch. ``__call__`` is a coroutine, so
Ray Data runs several batches of one actor at once, and every row of a batch is sent
concurrently: the pacer, not the batch size, bounds what is in flight.

Each row is asked as the asyncio engine asks it (the same :class:`~pipeline.sender.RowSender`):
its own model (a manifest ``model`` column) then the fallbacks, through one
:class:`~pipeline.models.ModelRouter` per actor whose unserved models every actor learns
from the board; in its own form (a ``form`` column); with ``--embed`` its bytes fetched
by the actor's :class:`~pipeline.embed.DocumentFetcher`. Unless the driver already did
(``--reuse``: :mod:`pipeline.rayengine.run`), the actor HEADs the row's document
(:class:`~pipeline.docmeta.DocHeads`, one per URL per actor) beside the chat request,
and the outcome leaves the actor with its document columns: it waits for its HEAD (at
most ``head_timeout``), where the asyncio engine journals first and amends later.

A row never raises: it comes back as an outcome (``ok`` or ``failed``, the columns
of :data:`~pipeline.schema.JOURNAL_SCHEMA`), or, when the job stopped before it was
answered, not at all (it stays pending and a rerun sends it). A stop anywhere (bad
key, empty quota, the breaker, the driver's signal or deadline) goes through the
:class:`~pipeline.rayengine.board.Board` actor: the actor that met it tells the
board, every actor asks it four times a second and stops dispatching.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from ..budget import BudgetGuard
from ..config import JobConfig
from ..control import StopControl
from ..docmeta import DocHeads
from ..embed import DocumentFetcher
from ..errors import RunFatalError
from ..incremental import doc_heads, with_meta
from ..limits import Pacer
from ..manifest import _invalid as invalid_reason
from ..manifest import _invalid_form as invalid_form
from ..models import ModelRouter
from ..pool import invalid_outcome
from ..presign import PresigningClient
from ..records import Outcome, Row
from ..runner import pacer_for
from ..runrecord import RunRecord
from ..schema import JOURNAL_SCHEMA, OUTCOME_COLUMNS, TS
from ..sender import RowSender
from ..structured.ask import asker_for

log = logging.getLogger("docpipe")

#: Columns the sender reads besides request_id, file_url and question (dropped from the output).
ROW_INDEX = "__row_index"
CONTENT = "__content"
#: The request's identity for --reuse (Row.reuse_key): carried through to the journal, never shown.
REUSE_KEY = "__reuse_key"
#: The row's model and form (Row.model, Row.form; null: the run's), read from the manifest's columns.
MODEL = "__model"
FORM = "__form"
#: True for a row whose document the driver HEADed already (--reuse): the actor does not.
HEADED = "__headed"
#: Columns the actors read and drop (ROW_INDEX and REUSE_KEY go on to the driver).
INPUT_ONLY = (CONTENT, MODEL, FORM, HEADED)
#: How often an actor exchanges stop reasons with the board (seconds).
BOARD_POLL_S = 0.25


@dataclass(slots=True)
class _Actor:
    """What one actor builds at its first batch."""

    client: PresigningClient
    pacer: Pacer
    stop: StopControl
    sender: RowSender
    models: ModelRouter
    fetcher: DocumentFetcher
    heads: DocHeads | None
    poll: asyncio.Task[None]


class SenderUDF:
    """``ds.map_batches(SenderUDF, fn_constructor_kwargs=...)``; see the module docstring.

    ``cfg``: the actor's share of the job's settings. ``raise_on_stop``: a batch that
    the stop left with no answered row raises :class:`~pipeline.errors.RunFatalError`
    (for :func:`pipeline.ray.answer`, whose caller has no other way to learn it); the
    ``docpipe run`` driver reads the board instead. ``models``: the models the manifest's
    rows name (the run stops only when every model it can use is unserved)."""

    def __init__(self, cfg: JobConfig, run_id: str, board: Any, raise_on_stop: bool = False,
                 models: tuple[str, ...] = ()) -> None:  # fmt: skip
        self.cfg = cfg
        self.run_id = run_id
        self.board = board
        self.raise_on_stop = raise_on_stop
        self.manifest_models = models
        self._actor: _Actor | None = None
        self._lock = asyncio.Lock()
        self._told = False
        self._figures: dict[str, Any] | None = None  # the last figures sent to the board

    async def __call__(self, batch: pa.Table) -> pa.Table:
        actor = await self._start()
        rows = _rows(batch)
        actor.models.join(r.model for r in rows if r.model)  # pipeline.ray.answer: models seen as they come
        headed = batch.column(HEADED).to_pylist() if HEADED in batch.column_names else [False] * len(rows)
        outcomes = await asyncio.gather(*(self._one(actor, row, bool(h)) for row, h in zip(rows, headed, strict=True)))
        with contextlib.suppress(Exception):  # the board is gone: the job is over, the rows still come back
            await self._tell(actor)
            await self._exchange(actor)  # this batch's figures are on the board before its rows reach the driver
        keep = [i for i, o in enumerate(outcomes) if o is not None]
        if not keep and rows and actor.stop.is_set and self.raise_on_stop:
            raise RunFatalError(f"the job stopped: {actor.stop.reason}")
        answered = [o for o in outcomes if o is not None]
        return with_outcomes(batch.take(pa.array(keep, pa.int64())), answered, self.cfg.model, self.run_id)

    async def _one(self, actor: _Actor, row: Row, headed: bool) -> Outcome | None:
        if row.invalid is not None:
            return invalid_outcome(row)
        if actor.stop.is_set:
            return None
        # the HEAD starts before the request and runs beside it (pipeline/incremental.py)
        doc = actor.heads.get(row.file_url) if actor.heads is not None and not headed else None
        outcome = await actor.sender.send(row)
        if outcome is None or doc is None or actor.heads is None:
            return outcome
        meta = await actor.heads.wait(doc)
        return outcome if meta is None else with_meta(outcome, meta)

    async def _start(self) -> _Actor:
        async with self._lock:
            if self._actor is None:
                cfg = self.cfg
                stop = StopControl()
                pacer = pacer_for(cfg)
                client = PresigningClient(cfg)
                await client.__aenter__()
                models = ModelRouter(cfg, pacer.breaker, self.manifest_models)
                fetcher = await DocumentFetcher(cfg).__aenter__()
                heads = await _enter(doc_heads(cfg))
                sender = RowSender(cfg, client, pacer, BudgetGuard(cfg), stop, RunRecord(cfg), asker_for(cfg),
                                   models=models, fetcher=fetcher)  # fmt: skip
                self._actor = _Actor(client, pacer, stop, sender, models, fetcher, heads,
                                     asyncio.create_task(self._poll(stop)))  # fmt: skip
                with contextlib.suppress(Exception):  # the pid is for diagnostics and the crash test
                    await self.board.hello.remote(os.getpid(), cfg.concurrency, cfg.rpm)
            return self._actor

    async def _tell(self, actor: _Actor) -> None:
        """Pass this actor's stop to the board (once)."""
        if actor.stop.is_set and not self._told and actor.stop.reason:
            self._told = True
            await self.board.stop.remote(actor.stop.reason)

    async def _poll(self, stop: StopControl) -> None:
        while True:
            await asyncio.sleep(BOARD_POLL_S)
            actor = self._actor
            try:
                if actor is not None:
                    if stop.is_set:
                        await self._tell(actor)
                    await self._exchange(actor)
            except Exception as e:  # the board is gone: the job is over
                log.debug("board unreachable: %s", e)
                return

    async def _exchange(self, actor: _Actor) -> None:
        """Tell the board the models found unserved and the figures (when they changed); learn
        the others' unserved models and the job's stop."""
        figures = {**actor.models.info(), **actor.fetcher.info()}
        if actor.heads is not None:
            figures["doc_meta"] = dict(actor.heads.counts)
        changed = figures if figures != self._figures else None
        self._figures = figures
        reason, unserved = await self.board.news.remote(os.getpid(), actor.models.unserved_models(), changed)
        actor.models.learnt(unserved)
        if reason and not actor.stop.is_set:
            self._told = True  # it came from the board
            actor.stop.request(reason)


async def _enter(manager: Any) -> Any:
    """An async context manager entered for the actor's life (the actor process ends with the job)."""
    return await manager.__aenter__()


def _rows(batch: pa.Table) -> list[Row]:
    cols = {n: batch.column(n).to_pylist() for n in (ROW_INDEX, "request_id", "file_url", "question", CONTENT)}
    extra = [batch.column(n).to_pylist() if n in batch.column_names else [None] * batch.num_rows
             for n in (REUSE_KEY, MODEL, FORM)]  # fmt: skip
    rows = []
    for (index, rid, url, question, content), key, model, form in zip(zip(*cols.values(), strict=True), *extra,
                                                                      strict=True):  # fmt: skip
        url, question = url or "", question or ""
        invalid = invalid_reason(url, question) or (invalid_form(form) if form is not None else None)
        rows.append(Row(index=-1 if index is None else index, request_id=rid, file_url=url.strip(),
                        question=question, content=content, invalid=invalid, reuse_key=key, model=model,
                        form=form))  # fmt: skip
    return rows


def _micros(seconds: list[float | None]) -> pa.Array[Any]:
    return pa.array([None if s is None else round(s * 1e6) for s in seconds], pa.int64()).cast(TS)


def with_outcomes(batch: pa.Table, outcomes: list[Outcome], model: str, run_id: str) -> pa.Table:
    """``batch`` without the content column, plus the outcome columns (JOURNAL_SCHEMA types)."""
    n = len(outcomes)
    values: dict[str, Any] = {
        "model": [o.model or model for o in outcomes],  # the model that answered (fallbacks: pipeline/fallback.py)
        "models_tried": [
            list(o.models_tried) if o.models_tried is not None else ([o.model or model] if o.attempts else [])
            for o in outcomes
        ],
        "run_id": [run_id] * n,
        "status": [str(o.status) for o in outcomes],
    }
    out = batch.drop_columns([n for n in INPUT_ONLY if n in batch.column_names])
    for name in OUTCOME_COLUMNS:
        field = JOURNAL_SCHEMA.field(name)
        column = values[name] if name in values else [getattr(o, name) for o in outcomes]
        # timestamps travel as epoch seconds in an Outcome
        array = _micros(column) if field.type == TS else pa.array(column, field.type)
        out = out.append_column(field, array)
    return out
